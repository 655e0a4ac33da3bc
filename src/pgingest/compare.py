"""``pgingest model compare``: two models on the same query texts, measured.

Each model embeds the queries through its own endpoint (``providers.for_model`` and
``search.embed_queries``, the one query path); both columns are searched through their ANN
index and exactly, giving top-k document overlap, recall and latency. ``models_cli.py`` parses
the command and prints the report. The in-database variant on stored vectors is the SQL
function ``pgingest.compare_models`` (sql/040_lifecycle.sql).

``from_log`` takes the queries users actually asked from ``pgingest.query_log`` (the most asked
first; text logging must be on), and the report then says how much of A's documents B finds and
on which queries the two disagree most: what to read before shifting more traffic to B. The SQL
side of the same is ``pgingest.compare_models_on_log`` / ``pgingest.replay_query_log``.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported when a comparison runs: `pgingest --help` stays fast
    from pgingest.db import Model
    from pgingest.providers import EmbeddingProvider

__all__ = ["CompareReport", "Disagreement", "ModelSide", "compare_models", "logged_queries"]


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
class Disagreement:
    """One query on which the two models' top-k documents overlap least."""

    query: str
    overlap: float
    a_doc_ids: list[int]
    b_doc_ids: list[int]


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
    b_recall_of_a: float | None = None
    """mean share of A's top-k documents that B finds too (A: usually the active model)."""
    disagreements: list[Disagreement] = field(default_factory=list)
    """the queries with the lowest overlap, lowest first (at most ``DISAGREEMENTS``)."""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


DISAGREEMENTS = 5
"""Queries listed in a report's ``disagreements``."""

_LOGGED_QUERIES = (
    "SELECT l.query_text FROM pgingest.query_log AS l WHERE l.query_text IS NOT NULL"
    " GROUP BY l.query_text ORDER BY count(*) DESC, max(l.id) DESC LIMIT %s"
)


def logged_queries(conn: Any, sample: int) -> list[str]:
    """The ``sample`` query texts most asked in ``pgingest.query_log`` (the most recent first
    among equals). ``LookupError`` when the log holds no text (text logging off, or nothing
    logged yet); reading the log needs ``pgingest_admin``."""
    texts = [str(r[0]) for r in conn.execute(_LOGGED_QUERIES, (sample,)).fetchall()]
    if not texts:
        raise LookupError(
            "the query log holds no query text: turn the log on with text logging "
            "(SELECT pgingest.set_query_log(0.05, log_text => true);) and let searches run"
        )
    return [t for t in texts if t.strip()]


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
    from_log: bool = False,
) -> CompareReport:
    """Runs the same query texts through models ``a`` and ``b`` (embedding each through its own
    endpoint) and measures top-k document overlap, ANN recall against exact search on the same
    column, and search latency. ``from_log``: the ``sample`` most asked queries of the query log
    (``logged_queries``) instead of the corpus.

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
        if from_log:
            texts = logged_queries(conn, sample)
            source = f"the query log (the {len(texts)} most asked)"
        elif queries:
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
        ranked_docs: list[list[list[int]]] = []
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
            ranked: list[list[int]] = []
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
                ranked.append(list(dict.fromkeys(d for d, _ in ann)))
            top_docs.append(docs)
            ranked_docs.append(ranked)
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
    recalls_of_a = [
        len(da & db_) / max(len(da), 1) for da, db_ in zip(top_docs[0], top_docs[1], strict=True)
    ]
    worst = sorted(range(len(texts)), key=lambda i: (overlaps[i], i))[:DISAGREEMENTS]
    disagreements = [
        Disagreement(
            query=texts[i],
            overlap=round(overlaps[i], 4),
            a_doc_ids=ranked_docs[0][i],
            b_doc_ids=ranked_docs[1][i],
        )
        for i in worst
        if overlaps[i] < 1.0
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
        b_recall_of_a=round(statistics.fmean(recalls_of_a), 4),
        disagreements=disagreements,
    )
