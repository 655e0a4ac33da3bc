"""Worker metrics through OpenTelemetry (exported for Prometheus and, where configured, OTLP).

``Metrics()`` records into a private MeterProvider with no exporter (cheap; tests read it through
``snapshot``); ``Metrics.start(port)`` adds the Prometheus exporter on 127.0.0.1:port and, when
``OTEL_EXPORTER_OTLP_ENDPOINT`` is set and the ``otlp`` extra is installed, an OTLP exporter.
Names follow OpenTelemetry conventions: dotted, unit in the instrument, ``error.type`` attribute.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable
from typing import Any

import psycopg
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader

log = logging.getLogger("pgingest.metrics")

_BREAKER_STATES = {"closed": 0, "half_open": 1, "open": 2}

# Why the worker dead-letters a document whose vector is invalid: core.validate's error classes
# are "invalid_vector_" + a reason of pgingest.vectors.REASONS. The first three exist at 0 for
# every live model (rate() and increase() see the first one).
_INVALID_VECTOR = "invalid_vector_"
_INVALID_REASONS = ("dimension", "non_finite", "zero_vector")
_DEFERRAL_REASONS = ("rate_limited", "transient")  # writer.py's deferred() calls

# pgingest.ann_index.status: the active model's ANN index as pgingest.vector_health sees it.
ANN_INDEX_STATUS = {"ok": 0, "building": 1, "invalid": 2, "missing": 3}

# The database-side gauges (status views, pg_stat_activity) are read at most this often, by the
# heartbeat thread, with its connection.
DATABASE_REFRESH_SECONDS = 30.0

# Read-only and cheap: one row from pg_stat_activity and two settings. Backends connected to a
# database (clients, autovacuum and parallel workers): every role sees datid, while backend_type
# is hidden from a role that is not the session's and lacks pg_read_all_stats.
_CONNECTIONS_QUERY = (
    "SELECT count(*) FILTER (WHERE a.datid IS NOT NULL) AS used,"
    " current_setting('max_connections')::integer"
    " - current_setting('superuser_reserved_connections')::integer AS available"
    " FROM pg_catalog.pg_stat_activity AS a"
)

# Histogram boundaries: OpenTelemetry's default ones (0, 5, 10, 25, ... 10000) suit milliseconds;
# these instruments record seconds and message counts.
_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_MESSAGES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)


class Metrics:
    def __init__(self, readers: list[MetricReader] | None = None) -> None:
        self.provider = MeterProvider(metric_readers=readers or [])
        meter = self.provider.get_meter("pgingest")
        self._lock = threading.Lock()
        self._gauges: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
        self._documents = meter.create_counter(
            "pgingest.documents",
            unit="{document}",
            description="Document versions handled, by outcome",
        )
        self._chunks = meter.create_counter(
            "pgingest.chunks", unit="{chunk}", description="Chunks written with their vectors"
        )
        self._chunking = meter.create_histogram(
            "pgingest.chunking.duration",
            unit="s",
            description="Time to chunk one batch",
            explicit_bucket_boundaries_advisory=_SECONDS,
        )
        self._request = meter.create_histogram(
            "pgingest.embedding.request.duration",
            unit="s",
            description="Embedding HTTP request latency, by status",
            explicit_bucket_boundaries_advisory=_SECONDS,
        )
        self._inputs = meter.create_counter(
            "pgingest.embedding.inputs", unit="{input}", description="Texts sent to the provider"
        )
        self._errors = meter.create_counter(
            "pgingest.embedding.errors",
            unit="{error}",
            description="Embedding errors by error.type (rate_limited, server_error, timeout, ...)",
        )
        self._retries = meter.create_counter(
            "pgingest.embedding.retries", unit="{retry}", description="Retried embedding requests"
        )
        self._resends = meter.create_counter(
            "pgingest.embedding.resends",
            unit="{request}",
            description="Requests sent again after a client-side timeout (the concurrency was "
            "halved first and the other requests in flight answered)",
        )
        self._deferrals = meter.create_counter(
            "pgingest.deferrals", unit="{message}", description="Messages deferred, by reason"
        )
        self._dead = meter.create_counter(
            "pgingest.dead_letters", unit="{document}", description="Documents dead-lettered"
        )
        self._failed_batches = meter.create_counter(
            "pgingest.batch.failures",
            unit="{batch}",
            description="Batches whose write-back (or another write of the worker) failed with an "
            "unexpected error, by error.type; their messages come back after the visibility timeout",
        )
        self._commit = meter.create_histogram(
            "pgingest.batch.commit.duration",
            unit="s",
            description="Write-back transaction time",
            explicit_bucket_boundaries_advisory=_SECONDS,
        )
        self._batch_docs = meter.create_histogram(
            "pgingest.batch.messages",
            unit="{message}",
            description="Messages per batch",
            explicit_bucket_boundaries_advisory=_MESSAGES,
        )
        self._purged = meter.create_counter(
            "pgingest.dead_letters.purged",
            unit="{document}",
            description="Dead letters removed by the retention policy",
        )
        self._pruned = meter.create_counter(
            "pgingest.embedding.cache.pruned", unit="{vector}", description="Cached vectors evicted"
        )
        # Raw documents (worker/raw.py, issue 22).
        self._raw_bytes = meter.create_counter(
            "pgingest.raw.fetch.bytes",
            unit="By",
            description="Bytes of raw documents fetched or read",
        )
        self._raw_fetch = meter.create_histogram(
            "pgingest.raw.fetch.duration",
            unit="s",
            description="Time to fetch (or read) one raw document, by source",
            explicit_bucket_boundaries_advisory=_SECONDS,
        )
        self._raw_parse = meter.create_histogram(
            "pgingest.raw.parse.duration",
            unit="s",
            description="Time to parse one raw document in a child process, by type",
            explicit_bucket_boundaries_advisory=_SECONDS,
        )
        self._raw_pages = meter.create_counter(
            "pgingest.raw.pages",
            unit="{page}",
            description="Pages of raw documents parsed, by type",
        )
        self._raw_failures = meter.create_counter(
            "pgingest.raw.failures",
            unit="{document}",
            description="Raw documents that failed to fetch or parse, by error.class",
        )
        self._cache = meter.create_counter(
            "pgingest.embedding.cache",
            unit="{chunk}",
            description="Embedding cache hits and misses",
        )
        self._invalid = meter.create_counter(
            "pgingest.vectors.invalid",
            unit="{document}",
            description="Documents dead-lettered for an invalid vector from the provider, by "
            "reason: dimension (not the model's dimensions: drift), non_finite, zero_vector, "
            "count, type",
        )
        # Counters without labels exist at 0 from the start (rate() and increase() see their
        # first event); those by model, from the model's first heartbeat (paused()).
        self._purged.add(0)
        self._pruned.add(0)
        self._database_refreshed = float("-inf")
        self._views_refused_logged = False
        for name, desc, unit in (
            ("pgingest.batch.size", "Current adaptive batch size", "{message}"),
            ("pgingest.queue.depth", "Messages in the model's queue", "{message}"),
            ("pgingest.freshness.lag", "Age of the oldest pending message", "s"),
            ("pgingest.circuit_breaker.state", "0 closed, 1 half-open, 2 open", "1"),
            ("pgingest.model.paused", "1 while the model is paused", "1"),
            (
                "pgingest.embedding.concurrency",
                "Requests the worker may have in flight to the model's provider (adaptive)",
                "{request}",
            ),
            (
                "pgingest.embedding.token_latency",
                "Recent seconds per token of the model's provider",
                "s",
            ),
            (
                "pgingest.worker.loop.age",
                "Seconds since the worker's main loop last completed a pass (heartbeat)",
                "s",
            ),
            # From the database (status views, pg_stat_activity), every DATABASE_REFRESH_SECONDS
            # by the heartbeat: the same figures in every worker, aggregate them with max.
            (
                "pgingest.status_views.readable",
                "1 when the worker's role may read the status views (pgingest_monitor), else 0",
                "1",
            ),
            (
                "pgingest.ann_index.status",
                "A live model's ANN index: 0 ok (or exact search by choice), 1 building, "
                "2 invalid, 3 missing (pgingest.vector_health)",
                "1",
            ),
            (
                "pgingest.table.live_tuples",
                "Live tuples of pgingest.chunks and of each live model's store",
                "{tuple}",
            ),
            (
                "pgingest.table.dead_tuples",
                "Dead tuples of pgingest.chunks and of each live model's store",
                "{tuple}",
            ),
            (
                "pgingest.dead_letters.stored",
                "Rows in pgingest.dead_letters, by model and error class (0 for a live model "
                "with none)",
                "{document}",
            ),
            (
                "pgingest.workers",
                "Workers with a heartbeat row, by status: live, stale (silent: died or hangs), "
                "stuck (heartbeat fresh, main loop silent) (pgingest.worker_status)",
                "{worker}",
            ),
            (
                "pgingest.postgres.connections",
                "Backends connected to a database of the PostgreSQL server now (pg_stat_activity)",
                "{connection}",
            ),
            (
                "pgingest.postgres.connections.max",
                "Connections a non-superuser may open: max_connections minus "
                "superuser_reserved_connections",
                "{connection}",
            ),
        ):
            meter.create_observable_gauge(
                name, callbacks=[self._observer(name)], unit=unit, description=desc
            )

    def _observer(self, name: str) -> Any:
        def cb(_options: CallbackOptions) -> list[Observation]:
            with self._lock:
                values = dict(self._gauges.get(name, {}))
            return [Observation(v, dict(k)) for k, v in values.items()]

        return cb

    def _set(self, name: str, value: float, **attrs: str) -> None:
        with self._lock:
            self._gauges.setdefault(name, {})[tuple(sorted(attrs.items()))] = value

    def _replace(self, name: str, values: Iterable[tuple[dict[str, str], float]]) -> None:
        """Every series of gauge ``name`` at once: a series absent from ``values`` disappears
        (a dropped model, a requeued error class)."""
        new = {tuple(sorted(attrs.items())): value for attrs, value in values}
        with self._lock:
            self._gauges[name] = new

    @classmethod
    def start(cls, port: int | None) -> Metrics:
        readers: list[MetricReader] = []
        if port is not None:
            from opentelemetry.exporter.prometheus import PrometheusMetricReader
            from prometheus_client import start_http_server

            readers.append(PrometheusMetricReader())
            start_http_server(port, addr=os.environ.get("PGINGEST_METRICS_ADDR", "127.0.0.1"))
            log.info("metrics on http://127.0.0.1:%s/metrics", port)
        if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
            try:
                from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
                    OTLPMetricExporter,
                )
                from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

                readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
            except ImportError:
                log.warning(
                    "OTEL_EXPORTER_OTLP_ENDPOINT is set but pgingest[otlp] is not installed"
                )
        return cls(readers)

    # -- recording -------------------------------------------------------------------------------

    def documents(self, model: str, outcome: str, n: int) -> None:
        if n:
            self._documents.add(n, {"model": model, "outcome": outcome})

    def chunks(self, model: str, n: int) -> None:
        if n:
            self._chunks.add(n, {"model": model})

    def chunking_seconds(self, model: str, seconds: float) -> None:
        self._chunking.record(seconds, {"model": model})

    def embed_request(self, model: str, status: str, seconds: float, n_inputs: int) -> None:
        self._request.record(seconds, {"model": model, "status": status})
        self._inputs.add(n_inputs, {"model": model})
        if status not in ("ok", "200"):
            self._errors.add(1, {"model": model, "error.type": status})

    def embed_error(self, model: str, error_type: str) -> None:
        self._errors.add(1, {"model": model, "error.type": error_type})

    def retry(self, model: str, error_class: str) -> None:
        self._retries.add(1, {"model": model, "error.type": error_class})

    def resend(self, model: str) -> None:
        self._resends.add(1, {"model": model})

    def concurrency(self, model: str, allowed: int, seconds_per_token: float | None) -> None:
        self._set("pgingest.embedding.concurrency", allowed, model=model)
        if seconds_per_token is not None:
            self._set("pgingest.embedding.token_latency", seconds_per_token, model=model)

    def deferred(self, model: str, reason: str, n: int) -> None:
        self._deferrals.add(n, {"model": model, "reason": reason})

    def dead_letter(self, model: str, error_class: str) -> None:
        self._dead.add(1, {"model": model, "error.type": error_class})
        if error_class.startswith(_INVALID_VECTOR):
            self._invalid.add(1, {"model": model, "reason": error_class[len(_INVALID_VECTOR) :]})

    def batch_failed(self, model: str, error_type: str) -> None:
        self._failed_batches.add(1, {"model": model, "error.type": error_type})

    def batch(self, model: str, commit_seconds: float, messages: int) -> None:
        self._commit.record(commit_seconds, {"model": model})
        self._batch_docs.record(messages, {"model": model})

    def cache(self, model: str, hits: int, misses: int) -> None:
        if hits:
            self._cache.add(hits, {"model": model, "result": "hit"})
        if misses:
            self._cache.add(misses, {"model": model, "result": "miss"})

    def raw_fetched(self, source: str, n_bytes: int, seconds: float) -> None:
        self._raw_bytes.add(n_bytes, {"source": source})
        self._raw_fetch.record(seconds, {"source": source})

    def raw_parsed(self, mime: str, seconds: float, pages: int | None) -> None:
        self._raw_parse.record(seconds, {"mime": mime})
        if pages:
            self._raw_pages.add(pages, {"mime": mime})

    def raw_failed(self, source: str, error_class: str) -> None:
        self._raw_failures.add(1, {"source": source, "error.class": error_class})

    def maintenance(self, result: dict[str, int]) -> None:
        self._purged.add(result.get("purged_dead_letters", 0))
        self._pruned.add(result.get("pruned_cache_rows", 0))

    def batch_size(self, size: int) -> None:
        self._set("pgingest.batch.size", size)

    def queue_depth(self, model: str, depth: int) -> None:
        self._set("pgingest.queue.depth", depth, model=model)

    def freshness_lag(self, model: str, seconds: float) -> None:
        self._set("pgingest.freshness.lag", seconds, model=model)

    def breaker_state(self, model: str, state: str) -> None:
        self._set("pgingest.circuit_breaker.state", _BREAKER_STATES.get(state, 0), model=model)

    def paused(self, model: str, paused: bool) -> None:
        """Called for every live model at each heartbeat: also makes the model's counters exist
        at 0 (invalid vectors and deferrals by reason, resends, and failed batches without an
        error.type), so that rate() and increase() see their first event."""
        self._set("pgingest.model.paused", 1 if paused else 0, model=model)
        for reason in _INVALID_REASONS:
            self._invalid.add(0, {"model": model, "reason": reason})
        for reason in _DEFERRAL_REASONS:
            self._deferrals.add(0, {"model": model, "reason": reason})
        self._resends.add(0, {"model": model})
        self._failed_batches.add(0, {"model": model})

    def loop_age(self, seconds: float | None) -> None:
        if seconds is not None:
            self._set("pgingest.worker.loop.age", seconds)

    # -- from the database -----------------------------------------------------------------------

    def refresh_database(self, conn: psycopg.Connection[Any], *, force: bool = False) -> bool:
        """Reads the database-side gauges (status views vector_health, dead_letter_summary and
        worker_status; pg_stat_activity) with ``conn`` (autocommit), at most every
        ``DATABASE_REFRESH_SECONDS`` unless ``force``. Returns whether it read them.

        A role without the status views (a worker login that is not in ``pgingest_monitor``)
        sets ``pgingest.status_views.readable`` to 0, logs it once, and still exports the
        connection counts. Other database errors propagate (the heartbeat retries)."""
        from pgingest import db

        now = time.monotonic()
        if not force and now - self._database_refreshed < DATABASE_REFRESH_SECONDS:
            return False
        self._database_refreshed = now
        row = conn.execute(_CONNECTIONS_QUERY).fetchone()
        if row is not None:
            self._set("pgingest.postgres.connections", int(row[0]))
            self._set("pgingest.postgres.connections.max", int(row[1]))
        try:
            health = db.status_view(conn, "vector_health")
            builds = db.status_view(conn, "index_builds")
            dead = db.status_view(conn, "dead_letter_summary")
            workers = db.status_view(conn, "worker_status")
        except psycopg.errors.InsufficientPrivilege as exc:
            self._set("pgingest.status_views.readable", 0)
            if not self._views_refused_logged:
                self._views_refused_logged = True
                log.warning(
                    "no database gauges: the worker's role may not read the status views "
                    "(GRANT pgingest_monitor TO it)",
                    extra={"sqlstate": exc.sqlstate, "error": str(exc).strip()[:200]},
                )
            return True
        self._set("pgingest.status_views.readable", 1)
        self._database_gauges(health, builds, dead, workers)
        return True

    def _database_gauges(
        self,
        health: list[dict[str, Any]],
        builds: list[dict[str, Any]],
        dead: list[dict[str, Any]],
        workers: list[dict[str, Any]],
    ) -> None:
        building = {b["model"] for b in builds}
        index, live, dead_tuples = [], [], []
        for h in health:
            model = h["model"]
            if h["index_method"] == "none" or h["index_status"] == "ok":
                status = "ok"
            elif h["building"] or model in building:
                status = "building"
            elif h["index_name"] is None:
                status = "missing"
            else:
                status = "invalid"
            attrs = {"model": model, "state": h["state"], "index_method": h["index_method"]}
            index.append((attrs, float(ANN_INDEX_STATUS[status])))
            store = {"table": "store", "model": model}
            live.append((store, float(h["store_live_tuples"] or 0)))
            dead_tuples.append((store, float(h["store_dead_tuples"] or 0)))
        if health:  # the chunks table's figures are repeated on every row
            live.append(({"table": "chunks"}, float(health[0]["chunks_live_tuples"] or 0)))
            dead_tuples.append(({"table": "chunks"}, float(health[0]["chunks_dead_tuples"] or 0)))
        self._replace("pgingest.ann_index.status", index)
        self._replace("pgingest.table.live_tuples", live)
        self._replace("pgingest.table.dead_tuples", dead_tuples)

        stored: dict[tuple[str, str], float] = {(h["model"], ""): 0.0 for h in health}
        for d in dead:
            stored.pop((d["model"], ""), None)
            stored[(d["model"], d["error_class"])] = float(d["dead_letters"])
        self._replace(
            "pgingest.dead_letters.stored",
            (
                ({"model": m, "error_type": e} if e else {"model": m}, n)
                for (m, e), n in stored.items()
            ),
        )

        counts = {"live": 0, "stale": 0, "stuck": 0}
        for w in workers:
            counts["stale" if w["stale"] else "stuck" if w["stuck"] else "live"] += 1
        self._replace("pgingest.workers", (({"status": k}, float(v)) for k, v in counts.items()))
