"""The one query path: embed query texts through a model's endpoint and validate the vectors.

Used by ``pgingest search``, ``pgingest model compare``, PL/Python's ``embed_query`` and
``scripts/eval_search.py``, so that every parameter of validation (dimensions, metric, storage)
is passed the same way everywhere: a ``halfvec`` model's range check runs for queries too.
Build the provider with ``providers.for_model``. Pure apart from the provider's HTTP call; no
SQL here.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from pgingest import providers, vectors

if TYPE_CHECKING:
    from pgingest.providers import ModelLike

__all__ = ["QUERY_BATCH", "EmptyQuery", "embed_queries", "embed_query", "route_bucket"]

QUERY_BATCH = 64
"""Query texts per embedding request (``model compare`` embeds dozens at a time)."""


class EmptyQuery(ValueError):
    """A query text that is empty or only whitespace: there is nothing to embed (OpenAI and
    most servers refuse an empty input; others answer a meaningless vector)."""


def embed_queries(
    model: ModelLike, provider: providers.EmbeddingProvider, texts: Sequence[str]
) -> vectors.Float32Array:
    """Vectors of ``texts`` for ``model`` (``db.Model`` or a models row as a dict): one row per
    text, float32 ``(len(texts), dimensions)``, validated and normalised as the model's stored
    vectors are (``storage`` included). Requests carry at most ``QUERY_BATCH`` texts; each
    answer is checked against the texts it was sent for.

    Raises :class:`EmptyQuery` (before any request) when a text is empty or only whitespace,
    ``providers.ProviderError`` when the endpoint fails and ``vectors.VectorError`` when an
    answer is not a valid vector of the model (indices in its message count within the
    request).
    """
    if isinstance(texts, str):
        raise TypeError("texts must be a sequence of strings, not one string (see embed_query)")
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            what = "empty" if isinstance(text, str) else f"a {type(text).__name__}, not a string"
            raise EmptyQuery(f"query text {i} is {what}: there is nothing to embed")
    dims = int(providers.model_field(model, "dimensions"))
    metric = str(providers.model_field(model, "metric"))
    storage = str(providers.model_field(model, "storage"))
    parts = []
    for start in range(0, len(texts), QUERY_BATCH):
        batch = list(texts[start : start + QUERY_BATCH])
        parts.append(
            vectors.validate_and_normalize(
                provider.embed(batch),
                dimensions=dims,
                metric=metric,
                count=len(batch),
                storage=storage,
            )
        )
    if not parts:
        return np.zeros((0, dims), dtype=np.float32)
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def embed_query(
    model: ModelLike, provider: providers.EmbeddingProvider, text: str
) -> vectors.Float32Array:
    """The vector of one query text, 1-D float32 (see ``embed_queries``)."""
    return embed_queries(model, provider, [text])[0]


_ASCII_SPACE = " \t\r\n\f\v"
_ASCII_SPACE_RUNS = re.compile(r"[ \t\r\n\f\v]+")


def route_bucket(key: str) -> float:
    """Where a routing key falls in [0, 1), as ``pgingest._route_bucket`` computes it: the first
    32 bits of the md5 of the key with its ends trimmed and runs of ASCII whitespace (space, tab,
    CR, LF, FF, VT; not ``\\s``, which takes Unicode spaces in Python and depends on LC_CTYPE in
    PostgreSQL) collapsed to one space. A traffic shift (``pgingest.shift_traffic``) of share
    ``s`` routes the keys below ``s`` to its candidate; the same key always lands on the same
    model."""
    normalised = _ASCII_SPACE_RUNS.sub(" ", key.strip(_ASCII_SPACE))
    return (
        int(hashlib.md5(normalised.encode(), usedforsecurity=False).hexdigest()[:8], 16)
        / 4294967296.0
    )
