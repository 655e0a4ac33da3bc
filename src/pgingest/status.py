"""``pgingest status``: the pipeline at a glance, and a health check.

The figures come from the views of ``sql/050_status.sql`` (``pgingest.model_status``,
``dead_letter_summary``, ``worker_status``, ``vector_health``, ``index_builds``) and
``pgingest.source_status`` (``sql/015_sources.sql``: the attached tables; absent before schema
0009, then the section is left out), which any login holding ``pgingest_monitor`` can read. ``pgingest status`` prints them as tables (``--json`` for
machines) and exits:

* 0: healthy;
* 1: unhealthy: a paused model, a paused source (raw documents: the worker stopped fetching
  it), a stale worker (a heartbeat older than the stale threshold), a stuck worker (a fresh
  heartbeat, a main loop silent past config worker_stuck_after_seconds), more dead letters
  than ``--max-dead-letters`` (default 0: every dead letter is a document that is not
  searchable and waits for a decision), an oldest pending message older than ``--max-lag``
  (when given), an invalid ANN index that no build is fixing;
* 2: the check itself failed (database unreachable, pgingest not installed, no privilege).

The rows of ``pgingest.workers`` come from the workers' heartbeat (``pgingest.worker.heartbeat``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import decimal
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg

from pgingest import cli_support, db

EXIT_HEALTHY = 0
EXIT_UNHEALTHY = 1
EXIT_ERROR = 2

DEFAULT_MAX_DEAD_LETTERS = 0


# --------------------------------------------------------------------------------------------
# Status report
# --------------------------------------------------------------------------------------------


@dataclass
class HealthPolicy:
    max_dead_letters: int = DEFAULT_MAX_DEAD_LETTERS
    max_lag_seconds: float | None = None
    stale_after_seconds: float | None = None
    """None: the view's ``stale`` flag (config worker_stale_after_seconds)."""


@dataclass
class Report:
    models: list[dict[str, Any]]
    dead_letters: list[dict[str, Any]]
    workers: list[dict[str, Any]]
    vector_health: list[dict[str, Any]]
    index_builds: list[dict[str, Any]]
    sources: list[dict[str, Any]] | None = None
    """``pgingest.source_status``; None when the server predates sources (schema 0009)."""
    traffic: list[dict[str, Any]] | None = None
    """``pgingest.traffic_status()``: per live model its share of the searches and, from the query
    log, the searches of the last 15 minutes and their latency; None when the server predates it
    (schema 0013) or this role may not run it (monitors and admins may)."""
    query_log: dict[str, Any] | None = None
    """``pgingest.query_log_status()``: the query log's settings and size (same conditions)."""
    quotas: list[dict[str, Any]] | None = None
    """``pgingest.quota_status``: the providers' quotas the workers pace within (issue 25); None
    when the server predates it (schema 0014)."""
    provider_batches: list[dict[str, Any]] | None = None
    """``pgingest.provider_batch_status``: backfills through the provider's Batch API (issue
    25), those not collected and the last collected one per model; None when the server
    predates it (schema 0017)."""
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {
            "healthy": self.healthy,
            "problems": self.problems,
            "warnings": self.warnings,
            "models": self.models,
            "dead_letters": self.dead_letters,
            "workers": self.workers,
            "vector_health": self.vector_health,
            "index_builds": self.index_builds,
            "sources": self.sources,
            "traffic": self.traffic,
            "query_log": self.query_log,
            "quotas": self.quotas,
            "provider_batches": self.provider_batches,
        }


def collect(conn: psycopg.Connection[Any]) -> Report:
    """Reads the five status views and the sources (one snapshot: a repeatable-read
    transaction)."""
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        return Report(
            models=db.status_view(conn, "model_status"),
            dead_letters=db.status_view(conn, "dead_letter_summary"),
            workers=db.status_view(conn, "worker_status"),
            vector_health=db.status_view(conn, "vector_health"),
            index_builds=db.status_view(conn, "index_builds"),
            sources=_source_status(conn),
            traffic=_traffic_status(conn),
            query_log=_query_log_status(conn),
            quotas=_quota_status(conn),
            provider_batches=_provider_batches(conn),
        )


