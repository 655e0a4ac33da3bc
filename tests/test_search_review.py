"""Search defects found by the review of 2026-12-07 (its findings 1-5, 7, 9 and 10), each with what
it got wrong: hybrid search's text side serving text the searching model no longer holds, a reader
storing a vector of its choosing in the shared query cache (and one role's questions evicting
another's), a "searched exactly" path that walked the ANN index, per_document returning fewer
than k documents, a promoted filter key matching other documents than containment did, BM25
ranking chunks matched only through a negation first, hybrid_search's candidates checked as k,
and a direct hybrid_search() logged as a query-cache hit."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from pgingest.testing.fake_provider import FakeEmbeddingServer
from pgingest.testing.texts import body as make_body
from tests import test_roles
from tests.helpers import drain, insert_corpus, insert_docs, register


def _vector(conn: psycopg.Connection[Any], text: str) -> str:
    row = conn.execute("SELECT pgingest.embed_query(%s)::text", (text,)).fetchone()
    assert row is not None
    return str(row[0])


# 1. Hybrid search's text side: only the chunks the searching model holds.


def test_hybrid_text_side_never_serves_text_the_searching_model_dropped(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    register(conn, "v1", fake.url, index_method="none")
    # v2 shares v1's chunking profile (same default profile): the profile's chunks are shared.
    register(conn, "v2", fake.url, model_id="fake-768", dimensions=768, index_method="none")
    insert_corpus(conn, 3)
    conn.execute(
        "INSERT INTO pgingest.documents (key, title, body)"
        " VALUES ('secret', 'Memo', 'The quuxotron launch code is 4471.')"
    )
    drain(dsn)
    conn.execute("SELECT pgingest.set_text_search_config('english')")
    conn.execute("SELECT pgingest.pause_model('v2', 'endpoint down')")  # v2 stays behind
    conn.execute("UPDATE pgingest.documents SET body = 'Redacted.' WHERE key = 'secret'")
    fake.fail_next("bad_request", 20)  # v1 refuses the new version: dead-lettered
    drain(dsn, models=["v1"])
    assert conn.execute("SELECT model, doc_key FROM pgingest.dead_letters").fetchall() == [
        ("v1", "secret")
    ]
    # The old text is still in the profile's chunks (kept for v2)...
    assert conn.execute(
        "SELECT count(*) FROM pgingest.chunks AS c JOIN pgingest.documents AS d ON d.id = c.doc_id"
        " WHERE d.key = 'secret' AND c.content LIKE '%%quuxotron%%'"
    ).fetchone() == (1,)
    vec = conn.execute("SELECT embedding::text FROM pgingest.store_v1 LIMIT 1").fetchone()
    assert vec is not None
    for ranking in ("bm25", "ts_rank_cd"):
        for per_document in (False, True):
            rows = conn.execute(
                "SELECT doc_key, content FROM pgingest.hybrid_search('quuxotron launch code',"
                " %s::vector, 10, text_ranking => %s, per_document => %s)",
                (vec[0], ranking, per_document),
            ).fetchall()
            # ... but v1's hybrid search never serves it.
            assert rows and not any("quuxotron" in r[1] for r in rows), (ranking, rows)
            assert "secret" not in {r[0] for r in rows}


# 2. The shared query cache: only embed_query stores, and one role cannot evict another's rows.

login = test_roles.login  # the fixture: a new LOGIN role in a group role, dropped at the end


def _cache_key(conn: psycopg.Connection[Any], text: str) -> bytes:
    """The shared cache's key of ``text`` for model v1 (plpy_support.shared_cache_key)."""
    from pgingest.plpy_support import normalise_query, shared_cache_key

    m = conn.execute(
        "SELECT name, base_url, model_id, dimensions, storage, metric FROM pgingest.models"
        " WHERE name = 'v1'"
    ).fetchone()
    assert m is not None
    return shared_cache_key(repr((*m, None, normalise_query(text))))


