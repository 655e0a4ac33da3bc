"""Regression tests for the worker-loop findings of the worker review (claims, probes, stop,
quota pieces, breaker trial slots): each against the real database and the fake provider."""

from __future__ import annotations

import time
from typing import Any

import psycopg

from pgingest import db, worker
from pgingest.testing.fake_provider import FakeEmbeddingServer
from pgingest.worker.claims import ClaimKeeper
from tests.helpers import insert_corpus, register, settings

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