def _may_run(conn: psycopg.Connection[Any], signature: str) -> bool:
    """Whether ``signature`` exists and this role may execute it."""
    row = conn.execute(
        "SELECT to_regprocedure(%(f)s) IS NOT NULL"
        " AND has_function_privilege(to_regprocedure(%(f)s), 'EXECUTE')",
        {"f": signature},
    ).fetchone()
    return bool(row and row[0])


def _traffic_status(conn: psycopg.Connection[Any]) -> list[dict[str, Any]] | None:
    """The rows of ``pgingest.traffic_status()`` (issue 20), or None (see ``Report.traffic``)."""
    from psycopg.rows import dict_row

    if not _may_run(conn, "pgingest.traffic_status(interval)"):
        return None
    rows = (
        conn.cursor(row_factory=dict_row)
        .execute("SELECT * FROM pgingest.traffic_status() ORDER BY model")
        .fetchall()
    )
    for r in rows:
        for key in ("p50_ms", "p95_ms", "p99_ms"):
            if r.get(key) is not None:
                r[key] = float(r[key])
    return rows


def _query_log_status(conn: psycopg.Connection[Any]) -> dict[str, Any] | None:
    from psycopg.rows import dict_row

    if not _may_run(conn, "pgingest.query_log_status()"):
        return None
    return (
        conn.cursor(row_factory=dict_row)
        .execute("SELECT * FROM pgingest.query_log_status()")
        .fetchone()
    )


def _may_read(conn: psycopg.Connection[Any], view: str) -> bool:
    """Whether ``view`` exists and this role may read it."""
    row = conn.execute(
        "SELECT to_regclass(%(v)s) IS NOT NULL AND has_table_privilege(%(v)s, 'SELECT')",
        {"v": view},
    ).fetchone()
    return bool(row and row[0])


def _quota_status(conn: psycopg.Connection[Any]) -> list[dict[str, Any]] | None:
    from psycopg.rows import dict_row

    if not _may_read(conn, "pgingest.quota_status"):
        return None
    return (
        conn.cursor(row_factory=dict_row)
        .execute("SELECT * FROM pgingest.quota_status ORDER BY model")
        .fetchall()
    )


def _provider_batches(conn: psycopg.Connection[Any]) -> list[dict[str, Any]] | None:
    """Provider batches not collected yet, and each model's last collected one."""
    if not _may_read(conn, "pgingest.provider_batch_status"):
        return None
    return db.provider_batch_rows(conn, latest=True)


def _source_status(conn: psycopg.Connection[Any]) -> list[dict[str, Any]] | None:
    """The rows of ``pgingest.source_status`` (the built-in ``documents`` first), or None when
    the view does not exist (a server installed before sources: schema 0009)."""
    from psycopg.rows import dict_row

    row = conn.execute("SELECT to_regclass('pgingest.source_status') IS NOT NULL").fetchone()
    if not row or not row[0]:
        return None
    rows = (
        conn.cursor(row_factory=dict_row)
        .execute(
            "SELECT * FROM pgingest.source_status ORDER BY source <> 'documents', source",
        )
        .fetchall()
    )
    for r in rows:
        if r.get("backfill_percent") is not None:
            r["backfill_percent"] = float(r["backfill_percent"])
    return rows


