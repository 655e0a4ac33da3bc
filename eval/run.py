"""``make eval``: retrieval quality on the project's own question set, through the SQL API.

A fresh database on the server of ``$DATABASE_URL`` (else the private cluster), pgingest installed,
full-text search on (``set_text_search_config('english')``, for hybrid search), the bundled
all-MiniLM-L6-v2 served by ``pgingest serve-model`` and registered as the demo registers it (the
default chunking profile, HNSW), the evaluation corpus loaded (:mod:`eval.dataset`: the demo corpus
with whole bodies) and drained by a ``pgingest worker``. Then every question is embedded once
(``pgingest.embed_query``) and asked of:

* ``vector``: ``pgingest.search(v, 10, per_document => true)`` before the ANN index exists (exact
  nearest neighbours); ``vector_chunks``: the same with ``per_document => false``;
* ``hnsw`` / ``hnsw_chunks``: the same after ``pgingest.index.build_index`` built the model's HNSW
  index (``pg_stat_user_indexes`` checks that the searches used it);
* ``hybrid``: ``pgingest.hybrid_search(q, v, 10, per_document => true)`` with its defaults (BM25
  text side, weighted RRF: ``pgingest.hybrid_search_defaults()``, chosen on the tuning half:
  ``eval/hybrid_defaults.json``); ``hybrid_chunks``: the same per chunk;
  ``hybrid_ts_rank_cd``: per document, the same fusion over a ``ts_rank_cd`` text side;
  ``hybrid_rrf60``: per document, the fusion shipped before issue 21 (``ts_rank_cd``, k 60,
  equal weights).

A per-chunk result names the documents of its 10 chunks, each at its first chunk's rank. Scores:
recall@1/5/10, MRR@10, nDCG@10 and hit@5 (ir-measures: trec_eval's measures), per split (the
``tuning`` and ``heldout`` halves) and per kind of question. Prints a table, writes
``eval-results.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from eval import dataset, scoring, tune
from pgingest import db, index, local_model

ROOT = Path(__file__).resolve().parent.parent
MODEL = "minilm"
K = 10
SYSTEMS = (
    "vector",
    "vector_chunks",
    "hnsw",
    "hnsw_chunks",
    "hybrid",
    "hybrid_chunks",
    "hybrid_ts_rank_cd",
    "hybrid_rrf60",
)
# hybrid_search arguments of each hybrid system (None: its defaults)
HYBRID_VARIANTS: dict[str, dict[str, Any]] = {
    "hybrid": {"per_document": True},
    "hybrid_chunks": {"per_document": False},
    "hybrid_ts_rank_cd": {"per_document": True, "text_ranking": "ts_rank_cd"},
    "hybrid_rrf60": {
        "per_document": True,
        "text_ranking": "ts_rank_cd",
        "vector_weight": 1.0,
        "text_weight": 1.0,
        "rrf_k": 60,
    },
}
# Chunking profiles compared by exact vector search (one model each, the same encoder): register
# parameters over the default profile (MiniLM tokenizer, 200 tokens, 20 overlap, title in chunks).
PROFILES: dict[str, dict[str, Any]] = {
    "default": {},
    "no_title": {"title_in_chunks": False},
    "small": {"chunk_max_tokens": 100, "chunk_overlap_tokens": 10},
}

DEFAULTS_PATH = ROOT / "eval" / "hybrid_defaults.json"

_T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[eval {time.monotonic() - _T0:6.1f} s] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- pipeline


def model_name(profile: str) -> str:
    return MODEL if profile == "default" else f"{MODEL}_{profile}"


def setup(conn: psycopg.Connection[Any], base_url: str, profiles: Sequence[str]) -> None:
    """Full-text search on (hybrid needs chunks.tsv; set before any chunk exists), then the local
    model registered as the demo does (default chunking profile, HNSW index method; active), and
    once more per other profile compared (a shadow model with its own chunks and store)."""
    conn.execute("SELECT pgingest.set_text_search_config('english')")
    for profile in ("default", *(p for p in profiles if p != "default")):
        db.register_model(
            conn,
            model_name(profile),
            local_model.MODEL_NAME,
            local_model.DIMENSIONS,
            base_url,
            max_input_tokens=local_model.MAX_INPUT_TOKENS,
            **PROFILES[profile],
        )


def profile_chunks(conn: psycopg.Connection[Any], model: str) -> tuple[int, int]:
    """(chunks, tokens) of ``model``'s chunking profile."""
    row = conn.execute(
        "SELECT count(*), coalesce(sum(c.token_count), 0) FROM pgingest.chunks AS c"
        " JOIN pgingest.models AS m ON m.profile_id = c.profile_id WHERE m.name = %s",
        (model,),
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def drain(
    conn: psycopg.Connection[Any], dsn: str, models: Sequence[str], log_path: Path, timeout: float
) -> float:
    """Runs one worker until every document is embedded (or dead-lettered) for every model;
    returns seconds."""
    argv = [sys.executable, "-m", "pgingest.cli", "worker", "--database-url", dsn]
    argv += ["--in-flight", "2", "--batch-size", "32"]
    for m in models:
        argv += ["--model", m]
    start = time.monotonic()
    with log_path.open("ab") as fh:
        worker = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT)
        try:
            last = 0.0
            while True:
                total = done = dead = 0
                for m in models:
                    t, d, x = db.model_progress(conn, m)
                    total, done, dead = total + t, done + d, dead + x
                elapsed = time.monotonic() - start
                if done + dead >= total:
                    break
                if worker.poll() is not None:
                    raise RuntimeError(
                        f"the worker exited early (rc {worker.returncode}): {log_path}"
                    )
                if elapsed > timeout:
                    raise TimeoutError(f"not drained within {timeout:.0f} s ({done}/{total})")
                if elapsed - last >= 10:
                    last = elapsed
                    rate = done / elapsed if elapsed else 0.0
                    log(
                        f"  embedded {done}/{total} (documents x models; {rate:.1f}/s, {dead} dead)"
                    )
                time.sleep(0.5)
        finally:
            worker.terminate()
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
    return time.monotonic() - start


