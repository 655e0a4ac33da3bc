"""The worker's HTTP side: one batch's unseen inputs, fanned out over the provider.

:class:`Embedder` holds a provider and a circuit breaker per model (a provider is built by
``providers.for_model``, or by ``WorkerSettings.provider_factory`` in tests) and a pool of
``in_flight`` threads. :meth:`Embedder.embed` splits the inputs that ``inputs.Inputs`` did not
find in the cache into requests (``providers.plan_requests``), sends them in parallel, and
hands each answer or error back to the ``Inputs``; what each error means for the jobs is
decided by ``batch.classify``. No transaction is open while this runs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pgingest import db, providers
from pgingest.metrics import Metrics
from pgingest.settings import WorkerSettings
from pgingest.worker.batch import classify
from pgingest.worker.inputs import Inputs, request_size


class Embedder:
    def __init__(
        self,
        settings: WorkerSettings,
        metrics: Metrics,
        pause: Callable[[db.Model, providers.ProviderError], None],
    ) -> None:
        """``pause(model, error)``: called when the provider refuses the credentials or the
        model (``auth``), as soon as that answer comes."""
        self.s = settings
        self.metrics = metrics
        self._pause = pause
        self._providers: dict[str, providers.EmbeddingProvider] = {}
        self._breakers: dict[str, providers.CircuitBreaker] = {}
        self._pool = ThreadPoolExecutor(max_workers=max(1, settings.in_flight))

    def provider(self, m: db.Model) -> providers.EmbeddingProvider:
        p = self._providers.get(m.name)
        if p is None:
            if self.s.provider_factory is not None:
                p = self.s.provider_factory(m)
            else:
                p = providers.for_model(
                    m,
                    timeout=self.s.http_timeout,
                    max_retry_after=self.s.max_retry_after,
                    on_request=functools.partial(self.metrics.embed_request, m.name),
                    on_retry=functools.partial(self.metrics.retry, m.name),
                )
            self._providers[m.name] = p
        return p

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
        per_request = request_size(len(send), self.s.request_max_inputs, self.s.in_flight)
        plans = providers.plan_requests(
            inputs.request_tokens(), per_request, self.s.request_max_tokens
        )

        def call(r: range) -> tuple[range, Any, providers.ProviderError | None]:
            try:
                return r, provider.embed_detailed(inputs.request(r)), None
            except providers.ProviderError as exc:
                return r, None, exc

        breaker = self.breaker(m.name)
        paused = False
        for r, result, exc in self._pool.map(call, plans):
            if exc is not None:
                failure = classify(exc)
                if failure.kind == "auth":
                    paused = True
                    self._pause(m, exc)
                elif failure.kind == "transient":
                    breaker.record_failure()
                inputs.fail(r, failure)
                continue
            breaker.record_success()
            inputs.fill(r, result)
        if paused:
            return False
        inputs.scatter()
        return True

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
