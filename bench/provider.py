"""The provider's capacity (issue 25): the pipeline against a slow server and against a quota.

``slow_provider``: ``pgingest serve-model`` on this machine's CPU is the slow server (one encode
at a time). Chunks of realistic length (long synthetic documents: 150-200 tokens each) go
through ``worker`` with its default settings; the reference is the same model encoding the same
texts directly, in this process, at its best batch size, before and after. Also counted: the
texts the server encoded beyond the distinct inputs (work done twice: a request abandoned and
sent again, or a batch claimed twice) and the worker's resends (its Prometheus endpoint).

``quota``: the fake provider with a tokens-per-minute quota (token buckets, 429 with
Retry-After, ``x-ratelimit-*`` headers), two worker processes (``--processes 2``), a backfill of
at least 10,000 chunks. ``quota_utilisation`` = tokens accepted per minute over the quota, the
bucket's initial minute of burst not counted; ``rejected_request_share`` = 429s over all
requests.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.common import (
    BackendCpu,
    Child,
    connect_plain,
    copy_documents,
    fresh_database,
    log,
    ratio,
    read_line,
    register_model,
    serve_model,
    start_worker,
    synthetic_docs,
    wait_until_embedded,
)


def long_chunks(n_chunks: int) -> tuple[list[tuple[str, str, str]], list[str], float]:
    """Documents of 4 synthetic bodies each (4,000-12,000 characters: the demo corpus is mostly
    short pages, 1,662 chunks in all), whose chunks (default profile: 200 tokens, 20 overlap)
    are nearly all full length, adding up to about ``n_chunks``: the documents, the chunks'
    model inputs (distinct), and their mean token count (150-200)."""
    from pgingest import chunking
    from pgingest.testing import texts

    cfg = chunking.ChunkerConfig()
    docs: list[tuple[str, str, str]] = []
    inputs: list[str] = []
    tokens = 0
    i = 0
    while len(inputs) < n_chunks:
        title = f"Capacity document {i}"
        body = " ".join(texts.synthetic_body(4 * i + j, seed=23) for j in range(4))
        chunks = chunking.chunk_document(title, body, cfg)
        docs.append((f"slow-{i}", title, body))
        inputs.extend(c.embed_input for c in chunks)
        tokens += sum(c.token_count for c in chunks)
        i += 1
    return docs, inputs, tokens / max(1, len(inputs))


def _metric(port: int, name: str) -> float:
    """The sum of a counter's samples on a worker's Prometheus endpoint (0 when absent)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            text = resp.read().decode()
    except OSError:
        return float("nan")
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            m = re.match(r"^\S+(?:\{[^}]*\})?\s+(\S+)", line)
            if m:
                total += float(m.group(1))
    return total


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bench_slow_provider(url: str, n_chunks: int, workdir: Path) -> dict[str, Any]:
    import requests

    from pgingest import local_model

    docs, texts, mean_tokens = long_chunks(n_chunks)
    distinct = len(set(texts))
    log(
        f"slow provider: {len(docs)} documents, {len(texts)} chunks of {mean_tokens:.0f} tokens"
        " on average; finding the model's best batch size"
    )
    sample = texts[: min(len(texts), 256)]
    local_model.raw_encode_throughput(sample[:32])  # loads the model: not timed
    best = max((16, 32, 64), key=lambda b: local_model.raw_encode_throughput(sample, b))

    def raw() -> float:
        return local_model.raw_encode_throughput(texts, best)

    raw_before = raw()
    log(f"slow provider: raw encode {raw_before:.1f} texts/s at batch {best}; starting serve-model")
    port = _free_port()
    with (
        serve_model(texts) as model,
        fresh_database(url, "slowprov") as dsn,
        connect_plain(dsn) as conn,
    ):
        model.register(conn)
        worker, fh = start_worker(dsn, workdir / "worker-slow.log", "--metrics-port", str(port))
        try:
            time.sleep(3.0)  # the worker's start (imports, connect) is not timed
            h0 = requests.get(model.health_url, timeout=30).json()
            with BackendCpu(dsn):
                t0 = time.perf_counter()
                copy_documents(conn, docs)
                t1 = wait_until_embedded(conn, "v1", len(docs), 3600.0, worker)
            h1 = requests.get(model.health_url, timeout=30).json()
            resends = _metric(port, "pgingest_embedding_resends")
            row = conn.execute("SELECT count(*) FROM pgingest.chunks").fetchone()
            chunks = int(row[0]) if row else 0
            dead = conn.execute("SELECT count(*) FROM pgingest.dead_letters").fetchone()
        finally:
            worker.stop(30.0)
            fh.close()
    raw_after = raw()
    reference = (raw_before + raw_after) / 2
    pipeline = chunks / (t1 - t0)
    encoded = int(h1["texts"]) - int(h0["texts"])
    busy = float(h1["busy_s"]) - float(h0["busy_s"])
    return {
        "documents": len(docs),
        "chunks": chunks,
        "chunks_expected": len(texts),
        "mean_chunk_tokens": round(mean_tokens, 1),
        "best_batch_size": best,
        "pipeline_seconds": round(t1 - t0, 2),
        "pipeline_texts_per_s": round(pipeline, 2),
        "pipeline_tokens_per_s": round(pipeline * mean_tokens, 1),
        "raw_encode_texts_per_s_before": round(raw_before, 2),
        "raw_encode_texts_per_s_after": round(raw_after, 2),
        "raw_encode_tokens_per_s": round(reference * mean_tokens, 1),
        "slow_provider_efficiency": ratio(pipeline, reference),
        "model_busy_fraction": round(busy / (t1 - t0), 3),
        "texts_encoded_by_server": encoded,
        "distinct_inputs": distinct,
        "work_done_twice": encoded - distinct,
        "requests_resent": resends,
        "dead_letters": int(dead[0]) if dead else None,
    }


