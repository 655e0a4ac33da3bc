"""Batches of documents (pure: no database).

Both tokenizers measure the bodies of a batch at once, joined by a space; each document must
still chunk exactly as it does alone, whatever its neighbours in the batch.
"""

from __future__ import annotations

import random
from itertools import product

import pytest

from pgingest.chunking import ChunkerConfig, chunk_document, chunk_documents

HEURISTIC = "heuristic"

# What a document may start or end with, chosen for what the chunker looks at around a gap:
# whitespace and line breaks ("\r" before "\n"), sentence ends and closing quotes, CJK (a word
# per ideograph), combining marks, joiners, zero-width and astral characters, a lone surrogate.
EDGES = [
    "",
    " ",
    "\n",
    "\r",
    "\r\n",
    "\n\n",
    "\t \n",
    "\u3000",
    "\x85",
    "\u2029",
    ".",
    '."',
    "!",
    ")",
    '"',
    "\u201d",
    "\u3002",
    "\u4e2d",
    "\u4e2d\u6587",
    "\u0301",
    "e\u0301",
    "\u200b",
    "\u200d",
    "\U0001f600",
    "\U0001f44d\U0001f3fd",
    "\U00020000",
    "\U00011000\U00011001",
    "\ud800",
    "x",
    "I.",
    "a" * 120,
]

PIECES = [
    "the",
    "quick",
    "brown",
    "fox",
    "Mr.",
    "e.g.",
    "foo.bar",
    "(a, b)",
    "end.",
    'said."',
    "\u4e2d\u6587\u5b57",
    "\u65e5\u672c\u8a9e\u306e\u6587\u7ae0\u3002",
    "\u300c\u5f15\u7528\u300d",
    "e\u0301",
    "\u0301\u0302",
    "\u0915\u094d\u0937",
    "\U0001f468\u200d\U0001f469\u200d\U0001f467",
    "\U0001f1eb\U0001f1f7",
    "\U0001d165\U0001d166",
    "\U0002f800",
    "\u200b",
    "\ufeff",
    "\x00",
    "\u00a0",
    "x" * 300,
    "\u00e9" * 150,
    "\u4e2d" * 120,
    "\U0001f600" * 60,
    "A" * 40 + "\u0301" * 5 + "B" * 40,
    "\udc00",
]

SEPARATORS = [" ", "  ", "\n", "\n\n", "", "\t", ". ", "\r\n", "\r\n\r\n", "\r", " \n ", "\u3000"]

CONFIGS = [
    ChunkerConfig(tokenizer=HEURISTIC, max_tokens=267, overlap_tokens=0, include_title=False),
    ChunkerConfig(tokenizer=HEURISTIC),
    ChunkerConfig(tokenizer=HEURISTIC, max_tokens=8, overlap_tokens=0, include_title=False),
    ChunkerConfig(tokenizer=HEURISTIC, max_tokens=9, overlap_tokens=4, include_title=True),
    ChunkerConfig(tokenizer=HEURISTIC, max_tokens=16, overlap_tokens=15, include_title=True),
    ChunkerConfig(tokenizer=HEURISTIC, max_tokens=20, overlap_tokens=3, include_title=False),
    ChunkerConfig(tokenizer=HEURISTIC, max_tokens=64, overlap_tokens=12, include_title=True),
    # WordPiece measures a batch's texts joined too (its cost is per numpy call, per text)
    ChunkerConfig(),
    ChunkerConfig(max_tokens=12, overlap_tokens=3, include_title=True),
    ChunkerConfig(max_tokens=40, overlap_tokens=0, include_title=False),
]


def _for(cfg: ChunkerConfig, text: str | None) -> str | None:
    """``text`` without lone surrogates for WordPiece (its tokenizer refuses them; a text from
    PostgreSQL has none)."""
    if text is None or cfg.tokenizer == HEURISTIC:
        return text
    return "".join(c for c in text if not 0xD800 <= ord(c) <= 0xDFFF)


