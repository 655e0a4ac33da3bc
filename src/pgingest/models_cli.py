"""``pgingest model add|list|index|compare|swap|retire|resume|backfill``: the model lifecycle.

``cli.py`` calls :func:`add_model_commands` with its subparsers. Every command takes
``--database-url`` (default ``$DATABASE_URL``, else the libpq ``PG*`` variables). The SQL lives in
``sql/030_models.sql`` and ``sql/040_lifecycle.sql`` (called through ``db``); a DBA can do the same
from psql (docs/model-lifecycle.md).

Exit codes (``cli_support``): 0 done, 1 error, 2 invalid arguments (bad model name, unknown
model), 3 refused (``swap`` before the backfill or the index is complete, ``retire`` of the
active model). The comparison itself lives in ``compare.py``; this module parses and prints.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pgingest import cli_support
from pgingest.cli_support import EXIT_ERROR, EXIT_INVALID, EXIT_REFUSED
from pgingest.compare import CompareReport, ModelSide, compare_models

if TYPE_CHECKING:  # imported lazily at run time: `pgingest --help` stays fast
    import psycopg

__all__ = [
    "EXIT_ERROR",
    "EXIT_INVALID",
    "EXIT_REFUSED",
    "CompareReport",  # re-exported from pgingest.compare, where the comparison lives
    "ModelSide",
    "add_model_commands",
    "compare_models",
    "format_compare",
    "format_models",
    "list_models",
]


# -- argument parsing ------------------------------------------------------------------------


def add_model_commands(subparsers: Any) -> argparse.ArgumentParser:
    """Adds ``model`` and its sub-commands to ``subparsers`` (from ``add_subparsers()``)."""
    model = subparsers.add_parser(
        "model",
        help="model lifecycle: add, list, index, compare, swap, retire, resume",
        description="Model lifecycle: shadow (dual write + backfill) -> active -> standby -> "
        "retired. See docs/model-lifecycle.md.",
    )
    sub = model.add_subparsers(dest="model_command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "add",
        help="register a model: store, chunking profile, queue, backfill, dual write",
        description="Registers a model. The first one becomes active; later ones start in "
        "shadow: every new or changed document is embedded for them too, and the workers queue "
        "a backfill of the existing documents in bounded batches.",
    )
    cli_support.add_database_url(p)
    p.add_argument("name", help="model name: a lower-case letter, then letters, digits or _")
    p.add_argument("--model-id", required=True, help="the provider's model id")
    p.add_argument("--dimensions", type=int, required=True)
    p.add_argument("--base-url", required=True, help="OpenAI-compatible base URL (…/v1)")
    p.add_argument(
        "--allow-insecure-http",
        action="store_true",
        help="accept an http:// --base-url on a host that is not loopback (the API key then "
        "travels in cleartext); without it http:// is for 127.0.0.0/8, [::1] and localhost only",
    )
    p.add_argument("--storage", choices=("vector", "halfvec"), default="vector")
    p.add_argument("--metric", choices=("cosine", "ip", "l2"), default="cosine")
    p.add_argument(
        "--max-input-tokens",
        type=int,
        default=256,
        help="the model's context; must be at least its chunking profile's max tokens",
    )
    p.add_argument(
        "--chunk-tokenizer",
        choices=("all-MiniLM-L6-v2", "heuristic"),
        help="chunking profile: tokenizer (default: config chunk_tokenizer)",
    )
    p.add_argument(
        "--chunk-max-tokens",
        type=int,
        help="chunking profile: tokens per chunk, title and special tokens included "
        "(default: config chunk_max_tokens)",
    )
    p.add_argument(
        "--chunk-overlap-tokens",
        type=int,
        help="chunking profile: overlap between chunks (default: config chunk_overlap_tokens)",
    )
    p.add_argument(
        "--title-in-chunks",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="chunking profile: the title in every chunk (default: config chunk_include_title)",
    )
    p.add_argument("--api-key-env", help="environment variable of the workers holding the key")
    p.add_argument("--index-method", choices=("hnsw", "ivfflat", "none"), default="hnsw")
    p.add_argument("--m", type=int, help="hnsw: links per node (default 16)")
    p.add_argument("--ef-construction", type=int, help="hnsw: build candidate list (default 64)")
    p.add_argument("--lists", type=int, help="ivfflat: lists (default rows/1000 at build time)")
    p.add_argument(
        "--request-dimensions",
        action="store_true",
        help="send `dimensions` to the provider (models that can shorten their vectors)",
    )
    p.add_argument(
        "--backfill",
        action="store_true",
        help="queue the whole backfill now (CALL pgingest.run_backfill) instead of by the workers",
    )
    _quota_arguments(p)
    p.add_argument(
        "--batch-api",
        action="store_true",
        help="send its backfill through the provider's Batch API (about half the price, done"
        " within 24 h; live writes stay online)",
    )
    p.set_defaults(func=cmd_add)

    p = sub.add_parser("list", help="models with state, backfill progress and index")
    cli_support.add_database_url(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser(
        "index",
        help="build a model's ANN index (CREATE INDEX CONCURRENTLY, with progress)",
        description="Builds the model's HNSW or IVFFlat index concurrently. An invalid index left "
        "by a failed build is dropped and built again. Build after the backfill: much faster "
        "than inserting into a live index.",
    )
    cli_support.add_database_url(p)
    p.add_argument("name")
    p.add_argument("--maintenance-work-mem", help="e.g. 1GB (SET for the building session)")
    p.add_argument(
        "--parallel-workers",
        type=int,
        help="max_parallel_maintenance_workers for the building session",
    )
    p.add_argument("--rebuild", action="store_true", help="rebuild a valid index (REINDEX)")
    p.add_argument(
        "--wait",
        action="store_true",
        help="wait until the model's backfill is complete, then build",
    )
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser(
        "compare",
        help="compare two models on sample or logged queries: top-k overlap, recall, latency",
        description="Embeds sample queries (or, with --from-log, the queries users asked) "
        "through both models' endpoints and reports the overlap of their top-k documents, how "
        "many of A's documents B finds, each index's recall against exact search on the same "
        "store, search latency p50/p95 and the queries on which they disagree most.",
    )
    cli_support.add_database_url(p)
    p.add_argument("a", help="model A (usually the active one)")
    p.add_argument("b", help="model B (usually the candidate)")
    p.add_argument(
        "--queries",
        type=Path,
        help="file of query texts, one per line (default: the first chunk of random documents)",
    )
    p.add_argument(
        "--from-log",
        action="store_true",
        help="the queries users asked: the --sample most asked of pgingest.query_log (needs the "
        "log on with text logging: SELECT pgingest.set_query_log(0.05, log_text => true))",
    )
    p.add_argument("--k", type=int, default=10)
    p.add_argument(
        "--sample", type=int, default=50, help="queries drawn from the corpus (or the log)"
    )
    p.add_argument("--seed", type=float, help="seed (-1..1) for the corpus sample")
    p.add_argument("--ef-search", type=int, help="hnsw.ef_search for the searches")
    p.add_argument("--probes", type=int, help="ivfflat.probes for the searches")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser(
        "swap",
        help="make a model active (the active one becomes standby); swap back to roll back",
    )
    cli_support.add_database_url(p)
    p.add_argument("name")
    p.add_argument(
        "--force",
        action="store_true",
        help="swap even though the backfill or the index is incomplete",
    )
    p.set_defaults(func=cmd_swap)

    p = sub.add_parser(
        "retire",
        help="drop a non-active model's store (with its index), queue and state",
    )
    cli_support.add_database_url(p)
    p.add_argument("name")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.set_defaults(func=cmd_retire)

    p = sub.add_parser("resume", help="resume a paused model")
    cli_support.add_database_url(p)
    p.add_argument("name")
    p.set_defaults(func=cmd_resume)

    p = sub.add_parser(
        "quota",
        help="the provider's quota (requests and tokens per minute) that every worker of the"
        " model stays within together; no option: show it",
    )
    cli_support.add_database_url(p)
    p.add_argument("name")
    _quota_arguments(p)
    p.add_argument(
        "--clear",
        action="store_true",
        help="forget the configured quota (the workers learn it from the x-ratelimit-* headers)",
    )
    p.set_defaults(func=cmd_quota)

    p = sub.add_parser(
        "batch-api",
        help="whether the model's backfills go through the provider's Batch API (on) or online"
        " (off); no argument: show its provider batches",
    )
    cli_support.add_database_url(p)
    p.add_argument("name")
    p.add_argument("switch", nargs="?", choices=("on", "off"))
    p.set_defaults(func=cmd_batch_api)

    p = sub.add_parser("backfill", help="queue a model's whole backfill now (run_backfill)")
    cli_support.add_database_url(p)
    p.add_argument("name")
    p.add_argument("--batch", type=int, default=5000, help="documents per committed batch")
    p.set_defaults(func=cmd_backfill)
    return model


# -- helpers ---------------------------------------------------------------------------------


def _quota_arguments(p: argparse.ArgumentParser) -> None:
    # Checked here, as pgingest.set_model_quota checks them: `model add` refuses a bad value
    # before it registers anything (review finding 7).
    p.add_argument(
        "--rpm",
        type=cli_support.positive_float,
        help="the provider's requests per minute for this model",
    )
    p.add_argument(
        "--tpm",
        type=cli_support.positive_float,
        help="the provider's tokens per minute for this model",
    )
    p.add_argument(
        "--headroom",
        type=cli_support.share,
        default=0.03,
        help="share of the quota never used (default %(default)s: token counts are estimates)",
    )


def _connect(args: argparse.Namespace) -> psycopg.Connection[Any]:
    from pgingest import db

    return db.connect(args.database_url, application_name="pgingest-model")


def _fmt_eta(eta: timedelta | None) -> str:
    if eta is None:
        return "-"
    s = int(eta.total_seconds())
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


# -- add / list / resume / backfill ------------------------------------------------------------


def _register_model(
    conn: psycopg.Connection[Any], args: argparse.Namespace, options: dict[str, int]
) -> str:
    """``pgingest.register_model(...)`` with every option of ``model add``, allow_insecure_http
    included; returns the new model's state."""
    row = conn.execute(
        "SELECT pgingest.register_model(name => %s, model_id => %s, dimensions => %s,"
        " base_url => %s, storage => %s, metric => %s, max_input_tokens => %s,"
        " api_key_env => %s, index_method => %s, index_options => %s::jsonb,"
        " request_dimensions => %s, chunk_tokenizer => %s, chunk_max_tokens => %s,"
        " chunk_overlap_tokens => %s, title_in_chunks => %s, allow_insecure_http => %s)",
        (
            args.name,
            args.model_id,
            args.dimensions,
            args.base_url,
            args.storage,
            args.metric,
            args.max_input_tokens,
            args.api_key_env,
            args.index_method,
            json.dumps(options),
            args.request_dimensions,
            args.chunk_tokenizer,
            args.chunk_max_tokens,
            args.chunk_overlap_tokens,
            args.title_in_chunks,
            args.allow_insecure_http,
        ),
    ).fetchone()
    assert row is not None
    return str(row[0])


