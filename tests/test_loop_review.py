"""Regression tests for the worker-loop findings of the worker review (claims, probes, stop,
quota pieces, breaker trial slots): each against the real database and the fake provider."""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg

from pgingest import chunking, db, worker
from pgingest.testing.fake_provider import FakeEmbeddingServer
from pgingest.worker.claims import ClaimKeeper
from tests.helpers import insert_corpus, insert_docs, queue_count, register, settings, wait_for

# -- finding 8: one model's failing extension does not stop the others' -------------------------


def test_a_retired_model_does_not_stop_the_other_models_claims_from_being_extended(
    dsn: str, conn: psycopg.Connection[Any], fake: FakeEmbeddingServer
) -> None:
    register(conn, "v0", fake.url)
    register(conn, "v1", fake.url)
    insert_corpus(conn, 1)
    m0 = db.read_batch(conn, "v0", 2, 10)
    m1 = db.read_batch(conn, "v1", 2, 10)
    assert m0 and m1
    keeper = ClaimKeeper(dsn, 30)
    try:
        keeper.hold("v1", m1)  # first in the round
        keeper.hold("v0", m0)
        conn.execute("SELECT pgingest.retire_model('v1')")  # while its batch is in flight
        assert keeper.extend_now() == len(m0)  # v1's failure logged, v0's claims extended
        time.sleep(2.5)  # past the claim's first visibility timeout (2 s)
        assert db.read_batch(conn, "v0", 30, 10) == []  # still claimed: not read again
    finally:
        keeper.stop()


def _close(w: worker.Worker) -> None:
    """What run()'s way out does, for a worker driven by tick()."""
    w.writer.settle()
    w.writer.shutdown()
    w.claims.stop()
    w.embedder.shutdown()
    w._reset_connections()


# -- finding 9: a silent paused model's probe is not repeated on every pass ----------------------


def test_a_hanging_probe_is_not_due_again_on_the_next_pass(
    dsn: str, conn: psycopg.Connection[Any], fake: FakeEmbeddingServer
) -> None:
    with FakeEmbeddingServer() as silent:
        silent.configure(rates={"timeout": 1.0}, hang_s=30)
        register(conn, "v1", fake.url)
        register(conn, "v2", silent.url)
        conn.execute("SELECT pgingest.pause_model('v2', 'auth: test')")
        insert_corpus(conn, 8)
        w = worker.Worker(
            settings(
                dsn,
                drain=False,
                heartbeat=False,
                batch_size=4,
                min_batch_size=4,
                max_batch_size=4,
                http_timeout=1.0,
                probe_interval=1.0,
            )
        )
        try:
            started = time.monotonic()
            assert w.tick()[0] == 4  # v1's first batch, and v2's probe (hangs for 1 s)
            assert silent.stats()["requests"] == 1
            assert w.tick()[0] == 4  # v1's second batch: no probe, its interval runs from its end
            assert silent.stats()["requests"] == 1
            assert time.monotonic() - started < 1.9
        finally:
            _close(w)


def _start(w: worker.Worker) -> tuple[threading.Thread, list[int]]:
    codes: list[int] = []
    t = threading.Thread(target=lambda: codes.append(w.run()), daemon=True)
    t.start()
    return t, codes


def _embedded(conn: psycopg.Connection[Any], model: str = "v1") -> int:
    row = conn.execute(
        "SELECT count(*) FROM pgingest.embedding_state WHERE model = %s", (model,)
    ).fetchone()
    assert row is not None
    return int(row[0])


# -- finding 6: a stop is not held up by a batch's timed-out requests ----------------------------


