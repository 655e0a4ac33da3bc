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
from typing import Any

from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader

log = logging.getLogger("pgingest.metrics")

_BREAKER_STATES = {"closed": 0, "half_open": 1, "open": 2}

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
        self._cache = meter.create_counter(
            "pgingest.embedding.cache",
            unit="{chunk}",
            description="Embedding cache hits and misses",
        )
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
        self._set("pgingest.model.paused", 1 if paused else 0, model=model)
