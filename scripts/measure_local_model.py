#!/usr/bin/env python3
"""Measure the bundled all-MiniLM-L6-v2: raw encode speed, and through serve-model's HTTP API.

    .venv/bin/python scripts/measure_local_model.py [--texts 256] [--tokens 200] [--json out.json]
    .venv/bin/python scripts/measure_local_model.py --demo-queries   # check corpus.DEMO_QUERIES

Texts are ~N-token windows cut from the demo corpus (pgingest.demo.corpus) with the MiniLM
tokenizer. The raw figures call the model directly (no HTTP); the HTTP figures start
serve-model in this process on an ephemeral 127.0.0.1 port and send requests of
--request-size texts from 1..4 concurrent clients, with micro-batching on and off.

--demo-queries embeds the whole demo corpus (bodies in 200-token chunks, about a minute)
and prints the rank of each demo query's expected document (best chunk per document).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests

from pgingest import local_model
from pgingest.demo import corpus


def corpus_windows(n_texts: int, n_tokens: int) -> list[str]:
    """``n_texts`` windows of about ``n_tokens`` MiniLM tokens from the demo corpus."""
    from tokenizers import Tokenizer

    path = corpus.tokenizer_path()
    assert path is not None
    tok = Tokenizer.from_file(str(path))
    tok.no_truncation()
    tok.no_padding()
    out: list[str] = []
    for doc in corpus.iter_corpus():
        text = f"{doc.title}\n\n{doc.body}"
        enc = tok.encode(text, add_special_tokens=False)
        for start in range(0, len(enc.offsets) - n_tokens + 1, n_tokens):
            a = enc.offsets[start][0]
            b = enc.offsets[start + n_tokens - 1][1]
            out.append(text[a:b])
            if len(out) >= n_texts:
                return out
    return out


def check_demo_queries(chunk_tokens: int = 200, overlap: int = 30) -> int:
    """Rank of each DEMO_QUERIES document over the whole corpus; 1 if any is not top 5."""
    from tokenizers import Tokenizer

    path = corpus.tokenizer_path()
    assert path is not None
    tok = Tokenizer.from_file(str(path))
    tok.no_truncation()
    tok.no_padding()
    keys: list[str] = []
    texts: list[str] = []
    for doc in corpus.iter_corpus():
        offsets = tok.encode(doc.body, add_special_tokens=False).offsets
        start = 0
        while start < len(offsets):
            end = min(len(offsets), start + chunk_tokens)
            texts.append(doc.body[offsets[start][0] : offsets[end - 1][1]])
            keys.append(doc.key)
            if end == len(offsets):
                break
            start = end - overlap
    encoder = local_model._shared_encoder(None)
    started = time.perf_counter()
    chunks = encoder.encode(texts)
    print(f"{len(texts)} chunks embedded in {time.perf_counter() - started:.1f} s")
    queries = encoder.encode([q.query for q in corpus.DEMO_QUERIES])
    failed = 0
    for q, scores in zip(corpus.DEMO_QUERIES, queries @ chunks.T, strict=True):
        best: dict[str, float] = {}
        for key, score in zip(keys, scores.tolist(), strict=True):
            best[key] = max(score, best.get(key, -1.0))
        ranked = sorted(best, key=lambda k: -best[k])
        rank = ranked.index(q.expected_key) + 1
        failed += rank > 5
        print(f"rank {rank}: {q.query!r} -> {q.expected_key} (top 3: {ranked[:3]})")
    return 1 if failed else 0


def http_run(url: str, texts: list[str], clients: int, request_size: int) -> dict[str, float]:
    batches = [texts[i : i + request_size] for i in range(0, len(texts), request_size)]
    local = threading.local()

    def send(batch: list[str]) -> int:
        session = getattr(local, "s", None)
        if session is None:
            session = local.s = requests.Session()
        r = session.post(
            f"{url}/embeddings",
            json={"model": local_model.MODEL_NAME, "input": batch, "encoding_format": "base64"},
            timeout=600,
        )
        r.raise_for_status()
        return int(r.json()["usage"]["total_tokens"])

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        tokens = sum(pool.map(send, batches))
    seconds = time.perf_counter() - started
    return {
        "clients": clients,
        "seconds": round(seconds, 2),
        "texts_per_s": round(len(texts) / seconds, 2),
        "tokens_per_s": round(tokens / seconds, 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--texts", type=int, default=256)
    p.add_argument("--tokens", type=int, default=200)
    p.add_argument("--threads", type=int, nargs="+", default=[local_model.default_threads()])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 32, 64])
    p.add_argument("--request-size", type=int, default=32)
    p.add_argument("--clients", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--json", help="write the results here")
    p.add_argument("--demo-queries", action="store_true", help="check corpus.DEMO_QUERIES")
    args = p.parse_args(argv)
    if args.demo_queries:
        return check_demo_queries()

    texts = corpus_windows(args.texts, args.tokens)
    results: dict[str, Any] = {
        "texts": len(texts),
        "target_tokens": args.tokens,
        "raw": [],
        "http": [],
    }
    print(f"{len(texts)} texts of ~{args.tokens} tokens", flush=True)

    for threads in args.threads:
        for bs in args.batch_sizes:
            m = local_model.measure_encode(texts, bs, threads=threads)
            row = {"threads": threads, "batch_size": bs, **{k: round(v, 2) for k, v in m.items()}}
            results["raw"].append(row)
            print(
                f"raw   threads={threads} batch={bs}: {m['texts_per_s']:.1f} texts/s, "
                f"{m['tokens_per_s']:.0f} tokens/s",
                flush=True,
            )

    threads = args.threads[-1]
    encoder = local_model._shared_encoder(threads)
    local_model._set_torch_threads(threads)
    for merge in (True, False):
        server = local_model.LocalModelServer(
            encoder,
            "127.0.0.1",
            0,
            threads=threads,
            max_batch_texts=local_model.DEFAULT_MAX_BATCH_TEXTS if merge else 1,
        )
        with server:
            http_run(server.url, texts[: args.request_size], 1, args.request_size)  # warm-up
            for clients in args.clients:
                row = {
                    "micro_batching": merge,
                    "threads": threads,
                    "request_size": args.request_size,
                    **http_run(server.url, texts, clients, args.request_size),
                }
                row["encode_calls"] = server.health()["encode_calls"]
                results["http"].append(row)
                print(
                    f"http  micro_batching={merge} clients={clients}: "
                    f"{row['texts_per_s']:.1f} texts/s, {row['tokens_per_s']:.0f} tokens/s",
                    flush=True,
                )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
