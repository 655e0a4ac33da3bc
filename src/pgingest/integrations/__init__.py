"""Search pgingest from other frameworks: the part they share.

``retrieve()`` runs one search through pgingest's SQL API (``pgingest.search`` or
``pgingest.hybrid_search``) and returns :class:`Hit` rows; the adapters turn them into their
framework's document types:

- ``pgingest.integrations.langchain.PgingestRetriever`` (extra ``pgingest[langchain]``): a
  ``langchain_core.retrievers.BaseRetriever`` returning ``Document`` objects;
- ``pgingest.integrations.llamaindex.PgingestRetriever`` (extra ``pgingest[llamaindex]``): a
  ``llama_index.core.retrievers.BaseRetriever`` returning ``NodeWithScore`` objects.

Nothing is copied into another store: every call reads the model's store in PostgreSQL.

The query's vector comes from the model that serves the search (the one named, else
``pgingest.route_model``: the active model, or a traffic shift's candidate for the routing key),
embedded either here (``query_embedding="client"``, the default: ``pgingest.search`` module's
``embed_query`` through the model's endpoint; works without plpython3u, as on managed services)
or in the database (``"sql"``: ``pgingest.embed_query``, which needs plpython3u and uses the
server's query-vector cache). Both ask the same endpoint and validate the vector the same way.

The connection: a conninfo string (a connection is opened for each search and closed after it),
a ``psycopg.Connection`` (used as it is, autocommit or not: each search runs in its own
``conn.transaction()`` block, and none is open while the query is embedded here) or a
``psycopg_pool.ConnectionPool`` (anything with a ``connection()`` context manager).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import psycopg
from psycopg import sql
from psycopg.rows import dict_row, tuple_row

from pgingest import db, providers
from pgingest import search as query_embedding_path

__all__ = ["Hit", "NoActiveModel", "QueryEmbedding", "connect", "retrieve"]

QueryEmbedding = Literal["client", "sql"]

APPLICATION_NAME = "pgingest-integrations"


class NoActiveModel(LookupError):
    """No model was named and the database has no active model to serve the search."""


@dataclass(frozen=True)
class Hit:
    """One search result: a chunk of a document, or a document's best chunk (per document).

    ``score``: higher is better. Vector search: ``1 - distance`` for a cosine model (the cosine
    similarity), ``-distance`` for an inner-product model (the inner product) and for an L2
    model. Hybrid search: the weighted reciprocal rank fusion score of ``pgingest.hybrid_search``.
    ``distance`` (vector search only) is ``pgingest.search``'s, in the model's metric;
    ``vector_rank`` and ``text_rank`` (hybrid only) are the chunk's ranks on each side (None: not
    among that side's candidates).
    """

    key: str
    """The document's key: ``documents.key``, or an attached table's key (``source_key``'s
    single value as text, the JSON of the key columns for a composite key)."""
    doc_id: int
    ordinal: int
    content: str
    title: str | None
    score: float
    source: str
    source_key: dict[str, Any]
    model: str
    metadata: dict[str, Any] = field(default_factory=dict)
    distance: float | None = None
    vector_rank: int | None = None
    text_rank: int | None = None

    @property
    def chunk_id(self) -> str:
        """A stable id of the chunk, unique across sources: ``<source>:<key>#<ordinal>``."""
        return f"{self.source}:{self.key}#{self.ordinal}"

    def fields(self) -> dict[str, Any]:
        """pgingest's own fields, for a framework's metadata (the document's metadata apart)."""
        out: dict[str, Any] = {
            "key": self.key,
            "doc_id": self.doc_id,
            "ordinal": self.ordinal,
            "title": self.title,
            "score": self.score,
            "source": self.source,
            "source_key": self.source_key,
            "model": self.model,
        }
        if self.distance is not None:
            out["distance"] = self.distance
        else:
            out["vector_rank"] = self.vector_rank
            out["text_rank"] = self.text_rank
        return out


