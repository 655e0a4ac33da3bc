"""``make eval-headings``: does the heading path in the model's input help retrieval (issue 22,
item 5)? CPU only, no database.

The frozen corpus (``eval/headings/corpus/``: this repository's README.md and nine docs/*.md as
of commit 6f984d4) is parsed with ``pgingest.raw.parse`` (Markdown), rendered as the worker
renders it (``pgingest.worker.raw.render``) and chunked with ``chunk_structured`` and the default
``ChunkerConfig`` (title: the document's first heading). The chunk boundaries are the same for
every variant; only what the model sees changes (:data:`eval.headings.sections.VARIANTS`). Each
chunk and each question (``questions.jsonl``) is embedded with the bundled all-MiniLM-L6-v2
(``pgingest.local_model.load_encoder``; unit vectors, cosine = dot product); every chunk is
scored against every question (exact search). Sections are ranked by their best chunk, and the
top 10 scored at section level with ``eval/scoring.py`` (ir-measures): a chunk counts for a
labelled section when its start lies in it. The paired comparison of each variant with
``plain`` is per question (reciprocal rank at 10): wins, losses, ties, the mean difference with
a 95% paired-bootstrap interval, the bootstrap's and the sign test's two-sided p.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from eval import dataset, scoring
from eval.headings import sections as S
from pgingest import chunking, local_model


def _unit(a: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(a, axis=1, keepdims=True)
    return np.asarray(a / np.maximum(n, 1e-12), dtype=np.float32)


def _first_rank(ranked: list[str], keys: set[str]) -> int | None:
    return next((i for i, k in enumerate(ranked, 1) if k in keys), None)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m eval.headings.run", description=__doc__)
    ap.add_argument("--variants", default=",".join(S.VARIANTS), help="comma-separated")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = ap.parse_args(argv)
    variants = [v for v in args.variants.split(",") if v]
    for v in variants:
        if v not in S.VARIANTS:
            ap.error(f"unknown variant {v!r}; known: {', '.join(S.VARIANTS)}")
    if "plain" not in variants:
        variants.insert(0, "plain")

    t0 = time.perf_counter()
    docs = S.load_corpus()
    questions = S.load_questions(docs)
    relevant = S.relevance(questions, docs)
    chunks = [c for d in docs for c in S.chunk_doc(d, chunking.ChunkerConfig())]
    at_heading = sum(c.at_heading for c in chunks)
    corpus_bytes = sum(len(p.read_bytes()) for p in S.CORPUS_DIR.glob("*.md"))
    print(
        f"corpus: {len(docs)} documents, {corpus_bytes:,} bytes, "
        f"{sum(len(S.sections(d)) for d in docs)} sections; {len(chunks)} chunks "
        f"(default profile: {chunking.ChunkerConfig().version}), {at_heading} start at their "
        f"heading; {len(questions)} questions, {sum(len(q.labels) for q in questions)} labelled "
        "sections"
    )

    enc = local_model.load_encoder(threads=args.threads)
    t_model = time.perf_counter()
    qvec = _unit(enc.encode([q.text for q in questions]))
    qs = [
        dataset.Question(
            id=q.id,
            kind="headings",
            text=q.text,
            relevant={s.key: lab.phrase for s, lab in zip(relevant[q.id], q.labels, strict=True)},
            split="all",
        )
        for q in questions
    ]

    results: dict[str, Any] = {}
    rr: dict[str, list[float]] = {}
    cache: dict[str, np.ndarray] = {}
    for v in variants:
        texts = [S.model_input(v, c) for c in chunks]
        tokens = enc.count_tokens(texts)
        t = time.perf_counter()
        new = sorted({x for x in texts if x not in cache})  # an input is encoded once in all
        if new:
            cache.update(zip(new, _unit(enc.encode(new)), strict=True))
        cvec = np.stack([cache[x] for x in texts])
        encode_s = time.perf_counter() - t
        scores = qvec @ cvec.T
        ranked = {
            q.id: S.ranked_sections(scores[i], chunks, relevant[q.id])
            for i, q in enumerate(questions)
        }
        figures = scoring.mean_scores(ranked, qs)
        first = {
            q.id: _first_rank(ranked[q.id], set(qq.relevant))
            for q, qq in zip(questions, qs, strict=True)
        }
        for k in (1, 10):
            figures[f"hit@{k}"] = round(
                sum(r is not None and r <= k for r in first.values()) / len(questions), 4
            )
        rr[v] = [1.0 / r if (r := first[q.id]) else 0.0 for q in questions]
        results[v] = {
            "description": S.VARIANTS[v],
            "scores": figures,
            "tokens_mean": round(float(np.mean(tokens)), 1),
            "inputs_over_model_limit": int(sum(n > enc.max_tokens for n in tokens)),
            "encoded_inputs": len(new),
            "encode_s": round(encode_s, 1),
            "first_relevant_rank": first,
        }

    cols = ("recall@1", "recall@5", "recall@10", "mrr@10", "ndcg@10", "hit@1", "hit@5", "hit@10")
    print(
        f"\nsection level, top {S.K} sections ranked by their best chunk, {len(questions)} questions"
    )
    print(f"  {'variant':24s}" + "".join(f"{c:>10s}" for c in cols) + f"{'tokens':>8s}{'>256':>6s}")
    for v in variants:
        r = results[v]
        print(
            f"  {v:24s}"
            + "".join(f"{r['scores'][c]:10.3f}" for c in cols)
            + f"{r['tokens_mean']:8.1f}{r['inputs_over_model_limit']:6d}"
        )

    print(
        "\npaired against plain, per question (reciprocal rank at 10; bootstrap 10,000 resamples)"
    )
    print(
        f"  {'variant':24s}{'wins':>6s}{'losses':>8s}{'ties':>6s}{'mean diff':>11s}"
        f"{'95% CI':>18s}{'p boot':>8s}{'p sign':>8s}{'hit@5 +/-':>11s}"
    )
    for v in variants:
        if v == "plain":
            continue
        p = S.paired(rr["plain"], rr[v])
        base, other = results["plain"]["first_relevant_rank"], results[v]["first_relevant_rank"]
        gained = sum((other[q] or 99) <= 5 < (base[q] or 99) for q in base)
        lost = sum((base[q] or 99) <= 5 < (other[q] or 99) for q in base)
        p["hit@5_gained"], p["hit@5_lost"] = gained, lost
        results[v]["paired_vs_plain"] = p
        ci = f"[{p['ci95'][0]:+.3f}, {p['ci95'][1]:+.3f}]"
        print(
            f"  {v:24s}{p['wins']:6d}{p['losses']:8d}{p['ties']:6d}{p['mean_diff']:+11.4f}"
            f"{ci:>18s}{p['p_bootstrap']:8.3f}{p['p_sign']:8.3f}{f'+{gained}/-{lost}':>11s}"
        )

    total = time.perf_counter() - t0
    print(f"\n{total:.0f} s in all ({t_model - t0:.0f} s parse, chunk and model load)")
    if args.json is not None:
        out = {
            "corpus": {
                "documents": len(docs),
                "bytes": corpus_bytes,
                "chunks": len(chunks),
                "chunks_at_heading": at_heading,
                "questions": len(questions),
            },
            "variants": results,
            "seconds": round(total, 1),
        }
        args.json.write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
