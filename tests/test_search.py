"""Search from SQL and PL/Python: search(), search_text(), chunk_preview(), embed_query()."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from pgingest import chunking
from pgingest.testing.fake_provider import FakeEmbeddingServer
from tests.helpers import drain, insert_corpus, register


@pytest.fixture
def corpus(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> psycopg.Connection[Any]:
    register(conn, "v1", fake.url)
    insert_corpus(conn, 60)
    conn.execute(
        "UPDATE pgingest.documents SET metadata = jsonb_build_object('lang', CASE WHEN id % 20 = 0"
        " THEN 'fr' ELSE 'en' END, 'n', id)"
    )
    drain(dsn)
    return conn


def test_chunk_preview_matches_what_the_worker_stores(corpus: psycopg.Connection[Any]) -> None:
    doc = corpus.execute(
        "SELECT id, title, body FROM pgingest.documents ORDER BY id LIMIT 1"
    ).fetchone()
    assert doc is not None
    preview = corpus.execute(
        "SELECT ordinal, content, char_start, char_end, token_count FROM pgingest.chunk_preview(%s, %s)",
        (doc[2], doc[1]),
    ).fetchall()
    stored = corpus.execute(
        "SELECT ordinal, content, char_start, char_end, token_count FROM pgingest.chunks"
        " WHERE doc_id = %s ORDER BY ordinal",
        (doc[0],),
    ).fetchall()
    assert len(preview) > 1
    assert preview == stored
    expected = chunking.chunk_document(doc[1], doc[2], chunking.ChunkerConfig())
    assert [p[1] for p in preview] == [c.text for c in expected]


def test_search_text_from_sql_finds_the_document_it_was_written_from(
    corpus: psycopg.Connection[Any], fake: FakeEmbeddingServer
) -> None:
    # The fake vectors are a function of the exact text: querying with a stored chunk's exact
    # embed input must return that chunk first, at distance ~0.
    row = corpus.execute(
        "SELECT c.doc_id, c.ordinal, d.title || E'\\n\\n' || c.content FROM pgingest.chunks c"
        " JOIN pgingest.documents d ON d.id = c.doc_id ORDER BY c.doc_id DESC, c.ordinal LIMIT 1"
    ).fetchone()
    assert row is not None
    hits = corpus.execute(
        "SELECT doc_id, ordinal, distance FROM pgingest.search_text(%s, 5)", (row[2],)
    ).fetchall()
    assert len(hits) == 5
    assert (hits[0][0], hits[0][1]) == (row[0], row[1])
    assert hits[0][2] < 1e-5
    assert [h[2] for h in hits] == sorted(h[2] for h in hits)


def test_filtered_and_grouped_search(corpus: psycopg.Connection[Any]) -> None:
    q = corpus.execute("SELECT embedding FROM pgingest.store_v1 LIMIT 1").fetchone()
    assert q is not None
    rows = corpus.execute(
        """SELECT doc_id, metadata->>'lang' FROM pgingest.search(%s, 3, '{"lang": "fr"}')""",
        (q[0],),
    ).fetchall()
    assert len(rows) == 3
    assert {r[1] for r in rows} == {"fr"}
    grouped = corpus.execute(
        "SELECT doc_id FROM pgingest.search(%s, 10, per_document => true)", (q[0],)
    ).fetchall()
    assert len(grouped) == 10
    assert len({g[0] for g in grouped}) == 10


def test_search_errors_are_clear(corpus: psycopg.Connection[Any]) -> None:
    with pytest.raises(psycopg.errors.DataException, match="3 dimensions, model v1 has 384"):
        corpus.execute("SELECT * FROM pgingest.search('[1,2,3]'::vector, 5)")
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="k must be"):
        corpus.execute("SELECT * FROM pgingest.search(array_fill(1, ARRAY[384])::vector, 0)")


def test_search_text_with_the_endpoint_down_says_so(corpus: psycopg.Connection[Any]) -> None:
    corpus.execute("SET pgingest.embedding_url = 'http://127.0.0.1:9/v1'")
    corpus.execute("SET pgingest.embedding_timeout = '2'")
    with pytest.raises(psycopg.errors.ConnectionException) as ei:
        corpus.execute("SELECT * FROM pgingest.search_text('anything', 5)")
    assert "127.0.0.1:9" in str(ei.value)
    assert ei.value.diag.message_hint and "embedding_url" in ei.value.diag.message_hint