def _seconds(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    return float(value)


def evaluate(report: Report, policy: HealthPolicy) -> Report:
    """Fills ``problems`` (they make the exit code 1) and ``warnings`` (informative)."""
    problems: list[str] = []
    warnings: list[str] = []
    for m in report.models:
        if m["paused"]:
            problems.append(
                f"model {m['model']} is paused: {m['paused_reason'] or 'no reason given'}"
            )
        lag = _seconds(m.get("freshness_lag_seconds"))
        if policy.max_lag_seconds is not None and lag is not None and lag > policy.max_lag_seconds:
            problems.append(
                f"model {m['model']}: the oldest pending message is {_duration(lag)} old "
                f"(--max-lag {_duration(policy.max_lag_seconds)})"
            )
    for w in report.workers:
        age = _seconds(w["last_seen_age"]) or 0.0
        stale = (
            bool(w["stale"])
            if policy.stale_after_seconds is None
            else age > policy.stale_after_seconds
        )
        if stale:
            problems.append(
                f"worker {w['host']}:{w['pid']} ({w['id']}) is stale: last seen {_duration(age)} ago"
            )
        elif w.get("stuck"):
            # Its heartbeat thread beats, its main loop has not completed a pass for too long:
            # a hung call (a provider or a statement that never returns).
            tick = _seconds(w.get("last_tick_age")) or 0.0
            problems.append(
                f"worker {w['host']}:{w['pid']} ({w['id']}) is stuck: its main loop has not "
                f"completed a pass for {_duration(tick)} (its heartbeat is alive)"
            )
    total_dead = sum(int(d["dead_letters"]) for d in report.dead_letters)
    if total_dead > policy.max_dead_letters:
        classes = ", ".join(
            f"{d['model']}/{d['error_class']}: {d['dead_letters']}" for d in report.dead_letters
        )
        problems.append(
            f"{total_dead} dead letter(s), more than --max-dead-letters {policy.max_dead_letters} "
            f"({classes})"
        )
    building = {b["index_name"] for b in report.index_builds}
    for v in report.vector_health:
        if v["index_name"] is not None and not v["valid"] and v["index_name"] not in building:
            problems.append(
                f"model {v['model']}: index {v['index_name']} is invalid (a failed build?): "
                "rebuild it with `pgingest model index`"
            )
        elif v["index_status"] == "missing" and v["state"] == "active":
            warnings.append(
                f"model {v['model']} (active) has no ANN index: searches scan every chunk"
            )
    live = [w for w in report.workers if not w["stale"]]
    queued = sum(int(m["queue_length"] or 0) for m in report.models)
    if queued and not live:
        warnings.append(f"{queued} message(s) queued and no live worker heartbeat")
    for m in report.models:
        if m["backfill_state"] == "queueing" and not live:
            warnings.append(
                f"model {m['model']}: its backfill is queued by running workers, and none runs "
                f"(or CALL pgingest.run_backfill('{m['model']}'))"
            )
    for src in report.sources or ():
        if src.get("paused_reason"):
            # The worker paused fetching (a bucket or host refusing access): its documents wait,
            # like a paused model's (review finding 6).
            problems.append(
                f"source {src['source']} is paused: {src['paused_reason']} "
                f"(SELECT pgingest.resume_source('{src['source']}') once fixed)"
            )
        # Failed captures are dead letters too (error class capture_failed): counted above.
        if src.get("capture_failures"):
            warnings.append(
                f"source {src['source']}: {src['capture_failures']} failed capture(s) (dead "
                "letters capture_failed): fix the cause, then pgingest source resync "
                f"{src['source']}"
            )
        if str(src.get("table_name") or "").endswith("(dropped)"):
            warnings.append(
                f"source {src['source']}: its table was dropped: pgingest source remove "
                f"{src['source']}"
            )
        elif src.get("backfill") != "done" and report.models and not live:
            warnings.append(
                f"source {src['source']}: its backfill is queued by running workers, and none "
                "runs (or CALL pgingest.run_source_backfill())"
            )
    report.problems = problems
    report.warnings = warnings
    return report


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = max(float(seconds), 0.0)
    if s < 1:
        return f"{s * 1000:.0f}ms"
    if s < 60:
        return f"{s:.0f}s" if s >= 10 else f"{s:.1f}s"
    if s < 3600:
        return f"{int(s // 60)}m{int(s % 60):02d}s"
    if s < 86400:
        return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m"
    return f"{int(s // 86400)}d{int(s % 86400 // 3600):02d}h"


def _ago(ts: Any, now: dt.datetime) -> str:
    if ts is None:
        return "-"
    return _duration((now - ts).total_seconds()) + " ago"


def _size(n: Any) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1024 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TB"  # unreachable


def _num(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, float | decimal.Decimal):
        return f"{float(x):,.2f}".rstrip("0").rstrip(".")
    return f"{x:,}"


def _bar(fraction: float | None, width: int = 20) -> str:
    if fraction is None:
        return "[" + "?" * width + "]"
    filled = int(round(max(0.0, min(1.0, fraction)) * width))
    return "[" + "#" * filled + "." * (width - filled) + "]"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    return cli_support.table(headers, rows, rule=False)


def _short(text: Any, n: int = 60) -> str:
    s = " ".join(str(text or "").split())
    return s if len(s) <= n else s[: n - 1] + "…"


def render_text(report: Report, now: dt.datetime | None = None) -> str:
    now = now or dt.datetime.now(dt.UTC)
    out: list[str] = []
    out.append("pgingest status: " + ("healthy" if report.healthy else "UNHEALTHY"))
    out.extend(f"  problem: {p}" for p in report.problems)
    out.extend(f"  warning: {w}" for w in report.warnings)

    out.append("\nMODELS")
    if report.models:
        rows = []
        for m in report.models:
            state = m["state"] + (" (PAUSED)" if m["paused"] else "")
            queue = (
                f"{_num(m['queue_length'])} ({_num(m['queue_ready'])}/"
                f"{_num(m['queue_in_flight'])}/{_num(m['queue_delayed'])})"
            )
            backfill = m["backfill_state"]
            if backfill in ("queueing", "running"):
                eta = _seconds(m["backfill_eta"])
                backfill += f" {_num(m['backfill_pct'])}% {_num(m['backfill_pending'])} left" + (
                    f" eta {_duration(eta)}" if eta is not None else ""
                )
            rows.append(
                [
                    m["model"],
                    state,
                    _num(m["documents"]),
                    _num(m["embedded"]),
                    _num(m["pending"]),
                    _num(m["dead_lettered"]),
                    f"{_num(m['coverage_pct'])}%",
                    queue,
                    (
                        "-"
                        if m["oldest_pending_age"] is None
                        else _duration(_seconds(m["freshness_lag_seconds"]))
                    ),
                    _num(m["docs_per_second"]),
                    backfill,
                ]
            )
        out.append(
            _table(
                [
                    "model",
                    "state",
                    "docs",
                    "embedded",
                    "pending",
                    "dead",
                    "coverage",
                    "queue (ready/in flight/delayed)",
                    "lag",
                    "docs/s",
                    "backfill",
                ],
                rows,
            )
        )
        for m in report.models:
            if m["paused"]:
                out.append(f"  {m['model']} paused: {_short(m['paused_reason'], 200)}")
    else:
        out.append("  no model registered: SELECT pgingest.register_model(...)")

    if report.sources is not None:
        out.append("\nSOURCES")
        # A state column while a raw source is paused (review finding 6).
        paused = any(src.get("paused_reason") for src in report.sources)
        out.append(
            _table(
                ["source", "table", "rows", "backfill", "capture failures"]
                + (["state"] if paused else []),
                [
                    [
                        src["source"],
                        src["table_name"],
                        _num(src["rows_registered"]),
                        _source_backfill(src),
                        _num(src["capture_failures"]),
                    ]
                    + (["PAUSED" if src.get("paused_reason") else ""] if paused else [])
                    for src in report.sources
                ],
            )
        )
        for src in report.sources:
            if src.get("paused_reason"):
                out.append(f"  {src['source']} paused: {_short(src['paused_reason'], 200)}")

    out.append("\nDEAD LETTERS")
    if report.dead_letters:
        out.append(
            _table(
                ["model", "error class", "count", "oldest", "newest", "sample"],
                [
                    [
                        d["model"],
                        d["error_class"],
                        _num(d["dead_letters"]),
                        _ago(d["oldest"], now),
                        _ago(d["newest"], now),
                        _short(
                            (f"{d['sample_doc_key']}: " if d["sample_doc_key"] else "")
                            + str(d["sample_message"])
                        ),
                    ]
                    for d in report.dead_letters
                ],
            )
        )
        out.append("  requeue: SELECT pgingest.requeue_dead_letters('<model>', '<error class>');")
    else:
        out.append("  none")

    out.append("\nWORKERS")
    if report.workers:
        out.append(
            _table(
                [
                    "host",
                    "pid",
                    "version",
                    "up",
                    "last seen",
                    "in flight",
                    "batch",
                    "docs",
                    "state",
                ],
                [
                    [
                        w["host"],
                        str(w["pid"]),
                        w["version"],
                        _duration(_seconds(w["uptime"])),
                        _duration(_seconds(w["last_seen_age"])) + " ago",
                        _num(w["in_flight"]),
                        _num(w["batch_size"]),
                        _num(w["documents"]),
                        "STALE" if w["stale"] else "STUCK" if w.get("stuck") else "ok",
                    ]
                    for w in report.workers
                ],
            )
        )
    else:
        out.append("  no heartbeat (no worker running, or none since the last clean stop)")

    out.append("\nVECTOR INDEXES")
    if report.vector_health:
        out.append(
            _table(
                [
                    "model",
                    "index",
                    "status",
                    "size",
                    "ef_search",
                    "probes",
                    "dead tuples",
                    "autovacuum",
                ],
                [
                    [
                        v["model"],
                        v["index_name"] or f"({v['index_method']})",
                        v["index_status"] + (" (building)" if v["building"] else ""),
                        _size(v["size_bytes"]),
                        str(v["hnsw_ef_search"]),
                        str(v["ivfflat_probes"]),
                        f"{_num(v['chunks_dead_tuples'])}"
                        + (
                            f" ({_num(v['chunks_dead_pct'])}%)"
                            if v["chunks_dead_pct"] is not None
                            else ""
                        ),
                        _ago(v["chunks_last_autovacuum"], now),
                    ]
                    for v in report.vector_health
                ],
            )
        )
    else:
        out.append("  no model")

    out.extend(_render_traffic(report))
    out.extend(_render_quotas(report))
    out.extend(_render_provider_batches(report))

    if report.index_builds:
        out.append("\nINDEX BUILDS")
        for b in report.index_builds:
            pct = _seconds(b["pct"])
            out.append(
                f"  {b['model'] or '?'} {b['index_name'] or '(new index)'} pid {b['pid']}: "
                f"{b['phase']} {_bar(None if pct is None else pct / 100)} "
                f"{'-' if pct is None else f'{pct:.1f}%'} elapsed {_duration(_seconds(b['elapsed']))}"
            )
    return "\n".join(out) + "\n"


def _render_quotas(report: Report) -> list[str]:
    """The QUOTAS section: the providers' quotas the workers pace within, where any is known."""
    if not report.quotas:
        return []
    from pgingest.models_cli import quota_line

    return ["\nQUOTAS (requests/tokens per minute, shared by every worker of a model)"] + [
        "  " + quota_line(q) for q in report.quotas
    ]


def _render_provider_batches(report: Report) -> list[str]:
    """The BATCH API section: backfills in provider batches (in flight, and the last one)."""
    if not report.provider_batches:
        return []
    return ["\nBATCH API (backfills in provider batches)"] + provider_batch_lines(
        report.provider_batches
    )


def provider_batch_lines(batches: list[dict[str, Any]]) -> list[str]:
    """One line per row of ``pgingest.provider_batch_status``."""
    out = []
    for b in batches:
        where = f" {b['provider_batch_id']}" if b.get("provider_batch_id") else ""
        line = (
            f"  {b['model']} #{b['id']}{where}: {b['state']}"
            f" ({b.get('provider_status') or 'not submitted'}), {b['messages']:,} documents,"
            f" {b['inputs']:,} inputs"
        )
        if b["state"] in ("collecting", "collected"):
            line += (
                f": {b['inputs_embedded']:,} embedded, {b['inputs_rejected']:,} rejected,"
                f" {b['inputs_online']:,} online"
            )
        elif b.get("requests_completed") or b.get("requests_failed"):
            line += f": {b['requests_completed']:,} done, {b['requests_failed']:,} failed so far"
        if b.get("error"):
            line += f"; {b['error']}"
        out.append(line)
    return out


def _render_traffic(report: Report) -> list[str]:
    """The TRAFFIC section: shown while a traffic shift runs or the query log is on."""
    log = report.query_log or {}
    rate = str(log.get("sample_rate") or "0")
    log_on = rate.strip() not in ("0", "0.0", "")
    shifted = any(t.get("shift_since") is not None for t in report.traffic or [])
    if not report.traffic or not (shifted or log_on):
        return []
    out = ["\nTRAFFIC (searches and latency: query log, last 15 min)"]
    rows = []
    for t in report.traffic:
        share = t.get("share") or 0.0
        latency = (
            f"{t['p50_ms']:.1f} / {t['p95_ms']:.1f} ms" if t.get("p50_ms") is not None else "-"
        )
        cached = t.get("cached_share")
        rows.append(
            [
                t["model"],
                t["state"],
                f"{100 * share:.1f}%",
                _num(t["logged_searches"]) if log_on else "-",
                _num(t["est_searches"]) if t.get("est_searches") is not None else "-",
                latency,
                "-" if cached is None else f"{100 * cached:.0f}%",
            ]
        )
    out.append(
        _table(
            ["model", "state", "share", "logged", "est. searches", "p50 / p95", "query cache hits"],
            rows,
        )
    )
    if log_on:
        out.append(
            f"  query log: {rate} of searches, text {'logged' if log.get('log_text') else 'hashed'}"
            f", {_num(log.get('logged_rows'))} rows (kept {log.get('keep')}, at most "
            f"{log.get('max_rows')})"
            + ("" if log.get("writable", True) else "; read replica: not written here")
        )
    return out


def _source_backfill(src: dict[str, Any]) -> str:
    """done; waiting; running 40% (2,000 of ~5,000 rows)."""
    if src["backfill"] != "running":
        return str(src["backfill"])
    estimate = src.get("table_rows_estimate") or 0
    of = f" of ~{_num(estimate)}" if estimate > 0 else ""
    return f"running {_num(src['backfill_percent'])}% ({_num(src['backfill_rows'])}{of} rows)"


def render_json(report: Report) -> str:
    """The report as JSON: intervals in seconds, timestamps ISO 8601."""
    return (
        json.dumps(report.as_dict(), default=cli_support.json_default, indent=2, sort_keys=False)
        + "\n"
    )


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def check(conninfo: str | None, policy: HealthPolicy) -> Report:
    with db.connect(conninfo, register_vector=False, application_name="pgingest-status") as conn:
        return evaluate(collect(conn), policy)


def run(args: argparse.Namespace) -> int:
    policy = HealthPolicy(
        max_dead_letters=args.max_dead_letters,
        max_lag_seconds=args.max_lag,
        stale_after_seconds=args.stale_after,
    )
    out = sys.stdout
    while True:
        try:
            report = check(args.database_url, policy)
        except psycopg.errors.InsufficientPrivilege as exc:
            print(
                f"pgingest status: {exc.diag.message_primary}\n"
                "  hint: GRANT pgingest_monitor TO <this login>;",
                file=sys.stderr,
            )
            return EXIT_ERROR
        except (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedFunction) as exc:
            print(
                f"pgingest status: {exc.diag.message_primary}\n"
                "  hint: is pgingest installed in this database, and up to date? pgingest install",
                file=sys.stderr,
            )
            return EXIT_ERROR
        except psycopg.Error as exc:  # no password of the connection string (review finding 10)
            print(
                f"pgingest status: {cli_support.error_text(exc, args.database_url)}",
                file=sys.stderr,
            )
            return EXIT_ERROR
        code = EXIT_HEALTHY if report.healthy else EXIT_UNHEALTHY
        text = render_json(report) if args.json else render_text(report)
        if args.watch is None:
            out.write(text)
            out.flush()
            return code
        if out.isatty():
            out.write("\x1b[H\x1b[2J")
        out.write(text)
        out.flush()
        try:
            time.sleep(args.watch)
        except KeyboardInterrupt:
            return code


def add_status_command(subparsers: Any) -> argparse.ArgumentParser:
    """Adds ``status`` to the ``pgingest`` command line (``subparsers`` of argparse)."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "status",
        help="models, queues, dead letters, workers and indexes; exit 1 when unhealthy",
        description=(
            "Reads the pgingest status views (GRANT pgingest_monitor to the login). Exit status: "
            "0 healthy; 1 unhealthy (a paused model or source, a stale worker, too many dead "
            "letters, a lag above --max-lag, an invalid index); 2 the check failed."
        ),
    )
    cli_support.add_database_url(p)
    p.add_argument("--json", action="store_true", help="one JSON document instead of tables")
    p.add_argument(
        "--max-dead-letters",
        type=int,
        default=DEFAULT_MAX_DEAD_LETTERS,
        metavar="N",
        help="unhealthy above N dead letters in all (default %(default)s)",
    )
    p.add_argument(
        "--max-lag",
        type=float,
        default=None,
        metavar="SECONDS",
        help="unhealthy when a model's oldest queued message is older (default: no limit)",
    )
    p.add_argument(
        "--stale-after",
        type=float,
        default=None,
        metavar="SECONDS",
        help="a worker silent this long is stale (default: config worker_stale_after_seconds, 60)",
    )
    p.add_argument(
        "--watch",
        type=cli_support.positive_float,
        default=None,
        metavar="SECONDS",
        help="redraw every SECONDS until interrupted",
    )
    p.set_defaults(func=run)
    return p
