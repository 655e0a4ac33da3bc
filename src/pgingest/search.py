"""The one query path: embed query texts through a model's endpoint and validate the vectors.

Used by ``pgingest search``, ``pgingest model compare``, PL/Python's ``embed_query`` and the
evaluation script, so that every parameter of validation (dimensions, metric, storage) is
passed the same way everywhere: a ``halfvec`` model's range check runs for queries too.
Pure apart from the provider's HTTP call; no SQL here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from pgingest import providers, vectors

# Query texts per embedding request (compare and eval embed dozens at a time).
QUERY_BATCH = 64


def embed_queries(
    model: Any, provider: providers.EmbeddingProvider, texts: Sequence[str]
) -> np.ndarray:
    """Vectors of ``texts`` for ``model`` (``db.Model`` or a models row as a dict), one per
    text, validated and normalised as the model's stored vectors are.

    Raises ``providers.ProviderError`` when the endpoint fails and ``vectors.VectorError`` when
    an answer is not a valid vector of the model.
    """
    dims = int(providers.model_field(model, "dimensions"))
    parts = [
        provider.embed(list(texts[i : i + QUERY_BATCH])) for i in range(0, len(texts), QUERY_BATCH)
    ]
    raw = np.concatenate(parts) if parts else np.zeros((0, dims), dtype=np.float32)
    return vectors.validate_and_normalize(
        raw,
        dimensions=dims,
        metric=providers.model_field(model, "metric"),
        count=len(texts),
        storage=providers.model_field(model, "storage"),
    )


def embed_query(model: Any, provider: providers.EmbeddingProvider, text: str) -> np.ndarray:
    """The vector of one query text (see ``embed_queries``)."""
    return embed_queries(model, provider, [text])[0]
