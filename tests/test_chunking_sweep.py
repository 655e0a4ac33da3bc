"""The chunker's invariants over a large seeded random corpus: 400 cases a tokenizer (spans,
budgets, coverage, overlap, batch equals one by one). Pure, but ~15 s: it lives outside
tests/unit/, which stays fast; ``make test`` runs both."""

from __future__ import annotations

import random

import pytest

from pgingest.chunking import ChunkerConfig, chunk_document, chunk_documents
from tests.unit.test_chunking import HEURISTIC, MINILM, assert_valid, random_text, random_title


@pytest.mark.slow
@pytest.mark.parametrize("tokenizer", [MINILM, HEURISTIC])
def test_randomized_invariants(tokenizer: str) -> None:
    """Spans, budgets, coverage and overlap over a large randomized corpus (seeded)."""
    rng = random.Random(20240601 if tokenizer == MINILM else 7)
    n_chunks = 0
    for case in range(400):
        max_tokens = rng.choice([8, 9, 12, 16, 20, 24, 32, 48, 64, 100, 128, 200, 256, 512])
        overlap = rng.choice([0, 0, 1, rng.randrange(max_tokens), min(20, max_tokens - 1)])
        cfg = ChunkerConfig(
            tokenizer=tokenizer,
            max_tokens=max_tokens,
            overlap_tokens=overlap,
            include_title=rng.random() < 0.8,
        )
        docs = [
            (random_title(rng), random_text(rng, rng.choice([50, 600, 3000, 8000])))
            for _ in range(3)
        ]
        batch = chunk_documents(docs, cfg)
        for (title, body), chunks in zip(docs, batch, strict=True):
            try:
                assert_valid(title, body, cfg, chunks)
            except AssertionError:
                print(f"case {case}: {cfg!r} title={title!r:.200} body={body!r:.500}")
                raise
            assert chunks == chunk_document(title, body, cfg)
            n_chunks += len(chunks)
    assert n_chunks > 3000, "the corpus exercised the chunker"
