"""One store per model, one chunking profile per model (issue 17, items 2 and 3).

Each model's vectors live in its own table (``pgingest.store_<model>``); models of one chunking
profile share the chunk rows, a model of another profile has its own. A write for one model never
updates, NULLs or deletes a row of another model's store (invariant 7); a document's DELETE or
TRUNCATE removes its rows from every store.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg import sql

from pgingest import db
from pgingest.testing.fake_provider import FakeEmbeddingServer
from tests.helpers import drain, insert_docs, register, store_sql, wait_for
from tests.test_cache_filters_hybrid import _long_document


def one(conn: psycopg.Connection[Any], query: str | sql.Composable, params: Any = None) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def table_stats(conn: psycopg.Connection[Any], table: str) -> dict[str, int]:
    """Cumulative row counters of ``pgingest.<table>`` as the statistics system has them now."""
    conn.execute("SELECT pg_stat_clear_snapshot()")
    row = conn.execute(
        "SELECT n_tup_ins, n_tup_upd, n_tup_hot_upd, n_tup_del, n_dead_tup"
        " FROM pg_stat_user_tables WHERE relid = format('pgingest.%%I', %s::text)::regclass",
        (table,),
    ).fetchone()
    assert row is not None
    return dict(zip(("ins", "upd", "hot_upd", "del", "dead"), (int(v) for v in row), strict=True))


def flushed(conn: psycopg.Connection[Any], table: str, inserted: int) -> None:
    """Waits until the statistics of ``table`` count ``inserted`` inserts: the worker backends'
    counters have reached the statistics system (they flush on exit)."""
    conn.execute("SELECT pg_stat_force_next_flush()")
    wait_for(lambda: table_stats(conn, table)["ins"] >= inserted, timeout=20, interval=0.1)


def store_rows(conn: psycopg.Connection[Any], model: str) -> list[tuple[Any, ...]]:
    return conn.execute(
        sql.SQL(
            "SELECT doc_id, ordinal, chunk_hash, embedding::text FROM pgingest.{}"
            " ORDER BY doc_id, ordinal"
        ).format(sql.Identifier(f"store_{model}"))
    ).fetchall()


BODY = " ".join(f"Sentence {i} tells something about vectors and their stores." for i in range(60))


def test_second_model_backfill_writes_nothing_to_the_first_store_nor_to_the_shared_chunks(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    """A second model of the same profile backfills while the first is active with its index:
    0 updated rows and 0 new dead tuples in the first store, and the chunk rows (same text) are
    not written at all."""
    register(conn, "v1", fake.url)
    insert_docs(conn, [(f"d{i}", f"Title {i}", f"{BODY} Document {i}.") for i in range(30)])
    drain(dsn)
    n1 = one(conn, "SELECT count(*) FROM pgingest.store_v1")
    n_chunks = one(conn, "SELECT count(*) FROM pgingest.chunks")
    assert n1 == n_chunks > 30
    conn.execute(
        "CREATE INDEX store_v1_idx ON pgingest.store_v1 USING hnsw (embedding vector_cosine_ops)"
    )
    flushed(conn, "store_v1", n1)
    flushed(conn, "chunks", n_chunks)
    v1_before, chunks_before = table_stats(conn, "store_v1"), table_stats(conn, "chunks")
    v1_rows = store_rows(conn, "v1")

    register(conn, "v2", fake.url, model_id="fake-768", dimensions=768)
    drain(dsn)
    assert one(conn, "SELECT count(*) FROM pgingest.store_v2") == n1
    flushed(conn, "store_v2", n1)
    v1_after, chunks_after = table_stats(conn, "store_v1"), table_stats(conn, "chunks")

    assert store_rows(conn, "v1") == v1_rows
    assert v1_after == v1_before  # no insert, update, delete, dead tuple
    assert v1_after["upd"] - v1_before["upd"] == 0
    assert v1_after["dead"] - v1_before["dead"] == 0
    assert chunks_after == chunks_before  # the same text is not written twice
    # Both models serve every chunk.
    for model in ("v1", "v2"):
        assert one(conn, store_sql(model, "count(*)")) == n_chunks


def test_two_profiles_embed_the_same_document_without_touching_each_other(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    register(conn, "v1", fake.url)
    register(
        conn, "long", fake.url, max_input_tokens=512, chunk_max_tokens=400, chunk_overlap_tokens=0
    )
    profiles = dict(
        conn.execute(
            "SELECT m.name, p.max_tokens FROM pgingest.models AS m"
            " JOIN pgingest.chunk_profiles AS p ON p.id = m.profile_id"
        ).fetchall()
    )
    assert profiles == {"v1": 200, "long": 400}
    insert_docs(conn, [("doc", "A title", BODY)])
    drain(dsn)
    per_profile = dict(
        conn.execute(
            "SELECT m.name, count(*) FROM pgingest.chunks AS c"
            " JOIN pgingest.models AS m ON m.profile_id = c.profile_id GROUP BY m.name"
        ).fetchall()
    )
    assert per_profile["v1"] > per_profile["long"] >= 1
    assert one(conn, "SELECT count(*) FROM pgingest.store_v1") == per_profile["v1"]
    assert one(conn, "SELECT count(*) FROM pgingest.store_long") == per_profile["long"]
    assert one(conn, store_sql("long", "max(c.token_count)")) > 200
    # The profile's chunker is recorded on the chunks and the profile.
    chunkers = dict(
        conn.execute(
            "SELECT p.max_tokens, p.chunker FROM pgingest.chunk_profiles AS p ORDER BY p.id"
        ).fetchall()
    )
    assert "max=200" in chunkers[200] and "max=400" in chunkers[400]

    # An edit: each model rewrites its own profile's chunks and its own store only.
    v1_rows = store_rows(conn, "v1")
    conn.execute("UPDATE pgingest.documents SET body = body || ' One more sentence.'")
    drain(dsn, models=("long",))
    assert store_rows(conn, "v1") == v1_rows  # long's write left v1 alone
    v1_chunks = conn.execute(
        "SELECT ordinal, content FROM pgingest.chunks AS c WHERE c.profile_id = ("
        " SELECT profile_id FROM pgingest.models WHERE name = 'v1') ORDER BY ordinal"
    ).fetchall()
    assert "One more sentence" not in v1_chunks[-1][1]
    drain(dsn)
    assert one(conn, store_sql("v1", "count(*)")) == one(
        conn, "SELECT count(*) FROM pgingest.store_v1"
    )
    assert "One more sentence" in one(
        conn, store_sql("v1", "c.content", "TRUE ORDER BY c.ordinal DESC LIMIT 1")
    )

    # The chunk preview follows a model's profile.
    if one(conn, "SELECT count(*) FROM pg_proc WHERE proname = 'chunk_preview'"):
        n_v1 = one(
            conn, "SELECT count(*) FROM pgingest.chunk_preview(%s, 'A title', 'v1')", (BODY,)
        )
        n_long = one(
            conn,
            "SELECT count(*) FROM pgingest.chunk_preview(%s, 'A title', model => 'long')",
            (BODY,),
        )
        assert (n_v1, n_long) == (per_profile["v1"], per_profile["long"])


def test_a_rewritten_chunk_is_never_served_with_another_versions_vector(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    """Two models of one profile: the first to embed a new version rewrites the shared chunk
    text; the other model's store row (the old text's vector) is not served until its own
    message for the new version is written."""
    register(conn, "v1", fake.url)
    register(conn, "v2", fake.url)
    insert_docs(conn, [("doc", "T", "First version of a short text.")])
    drain(dsn)
    conn.execute("UPDATE pgingest.documents SET body = 'Second version, other words.'")
    drain(dsn, models=("v2",))
    assert one(conn, "SELECT count(*) FROM pgingest.store_v1") == 1  # kept: never touched by v2
    assert one(conn, store_sql("v1", "count(*)")) == 0  # not served: its text was rewritten
    assert one(conn, store_sql("v2", "c.content")) == "Second version, other words."
    q = one(conn, "SELECT embedding::text FROM pgingest.store_v1")
    assert conn.execute("SELECT * FROM pgingest.search(%s::vector, 5)", (q,)).fetchall() == []
    drain(dsn)
    assert one(conn, store_sql("v1", "c.content")) == "Second version, other words."


def test_retire_drops_only_that_models_store_and_its_profiles_unused_chunks(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    register(conn, "v1", fake.url)
    register(conn, "v2", fake.url, model_id="fake-768", dimensions=768)
    register(conn, "small", fake.url, chunk_max_tokens=64)
    insert_docs(conn, [(f"d{i}", None, f"{BODY} Number {i}.") for i in range(5)])
    drain(dsn)
    v1_rows = store_rows(conn, "v1")
    small_profile = one(conn, "SELECT profile_id FROM pgingest.models WHERE name = 'small'")
    assert one(conn, "SELECT count(*) FROM pgingest.chunks WHERE profile_id = %s", (small_profile,))

    assert db.retire_model(conn, "v2") == "retired"
    assert one(conn, "SELECT to_regclass('pgingest.store_v2')") is None
    assert store_rows(conn, "v1") == v1_rows
    assert one(conn, "SELECT count(*) FROM pgingest.chunks WHERE profile_id = 1") == len(v1_rows)

    assert db.retire_model(conn, "small") == "retired"
    assert one(conn, "SELECT to_regclass('pgingest.store_small')") is None
    assert (
        one(conn, "SELECT count(*) FROM pgingest.chunks WHERE profile_id = %s", (small_profile,))
        == 0
    )
    assert store_rows(conn, "v1") == v1_rows


def test_cache_reuses_every_models_vectors_after_an_edit_that_shifts_ordinals(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    register(conn, "v1", fake.url)
    register(conn, "v2", fake.url, model_id="fake-768", dimensions=768)
    register(conn, "small", fake.url, chunk_max_tokens=64)
    paragraphs = _long_document(12)
    insert_docs(conn, [("long", "Title", "\n\n".join(paragraphs))])
    drain(dsn)
    counts = {
        m: one(
            conn, sql.SQL("SELECT count(*) FROM pgingest.{}").format(sql.Identifier(f"store_{m}"))
        )
        for m in ("v1", "v2", "small")
    }
    assert all(n > 3 for n in counts.values()), counts

    hashes = {m: dict((r[2], r[1]) for r in store_rows(conn, m)) for m in counts}

    # A new paragraph at the start: the ordinals shift, the other paragraphs' text stays.
    before = fake.stats()["inputs"]
    new_first = "A brand new opening paragraph. " + " ".join(_long_document(1)[0].split()[2:60])
    conn.execute(
        "UPDATE pgingest.documents SET body = %s WHERE key = 'long'",
        ("\n\n".join([new_first, *paragraphs]),),
    )
    drain(dsn)
    sent = fake.stats()["inputs"] - before
    new_inputs = 0
    for m in counts:
        rows = store_rows(conn, m)
        shifted = [r for r in rows if r[2] in hashes[m] and hashes[m][r[2]] != r[1]]
        assert shifted, m  # vectors reused at another ordinal
        new_inputs += sum(1 for r in rows if r[2] not in hashes[m])
        assert one(conn, store_sql(m, "count(*)")) == len(rows)  # every row served
    # Only the inputs never seen by a model went to the provider.
    assert 1 <= sent <= new_inputs < sum(counts.values()), (sent, new_inputs, counts)


def test_delete_and_truncate_remove_every_models_rows(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    register(conn, "v1", fake.url)
    register(conn, "small", fake.url, chunk_max_tokens=64)
    insert_docs(conn, [(f"d{i}", None, f"{BODY} Number {i}.") for i in range(4)])
    drain(dsn)
    conn.execute("DELETE FROM pgingest.documents WHERE key = 'd0'")
    for table in ("store_v1", "store_small", "chunks"):
        assert (
            one(
                conn,
                sql.SQL(
                    "SELECT count(*) FROM pgingest.{} AS t WHERE NOT EXISTS ("
                    " SELECT 1 FROM pgingest.documents AS d WHERE d.id = t.doc_id)"
                ).format(sql.Identifier(table)),
            )
            == 0
        )
    assert one(conn, "SELECT count(*) FROM pgingest.store_v1") > 0
    conn.execute("TRUNCATE pgingest.documents")
    for table in ("store_v1", "store_small", "chunks", "embedding_state"):
        assert (
            one(conn, sql.SQL("SELECT count(*) FROM pgingest.{}").format(sql.Identifier(table)))
            == 0
        )


def test_an_old_worker_is_told_to_upgrade(
    conn: psycopg.Connection[Any], fake: FakeEmbeddingServer
) -> None:
    register(conn, "v1", fake.url)
    with pytest.raises(psycopg.errors.FeatureNotSupported) as ei:
        conn.execute(
            "SELECT * FROM pgingest.complete_batch_v1('v1', '{1}', '{}', '{}', '{}', '{}', '{}',"
            " '{}', '{}', '{}', '{}', '{}', 'x')"
        )
    assert "older than the schema" in (ei.value.diag.message_primary or "")
    assert "Upgrade the worker" in (ei.value.diag.message_hint or "")
