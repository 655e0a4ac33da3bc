"""The hybrid fusion grid on the tuning half (issue 21, point 2): how ``hybrid_search``'s
defaults were chosen, reproducibly.

For each question and each text ranking (``bm25``, ``ts_rank_cd``), one call of
``pgingest.hybrid_search`` with enough rows to return every candidate of both sides (its
``vector_rank`` and ``text_rank``: the ranks of each chunk among each side's ``candidates``); the
weighted reciprocal rank fusion is then recomputed here for every point of the grid, per document
exactly as the SQL does (a document at its best rank on each side). The point with the highest
recall@5 + MRR@10 on the tuning half wins; the held-out half is reported, never used.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from eval import dataset, scoring

RANKINGS = ("bm25", "ts_rank_cd")
RRF_KS = (1, 5, 10, 20, 60)
TEXT_WEIGHTS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0)
CANDIDATES = 100
K = 10

# (doc_key, ordinal, vector_rank, text_rank) of every candidate chunk
Candidates = list[tuple[str, int, int | None, int | None]]


@dataclass(frozen=True)
class Point:
    text_ranking: str
    rrf_k: int
    text_weight: float
    vector_weight: float = 1.0

    def settings(self) -> dict[str, Any]:
        return {
            "text_ranking": self.text_ranking,
            "vector_weight": self.vector_weight,
            "text_weight": self.text_weight,
            "rrf_k": self.rrf_k,
            "candidates": CANDIDATES,
        }


def candidates(
    conn: psycopg.Connection[Any], question: str, vector: Any, ranking: str
) -> Candidates:
    """Every candidate chunk of both sides with its ranks (2 * candidates rows at most)."""
    rows = conn.execute(
        "SELECT doc_key, ordinal, vector_rank, text_rank FROM pgingest.hybrid_search("
        "%s, %s, %s, candidates => %s, text_ranking => %s)",
        (question, vector, 2 * CANDIDATES, CANDIDATES, ranking),
    ).fetchall()
    return [(str(r[0]), int(r[1]), r[2], r[3]) for r in rows]


def fuse(rows: Candidates, point: Point, k: int = K) -> list[str]:
    """The first ``k`` documents, per document: vector_weight / (rrf_k + best vector rank) +
    text_weight / (rrf_k + best text rank); ties by document key."""
    best: dict[str, list[int | None]] = {}
    for key, _ordinal, vr, tr in rows:
        b = best.setdefault(key, [None, None])
        if vr is not None and (b[0] is None or vr < b[0]):
            b[0] = vr
        if tr is not None and (b[1] is None or tr < b[1]):
            b[1] = tr
    scores = {
        key: (point.vector_weight / (point.rrf_k + vr) if vr is not None else 0.0)
        + (point.text_weight / (point.rrf_k + tr) if tr is not None else 0.0)
        for key, (vr, tr) in best.items()
    }
    return [key for key, _ in sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))][:k]


def grid() -> Iterable[Point]:
    for ranking in RANKINGS:
        for rrf_k in RRF_KS:
            for wt in TEXT_WEIGHTS:
                yield Point(ranking, rrf_k, wt)


def run_grid(
    conn: psycopg.Connection[Any],
    questions: Sequence[dataset.Question],
    vectors: Mapping[str, Any],
) -> dict[str, Any]:
    """The grid's figures on both halves and the point chosen on the tuning half."""
    cands = {
        ranking: {q.id: candidates(conn, q.text, vectors[q.id], ranking) for q in questions}
        for ranking in RANKINGS
    }
    tuning = [q for q in questions if q.split == "tuning"]
    heldout = [q for q in questions if q.split == "heldout"]
    rows: list[dict[str, Any]] = []
    for point in grid():
        run = {q.id: fuse(cands[point.text_ranking][q.id], point) for q in questions}
        rows.append(
            {
                **point.settings(),
                "tuning": scoring.mean_scores(run, tuning),
                "heldout": scoring.mean_scores(run, heldout),
            }
        )

    def objective(row: dict[str, Any]) -> tuple[float, float]:
        t = row["tuning"]
        return (t["recall@5"] + t["mrr@10"], t["ndcg@10"])

    chosen = max(rows, key=objective)
    return {
        "criterion": "highest recall@5 + MRR@10 on the tuning half, per document (then nDCG@10)",
        "chosen": {k: chosen[k] for k in Point("", 0, 0.0).settings()},
        "chosen_figures": {"tuning": chosen["tuning"], "heldout": chosen["heldout"]},
        "grid": rows,
    }
