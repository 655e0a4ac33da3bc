"""Change capture: one message per (document version, live model); no-op updates queue nothing;
DELETE and TRUNCATE leave no chunk behind."""

from __future__ import annotations

import hashlib
import subprocess
import threading
import time
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
    conn.execute("UPDATE pgingest.documents SET body = 'changed'")
    assert conn.execute("SELECT count(*) FROM pgmq.meta").fetchone() == (0,)
    for name, body in compiled_sources(conn).items():
        assert "INSERT INTO pgmq." not in body, name


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


def test_every_update_of_a_row_stamps_updated_at(conn: psycopg.Connection[Any]) -> None:
    """documents_touch_updated_at sets updated_at to the UPDATE's now(), a no-op UPDATE too (as
    it always did: its old `NEW IS DISTINCT FROM OLD` saw the generated hash NULL in NEW); it
    runs without SET search_path (a SET clause cost ~9 us a row, issue 19), with the writer's
    rights."""
    conn.execute("INSERT INTO pgingest.documents (key, title, body) VALUES ('k', 'T', 'b')")
    for stmt in (
        "UPDATE pgingest.documents SET body = 'b2'",
        "UPDATE pgingest.documents SET body = 'b2'",  # nothing changes
        "UPDATE pgingest.documents SET updated_at = '2000-01-01'",
    ):
        with conn.transaction():
            conn.execute(stmt)
            row = conn.execute(
                "SELECT d.updated_at = now(), d.updated_at > d.created_at FROM pgingest.documents AS d"
            ).fetchone()
        assert row == (True, True), stmt
    fn = conn.execute(
        "SELECT p.proconfig, p.prosecdef FROM pg_proc AS p"
        " WHERE p.oid = 'pgingest._touch_updated_at()'::regprocedure"
    ).fetchone()
    assert fn == (None, False)


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


def test_the_write_back_never_scans_a_whole_store(two_models: psycopg.Connection[Any]) -> None:
    """complete_batch_v2 (the vectors saved to the embedding cache, the surplus rows) and
    cached_vectors_v1 read a model's store per document or per hash through its indexes, so a
    batch's write-back does not cost more as the store grows: with `doc_id = ANY (...)` of a
    few hundred documents on a store without statistics they were planned as scans of the whole
    store, every batch (issue 19)."""
    conn = two_models
    conn.execute(
        "INSERT INTO pgingest.documents (key, body)"
        " SELECT 'k' || g, 'body ' || g FROM generate_series(1, 300) AS g"
    )
    _fake_chunks(conn, "v2", 768)
    conn.execute(  # other documents' vectors: a store of some size (a scan would cost more)
        "INSERT INTO pgingest.store_v2 (doc_id, ordinal, chunk_hash, embedding)"
        " SELECT 1000000 + g, 0, sha256(g::text::bytea), array_fill(0.5, ARRAY[768])::vector"
        " FROM generate_series(1, 5000) AS g"
    )
    conn.execute("UPDATE pgingest.documents SET body = body || ' changed'")
    # The counts of the statements above (the first write scanned the empty store) are flushed,
    # so that pg_stat_xact_user_tables shows only the transaction below.
    conn.execute("SELECT pg_stat_force_next_flush()")
    conn.execute("SELECT 1")
    with conn.transaction():
        _fake_chunks(conn, "v2", 768)
        hashes = [b"h", *(i.to_bytes(2, "big") * 16 for i in range(299))]
        assert list(db.cached_vectors(conn, "v2", hashes)) == [b"h"]
        scans = conn.execute(
            "SELECT count(*), coalesce(sum(seq_scan), 0) FROM pg_stat_xact_user_tables"
            " WHERE schemaname = 'pgingest' AND relname ~ '^store_v2(_p[0-9]+)?$'"
        ).fetchone()
    assert scans is not None and scans[0] >= 1 and scans[1] == 0, scans
    # Nor JIT: those reads are estimated at millions of rows on a store without statistics, and
    # compiling them cost ~0.2 s a batch.
    configs = conn.execute(
        "SELECT p.proname, 'jit=off' = ANY (p.proconfig) FROM pg_proc AS p"
        " WHERE p.oid IN ('pgingest.cached_vectors_v1(text, bytea[])'::regprocedure,"
        " 'pgingest.complete_batch_v2(text, bigint[], bigint[], bytea[], bigint[], integer[],"
        " text[], bytea[], integer[], integer[], integer[], vector[], text, integer)'::regprocedure)"
        " ORDER BY 1"
    ).fetchall()
    assert configs == [("cached_vectors_v1", True), ("complete_batch_v2", True)]