def test_a_stop_does_not_wait_for_resends_and_returns_the_batch(
    dsn: str, conn: psycopg.Connection[Any], fake: FakeEmbeddingServer
) -> None:
    fake.configure(rates={"timeout": 1.0}, hang_s=60)  # accepts, never answers
    register(conn, "v1", fake.url)
    insert_docs(conn, [(f"k{i}", None, f"short document number {i}") for i in range(4)])
    w = worker.Worker(
        settings(
            dsn,
            drain=False,
            heartbeat=False,
            http_timeout=0.5,
            request_max_inputs=1,
            in_flight=4,
            max_resends=3,
        )
    )
    t, codes = _start(w)
    wait_for(lambda: int(fake.stats()["requests"]) >= 4, 10)  # the batch's 4 requests in flight
    w.stopping.set()  # what SIGTERM does
    stopped = time.monotonic()
    t.join(10)
    assert not t.is_alive() and codes == [0]
    # the requests in flight time out (0.5 s) and are not resent (0.5 + 4 x 7 s before)
    assert time.monotonic() - stopped < 3.0
    assert int(fake.stats()["requests"]) == 4
    # nothing lost, no attempt spent: the 4 messages come back for the next worker at once
    assert queue_count(conn, "v1") == 4
    fake.configure(rates={})
    wait_for(
        lambda: (
            conn.execute(
                "SELECT count(*) FROM pgmq.q_pgingest_v1 WHERE vt <= clock_timestamp()"
            ).fetchone()
            == (4,)
        ),
        5,
    )
    rows = conn.execute("SELECT message->>'attempts' FROM pgmq.q_pgingest_v1").fetchall()
    assert {r[0] for r in rows} <= {None, "0"}


# -- finding 2: a batch larger than the quota bucket makes progress --------------------------------


def test_a_document_larger_than_the_quota_bucket_is_embedded(
    dsn: str, conn: psycopg.Connection[Any], fake: FakeEmbeddingServer
) -> None:
    register(conn, "v1", fake.url)
    body = " ".join(f"word{i} of a long text" for i in range(120))
    insert_docs(conn, [("big", None, body)])
    w = worker.Worker(
        settings(dsn, drain=True, heartbeat=False, quota_max_wait=0.2, request_max_inputs=1)
    )
    m = next(x for x in db.live_models(conn) if x.name == "v1")
    chunks = chunking.chunk_document(None, body, w.chunker(m))
    total = sum(c.token_count for c in chunks)
    assert len(chunks) >= 2 and total - max(c.token_count for c in chunks) > 20
    # The bucket holds 15 tokens less than the document: its one batch never fits in the
    # bucket plus 0.2 s of refill (15 tokens take over 1 s), but each request does; the last
    # waits those 15 tokens of refill.
    capacity = total - 15
    assert 15 / (capacity / 60) > 1.0
    conn.execute("SELECT pgingest.set_model_quota('v1', NULL, %s)", (capacity / 0.97,))
    t, codes = _start(w)
    try:
        wait_for(lambda: _embedded(conn) == 1, 10)
    finally:
        w.stopping.set()
        t.join(10)
    assert queue_count(conn, "v1") == 0
    assert int(fake.stats()["requests"]) == len(chunks)


# -- finding 1 (the loop's side): a pass that sends nothing takes no half-open trial slot ----------


def test_a_pass_that_sends_nothing_leaves_the_half_open_trial_slot_free(
    dsn: str, conn: psycopg.Connection[Any], fake: FakeEmbeddingServer
) -> None:
    register(conn, "v1", fake.url)
    w = worker.Worker(
        settings(dsn, drain=False, heartbeat=False, breaker_threshold=1, breaker_reset_seconds=1.0)
    )
    try:
        breaker = w.embedder.breaker("v1")
        breaker.record_failure()
        time.sleep(1.05)
        assert breaker.state == breaker.HALF_OPEN
        assert w.tick() == (0, False)  # nothing queued: nothing sent
        assert breaker.allow()  # the trial slot is still there for a request really sent
    finally:
        _close(w)


def test_a_trial_request_the_quota_defers_leaves_the_half_open_trial_slot_free(
    dsn: str, conn: psycopg.Connection[Any], fake: FakeEmbeddingServer
) -> None:
    register(conn, "v1", fake.url)
    insert_docs(conn, [("k", None, " ".join(f"word{i}" for i in range(60)))])
    # a bucket of 29 tokens, and no more than 0.1 s of waiting: the batch is deferred unsent
    conn.execute("SELECT pgingest.set_model_quota('v1', NULL, 30)")
    w = worker.Worker(
        settings(
            dsn,
            drain=False,
            heartbeat=False,
            breaker_threshold=1,
            breaker_reset_seconds=1.0,
            quota_max_wait=0.1,
        )
    )
    try:
        breaker = w.embedder.breaker("v1")
        breaker.record_failure()
        time.sleep(1.05)
        assert breaker.state == breaker.HALF_OPEN
        w.tick()
        w.writer.flush()
        assert int(fake.stats()["requests"]) == 0  # deferred by the quota, nothing sent
        assert w.embedder.held("v1")
        assert breaker.allow()  # the trial slot is still there for a request really sent
    finally:
        _close(w)
