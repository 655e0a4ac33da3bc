"""The worker against the real database and the fake provider: the design's invariants."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import psycopg
import pytest

from pgingest import db, worker
from pgingest.testing.fake_provider import FakeEmbeddingServer, RequestInfo
from pgingest.worker.writer import Writer
from tests.conftest import ROOT
from tests.helpers import (
    assert_exactly_predicted,
    drain,
    insert_corpus,
    queue_count,
    register,
    settings,
    wait_for,
)


def failing_once(exc: Exception) -> Callable[..., Writer]:
    """A writer factory for ``Worker(writer_factory=...)``: the first write-back raises ``exc``
    before its transaction begins, the next ones are written."""

    class FailingOnce(Writer):
        failed = False

        def execute(self, *a: Any, **kw: Any) -> None:
            if not self.failed:
                self.failed = True
                raise exc
            super().execute(*a, **kw)

    return FailingOnce


def test_thousand_documents_end_with_exactly_the_predicted_chunks(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    register(conn, "v1", fake.url)
    conn.execute(
        "INSERT INTO pgingest.documents (key, title, body)"
        " SELECT 'k' || g, 'Title ' || g, repeat('Sentence number ' || g || ' about vectors. ', 20 + g % 60)"
        " FROM generate_series(1, 1000) AS g"
    )
    drain(dsn)
    assert_exactly_predicted(conn)
    assert queue_count(conn, "v1") == 0
    assert conn.execute("SELECT count(*) FROM pgingest.dead_letters").fetchone() == (0,)
    # The stored vector is the provider's vector, normalised.
    row = conn.execute(
        "SELECT c.embedding, c.title, c.content FROM pgingest.search_chunks c"
        " ORDER BY c.doc_id, c.ordinal LIMIT 1"
    ).fetchone()
    assert row is not None
    raw = fake.vector_for(f"{row[1]}\n\n{row[2]}", "fake-384")
    np.testing.assert_allclose(row[0].to_numpy(), raw / np.linalg.norm(raw), atol=1e-6)


def test_duplicate_and_replayed_messages_leave_one_set_of_chunks(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    register(conn, "v1", fake.url)
    insert_corpus(conn, 20)
    # Duplicate every message.
    conn.execute(
        "SELECT pgmq.send_batch('pgingest_v1', array_agg(message)) FROM pgmq.q_pgingest_v1"
    )
    assert queue_count(conn, "v1") == 40

    w = worker.Worker(
        settings(dsn, visibility_timeout=1, batch_size=10),
        writer_factory=failing_once(RuntimeError("simulated crash between embedding and commit")),
    )
    # The failed batch fails alone (issue 18, item 2): its messages come back after the
    # visibility timeout and the same --drain run writes them.
    assert w.run() == 0
    assert w.writer.failures == 1
    drain(dsn)
    assert_exactly_predicted(conn)
    dup = conn.execute(
        "SELECT count(*) FROM (SELECT doc_id, ordinal FROM pgingest.chunks GROUP BY 1, 2 HAVING count(*) > 1) s"
    ).fetchone()
    assert dup == (0,)
    assert queue_count(conn, "v1") == 0


def test_a_failed_write_back_does_not_drop_the_next_batch(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    """Pipelining: batch 2 is embedded while batch 1 is written. When that write fails (here a
    cancelled statement), batch 2 is still written; only batch 1's messages wait for their
    visibility timeout."""
    register(conn, "v1", fake.url)
    insert_corpus(conn, 30)

    w = worker.Worker(
        settings(dsn, drain=False, batch_size=10, max_batch_size=10, visibility_timeout=300),
        writer_factory=failing_once(psycopg.errors.QueryCanceled("simulated statement timeout")),
    )
    t = threading.Thread(target=w.run)
    t.start()

    def embedded() -> int:
        row = conn.execute(
            "SELECT count(*) FROM pgingest.embedding_state WHERE model = 'v1'"
        ).fetchone()
        return int(row[0]) if row else 0

    try:
        wait_for(lambda: embedded() >= 20, timeout=30)
        time.sleep(1.0)  # nothing else becomes visible: batch 1 waits for its timeout
        assert embedded() == 20
        assert queue_count(conn, "v1") == 10
    finally:
        w.stopping.set()
        t.join(30)
    assert not t.is_alive()


@pytest.mark.parametrize("change", ["update", "delete"])
def test_document_changed_while_embedding_ends_with_the_new_version(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer, change: str
) -> None:
    register(conn, "v1", fake.url)
    conn.execute(
        "INSERT INTO pgingest.documents (key, title, body) VALUES ('x', 'X', 'old text of x')"
    )
    done = threading.Event()

    def hook(info: RequestInfo) -> None:
        if done.is_set() or not any("old text" in t for t in info.inputs):
            return
        done.set()
        with psycopg.connect(dsn, autocommit=True) as c:
            if change == "update":
                c.execute("UPDATE pgingest.documents SET body = 'new text of x' WHERE key = 'x'")
            else:
                c.execute("DELETE FROM pgingest.documents WHERE key = 'x'")

    fake.on_request = hook
    drain(dsn)
    assert done.is_set()
    contents = [r[0] for r in conn.execute("SELECT content FROM pgingest.chunks")]
    assert contents == (["new text of x"] if change == "update" else [])
    assert queue_count(conn, "v1") == 0
    assert conn.execute("SELECT count(*) FROM pgingest.dead_letters").fetchone() == (0,)


def test_no_transaction_is_open_during_http_calls(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    """No transaction waits on an HTTP call. With two requests in flight the worker's other
    connections work meanwhile (the main thread reads the next batch, the writer commits the
    previous one: pipelining), so a statement may be running at the moment a request arrives;
    but every transaction seen then ends while the call is still held open. (The test asserted
    the claiming connection idle at that moment: under load its next read was sometimes
    caught running, a statement, not a transaction held across the call.)"""
    register(conn, "v1", fake.url)
    insert_corpus(conn, 50)
    seen: list[tuple[Any, ...]] = []
    held: list[tuple[Any, ...]] = []
    watcher = psycopg.connect(dsn, autocommit=True)
    lock = threading.Lock()
    query = (
        "SELECT application_name, state, xact_start, pid FROM pg_stat_activity"
        " WHERE datname = current_database() AND application_name LIKE 'pgingest%%'"
        " AND application_name <> 'pgingest-claims'"
    )

    def hook(info: RequestInfo) -> None:
        with lock:
            rows = watcher.execute(query).fetchall()
            seen.extend(rows)
            open_xacts = {(r[0], r[3], r[2]) for r in rows if r[2] is not None}
            deadline = time.monotonic() + 10
            while open_xacts and time.monotonic() < deadline:  # the HTTP call is held here
                time.sleep(0.01)
                now = {(r[0], r[3], r[2]) for r in watcher.execute(query).fetchall()}
                open_xacts &= now
            held.extend(open_xacts)

    fake.on_request = hook
    try:
        drain(dsn, in_flight=2, request_max_inputs=8, batch_size=16)
    finally:
        watcher.close()
    assert fake.stats()["requests"] >= 5
    assert any(r[0] == "pgingest-worker" for r in seen)
    assert any(r[0] == "pgingest-writer" for r in seen)
    assert held == []


def test_rate_limits_and_unavailable_are_retried_without_spending_attempts(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    register(conn, "v1", fake.url)
    insert_corpus(conn, 200)
    fake.configure(rates={"rate_limit": 0.2, "unavailable": 0.1}, retry_after=0, seed=3)
    # max_attempts=1: a single spent attempt would dead-letter. The provider's own retries
    # absorb 503s; 429s are never counted as attempts.
    w = drain(dsn, max_attempts=1, request_max_inputs=4, in_flight=2)
    assert w is not None
    stats = fake.stats()
    assert stats["by_status"].get(429, 0) > 10
    assert stats["by_status"].get(503, 0) > 5
    assert conn.execute("SELECT count(*) FROM pgingest.dead_letters").fetchone() == (0,)
    assert_exactly_predicted(conn)


def test_auth_error_pauses_the_model_and_a_fixed_key_resumes(
    conn: psycopg.Connection[Any], dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FakeEmbeddingServer(api_key="right-key") as fake:
        register(conn, "v1", fake.url, api_key_env="PGINGEST_TEST_KEY")
        insert_corpus(conn, 30)
        monkeypatch.setenv("PGINGEST_TEST_KEY", "wrong-key")
        w = worker.Worker(settings(dsn, drain=False))
        t = threading.Thread(target=w.run)
        t.start()
        try:
            wait_for(
                lambda: conn.execute("SELECT paused FROM pgingest.models").fetchone() == (True,)
            )
            reason = conn.execute("SELECT paused_reason FROM pgingest.models").fetchone()
            assert reason is not None and "auth" in reason[0]
            assert "wrong-key" not in reason[0]
            assert conn.execute("SELECT count(*) FROM pgingest.dead_letters").fetchone() == (0,)
            assert queue_count(conn, "v1") == 30
            monkeypatch.setenv("PGINGEST_TEST_KEY", "right-key")
            wait_for(
                lambda: (
                    conn.execute("SELECT count(*) FROM pgingest.embedding_state").fetchone()
                    == (30,)
                ),
                timeout=60,
            )
        finally:
            w.stopping.set()
            t.join()
    assert conn.execute("SELECT paused FROM pgingest.models").fetchone() == (False,)


def test_bad_vectors_and_rejected_inputs_are_dead_lettered_and_requeued(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    register(conn, "v1", fake.url)
    insert_corpus(conn, 20)
    bad = {
        "nan": "this text has __NAN__ inside",
        "dim": "this text has __DIM__ inside",
        "zero": "this text has __ZERO__ inside",
        "inf": "this text has __INF__ inside",
        "rejected": "the provider refuses __REJECT__ this one",
        "blank": "\u200b\u200b\u200b",
    }
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO pgingest.documents (key, body) VALUES (%s, %s)", list(bad.items())
        )
    drain(dsn)
    letters = dict(
        conn.execute(
            "SELECT doc_key, error_class || ': ' || error_message FROM pgingest.dead_letters"
        ).fetchall()
    )
    assert set(letters) == set(bad)
    assert letters["nan"].startswith("invalid_vector_non_finite")
    assert letters["inf"].startswith("invalid_vector_non_finite")
    assert letters["dim"].startswith("invalid_vector_dimension")
    assert letters["zero"].startswith("invalid_vector_zero_vector")
    assert letters["rejected"].startswith("rejected_input")
    assert letters["blank"].startswith("empty_document")
    assert conn.execute("SELECT count(*) FROM pgingest.embedding_state").fetchone() == (20,)
    assert queue_count(conn, "v1") == 0

    # Fix the documents, or requeue after fixing the provider: requeue brings them back.
    conn.execute(
        "UPDATE pgingest.documents SET body = replace(body, '__NAN__', 'nan') WHERE key = 'nan'"
    )
    drain(dsn)
    assert conn.execute(
        "SELECT count(*) FROM pgingest.dead_letters WHERE doc_key = 'nan'"
    ).fetchone() == (0,)
    n = conn.execute(
        "SELECT pgingest.requeue_dead_letters(p_error_class => 'invalid_vector_dimension')"
    ).fetchone()
    assert n == (1,)
    assert queue_count(conn, "v1") == 1
    drain(dsn)  # still poisoned: dead-lettered again, with its reason
    assert conn.execute(
        "SELECT error_class FROM pgingest.dead_letters WHERE doc_key = 'dim'"
    ).fetchone() == ("invalid_vector_dimension",)


def test_two_workers_drain_five_thousand_documents(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    register(conn, "v1", fake.url)
    conn.execute(
        "INSERT INTO pgingest.documents (key, title, body)"
        " SELECT 'k' || g, NULL, 'Short document number ' || g || '. ' || repeat('word ', g % 300)"
        " FROM generate_series(1, 5000) AS g"
    )
    workers = [worker.Worker(settings(dsn)) for _ in range(2)]
    threads = [threading.Thread(target=w.run) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert_exactly_predicted(conn)
    assert queue_count(conn, "v1") == 0


def test_sigkill_mid_batch_loses_nothing(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    register(conn, "v1", fake.url)
    insert_corpus(conn, 300)
    fake.configure(latency_ms=100)
    cmd = [
        sys.executable,
        "-m",
        "pgingest.cli",
        "worker",
        "--database-url",
        dsn,
        "--visibility-timeout",
        "2",
        "--batch-size",
        "20",
        "--in-flight",
        "1",
        "--drain",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    for _ in range(3):
        p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)
        p.send_signal(signal.SIGKILL)
        p.wait()
    embedded = conn.execute("SELECT count(*) FROM pgingest.embedding_state").fetchone()
    assert embedded is not None and embedded[0] < 300  # it really was killed mid-run
    fake.configure(latency_ms=0)
    time.sleep(2.1)
    subprocess.run(
        [*cmd, "--poll-interval", "0.2"], env=env, check=True, timeout=120, capture_output=True
    )
    assert_exactly_predicted(conn)
    assert queue_count(conn, "v1") == 0
    assert conn.execute("SELECT count(*) FROM pgingest.dead_letters").fetchone() == (0,)


def test_sigterm_exits_cleanly_and_releases_nothing_half_done(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    register(conn, "v1", fake.url)
    insert_corpus(conn, 100)
    fake.configure(latency_ms=50)
    cmd = [
        sys.executable,
        "-m",
        "pgingest.cli",
        "worker",
        "--database-url",
        dsn,
        "--batch-size",
        "10",
        "--in-flight",
        "1",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for(
        lambda: (
            (conn.execute("SELECT count(*) FROM pgingest.embedding_state").fetchone() or (0,))[0]
            > 0
        )
    )
    p.send_signal(signal.SIGTERM)
    out, _ = p.communicate(timeout=30)
    assert p.returncode == 0, out
    assert "worker stopped" in out
    # Whatever it claimed and did not finish is either written or still queued.
    embedded = conn.execute("SELECT count(*) FROM pgingest.embedding_state").fetchone()
    assert embedded is not None
    assert embedded[0] + queue_count(conn, "v1") == 100
    _ = db  # the worker API module is exercised through the worker


def test_a_body_over_the_document_limit_is_dead_lettered_and_requeued(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    """A body far beyond what the model takes is chunked; past the per-document chunk limit it
    becomes a dead letter with the reason, and requeue_dead_letters brings it back."""
    register(conn, "v1", fake.url)
    conn.execute(
        "INSERT INTO pgingest.documents (key, body) VALUES ('huge', repeat('many words here. ', 2000))"
    )
    insert_corpus(conn, 3)
    drain(dsn, max_chunks_per_document=20)
    letter = conn.execute(
        "SELECT doc_key, error_class, error_message FROM pgingest.dead_letters"
    ).fetchone()
    assert letter is not None
    assert letter[:2] == ("huge", "too_many_chunks")
    assert "exceed the limit of 20" in letter[2]
    assert conn.execute("SELECT count(*) FROM pgingest.embedding_state").fetchone() == (3,)
    assert conn.execute("SELECT pgingest.requeue_dead_letters('v1')").fetchone() == (1,)
    drain(dsn, max_chunks_per_document=5000)
    assert conn.execute("SELECT count(*) FROM pgingest.dead_letters").fetchone() == (0,)
    assert_exactly_predicted(conn)
