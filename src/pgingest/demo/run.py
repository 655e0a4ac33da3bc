"""``pgingest demo``: a real corpus through the whole pipeline with the bundled local model.

Starts (unless already running) the local model server and a worker, loads the Python standard
library's documentation into ``pgingest.documents`` with plain SQL (an upsert by key: a second run
changes nothing and queues nothing), shows the queue draining, prints a summary next to the
model's raw encode throughput on the same texts, builds the model's ANN index (HNSW, the way
``pgingest model index`` does: a search without it reads every vector, and ``pgingest status``
warns about it), then runs natural-language searches from SQL (``pgingest.search_text``, the
PL/Python path a psql user takes) and prints each one's latency.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from typing import Any

from pgingest import db, index
from pgingest.demo import corpus

MODEL_NAME = "minilm"
SERVER_HOST = "127.0.0.1"


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def _start(cmd: list[str], log_path: str) -> subprocess.Popen[bytes]:
    log = open(log_path, "ab")  # noqa: SIM115 - owned by the child for its lifetime
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _stop(p: subprocess.Popen[bytes] | None, name: str) -> None:
    if p is None or p.poll() is not None:
        return
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(timeout=20)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
    print(f"stopped {name} (pid {p.pid})")


def load_corpus(conn: Any, limit: int | None) -> tuple[int, int]:
    """Upserts the corpus by key; returns (documents in the corpus, versions queued)."""
    docs = list(corpus.iter_corpus(limit=limit))
    before = db.pending_messages(conn, MODEL_NAME)
    db.upsert_documents(conn, [(d.key, d.title, d.body, d.metadata) for d in docs])
    after = db.pending_messages(conn, MODEL_NAME)
    return len(docs), max(0, after - before)


def wait_for_drain(conn: Any, timeout: float, workers: list[subprocess.Popen[bytes]]) -> float:
    from tqdm import tqdm

    total, done, dead = db.model_progress(conn, MODEL_NAME)
    start = time.monotonic()
    interactive = sys.stderr.isatty()
    bar = tqdm(
        total=total, initial=done + dead, unit="doc", desc="embedding", disable=not interactive
    )
    last_print = 0.0
    base = done + dead
    while done + dead < total:
        if time.monotonic() - start > timeout:
            bar.close()
            raise TimeoutError(f"the queue did not drain within {timeout:.0f} s")
        if any(w.poll() is not None for w in workers):
            bar.close()
            raise RuntimeError("the worker exited early: see .pgdata/demo-worker.log")
        time.sleep(0.5)
        total, done, dead = db.model_progress(conn, MODEL_NAME)
        bar.update(done + dead - bar.n)
        elapsed = time.monotonic() - start
        rate = (done + dead - base) / elapsed if elapsed else 0.0
        bar.set_postfix(docs_per_s=f"{rate:.1f}", dead=dead)
        if not interactive and time.monotonic() - last_print > 5:
            last_print = time.monotonic()
            print(f"  {done + dead}/{total} documents ({rate:.1f} docs/s, {dead} dead letters)")
    bar.close()
    return time.monotonic() - start


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="pgingest demo", description=__doc__)
    p.add_argument("--database-url", default=None)
    p.add_argument("--port", type=int, default=int(os.environ.get("PGINGEST_MODEL_PORT", "8765")))
    p.add_argument("--limit", type=int, default=None, help="load at most this many documents")
    p.add_argument(
        "--keep-running", action="store_true", help="leave the model server and worker up"
    )
    p.add_argument("--timeout", type=float, default=900.0)
    p.add_argument("--log-dir", default=".pgdata")
    p.add_argument("--skip-raw-benchmark", action="store_true")
    args = p.parse_args(argv)

    os.makedirs(args.log_dir, exist_ok=True)
    base_url = f"http://{SERVER_HOST}:{args.port}/v1"
    server: subprocess.Popen[bytes] | None = None
    workers: list[subprocess.Popen[bytes]] = []
    exe = [sys.executable, "-m", "pgingest.cli"]
    conn = db.connect(args.database_url)
    try:
        if _healthy(f"http://{SERVER_HOST}:{args.port}/health"):
            print(f"model server already running on {base_url}")
        else:
            print(f"starting the local model server on {base_url} (all-MiniLM-L6-v2, CPU)")
            server = _start(
                [*exe, "serve-model", "--host", SERVER_HOST, "--port", str(args.port)],
                os.path.join(args.log_dir, "demo-model.log"),
            )
            deadline = time.monotonic() + 180
            while not _healthy(f"http://{SERVER_HOST}:{args.port}/health"):
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the model server did not start: see demo-model.log")
                time.sleep(0.3)

        if db.get_model(conn, MODEL_NAME) is None:
            db.register_model(
                conn, MODEL_NAME, "all-MiniLM-L6-v2", 384, base_url, max_input_tokens=256
            )
            print(f"registered model {MODEL_NAME} (all-MiniLM-L6-v2, vector(384), cosine)")
        db.resume_model(conn, MODEL_NAME)

        t0 = time.monotonic()
        n_docs, queued = load_corpus(conn, args.limit)
        load_s = time.monotonic() - t0
        print(
            f"loaded {n_docs} documents of the Python standard library's documentation in"
            f" {load_s:.1f} s ({queued} new versions queued)"
        )
        chunks_before = db.chunk_stats(conn)[0]
        workers.append(
            _start(
                [*exe, "worker", "--model", MODEL_NAME, "--in-flight", "2", "--batch-size", "32"],
                os.path.join(args.log_dir, "demo-worker.log"),
            )
        )
        elapsed = wait_for_drain(conn, args.timeout, workers)
        total, done, dead = db.model_progress(conn, MODEL_NAME)
        chunks = db.chunk_stats(conn)
        new_chunks = chunks[0] - chunks_before if queued else 0
        print("\nsummary")
        print(f"  documents      {total}")
        print(f"  embedded       {done}")
        print(f"  chunks         {chunks[0]} ({chunks[1]} tokens)")
        print(f"  dead letters   {dead}")
        print(f"  time           {elapsed:.1f} s")
        if queued and elapsed > 0:
            pipe_rate = new_chunks / elapsed
            print(f"  throughput     {queued / elapsed:.1f} documents/s, {pipe_rate:.1f} chunks/s")
            if not args.skip_raw_benchmark:
                _compare_raw(conn, pipe_rate)
        else:
            print("  throughput     nothing new to embed (a second run changes nothing)")

        build_ann_index(args.database_url)

        print("\nsearches (SELECT * FROM pgingest.search_text(query, 5, per_document => true))")
        latencies: list[float] = []
        for q in corpus.DEMO_QUERIES:
            t0 = time.perf_counter()
            rows = db.search_text(conn, q.query, 5, True, base_url)
            latencies.append((time.perf_counter() - t0) * 1000)
            print(f"\n  {q.query!r}  ({latencies[-1]:.1f} ms: the query embedded, then searched)")
            for rank, (key, title, distance) in enumerate(rows, 1):
                score = 1 - distance
                mark = "  <- expected" if key == q.expected_key else ""
                print(f"    {rank}. {score:.3f}  {title}  [{key}]{mark}")
        if latencies:
            ordered = sorted(latencies)
            print(
                f"\n  search latency: median {ordered[len(ordered) // 2]:.1f} ms, max"
                f" {ordered[-1]:.1f} ms over {len(latencies)} searches (the first one also warms"
                " the session's model connection)"
            )
        if args.keep_running:
            print(
                f"\nleft running: model server pid {server.pid if server else '(external)'},"
                f" worker pid {workers[0].pid}; stop them with: kill {workers[0].pid}"
                + (f" {server.pid}" if server else "")
            )
            server = None
            workers = []
        return 0
    finally:
        for w in workers:
            _stop(w, "worker")
        _stop(server, "model server")
        conn.close()


def build_ann_index(database_url: str | None) -> index.IndexResult | None:
    """Builds the active model's ANN index (``pgingest.index.build_index``: CREATE INDEX
    CONCURRENTLY, kept when it exists and is valid) and says what it did; None when the model is
    searched exactly by choice (index_method 'none')."""
    print(f"\nANN index of model {MODEL_NAME}")
    try:
        built = index.build_index(database_url, MODEL_NAME, progress=True, out=sys.stdout)
    except index.IndexBuildError as exc:
        print(f"  none built: {exc}")
        return None
    size = f", {built.size_bytes / 1e6:.1f} MB" if built.size_bytes else ""
    when = f" in {built.seconds:.1f} s" if built.action != "exists" else " (already there, valid)"
    print(f"  {built.index_name}: {built.action}{when}{size}")
    return built


def _compare_raw(conn: Any, pipe_rate: float) -> None:
    from pgingest import chunking, local_model

    cfg = chunking.ChunkerConfig.from_settings(db.get_config(conn))
    docs = db.sample_documents(conn, 250)
    texts = [c.embed_input for cs in chunking.chunk_documents(docs, cfg) for c in cs][:600]
    raw = local_model.raw_encode_throughput(texts)
    print(f"  model raw      {raw:.1f} chunks/s (the same chunk texts, no HTTP, no database)")
    print(f"  efficiency     {pipe_rate / raw:.0%} of the model's raw encode throughput")


if __name__ == "__main__":
    raise SystemExit(main())
