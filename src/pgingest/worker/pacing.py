"""Pacing against the provider's quota, shared by every worker of a model through the database.

A hosted embedding API gives each key a quota in requests and tokens per minute. The model's
limits (``pgingest.set_model_quota``, or learned from the ``x-ratelimit-*`` headers) and one
token bucket per limit live in ``pgingest.provider_quota`` (``sql/070_provider_quota.sql``).
Before a batch's requests are sent, the worker takes their tokens (the chunker's counts) and
their number from the buckets in one call (``quota_take_v1``) and sleeps the wait it is given;
workers on every machine queue up behind one another on the database's clock, so that N workers
together stay within one quota. A wait longer than ``--quota-max-wait`` takes nothing and raises
``providers.QuotaWait`` before anything is sent (no request of the batch is paid for and then
thrown away): the batch is deferred as for a 429 (no attempt spent) and the worker holds that
model back for the wait (``Embedder.held``), serving its other models meanwhile: a paced
backfill of a new model never starves the live one. A 5xx retry is not taken again (the provider
did not count the failed request); a 429 is not retried by the client while the model is paced
(``retry_rate_limited``): the batch is deferred and the buckets hold every worker for its
Retry-After, where a retry would have jumped the queue.
The answers' headers teach the limits when none is configured (``quota_observe_v1``, at most
once a second per model and worker; what remains starts the buckets of a quota learned); a
429 cuts the pace (``quota_rejected_v1``), and the provider's client still defers the work
without spending an attempt.

The database is an aid here, never a dependency: when a call fails, the request goes unpaced
(the provider's 429s and Retry-After still hold the line) and the connection is opened again
later.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import psycopg

from pgingest import db, providers

log = logging.getLogger("pgingest.worker")

NO_QUOTA_RECHECK_SECONDS = 30.0
OBSERVE_INTERVAL_SECONDS = 1.0
RETRY_CONNECT_SECONDS = 30.0


class QuotaStore:
    """The worker's connection to ``pgingest.provider_quota``: one, shared by its request
    threads under a lock (each call is one short statement)."""

    def __init__(self, conninfo: str | None, connect_params: Mapping[str, Any] | None = None):
        self.conninfo = conninfo
        self.connect_params = dict(connect_params or {})
        self._conn: psycopg.Connection[Any] | None = None
        self._lock = threading.Lock()
        self._down_until = 0.0

    def _call(self, query: str, params: tuple[Any, ...]) -> tuple[bool, Any]:
        """(ok, the first column of the first row); ok False when the database failed."""
        with self._lock:
            if time.monotonic() < self._down_until:
                return False, None
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = db.connect(
                        self.conninfo,
                        register_vector=False,
                        application_name="pgingest-worker-quota",
                        **self.connect_params,
                    )
                row = self._conn.execute(query, params).fetchone()
                return True, None if row is None else row[0]
            except psycopg.Error as exc:
                log.warning(
                    "quota pacing: the database call failed; requests go unpaced for %.0f s",
                    RETRY_CONNECT_SECONDS,
                    extra={"error": f"{type(exc).__name__}: {str(exc).strip()[:200]}"},
                )
                db.close_quietly(self._conn)
                self._conn = None
                self._down_until = time.monotonic() + RETRY_CONNECT_SECONDS
                return False, None

    def take(
        self, model: str, tokens: int, requests: int = 1, max_wait: float | None = None
    ) -> float | None:
        """Seconds to wait before sending (taken), or over ``max_wait`` (not taken), or None (no
        quota known, or the database failed)."""
        ok, wait = self._call(
            "SELECT pgingest.quota_take_v1(%s, %s, %s, %s)",
            (model, int(tokens), int(requests), max_wait),
        )
        return float(wait) if ok and wait is not None else None

    def observe(self, model: str, limits: providers.RateLimits) -> bool:
        ok, _ = self._call(
            "SELECT pgingest.quota_observe_v1(%s, %s, %s, %s, %s)",
            (
                model,
                limits.limit_requests,
                limits.limit_tokens,
                limits.remaining_requests,
                limits.remaining_tokens,
            ),
        )
        return ok

    def rejected(self, model: str, retry_after: float | None) -> bool:
        ok, _ = self._call("SELECT pgingest.quota_rejected_v1(%s, %s)", (model, retry_after))
        return ok

    def close(self) -> None:
        with self._lock:
            db.close_quietly(self._conn)
            self._conn = None


class Pacer:
    """One model's pacing: :meth:`reserve` before a batch's requests are sent, and
    :meth:`on_response` (the provider's hook) for every answer."""

    def __init__(
        self,
        model: str,
        store: QuotaStore,
        *,
        max_wait: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``max_wait``: the longest the worker waits for the quota before a batch; a longer
        wait raises :class:`providers.QuotaWait` (nothing taken), and the worker defers the
        batch and serves its other models meanwhile."""
        self.model = model
        self.store = store
        self.max_wait = max_wait
        self._clock = clock
        self._lock = threading.Lock()
        self._no_quota_until = 0.0  # no quota known: no database call per batch until then
        self.known = False  # the last reserve found a quota: the client does not retry 429s
        self._last_observe = -OBSERVE_INTERVAL_SECONDS
        self.waited = 0.0
        self.waits = 0
        self.deferred = 0

    def reserve(self, tokens: int, requests: int) -> float:
        """Takes a batch's tokens and requests from the model's quota: the seconds to wait
        before sending them (0: at once, also when no quota is known). Raises
        :class:`providers.QuotaWait` when that would be over ``max_wait`` (nothing taken)."""
        if self._clock() < self._no_quota_until:
            return 0.0
        wait = self.store.take(self.model, tokens, requests, max_wait=self.max_wait)
        self.known = wait is not None
        if wait is None:
            self._no_quota_until = self._clock() + NO_QUOTA_RECHECK_SECONDS
            return 0.0
        if wait > self.max_wait:
            self.deferred += 1
            raise providers.QuotaWait(
                f"the model's quota allows this batch in {wait:.1f} s; deferred meanwhile",
                retry_after=wait,
            )
        if wait > 0:
            self.waited += wait
            self.waits += 1
        return wait

    def retry_rate_limited(self) -> bool:
        """The client's question before it retries a 429 by itself: not while the model is
        paced (a retry would not wait its turn in the buckets; the batch is deferred instead
        and the buckets hold every worker for the Retry-After)."""
        return not self.known

    def on_response(self, status: int, headers: Mapping[str, str]) -> None:
        limits = providers.parse_rate_limits(headers)
        if status == 429:
            # capped (MAX_RETRY_AFTER) like every other Retry-After: the buckets are shared, and
            # an uncapped ask (a year, a far-off date) would hold every worker of the model
            retry = providers._clamp_retry_after(providers.retry_after_from(headers))
            # A 429 for an exhausted balance (insufficient_quota) pauses the model elsewhere;
            # the body is not read here, so any 429 counts as pace: harmless for a paused model.
            if limits:
                self.store.observe(self.model, limits)
            self.store.rejected(self.model, retry)
            self._no_quota_until = 0.0
            return
        if not limits:
            return
        now = self._clock()
        with self._lock:
            if now - self._last_observe < OBSERVE_INTERVAL_SECONDS:
                return
            self._last_observe = now
        learned = limits.limit_tokens is not None or limits.limit_requests is not None
        if self.store.observe(self.model, limits) and learned:
            self._no_quota_until = 0.0  # a quota exists now: pace from the next batch on