def _write(
    conn: psycopg.Connection[Any],
    docs: list[tuple[int, bytes]],
    chunks: list[tuple[int, int]],
) -> tuple[int, int, int]:
    """complete_batch of model v2 for ``docs`` (doc_id, hash) with chunk rows (doc_id, ordinal)."""
    rows = db.ChunkRows(
        doc_ids=[d for d, _ in chunks],
        ordinals=[o for _, o in chunks],
        contents=[f"c{d}.{o}" for d, o in chunks],
        chunk_hashes=[hashlib.sha256(f"{d}.{o}".encode()).digest() for d, o in chunks],
        token_counts=[1] * len(chunks),
        char_starts=[0] * len(chunks),
        char_ends=[1] * len(chunks),
        embeddings=[np.ones(768, dtype=np.float32) for _ in chunks],
    )
    return db.complete_batch(
        conn, "v2", [], [d for d, _ in docs], [h for _, h in docs], rows, "test", 1
    )


def test_a_batch_writes_its_current_versions_only(two_models: psycopg.Connection[Any]) -> None:
    """complete_batch_v2 writes chunk rows, vectors and state for the documents whose version is
    still current, and counts those rows only: a chunk row of a stale version, or of a document
    not in the batch, is not written. With every version current (the common batch, where the
    filters by the current versions are skipped) a shorter new version's surplus rows go."""
    conn = two_models
    conn.execute(
        "INSERT INTO pgingest.documents (key, body) VALUES ('a', 'a1'), ('b', 'b1'), ('c', 'c1')"
    )

    def docs() -> dict[str, tuple[int, bytes]]:
        rows = conn.execute("SELECT key, id, content_hash FROM pgingest.documents").fetchall()
        return {k: (i, bytes(h)) for k, i, h in rows}

    def stored() -> dict[int, tuple[int, int, Any]]:
        rows = conn.execute(
            "SELECT d.id,"
            " (SELECT count(*) FROM pgingest.chunks AS c WHERE c.doc_id = d.id),"
            " (SELECT count(*) FROM pgingest.store_v2 AS s WHERE s.doc_id = d.id),"
            " (SELECT e.chunk_count FROM pgingest.embedding_state AS e"
            "   WHERE e.doc_id = d.id AND e.model = 'v2' AND e.content_hash = d.content_hash)"
            " FROM pgingest.documents AS d"
        ).fetchall()
        return {r[0]: (int(r[1]), int(r[2]), r[3]) for r in rows}

    v1 = docs()
    a, b, c = v1["a"][0], v1["b"][0], v1["c"][0]
    chunks = [(a, 0), (a, 1), (a, 2), (b, 0), (b, 1), (c, 0)]
    assert _write(conn, [v1["a"], v1["b"], v1["c"]], chunks) == (3, 0, 6)
    assert stored() == {a: (3, 3, 3), b: (2, 2, 2), c: (1, 1, 1)}

    conn.execute("UPDATE pgingest.documents SET body = body || ' changed' WHERE key IN ('a', 'b')")
    v2 = docs()
    # a: its new version, shorter; b: the version before (stale); c: a row, not in the batch
    got = _write(conn, [v2["a"], v1["b"]], [(a, 0), (b, 0), (c, 0), (c, 1)])
    assert got == (1, 1, 1)
    assert stored() == {a: (1, 1, 1), b: (2, 2, None), c: (1, 1, 1)}

    # every version of the batch current, but a chunk row of a document not in it (a): not written
    conn.execute("UPDATE pgingest.documents SET body = body || ' again' WHERE key IN ('b', 'c')")
    v3 = docs()
    assert _write(conn, [v3["b"], v3["c"]], [(a, 5), (b, 0), (c, 0), (c, 1)]) == (2, 0, 3)
    assert stored() == {a: (1, 1, 1), b: (1, 1, 1), c: (2, 2, 2)}

    # every row current: the filters are skipped, and the surplus rows still go
    conn.execute("UPDATE pgingest.documents SET body = body || ' more' WHERE key = 'c'")
    assert _write(conn, [docs()["c"]], [(c, 0)]) == (1, 0, 1)
    assert stored() == {a: (1, 1, 1), b: (1, 1, 1), c: (1, 1, 1)}


