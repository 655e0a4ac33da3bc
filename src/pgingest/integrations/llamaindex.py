"""A LlamaIndex retriever over pgingest (``pip install 'pgingest[llamaindex]'``).

::

    from pgingest.integrations.llamaindex import PgingestRetriever

    retriever = PgingestRetriever(os.environ["DATABASE_URL"], similarity_top_k=5)
    for n in retriever.retrieve("how do I rotate an API key?"):
        n.node.ref_doc_id, n.score, n.node.get_content()

Each ``NodeWithScore`` holds a ``TextNode`` of a chunk (or of a document's best chunk with
``per_document=True``) and the hit's score (higher is better). The node's ``ref_doc_id`` (its
SOURCE relationship) is the document's key; its ``id_`` is the chunk's id,
``<source>:<key>#<ordinal>``, since LlamaIndex drops nodes with the same id from one result.
``metadata`` holds the document's own metadata, then pgingest's fields over it (``key``,
``ordinal``, ``source``, ``source_key``, ``title``, ``model``, ``doc_id``, ``score``, and
``distance`` or ``vector_rank`` / ``text_rank``), and the document's metadata whole under
``document_metadata``. pgingest's technical fields are left out of what the node shows an LLM
or an embedding model (``excluded_llm_metadata_keys``, ``excluded_embed_metadata_keys``).

``filters`` takes pgingest's filter (a dict) or LlamaIndex ``MetadataFilters`` made of
equality filters joined by AND (``FilterOperator.EQ``); other operators raise
``NotImplementedError``. ``aretrieve`` runs the search in a thread.
See :func:`pgingest.integrations.retrieve` for the search itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.callbacks import CallbackManager
from llama_index.core.constants import DEFAULT_SIMILARITY_TOP_K
from llama_index.core.schema import (
    NodeRelationship,
    NodeWithScore,
    QueryBundle,
    RelatedNodeInfo,
    TextNode,
)
from llama_index.core.vector_stores.types import (
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
)

from pgingest.integrations import ConnectionLike, Hit, QueryEmbedding, retrieve

__all__ = ["PgingestRetriever", "to_filter", "to_node"]

_HIDDEN_FROM_MODELS = [
    "doc_id",
    "ordinal",
    "score",
    "source_key",
    "model",
    "distance",
    "vector_rank",
    "text_rank",
    "document_metadata",
]


def to_node(hit: Hit) -> NodeWithScore:
    """A LlamaIndex ``NodeWithScore`` of a search hit (see the module's docstring)."""
    node = TextNode(
        id_=hit.chunk_id,
        text=hit.content,
        metadata={**hit.metadata, **hit.fields(), "document_metadata": dict(hit.metadata)},
        relationships={
            NodeRelationship.SOURCE: RelatedNodeInfo(
                node_id=hit.key, metadata={"source": hit.source, "source_key": hit.source_key}
            )
        },
        excluded_llm_metadata_keys=list(_HIDDEN_FROM_MODELS),
        excluded_embed_metadata_keys=list(_HIDDEN_FROM_MODELS),
    )
    return NodeWithScore(node=node, score=hit.score)


def to_filter(filters: MetadataFilters | Mapping[str, Any] | None) -> dict[str, Any]:
    """pgingest's filter (a dict of key: value, all to match) from LlamaIndex filters."""
    if filters is None:
        return {}
    if not isinstance(filters, MetadataFilters):
        return dict(filters)
    if filters.condition not in (None, FilterCondition.AND) and len(filters.filters) > 1:
        raise NotImplementedError(
            f"pgingest filters join conditions with AND, not {filters.condition}"
        )
    out: dict[str, Any] = {}
    for f in filters.filters:
        if isinstance(f, MetadataFilters):
            nested = to_filter(f)
            clash = out.keys() & nested.keys()
            if clash:
                raise ValueError(f"filter key(s) given twice: {sorted(clash)}")
            out.update(nested)
            continue
        if not isinstance(f, MetadataFilter) or f.operator != FilterOperator.EQ:
            raise NotImplementedError(
                f"pgingest filters test equality (FilterOperator.EQ), not {f.operator}"
            )
        if f.key in out:
            raise ValueError(f"filter key given twice: {f.key!r}")
        out[f.key] = f.value
    return out


class PgingestRetriever(BaseRetriever):
    """Retrieves chunks through pgingest's SQL API (``pgingest.search``/``hybrid_search``).

    ``connection``: a conninfo string, a ``psycopg.Connection`` or a ``psycopg_pool`` pool.
    ``similarity_top_k`` is :func:`pgingest.integrations.retrieve`'s ``k``; the other keyword
    arguments are its parameters (``filters``: see the module's docstring).
    """

    def __init__(
        self,
        connection: ConnectionLike,
        *,
        similarity_top_k: int = DEFAULT_SIMILARITY_TOP_K,
        model: str | None = None,
        filters: MetadataFilters | Mapping[str, Any] | None = None,
        sources: Sequence[str] | None = None,
        hybrid: bool = False,
        per_document: bool = False,
        query_embedding: QueryEmbedding = "client",
        embedding_url: str | None = None,
        routing_key: str | None = None,
        vector_weight: float | None = None,
        text_weight: float | None = None,
        timeout: float = 30.0,
        callback_manager: CallbackManager | None = None,
        verbose: bool = False,
    ) -> None:
        super().__init__(callback_manager=callback_manager, verbose=verbose)
        self.connection = connection
        self.similarity_top_k = similarity_top_k
        self.model = model
        self.filter = to_filter(filters)
        self.sources = None if sources is None else list(sources)
        self.hybrid = hybrid
        self.per_document = per_document
        self.query_embedding: QueryEmbedding = query_embedding
        self.embedding_url = embedding_url
        self.routing_key = routing_key
        self.vector_weight = vector_weight
        self.text_weight = text_weight
        self.timeout = timeout

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        hits = retrieve(
            self.connection,
            query_bundle.query_str,
            k=self.similarity_top_k,
            model=self.model,
            filter=self.filter,
            sources=self.sources,
            hybrid=self.hybrid,
            per_document=self.per_document,
            query_embedding=self.query_embedding,
            embedding_url=self.embedding_url,
            routing_key=self.routing_key,
            vector_weight=self.vector_weight,
            text_weight=self.text_weight,
            timeout=self.timeout,
        )
        return [to_node(h) for h in hits]

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return await asyncio.to_thread(self._retrieve, query_bundle)