def test_a_reader_cannot_store_a_vector_of_its_choosing_in_the_shared_cache(
    conn: psycopg.Connection[Any],
    dsn: str,
    fake: FakeEmbeddingServer,
    login: Callable[[str], str],
) -> None:
    register(conn, "v1", fake.url, index_method="none")
    reader = login("pgingest_reader")
    text = "how are documents chunked"
    key = _cache_key(conn, text)
    planted = "[" + ",".join(["1"] + ["0"] * 383) + "]"
    with psycopg.connect(reader, autocommit=True) as r:
        r.execute("SELECT pgingest._query_cache_vector(%s, 'v1', 384, %s::vector)", (key, planted))
        # Nor from a block of its own that names the same statement.
        r.execute(
            "DO $$ BEGIN PERFORM pgingest._query_cache_vector(decode(repeat('ab', 32), 'hex'),"
            " 'v1', 384, array_fill(1, ARRAY[384])::vector); END $$"
        )
    assert conn.execute("SELECT count(*) FROM pgingest.query_cache").fetchone() == (0,)
    # The embedding path still stores what the endpoint returned, for the role's other sessions.
    with psycopg.connect(reader, autocommit=True) as r:
        got = _vector(r, text)
    assert conn.execute(
        "SELECT count(*), bool_and(embedding::text = %s), bool_and(cache_key = %s)"
        " FROM pgingest.query_cache",
        (got, key),
    ).fetchone() == (1, True, True)
    with psycopg.connect(reader, autocommit=True) as r2:
        assert _vector(r2, text) == got
        assert r2.execute("SELECT hits FROM pgingest.query_cache_shared_stats()").fetchone() == (1,)


def test_one_roles_questions_never_evict_another_roles_cached_vectors(
    conn: psycopg.Connection[Any],
    dsn: str,
    fake: FakeEmbeddingServer,
    login: Callable[[str], str],
) -> None:
    register(conn, "v1", fake.url, index_method="none")
    conn.execute("UPDATE pgingest.config SET value = '10' WHERE key = 'query_cache_max_rows'")
    conn.execute("SET pgingest.query_cache_entries = 0")
    for i in range(3):
        _vector(conn, f"the owner's question {i}")
    mine = conn.execute(
        "SELECT array_agg(cache_key ORDER BY cache_key) FROM pgingest.query_cache"
    ).fetchone()
    reader = login("pgingest_reader")
    with psycopg.connect(reader, autocommit=True) as r:
        r.execute("SET pgingest.query_cache_entries = 0")
        for i in range(25):
            _vector(r, f"a flood of questions {i}")
    # Kept within the bound as rows come in, at the cost of the role that holds the most.
    assert conn.execute(
        "SELECT count(*) <= 10, count(*) FILTER (WHERE role_id = (SELECT oid FROM pg_roles"
        " WHERE rolname = current_user)) FROM pgingest.query_cache"
    ).fetchone() == (True, 3)
    conn.execute("SELECT pgingest.run_maintenance()")
    assert (
        conn.execute(
            "SELECT array_agg(cache_key ORDER BY cache_key) FROM pgingest.query_cache"
            " WHERE role_id = (SELECT oid FROM pg_roles WHERE rolname = current_user)"
        ).fetchone()
        == mine
    )
    # The flooding role's newest questions are the ones it kept.
    with psycopg.connect(reader, autocommit=True) as r:
        r.execute("SET pgingest.query_cache_entries = 0")
        _vector(r, "a flood of questions 24")
        assert r.execute("SELECT hits FROM pgingest.query_cache_shared_stats()").fetchone() == (1,)


# 3. The selective-filter path is exact; the broad one walks the ANN index.


def _random_store(conn: psycopg.Connection[Any], docs: int, chunks: int, dims: int) -> None:
    pid = conn.execute("SELECT profile_id FROM pgingest.models WHERE name = 'v1'").fetchone()
    assert pid is not None
    conn.execute(
        "INSERT INTO pgingest.documents (key, title, body, metadata)"
        " SELECT 'k' || g, 't' || g, 'body ' || g,"
        " jsonb_build_object('grp', 'g' || (g %% 10)) FROM generate_series(1, %s) AS g",
        (docs,),
    )
    conn.execute(
        "INSERT INTO pgingest.chunks (profile_id, doc_id, ordinal, content, chunk_hash,"
        " token_count, char_start, char_end, chunker)"
        " SELECT %s, d.id, o, 'chunk ' || d.id || ':' || o, sha256((d.id || ':' || o)::bytea),"
        " 3, 0, 1, 'x' FROM pgingest.documents AS d CROSS JOIN generate_series(0, %s - 1) AS o",
        (pid[0], chunks),
    )
    conn.execute(
        "INSERT INTO pgingest.store_v1 (doc_id, ordinal, chunk_hash, embedding)"
        " SELECT c.doc_id, c.ordinal, c.chunk_hash, (SELECT array_agg(random() - 0.5)::vector"
        " FROM generate_series(1, %s) WHERE c.doc_id > 0) FROM pgingest.chunks AS c",
        (dims,),
    )


