"""Hybrid search that earns its name (issue 21, point 2): per-document results with metadata, the
defaults the evaluation chose, and a rare exact term found by hybrid search where vector search
alone misses it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
from pgvector import Vector

from pgingest.testing.fake_provider import FakeEmbeddingServer
from tests.helpers import drain, insert_corpus, register

ROOT = Path(__file__).resolve().parent.parent


def _unit(fake: FakeEmbeddingServer, text: str) -> Vector:
    vec = fake.vector_for(text, "fake-384")
    return Vector(vec / np.linalg.norm(vec))


def _long_body(i: int) -> str:
    # Several chunks a document, every one sharing the query's words: per chunk, a document
    # would fill the top rows alone.
    para = f"Document {i} explains how the scheduler retries a failed job after a timeout. "
    return "\n\n".join(
        para + f"Section {s}: " + "details of the retry policy. " * 30 for s in range(6)
    )


def test_per_document_hybrid_returns_distinct_documents_with_their_metadata(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    register(conn, "v1", fake.url)
    conn.execute("SELECT pgingest.set_text_search_config('english')")
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO pgingest.documents (key, title, body, metadata) VALUES (%s, %s, %s, %s)",
            [
                (f"doc-{i}", f"Scheduler {i}", _long_body(i), json.dumps({"n": i, "team": "ops"}))
                for i in range(12)
            ],
        )
    drain(dsn)
    chunks = conn.execute("SELECT count(*) FROM pgingest.chunks").fetchone()
    assert chunks is not None and chunks[0] >= 12 * 3
    query = "retry a failed job after a timeout"
    qvec = _unit(fake, query)

    per_chunk = conn.execute(
        "SELECT doc_key FROM pgingest.hybrid_search(%s, %s, 10)", (query, qvec)
    ).fetchall()
    assert len(per_chunk) == 10 and len({r[0] for r in per_chunk}) < 10  # chunks repeat documents

    rows = conn.execute(
        "SELECT doc_key, metadata, score, vector_rank, text_rank"
        " FROM pgingest.hybrid_search(%s, %s, 10, per_document => true)",
        (query, qvec),
    ).fetchall()
    keys = [r[0] for r in rows]
    assert len(keys) == 10 and len(set(keys)) == 10
    assert all(r[1] == {"n": int(r[0].split("-")[1]), "team": "ops"} for r in rows)
    assert [r[2] for r in rows] == sorted((r[2] for r in rows), reverse=True)
    assert all(r[3] is not None or r[4] is not None for r in rows)

    # The same through hybrid_search_text (embedded in the database), with a filter.
    text_rows = conn.execute(
        'SELECT doc_key, metadata FROM pgingest.hybrid_search_text(%s, 5, \'{"team": "ops"}\','
        " per_document => true)",
        (query,),
    ).fetchall()
    assert len(text_rows) == 5 and len({r[0] for r in text_rows}) == 5
    assert all(r[1]["team"] == "ops" for r in text_rows)
    none = conn.execute(
        'SELECT count(*) FROM pgingest.hybrid_search_text(%s, 5, \'{"team": "dev"}\','
        " per_document => true)",
        (query,),
    ).fetchone()
    assert none == (0,)


def test_the_defaults_are_those_the_evaluation_chose(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    chosen = json.loads((ROOT / "eval" / "hybrid_defaults.json").read_text())["chosen"]
    row = conn.execute(
        "SELECT row_to_json(d) FROM pgingest.hybrid_search_defaults() AS d"
    ).fetchone()
    assert row is not None and row[0] == chosen

    # A call without them (NULL) gives exactly what the explicit defaults give.
    register(conn, "v1", fake.url)
    conn.execute("SELECT pgingest.set_text_search_config('english')")
    insert_corpus(conn, 30)
    drain(dsn)
    qvec = _unit(fake, "chunk text")
    implicit = conn.execute(
        "SELECT doc_id, ordinal, score FROM pgingest.hybrid_search('chunk text', %s, 10)", (qvec,)
    ).fetchall()
    explicit = conn.execute(
        "SELECT doc_id, ordinal, score FROM pgingest.hybrid_search('chunk text', %s, 10,"
        " vector_weight => %s, text_weight => %s, rrf_k => %s, candidates => %s, text_ranking => %s)",
        (
            qvec,
            chosen["vector_weight"],
            chosen["text_weight"],
            chosen["rrf_k"],
            chosen["candidates"],
            chosen["text_ranking"],
        ),
    ).fetchall()
    assert implicit and implicit == explicit
    # and another setting changes the ranking's scores (the defaults are used, not ignored)
    other = conn.execute(
        "SELECT doc_id, ordinal, score FROM pgingest.hybrid_search('chunk text', %s, 10,"
        " rrf_k => 60, text_ranking => 'ts_rank_cd')",
        (qvec,),
    ).fetchall()
    assert [r[2] for r in other] != [r[2] for r in implicit]


def test_a_rare_exact_term_is_found_by_hybrid_and_missed_by_vector_search(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    register(conn, "v1", fake.url)
    conn.execute("SELECT pgingest.set_text_search_config('english')")
    # Documents of several chunks each, as in real corpora (the evaluation's: 1,844 chunks for
    # 1,233 documents): per document, a document ranks at its best chunk.
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO pgingest.documents (key, title, body) VALUES (%s, %s, %s)",
            [(f"doc-{i}", f"Scheduler {i}", _long_body(i)) for i in range(60)],
        )
    # The only document naming the exception, in its dotted title (one token to the english parser)
    # and its first line: the question names the class alone.
    conn.execute(
        "INSERT INTO pgingest.documents (key, title, body) VALUES ('pydoc:asyncio.exceptions.LimitOverrunError',"
        " 'asyncio.exceptions.LimitOverrunError',"
        " 'class asyncio.exceptions.LimitOverrunError: reached the buffer limit while looking for a separator.')"
    )
    drain(dsn)
    query = "LimitOverrunError from an asyncio stream reader"
    qvec = _unit(fake, query)
    wanted = "pydoc:asyncio.exceptions.LimitOverrunError"

    vector_only = [
        r[0]
        for r in conn.execute(
            "SELECT doc_key FROM pgingest.search(%s, 10, per_document => true)", (qvec,)
        )
    ]
    assert len(vector_only) == 10 and wanted not in vector_only

    hybrid = conn.execute(
        "SELECT doc_key, text_rank FROM pgingest.hybrid_search(%s, %s, 10, per_document => true)",
        (query, qvec),
    ).fetchall()
    assert (wanted, 1) in hybrid
    # Only through the name's parts: the whole dotted token never matches limitoverrunerror.
    whole = conn.execute(
        "SELECT count(*) FROM pgingest.chunks WHERE tsv @@ 'limitoverrunerror'::tsquery"
        " AND NOT strip(to_tsvector('english', content)) @@ 'limitoverrunerror'::tsquery"
    ).fetchone()
    assert whole == (1,)


def test_query_terms_drop_stop_words_and_keep_dotted_names_whole_and_in_parts(
    conn: psycopg.Connection[Any],
) -> None:
    row = conn.execute(
        "SELECT pgingest._text_query_terms('english',"
        " 'What does concurrent.futures.process.BrokenProcessPool mean for my pool?')"
    ).fetchone()
    assert row is not None
    terms = set(row[0])
    assert {"concurrent.futures.process.brokenprocesspool", "brokenprocesspool"} <= terms
    assert {"concurr", "futur", "process", "pool", "mean"} <= terms
    assert not terms & {"what", "does", "for", "my"}
    empty = conn.execute("SELECT pgingest._text_query_terms('english', 'what is it')").fetchone()
    assert empty == ([],)


def test_bm25_ranks_a_rare_word_above_a_common_one_repeated(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    register(conn, "v1", fake.url)
    # A second model with its own chunking profile: each searches its profile's chunks, and
    # BM25's statistics are that profile's (df counted per profile, the chunk count from the
    # profile's share in pg_stats).
    register(conn, "v2", fake.url, title_in_chunks=False)
    conn.execute("SELECT pgingest.set_text_search_config('english')")
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO pgingest.documents (key, title, body) VALUES (%s, %s, %s)",
            [
                (f"common-{i}", f"Note {i}", "The timeout of the job. " + "Timeout again. " * 8)
                for i in range(30)
            ]
            + [("rare", "Note", "The quuxotron of the job, once.")],
        )
    drain(dsn)
    qvec = _unit(fake, "timeout quuxotron")

    def text_first(ranking: str, model: str = "v1") -> list[str]:
        rows = conn.execute(
            "SELECT doc_key, model_name FROM pgingest.hybrid_search('timeout quuxotron', %s, 3,"
            " vector_weight => 0, text_ranking => %s, model => %s)",
            (qvec, ranking, model),
        ).fetchall()
        assert {r[1] for r in rows} == {model}
        return [r[0] for r in rows]

    # idf: 'quuxotron' is in 1 chunk of 31, 'timeout' in 30; the repetitions saturate (k1 1.2).
    assert text_first("bm25")[0] == "rare"
    # ts_rank_cd rewards the density of the common word instead.
    assert text_first("ts_rank_cd")[0] != "rare"
    # Still right once the table's row estimate exists (N from pg_class.reltuples).
    assert text_first("bm25", "v2")[0] == "rare"
    conn.execute("ANALYZE pgingest.chunks")
    assert text_first("bm25")[0] == "rare"
    assert text_first("bm25", "v2")[0] == "rare"
