"""Query-side benchmarks of issue 20: the query-vector cache and the query log, each as a ratio
measured in one run (the machine's load moves absolute figures by 2x; see bench/README.md).

- ``query_cache_hit_latency_ratio``: a ``search_text`` whose query vector comes from the session's
  cache over one that embeds it (``pgingest.query_cache_entries = 0``), against the local model
  (``pgingest serve-model``, all-MiniLM-L6-v2) unless another endpoint is given. Median per
  search, rounds interleaved.
- ``query_shared_cache_hit_latency_ratio``: a ``search_text`` whose query vector comes from the
  shared cache table (``pgingest.query_cache``, migration 0015: the session's own cache off, the
  row stored by an earlier search) over the same uncached one; the side that a session of a read
  replica pays for a question another session already asked on the primary. Also
  ``query_shared_over_local_hit_ratio`` (the shared table over the session's own cache).
- ``query_log_overhead_ratio``: ``search_text`` (query vectors cached, so that the endpoint's
  latency does not dilute it) with the query log on at a sample rate of 1 (every search
  written) over the log off. Also ``query_log_overhead_ratio_vector``: the same for
  ``pgingest.search(vector)``.

``run(database_url)`` returns the figures (keys above, plus the medians in ms and the sizes);
``python -m bench.queries`` prints them. bench/run.py wires the keys into ``make bench``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

from bench.common import (
    Child,
    fresh_database,
    log,
    read_line,
    register_model,
    run_worker_drain,
    server_url,
)

__all__ = ["run"]


def _queries(n: int) -> list[str]:
    """``n`` distinct natural-language questions (the demo queries, then variations)."""
    from pgingest.demo.corpus import DEMO_QUERIES

    base = [q.query for q in DEMO_QUERIES]
    topics = (
        "parse a date string",
        "read a compressed file",
        "sort records by a key",
        "retry a failed request",
        "hash a password safely",
        "copy a directory tree",
        "format a number with commas",
        "match a regular expression",
    )
    out = list(base)
    i = 0
    while len(out) < n:
        out.append(f"how do I {topics[i % len(topics)]} (case {i})")
        i += 1
    return out[:n]


def _timed(conn: psycopg.Connection[Any], query: str, params: tuple[Any, ...]) -> float:
    t0 = time.perf_counter()
    conn.execute(query, params).fetchall()
    return (time.perf_counter() - t0) * 1000


def _start_local_model() -> tuple[Child, str]:
    server = Child(
        "serve-model",
        [sys.executable, "-m", "pgingest.cli", "serve-model", "--port", "0"],
        stdout=subprocess.PIPE,
    )
    line = read_line(server, 300.0, "serving")
    return server, line.split(" at ", 1)[1].split()[0]


def run(
    database_url: str,
    *,
    model_url: str | None = None,
    documents: int = 200,
    queries: int = 24,
    rounds: int = 4,
    k: int = 10,
    workdir: Path | None = None,
) -> dict[str, float]:
    """The ratios of issue 20 in one fresh database on ``database_url``'s server.

    ``model_url``: an OpenAI-compatible endpoint serving ``all-MiniLM-L6-v2`` (384 dimensions);
    None starts ``pgingest serve-model`` (the local model) for the run. ``documents`` of the demo
    corpus are embedded first (HNSW index built), then ``rounds`` interleaved rounds of
    ``queries`` searches per side."""
    from pgingest import db, local_model
    from pgingest.demo import corpus

    server: Child | None = None
    if model_url is None:
        log("queries: starting pgingest serve-model (the local model)")
        server, model_url = _start_local_model()
    tmp = Path(tempfile.mkdtemp(prefix="pgingest-bench-queries-")) if workdir is None else workdir
    texts = _queries(queries)
    try:
        with (
            fresh_database(database_url, "queries") as dsn,
            db.connect(dsn, application_name="pgingest-bench") as conn,
        ):
            register_model(
                conn,
                "v1",
                local_model.MODEL_NAME,
                local_model.DIMENSIONS,
                model_url,
                max_input_tokens=local_model.MAX_INPUT_TOKENS,
                index_method="hnsw",
            )
            docs = list(corpus.iter_corpus(limit=documents))
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO pgingest.documents (key, title, body) VALUES (%s, %s, %s)",
                    [(d.key, d.title, d.body) for d in docs],
                )
            log(f"queries: embedding {len(docs)} documents")
            run_worker_drain(dsn, tmp / "worker-queries.log", 900.0)
            ddl = conn.execute("SELECT pgingest.index_ddl('v1', false)").fetchone()
            assert ddl is not None
            conn.execute(ddl[0])
            chunks = int(conn.execute("SELECT count(*) FROM pgingest.chunks").fetchone()[0])  # type: ignore[index]

            search_text = "SELECT * FROM pgingest.search_text(%s, %s)"
            vectors = {
                q: conn.execute("SELECT pgingest.embed_query(%s)::text", (q,)).fetchone()[0]  # type: ignore[index]
                for q in texts
            }
            search_vec = "SELECT * FROM pgingest.search(%s::vector, %s)"
            # Warm-up (plans, the provider's connection, the cache): not measured.
            for q in texts:
                conn.execute(search_text, (q, k)).fetchall()
                conn.execute(search_vec, (vectors[q], k)).fetchall()

            hit: list[float] = []
            miss: list[float] = []
            shared: list[float] = []
            log_on: list[float] = []
            log_off: list[float] = []
            vec_on: list[float] = []
            vec_off: list[float] = []
            for r in range(rounds):
                # Cache: hits of the session's cache (warm), of the shared table (the session's
                # cache off; the warm-up stored every row) and misses (both off: every search
                # embeds).
                sides = ("hit", "shared", "miss")
                for side in sides if r % 2 == 0 else sides[::-1]:
                    conn.execute(
                        "SELECT set_config('pgingest.query_cache_entries', %s, false),"
                        " set_config('pgingest.query_cache_shared', %s, false)",
                        ("256" if side == "hit" else "0", "off" if side == "miss" else "on"),
                    )
                    into = {"hit": hit, "shared": shared, "miss": miss}[side]
                    for q in texts:
                        into.append(_timed(conn, search_text, (q, k)))
                conn.execute("RESET pgingest.query_cache_entries")
                conn.execute("RESET pgingest.query_cache_shared")
                for q in texts:  # the cache warm again for the log rounds
                    conn.execute(search_text, (q, k)).fetchall()
                # Query log: every search written (rate 1) or none.
                for side in ("on", "off") if r % 2 == 0 else ("off", "on"):
                    conn.execute(
                        "SELECT pgingest.set_query_log(%s)", (1.0 if side == "on" else 0.0,)
                    )
                    for q in texts:
                        t = _timed(conn, search_text, (q, k))
                        (log_on if side == "on" else log_off).append(t)
                        t = _timed(conn, search_vec, (vectors[q], k))
                        (vec_on if side == "on" else vec_off).append(t)
            conn.execute("SELECT pgingest.set_query_log(0)")
            logged = int(conn.execute("SELECT count(*) FROM pgingest.query_log").fetchone()[0])  # type: ignore[index]
            shared_hits = int(
                conn.execute("SELECT hits FROM pgingest.query_cache_shared_stats()").fetchone()[0]  # type: ignore[index]
            )
    finally:
        if server is not None:
            server.stop(30.0)
            if server.proc.stdout is not None:
                server.proc.stdout.close()

    def med(xs: list[float]) -> float:
        return statistics.median(xs)

    return {
        "query_cache_hit_latency_ratio": round(med(hit) / med(miss), 4),
        "query_cache_hit_ms": round(med(hit), 3),
        "query_cache_miss_ms": round(med(miss), 3),
        "query_shared_cache_hit_latency_ratio": round(med(shared) / med(miss), 4),
        "query_shared_over_local_hit_ratio": round(med(shared) / med(hit), 4),
        "query_shared_cache_hit_ms": round(med(shared), 3),
        "query_shared_cache_hits": float(shared_hits),
        "query_log_overhead_ratio": round(med(log_on) / med(log_off), 4),
        "query_log_on_ms": round(med(log_on), 3),
        "query_log_off_ms": round(med(log_off), 3),
        "query_log_overhead_ratio_vector": round(med(vec_on) / med(vec_off), 4),
        "query_log_vector_on_ms": round(med(vec_on), 3),
        "query_log_vector_off_ms": round(med(vec_off), 3),
        "queries_documents": float(len(docs)),
        "queries_chunks": float(chunks),
        "queries_searches_per_side": float(len(hit)),
        "queries_logged_rows": float(logged),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.queries", description=__doc__)
    p.add_argument("--database-url", default=None, help="default: $DATABASE_URL's server")
    p.add_argument("--model-url", help="an all-MiniLM-L6-v2 endpoint (default: serve-model)")
    p.add_argument("--documents", type=int, default=200)
    p.add_argument("--queries", type=int, default=24)
    p.add_argument("--rounds", type=int, default=4)
    args = p.parse_args(argv)
    result = run(
        args.database_url or server_url(),
        model_url=args.model_url,
        documents=args.documents,
        queries=args.queries,
        rounds=args.rounds,
    )
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
