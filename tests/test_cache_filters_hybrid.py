"""Pay for each embedding once (chunk-level cache), typed metadata filters, hybrid search, retention."""

from __future__ import annotations

from typing import Any

import numpy as np
import psycopg
import pytest

from pgingest.testing.fake_provider import FakeEmbeddingServer
from tests.helpers import drain, insert_corpus, make_body, register


def _long_document(paragraphs: int = 40) -> list[str]:
    rng = np.random.default_rng(7)
    words = [
        "alpha",
        "beta",
        "gamma",
        "delta",
        "epsilon",
        "zeta",
        "eta",
        "theta",
        "iota",
        "kappa",
        "lambda",
        "mu",
    ]
    return [
        f"Paragraph {p}. " + " ".join(" ".join(rng.choice(words, size=12)) + "." for _ in range(11))
        for p in range(paragraphs)
    ]


def test_editing_one_paragraph_re_embeds_only_the_changed_chunks(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    register(conn, "v1", fake.url)
    paras = _long_document()
    conn.execute(
        "INSERT INTO pgingest.documents (key, title, body) VALUES ('long', 'Long', %s)",
        ("\n\n".join(paras),),
    )
    drain(dsn)
    n_chunks = conn.execute("SELECT count(*) FROM pgingest.chunks").fetchone()
    assert n_chunks is not None and n_chunks[0] >= 40
    before = fake.stats()["inputs"]
    paras[17] = paras[17].replace("Paragraph 17.", "Paragraph seventeen, rewritten.")
    conn.execute(
        "UPDATE pgingest.documents SET body = %s WHERE key = 'long'", ("\n\n".join(paras),)
    )
    drain(dsn)
    sent = fake.stats()["inputs"] - before
    assert 1 <= sent <= 3, sent  # the changed chunk, at most its overlapping neighbours
    assert conn.execute(
        "SELECT count(*) FROM pgingest.chunks AS c LEFT JOIN pgingest.store_v1 AS s"
        " ON s.doc_id = c.doc_id AND s.ordinal = c.ordinal AND s.chunk_hash = c.chunk_hash"
        " WHERE s.doc_id IS NULL"
    ).fetchone() == (0,)
    contents = [r[0] for r in conn.execute("SELECT content FROM pgingest.chunks ORDER BY ordinal")]
    assert any("seventeen, rewritten" in c for c in contents)


def test_reinserting_an_identical_corpus_costs_no_provider_call(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    register(conn, "v1", fake.url)
    insert_corpus(conn, 500)
    drain(dsn)
    requests_before = fake.stats()["requests"]
    conn.execute(
        "INSERT INTO pgingest.documents (key, title, body)"
        " SELECT 'copy-' || key, title, body FROM pgingest.documents"
    )
    drain(dsn)
    assert fake.stats()["requests"] == requests_before
    assert conn.execute(
        "SELECT count(*) FROM pgingest.embedding_state WHERE model = 'v1'"
    ).fetchone() == (1000,)
    # Deleted documents keep their vectors in the cache: restoring them is free too.
    conn.execute("DELETE FROM pgingest.documents WHERE key LIKE 'copy-%%' OR key = 'doc-1'")
    conn.execute(
        "INSERT INTO pgingest.documents (key, title, body) VALUES ('doc-1', 'Document 1', %s)",
        (make_body(1),),
    )
    drain(dsn)
    assert fake.stats()["requests"] == requests_before
    cleared = conn.execute("SELECT pgingest.clear_embedding_cache('v1')").fetchone()
    assert cleared is not None and cleared[0] > 0


def test_promoted_filter_uses_its_index_and_returns_k_rows(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    register(conn, "v1", fake.url)
    assert conn.execute("SELECT pgingest.register_filter('tenant', 'integer')").fetchone() == (
        "meta_tenant",
    )
    conn.execute(
        "INSERT INTO pgingest.documents (key, body, metadata)"
        " SELECT 'd' || g, 'document number ' || g || ' ' || repeat('text ', 30),"
        " jsonb_build_object('tenant', g % 100) FROM generate_series(1, 3000) AS g"
    )
    drain(dsn)
    conn.execute("ANALYZE pgingest.documents")
    conn.execute("ANALYZE pgingest.chunks")
    q = conn.execute("SELECT embedding FROM pgingest.store_v1 LIMIT 1").fetchone()
    assert q is not None
    plans: list[str] = []
    conn.add_notice_handler(lambda d: plans.append(d.message_primary or ""))
    conn.execute("LOAD 'auto_explain'")
    conn.execute("SET auto_explain.log_min_duration = 0")
    conn.execute("SET auto_explain.log_nested_statements = on")
    conn.execute("SET client_min_messages = log")
    rows = conn.execute(
        """SELECT doc_id, metadata FROM pgingest.search(%s, 10, '{"tenant": 42}')""", (q[0],)
    ).fetchall()
    conn.execute("SET client_min_messages = notice")
    assert len(rows) == 10
    assert {r[1]["tenant"] for r in rows} == {42}
    assert any("documents_meta_tenant_idx" in p for p in plans), plans


def test_metadata_of_the_wrong_type_is_refused_naming_the_key(
    conn: psycopg.Connection[Any],
) -> None:
    conn.execute("SELECT pgingest.register_filter('year', 'integer')")
    conn.execute("SELECT pgingest.register_filter('tags', 'text[]')")
    conn.execute(
        """INSERT INTO pgingest.documents (key, body, metadata)
           VALUES ('ok', 'x', '{"year": 2020, "tags": ["a", "b"]}')"""
    )
    row = conn.execute("SELECT meta_year, meta_tags FROM pgingest.documents").fetchone()
    assert row == (2020, ["a", "b"])
    with pytest.raises(
        psycopg.errors.InvalidTextRepresentation, match='key "year" must be integer'
    ):
        conn.execute(
            """INSERT INTO pgingest.documents (key, body, metadata) VALUES ('bad', 'x', '{"year": "soon"}')"""
        )
    with pytest.raises(psycopg.errors.InvalidTextRepresentation, match='key "tags" must be text'):
        conn.execute(
            """INSERT INTO pgingest.documents (key, body, metadata) VALUES ('bad', 'x', '{"tags": "a"}')"""
        )
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        conn.execute("SELECT pgingest.register_filter('x; DROP TABLE y', 'text')")


def _has_tsv(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute(
        "SELECT count(*) FROM pg_attribute"
        " WHERE attrelid = 'pgingest.chunks'::regclass AND attname = 'tsv' AND NOT attisdropped"
    ).fetchone()
    return row == (1,)


def test_full_text_is_off_by_default_and_hybrid_search_says_how_to_turn_it_on(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    register(conn, "v1", fake.url)
    insert_corpus(conn, 5)
    drain(dsn)
    assert not _has_tsv(conn)
    qvec = np.ones(384, dtype=np.float32) / np.sqrt(384)
    from pgvector import Vector

    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState) as err:
        conn.execute("SELECT * FROM pgingest.hybrid_search('chunk', %s, 5)", (Vector(qvec),))
    assert err.value.diag.message_hint is not None
    assert "set_text_search_config('english')" in err.value.diag.message_hint
    # Turned on after the fact: existing chunks are indexed (the table is rewritten).
    conn.execute("SELECT pgingest.set_text_search_config('english')")
    assert _has_tsv(conn)
    row = conn.execute("SELECT count(*) FROM pgingest.chunks WHERE tsv IS NULL").fetchone()
    assert row == (0,)
    words = conn.execute("SELECT content FROM pgingest.chunks LIMIT 1").fetchone()
    assert words is not None
    word = max(words[0].split(), key=len).strip(".,")
    hits = conn.execute(
        "SELECT count(*) FROM pgingest.hybrid_search(%s, %s, 5) WHERE text_rank IS NOT NULL",
        (word, Vector(qvec)),
    ).fetchone()
    assert hits is not None and hits[0] >= 1
    # And off again: column, index and setting gone.
    conn.execute("SELECT pgingest.set_text_search_config(NULL)")
    assert not _has_tsv(conn)
    assert conn.execute("SELECT to_regclass('pgingest.chunks_tsv')").fetchone() == (None,)
    assert conn.execute(
        "SELECT count(*) FROM pgingest.config WHERE key = 'text_search_config'"
    ).fetchone() == (0,)


def test_hybrid_search_finds_a_rare_term_that_vector_search_ranks_low(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    register(conn, "v1", fake.url)
    conn.execute("SELECT pgingest.set_text_search_config('english')")
    insert_corpus(conn, 150)
    conn.execute(
        "UPDATE pgingest.documents SET body = body || ' The quuxotron calibration is documented here.'"
        " WHERE key = 'doc-77'"
    )
    drain(dsn)
    query = "quuxotron calibration"
    qvec = fake.vector_for(query, "fake-384")
    qvec = qvec / np.linalg.norm(qvec)
    from pgvector import Vector

    vector_only = [
        r[0] for r in conn.execute("SELECT doc_key FROM pgingest.search(%s, 50)", (Vector(qvec),))
    ]
    assert "doc-77" not in vector_only[:10]
    # A text side weighted above the vector side puts its first hit first.
    hybrid = conn.execute(
        "SELECT doc_key, text_rank FROM pgingest.hybrid_search(%s, %s, 5, text_weight => 2.0)",
        (query, Vector(qvec)),
    ).fetchall()
    assert hybrid[0] == ("doc-77", 1)
    # With the defaults (text weight 0.4 of the vector side's), still among the first 10 documents.
    defaults = conn.execute(
        "SELECT doc_key FROM pgingest.hybrid_search(%s, %s, 10, per_document => true)",
        (query, Vector(qvec)),
    ).fetchall()
    assert ("doc-77",) in defaults


def test_retention_purges_only_what_the_policy_says(
    conn: psycopg.Connection[Any], fake: FakeEmbeddingServer
) -> None:
    register(conn, "v1", fake.url)
    register(conn, "v2", fake.url)
    conn.execute(
        "INSERT INTO pgingest.dead_letters (model, error_class, error_message, last_failed_at)"
        " SELECT m, 'server_error', 'x' || g, now() - make_interval(days => g)"
        " FROM generate_series(1, 10) AS g, (VALUES ('v1'), ('v2')) AS t (m)"
    )
    conn.execute("SELECT pgingest.set_dead_letter_retention('v1', interval '7 days', 4)")
    purged = conn.execute("SELECT pgingest.purge_dead_letters()").fetchone()
    assert purged == (6,)
    kept = [
        r[0]
        for r in conn.execute(
            "SELECT error_message FROM pgingest.dead_letters WHERE model = 'v1' ORDER BY last_failed_at DESC"
        )
    ]
    assert kept == ["x1", "x2", "x3", "x4"]
    assert conn.execute(
        "SELECT count(*) FROM pgingest.dead_letters WHERE model = 'v2'"
    ).fetchone() == (10,)
    assert conn.execute("SELECT pgingest.requeue_dead_letters('v1')").fetchone() == (0,)
