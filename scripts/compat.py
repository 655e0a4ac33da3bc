#!/usr/bin/env python3
"""``make compat``: pgingest against a real embedding server, Infinity (issue 26, point 1).

Everything else the worker talks to in the tests is our own code (the fake provider,
``pgingest serve-model``). This runs the pipeline against Infinity (``infinity-emb``, pinned
below, in its own virtual environment under ``.cache/compat``: its pins, numpy < 2 and
sentence-transformers < 4, clash with the project's), serving the bundled all-MiniLM-L6-v2
weights offline on the CPU, next to ``pgingest serve-model`` as the reference:

1. the demo corpus (the Python standard library's docstrings) in a fresh database, three models:
   ``ref`` (serve-model, active), ``inf`` (Infinity, ``encoding_format`` base64: the worker's
   default) and ``inffloat`` (Infinity, ``encoding_format`` float), drained by one worker;
2. checks: every document embedded for each model and no dead letter; every chunk's vector from
   Infinity within cosine >= 0.9999 of serve-model's (same chunks: one chunking profile); the
   demo's searches return the same top 10 documents from ``inf`` as from ``ref`` (each embedding
   its own query); an over-long input and an over-large batch sent to Infinity directly end in
   an answer the worker handles (a vector of a truncated input, or an error classified as the
   input's or the request's, never an unclassified failure), and the worker's requests stay
   within the server's batch limit.

The server is stopped at the end whatever happens. Exit status 0 when every check passes.

usage: scripts/compat.py [--documents N] [--keep-database]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import psycopg  # noqa: E402
import requests  # noqa: E402
from bench.common import fresh_database, register_model, serve_model, server_url  # noqa: E402

from pgingest import db, local_model, providers, worker  # noqa: E402
from pgingest.demo import corpus  # noqa: E402

TORCH = "torch==2.13.0"  # the CPU build on this machine's disk (environment notes)
INFINITY = "infinity-emb[server,torch]==0.0.78"
CACHE = Path(os.environ.get("PGINGEST_CACHE", ROOT / ".cache")) / "compat"
VENV = CACHE / "venv"
STAMP = VENV / ".pgingest-pins"
MIN_COSINE = 0.9999
T0 = time.monotonic()
results: list[tuple[str, str, str]] = []


def say(msg: str) -> None:
    print(f"[{time.monotonic() - T0:7.1f}s] {msg}", flush=True)


def check(ok: bool, name: str, detail: str) -> None:
    results.append(("PASS" if ok else "FAIL", name, detail))
    print(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}", flush=True)


# -- Infinity, in its own virtual environment --------------------------------------------------


def ensure_venv() -> Path:
    pins = f"{TORCH}\n{INFINITY}\n"
    exe = VENV / "bin" / "infinity_emb"
    if exe.is_file() and STAMP.is_file() and STAMP.read_text() == pins:
        return exe
    say(f"installing {INFINITY} and {TORCH} into {VENV} (once; a few minutes)")
    t = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True)
    subprocess.run(
        [
            str(VENV / "bin" / "pip"),
            "install",
            "--quiet",
            "--disable-pip-version-check",
            TORCH,
            INFINITY,
        ],
        check=True,
        stdin=subprocess.DEVNULL,
    )
    STAMP.write_text(pins)
    say(f"installed in {time.monotonic() - t:.0f}s")
    return exe


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def infinity(exe: Path) -> Iterator[str]:
    """Infinity on an ephemeral port (its base URL), offline, stopped at the end."""
    port = free_port()
    log = (CACHE / "infinity.log").open("wb")
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "INFINITY_ANONYMOUS_USAGE_STATS": "0",
        "DO_NOT_TRACK": "1",
    }
    cmd = [
        str(exe), "v2",
        "--model-id", str(local_model.model_path()),
        "--served-model-name", local_model.MODEL_NAME,
        "--engine", "torch",
        "--device", "cpu",
        "--port", str(port),
        "--host", "127.0.0.1",
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"infinity exited with {proc.returncode}: see {log.name}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(url + "/health", timeout=2).ok:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"infinity not up after 600 s: see {log.name}")
            time.sleep(1)
        say(f"infinity up at {url} (log {log.name})")
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        log.close()
        say(f"infinity stopped (exit {proc.returncode})")


# -- the checks ------------------------------------------------------------------------------


def load(conn: psycopg.Connection[Any], documents: int | None) -> int:
    docs = [(d.key, d.title, d.body) for d in corpus.iter_corpus(limit=documents)]
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO pgingest.documents (key, title, body) VALUES (%s, %s, %s)", docs
        )
    return len(docs)


def drain(dsn: str) -> float:
    def factory(m: db.Model) -> providers.EmbeddingProvider:
        fmt = "float" if m.name == "inffloat" else "base64"
        return providers.for_model(m, encoding_format=fmt, timeout=120.0)

    t = time.monotonic()
    code = worker.Worker(
        worker.WorkerSettings(
            conninfo=dsn, drain=True, install_signal_handlers=False, provider_factory=factory
        )
    ).run()
    if code != 0:
        raise RuntimeError(f"worker --drain exited with {code}")
    return time.monotonic() - t


def check_embedded(conn: psycopg.Connection[Any], n_docs: int) -> None:
    for model in ("ref", "inf", "inffloat"):
        (done,) = conn.execute(
            "SELECT count(*) FROM pgingest.embedding_state WHERE model = %s", (model,)
        ).fetchone() or (0,)
        (dead,) = conn.execute(
            "SELECT count(*) FROM pgingest.dead_letters WHERE model = %s", (model,)
        ).fetchone() or (0,)
        check(
            done == n_docs and dead == 0,
            f"embedded ({model})",
            f"{done:,} of {n_docs:,} documents embedded, {dead} dead letters",
        )


def check_vectors(conn: psycopg.Connection[Any]) -> None:
    for model in ("inf", "inffloat"):
        row = conn.execute(
            psycopg.sql.SQL(
                "SELECT count(*), min(1 - (a.embedding <=> b.embedding)),"
                " avg(1 - (a.embedding <=> b.embedding))"
                " FROM pgingest.store_ref AS a JOIN pgingest.{} AS b USING (doc_id, ordinal)"
            ).format(psycopg.sql.Identifier(f"store_{model}"))
        ).fetchone()
        (total,) = conn.execute("SELECT count(*) FROM pgingest.store_ref").fetchone() or (0,)
        n, low, mean = row if row else (0, None, None)
        ok = n == total > 0 and low is not None and low >= MIN_COSINE
        check(
            ok,
            f"vectors ({model})",
            f"{n:,} of {total:,} chunks compared with serve-model's: cosine min {low:.6f},"
            f" mean {mean:.6f} (at least {MIN_COSINE})"
            if low is not None
            else "no chunk to compare",
        )


def check_search(conn: psycopg.Connection[Any], ref_url: str, inf_url: str) -> None:
    ref = providers.OpenAICompatibleProvider(ref_url, local_model.MODEL_NAME, 384)
    inf = providers.OpenAICompatibleProvider(inf_url, local_model.MODEL_NAME, 384)
    queries = [q.query for q in corpus.DEMO_QUERIES]
    same = 0
    differ: list[str] = []
    for q, vr, vi in zip(queries, ref.embed(queries), inf.embed(queries), strict=True):

        def top(model: str, vec: np.ndarray) -> list[str]:
            rows = conn.execute(
                "SELECT doc_key FROM pgingest.search(%s::vector, 10, per_document => true,"
                " model => %s)",
                (vec.tolist(), model),
            ).fetchall()
            return [r[0] for r in rows]

        a, b = top("ref", vr), top("inf", vi)
        if a == b and len(a) == 10:
            same += 1
        else:
            differ.append(q)
    check(
        not differ,
        "search",
        f"{same} of {len(queries)} demo searches return the same top 10 documents"
        + (f"; differ: {differ[:3]}" if differ else ""),
    )


def check_limits(inf_url: str) -> None:
    """An over-long input and an over-large batch, sent to Infinity directly: what comes back
    must be something the worker handles."""
    inf = providers.OpenAICompatibleProvider(
        inf_url, local_model.MODEL_NAME, 384, max_retries=0, timeout=300.0
    )
    long_text = " ".join(f"word{i}" for i in range(20_000))
    try:
        vec = inf.embed([long_text])
        long_outcome = f"a vector of {vec.shape[1]} dimensions (the server truncates)"
        long_ok = vec.shape == (1, 384)
    except providers.ProviderError as exc:
        long_outcome = (
            f"{type(exc).__name__} ({exc.error_class}, HTTP {exc.status}): {str(exc)[:120]}"
        )
        long_ok = isinstance(exc, providers.InputRejected | providers.InvalidRequest)
    check(long_ok, "over-long input", f"20,000 words in one input: {long_outcome}")
    big = [f"batch input {i}" for i in range(4096)]
    try:
        vecs = inf.embed(big)
        big_outcome = f"{len(vecs)} vectors (no limit at 4,096 inputs)"
        big_ok = vecs.shape == (4096, 384)
    except providers.ProviderError as exc:
        big_outcome = (
            f"{type(exc).__name__} ({exc.error_class}, HTTP {exc.status}): {str(exc)[:160]}"
        )
        big_ok = isinstance(exc, providers.InputRejected | providers.InvalidRequest)
    check(big_ok, "over-large batch", f"4,096 inputs in one request: {big_outcome}")
    limit = worker.WorkerSettings().request_max_inputs
    check(
        True if big_ok and "vectors" in big_outcome else limit <= 2048,
        "worker batch limit",
        f"the worker sends at most {limit} inputs per request (--request-max-inputs)",
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--documents", type=int, default=None, help="demo documents (default: all)")
    p.add_argument("--keep-database", action="store_true")
    args = p.parse_args()
    CACHE.mkdir(parents=True, exist_ok=True)
    exe = ensure_venv()
    url = server_url()
    warm = [q.query for q in corpus.DEMO_QUERIES]
    with (
        serve_model(warm) as ref,
        infinity(exe) as inf_url,
        fresh_database(url, "compat", keep=args.keep_database) as dsn,
        db.connect(dsn) as conn,
    ):
        say(f"serve-model at {ref.url}; database {dsn}")
        tokens = local_model.MAX_INPUT_TOKENS
        register_model(conn, "ref", local_model.MODEL_NAME, 384, ref.url, max_input_tokens=tokens)
        for name in ("inf", "inffloat"):
            register_model(
                conn, name, local_model.MODEL_NAME, 384, inf_url, max_input_tokens=tokens
            )
        n = load(conn, args.documents)
        say(f"{n:,} documents loaded; draining three models (serve-model, Infinity x2) ...")
        seconds = drain(dsn)
        (chunks,) = conn.execute("SELECT count(*) FROM pgingest.store_ref").fetchone() or (0,)
        say(f"drained in {seconds:.1f}s: {chunks:,} chunks per model")
        check_embedded(conn, n)
        check_vectors(conn)
        check_search(conn, ref.url, inf_url)
        check_limits(inf_url)
    failed = [r for r in results if r[0] == "FAIL"]
    summary = {"checks": [dict(zip(("status", "name", "detail"), r, strict=True)) for r in results]}
    (CACHE / "compat-results.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(
        f"\n{'PASS' if not failed else 'FAIL'}: {len(results) - len(failed)} of {len(results)}"
        f" checks in {time.monotonic() - T0:.0f}s (results in {CACHE / 'compat-results.json'})"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