def test_a_store_keeps_vectors_of_up_to_4_kb_in_its_rows(
    two_models: psycopg.Connection[Any],
) -> None:
    """A vector(768) (3 KB) stays in the store's row (toast_tuple_target = 4080 on the tables
    that hold rows): no TOAST rows to write and read back per chunk (issue 19, migration 0019)."""
    conn = two_models
    conn.execute("INSERT INTO pgingest.documents (key, body) VALUES ('a', 'one'), ('b', 'two')")
    _fake_chunks(conn, "v2", 768)
    leaves = conn.execute(
        "SELECT c.reloptions, pg_relation_size(c.reltoastrelid)"
        " FROM pg_class AS c WHERE c.relkind = 'r' AND (c.oid = 'pgingest.store_v2'::regclass"
        " OR c.oid IN (SELECT t.relid FROM pg_partition_tree('pgingest.store_v2') AS t))"
    ).fetchall()
    assert leaves and all(r == (["toast_tuple_target=4080"], 0) for r in leaves), leaves


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


def test_the_capture_writes_the_pgmq_queue_table_layout_we_ship(
    two_models: psycopg.Connection[Any],
) -> None:
    """The compiled capture (sql/010_capture.sql) inserts into pgmq's queue tables itself, as
    pgmq.send_batch does: this pins the layout of the pgmq we ship, and checks that a message it
    writes reads back through pgmq's own API like one sent by pgmq.send_batch."""
    conn = two_models
    assert conn.execute(
        "SELECT attname, format_type(atttypid, atttypmod), attnotnull FROM pg_attribute"
        " WHERE attrelid = 'pgmq.q_pgingest_v1'::regclass AND attnum > 0 AND NOT attisdropped"
        " ORDER BY attnum"
    ).fetchall() == [
        ("msg_id", "bigint", True),
        ("read_ct", "integer", True),
        ("enqueued_at", "timestamp with time zone", True),
        ("last_read_at", "timestamp with time zone", False),
        ("vt", "timestamp with time zone", True),
        ("message", "jsonb", False),
        ("headers", "jsonb", False),
    ]
    conn.execute("INSERT INTO pgingest.documents (key, body) VALUES ('k1', 'hello')")
    conn.execute("SELECT pgmq.send_batch('pgingest_v1', ARRAY['{\"x\": 1}'::jsonb])")
    ours, theirs = conn.execute(
        "SELECT read_ct, vt <= clock_timestamp(), headers IS NULL, message ? 'doc_id'"
        " FROM pgmq.read('pgingest_v1', 30, 10) ORDER BY msg_id"
    ).fetchall()
    assert ours[:3] == theirs[:3] == (1, False, True)  # read once, now invisible, no headers
    assert ours[3] and not theirs[3]
    metrics = conn.execute("SELECT queue_length FROM pgmq.metrics('pgingest_v1')").fetchone()
    assert metrics == (2,)


