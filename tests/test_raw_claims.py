"""A batch that mixes raw documents (bytea, parsed in child processes) with plain ones keeps the
claims of all its messages while its provider request outlasts the visibility timeout (the
chaos run's "slow answers" check failed once the files source joined it)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pgingest import worker
from pgingest.raw import queries as raw_queries
from pgingest.testing.fake_provider import FakeEmbeddingServer
from tests.helpers import insert_corpus, settings, wait_for
from tests.test_raw_worker import Expected, fixture_files, model, moto, raw_env  # noqa: F401


def test_a_slow_batch_with_raw_documents_keeps_every_claim(
    model: psycopg.Connection[Any],  # noqa: F811
    dsn: str,
    fake: FakeEmbeddingServer,
    raw_env: str,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    fixture_files: tuple[Path, dict[str, Expected]],  # noqa: F811
) -> None:
    conn = model
    folder, _ = fixture_files
    monkeypatch.setenv("PGINGEST_RAW_TEST_HOOKS", "1")
    monkeypatch.setenv("PGINGEST_RAW_PARSE_TIMEOUT", "3")
    conn.execute("CREATE TABLE public.blobs (name text PRIMARY KEY, data bytea, mime text)")
    conn.execute(
        "SELECT pgingest.add_source('blobs', 'public.blobs', content => 'data', mime => 'mime',"
        " title => 'name')"
    )
    rows: list[tuple[str, bytes, str | None]] = [
        (n, (folder / n).read_bytes(), None) for n in ["multipage.pdf", "handbook.docx"]
    ]
    rows.append(("hang", b"any bytes", "application/x-pgingest-test-hang"))
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO public.blobs (name, data, mime) VALUES (%s, %s, %s)", rows)
    insert_corpus(conn, 6)
    fake.configure(latency_ms=3000)
    row = conn.execute("SELECT queue_name FROM pgingest.models WHERE name = 'v1'").fetchone()
    assert row is not None
    queue = row[0]
    w = worker.Worker(
        settings(dsn, visibility_timeout=1, batch_size=20, max_batch_size=20, parse_processes=2)
    )
    runner = threading.Thread(target=w.run)
    runner.start()
    stolen: list[Any] = []
    try:
        wait_for(
            lambda: (
                conn.execute(
                    f"SELECT count(*) FROM pgmq.q_{queue} WHERE read_ct > 0"  # noqa: S608
                ).fetchone()
                == (9,)
            )
        )
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:  # another worker polling the queue
            got = conn.execute("SELECT msg_id, message FROM pgmq.read(%s, 30, 20)", (queue,))
            stolen += got.fetchall()
            time.sleep(0.2)
    finally:
        w.stopping.set()
        runner.join(timeout=60)
    assert stolen == []


def test_a_batch_reads_at_most_its_budget_of_bytes_and_the_rest_waits(
    model: psycopg.Connection[Any],  # noqa: F811
    dsn: str,
    fake: FakeEmbeddingServer,
    raw_env: str,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A batch of bytea documents reads their bytes up to raw_batch_bytes at once (the first
    always): the others are released without an attempt spent and embedded at a later delivery,
    so a batch of large files cannot hold batch size x the size cap in memory."""
    conn = model
    conn.execute("CREATE TABLE public.blobs (name text PRIMARY KEY, data bytea)")
    conn.execute("SELECT pgingest.add_source('blobs', 'public.blobs', content => 'data')")
    texts = {
        f"note-{i}": (f"Note {i}. " + "A plain text document of some length. " * 60).encode()
        for i in range(4)
    }
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO public.blobs VALUES (%s, %s)", list(texts.items()))
    size = max(len(t) for t in texts.values())

    reads: list[int] = []
    real = raw_queries.raw_documents

    def counted(c: Any, doc_ids: Any, max_bytes: int) -> Any:
        rows = real(c, doc_ids, max_bytes)
        reads.append(sum(len(r.content or b"") for r in rows.values()))
        return rows

    monkeypatch.setattr(raw_queries, "raw_documents", counted)
    w = worker.Worker(settings(dsn, raw_batch_bytes=2 * size + 10, parse_processes=1))
    assert w.run() == 0
    assert max(reads) <= 2 * size + 10  # never more than the budget in one read
    assert sum(1 for r in reads if r > 0) >= 2  # so the four documents took two reads or more
    assert conn.execute(
        "SELECT count(*) FROM pgingest.embedding_state AS e"
        " JOIN pgingest.source_rows AS r USING (doc_id)"
    ).fetchone() == (4,)
    assert conn.execute("SELECT count(*) FROM pgingest.dead_letters").fetchone() == (0,)
