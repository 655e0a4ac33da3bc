"""The worker's metrics, scraped over HTTP in the Prometheus text format during a real run, and its
structured (JSON) log lines.

Each test gets its own ``prometheus_client.CollectorRegistry``, so the OpenTelemetry Prometheus
reader never touches the process-wide ``REGISTRY`` and tests do not see each other's series.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
import requests
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.parser import text_string_to_metric_families

from pgingest import worker
from pgingest.logs import JsonFormatter
from pgingest.metrics import Metrics
from pgingest.testing.fake_provider import FakeEmbeddingServer
from pgingest.worker import heartbeat
from tests.helpers import insert_docs, register, wait_for


@dataclass
class Exporter:
    metrics: Metrics
    url: str

    def scrape(self) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
        """{sample name: {sorted labels (otel_scope_* dropped): value}} from one scrape."""
        resp = requests.get(self.url, timeout=5)
        resp.raise_for_status()
        out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
        for family in text_string_to_metric_families(resp.text):
            for s in family.samples:
                labels = tuple(
                    sorted((k, v) for k, v in s.labels.items() if not k.startswith("otel_scope"))
                )
                out.setdefault(s.name, {})[labels] = s.value
        return out


@pytest.fixture
def exporter() -> Iterator[Exporter]:
    registry = CollectorRegistry()
    reader = PrometheusMetricReader(registry=registry)
    metrics = Metrics([reader])
    httpd, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        yield Exporter(metrics, f"http://127.0.0.1:{httpd.server_port}/metrics")
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)
        metrics.provider.shutdown()


def value(scrape: dict[str, dict[Any, float]], name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for k, v in scrape.get(name, {}).items() if want <= set(k))


def one(conn: psycopg.Connection[Any], query: str) -> Any:
    row = conn.execute(query).fetchone()
    assert row is not None
    return row[0]


def test_counters_match_what_happened_in_a_run_with_injected_429s(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer, exporter: Exporter
) -> None:
    n_docs, n_429 = 60, 3
    register(conn, "v1", fake.url)
    insert_docs(
        conn,
        [(f"doc-{i}", f"Title {i}", f"Document {i} body. " * (5 + i % 40)) for i in range(n_docs)],
    )
    # 40 ms a request: the run lasts long enough for scrapes to see it half done.
    fake.configure(retry_after=0.2, latency_ms=40)
    fake.fail_next("rate_limit", n_429)

    w = worker.Worker(
        worker.WorkerSettings(
            conninfo=dsn,
            install_signal_handlers=False,
            poll_interval=0.1,
            batch_size=8,
            max_retry_after=5.0,
        ),
        metrics=exporter.metrics,
    )
    # The gauges (queue depth, freshness lag, paused, breaker) come from the heartbeat thread.
    hb = heartbeat.Heartbeat(
        dsn,
        lambda: heartbeat.WorkerSnapshot(models=["v1"], batch_size=w.batch_size),
        metrics=exporter.metrics,
        interval=0.05,
    )
    hb.beat()
    first = exporter.scrape()
    assert value(first, "pgingest_queue_depth", model="v1") == n_docs
    assert value(first, "pgingest_freshness_lag_seconds", model="v1") >= 0
    assert value(first, "pgingest_model_paused", model="v1") == 0

    thread = threading.Thread(target=w.run, name="worker-under-test")
    thread.start()
    hb.start()
    scrapes: list[dict[str, dict[Any, float]]] = []
    try:

        def done() -> bool:
            scrapes.append(exporter.scrape())
            s = scrapes[-1]
            return (
                value(s, "pgingest_documents_total", outcome="embedded") >= n_docs
                and value(s, "pgingest_queue_depth", model="v1") == 0
            )

        wait_for(done, timeout=60, interval=0.05)
    finally:
        w.stopping.set()
        thread.join(30)
        hb.stop()
    assert not thread.is_alive()

    # Scraped during the run: counters only grow, and some scrape saw the run half done.
    embedded_series = [value(s, "pgingest_documents_total", outcome="embedded") for s in scrapes]
    assert embedded_series == sorted(embedded_series)
    assert any(0 < x < n_docs for x in embedded_series), embedded_series

    final = exporter.scrape()
    stats = fake.stats()
    chunks = one(conn, "SELECT count(*) FROM pgingest.store_v1")
    assert one(conn, "SELECT count(*) FROM pgingest.embedding_state") == n_docs
    assert value(final, "pgingest_documents_total", model="v1", outcome="embedded") == n_docs
    assert value(final, "pgingest_chunks_total", model="v1") == chunks
    # Every injected 429 was seen, counted as an error and retried once (Retry-After 0.2 s).
    assert stats["by_status"].get(429) == n_429
    assert value(final, "pgingest_embedding_errors_total", error_type="429") == n_429
    assert value(final, "pgingest_embedding_retries_total", error_type="rate_limited") == n_429
    assert value(final, "pgingest_deferrals_total") == 0
    assert value(final, "pgingest_dead_letters_total") == 0
    # One latency observation per HTTP attempt, by status, as the server counted them.
    for code in (200, 429):
        assert value(
            final, "pgingest_embedding_request_duration_seconds_count", status=str(code)
        ) == stats["by_status"].get(code, 0)
    assert value(final, "pgingest_embedding_inputs_total", model="v1") >= chunks
    assert value(final, "pgingest_chunking_duration_seconds_count", model="v1") >= 1
    assert value(final, "pgingest_batch_commit_duration_seconds_count", model="v1") >= 1
    assert value(final, "pgingest_batch_messages_sum", model="v1") >= n_docs
    assert value(final, "pgingest_batch_size") >= 1
    assert value(final, "pgingest_queue_depth", model="v1") == 0
    assert value(final, "pgingest_freshness_lag_seconds", model="v1") == 0
    assert value(final, "pgingest_circuit_breaker_state", model="v1") == 0


def test_dead_letters_and_deferrals_are_counted(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer, exporter: Exporter
) -> None:
    register(conn, "v1", fake.url)
    insert_docs(conn, [(f"ok-{i}", None, f"Fine document {i}.") for i in range(5)])
    insert_docs(conn, [("nan", None, "Has __NAN__."), ("zero", None, "Is __ZERO__.")])
    # More 429s than the provider waits for: the batch is deferred without spending an attempt.
    fake.configure(retry_after=1)
    fake.fail_next("rate_limit", 3)
    w = worker.Worker(
        worker.WorkerSettings(
            conninfo=dsn,
            drain=True,
            install_signal_handlers=False,
            poll_interval=0.1,
            max_retry_after=0.5,
        ),
        metrics=exporter.metrics,
    )
    w.run()
    while one(conn, "SELECT count(*) FROM pgingest.embedding_state") < 5:
        w.stopping.clear()
        w.run()  # the deferred messages become visible again after Retry-After
    final = exporter.scrape()
    dead = dict(
        conn.execute(
            "SELECT error_class, count(*) FROM pgingest.dead_letters GROUP BY 1"
        ).fetchall()
    )
    assert sum(dead.values()) == 2
    for error_class, n in dead.items():
        assert value(final, "pgingest_dead_letters_total", error_type=error_class) == n
    assert value(final, "pgingest_deferrals_total", reason="rate_limited") >= 1
    assert value(final, "pgingest_documents_total", outcome="embedded") == 5


def test_latency_histograms_have_sub_second_buckets(exporter: Exporter) -> None:
    exporter.metrics.embed_request("v1", "200", 0.05, 1)
    exporter.metrics.chunking_seconds("v1", 0.002)
    exporter.metrics.batch("v1", 0.01, 10)
    scrape = exporter.scrape()
    for name in (
        "pgingest_embedding_request_duration_seconds_bucket",
        "pgingest_chunking_duration_seconds_bucket",
        "pgingest_batch_commit_duration_seconds_bucket",
    ):
        bounds = {float(dict(k)["le"]) for k in scrape[name]}
        assert {b for b in bounds if 0 < b < 1}, f"{name}: no bucket below one second: {bounds}"


def test_json_logs_have_one_line_per_batch_with_counts_and_timings(
    conn: psycopg.Connection[Any],
    dsn: str,
    fake: FakeEmbeddingServer,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(logging.getLogger("pgingest"), "propagate", True)
    caplog.set_level(logging.INFO, logger="pgingest")
    register(conn, "v1", fake.url)
    insert_docs(conn, [(f"doc-{i}", None, f"Document {i}. " * 30) for i in range(20)])
    insert_docs(conn, [("poison", None, "Contains __NAN__ somewhere.")])
    w = worker.Worker(
        worker.WorkerSettings(
            conninfo=dsn,
            drain=True,
            install_signal_handlers=False,
            poll_interval=0.1,
            batch_size=6,
        )
    )
    w.run()

    fmt = JsonFormatter()
    lines = [json.loads(fmt.format(r)) for r in caplog.records]
    for line in lines:
        assert {"ts", "level", "logger", "msg"} <= set(line)
    batches = [x for x in lines if x["msg"] == "batch"]
    assert len(batches) >= 2  # 21 messages, batches of 6 and more (the size adapts)
    for b in batches:
        for key in ("messages", "written", "stale", "chunks", "dead", "deferred"):
            assert isinstance(b[key], int), key
        for key in ("chunk_ms", "embed_ms", "write_ms"):
            assert isinstance(b[key], float | int) and b[key] >= 0, key
        assert b["model"] == "v1" and b["level"] == "info"
    assert sum(b["written"] for b in batches) == 20
    assert sum(b["dead"] for b in batches) == 1
    assert sum(b["messages"] for b in batches) == 21
    assert sum(b["chunks"] for b in batches) == one(conn, "SELECT count(*) FROM pgingest.chunks")
    # An error names the document.
    (dead,) = [x for x in lines if x["msg"] == "document dead-lettered"]
    assert dead["doc_key"] == "poison" and isinstance(dead["doc_id"], int)
    assert dead["error_class"] and dead["level"] == "warning"
