"""The worker's HTTP side: one batch's unseen inputs, fanned out over the provider.

:class:`Embedder` holds a provider, a circuit breaker and a concurrency limit per model (a
provider is built by ``providers.for_model``, or by ``WorkerSettings.provider_factory`` in
tests) and a pool of ``in_flight`` threads. :meth:`Embedder.embed` splits the inputs that
``inputs.Inputs`` did not find in the cache into requests (``providers.plan_requests``), sends
them while fewer than the limit allows are in flight (``capacity.ConcurrencyLimit``: it follows
the provider's latency), gives each request the HTTP timeout that the observed latency calls
for, and hands each answer or error back to the ``Inputs``; what each error means for the jobs
is decided by ``batch.classify``. A request that timed out is sent again (at most
``max_resends`` times, each with twice the timeout) only after the limit was halved and every
other request in flight answered: the server may still be computing it, and sending it at once
only adds to its queue. No transaction is open while this runs.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import NamedTuple

from pgingest import db, providers
from pgingest.metrics import Metrics
from pgingest.settings import WorkerSettings
from pgingest.worker.batch import Failure, classify
from pgingest.worker.capacity import ConcurrencyLimit
from pgingest.worker.inputs import Inputs, request_size
from pgingest.worker.pacing import Pacer, QuotaStore

STOPPED = Failure(
    "rate_limited",
    "stopping",
    "the worker stopped before this request was answered (deferred, no attempt spent)",
)
"""A request not sent (or not resent) because the worker stops: its jobs come back at once."""


def circuit_open(breaker: providers.CircuitBreaker) -> Failure:
    """What a request the breaker does not let through means for its jobs (deferred)."""
    wait_s = breaker.retry_in()
    return classify(
        providers.CircuitOpen(f"circuit open, retry in {wait_s:.1f}s", retry_after=wait_s)
    )


class _Sent(NamedTuple):
    r: range
    tokens: int
    resends: int
    alone: bool


class _Answer(NamedTuple):
    result: providers.EmbedResult | None
    error: providers.ProviderError | None
    seconds: float
    retried: bool  # the client waited and sent again (a 429, a 5xx): not a latency


class Embedder:
    def __init__(
        self,
        settings: WorkerSettings,
        metrics: Metrics,
        pause: Callable[[db.Model, providers.ProviderError], None],
        stopping: threading.Event | None = None,
    ) -> None:
        """``pause(model, error)``: called when the provider refuses the credentials or the
        model (``auth``), as soon as that answer comes. ``stopping``: the worker's; once set, a
        batch sends no new request and no resend (:data:`STOPPED`)."""
        self.s = settings
        self._stopping = stopping
        self.metrics = metrics
        self._pause = pause
        self._providers: dict[str, providers.EmbeddingProvider] = {}
        self._breakers: dict[str, providers.CircuitBreaker] = {}
        self._limits: dict[str, ConcurrencyLimit] = {}
        self._pacers: dict[str, Pacer] = {}
        self._held_until: dict[str, float] = {}  # model -> monotonic time (quota waits)
        self._quota_turn: set[str] = set()  # models whose next request waits its turn (quota)
        self._calls = threading.local()  # .retried: the current request thread's client retried
        self._quota = (
            QuotaStore(settings.conninfo, settings.connect_params())
            if settings.quota_pacing
            else None
        )
        self._pool = ThreadPoolExecutor(max_workers=max(1, settings.in_flight))

    def provider(self, m: db.Model) -> providers.EmbeddingProvider:
        p = self._providers.get(m.name)
        if p is None:
            if self.s.provider_factory is not None:
                p = self.s.provider_factory(m)
            else:
                pacer = self.pacer(m.name)
                p = providers.for_model(
                    m,
                    on_response=None if pacer is None else pacer.on_response,
                    retry_rate_limited=None if pacer is None else pacer.retry_rate_limited,
                    timeout=self.s.http_timeout,
                    retry_timeouts=False,  # resent here, after the concurrency backs off
                    max_retry_after=self.s.max_retry_after,
                    on_request=functools.partial(self.metrics.embed_request, m.name),
                    on_retry=functools.partial(self._retried, m.name),
                )
            self._providers[m.name] = p
        return p

    def _retried(self, model: str, error_class: str) -> None:
        self._calls.retried = True
        self.metrics.retry(model, error_class)

    def pacer(self, model: str) -> Pacer | None:
        """The model's quota pacing (None when turned off)."""
        if self._quota is None:
            return None
        pacer = self._pacers.get(model)
        if pacer is None:
            pacer = self._pacers[model] = Pacer(model, self._quota, max_wait=self.s.quota_max_wait)
        return pacer

    def held(self, model: str) -> bool:
        """The model's quota has no room for a while (a request met a wait over
        ``quota_max_wait``): its batches wait, the worker serves its other models."""
        return time.monotonic() < self._held_until.get(model, 0.0)

    def forget(self, model: str) -> None:
        """Drops the model's provider: the next one re-reads the key (environment or file)."""
        self._providers.pop(model, None)

    def breaker(self, model: str) -> providers.CircuitBreaker:
        b = self._breakers.get(model)
        if b is None:
            b = providers.CircuitBreaker(
                failure_threshold=self.s.breaker_threshold,
                reset_timeout=self.s.breaker_reset_seconds,
            )
            self._breakers[model] = b
        return b

    def limit(self, model: str) -> ConcurrencyLimit:
        lim = self._limits.get(model)
        if lim is None:
            lim = self._limits[model] = ConcurrencyLimit(
                max_limit=max(1, self.s.in_flight),
                floor_timeout=self.s.http_timeout,
                ceiling_timeout=max(self.s.http_timeout, self.s.http_timeout_max),
            )
        return lim

    @staticmethod
    def _owners(inputs: Inputs, r: range) -> set[int]:
        """The jobs (their id) that own the inputs of request ``r``."""
        send = inputs.unseen()
        return {id(inputs.owners[i]) for j in r for i in inputs.positions[inputs.hashes[send[j]]]}

    def _reserve(self, model: str, pacer: Pacer, tokens: int, committed: bool) -> float:
        """Takes one request's tokens from the model's quota: the seconds to wait before sending
        it. Raises :class:`providers.QuotaWait` (nothing taken) when the wait is over
        ``quota_max_wait``, except for a request that must go: one with inputs of a job whose
        other inputs were already sent in this batch (``committed``: deferred, the job would
        pay for them again and again), or the first request after a deferral of the model
        (its turn: a request larger than the bucket refills within ``quota_max_wait`` would
        otherwise be deferred for ever). Those take their tokens whatever the wait (the buckets
        owe it, as for any request) and wait it, so every batch makes progress."""
        committed = committed or model in self._quota_turn
        try:
            wait = pacer.reserve(tokens, 1)
        except providers.QuotaWait:
            if not committed:
                self._quota_turn.add(model)
                raise
            taken = pacer.store.take(model, tokens, 1, max_wait=None)
            wait = 0.0 if taken is None else taken
        self._quota_turn.discard(model)
        return wait

    def breaker_states(self) -> dict[str, str]:
        return {name: b.state for name, b in list(self._breakers.items())}

    def embed(self, m: db.Model, inputs: Inputs) -> bool:
        """Embeds ``inputs.unseen()`` and scatters the vectors to the jobs. False when the model
        was paused (an auth error): nothing is scattered, the batch is to be released."""
        send = inputs.unseen()
        if not send:
            inputs.scatter()
            return True
        try:
            provider = self.provider(m)
        except providers.ModelUnavailable as refused:  # a registered URL the client refuses
            self._pause(m, refused)
            return False
        limit = self.limit(m.name)
        per_request = request_size(len(send), self.s.request_max_inputs, limit.allowed)
        tokens = inputs.request_tokens()
        plans = providers.plan_requests(tokens, per_request, self.s.request_max_tokens)
        # Timeouts are the worker's (from the observed latency) and resent here when the client
        # leaves them to it (for_model's clients); a client built otherwise (provider_factory)
        # keeps its own timeout and retry policy.
        managed = getattr(provider, "retry_timeouts", True) is False
        timed = getattr(provider, "call_timeout", None) if managed else None
        max_resends = self.s.max_resends if managed else 0
        pacer = self._pacers.get(m.name)
        stopping = self._stopping

        def call(r: range, timeout: float) -> _Answer:
            self._calls.retried = False
            started = time.monotonic()
            try:
                with timed(timeout) if timed is not None else contextlib.nullcontext():
                    result = provider.embed_detailed(inputs.request(r))
                error = None
            except providers.ProviderError as exc:
                result, error = None, exc
            seconds = time.monotonic() - started
            return _Answer(result, error, seconds, bool(getattr(self._calls, "retried", False)))

        breaker = self.breaker(m.name)
        paused = False
        todo = collections.deque(_Sent(r, sum(tokens[r.start : r.stop]), 0, False) for r in plans)
        running: dict[Future[_Answer], _Sent] = {}
        ahead = 0  # tokens of ours in flight
        begun: set[int] = set()  # the jobs (id) with an input in a request sent or paid for
        answered = False  # an answer (or error) came back: the first wave is over

        def defer_rest(failure: Failure) -> None:
            # What is not sent now is not sent in this batch: deferred (no attempt spent).
            while todo:
                inputs.fail(todo.popleft().r, failure)

        while todo or running:
            while todo and not paused:
                if answered and stopping is not None and stopping.is_set():
                    # The worker stops: no new request after the first wave (the batch in hand,
                    # in flight together: a stop waits at most about one request timeout), no
                    # resend; what answered is written, the rest comes back at once for the
                    # next worker (no attempt spent).
                    defer_rest(STOPPED)
                    break
                nxt = todo[0]
                # A resend waits until nothing else of ours is in flight; the others while
                # fewer than the limit allows are.
                if running and (nxt.resends or len(running) >= limit.allowed):
                    break
                if not nxt.resends:  # a resend is the same call: its trial, its quota
                    # The breaker's half-open trial slot is taken (allow) by a request really
                    # sent, after its quota; the others wait for its answer (a success closes the
                    # breaker). retry_in() first, which takes nothing: no quota is taken for a
                    # request the breaker refuses, no trial slot for one the quota defers.
                    if breaker.retry_in() > 0:
                        if running:
                            break
                        defer_rest(circuit_open(breaker))
                        break
                    if pacer is not None:
                        owners = self._owners(inputs, nxt.r)
                        try:
                            paced = self._reserve(m.name, pacer, nxt.tokens, bool(owners & begun))
                        except providers.QuotaWait as spent:
                            # No room in the quota for a while: this request and the rest are
                            # deferred as for a 429 (no attempt spent), the model held back
                            # meanwhile; the requests already sent are written.
                            self._held_until[m.name] = time.monotonic() + float(
                                spent.retry_after or 1.0
                            )
                            defer_rest(classify(spent))
                            break
                        begun |= owners
                        if paced > 0:
                            if stopping is None:
                                time.sleep(paced)
                            elif stopping.wait(paced):
                                defer_rest(STOPPED)  # stopping: no waiting for the quota
                                break
                if not nxt.resends and not breaker.allow():
                    # not expected (retry_in() was 0 just now, and answers are recorded on this
                    # thread); its quota is taken: deferred rather than taken again later
                    defer_rest(circuit_open(breaker))
                    break
                todo.popleft()
                timeout = min(
                    limit.ceiling_timeout, limit.timeout_for(nxt.tokens, ahead) * 2**nxt.resends
                )
                sent = nxt._replace(alone=not running)
                running[self._pool.submit(call, sent.r, timeout)] = sent
                ahead += sent.tokens
            if not running:
                break
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            answered = True
            for fut in done:
                sent = running.pop(fut)
                ahead -= sent.tokens
                answer = fut.result()
                exc = answer.error
                if exc is None:
                    assert answer.result is not None
                    # a bisection's or a retried call's time is not the server's latency
                    if answer.result.requests <= 1 and not answer.retried:
                        limit.sample(sent.tokens, answer.seconds, alone=sent.alone)
                    breaker.record_success()
                    inputs.fill(sent.r, answer.result)
                    continue
                if exc.error_class == "timeout" and sent.resends < max_resends:
                    limit.timed_out()
                    if stopping is not None and stopping.is_set():
                        inputs.fail(sent.r, STOPPED)  # not resent: the worker stops
                        continue
                    self.metrics.resend(m.name)
                    todo.append(sent._replace(resends=sent.resends + 1))
                    continue
                failure = classify(exc)
                if failure.kind == "auth":
                    paused = True
                    self._pause(m, exc)
                elif failure.kind == "transient":
                    breaker.record_failure()
                inputs.fail(sent.r, failure)
        self.metrics.concurrency(m.name, limit.allowed, limit.seconds_per_token())
        if paused:
            return False
        inputs.scatter()
        return True

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        if self._quota is not None:
            self._quota.close()
