"""Regression tests of the provider client review, against the database: a 429's Retry-After is
capped before it holds the shared quota (finding 3), and the worker end to end with the breaker
half-open (finding 1), a deeply nested 401 (finding 5) and a 503 with Retry-After (finding 7).
The provider is the fake (a real HTTP server) or a small local HTTP server."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from pgingest import providers, worker
from pgingest.testing.fake_provider import FakeEmbeddingServer
from pgingest.worker.pacing import Pacer, QuotaStore
from tests.helpers import insert_corpus, register, settings, wait_for

HOUR = providers.MAX_RETRY_AFTER


def levels(conn: psycopg.Connection[Any]) -> tuple[float, float]:
    row = conn.execute(
        "SELECT request_level, token_level FROM pgingest.provider_quota WHERE model = 'v1'"
    ).fetchone()
    assert row is not None
    return float(row[0]), float(row[1])


# --------------------------------------------------------------------------- finding 3


@pytest.mark.parametrize("retry_after", ["31536000", "'Infinity'", "1e300"])
def test_quota_rejected_caps_the_retry_after_in_sql(
    conn: psycopg.Connection[Any], fake: FakeEmbeddingServer, retry_after: str
) -> None:
    register(conn, "v1", fake.url)
    conn.execute("SELECT pgingest.set_model_quota('v1', 6000, 600000, 0)")  # 100 req/s
    conn.execute(f"SELECT pgingest.quota_rejected_v1('v1', {retry_after})")
    # nothing for an hour at most: the buckets owe 3600 s of their limits, not a year's
    assert levels(conn) == (pytest.approx(-HOUR * 100), pytest.approx(-HOUR * 10000))
    row = conn.execute("SELECT pgingest.quota_take_v1('v1', 1)").fetchone()
    assert row is not None and HOUR <= float(row[0]) <= HOUR * 1.3  # the pace cut (0.8)


class Recording(QuotaStore):
    """The real store (its database), which also keeps the Retry-After it was given."""

    def __init__(self, dsn: str) -> None:
        super().__init__(dsn)
        self.given: list[float | None] = []

    def rejected(self, model: str, retry_after: float | None) -> bool:
        self.given.append(retry_after)
        return super().rejected(model, retry_after)


@pytest.mark.parametrize(
    "headers",
    [
        {"retry-after": "31536000"},
        {"retry-after": "Fri, 01 Jan 2100 00:00:00 GMT"},
        {"retry-after-ms": "31536000000"},
    ],
)
def test_the_pacer_caps_a_429_retry_after(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer, headers: dict[str, str]
) -> None:
    register(conn, "v1", fake.url)
    conn.execute("SELECT pgingest.set_model_quota('v1', 6000, 600000, 0)")
    store = Recording(dsn)
    try:
        Pacer("v1", store).on_response(429, headers)
    finally:
        store.close()
    assert store.given == [HOUR]
    assert levels(conn) == (pytest.approx(-HOUR * 100), pytest.approx(-HOUR * 10000))


def test_a_429_with_a_year_of_retry_after_holds_the_workers_an_hour_at_most(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    """End to end: the fake answers one 429 with Retry-After of a year to a paced worker."""
    register(conn, "v1", fake.url)
    insert_corpus(conn, 3)
    conn.execute("SELECT pgingest.set_model_quota('v1', 6000, NULL, 0)")
    fake.configure(retry_after=31536000)
    fake.fail_next("rate_limit")
    w = worker.Worker(settings(dsn, drain=False, heartbeat=False))
    t = threading.Thread(target=w.run, daemon=True)
    t.start()
    try:
        wait_for(lambda: fake.stats()["requests"] >= 1, 30)
        wait_for(lambda: levels(conn)[0] < 0, 30)
    finally:
        w.stopping.set()
        t.join(60)
    assert levels(conn)[0] >= -HOUR * 100 - 1


# --------------------------------------------------------------------------- finding 1


def test_a_half_open_breaker_serves_the_model_again(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    """One batch of 5xx opens the breaker (threshold 1); a pass that takes the half-open trial
    and sends nothing must not keep it: the healthy provider is served again, --drain ends."""
    register(conn, "v1", fake.url)
    insert_corpus(conn, 3)
    fake.fail_next("server_error", 5)  # the first batch's request and its 4 retries
    w = worker.Worker(
        settings(dsn, drain=True, heartbeat=False, breaker_threshold=1, breaker_reset_seconds=0.5)
    )
    codes: list[int] = []
    t = threading.Thread(target=lambda: codes.append(w.run()), daemon=True)
    t.start()
    t.join(45)
    stuck = t.is_alive()
    if stuck:
        w.stopping.set()
        t.join(30)
    assert not stuck, f"breaker stuck {w.embedder.breaker('v1')!r}, {fake.stats()['requests']} req"
    assert codes == [0]
    row = conn.execute("SELECT count(*) FROM pgingest.embedding_state WHERE model = 'v1'")
    assert row.fetchone() == (3,)


# --------------------------------------------------------------------------- a local server


class Answer:
    def __init__(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.status, self.body, self.headers = status, body, headers or {}
        self.requests = 0


@pytest.fixture
def answering() -> Iterator[Any]:
    """answering(status, body, headers) -> (base URL, Answer): a server that answers that to
    every POST."""
    servers: list[http.server.ThreadingHTTPServer] = []

    def start(status: int, body: bytes, headers: dict[str, str] | None = None) -> Any:
        answer = Answer(status, body, headers)

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                answer.requests += 1
                self.send_response(answer.status)
                for k, v in answer.headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer.body)))
                self.end_headers()
                self.wfile.write(answer.body)

            def log_message(self, *args: Any) -> None:
                pass

        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        servers.append(srv)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{srv.server_address[1]}/v1", answer

    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()


# --------------------------------------------------------------------------- finding 5


def test_a_deeply_nested_401_pauses_the_model(
    conn: psycopg.Connection[Any], dsn: str, answering: Any
) -> None:
    url, _ = answering(401, b"[" * 200_000 + b"]" * 200_000)
    register(conn, "v1", url)
    insert_corpus(conn, 2)
    w = worker.Worker(settings(dsn, drain=False, heartbeat=False, max_attempts=1))
    t = threading.Thread(target=w.run, daemon=True)
    t.start()
    try:
        wait_for(
            lambda: (
                conn.execute("SELECT paused FROM pgingest.models WHERE name = 'v1'").fetchone()
                == (True,)
            ),
            30,
        )
    finally:
        w.stopping.set()
        t.join(60)
    assert w.failed_batches == 0
    assert conn.execute("SELECT count(*) FROM pgingest.dead_letters").fetchone() == (0,)


# --------------------------------------------------------------------------- finding 7


def test_a_503_retry_after_defers_the_documents_that_long(
    conn: psycopg.Connection[Any], dsn: str, answering: Any
) -> None:
    """The client's own retries used up (max_retries=0): the worker defers by the server's
    Retry-After (600 s), not by its 1-2 s backoff, and spends one attempt."""
    url, answer = answering(
        503, b'{"error": {"message": "down for maintenance"}}', {"Retry-After": "600"}
    )
    register(conn, "v1", url)
    insert_corpus(conn, 2)

    def factory(m: Any) -> providers.OpenAICompatibleProvider:
        return providers.OpenAICompatibleProvider(url, m.model_id, m.dimensions, max_retries=0)

    w = worker.Worker(
        settings(
            dsn,
            drain=False,
            heartbeat=False,
            max_attempts=3,
            breaker_threshold=1000,
            provider_factory=factory,
        )
    )
    t = threading.Thread(target=w.run, daemon=True)
    t.start()

    def deferred() -> list[tuple[int, float]]:
        return [
            (int(a), float(s))
            for a, s in conn.execute(
                "SELECT (message->>'attempts')::int,"
                " extract(epoch FROM vt - clock_timestamp()) FROM pgmq.q_pgingest_v1"
            ).fetchall()
            if a is not None
        ]

    try:
        wait_for(lambda: len(deferred()) == 2 and all(a >= 1 for a, _ in deferred()), 30)
        time.sleep(3)  # a 1-2 s backoff would have let them come back and die by now
    finally:
        w.stopping.set()
        t.join(60)
    assert conn.execute("SELECT count(*) FROM pgingest.dead_letters").fetchone() == (0,)
    got = deferred()
    assert [a for a, _ in got] == [1, 1]
    assert all(590 <= s <= 600 for _, s in got), got
