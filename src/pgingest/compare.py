"""``pgingest model compare``: two models on the same query texts, measured.

Each model embeds the queries through its own endpoint (``providers.for_model`` and
``search.embed_queries``, the one query path); both columns are searched through their ANN
index and exactly, giving top-k document overlap, recall and latency. ``models_cli.py`` parses
the command and prints the report. The in-database variant on stored vectors is the SQL
function ``pgingest.compare_models`` (sql/040_lifecycle.sql).
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported when a comparison runs: `pgingest --help` stays fast
    from pgingest.db import Model
    from pgingest.providers import EmbeddingProvider

__all__ = ["CompareReport", "ModelSide", "compare_models"]


@dataclass
class ModelSide:
    name: str
    state: str
    model_id: str
    column_type: str
    metric: str
    index: str
    recall: float | None
    search_p50_ms: float
    search_p95_ms: float
    exact_p50_ms: float
    exact_p95_ms: float
    embed_ms_per_query: float


@dataclass
class CompareReport:
    queries: int
    source: str
    k: int
    a: ModelSide
    b: ModelSide
    overlap_mean: float
    overlap_median: float
    overlap_min: float
    settings: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def _percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def compare_models(
    conninfo: str | None,
    a: str,
    b: str,
    *,
    queries: Sequence[str] | None = None,
    k: int = 10,
    sample: int = 50,
    seed: float | None = None,
    ef_search: int | None = None,
    probes: int | None = None,
    provider_factory: Callable[[Model], EmbeddingProvider] | None = None,
) -> CompareReport:
    """Runs the same query texts through models ``a`` and ``b`` (embedding each through its own
    endpoint) and measures top-k document overlap, ANN recall against exact search on the same
    column, and search latency.

    ``provider_factory`` builds the client of a model (default ``providers.for_model``; tests
    pass a fake). Raises ``LookupError`` for an unknown or retired model or when there is no
    query, ``ValueError`` for bad arguments, ``providers.ProviderError`` and
    ``vectors.VectorError`` when an endpoint fails."""
    from pgingest import db, providers, search

    if k < 1 or sample < 1:
        raise ValueError("k and sample must be positive")
    factory = provider_factory or providers.for_model
    with db.connect(conninfo, application_name="pgingest-compare") as conn:
        models: list[db.Model] = []
        for name in (a, b):
            m = db.get_model(conn, name)
            if m is None or m.state == "retired":
                raise LookupError(f"no live model named {name!r}")
            models.append(m)
        ma, mb = models
        if queries:
            texts = [q for q in queries if q.strip()]
            source = "file"
        else:
            texts = db.sample_chunk_texts(conn, [ma, mb], sample, seed)
            source = "corpus (first chunk of random documents)"
        if not texts:
            raise LookupError(
                f"no query: no document is embedded by both {a} and {b} yet (or the file is empty)"
            )

        settings: dict[str, str] = {}
        current_ef = db.show(conn, "hnsw.ef_search")
        want_ef = ef_search if ef_search is not None else max(k, int(current_ef or 40))
        settings["hnsw.ef_search"] = db.set_session(conn, "hnsw.ef_search", str(want_ef))
        if probes is not None:
            settings["ivfflat.probes"] = db.set_session(conn, "ivfflat.probes", str(probes))
        else:
            settings["ivfflat.probes"] = db.show(conn, "ivfflat.probes") or "1"

        status = {r["model"]: r for r in db.model_index_status(conn)}
        sides: list[ModelSide] = []
        top_docs: list[list[set[int]]] = []
        for m in models:
            provider = factory(m)
            try:
                t0 = time.perf_counter()
                vecs = search.embed_queries(m, provider, texts)
                embed_s = time.perf_counter() - t0
            finally:
                close = getattr(provider, "close", None)
                if callable(close):
                    close()
            st = status.get(m.name, {})
            indexed = bool(st.get("present") and st.get("valid") and st.get("on_column"))
            db.knn(conn, m, vecs[0], k)  # warm-up, not measured
            ann_ms: list[float] = []
            exact_ms: list[float] = []
            recalls: list[float] = []
            docs: list[set[int]] = []
            for q in vecs:
                t0 = time.perf_counter()
                ann = db.knn(conn, m, q, k)
                t1 = time.perf_counter()
                exact = db.knn(conn, m, q, k, exact=True)
                t2 = time.perf_counter()
                ann_ms.append((t1 - t0) * 1000)
                exact_ms.append((t2 - t1) * 1000)
                recalls.append(len(set(ann) & set(exact)) / max(len(exact), 1))
                docs.append({d for d, _ in ann})
            top_docs.append(docs)
            if m.index_method == "none":
                index_desc = "none (exact search)"
            elif indexed:
                index_desc = f"{m.index_method}, valid, {st.get('size')}"
            elif st.get("present"):
                index_desc = f"{m.index_method}, INVALID"
            else:
                index_desc = f"{m.index_method}, missing (exact search)"
            sides.append(
                ModelSide(
                    name=m.name,
                    state=m.state,
                    model_id=m.model_id,
                    column_type=f"{m.storage}({m.dimensions})",
                    metric=m.metric,
                    index=index_desc,
                    recall=round(statistics.fmean(recalls), 4) if indexed else None,
                    search_p50_ms=round(_percentile(ann_ms, 0.5), 3),
                    search_p95_ms=round(_percentile(ann_ms, 0.95), 3),
                    exact_p50_ms=round(_percentile(exact_ms, 0.5), 3),
                    exact_p95_ms=round(_percentile(exact_ms, 0.95), 3),
                    embed_ms_per_query=round(embed_s * 1000 / len(texts), 3),
                )
            )
    overlaps = [
        len(da & db_) / max(len(da), len(db_), 1)
        for da, db_ in zip(top_docs[0], top_docs[1], strict=True)
    ]
    return CompareReport(
        queries=len(texts),
        source=source,
        k=k,
        a=sides[0],
        b=sides[1],
        overlap_mean=round(statistics.fmean(overlaps), 4),
        overlap_median=round(statistics.median(overlaps), 4),
        overlap_min=round(min(overlaps), 4),
        settings=settings,
    )
