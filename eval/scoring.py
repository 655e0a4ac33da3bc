"""Scores with ir-measures (trec_eval's measures through pytrec_eval): recall@1/5/10, MRR@10,
nDCG@10 (binary relevance) and hit@5 (at least one relevant document in the top 5).

trec_eval skips a query that is missing from the run; here every question counts: a question
with no result scores 0 on every measure (:func:`mean_scores`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import ir_measures
from ir_measures import RR, R, Success, nDCG

from eval.dataset import KINDS, SPLITS, Question

MEASURES = {
    "recall@1": R @ 1,
    "recall@5": R @ 5,
    "recall@10": R @ 10,
    "mrr@10": RR @ 10,
    "ndcg@10": nDCG @ 10,
    "hit@5": Success @ 5,
}
METRICS = tuple(MEASURES)


def mean_scores(
    ranked: Mapping[str, Sequence[str]], questions: Iterable[Question]
) -> dict[str, float]:
    """Mean of each measure over ``questions`` (a missing or empty result scores 0)."""
    qs = list(questions)
    if not qs:
        return dict.fromkeys(METRICS, 0.0)
    qrels = [ir_measures.Qrel(q.id, key, 1) for q in qs for key in q.relevant]
    run = [
        # Strictly decreasing scores keep the order (trec_eval sorts by score).
        ir_measures.ScoredDoc(q.id, key, float(len(ranked.get(q.id, ())) - rank))
        for q in qs
        for rank, key in enumerate(ranked.get(q.id, ()))
    ]
    by_name = {str(m): name for name, m in MEASURES.items()}
    sums = dict.fromkeys(METRICS, 0.0)
    for metric in ir_measures.iter_calc(list(MEASURES.values()), qrels, run):
        sums[by_name[str(metric.measure)]] += float(metric.value)
    return {name: round(total / len(qs), 4) for name, total in sums.items()}


def score_all(
    runs: Mapping[str, Mapping[str, Sequence[str]]], questions: Sequence[Question]
) -> dict[str, Any]:
    """{split: {system: scores}} for both halves, and {"by_kind": {kind: {"n", system...}}}."""
    out: dict[str, Any] = {}
    for split in SPLITS:
        subset = [q for q in questions if q.split == split]
        out[split] = {name: mean_scores(run, subset) for name, run in runs.items()}
    out["by_kind"] = {}
    for kind in KINDS:
        subset = [q for q in questions if q.kind == kind]
        out["by_kind"][kind] = {"n": len(subset)} | {
            name: mean_scores(run, subset) for name, run in runs.items()
        }
    return out


def first_relevant_ranks(
    runs: Mapping[str, Mapping[str, Sequence[str]]], questions: Sequence[Question]
) -> dict[str, dict[str, Any]]:
    """Per question: its split and kind, and each system's rank (1-based) of the first relevant
    document in its top 10, None when none is there."""
    out: dict[str, dict[str, Any]] = {}
    for q in questions:
        row: dict[str, Any] = {"split": q.split, "kind": q.kind}
        for name, run in runs.items():
            ranks = [i for i, key in enumerate(run.get(q.id, ()), 1) if key in q.relevant]
            row[name] = ranks[0] if ranks else None
        out[q.id] = row
    return out