COMPILED = ("_enqueue_versions", "_capture_insert", "_capture_update", "_source_capture")


def compiled_sources(conn: psycopg.Connection[Any]) -> dict[str, str]:
    return {
        name: str(
            conn.execute(
                "SELECT prosrc FROM pg_proc WHERE oid = %s::regproc", (f"pgingest.{name}",)
            ).fetchone()[0]  # type: ignore[index]
        )
        for name in COMPILED
    }


def test_register_and_retire_recompile_the_capture(two_models: psycopg.Connection[Any]) -> None:
    """Issue 19: the capture trigger functions are compiled from the live models: each writes every
    live model's queue table itself with static SQL (no pgmq.send_batch, no EXECUTE, no second
    function call, no array of the statement's ids)."""
    conn = two_models
    source = compiled_sources(conn)
    for name in COMPILED[:3]:
        assert "q_pgingest_v1" in source[name] and "q_pgingest_v2" in source[name], name
        assert "pgmq.send_batch" not in source[name] and "EXECUTE" not in source[name], name
    for name in ("_capture_insert", "_capture_update"):
        assert "_enqueue_versions" not in source[name] and "array_agg(n." not in source[name]
        assert source[name].count("INSERT INTO pgmq.") == 2
    conn.execute("SELECT pgingest.swap_model('v2', force => true)")
    conn.execute("SELECT pgingest.retire_model('v1')")
    source = compiled_sources(conn)
    for name in COMPILED:
        assert "q_pgingest_v1" not in source[name], name
    conn.execute("INSERT INTO pgingest.documents (key, body) VALUES ('after', 'retired v1')")
    conn.execute("UPDATE pgingest.documents SET body = 'changed' WHERE key = 'after'")
    assert queue_count(conn, "v2") == 2


def test_the_compiled_capture_queues_bulk_updates_once_per_changed_version(
    two_models: psycopg.Connection[Any],
) -> None:
    """The UPDATE capture joins the transition tables in the same statement that writes the
    queues: rows whose text did not change (metadata only, same text) queue nothing, the others
    one message per live model; a statement updating no row queues nothing."""
    conn = two_models
    conn.execute(
        "INSERT INTO pgingest.documents (key, body)"
        " SELECT 'b-' || g, 'body ' || g FROM generate_series(1, 1000) AS g"
    )
    conn.execute(
        "UPDATE pgingest.documents SET body = CASE WHEN right(key, 1) = '7' THEN body || '!'"
        " ELSE body END, metadata = '{\"seen\": true}'"
    )
    conn.execute("UPDATE pgingest.documents SET body = 'x' WHERE false")
    for model in ("v1", "v2"):
        versions = queued_versions(conn, model)
        assert len(versions) == 1100 and len(set(versions)) == 1100
        assert current_versions(conn) <= set(versions)


def queued_versions(conn: psycopg.Connection[Any], model: str) -> list[tuple[int, str]]:
    return [
        (int(r[0]), str(r[1]))
        for r in conn.execute(
            f"SELECT (message ->> 'doc_id')::bigint, message ->> 'hash' FROM pgmq.q_pgingest_{model}"  # noqa: S608
            " ORDER BY msg_id"
        )
    ]


def current_versions(conn: psycopg.Connection[Any]) -> set[tuple[int, str]]:
    return {
        (int(r[0]), str(r[1]))
        for r in conn.execute("SELECT id, encode(content_hash, 'hex') FROM pgingest.documents")
    }


