"""The worker hands its free memory back when it goes idle (worker/memory.py,
release_free_memory), once per idle spell, never between two batches."""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
import pytest

from pgingest import worker
from pgingest.testing.fake_provider import FakeEmbeddingServer
from pgingest.worker import memory
from tests.helpers import insert_corpus, register, settings, wait_for


def test_free_memory_goes_back_once_per_idle_spell(
    conn: psycopg.Connection[Any],
    dsn: str,
    fake: FakeEmbeddingServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    register(conn, "v1", fake.url)
    trims: list[int] = []  # the documents embedded at each trim

    def embedded() -> int:
        row = conn.execute("SELECT count(*) FROM pgingest.embedding_state").fetchone()
        return int(row[0]) if row else 0

    monkeypatch.setattr(memory, "release_free_memory", lambda: trims.append(embedded()) or True)
    w = worker.Worker(settings(dsn, drain=False, poll_interval=0.2, batch_size=4))
    t = threading.Thread(target=w.run)
    t.start()
    try:
        time.sleep(0.6)  # idle before any batch: nothing to hand back
        assert trims == []
        insert_corpus(conn, 12)  # three batches of 4, then idle
        wait_for(lambda: len(trims) >= 1 and embedded() == 12)
        time.sleep(1.0)  # ~5 idle polls more
        assert len(trims) == 1
        # after the last batch was read, not between two (its write may still be in flight)
        assert trims[0] >= 8
        insert_corpus(conn, 4, start=12)
        wait_for(lambda: embedded() == 16 and len(trims) == 2)
    finally:
        w.stopping.set()
        t.join()