def cmd_add(args: argparse.Namespace) -> int:
    from pgingest import db

    options: dict[str, int] = {}
    for key in ("m", "ef_construction", "lists"):
        value = getattr(args, key)
        if value is not None:
            options[key] = value

    def run() -> int:
        with _connect(args) as conn:
            cli_support.print_notices(conn, sys.stderr)
            # One transaction: a quota or Batch API setting refused leaves no model registered
            # (review finding 7); the backfill below commits in batches, so it comes after.
            with conn.transaction():
                state = _register_model(conn, args, options)
                quota = None
                if args.rpm is not None or args.tpm is not None:
                    quota = _set_quota(conn, args, show=False)
                batch_api = None
                if args.batch_api:
                    row = conn.execute("SELECT pgingest.set_model_batch_api(%s)", (args.name,))
                    batch_api = row.fetchone()[0]  # type: ignore[index]
            print(
                f"registered model {args.name} ({state}): store store_{args.name} "
                f"{args.storage}({args.dimensions}) {args.metric}, queue pgingest_{args.name}"
            )
            for line in (quota, batch_api):
                if line is not None:
                    print(line)
            if args.backfill:
                db.run_backfill(conn, args.name)
                print(f"backfill of {args.name} queued")
            else:
                print(
                    "the workers queue its backfill in batches; new documents are embedded for it"
                )
            if state == "shadow":
                print(
                    f"next: pgingest model list; pgingest model index {args.name} --wait; "
                    f"pgingest model compare <active> {args.name}; pgingest model swap {args.name}"
                )
        return 0

    return cli_support.run_reporting_db_errors("pgingest model add", run)