def index_scans(conn: psycopg.Connection[Any], index_name: str) -> int:
    """Scans of ``index_name`` so far (this backend's counts flushed first)."""
    conn.execute("SELECT pg_stat_force_next_flush()")
    row = conn.execute(
        "SELECT coalesce(sum(idx_scan), 0) FROM pg_stat_user_indexes WHERE indexrelname = %s",
        (index_name,),
    ).fetchone()
    return int(row[0]) if row else 0


# --------------------------------------------------------------------------- searches

Search = Callable[[psycopg.Connection[Any], dataset.Question, Any], list[str]]


def _distinct(keys: Sequence[str], k: int = K) -> list[str]:
    out: list[str] = []
    for key in keys:
        if key not in out:
            out.append(key)
    return out[:k]


def vector_search(per_document: bool, model: str = MODEL) -> Search:
    def run(conn: psycopg.Connection[Any], q: dataset.Question, vec: Any) -> list[str]:
        rows = conn.execute(
            "SELECT doc_key FROM pgingest.search(%s, %s, per_document => %s, model => %s)",
            (vec, K, per_document, model),
        ).fetchall()
        return _distinct([str(r[0]) for r in rows])

    return run


def hybrid_search(**options: Any) -> Search:
    named = sql.SQL("").join(
        sql.SQL(", {} => {}").format(sql.Identifier(name), sql.Placeholder(name))
        for name in sorted(options)
    )
    query = sql.SQL("SELECT doc_key FROM pgingest.hybrid_search(%(q)s, %(v)s, %(k)s{})").format(
        named
    )

    def run(conn: psycopg.Connection[Any], q: dataset.Question, vec: Any) -> list[str]:
        rows = conn.execute(query, {"q": q.text, "v": vec, "k": K, **options}).fetchall()
        return _distinct([str(r[0]) for r in rows])

    return run


