"""``make bench``'s ``chunker`` case (``python -m bench.run --only chunker``): the chunker's CPU
per chunk with each tokenizer, on the e2e benchmark's documents, in batches of 512 as the worker
chunks them. The heuristic tokenizer is the reference (the e2e case uses it, as pgai's 800
characters); WordPiece (``all-MiniLM-L6-v2``) is every chunk profile's default, so the worker's
CPU per chunk under the default profile is the e2e figure plus the difference printed here.
No database, no network.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from bench.common import log, ratio, synthetic_docs
from pgingest import chunking

BATCH = 512
PROFILES = {
    # as the e2e case: ~800-character chunks, no overlap (bench/run.py CHUNK_PROFILE)
    "heuristic": chunking.ChunkerConfig(tokenizer="heuristic", max_tokens=267, overlap_tokens=0),
    "wordpiece": chunking.ChunkerConfig(),  # the default profile
}


def _us_per_chunk(texts: list[tuple[str | None, str]], cfg: chunking.ChunkerConfig) -> float:
    """Median over 3 passes of the thread's CPU per chunk (the first, warm-up pass not
    counted: it loads the tokenizer and fills its word table)."""
    chunking.chunk_documents(texts[:BATCH], cfg)
    figures = []
    for _ in range(3):
        t0, n = time.thread_time(), 0
        for i in range(0, len(texts), BATCH):
            n += sum(map(len, chunking.chunk_documents(texts[i : i + BATCH], cfg)))
        figures.append((time.thread_time() - t0) / n * 1e6)
    return statistics.median(figures)


def bench_chunker(n_docs: int = 5000) -> dict[str, Any]:
    texts: list[tuple[str | None, str]] = [(t, b) for _, t, b in synthetic_docs(n_docs)]
    out: dict[str, Any] = {"documents": n_docs}
    for name, cfg in PROFILES.items():
        out[f"chunk_cpu_us_per_chunk_{name}"] = round(_us_per_chunk(texts, cfg), 1)
    out["wordpiece_vs_heuristic_cpu"] = ratio(
        out["chunk_cpu_us_per_chunk_wordpiece"], out["chunk_cpu_us_per_chunk_heuristic"]
    )
    log(
        f"chunker: {n_docs} documents, CPU per chunk: heuristic"
        f" {out['chunk_cpu_us_per_chunk_heuristic']} us, WordPiece (the default profile)"
        f" {out['chunk_cpu_us_per_chunk_wordpiece']} us:"
        f" wordpiece_vs_heuristic_cpu = {out['wordpiece_vs_heuristic_cpu']}"
    )
    return out