def list_models(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    """One dict per model (retired included): registry, backfill progress and index status."""
    from pgingest import db

    progress = {r["model"]: r for r in db.backfill_progress(conn)}
    indexes = {r["model"]: r for r in db.model_index_status(conn)}
    traffic = {r["model"]: r for r in _traffic(conn)}
    out = []
    for m in db.all_models(conn):
        p = progress.get(m["name"], {})
        ix = indexes.get(m["name"], {})
        out.append(
            {
                "name": m["name"],
                "state": m["state"],
                "paused": m["paused"],
                "paused_reason": m["paused_reason"],
                "model_id": m["model_id"],
                "type": f"{m['storage']}({m['dimensions']})",
                "metric": m["metric"],
                "documents": p.get("documents"),
                "embedded": p.get("embedded"),
                "pending": p.get("pending"),
                "dead_lettered": p.get("dead_lettered"),
                "percent": None if p.get("percent") is None else float(p["percent"]),
                "backfill_queued_all": p.get("backfill_queued_all"),
                "rate_per_s": None if p.get("rate_per_s") is None else float(p["rate_per_s"]),
                "eta": p.get("eta"),
                "index_method": m["index_method"],
                "index_name": ix.get("index_name"),
                "index_present": ix.get("present"),
                "index_valid": ix.get("valid"),
                "index_size": ix.get("size"),
                "index_build_phase": ix.get("build_phase"),
                "share": traffic.get(m["name"], {}).get("share"),
                "configured_share": traffic.get(m["name"], {}).get("configured_share"),
                "searches_15min": traffic.get(m["name"], {}).get("logged_searches"),
                "p50_ms": _float(traffic.get(m["name"], {}).get("p50_ms")),
                "p95_ms": _float(traffic.get(m["name"], {}).get("p95_ms")),
            }
        )
    return out


def _float(x: Any) -> float | None:
    return None if x is None else float(x)


def _traffic(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    """``pgingest.traffic_status()`` (shares, and the query log's searches and latency over the
    last 15 minutes), or nothing where the server predates it or this role may not run it."""
    from psycopg.rows import dict_row

    row = conn.execute(
        "SELECT to_regprocedure('pgingest.traffic_status(interval)') IS NOT NULL AND"
        " has_function_privilege(to_regprocedure('pgingest.traffic_status(interval)'), 'EXECUTE')"
    ).fetchone()
    if not row or not row[0]:
        return []
    return (
        conn.cursor(row_factory=dict_row)
        .execute("SELECT * FROM pgingest.traffic_status()")
        .fetchall()
    )


def _index_cell(r: dict[str, Any]) -> str:
    if r["state"] == "retired":
        return "-"
    if r["index_method"] == "none":
        return "none (exact)"
    if r.get("index_build_phase"):
        return f"{r['index_method']} building: {r['index_build_phase']}"
    if not r.get("index_present"):
        return f"{r['index_method']} missing"
    if not r.get("index_valid"):
        return f"{r['index_method']} INVALID"
    return f"{r['index_method']} valid {r.get('index_size') or ''}".rstrip()


def _searches_cell(r: dict[str, Any]) -> str:
    """Logged searches of the last 15 minutes and their latency (the query log, when on)."""
    if not r.get("searches_15min"):
        return "-"
    return f"{r['searches_15min']} ({r['p50_ms']:.1f}/{r['p95_ms']:.1f} ms)"


def _share_cell(r: dict[str, Any]) -> str:
    """The share of the searches the model serves; the configured one besides when it differs
    (a paused candidate serves nothing, review 2026-12-07, item 2)."""
    if r.get("share") is None:
        return "-"
    cell = f"{100 * r['share']:.1f}%"
    configured = r.get("configured_share")
    if configured is not None and abs(configured - r["share"]) > 1e-9:
        cell += f" ({100 * configured:.1f}% set)"
    return cell


def format_models(rows: Sequence[dict[str, Any]]) -> str:
    body = []
    for r in rows:
        live = r["state"] != "retired"
        state = r["state"] + (" (paused)" if r["paused"] else "")
        body.append(
            [
                r["name"],
                state,
                r["model_id"],
                r["type"],
                r["metric"],
                f"{r['embedded']}/{r['documents']}" if live else "-",
                f"{r['percent']:.1f}%" if live and r["percent"] is not None else "-",
                r["pending"] if live else "-",
                r["dead_lettered"] if live else "-",
                ("yes" if r["backfill_queued_all"] else "no") if live else "-",
                f"{r['rate_per_s']:.1f}" if live and r["rate_per_s"] is not None else "-",
                _fmt_eta(r["eta"]) if live else "-",
                _index_cell(r),
                _share_cell(r) if live else "-",
                _searches_cell(r) if live else "-",
            ]
        )
    headers = [
        "model",
        "state",
        "model id",
        "type",
        "metric",
        "embedded",
        "done",
        "pending",
        "dead",
        "all queued",
        "docs/s",
        "eta",
        "index",
        "share",
        "searches 15 min (p50/p95)",
    ]
    text = cli_support.table(headers, body)
    paused = [r for r in rows if r["paused"]]
    for r in paused:
        text += f"\n{r['name']} is paused: {r['paused_reason']}"
    return text


def cmd_list(args: argparse.Namespace) -> int:
    def run() -> int:
        with _connect(args) as conn:
            rows = list_models(conn)
        if args.json:
            print(json.dumps(rows, default=cli_support.json_default, indent=2))
        elif not rows:
            print("no model registered: pgingest model add NAME --model-id ... ")
        else:
            print(format_models(rows))
        return 0

    return cli_support.run_reporting_db_errors("pgingest model list", run)


def _set_quota(
    conn: psycopg.Connection[Any], args: argparse.Namespace, *, show: bool = True
) -> str:
    """``pgingest.set_model_quota`` with ``--rpm``, ``--tpm`` and ``--headroom``; returns the
    line that says so, printed too with ``show``."""
    conn.execute(
        "SELECT pgingest.set_model_quota(%s, %s, %s, %s)",
        (args.name, args.rpm, args.tpm, args.headroom),
    )
    limits = ", ".join(
        f"{v:,.0f} {what} per minute"
        for v, what in ((args.rpm, "requests"), (args.tpm, "tokens"))
        if v is not None
    )
    line = f"model {args.name}: quota {limits}, {args.headroom:.0%} never used"
    if show:
        print(line)
    return line


def _no_live_model(conn: psycopg.Connection[Any], prog: str, name: str) -> bool:
    """True, with the CLI's message for it (as ``model index``), when ``name`` is no live
    model."""
    from pgingest import db

    if db.backfill_progress(conn, name):
        return False
    print(f"{prog}: no live model named {name!r}", file=sys.stderr)
    return True


def quota_rows(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    """``pgingest.quota_status``, one dict per model with a known quota."""
    cur = conn.execute("SELECT * FROM pgingest.quota_status ORDER BY model")
    cols = [d.name for d in cur.description or ()]
    return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]


def quota_line(q: dict[str, Any]) -> str:
    limits = ", ".join(
        f"{v:,.0f} {what}/min"
        for v, what in ((q["requests_per_minute"], "requests"), (q["tokens_per_minute"], "tokens"))
        if v is not None
    )
    return (
        f"{q['model']}: {limits} ({q['source']}, {q['headroom']:.0%} headroom), pace"
        f" {q['pace']:.2f}, {q['rejections']} 429s, {q['taken_tokens']:,} tokens taken,"
        f" {q['waited_seconds']:.0f} s waited"
    )


def cmd_quota(args: argparse.Namespace) -> int:
    def run() -> int:
        with _connect(args) as conn:
            if args.clear:
                conn.execute("SELECT pgingest.set_model_quota(%s)", (args.name,))
                print(f"model {args.name}: no configured quota (learned from the headers)")
            elif args.rpm is not None or args.tpm is not None:
                _set_quota(conn, args)
            rows = [q for q in quota_rows(conn) if q["model"] == args.name]
            if not rows:
                if _no_live_model(conn, "pgingest model quota", args.name):  # review finding 9
                    return EXIT_INVALID
                print(f"model {args.name}: no quota known (none configured, none learned yet)")
            for q in rows:
                print(quota_line(q))
        return 0

    return cli_support.run_reporting_db_errors("pgingest model quota", run)


def cmd_batch_api(args: argparse.Namespace) -> int:
    from pgingest import db, status

    def run() -> int:
        with _connect(args) as conn:
            if args.switch is not None:
                row = conn.execute(
                    "SELECT pgingest.set_model_batch_api(%s, %s)", (args.name, args.switch == "on")
                ).fetchone()
                print(row[0] if row else "")
            on = conn.execute(
                "SELECT batch_api FROM pgingest.models WHERE name = %s", (args.name,)
            ).fetchone()
            if on is None:
                print(f"pgingest model batch-api: no model {args.name}", file=sys.stderr)
                return 2
            print(f"model {args.name}: backfills {'through the Batch API' if on[0] else 'online'}")
            for line in status.provider_batch_lines(db.provider_batch_rows(conn, args.name)):
                print(line)
        return 0

    return cli_support.run_reporting_db_errors("pgingest model batch-api", run)


def cmd_resume(args: argparse.Namespace) -> int:
    from pgingest import db

    def run() -> int:
        with _connect(args) as conn:
            db.resume_model(conn, args.name)
        print(f"model {args.name} resumed")
        return 0

    return cli_support.run_reporting_db_errors("pgingest model resume", run)


def cmd_backfill(args: argparse.Namespace) -> int:
    from pgingest import db

    def run() -> int:
        with _connect(args) as conn:
            # run_backfill does nothing for a name of no live model (review finding 9)
            if _no_live_model(conn, "pgingest model backfill", args.name):
                return EXIT_INVALID
            db.run_backfill(conn, args.name, args.batch)
            p = db.backfill_progress(conn, args.name)
        if p:
            print(
                f"backfill of {args.name} queued: {p[0]['pending']} documents pending, "
                f"{p[0]['embedded']} embedded"
            )
        return 0

    return cli_support.run_reporting_db_errors("pgingest model backfill", run)


# -- index -----------------------------------------------------------------------------------


def cmd_index(args: argparse.Namespace) -> int:
    from pgingest import db, index

    def run() -> int:
        with _connect(args) as conn:
            rows = db.backfill_progress(conn, args.name)
            if not rows:
                print(f"pgingest model index: no live model named {args.name!r}", file=sys.stderr)
                return EXIT_INVALID
            if args.wait:
                stranded_seen = False
                while True:
                    p = db.backfill_progress(conn, args.name)[0]
                    if p["backfill_queued_all"] and p["pending"] == 0:
                        break
                    # Pending versions with nothing queued or in work for them (a dead letter
                    # purged or deleted by hand before review 2026-12-07, item 1): no worker
                    # will ever embed them; waiting would never end. Seen twice in a row, a
                    # second apart, so that a write committing between the two reads is not
                    # taken for one.
                    stranded = (
                        p["backfill_queued_all"] and db.pending_messages(conn, args.name) == 0
                    )
                    if stranded and stranded_seen:
                        print(
                            f"pgingest model index: {p['pending']} documents of {args.name} are "
                            "not embedded and nothing is queued or in work for them (their dead "
                            "letters were purged or deleted): not waiting for them; building the "
                            "index now. swap_model and shift_traffic refuse until they are "
                            "embedded (see docs/model-lifecycle.md, 'Pending documents that "
                            "nothing will embed')",
                            file=sys.stderr,
                        )
                        break
                    if stranded:
                        stranded_seen = True
                        time.sleep(1)
                        continue
                    stranded_seen = False
                    print(
                        f"waiting for the backfill of {args.name}: {p['embedded']}/"
                        f"{p['documents']} embedded, {p['pending']} pending, eta "
                        f"{_fmt_eta(p['eta'])}",
                        file=sys.stderr,
                    )
                    time.sleep(5)
            elif rows[0]["pending"]:
                print(
                    f"note: {rows[0]['pending']} documents of {args.name} are not embedded yet; "
                    "their vectors will go into the live index (slower than building after the "
                    "load: --wait builds once the backfill is done)",
                    file=sys.stderr,
                )
        try:
            res = index.build_index(
                args.database_url,
                args.name,
                maintenance_work_mem=args.maintenance_work_mem,
                parallel_workers=args.parallel_workers,
                rebuild=args.rebuild,
                progress=False if args.no_progress else None,
            )
        except index.IndexBuildError as exc:
            print(f"pgingest model index: {exc}", file=sys.stderr)
            return EXIT_REFUSED
        if res.dropped_invalid:
            print(f"dropped the invalid index {res.index_name} left by a failed build")
        for leftover in res.dropped_leftovers:
            print(f"dropped the invalid index {leftover} left by a failed rebuild")
        if res.action == "exists":
            print(f"index {res.index_name} exists and is valid (--rebuild to rebuild it)")
        else:
            size = f"{(res.size_bytes or 0) / 2**20:.1f} MiB"
            print(
                f"index {res.index_name} {res.action} in {res.seconds:.1f} s ({size}, "
                f"{'valid' if res.valid else 'INVALID'})"
            )
        return 0 if res.valid else EXIT_ERROR

    return cli_support.run_reporting_db_errors("pgingest model index", run)


# -- compare ---------------------------------------------------------------------------------


def format_compare(r: CompareReport) -> str:
    a, b = r.a, r.b

    def recall(s: ModelSide) -> str:
        return "n/a (no index)" if s.recall is None else f"{s.recall:.3f}"

    rows = [
        ["model", f"{a.model_id}", f"{b.model_id}"],
        ["column", f"{a.column_type} {a.metric}", f"{b.column_type} {b.metric}"],
        ["index", a.index, b.index],
        [f"recall@{r.k} vs exact", recall(a), recall(b)],
        [
            "search p50 / p95",
            f"{a.search_p50_ms:.2f} / {a.search_p95_ms:.2f} ms",
            f"{b.search_p50_ms:.2f} / {b.search_p95_ms:.2f} ms",
        ],
        [
            "exact p50 / p95",
            f"{a.exact_p50_ms:.2f} / {a.exact_p95_ms:.2f} ms",
            f"{b.exact_p50_ms:.2f} / {b.exact_p95_ms:.2f} ms",
        ],
        ["embed per query", f"{a.embed_ms_per_query:.2f} ms", f"{b.embed_ms_per_query:.2f} ms"],
    ]
    head = (
        f"compare {a.name} and {b.name}: {r.queries} queries from {r.source}, k = {r.k} "
        f"(hnsw.ef_search {r.settings.get('hnsw.ef_search')}, ivfflat.probes "
        f"{r.settings.get('ivfflat.probes')})\n\n"
    )
    table = cli_support.table(["", f"{a.name} ({a.state})", f"{b.name} ({b.state})"], rows)
    tail = (
        f"\n\ntop-{r.k} document overlap {a.name}/{b.name}: mean {r.overlap_mean:.2f}, "
        f"median {r.overlap_median:.2f}, min {r.overlap_min:.2f} "
        "(share of the documents found by both)"
    )
    if r.b_recall_of_a is not None:
        tail += (
            f"\n{b.name} finds {r.b_recall_of_a:.2f} of {a.name}'s top-{r.k} documents (mean over "
            "the queries)"
        )
    if r.disagreements:
        tail += "\n\nthe queries on which they disagree most (document ids, best first):"
        for d in r.disagreements:
            tail += (
                f"\n  overlap {d.overlap:.2f}  {d.query[:70]!r}\n"
                f"      {a.name}: {d.a_doc_ids}\n      {b.name}: {d.b_doc_ids}"
            )
    return head + table + tail


def cmd_compare(args: argparse.Namespace) -> int:
    from pgingest import providers

    queries: list[str] | None = None
    if args.queries is not None and args.from_log:
        print(
            "pgingest model compare: --queries and --from-log exclude each other", file=sys.stderr
        )
        return EXIT_INVALID
    if args.queries is not None:
        queries = [
            line.strip()
            for line in args.queries.read_text(encoding="utf-8").splitlines()
            if line.strip()
        ]

    def run() -> int:
        try:
            report = compare_models(
                args.database_url,
                args.a,
                args.b,
                queries=queries,
                from_log=args.from_log,
                k=args.k,
                sample=args.sample,
                seed=args.seed,
                ef_search=args.ef_search,
                probes=args.probes,
            )
        except (LookupError, ValueError, providers.ProviderError) as exc:
            print(f"pgingest model compare: {exc}", file=sys.stderr)
            return EXIT_INVALID if isinstance(exc, LookupError | ValueError) else EXIT_ERROR
        print(report.to_json() if args.json else format_compare(report))
        return 0

    return cli_support.run_reporting_db_errors("pgingest model compare", run)


# -- swap / retire ---------------------------------------------------------------------------


def cmd_swap(args: argparse.Namespace) -> int:
    from pgingest import db

    def run() -> int:
        with _connect(args) as conn:
            cli_support.print_notices(conn, sys.stderr)
            print(db.swap_model(conn, args.name, force=args.force))
        return 0

    return cli_support.run_reporting_db_errors("pgingest model swap", run)


def cmd_retire(args: argparse.Namespace) -> int:
    from pgingest import db

    if not args.yes:
        if not sys.stdin.isatty():
            print(
                "pgingest model retire: this drops the model's vectors; add --yes to confirm",
                file=sys.stderr,
            )
            return EXIT_INVALID
        answer = input(
            f"retire model {args.name} and drop its store (with its index) and queue? [y/N] "
        )
        if answer.strip().lower() not in ("y", "yes"):
            print("not retired")
            return EXIT_ERROR

    def run() -> int:
        with _connect(args) as conn:
            cli_support.print_notices(conn, sys.stderr)
            print(f"model {args.name}: {db.retire_model(conn, args.name)}")
        return 0

    return cli_support.run_reporting_db_errors("pgingest model retire", run)