def bench_quota(url: str, n_docs: int, workdir: Path) -> dict[str, Any]:
    """The paced worker with the quota configured (``set_model_quota``), the same learning it
    from the headers, and with ``--no-quota-pacing`` (the reference: what the worker did before
    pacing, 429s and Retry-After only)."""
    paced = quota_run(url, n_docs, workdir, configure=True)
    learned = quota_run(url, n_docs, workdir)
    unpaced = quota_run(url, n_docs, workdir, "--no-quota-pacing")
    return {
        **paced,
        "learned": learned,
        "learned_quota_utilisation": learned["quota_utilisation"],
        "learned_rejected_request_share": learned["rejected_request_share"],
        "unpaced": unpaced,
        "unpaced_quota_utilisation": unpaced["quota_utilisation"],
        "unpaced_rejected_request_share": unpaced["rejected_request_share"],
    }


def quota_run(
    url: str,
    n_docs: int,
    workdir: Path,
    *extra: str,
    configure: bool = False,
    processes: int = 2,
    seconds: float = 120.0,
) -> dict[str, Any]:
    """Backfill ``n_docs`` synthetic documents (about 3 chunks each) against the fake with a
    tokens-per-minute quota sized so that the backfill takes about one burst minute plus
    ``seconds`` at the quota."""
    from pgingest import chunking
    from pgingest.testing.fake_provider import control, count_tokens

    docs = synthetic_docs(n_docs, seed=11)
    cfg = chunking.ChunkerConfig()
    chunks = chunking.chunk_documents([(t, b) for _, t, b in docs], cfg)
    n_chunks = sum(len(c) for c in chunks)
    total_tokens = count_tokens((c.embed_input for cs in chunks for c in cs), cfg.tokenizer)
    tpm = int(total_tokens / (1.0 + seconds / 60.0))
    log(
        f"quota: {n_docs} documents, {n_chunks} chunks, {total_tokens} tokens; quota"
        f" {tpm} tokens/min, {processes} worker processes"
        f" {'(configured) ' if configure else ''}{' '.join(extra)}"
    )
    argv = [
        sys.executable,
        "-m",
        "pgingest.testing.fake_provider",
        "--port",
        "0",
        "--quota-tpm",
        str(tpm),
        "--quota-tokenizer",
        cfg.tokenizer,
    ]
    fake = Child("fake server", argv, stdout=subprocess.PIPE)
    try:
        fake_url = read_line(fake, 30.0, "http://").strip().split()[-1]
        with fresh_database(url, "quota") as dsn, connect_plain(dsn) as conn:
            register_model(conn, "v1", "fake-384", 384, fake_url)
            if configure:
                conn.execute("SELECT pgingest.set_model_quota('v1', NULL, %s)", (tpm,))
            copy_documents(conn, docs)
            worker, fh = start_worker(
                dsn, workdir / "worker-quota.log", "--processes", str(processes), *extra
            )
            try:
                t0 = time.perf_counter()
                s0 = control(fake_url)
                t1 = wait_until_embedded(conn, "v1", len(docs), 1800.0, worker)
                s1 = control(fake_url)
            finally:
                worker.stop(30.0)
                fh.close()
    finally:
        fake.stop(10.0)
        if fake.proc.stdout is not None:
            fake.proc.stdout.close()

    def stat(s: dict[str, Any], key: str) -> float:
        v = s.get("stats", s).get(key, 0)
        return float(sum(v.values())) if isinstance(v, dict) else float(v)

    accepted = stat(s1, "quota_accepted_tokens") - stat(s0, "quota_accepted_tokens")
    rejected = stat(s1, "quota_rejected") - stat(s0, "quota_rejected")
    requests_ok = stat(s1, "quota_accepted_requests") - stat(s0, "quota_accepted_requests")
    elapsed = t1 - t0
    beyond_burst = max(0.0, accepted - tpm)  # the bucket starts full: one minute of quota
    quota_time = max(1e-9, elapsed)
    return {
        "documents": n_docs,
        "chunks": n_chunks,
        "tokens": total_tokens,
        "quota_tpm": tpm,
        "processes": processes,
        "seconds": round(elapsed, 1),
        "tokens_accepted": int(accepted),
        "requests_accepted": int(requests_ok),
        "requests_rejected": int(rejected),
        "quota_utilisation": ratio(beyond_burst / quota_time * 60.0, tpm),
        "rejected_request_share": ratio(rejected, rejected + requests_ok),
    }
