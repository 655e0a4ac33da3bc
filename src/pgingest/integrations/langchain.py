"""A LangChain retriever over pgingest (``pip install 'pgingest[langchain]'``).

::

    from pgingest.integrations.langchain import PgingestRetriever

    retriever = PgingestRetriever(connection=os.environ["DATABASE_URL"], k=5)
    docs = retriever.invoke("how do I rotate an API key?")
    docs[0].metadata["key"], docs[0].metadata["score"]

Each ``Document`` is a chunk (or a document's best chunk with ``per_document=True``):
``page_content`` is the chunk's text, ``id`` the chunk's id (``<source>:<key>#<ordinal>``) and
``metadata`` holds the document's own metadata, then pgingest's fields over it: ``key``,
``score`` (higher is better), ``ordinal`` (the chunk's), ``source``, ``source_key``, ``title``,
``model`` (the model that served), ``doc_id``, and ``distance`` (vector search) or
``vector_rank`` / ``text_rank`` (hybrid). The document's metadata is also kept whole under
``document_metadata``, so a key of its own named like one of pgingest's fields is not lost.

Async (``ainvoke``) runs the search in a thread (LangChain's default for a sync retriever).
See :func:`pgingest.integrations.retrieve` for the search itself.
"""

from __future__ import annotations

from typing import Any

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever

from pgingest.integrations import Hit, QueryEmbedding, retrieve

__all__ = ["PgingestRetriever", "to_document"]


def to_document(hit: Hit) -> Document:
    """A LangChain ``Document`` of a search hit (see the module's docstring)."""
    return Document(
        id=hit.chunk_id,
        page_content=hit.content,
        metadata={**hit.metadata, **hit.fields(), "document_metadata": dict(hit.metadata)},
    )


class PgingestRetriever(BaseRetriever):
    """Retrieves chunks through pgingest's SQL API (``pgingest.search``/``hybrid_search``).

    ``connection``: a conninfo string, a ``psycopg.Connection`` or a ``psycopg_pool``
    pool. The other fields are :func:`pgingest.integrations.retrieve`'s parameters.
    """

    connection: Any
    k: int = 4
    model: str | None = None
    filter: dict[str, Any] | None = None
    sources: list[str] | None = None
    hybrid: bool = False
    per_document: bool = False
    query_embedding: QueryEmbedding = "client"
    embedding_url: str | None = None
    routing_key: str | None = None
    vector_weight: float | None = None
    text_weight: float | None = None
    timeout: float = 30.0

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun
    ) -> list[Document]:
        hits = retrieve(
            self.connection,
            query,
            k=self.k,
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
        return [to_document(h) for h in hits]
