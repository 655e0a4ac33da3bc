"""Hash-partitioned chunks (``pgingest install --chunk-partitions N``): install, embed, per-partition
ANN indexes built concurrently and attached to the model's index, search through the view and
pgingest.search(), and the model lifecycle on the partitioned table.

The shared template database is the default (unpartitioned) install, so every test here makes
its own database.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pgingest import db, index, install, worker
from pgingest.testing.fake_provider import FakeEmbeddingServer
from tests.helpers import insert_docs, register, schema_dump

PARTITIONS = 4


def one(conn: psycopg.Connection[Any], query: str, params: Any = None) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def drain(dsn: str) -> None:
    worker.Worker(
        worker.WorkerSettings(
            conninfo=dsn, drain=True, install_signal_handlers=False, poll_interval=0.1
        )
    ).run()


def partition_indexes(conn: psycopg.Connection[Any], parent: str) -> list[tuple[str, str, bool]]:
    """(partition, index, valid) of the indexes attached to ``pgingest.<parent>``."""
    return conn.execute(
        "SELECT t.relname, ic.relname, i.indisvalid FROM pg_inherits AS h"
        " JOIN pg_class AS ic ON ic.oid = h.inhrelid JOIN pg_index AS i ON i.indexrelid = h.inhrelid"
        " JOIN pg_class AS t ON t.oid = i.indrelid"
        " WHERE h.inhparent = to_regclass(format('pgingest.%%I', %s::text)) ORDER BY 1",
        (parent,),
    ).fetchall()


def test_install_creates_hash_partitions_and_the_default_is_unchanged(
    empty_database: Any, tmp_path: Path
) -> None:
    part = empty_database("cli")
    notices = install.install(part, chunk_partitions=PARTITIONS)
    assert any("applied migration 0001_initial" in n for n in notices)
    with psycopg.connect(part) as c:
        assert one(c, "SELECT relkind FROM pg_class WHERE oid = 'pgingest.chunks'::regclass") == "p"
        assert one(c, "SELECT pg_get_partkeydef('pgingest.chunks'::regclass)") == "HASH (doc_id)"
        parts = c.execute(
            "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits AS h"
            " JOIN pg_class AS c ON c.oid = h.inhrelid"
            " WHERE h.inhparent = 'pgingest.chunks'::regclass ORDER BY 1"
        ).fetchall()
        assert parts == [
            (f"chunks_p{i}", f"FOR VALUES WITH (modulus {PARTITIONS}, remainder {i})")
            for i in range(PARTITIONS)
        ]
        # The same constraints and indexes as the plain table, on the parent and each partition.
        assert {
            r[0]
            for r in c.execute(
                "SELECT conname FROM pg_constraint WHERE conrelid = 'pgingest.chunks'::regclass"
            )
        } == {"chunks_pkey", "chunks_ordinal_nonnegative", "chunks_span_valid"}
        # The primary key (the full-text index is opt-in, migration 0005; the cache looks
        # vectors up by chunk_hash in the models' stores since migration 0006).
        assert one(c, "SELECT count(*) FROM pg_indexes WHERE tablename = 'chunks_p3'") == 1
        c.execute("SELECT pgingest.set_text_search_config('english')")
        assert one(c, "SELECT count(*) FROM pg_indexes WHERE tablename = 'chunks_p3'") == 2
        c.execute("SELECT pgingest.set_text_search_config(NULL)")
    # Installing again: same count passes, another count is refused, no option is fine.
    install.install(part, chunk_partitions=PARTITIONS)
    install.install(part)
    with pytest.raises(install.InstallError, match="has 4 partitions, not 8"):
        install.install(part, chunk_partitions=8)

    # The printed script takes the option too, and gives the same catalog.
    printed = empty_database("psql")
    script = tmp_path / "install.sql"
    script.write_text(install.render_script(psql=True, chunk_partitions=PARTITIONS))
    subprocess.run(
        ["psql", "-X", "-q", "-d", printed, "-f", str(script)], check=True, capture_output=True
    )
    assert schema_dump(printed) == schema_dump(part)

    # 0 (or no option): the plain table, byte for byte the default install's catalog.
    zero, default = empty_database("zero"), empty_database("default")
    install.install(zero, chunk_partitions=0)
    install.install(default)
    assert schema_dump(zero) == schema_dump(default)
    with psycopg.connect(zero) as c:
        assert one(c, "SELECT relkind FROM pg_class WHERE oid = 'pgingest.chunks'::regclass") == "r"
    with pytest.raises(install.InstallError, match="from 0"):
        install.render_script(chunk_partitions=-1)


@pytest.mark.slow
def test_partitioned_chunks_embed_index_and_search(
    empty_database: Any, fake: FakeEmbeddingServer
) -> None:
    dsn = empty_database("search")
    install.install(dsn, chunk_partitions=PARTITIONS)
    conn = db.connect(dsn)
    try:
        register(conn, "v1", fake.url)
        insert_docs(
            conn, [(f"doc-{i}", f"Title {i}", f"Body of document number {i}.") for i in range(80)]
        )
        drain(dsn)
        spread = conn.execute(
            "SELECT tableoid::regclass::text, count(*) FROM pgingest.chunks GROUP BY 1 ORDER BY 1"
        ).fetchall()
        assert [s[0] for s in spread] == [f"pgingest.chunks_p{i}" for i in range(PARTITIONS)]
        assert sum(s[1] for s in spread) == one(conn, "SELECT count(*) FROM pgingest.chunks")
        # v1's store is partitioned the same way, and has a vector for every chunk.
        store_spread = conn.execute(
            "SELECT tableoid::regclass::text, count(*) FROM pgingest.store_v1 GROUP BY 1 ORDER BY 1"
        ).fetchall()
        assert [s[0] for s in store_spread] == [
            f"pgingest.store_v1_p{i}" for i in range(PARTITIONS)
        ]
        assert [s[1] for s in store_spread] == [s[1] for s in spread]

        # An interrupted build left two partitions indexed: the build keeps them, does the rest.
        spec = db.index_spec(conn, "v1")
        assert spec is not None
        for table in ("store_v1_p0", "store_v1_p1"):
            db.create_ann_index(
                conn, "pgingest", table, index.partition_index_name(table, "embedding"), spec
            )
        phases: list[str] = []
        built = index.build_index(dsn, "v1", progress=lambda p: phases.append(p.phase))
        assert (built.action, built.valid) == ("built", True)
        assert built.partitions_built == PARTITIONS - 2
        assert built.ddl is not None and built.ddl.startswith(
            'CREATE INDEX IF NOT EXISTS "store_v1_idx" ON ONLY "pgingest"."store_v1" USING "hnsw"'
        )
        assert built.size_bytes and built.size_bytes > 0
        assert partition_indexes(conn, "store_v1_idx") == [
            (f"store_v1_p{i}", f"store_v1_p{i}_embedding_idx", True) for i in range(PARTITIONS)
        ]
        status = conn.execute(
            "SELECT present, valid, on_column FROM pgingest.model_index_status('v1')"
        ).fetchone()
        assert status == (True, True, True)
        assert index.build_index(dsn, "v1", progress=False).action == "exists"

        # Search: pgingest.search() and the view, through the partitions' indexes.
        q = one(
            conn,
            "SELECT c.embedding::text FROM pgingest.store_v1 AS c JOIN pgingest.documents AS d"
            " ON d.id = c.doc_id WHERE d.key = 'doc-42'",
        )
        hits = conn.execute(
            "SELECT doc_key, distance FROM pgingest.search(%s::vector, 10)", (q,)
        ).fetchall()
        assert len(hits) == 10
        assert hits[0][0] == "doc-42" and hits[0][1] < 1e-6
        assert len({h[0] for h in hits}) == 10
        view_hits = conn.execute(
            "SELECT doc_key FROM pgingest.search_chunks ORDER BY embedding <=> %s::vector LIMIT 10",
            (q,),
        ).fetchall()
        assert view_hits[0] == ("doc-42",) and len(view_hits) == 10

        with conn.transaction():
            conn.execute("SET LOCAL enable_seqscan = off")
            plan = "\n".join(
                r[0]
                for r in conn.execute(
                    "EXPLAIN SELECT doc_id FROM pgingest.search_chunks"
                    " ORDER BY embedding <=> %s::vector LIMIT 10",
                    (q,),
                )
            )
        for i in range(PARTITIONS):
            assert f"Index Scan using store_v1_p{i}_embedding_idx on store_v1_p{i}" in plan, plan
        assert "Merge Append" in plan

        # The query inside pgingest.search(), shown by auto_explain (superuser: LOAD).
        nested: list[str] = []
        with db.connect(dsn) as c2:
            c2.add_notice_handler(lambda d: nested.append(d.message_primary or ""))
            c2.execute("LOAD 'auto_explain'")
            c2.execute("SET auto_explain.log_min_duration = 0")
            c2.execute("SET auto_explain.log_nested_statements = on")
            c2.execute("SET auto_explain.log_level = 'notice'")
            c2.execute("SET enable_seqscan = off")
            assert (
                len(c2.execute("SELECT * FROM pgingest.search(%s::vector, 5)", (q,)).fetchall())
                == 5
            )
        search_plan = next(n for n in nested if "pgingest.store_v1 AS s" in n)
        assert "store_v1_p0_embedding_idx" in search_plan and "Merge Append" in search_plan

        # Rebuild (REINDEX CONCURRENTLY of the partitioned index): still valid.
        rebuilt = index.build_index(dsn, "v1", rebuild=True, progress=False)
        assert (rebuilt.action, rebuilt.valid) == ("rebuilt", True)

        # The lifecycle on the partitioned table: a second model, its index, swap, retire.
        register(conn, "v2", fake.url, model_id="fake-768", dimensions=768, storage="halfvec")
        drain(dsn)
        assert index.build_index(dsn, "v2", progress=False).valid
        assert one(conn, "SELECT pgingest.swap_model('v2')") is not None
        q2 = one(
            conn,
            "SELECT c.embedding::text FROM pgingest.store_v2 AS c JOIN pgingest.documents AS d"
            " ON d.id = c.doc_id WHERE d.key = 'doc-7'",
        )
        assert (
            one(conn, "SELECT doc_key FROM pgingest.search(%s::halfvec::vector, 1)", (q2,))
            == "doc-7"
        )
        conn.execute("SELECT pgingest.retire_model('v1')")
        assert partition_indexes(conn, "store_v1_idx") == []
        assert one(conn, "SELECT to_regclass('pgingest.store_v1_p2')") is None

        # Deletes reach every partition (the capture trigger), and TRUNCATE too.
        conn.execute("DELETE FROM pgingest.documents WHERE key LIKE 'doc-1%'")
        assert (
            one(
                conn,
                "SELECT count(*) FROM pgingest.chunks AS c LEFT JOIN pgingest.documents AS d"
                " ON d.id = c.doc_id WHERE d.id IS NULL",
            )
            == 0
        )
        assert (
            one(
                conn,
                "SELECT count(*) FROM pgingest.store_v2 AS c LEFT JOIN pgingest.documents AS d"
                " ON d.id = c.doc_id WHERE d.id IS NULL",
            )
            == 0
        )
        conn.execute("TRUNCATE pgingest.documents")
        assert one(conn, "SELECT count(*) FROM pgingest.chunks") == 0
        assert one(conn, "SELECT count(*) FROM pgingest.store_v2") == 0
    finally:
        conn.close()


def test_shorter_versions_delete_only_their_own_surplus_rows_in_a_partitioned_store(
    empty_database: Any, fake: FakeEmbeddingServer
) -> None:
    """complete_batch_v2 deletes the surplus rows of a shorter new version. On a hash-partitioned
    store the same ctid exists in every partition: deleting by ctid alone would take other
    documents' rows (in other partitions) with them."""
    dsn = empty_database("surplus")
    install.install(dsn, chunk_partitions=PARTITIONS)
    conn = db.connect(dsn)
    try:
        register(conn, "v1", fake.url, chunk_max_tokens=20, chunk_overlap_tokens=0)
        long_body = " ".join(f"Sentence number {j} of a long body, with words." for j in range(30))
        insert_docs(conn, [(f"doc-{i}", None, f"{i}: {long_body}") for i in range(24)])
        drain(dsn)

        def per_doc() -> dict[int, list[int]]:
            out: dict[int, list[int]] = {}
            for doc_id, ordinal in conn.execute(
                "SELECT doc_id, ordinal FROM pgingest.store_v1 ORDER BY doc_id, ordinal"
            ):
                out.setdefault(doc_id, []).append(ordinal)
            return out

        before = per_doc()
        assert len(before) == 24 and min(len(v) for v in before.values()) >= 5
        spread = conn.execute("SELECT count(DISTINCT tableoid) FROM pgingest.store_v1").fetchone()
        assert spread == (PARTITIONS,)

        # Shrink a few documents (to one chunk each), in one batch.
        shrunk = {
            r[0]
            for r in conn.execute(
                "UPDATE pgingest.documents SET body = 'Short now.'"
                " WHERE key IN ('doc-0', 'doc-5', 'doc-11') RETURNING id"
            )
        }
        drain(dsn)
        after = per_doc()
        assert {d: after[d] for d in shrunk} == {d: [0] for d in shrunk}
        assert {d: v for d, v in after.items() if d not in shrunk} == {
            d: v for d, v in before.items() if d not in shrunk
        }
        # The store, the chunks and the embedding state agree for every document.
        assert conn.execute(
            "SELECT count(*) FROM pgingest.embedding_state AS e"
            " WHERE e.chunk_count <> (SELECT count(*) FROM pgingest.store_v1 AS s"
            " WHERE s.doc_id = e.doc_id)"
            " OR e.chunk_count <> (SELECT count(*) FROM pgingest.chunks AS c"
            " WHERE c.doc_id = e.doc_id)"
        ).fetchone() == (0,)
    finally:
        conn.close()