def test_upserts_and_savepoints_queue_exactly_the_committed_versions(
    two_models: psycopg.Connection[Any],
) -> None:
    """Issue 19: one message per (version, live model) for INSERT ... ON CONFLICT DO UPDATE (a
    new row, a changed one, an unchanged one) and for statements rolled back to a savepoint."""
    conn = two_models
    upsert = (
        "INSERT INTO pgingest.documents (key, body) VALUES (%s, %s)"
        " ON CONFLICT (key) DO UPDATE SET body = excluded.body"
    )
    conn.execute(upsert, ("u", "first"))  # inserted
    conn.execute(upsert, ("u", "first"))  # conflict, same text: nothing new
    conn.execute(upsert, ("u", "second"))  # conflict, changed: one more version
    with conn.transaction():
        conn.execute(upsert, ("s", "kept"))
        with pytest.raises(psycopg.errors.CheckViolation), conn.transaction():  # a savepoint
            conn.execute(upsert, ("gone", "rolled back with its messages"))
            conn.execute(upsert, ("s", " "))  # refused: rolls the savepoint back
        conn.execute(upsert, ("s", "kept, then changed"))
    for model in ("v1", "v2"):
        versions = queued_versions(conn, model)
        assert len(versions) == 4  # u first, u second, s kept, s changed
        assert len(set(versions)) == 4
        assert current_versions(conn) <= set(versions)
        keys = {r[0] for r in conn.execute("SELECT key FROM pgingest.documents")}
        assert keys == {"u", "s"}


def test_a_bulk_update_after_a_single_row_one_is_not_quadratic(
    two_models: psycopg.Connection[Any],
) -> None:
    """PL/pgSQL plans the UPDATE capture's join of old_rows and new_rows once per session: planned
    for a first single-row UPDATE as a nested loop, it made a later UPDATE of 5,000 rows in the
    same session take 9 s instead of 0.2 s. The capture takes the set difference of the two (no
    join to plan as a nested loop), and leaves the application's settings alone."""
    conn = two_models
    conn.execute(
        "INSERT INTO pgingest.documents (key, body)"
        " SELECT 'q-' || g, 'body ' || g FROM generate_series(1, 5000) AS g"
    )
    conn.execute("UPDATE pgingest.documents SET body = 'one' WHERE key = 'q-1'")
    started = time.monotonic()
    conn.execute("UPDATE pgingest.documents SET body = body || '!'")
    assert time.monotonic() - started < 3.0  # ~0.2 s; quadratic: ~9 s
    assert conn.execute("SHOW enable_nestloop").fetchone() == ("on",)
    assert queue_count(conn, "v1") == 5000 + 1 + 5000


def test_packed_arrays_reach_the_server_as_the_values_given(conn: psycopg.Connection[Any]) -> None:
    """The write-back's column arrays are sent pre-packed in binary (db.PackedArray): what the
    server receives is exactly the list given, empty arrays, extremes, non-ASCII and NUL bytes
    included; a value out of range or text the server refuses is an error, not a wrong row."""
    ints = [0, 1, -1, 2**31 - 1, -(2**31)]
    bigs = [0, 2**63 - 1, -(2**63), 42]
    texts = ["", "plain", "é ü 漢字 😀", "x" * 5000]
    blobs = [b"", b"\x00\x01\xff", bytes(range(256)) * 3]
    cur = db.packed_cursor(conn)
    row = cur.execute(
        "SELECT %b::integer[], %b::bigint[], %b::text[], %b::bytea[], %b::integer[],"
        " cardinality(%b::text[])",
        (
            db.Int4Array(ints),
            db.Int8Array(bigs),
            db.TextArray(texts),
            db.ByteaArray(blobs),
            db.Int4Array([]),
            db.TextArray([]),
        ),
    ).fetchone()
    assert row == (ints, bigs, texts, blobs, [], 0)
    with pytest.raises(ValueError, match="out of the range of int32"):
        db.Int4Array([2**31])
    with pytest.raises(psycopg.errors.CharacterNotInRepertoire):
        cur.execute("SELECT %b::text[]", (db.TextArray(["a\x00b"]),))