ConnectionLike = str | psycopg.Connection[Any] | Any
"""A conninfo string, a ``psycopg.Connection`` or a pool (an object with ``connection()``)."""


@contextmanager
def connect(target: ConnectionLike) -> Iterator[psycopg.Connection[Any]]:
    """A connection for one search: opened and closed here for a conninfo string, borrowed from
    a pool, or the caller's own connection as it is."""
    if isinstance(target, str):
        conn = db.connect(target, register_vector=False, application_name=APPLICATION_NAME)
        try:
            yield conn
        finally:
            conn.close()
    elif isinstance(target, psycopg.Connection):
        yield target
    elif callable(getattr(target, "connection", None)):
        borrowed = target.connection()
        if not hasattr(borrowed, "__enter__"):  # psycopg_pool.AsyncConnectionPool
            raise TypeError(
                f"connection: {type(target).__name__} is asynchronous; pass a sync pool,"
                " a psycopg.Connection or a conninfo (the async methods run the search in a thread)"
            )
        with borrowed as conn:
            yield conn
    else:
        raise TypeError(
            "connection must be a conninfo string, a psycopg.Connection or a pool with"
            f" connection(), not {type(target).__name__}"
        )


def _score(metric: str, distance: float) -> float:
    return 1.0 - distance if metric == "cosine" else -distance


def _vector_literal(vec: Any) -> str:
    # Text form of the float32 vector, exact (repr of each value as a double): no adapter needed
    # on the caller's connection.
    return "[" + ",".join(repr(float(x)) for x in vec) + "]"


_VECTOR_SEARCH = sql.SQL(
    "SELECT r.doc_id, r.doc_key, r.title, r.ordinal, r.content, r.distance, r.metadata,"
    " r.model_name, r.source, r.source_key, m.metric"
    " FROM pgingest.search({vector}, %(k)s, %(filter)s::jsonb, %(per_document)s, %(model)s,"
    " %(sources)s::text[], %(query)s) WITH ORDINALITY AS r"
    " LEFT JOIN pgingest.models AS m ON m.name = r.model_name"
    " ORDER BY r.ordinality"
)

_HYBRID_SEARCH = sql.SQL(
    "SELECT r.doc_id, r.doc_key, r.title, r.ordinal, r.content, r.score, r.vector_rank,"
    " r.text_rank, r.source, r.source_key, r.model_name, r.metadata"
    " FROM pgingest.hybrid_search(%(query)s, {vector}, %(k)s, %(filter)s::jsonb,"
    " %(vector_weight)s, %(text_weight)s, sources => %(sources)s::text[], model => %(model)s,"
    " per_document => %(per_document)s) WITH ORDINALITY AS r"
    " ORDER BY r.ordinality"
)

_CLIENT_VECTOR = sql.SQL("%(vector)s::vector")
_SQL_VECTOR = sql.SQL("pgingest.embed_query(%(query)s, %(model)s)")


