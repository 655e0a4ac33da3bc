"""The worker against a provider of limited capacity (issue 25): the fake's capacity mode computes
one request at a time at a fixed rate, like a CPU embedding server."""

from __future__ import annotations

from typing import Any

import psycopg

from pgingest import worker
from pgingest.testing.fake_provider import FakeEmbeddingServer
from tests.helpers import assert_exactly_predicted, queue_count, register, settings


def short_documents(conn: psycopg.Connection[Any], n: int) -> None:
    """``n`` documents of one chunk each: one input per document."""
    conn.execute(
        "INSERT INTO pgingest.documents (key, title, body)"
        " SELECT 'k' || g, 'Title ' || g, 'A short note number ' || g || ' about capacity.'"
        " FROM generate_series(1, %s) AS g",
        (n,),
    )


def test_a_serial_server_is_never_sent_work_twice(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    """400 inputs per second, one request at a time, requests of 32 inputs (0.08 s each): with
    8 requests in flight the last would wait 0.64 s, past the 0.3 s timeout, be sent again
    while the server still computes it, and so on. The worker measures instead: its limit stays
    at 2 or 3, each timeout follows the latency, and nothing is abandoned or sent twice."""
    register(conn, "v1", fake.url)
    short_documents(conn, 480)
    fake.configure(capacity_inputs_per_s=400.0)
    w = worker.Worker(
        settings(dsn, http_timeout=0.3, in_flight=8, request_max_inputs=32, batch_size=160)
    )
    assert w.run() == 0
    stats = fake.stats()
    assert stats["abandoned"] == 0
    assert stats["resent"] == 0
    assert stats["capacity_inputs"] == 480  # each input computed once
    assert w.embedder.limit("v1").timeouts == 0
    assert w.embedder.limit("v1").allowed <= 3
    assert_exactly_predicted(conn)
    assert queue_count(conn, "v1") == 0
    assert conn.execute("SELECT count(*) FROM pgingest.dead_letters").fetchone() == (0,)


def test_a_parallel_server_gets_every_request_in_flight(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    """The same worker against the fake without a capacity limit: latency stays flat, so the
    limit climbs to ``in_flight``."""
    register(conn, "v1", fake.url)
    short_documents(conn, 480)
    fake.configure(slow_s=0.6, rates={"slow": 1.0})  # each request 0.6 s, whatever is in flight
    # (answers within a tenth of the 5 s floor timeout would count as flat anyway)
    w = worker.Worker(
        settings(dsn, http_timeout=5.0, in_flight=3, request_max_inputs=16, batch_size=240)
    )
    assert w.run() == 0
    assert w.embedder.limit("v1").allowed == 3
    assert_exactly_predicted(conn)


def test_a_timed_out_request_is_resent_after_the_others_answer(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    """A request that gets no answer in time halves the limit and is sent again with a longer
    timeout; the documents are embedded, no attempt spent, nothing dead-lettered."""
    register(conn, "v1", fake.url)
    short_documents(conn, 40)
    fake.fail_next("timeout", 1)
    w = worker.Worker(
        settings(dsn, http_timeout=0.5, request_max_inputs=8, batch_size=40, max_attempts=1)
    )
    assert w.run() == 0
    assert w.embedder.limit("v1").timeouts == 1
    assert_exactly_predicted(conn)
    assert conn.execute("SELECT count(*) FROM pgingest.dead_letters").fetchone() == (0,)