def test_content_hash_is_the_same_bytes_and_cheap_to_call(conn: psycopg.Connection[Any]) -> None:
    """_content_hash (the generated documents.content_hash) is sha256(title || RS || body) in
    UTF-8, NULL title as '', as migration 0001 defined it; PL/pgSQL with no SET clause (issue 19:
    the SQL function was planned per statement, the SET cost a save and restore per row)."""
    rows = [("k1", None, "body"), ("k2", "Tïtle", "bödy 漢字 😀"), ("k3", "", "x" * 9000)]
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO pgingest.documents (key, title, body) VALUES (%s, %s, %s)", rows
        )
    got = dict(conn.execute("SELECT key, content_hash FROM pgingest.documents").fetchall())
    for key, title, body in rows:
        want = hashlib.sha256(((title or "") + "\x1e" + body).encode("utf-8")).digest()
        assert got[key] == want, key
    conn.execute("UPDATE pgingest.documents SET title = 'new' WHERE key = 'k1'")
    assert conn.execute(
        "SELECT content_hash FROM pgingest.documents WHERE key = 'k1'"
    ).fetchone() == (hashlib.sha256(b"new\x1ebody").digest(),)
    fn = conn.execute(
        "SELECT l.lanname, p.provolatile, p.proparallel, p.proconfig FROM pg_proc AS p"
        " JOIN pg_language AS l ON l.oid = p.prolang"
        " WHERE p.oid = 'pgingest._content_hash(text, text)'::regprocedure"
    ).fetchone()
    assert fn == ("plpgsql", "i", "s", None)


def test_a_first_write_that_meets_rows_written_meanwhile_upserts_them(
    two_models: psycopg.Connection[Any], dsn: str
) -> None:
    """complete_batch_v2 writes the vectors of a document with no store rows with a plain INSERT;
    should another transaction write rows of that document between the check and the INSERT
    (a batch claimed twice), the INSERT's unique violation sends the rows through the upsert:
    the batch succeeds and the store holds its vectors."""
    conn = two_models
    conn.execute("INSERT INTO pgingest.documents (key, body) VALUES ('a', 'text a'), ('b', 'b')")
    docs = conn.execute("SELECT id, content_hash FROM pgingest.documents ORDER BY id").fetchall()
    other = db.connect(dsn)
    try:
        other.execute("BEGIN")
        other.execute(
            "INSERT INTO pgingest.store_v1 (doc_id, ordinal, chunk_hash, embedding)"
            " VALUES (%s, 0, 'old', array_fill(0.5, ARRAY[384])::vector)",
            (docs[0][0],),
        )
        result: list[Any] = []

        def write() -> None:
            with db.connect(dsn) as c:
                rows = db.ChunkRows(
                    doc_ids=[d[0] for d in docs],
                    ordinals=[0, 0],
                    contents=["c", "d"],
                    chunk_hashes=[b"h1", b"h2"],
                    token_counts=[1, 1],
                    char_starts=[0, 0],
                    char_ends=[1, 1],
                    embeddings=[np.ones(384, dtype=np.float32)] * 2,
                )
                try:
                    result.append(
                        db.complete_batch(
                            c, "v1", [], [d[0] for d in docs], [d[1] for d in docs], rows, "t", 1
                        )
                    )
                except Exception as exc:  # reported below
                    result.append(exc)

        t = threading.Thread(target=write)
        t.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # the plain INSERT waits for our uncommitted row
            waiting = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND query LIKE '%complete_batch_v2%'"
            ).fetchone()
            if waiting == (1,):
                break
            time.sleep(0.05)
        else:
            pytest.fail("the write-back never waited for the other transaction")
        other.execute("COMMIT")
        t.join(10)
        assert result == [(2, 0, 2)]
    finally:
        other.close()
    stored = conn.execute(
        "SELECT doc_id, ordinal, chunk_hash FROM pgingest.store_v1 ORDER BY doc_id"
    ).fetchall()
    assert stored == [(docs[0][0], 0, b"h1"), (docs[1][0], 0, b"h2")]