def ask_all(
    conn: psycopg.Connection[Any],
    name: str,
    search: Search,
    questions: Sequence[dataset.Question],
    vectors: dict[str, Any],
    latencies: dict[str, list[float]],
) -> dict[str, list[str]]:
    ranked: dict[str, list[str]] = {}
    times: list[float] = []
    for q in questions:
        t0 = time.perf_counter()
        ranked[q.id] = search(conn, q, vectors[q.id])
        times.append((time.perf_counter() - t0) * 1000)
    latencies[name] = times
    log(f"  {name}: {len(questions)} searches, median {statistics.median(times):.1f} ms")
    return ranked


# --------------------------------------------------------------------------- report


def print_table(results: dict[str, Any], questions: Sequence[dataset.Question]) -> None:
    cols = scoring.METRICS
    n = {s: sum(1 for q in questions if q.split == s) for s in dataset.SPLITS}
    for split in ("heldout", "tuning"):
        print(f"\n{split} half ({n[split]} questions), per document unless *_chunks")
        print(f"  {'system':<18}" + "".join(f"{c:>11}" for c in cols))
        for system in SYSTEMS:
            m = results[split][system]
            print(f"  {system:<18}" + "".join(f"{m[c]:>11.3f}" for c in cols))
    print("\nall questions by kind: recall@5 / MRR@10 (per document unless *_chunks)")
    kinds = results["by_kind"]
    heads = [f"{k} ({kinds[k]['n']})" for k in dataset.KINDS]
    print(f"  {'system':<18}" + "".join(f"{h:>22}" for h in heads))
    for system in SYSTEMS:
        cells = [
            f"{kinds[k][system]['recall@5']:.3f} / {kinds[k][system]['mrr@10']:.3f}"
            for k in dataset.KINDS
        ]
        print(f"  {system:<18}" + "".join(f"{c:>22}" for c in cells))


def print_profiles(profiles: dict[str, Any]) -> None:
    cols = ("recall@5", "mrr@10", "ndcg@10")
    print("\nchunking profiles: exact vector search, per document (heldout | tuning)")
    print(
        f"  {'profile':<10}{'chunks':>8}{'tokens':>9}  "
        + "".join(f"{c:>10}" for c in cols)
        + "  |"
        + "".join(f"{c:>10}" for c in cols)
    )
    for name, p in profiles.items():
        print(
            f"  {name:<10}{p['chunks']:>8}{p['tokens']:>9}  "
            + "".join(f"{p['heldout'][c]:>10.3f}" for c in cols)
            + "  |"
            + "".join(f"{p['tuning'][c]:>10.3f}" for c in cols)
        )
    print(
        "  (default: MiniLM tokens, 200 a chunk, 20 overlap, title in every chunk; others:", end=""
    )
    print(
        " "
        + "; ".join(
            f"{n} {json.dumps(p['settings'])}" for n, p in profiles.items() if n != "default"
        )
        + ")"
    )