def _plans(conn: psycopg.Connection[Any], query: str, args: tuple[Any, ...]) -> list[str]:
    plans: list[str] = []
    handler = lambda d: plans.append(d.message_primary or "")  # noqa: E731
    conn.add_notice_handler(handler)
    conn.execute("LOAD 'auto_explain'")
    conn.execute("SET auto_explain.log_min_duration = 0")
    conn.execute("SET auto_explain.log_nested_statements = on")
    conn.execute("SET client_min_messages = log")
    try:
        conn.execute(query, args).fetchall()
    finally:
        conn.execute("SET client_min_messages = notice")
        conn.execute("SET auto_explain.log_min_duration = -1")
        conn.remove_notice_handler(handler)
    return [p for p in plans if "store_v1" in p]


def test_a_selective_filter_is_searched_exactly_and_a_broad_one_through_the_index(
    conn: psycopg.Connection[Any], fake: FakeEmbeddingServer
) -> None:
    register(conn, "v1", fake.url, model_id="fake-32", dimensions=32)
    _random_store(conn, 600, 2, 32)
    ddl = conn.execute("SELECT pgingest.index_ddl('v1', false)").fetchone()
    assert ddl is not None
    conn.execute(ddl[0])
    conn.execute("VACUUM ANALYZE pgingest.store_v1")
    conn.execute("ANALYZE pgingest.documents")
    index = conn.execute(
        "SELECT indexrelid::regclass::text FROM pg_index WHERE indrelid = 'pgingest.store_v1'::regclass"
        " AND indexrelid::regclass::text NOT LIKE '%%pkey' AND indexrelid::regclass::text NOT LIKE"
        " '%%chunk_hash'"
    ).fetchone()
    assert index is not None, "the model's ANN index"
    # A poor ANN walk (the index is approximate): the exact path must not depend on it.
    conn.execute("SET hnsw.ef_search = 1")
    conn.execute("SET enable_seqscan = off")  # the index is the planner's first choice
    filt = '{"grp": "g3"}'  # 60 documents: the exact path
    for i in range(8):
        q = conn.execute(
            "SELECT (SELECT array_agg(random() - 0.5)::vector FROM generate_series(1, 32) WHERE %s >= 0)::text",
            (i,),
        ).fetchone()
        assert q is not None
        got = conn.execute(
            "SELECT doc_id, ordinal FROM pgingest.search(%s::vector, 10, %s::jsonb)", (q[0], filt)
        ).fetchall()
        exact = conn.execute(
            "SELECT s.doc_id, s.ordinal FROM pgingest.store_v1 AS s"
            " JOIN pgingest.documents AS d ON d.id = s.doc_id WHERE d.metadata ->> 'grp' = 'g3'"
            " ORDER BY (s.embedding <=> %s::vector) + 0 LIMIT 10",
            (q[0],),
        ).fetchall()
        assert got == exact, i
    q = conn.execute("SELECT embedding::text FROM pgingest.store_v1 LIMIT 1").fetchone()
    assert q is not None
    exact_plans = _plans(
        conn, "SELECT * FROM pgingest.search(%s::vector, 10, %s::jsonb)", (q[0], filt)
    )
    assert exact_plans and not any(index[0].split(".")[-1] in p for p in exact_plans), exact_plans
    ann_plans = _plans(conn, "SELECT * FROM pgingest.search(%s::vector, 10)", (q[0],))
    assert any(index[0].split(".")[-1] in p for p in ann_plans), ann_plans


# 4. per_document => true: k documents whenever the store holds them.


def _one_long_document(conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer) -> str:
    """12 short documents and a long one, embedded; a query vector near the long one's chunks."""
    register(conn, "v1", fake.url, index_method="none")
    insert_corpus(conn, 12)
    long_body = "\n\n".join(make_body(100 + i) for i in range(30))
    conn.execute(
        "INSERT INTO pgingest.documents (key, title, body) VALUES ('big', 'Big', %s)", (long_body,)
    )
    drain(dsn)
    big = conn.execute(
        "SELECT count(*) FROM pgingest.store_v1 AS s JOIN pgingest.documents AS d"
        " ON d.id = s.doc_id WHERE d.key = 'big'"
    ).fetchone()
    assert big is not None and big[0] > 5 * 8
    qv = conn.execute(
        "SELECT avg(s.embedding)::text FROM pgingest.store_v1 AS s JOIN pgingest.documents AS d"
        " ON d.id = s.doc_id WHERE d.key = 'big'"
    ).fetchone()
    assert qv is not None
    return str(qv[0])