def retrieve(
    connection: ConnectionLike,
    query: str,
    *,
    k: int = 10,
    model: str | None = None,
    filter: Mapping[str, Any] | None = None,
    sources: Sequence[str] | None = None,
    hybrid: bool = False,
    per_document: bool = False,
    query_embedding: QueryEmbedding = "client",
    embedding_url: str | None = None,
    routing_key: str | None = None,
    vector_weight: float | None = None,
    text_weight: float | None = None,
    timeout: float = 30.0,
) -> list[Hit]:
    """Searches ``query`` through pgingest's SQL API and returns up to ``k`` hits, best first.

    ``model``: the model to search (default: the one ``pgingest.route_model`` picks for
    ``routing_key``, else (None, not '') for the query text, as ``search_text`` does: the active
    model unless a traffic shift routes it to its candidate). ``filter``: pgingest's metadata filter (promoted keys use their typed
    columns, others jsonb containment). ``sources``: only these sources (None: all; an unknown
    name raises ``psycopg.errors.UndefinedObject``). ``hybrid``: full-text and vector search fused
    (``pgingest.hybrid_search``; full-text search must be on: ``set_text_search_config``);
    ``vector_weight`` / ``text_weight``: its fusion's weights (None: its defaults,
    ``pgingest.hybrid_search_defaults()``).
    ``per_document``: one hit per document, its best chunk. ``query_embedding``: ``"client"``
    embeds here through the model's endpoint (``embedding_url`` overrides it, without the
    model's API key unless it is the same endpoint), ``"sql"`` in the database (plpython3u).

    Raises :class:`NoActiveModel`, ``pgingest.search.EmptyQuery`` (an empty query),
    ``providers.ProviderError`` (the endpoint failed, client side) and psycopg's errors.
    """
    if query_embedding not in ("client", "sql"):
        raise ValueError(f"query_embedding must be 'client' or 'sql', not {query_embedding!r}")
    if not isinstance(query, str) or not query.strip():
        raise query_embedding_path.EmptyQuery("the query text is empty: there is nothing to embed")
    params: dict[str, Any] = {
        "query": query,
        "k": k,
        "filter": json.dumps(dict(filter or {})),
        "sources": None if sources is None else list(sources),
        "per_document": per_document,
        "vector_weight": vector_weight,
        "text_weight": text_weight,
    }
    with connect(connection) as conn:
        with conn.transaction():
            name = model or _route(conn, _routing_key(routing_key, query))
            spec = db.get_model(conn, name) if query_embedding == "client" else None
        params["model"] = name
        if query_embedding == "client":
            if spec is None:
                raise LookupError(f"pgingest: no model {name!r}")
            provider = providers.for_model(
                spec, base_url=embedding_url, timeout=timeout, max_retries=1
            )
            try:
                vec = query_embedding_path.embed_query(spec, provider, query)
            finally:
                provider.close()
            params["vector"] = _vector_literal(vec)
            vector = _CLIENT_VECTOR
        else:
            vector = _SQL_VECTOR
        cur = conn.cursor(row_factory=dict_row)
        with conn.transaction():
            if hybrid:
                rows = cur.execute(_HYBRID_SEARCH.format(vector=vector), params).fetchall()
            else:
                rows = cur.execute(_VECTOR_SEARCH.format(vector=vector), params).fetchall()
    if not hybrid:
        return [
            Hit(
                key=r["doc_key"],
                doc_id=r["doc_id"],
                ordinal=r["ordinal"],
                content=r["content"],
                title=r["title"],
                score=_score(r["metric"], r["distance"]),
                source=r["source"],
                source_key=r["source_key"],
                model=r["model_name"],
                metadata=r["metadata"] or {},
                distance=r["distance"],
            )
            for r in rows
        ]
    return [
        Hit(
            key=r["doc_key"],
            doc_id=r["doc_id"],
            ordinal=r["ordinal"],
            content=r["content"],
            title=r["title"],
            score=r["score"],
            source=r["source"],
            source_key=r["source_key"],
            model=r["model_name"],
            metadata=r["metadata"] or {},
            vector_rank=r["vector_rank"],
            text_rank=r["text_rank"],
        )
        for r in rows
    ]


def _routing_key(routing_key: str | None, query: str) -> str:
    """The key a search routes by: ``routing_key``, else (None) the query text, as
    ``search_text`` and ``hybrid_search_text`` do (``coalesce(routing_key, query)``). An empty or
    blank key is a key like any other (its bucket is that of ''), not "no key": until review
    2026-12-07 ``retrieve`` took ``routing_key or query`` and routed ``''`` by the query text, so
    the same caller could land on the candidate through one API and on the active model through
    the other."""
    return query if routing_key is None else routing_key


def _route(conn: psycopg.Connection[Any], routing_key: str) -> str:
    cur = conn.cursor(row_factory=tuple_row)  # whatever the caller's connection's factory
    row = cur.execute("SELECT pgingest.route_model(%s)", (routing_key,)).fetchone()
    if row is None or row[0] is None:
        raise NoActiveModel(
            "pgingest: no active model to search (name one, or register one with"
            " pgingest.register_model)"
        )
    return str(row[0])
