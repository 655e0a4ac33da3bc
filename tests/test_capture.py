"""Change capture: one message per (document version, live model); no-op updates queue nothing;
DELETE and TRUNCATE leave no chunk behind."""

from __future__ import annotations

import subprocess
from typing import Any

import numpy as np
import psycopg
import pytest

from pgingest import db
from tests.helpers import queue_count, register

URL = "http://127.0.0.1:9/v1"  # never called in these tests


@pytest.fixture
def two_models(conn: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    assert register(conn, "v1", URL) == "active"
    assert register(conn, "v2", URL, model_id="fake-768", dimensions=768) == "shadow"
    return conn


def test_no_model_no_message(conn: psycopg.Connection[Any]) -> None:
    conn.execute("INSERT INTO pgingest.documents (key, body) VALUES ('a', 'text')")
    assert conn.execute("SELECT count(*) FROM pgmq.meta").fetchone() == (0,)


def test_single_insert_one_message_per_live_model(two_models: psycopg.Connection[Any]) -> None:
    conn = two_models
    conn.execute("INSERT INTO pgingest.documents (key, title, body) VALUES ('k1', 'T', 'hello')")
    assert queue_count(conn, "v1") == 1
    assert queue_count(conn, "v2") == 1
    msg = conn.execute("SELECT message FROM pgmq.q_pgingest_v1").fetchone()
    assert msg is not None
    h = conn.execute("SELECT encode(content_hash, 'hex'), id FROM pgingest.documents").fetchone()
    assert h is not None
    assert msg[0] == {"doc_id": h[1], "hash": h[0], "attempts": 0}


def test_bulk_insert_select_and_copy(two_models: psycopg.Connection[Any]) -> None:
    conn = two_models
    conn.execute(
        "INSERT INTO pgingest.documents (key, body)"
        " SELECT 'bulk-' || g, 'body number ' || g FROM generate_series(1, 10000) AS g"
    )
    assert queue_count(conn, "v1") == 10000
    assert queue_count(conn, "v2") == 10000
    with conn.cursor().copy("COPY pgingest.documents (key, title, body) FROM STDIN") as cp:
        for i in range(500):
            cp.write_row((f"copy-{i}", f"title {i}", f"copied body {i}"))
    assert queue_count(conn, "v1") == 10500
    ids = conn.execute(
        "SELECT count(DISTINCT (message->>'doc_id')::bigint) FROM pgmq.q_pgingest_v2"
    ).fetchone()
    assert ids == (10500,)


def test_noop_update_queues_nothing_real_update_queues_one(
    two_models: psycopg.Connection[Any],
) -> None:
    conn = two_models
    conn.execute("INSERT INTO pgingest.documents (key, title, body) VALUES ('k', 'T', 'b')")
    conn.execute("UPDATE pgingest.documents SET body = 'b', title = 'T'")
    conn.execute("""UPDATE pgingest.documents SET metadata = '{"lang": "en"}'""")
    assert queue_count(conn, "v1") == 1
    conn.execute("UPDATE pgingest.documents SET body = 'b2'")
    assert queue_count(conn, "v1") == 2
    assert queue_count(conn, "v2") == 2
    conn.execute("UPDATE pgingest.documents SET title = 'T2'")
    assert queue_count(conn, "v1") == 3


def _fake_chunks(conn: psycopg.Connection[Any], model: str, dims: int) -> None:
    """Writes one chunk per document through the worker API (as a worker would)."""
    docs = conn.execute("SELECT id, content_hash FROM pgingest.documents ORDER BY id").fetchall()
    rows = db.ChunkRows(
        doc_ids=[d[0] for d in docs],
        ordinals=[0] * len(docs),
        contents=["c"] * len(docs),
        chunk_hashes=[b"h"] * len(docs),
        token_counts=[1] * len(docs),
        char_starts=[0] * len(docs),
        char_ends=[1] * len(docs),
        embeddings=[np.ones(dims, dtype=np.float32) for _ in docs],
    )
    written, stale, chunks = db.complete_batch(
        conn, model, [], [d[0] for d in docs], [d[1] for d in docs], rows, "test", 1
    )
    assert (written, stale, chunks) == (len(docs), 0, len(docs))


def test_delete_and_truncate_leave_no_chunk(two_models: psycopg.Connection[Any]) -> None:
    conn = two_models
    conn.execute(
        "INSERT INTO pgingest.documents (key, body) SELECT 'd' || g, 'x' || g"
        " FROM generate_series(1, 20) AS g"
    )
    _fake_chunks(conn, "v1", 384)
    assert conn.execute("SELECT count(*) FROM pgingest.chunks").fetchone() == (20,)
    conn.execute("DELETE FROM pgingest.documents WHERE key IN ('d1', 'd2', 'd3')")
    assert conn.execute("SELECT count(*) FROM pgingest.chunks").fetchone() == (17,)
    assert conn.execute("SELECT count(*) FROM pgingest.store_v1").fetchone() == (17,)
    assert conn.execute("SELECT count(*) FROM pgingest.embedding_state").fetchone() == (17,)
    orphans = conn.execute(
        "SELECT count(*) FROM pgingest.chunks c"
        " WHERE NOT EXISTS (SELECT 1 FROM pgingest.documents d WHERE d.id = c.doc_id)"
    ).fetchone()
    assert orphans == (0,)
    conn.execute("TRUNCATE pgingest.documents")
    assert conn.execute("SELECT count(*) FROM pgingest.chunks").fetchone() == (0,)
    assert conn.execute("SELECT count(*) FROM pgingest.store_v1").fetchone() == (0,)
    assert conn.execute("SELECT count(*) FROM pgingest.embedding_state").fetchone() == (0,)


def test_messages_of_deleted_documents_are_reported_stale(
    two_models: psycopg.Connection[Any],
) -> None:
    conn = two_models
    conn.execute("INSERT INTO pgingest.documents (key, body) VALUES ('gone', 'x'), ('kept', 'y')")
    conn.execute("DELETE FROM pgingest.documents WHERE key = 'gone'")
    msgs = db.read_batch(conn, "v1", 30, 10)
    assert sorted(m.status for m in msgs) == ["current", "stale"]
    assert [m.body for m in msgs if m.status == "current"] == ["y"]


def test_plain_insert_from_psql(two_models: psycopg.Connection[Any], dsn: str) -> None:
    subprocess.run(
        [
            "psql",
            "-X",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            dsn,
            "-c",
            "INSERT INTO pgingest.documents (key, title, body) VALUES ('from-psql', 'Hi', 'from psql')",
        ],
        check=True,
        capture_output=True,
    )
    assert queue_count(two_models, "v1") == 1
    assert queue_count(two_models, "v2") == 1


@pytest.mark.parametrize(
    ("body", "metadata", "constraint"),
    [
        ("", "{}", "documents_body_not_blank"),
        ("  \n\t ", "{}", "documents_body_not_blank"),
        ("ok", "[1, 2]", "documents_metadata_is_object"),
    ],
)
def test_bad_documents_are_refused_at_insert(
    conn: psycopg.Connection[Any], body: str, metadata: str, constraint: str
) -> None:
    with pytest.raises(psycopg.errors.CheckViolation) as ei:
        conn.execute(
            "INSERT INTO pgingest.documents (key, body, metadata) VALUES ('k', %s, %s::jsonb)",
            (body, metadata),
        )
    assert ei.value.diag.constraint_name == constraint
