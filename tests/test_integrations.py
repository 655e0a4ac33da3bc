"""The framework adapters (issue 26, point 3): LangChain's and LlamaIndex's retrievers over
pgingest's SQL API, with the real libraries and a real database (the fake provider embeds).

Every result is checked against what pgingest.search / hybrid_search answer for the same
vector in SQL, and against the documents table: a result that loses its key, score, chunk
ordinal, source or metadata fails here.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
import pytest
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever as LangChainBaseRetriever
from llama_index.core.retrievers import BaseRetriever as LlamaIndexBaseRetriever
from llama_index.core.schema import MetadataMode, NodeWithScore, TextNode
from llama_index.core.vector_stores.types import FilterOperator, MetadataFilter, MetadataFilters
from psycopg import sql
from psycopg_pool import ConnectionPool

from pgingest.integrations import NoActiveModel, retrieve
from pgingest.integrations.langchain import PgingestRetriever as LCRetriever
from pgingest.integrations.llamaindex import PgingestRetriever as LIRetriever
from pgingest.search import EmptyQuery
from pgingest.testing.fake_provider import FakeEmbeddingServer
from tests.helpers import drain, insert_corpus, register, wait_for

N_DOCS = 30


def vec(fake: FakeEmbeddingServer, text: str, model_id: str = "fake-384") -> str:
    v = fake.vector_for(text, model_id)
    v = v / math.sqrt(float((v * v).sum()))
    return "[" + ",".join(repr(float(x)) for x in v) + "]"


@pytest.fixture
def corpus(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> psycopg.Connection[Any]:
    """30 documents (metadata lang en/fr, n, tags) and an attached table `notes` (5 rows), full
    text search on, embedded by model v1 (the fake's fake-384)."""
    conn.execute("SELECT pgingest.set_text_search_config('english')")
    register(conn, "v1", fake.url)
    insert_corpus(conn, N_DOCS)
    conn.execute(
        "UPDATE pgingest.documents SET metadata = jsonb_build_object('lang', CASE WHEN id % 5 = 0"
        " THEN 'fr' ELSE 'en' END, 'n', id, 'tags', jsonb_build_array('t' || (id % 3)))"
    )
    conn.execute("CREATE TABLE public.notes (id integer PRIMARY KEY, body text, lang text)")
    conn.execute(
        "INSERT INTO public.notes SELECT i, 'Note ' || i || ' about tenants and embeddings, "
        "keys and vectors in PostgreSQL.', 'de' FROM generate_series(1, 5) AS i"
    )
    conn.execute(
        "SELECT pgingest.add_source('notes', 'public.notes', body => 'body', metadata => '{lang}')"
    )
    drain(dsn)
    return conn


def a_chunk(conn: psycopg.Connection[Any], doc_key: str = "doc-7") -> tuple[str, int, str, str]:
    """(key, ordinal, content, the text the worker embedded) of a chunk of ``doc_key``: asked as
    a query, the fake gives its exact vector back, so that chunk comes first at distance 0."""
    row = conn.execute(
        "SELECT d.key, c.ordinal, c.content, d.title || E'\\n\\n' || c.content"
        " FROM pgingest.chunks AS c JOIN pgingest.documents AS d ON d.id = c.doc_id"
        " WHERE d.key = %s ORDER BY c.ordinal DESC LIMIT 1",
        (doc_key,),
    ).fetchone()
    assert row is not None
    return row[0], row[1], row[2], row[3]


def sql_search(conn: psycopg.Connection[Any], v: str, k: int, **kw: Any) -> list[dict[str, Any]]:
    args = "".join(f", {name} => %({name})s" for name in kw)
    cur = conn.cursor(row_factory=psycopg.rows.dict_row)
    return cur.execute(
        f"SELECT * FROM pgingest.search(%(v)s::vector, %(k)s{args})",  # noqa: S608
        {"v": v, "k": k, **kw},
    ).fetchall()


def doc_metadata(conn: psycopg.Connection[Any]) -> dict[str, dict[str, Any]]:
    rows = conn.execute("SELECT key, metadata FROM pgingest.documents").fetchall()
    notes = conn.execute("SELECT id::text, jsonb_build_object('lang', lang) FROM public.notes")
    return {**{r[0]: r[1] for r in rows}, **{r[0]: r[1] for r in notes.fetchall()}}


# -- LangChain ---------------------------------------------------------------------------------


def test_langchain_documents_carry_key_score_ordinal_source_and_metadata(
    corpus: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    key, ordinal, content, embedded = a_chunk(corpus)
    retriever = LCRetriever(connection=dsn, k=6)
    assert isinstance(retriever, LangChainBaseRetriever)
    docs = retriever.invoke(embedded)
    assert len(docs) == 6 and all(isinstance(d, Document) for d in docs)
    first = docs[0]
    assert first.page_content == content
    assert first.id == f"documents:{key}#{ordinal}"
    assert first.metadata["key"] == key
    assert first.metadata["ordinal"] == ordinal
    assert first.metadata["source"] == "documents"
    assert first.metadata["source_key"] == {"key": key}
    assert first.metadata["model"] == "v1"
    assert first.metadata["score"] == pytest.approx(1.0, abs=1e-5)
    assert first.metadata["distance"] == pytest.approx(0.0, abs=1e-5)
    # The same rows, in the same order, as pgingest.search for the same vector; scores are
    # 1 - cosine distance; the document's metadata whole, at the top and under its own name.
    expected = sql_search(corpus, vec(fake, embedded), 6)
    assert [(d.metadata["key"], d.metadata["ordinal"]) for d in docs] == [
        (r["doc_key"], r["ordinal"]) for r in expected
    ]
    meta = doc_metadata(corpus)
    for d, r in zip(docs, expected, strict=True):
        assert d.metadata["score"] == pytest.approx(1 - r["distance"], abs=1e-6)
        assert d.metadata["doc_id"] == r["doc_id"]
        assert d.metadata["title"] == r["title"]
        assert d.page_content == r["content"]
        assert d.metadata["document_metadata"] == meta[d.metadata["key"]]
        for name, value in meta[d.metadata["key"]].items():
            assert d.metadata[name] == value
    scores = [d.metadata["score"] for d in docs]
    assert scores == sorted(scores, reverse=True)


def test_langchain_filter_per_document_and_async(
    corpus: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    _, _, _, embedded = a_chunk(corpus)
    retriever = LCRetriever(connection=dsn, k=5, filter={"lang": "fr"}, per_document=True)
    docs = retriever.invoke(embedded)
    expected = sql_search(
        corpus, vec(fake, embedded), 5, filter='{"lang": "fr"}', per_document=True
    )
    assert len(docs) == 5
    assert [d.metadata["key"] for d in docs] == [r["doc_key"] for r in expected]
    assert len({d.metadata["key"] for d in docs}) == 5  # one chunk per document
    assert {d.metadata["lang"] for d in docs} == {"fr"}
    # ainvoke: the same documents, through LangChain's async path.
    adocs = asyncio.run(retriever.ainvoke(embedded))
    assert [(d.id, d.metadata) for d in adocs] == [(d.id, d.metadata) for d in docs]


def test_langchain_hybrid_search_matches_sql_and_keeps_metadata(
    corpus: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    query = "tenants embeddings keys"
    docs = LCRetriever(connection=dsn, k=8, hybrid=True).invoke(query)
    cur = corpus.cursor(row_factory=psycopg.rows.dict_row)
    expected = cur.execute(
        "SELECT * FROM pgingest.hybrid_search(%s, %s::vector, 8)", (query, vec(fake, query))
    ).fetchall()
    assert len(docs) == 8
    assert [(d.metadata["key"], d.metadata["ordinal"]) for d in docs] == [
        (r["doc_key"], r["ordinal"]) for r in expected
    ]
    meta = doc_metadata(corpus)
    for d, r in zip(docs, expected, strict=True):
        assert d.metadata["score"] == pytest.approx(r["score"])
        assert d.metadata["vector_rank"] == r["vector_rank"]
        assert d.metadata["text_rank"] == r["text_rank"]
        assert d.metadata["source"] == r["source"]
        assert d.metadata["document_metadata"] == meta[d.metadata["key"]]
        assert "distance" not in d.metadata
    # Per document: each document once, its best fused chunk, in the fused order.
    per_doc = LCRetriever(connection=dsn, k=4, hybrid=True, per_document=True).invoke(query)
    keys = [d.metadata["key"] for d in per_doc]
    assert len(keys) == 4 == len(set(keys))
    firsts: list[str] = []
    for r in cur.execute(
        "SELECT doc_key FROM pgingest.hybrid_search(%s, %s::vector, 32)", (query, vec(fake, query))
    ):
        if r["doc_key"] not in firsts:
            firsts.append(r["doc_key"])
    assert keys == firsts[:4]


def test_sources_narrow_the_search_and_name_each_row(
    corpus: psycopg.Connection[Any], dsn: str
) -> None:
    query = "Note 3 about tenants and embeddings, keys and vectors in PostgreSQL."
    notes = LCRetriever(connection=dsn, k=10, sources=["notes"]).invoke(query)
    assert len(notes) == 5
    assert {d.metadata["source"] for d in notes} == {"notes"}
    assert notes[0].metadata["key"] == "3"
    assert notes[0].metadata["source_key"] == {"id": 3}
    assert notes[0].metadata["lang"] == "de"
    assert notes[0].id == "notes:3#0"
    docs = LCRetriever(connection=dsn, k=10, sources=["documents"]).invoke(query)
    assert {d.metadata["source"] for d in docs} == {"documents"}
    both = LCRetriever(connection=dsn, k=50).invoke(query)
    assert {d.metadata["source"] for d in both} == {"documents", "notes"}
    with pytest.raises(psycopg.errors.UndefinedObject, match="no source 'nope'"):
        LCRetriever(connection=dsn, sources=["nope"]).invoke(query)


def test_sql_side_embedding_gives_the_client_side_results(
    corpus: psycopg.Connection[Any], dsn: str
) -> None:
    _, _, _, embedded = a_chunk(corpus, "doc-12")
    for hybrid in (False, True):
        client = retrieve(dsn, embedded, k=6, hybrid=hybrid, query_embedding="client")
        server = retrieve(dsn, embedded, k=6, hybrid=hybrid, query_embedding="sql")
        assert [(h.key, h.ordinal, h.metadata) for h in server] == [
            (h.key, h.ordinal, h.metadata) for h in client
        ]
        assert [h.score for h in server] == pytest.approx([h.score for h in client], abs=1e-6)
        if not hybrid:
            assert client[0].key == "doc-12"


def test_a_named_model_serves_the_search(
    corpus: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    register(corpus, "v2", fake.url, model_id="fake-768", dimensions=768)
    drain(dsn)
    _, _, _, embedded = a_chunk(corpus)
    hits = retrieve(dsn, embedded, k=3, model="v2")
    assert {h.model for h in hits} == {"v2"}
    assert hits[0].key == "doc-7" and hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert {h.model for h in retrieve(dsn, embedded, k=3)} == {"v1"}  # the active one
    with pytest.raises(LookupError, match="no model 'v9'"):
        retrieve(dsn, embedded, model="v9")


def test_connection_string_connection_and_pool_give_the_same_results(
    corpus: psycopg.Connection[Any], dsn: str
) -> None:
    _, _, _, embedded = a_chunk(corpus)
    by_dsn = retrieve(dsn, embedded, k=4)
    # The caller's connection, not in autocommit: left idle, no transaction open after.
    with psycopg.connect(dsn) as own:
        assert not own.autocommit
        by_conn = retrieve(own, embedded, k=4)
        assert own.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert retrieve(own, embedded, k=4, hybrid=True)
        assert own.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    # One with dict rows, in a LangChain retriever.
    with psycopg.connect(dsn, row_factory=psycopg.rows.dict_row, autocommit=True) as own:
        docs = LCRetriever(connection=own, k=4).invoke(embedded)
        assert [d.id for d in docs] == [h.chunk_id for h in by_dsn]
    with ConnectionPool(dsn, min_size=1, max_size=1, open=True) as pool:
        by_pool = retrieve(pool, embedded, k=4)
        retriever = LIRetriever(pool, similarity_top_k=4)
        assert [n.node.node_id for n in retriever.retrieve(embedded)] == [
            h.chunk_id for h in by_dsn
        ]
    assert by_conn == by_dsn == by_pool
    with pytest.raises(TypeError, match="connection must be"):
        retrieve(42, embedded)

    class AsyncPoolLike:  # what psycopg_pool.AsyncConnectionPool.connection() gives
        @contextlib.asynccontextmanager
        async def connection(self) -> AsyncIterator[None]:
            yield None

    with pytest.raises(TypeError, match="AsyncPoolLike is asynchronous"):
        retrieve(AsyncPoolLike(), embedded)


def test_empty_query_and_no_active_model_are_refused(
    conn: psycopg.Connection[Any], dsn: str
) -> None:
    with pytest.raises(EmptyQuery):
        retrieve(dsn, "   ")
    with pytest.raises(NoActiveModel):
        LCRetriever(connection=dsn).invoke("anything")
    with pytest.raises(ValueError, match="query_embedding"):
        retrieve(dsn, "x", query_embedding="gpu")  # type: ignore[arg-type]


@pytest.fixture
def reader_dsn(dsn: str) -> Iterator[str]:
    """The conninfo of a new LOGIN user whose only rights are pgingest_reader's."""
    name = f"pgingest_t_reader_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(
            sql.SQL("CREATE ROLE {} LOGIN IN ROLE pgingest_reader").format(sql.Identifier(name))
        )
        try:
            yield psycopg.conninfo.make_conninfo(dsn, user=name)
        finally:
            admin.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def test_a_reader_login_searches_every_way(
    corpus: psycopg.Connection[Any], dsn: str, reader_dsn: str
) -> None:
    # What the adapters read and call is granted to pgingest_reader: the same hits as the
    # superuser gets, for each kind of search and both ways of embedding the query.
    _, _, _, embedded = a_chunk(corpus)
    kinds: list[dict[str, Any]] = [
        {},
        {"per_document": True, "filter": {"lang": "en"}},
        {"sources": ["notes"]},
        {"hybrid": True},
        {"hybrid": True, "per_document": True, "query_embedding": "sql"},
        {"query_embedding": "sql", "model": "v1"},
    ]
    for kw in kinds:
        as_reader = retrieve(reader_dsn, embedded, k=5, **kw)
        assert as_reader == retrieve(dsn, embedded, k=5, **kw), kw
        assert as_reader and all(h.key and h.metadata for h in as_reader), kw

    def left_open() -> list[Any]:
        return corpus.execute(
            "SELECT usename FROM pg_stat_activity WHERE application_name = 'pgingest-integrations'"
            " AND datname = current_database()"
        ).fetchall()

    # each search's connection was closed (a closed connection's backend leaves
    # pg_stat_activity a moment later: on a loaded machine it was still listed)
    wait_for(lambda: left_open() == [], timeout=5)


# -- LlamaIndex --------------------------------------------------------------------------------


def test_llamaindex_nodes_carry_key_score_and_metadata(
    corpus: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    key, ordinal, content, embedded = a_chunk(corpus)
    retriever = LIRetriever(dsn, similarity_top_k=6)
    assert isinstance(retriever, LlamaIndexBaseRetriever)
    nodes = retriever.retrieve(embedded)
    assert len(nodes) == 6 and all(isinstance(n, NodeWithScore) for n in nodes)
    first = nodes[0]
    assert isinstance(first.node, TextNode)
    assert first.node.ref_doc_id == key
    assert first.node.node_id == f"documents:{key}#{ordinal}"
    assert first.node.get_content() == content
    assert first.score == pytest.approx(1.0, abs=1e-5)
    assert first.node.metadata["ordinal"] == ordinal
    assert first.node.metadata["source"] == "documents"
    expected = sql_search(corpus, vec(fake, embedded), 6)
    meta = doc_metadata(corpus)
    assert [(n.node.ref_doc_id, n.node.metadata["ordinal"]) for n in nodes] == [
        (r["doc_key"], r["ordinal"]) for r in expected
    ]
    for n, r in zip(nodes, expected, strict=True):
        assert n.score == pytest.approx(1 - r["distance"], abs=1e-6)
        assert n.node.metadata["key"] == r["doc_key"]
        assert n.node.metadata["document_metadata"] == meta[r["doc_key"]]
        assert n.node.metadata["lang"] == meta[r["doc_key"]]["lang"]
    # What an LLM sees: the text and the document's own metadata, not pgingest's plumbing.
    shown = first.node.get_content(metadata_mode=MetadataMode.LLM)
    assert content in shown and "lang: " in shown and "distance" not in shown
    # aretrieve: the same nodes.
    anodes = asyncio.run(retriever.aretrieve(embedded))
    assert [(n.node.node_id, n.score) for n in anodes] == [(n.node.node_id, n.score) for n in nodes]


def test_llamaindex_filters_hybrid_and_per_document(
    corpus: psycopg.Connection[Any], dsn: str
) -> None:
    _, _, _, embedded = a_chunk(corpus)
    eq = MetadataFilters(filters=[MetadataFilter(key="lang", value="fr")])
    by_filters = LIRetriever(dsn, similarity_top_k=5, filters=eq, per_document=True)
    by_dict = LIRetriever(dsn, similarity_top_k=5, filters={"lang": "fr"}, per_document=True)
    nodes = by_filters.retrieve(embedded)
    assert len(nodes) == 5
    assert {n.node.metadata["lang"] for n in nodes} == {"fr"}
    assert len({n.node.ref_doc_id for n in nodes}) == 5
    assert [n.node.node_id for n in nodes] == [n.node.node_id for n in by_dict.retrieve(embedded)]
    hybrid = LIRetriever(dsn, similarity_top_k=5, hybrid=True, filters={"lang": "en"})
    hnodes = hybrid.retrieve("tenants embeddings keys")
    assert len(hnodes) == 5
    assert {n.node.metadata["lang"] for n in hnodes} == {"en"}
    assert all(n.score is not None and n.score > 0 for n in hnodes)
    gt = MetadataFilters(filters=[MetadataFilter(key="n", value=3, operator=FilterOperator.GT)])
    with pytest.raises(NotImplementedError, match="equality"):
        LIRetriever(dsn, filters=gt)