def random_body(rng: random.Random, max_len: int) -> str:
    parts: list[str] = []
    size = 0
    target = rng.randint(0, max_len)
    special_rate = rng.choice([0.0, 0.05, 0.3, 0.9])
    while size < target:
        piece = rng.choice(PIECES) if rng.random() < special_rate else rng.choice(PIECES[:10])
        sep = rng.choice(SEPARATORS)
        parts.append(piece + sep)
        size += len(piece) + len(sep)
    return rng.choice(EDGES) + "".join(parts) + rng.choice(EDGES)


def random_title(rng: random.Random) -> str | None:
    kind = rng.randrange(6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice(["", "  ", "\u200b"])
    if kind == 2:
        return random_body(rng, 1500)  # longer than the budget: truncated
    return random_body(rng, 60)


def assert_batch_equals_single(docs: list[tuple[str | None, str]], cfg: ChunkerConfig) -> int:
    batch = chunk_documents(docs, cfg)
    assert len(batch) == len(docs)
    for (title, body), chunks in zip(docs, batch, strict=True):
        assert chunks == chunk_document(title, body, cfg), (cfg, title, body)
        for c in chunks:
            assert body[c.char_start : c.char_end] == c.text
    return sum(len(chunks) for chunks in batch)


@pytest.mark.parametrize("cfg", [*CONFIGS[2:5], CONFIGS[-2]], ids=lambda cfg: cfg.version)
def test_neighbours_do_not_leak(cfg: ChunkerConfig) -> None:
    """Every pair of a document end and the next document's start, side by side in a batch."""
    docs: list[tuple[str | None, str]] = []
    edges = sorted({str(_for(cfg, e)) for e in EDGES})
    for end, start in product(edges, edges):
        docs.append((None, "one two three four five six seven eight nine ten." + end))
        docs.append((None, start + "eleven twelve thirteen fourteen fifteen sixteen"))
        docs.append((None, end))  # the edge alone: may be empty or whitespace only
        docs.append((None, start + " " + end))
    assert assert_batch_equals_single(docs, cfg) > len(docs)


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda cfg: cfg.version)
def test_random_batches(cfg: ChunkerConfig) -> None:
    rng = random.Random(CONFIGS.index(cfg))
    n_chunks = 0
    for _ in range(20):
        size = rng.choice([1, 2, 7, 30])
        docs = [
            (
                _for(cfg, random_title(rng)),
                str(_for(cfg, random_body(rng, rng.choice([0, 40, 400, 3000])))),
            )
            for _ in range(size)
        ]
        n_chunks += assert_batch_equals_single(docs, cfg)
    assert n_chunks > 50


def test_batch_edge_cases() -> None:
    cfg = ChunkerConfig(tokenizer=HEURISTIC, max_tokens=12, overlap_tokens=2)
    assert chunk_documents([], cfg) == []
    assert chunk_documents([(None, "")], cfg) == [[]]
    assert chunk_documents([(None, ""), ("t", " \n "), (None, "\u3000")], cfg) == [[], [], []]
    body = "Alpha beta gamma. Delta epsilon zeta.\n\nEta theta."
    alone = chunk_document("T", body, cfg)
    assert len(alone) > 1
    assert chunk_documents([("T", body)] * 3, cfg) == [alone] * 3
    assert chunk_documents([(None, ""), ("T", body), (None, "")], cfg)[1] == alone


def test_large_batch() -> None:
    """Texts are measured in groups of some 100,000 characters: a batch of several groups, and
    a text longer than a group, chunk as they do alone."""
    rng = random.Random(11)
    docs: list[tuple[str | None, str]] = [
        (random_title(rng), random_body(rng, rng.choice([100, 3000, 20000]))) for _ in range(60)
    ]
    docs.insert(25, ("Long", random_body(rng, 400000)[:150000] + "end."))
    assert sum(len(body) for _, body in docs) > 400000
    for cfg in [*CONFIGS[:2], CONFIGS[-3]]:
        clean = [(_for(cfg, t), str(_for(cfg, b))) for t, b in docs]
        assert assert_batch_equals_single(clean, cfg) > 400
