"""Deterministic synthetic documents for tests, benchmarks and the chaos run.

One vocabulary module, three shapes (each kept byte for byte as its users measured it):

- ``body(i, sentences)``: paragraphs of ten sentences over a small technical vocabulary (the
  database tests);
- ``synthetic_body(i, seed)``: English-like text of 1,000 to 3,000 characters (``make bench``);
- ``mixed_body(rng, tag)``: mostly one chunk, a quarter 2-4 chunks, a few long ones (``make chaos``).
"""

from __future__ import annotations

import random

import numpy as np

# The chaos run's vocabulary; ``body`` uses its first 21 words.
WORDS = [
    "postgres",
    "vector",
    "index",
    "chunk",
    "embedding",
    "queue",
    "worker",
    "model",
    "token",
    "batch",
    "search",
    "query",
    "table",
    "replica",
    "backfill",
    "normalize",
    "dimension",
    "cosine",
    "metric",
    "latency",
    "throughput",
    "transaction",
    "commit",
    "rollback",
    "snapshot",
    "vacuum",
    "autovacuum",
    "checkpoint",
    "wal",
    "archive",
    "restore",
    "failover",
    "standby",
    "primary",
    "lock",
    "deadlock",
    "timeout",
    "retry",
    "backoff",
    "jitter",
    "circuit",
    "breaker",
    "provider",
    "endpoint",
    "tokenizer",
    "paragraph",
    "sentence",
    "document",
    "title",
    "body",
    "metadata",
    "schema",
    "migration",
    "trigger",
    "statement",
]

_BODY_WORDS = WORDS[:21]

_VOCABULARY = """the a of and to in is for on with as by that this it be are from at or an which
    postgres database table index vector query worker queue chunk embedding model token batch
    search replica backfill metric latency throughput commit transaction row column schema
    server client request response error retry timeout buffer memory disk page tuple lock
    document title body text version hash trigger function procedure statement insert update
    delete select value array object field record message payload result cursor stream
    network socket thread process signal handler config option setting default limit offset
    order group filter join scan plan cost estimate sample cluster node shard partition
    primary standby failover backup restore archive log checkpoint vacuum analyze stats
    user role grant permission owner policy security key secret token session connection pool
    time date interval zone year month day hour minute second clock timer schedule job task
    data set list map tree graph node edge path cycle depth width height size length count
    fast slow small large high low new old first last next previous early late good bad
    read write send receive open close start stop run wait sleep wake build drop create alter
    simple complex careful quick stable steady noisy quiet busy idle ready done pending failed
    engineer operator developer application service platform pipeline system machine core
    python sql json http api library package module class method attribute parameter argument
    because when while where before after during until unless although however therefore"""
_WORDS = np.array(_VOCABULARY.split())


def body(i: int, sentences: int = 30) -> str:
    """Paragraphs of ten sentences each (about 30 sentences: 3-4 chunks of 256 tokens)."""
    rng = np.random.default_rng(i)
    paras = []
    for p in range(1 + sentences // 10):
        sents = [
            " ".join(rng.choice(_BODY_WORDS, size=int(rng.integers(6, 16)))).capitalize() + "."
            for _ in range(10)
        ]
        paras.append(f"Paragraph {p} of document {i}. " + " ".join(sents))
    return "\n\n".join(paras)


def synthetic_body(i: int, seed: int = 7) -> str:
    """A deterministic English-like body of 1,000 to 3,000 characters (paragraphs, sentences)."""
    rng = np.random.default_rng([seed, i])
    target = int(rng.integers(1000, 3001))
    words: list[str] = _WORDS[rng.integers(0, _WORDS.shape[0], size=target // 2)].tolist()
    lengths: list[int] = rng.integers(6, 19, size=target // 10).tolist()
    paras: list[int] = rng.integers(4, 13, size=target // 40).tolist()
    out: list[str] = [f"Document {i} describes how the pipeline works."]
    n = len(out[0])
    w = s = p = 0
    in_para = 1
    while n < target:
        k = lengths[s % len(lengths)]
        s += 1
        chunk = words[w : w + k] if w + k <= len(words) else words[:k]
        w = (w + k) % max(1, len(words) - k)
        sentence = " ".join(chunk)
        sentence = sentence[0].upper() + sentence[1:] + "."
        if in_para >= paras[p % len(paras)]:
            sep = "\n\n"
            p += 1
            in_para = 0
        else:
            sep = " "
        out.append(sep)
        out.append(sentence)
        in_para += 1
        n += len(sep) + len(sentence)
    body = "".join(out)
    if len(body) > 3000:
        cut = body.rfind(". ", 1000, 3000)
        body = body[: cut + 1] if cut > 0 else body[:3000]
    return body


def mixed_body(rng: random.Random, tag: str) -> str:
    """Mostly one chunk, a quarter 2-4 chunks, a few long ones (surplus chunks on shrink)."""
    u = rng.random()
    words = (
        rng.randint(20, 150)
        if u < 0.70
        else rng.randint(150, 600)
        if u < 0.95
        else rng.randint(600, 1800)
    )
    out: list[str] = [f"Document {tag}."]
    sentence: list[str] = []
    for _ in range(words):
        sentence.append(rng.choice(WORDS))
        if len(sentence) >= rng.randint(6, 18):
            out.append(" ".join(sentence).capitalize() + rng.choice([".", ".", ".", "?", "!"]))
            sentence = []
            if rng.random() < 0.12:
                out.append("\n\n")
    if sentence:
        out.append(" ".join(sentence).capitalize() + ".")
    return " ".join(out).replace(" \n\n ", "\n\n")