def print_tuning(tuning: dict[str, Any], shipped: dict[str, Any] | None) -> None:
    print(f"\nhybrid fusion grid ({len(tuning['grid'])} points; {tuning['criterion']})")
    cols = ("recall@5", "mrr@10", "ndcg@10")
    print(
        f"  {'text':<11}{'rrf_k':>6}{'w_text':>7}  "
        + "".join(f"{c:>9}" for c in cols)
        + "  |"
        + "".join(f"{c:>9}" for c in cols)
        + "   (tuning | heldout)"
    )
    for ranking in tune.RANKINGS:
        rows = [r for r in tuning["grid"] if r["text_ranking"] == ranking]
        top = sorted(rows, key=lambda r: -(r["tuning"]["recall@5"] + r["tuning"]["mrr@10"]))[:3]
        for r in top:
            print(
                f"  {ranking:<11}{r['rrf_k']:>6}{r['text_weight']:>7}  "
                + "".join(f"{r['tuning'][c]:>9.3f}" for c in cols)
                + "  |"
                + "".join(f"{r['heldout'][c]:>9.3f}" for c in cols)
            )
    same = shipped == tuning["chosen"]
    print(
        f"  chosen: {json.dumps(tuning['chosen'])}; shipped defaults"
        f" {'are the same' if same else 'DIFFER: ' + json.dumps(shipped)}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    from bench.common import fresh_database, serve_model, server_url

    p = argparse.ArgumentParser(prog="python -m eval.run", description=__doc__)
    p.add_argument("--database-url", default=None, help="the server (default: make's URL)")
    p.add_argument("--output", default=str(ROOT / "eval-results.json"))
    p.add_argument("--keep-database", action="store_true", help="do not drop the database")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds for the drain")
    p.add_argument("--log-dir", default=str(ROOT / ".pgdata"))
    p.add_argument(
        "--write-defaults",
        action="store_true",
        help=f"record the grid's choice in {DEFAULTS_PATH.relative_to(ROOT)}",
    )
    p.add_argument(
        "--profiles",
        default="default,no_title",
        help=f"chunking profiles compared, comma-separated, among {', '.join(PROFILES)}"
        " (each one embeds the corpus again: about 100 s here)",
    )
    args = p.parse_args(argv)
    profiles = ["default"] + [x for x in args.profiles.split(",") if x and x != "default"]
    unknown = [x for x in profiles if x not in PROFILES]
    if unknown:
        p.error(f"unknown profile(s) {', '.join(unknown)}")
    models = [model_name(x) for x in profiles]

    url = args.database_url or server_url()
    log_dir = Path(args.log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    log("reading the corpus and checking the question set")
    docs = dataset.eval_documents()
    questions = dataset.load_questions(docs)
    log(f"{len(docs)} documents, {len(questions)} questions")

    log("starting pgingest serve-model (all-MiniLM-L6-v2, CPU)")
    with (
        serve_model([q.text for q in questions]) as model,
        fresh_database(url, "eval", keep=args.keep_database) as dsn,
    ):
        conn = db.connect(dsn)
        try:
            setup(conn, model.url, profiles)
            t0 = time.monotonic()
            db.upsert_documents(conn, [(d.key, d.title, d.body, d.metadata) for d in docs])
            timings["load_s"] = time.monotonic() - t0
            log(f"loaded {len(docs)} documents; one worker embeds them for {', '.join(models)}")
            worker_log = log_dir / "eval-worker.log"
            timings["embed_s"] = drain(conn, dsn, models, worker_log, args.timeout)
            sizes: dict[str, tuple[int, int]] = {}
            for profile, m in zip(profiles, models, strict=True):
                total, done, dead = db.model_progress(conn, m)
                sizes[profile] = profile_chunks(conn, m)
                log(f"  {m}: {done}/{total} documents, {sizes[profile][0]} chunks, {dead} dead")
                if dead:
                    raise RuntimeError(f"{m}: {dead} documents dead-lettered: see {worker_log}")
            chunks, tokens = sizes["default"]

            log("embedding the questions (pgingest.embed_query)")
            vectors: dict[str, Any] = {}
            embed_ms: list[float] = []
            for q in questions:
                t = time.perf_counter()
                row = conn.execute("SELECT pgingest.embed_query(%s)", (q.text,)).fetchone()
                embed_ms.append((time.perf_counter() - t) * 1000)
                assert row is not None
                vectors[q.id] = row[0]

            latencies: dict[str, list[float]] = {"embed_query": embed_ms}
            runs: dict[str, dict[str, list[str]]] = {}
            log("exact search (no ANN index yet)")
            if any(db.model_index_status(conn, m)[0]["present"] for m in models):
                raise RuntimeError("an ANN index exists already: exact search is not exact")
            for name, search in (
                ("vector", vector_search(True)),
                ("vector_chunks", vector_search(False)),
            ):
                runs[name] = ask_all(conn, name, search, questions, vectors, latencies)
            profile_runs = {"default": runs["vector"]}
            for profile, m in zip(profiles[1:], models[1:], strict=True):
                profile_runs[profile] = ask_all(
                    conn, f"vector {profile}", vector_search(True, m), questions, vectors, latencies
                )

            log("building the HNSW index (pgingest.index.build_index)")
            built = index.build_index(dsn, MODEL, progress=False)
            timings["index_s"] = built.seconds
            log(f"  {built.index_name}: {built.action} in {built.seconds:.1f} s")
            # On a store this small the planner reads every vector for a per-document search
            # (LIMIT k * 8) rather than walk the graph: the graph is measured with seqscan off,
            # and the index's scan counter proves each search walked it.
            scans = index_scans(conn, built.index_name)
            conn.execute("SET enable_seqscan = off")
            for name, search in (
                ("hnsw", vector_search(True)),
                ("hnsw_chunks", vector_search(False)),
            ):
                runs[name] = ask_all(conn, name, search, questions, vectors, latencies)
            conn.execute("RESET enable_seqscan")
            hnsw_scans = index_scans(conn, built.index_name) - scans
            scans += hnsw_scans
            if hnsw_scans < 2 * len(questions):
                raise RuntimeError(f"the HNSW searches scanned the index {hnsw_scans} times")
            log("hybrid search (pgingest.hybrid_search, planner's choice)")
            # BM25's chunk count is PostgreSQL's estimate (pg_class.reltuples): analysed as
            # autovacuum would after the load.
            conn.execute("ANALYZE pgingest.chunks")
            for name, options in HYBRID_VARIANTS.items():
                runs[name] = ask_all(
                    conn, name, hybrid_search(**options), questions, vectors, latencies
                )
            results_defaults = conn.execute(
                "SELECT row_to_json(d) FROM pgingest.hybrid_search_defaults() AS d"
            ).fetchone()
            log("the hybrid fusion grid on the tuning half (eval/tune.py)")
            t0 = time.monotonic()
            tuning = tune.run_grid(conn, questions, vectors)
            timings["tune_s"] = time.monotonic() - t0
            hybrid_scans = index_scans(conn, built.index_name) - scans
        finally:
            conn.close()

    results = scoring.score_all(runs, questions)
    by_profile = scoring.score_all(profile_runs, questions)
    results["profiles"] = {
        profile: {
            "settings": PROFILES[profile],
            "chunks": sizes[profile][0],
            "tokens": sizes[profile][1],
            **{split: by_profile[split][profile] for split in dataset.SPLITS},
        }
        for profile in profiles
    }
    results["latency_ms_median"] = {k: round(statistics.median(v), 2) for k, v in latencies.items()}
    results["index_scans"] = {"hnsw_searches": hnsw_scans, "hybrid_searches": hybrid_scans}
    results["hybrid_defaults"] = results_defaults[0] if results_defaults else None
    results["hybrid_tuning"] = tuning
    if args.write_defaults:
        record = json.loads(DEFAULTS_PATH.read_text()) if DEFAULTS_PATH.exists() else {}
        record.update({k: tuning[k] for k in ("criterion", "chosen", "chosen_figures")})
        DEFAULTS_PATH.write_text(json.dumps(record, indent=2) + "\n")
    results["corpus"] = {
        "documents": len(docs),
        "chunks": chunks,
        "tokens": tokens,
        "longest_body_chars": max(len(d.body) for d in docs),
        "questions": {s: sum(1 for q in questions if q.split == s) for s in dataset.SPLITS},
    }
    results["timings_s"] = {k: round(v, 1) for k, v in timings.items()}
    results["timings_s"]["total_s"] = round(time.monotonic() - _T0, 1)
    results["distinct_docs_in_top10_chunks"] = {
        name: round(statistics.mean(len(r) for r in runs[name].values()), 2)
        for name in ("vector_chunks", "hnsw_chunks", "hybrid_chunks")
    }
    results["per_question"] = scoring.first_relevant_ranks(runs, questions)
    Path(args.output).write_text(json.dumps(results, indent=2) + "\n")
    print_table(results, questions)
    print_profiles(results["profiles"])
    print_tuning(tuning, results["hybrid_defaults"])
    print(f"\nmedian latency (ms): {json.dumps(results['latency_ms_median'])}")
    print(f"wrote {args.output} in {results['timings_s']['total_s']:.0f} s")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    raise SystemExit(main())