def test_per_document_returns_k_documents_when_one_document_holds_the_nearest_chunks(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    qv = _one_long_document(conn, dsn, fake)
    rows = conn.execute(
        "SELECT doc_key, distance FROM pgingest.search(%s::vector, 5, per_document => true)",
        (qv,),
    ).fetchall()
    assert len(rows) == 5 and len({r[0] for r in rows}) == 5 and rows[0][0] == "big"
    assert [r[1] for r in rows] == sorted(r[1] for r in rows)
    # The same rows as a search wide enough to need no widening.
    wide = conn.execute(
        "SELECT doc_key, distance FROM pgingest.search(%s::vector, 1000) ORDER BY distance",
        (qv,),
    ).fetchall()
    firsts: list[tuple[str, float]] = []
    for key, dist in wide:
        if key not in {f[0] for f in firsts}:
            firsts.append((key, dist))
    assert [r[0] for r in rows] == [f[0] for f in firsts[:5]]
    # Fewer documents than k: all of them, no error.
    assert (
        len(
            conn.execute(
                "SELECT 1 FROM pgingest.search(%s::vector, 50, per_document => true)", (qv,)
            ).fetchall()
        )
        == 13
    )


# 4b. hybrid_search per_document => true: k documents too.


def test_hybrid_per_document_returns_k_documents_when_one_document_fills_the_candidates(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    qv = _one_long_document(conn, dsn, fake)
    conn.execute("SELECT pgingest.set_text_search_config('english')")
    for cand in (None, 10):
        hyb = conn.execute(
            "SELECT doc_key FROM pgingest.hybrid_search('zzzz', %s::vector, 5,"
            " per_document => true, candidates => %s)",
            (qv, cand),
        ).fetchall()
        assert len(hyb) == 5 and len({r[0] for r in hyb}) == 5, (cand, hyb)
    # Fewer documents than k: all of them.
    assert (
        len(
            conn.execute(
                "SELECT 1 FROM pgingest.hybrid_search('zzzz', %s::vector, 50, per_document => true,"
                " candidates => 10)",
                (qv,),
            ).fetchall()
        )
        == 13
    )


# 5. register_filter changes nothing a filter matches.


FILTERS = [
    '{"code": "5"}',
    '{"code": 5}',
    '{"code": true}',
    '{"flag": "true"}',
    '{"flag": true}',
    '{"n": 7}',
    '{"n": "7"}',
    '{"n": 7.0}',
    '{"n": 7.5}',
    '{"n": 99999999999}',
    '{"n": true}',
    '{"tags": "a"}',
    '{"tags": ["a"]}',
    '{"tags": ["1"]}',
    '{"tags": [1]}',
    '{"code": "5", "n": 8}',
    '{"b": true}',
    '{"b": "true"}',
    '{"x": 7}',
    '{"x": "7"}',
    '{"x": 7.50}',
    '{"x": 7.5}',
]


def test_promoting_a_metadata_key_changes_nothing_a_filter_matches(
    conn: psycopg.Connection[Any], fake: FakeEmbeddingServer
) -> None:
    register(conn, "v1", fake.url, model_id="fake-8", dimensions=8, index_method="none")
    _random_store(conn, 6, 1, 8)
    metas = [
        '{"code": 5, "flag": true, "n": 7, "tags": ["a", "b"], "b": true, "x": 7}',
        '{"code": "5", "n": 8, "tags": [1, "c"], "b": false, "x": 7.5}',
        '{"code": "true", "flag": "true", "tags": ["1"]}',
        '{"code": true, "n": -7, "flag": false, "x": -7}',
        '{"code": "x"}',
        "{}",
    ]
    for i, meta in enumerate(metas, start=1):
        conn.execute(
            "UPDATE pgingest.documents SET metadata = %s::jsonb WHERE key = %s", (meta, f"k{i}")
        )
    q = conn.execute("SELECT embedding::text FROM pgingest.store_v1 LIMIT 1").fetchone()
    assert q is not None

    def matches() -> dict[str, list[str]]:
        return {
            f: [
                r[0]
                for r in conn.execute(
                    "SELECT doc_key FROM pgingest.search(%s::vector, 100, %s::jsonb) ORDER BY doc_key",
                    (q[0], f),
                )
            ]
            for f in FILTERS
        }

    before = matches()
    assert before['{"code": "5"}'] == ["k2"] and before['{"n": 7}'] == ["k1"]
    for key, typ in (
        ("code", "text"),
        ("flag", "text"),
        ("n", "integer"),
        ("tags", "text[]"),
        ("b", "boolean"),
        ("x", "numeric"),
    ):
        conn.execute("SELECT pgingest.register_filter(%s, %s)", (key, typ))
    after = matches()  # and no cast error for 7.5 or 99999999999 on the integer key
    assert {f: m for f, m in after.items() if m != before[f]} == {}


# 7. BM25: a chunk matched only through a negation ranks after one holding the word.


def test_bm25_ranks_a_chunk_holding_the_word_above_chunks_matched_by_a_negation(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    register(conn, "v1", fake.url, index_method="none")
    conn.execute("SELECT pgingest.set_text_search_config('english')")
    insert_docs(
        conn,
        [
            ("has-word", "A", "We calibrate the quuxotron daily"),
            ("other-1", "B", "Nothing relevant here at all"),
            ("other-2", "C", "Completely unrelated text about gardens"),
        ],
    )
    drain(dsn)
    vec = _vector(conn, "x")
    for ranking in ("bm25", "ts_rank_cd"):
        rows = conn.execute(
            "SELECT doc_key FROM pgingest.hybrid_search('quuxotron or -zebra', %s::vector, 5,"
            " vector_weight => 0, text_weight => 1, match_all => true, text_ranking => %s)"
            " ORDER BY text_rank",
            (vec, ranking),
        ).fetchall()
        assert [r[0] for r in rows][0] == "has-word", (ranking, rows)
        assert len(rows) == 3


# 10. hybrid_search's candidates: checked, with its own message.


def test_hybrid_search_checks_candidates_with_its_own_message(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    register(conn, "v1", fake.url, index_method="none")
    conn.execute("SELECT pgingest.set_text_search_config('english')")
    insert_corpus(conn, 2)
    drain(dsn)
    vec = _vector(conn, "x")
    for bad in (2000, 0, -5):
        with pytest.raises(
            psycopg.errors.InvalidParameterValue,
            match=f"candidates must be between 1 and 1000, not {bad}",
        ):
            conn.execute(
                "SELECT * FROM pgingest.hybrid_search('x', %s::vector, 5, candidates => %s)",
                (vec, bad),
            )
    assert conn.execute(
        "SELECT count(*) > 0 FROM pgingest.hybrid_search('x', %s::vector, 5, candidates => 1000)",
        (vec,),
    ).fetchone() == (True,)


# 9. The query log: where the vector came from, per search, not what the session last left.


def test_a_direct_hybrid_search_is_not_logged_as_a_cache_hit(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    register(conn, "v1", fake.url, index_method="none")
    insert_corpus(conn, 4)
    drain(dsn)
    conn.execute("SELECT pgingest.set_text_search_config('english')")
    conn.execute("SELECT pgingest.set_query_log(1.0)")
    conn.execute("SELECT count(*) FROM pgingest.search_text('vectors', 2)")
    conn.execute("SELECT count(*) FROM pgingest.search_text('vectors', 2)")  # session cache hit
    v = conn.execute("SELECT embedding::text FROM pgingest.store_v1 LIMIT 1").fetchone()
    assert v is not None
    for _ in range(2):
        conn.execute(
            "SELECT count(*) FROM pgingest.hybrid_search('anything', %s::vector, 2)", (v[0],)
        )
    conn.execute("SELECT count(*) FROM pgingest.hybrid_search_text('vectors', 2)")
    conn.execute("SELECT count(*) FROM pgingest.search(%s::vector, 2)", (v[0],))
    conn.execute("SELECT count(*) FROM pgingest.hybrid_search('anything', %s::vector, 2)", (v[0],))
    assert conn.execute(
        "SELECT kind, query_vector FROM pgingest.query_log ORDER BY id"
    ).fetchall() == [
        ("search_text", "endpoint"),
        ("search_text", "session"),
        ("hybrid_search", None),
        ("hybrid_search", None),
        ("hybrid_search", "session"),
        ("search", None),
        ("hybrid_search", None),
    ]
