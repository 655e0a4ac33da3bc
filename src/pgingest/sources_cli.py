"""``pgingest source add|list|show|remove|resync``: attaching the application's own tables.

``cli.py`` calls :func:`add_source_commands` with its subparsers. Every command takes
``--database-url`` (default ``$DATABASE_URL``, else the libpq ``PG*`` variables). The SQL lives in
``sql/015_sources.sql`` (``pgingest.add_source()``, ``remove_source()``, ``resync_source()``, the
view ``pgingest.source_status``); a DBA can do the same from psql (docs/operations.md). ``add`` and
``remove`` run as the login of the connection, which must own the table and be a member of
``pgingest_admin``.

A refusal of the server is printed as the other commands print it (``cli_support``: the message,
its detail and hint), followed by its SQLSTATE. Exit codes: 0 done, 1 error (not the table's
owner, say), 2 invalid arguments (an unknown table or column, a column that is not text, a view,
a duplicate or unknown source name), 3 refused in the present state (a table without a primary
key).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from pgingest import cli_support
from pgingest.cli_support import EXIT_ERROR, EXIT_INVALID

if TYPE_CHECKING:  # imported lazily at run time: `pgingest --help` stays fast
    import psycopg

__all__ = [
    "add_source_commands",
    "format_source",
    "format_sources",
    "list_sources",
    "show_source",
]

# SQLSTATEs of add_source() that name a bad argument: the table or a column given on the command
# line does not exist or cannot be mapped (cli_support classes them as plain errors).
_INVALID_SQLSTATES = frozenset(
    {
        "42P01",  # undefined_table: TABLE
        "42703",  # undefined_column: --body, --template, --title, --metadata
        "42804",  # datatype_mismatch: a column that is not text
        "42809",  # wrong_object_type: a view, a table of pgingest's own
        "0A000",  # feature_not_supported: partitioned, foreign, temporary
    }
)


# -- argument parsing ------------------------------------------------------------------------


def add_source_commands(subparsers: Any) -> argparse.ArgumentParser:
    """Adds ``source`` and its sub-commands to ``subparsers`` (from ``add_subparsers()``)."""
    source = subparsers.add_parser(
        "source",
        help="attach application tables: add, list, show, remove, resync",
        description="Sources: application tables attached unchanged (their primary key, a body "
        "column or a template over columns). Capture triggers queue their changes; the workers "
        "embed them. pgingest.documents is the built-in source 'documents'. See "
        "docs/operations.md.",
    )
    sub = source.add_subparsers(dest="source_command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "add",
        help="attach a table: capture triggers, a paced backfill of its rows",
        description="Attaches TABLE as source NAME (pgingest.add_source): its primary key is the "
        "key (composite too), --body a text column or --template a text with {column} "
        "placeholders (arrays joined with ', ') is what is embedded. The login must own the "
        "table and be a member of pgingest_admin; the owner of pgingest is granted SELECT on the "
        "mapped and key columns only. The rows the table holds are queued by the workers in "
        "paced batches (--no-backfill: only later changes).",
    )
    cli_support.add_database_url(p)
    p.add_argument(
        "name", metavar="NAME", help="source name: a lower-case letter, then letters, digits or _"
    )
    p.add_argument(
        "table", metavar="TABLE", help="the table, optionally schema-qualified (as in SQL)"
    )
    mapping = p.add_mutually_exclusive_group(required=True)
    mapping.add_argument("--body", metavar="COLUMN", help="the text column to embed")
    mapping.add_argument(
        "--template",
        metavar="TEXT",
        help="text with {column} placeholders, e.g. '{title}: {body} ({tags})'",
    )
    p.add_argument("--title", metavar="COLUMN", help="the title column (search results, chunks)")
    p.add_argument(
        "--metadata",
        metavar="COLUMN",
        nargs="+",
        action="extend",
        default=[],
        help="columns exposed to search filters (repeatable)",
    )
    p.add_argument(
        "--no-backfill",
        dest="backfill",
        action="store_false",
        help="do not queue the rows the table holds now, only later changes",
    )
    p.set_defaults(func=cmd_add)

    p = sub.add_parser("list", help="sources with table, rows, backfill and capture failures")
    cli_support.add_database_url(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("show", help="one source: status and mapping")
    cli_support.add_database_url(p)
    p.add_argument("name", metavar="NAME")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser(
        "remove",
        help="detach a source: drop its triggers, chunks, vectors and queued messages",
        description="Detaches source NAME (pgingest.remove_source): drops its capture triggers, "
        "the chunks, vectors, state, dead letters and queued messages of its rows and the SELECT "
        "grant add gave. The table and its rows are never touched.",
    )
    cli_support.add_database_url(p)
    p.add_argument("name", metavar="NAME")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.set_defaults(func=cmd_remove)

    p = sub.add_parser(
        "resync",
        help="walk a source's table again (after a capture failure or a fix)",
        description="Walks the table of source NAME again as a paced backfill "
        "(pgingest.resync_source): rows whose mapped text differs from what pgingest recorded "
        "are queued, the others cost a comparison.",
    )
    cli_support.add_database_url(p)
    p.add_argument("name", metavar="NAME")
    p.set_defaults(func=cmd_resync)
    return source


# -- helpers ---------------------------------------------------------------------------------


def _connect(args: argparse.Namespace) -> psycopg.Connection[Any]:
    from pgingest import db

    return db.connect(args.database_url, register_vector=False, application_name="pgingest-source")


def _run(prog: str, fn: Callable[[], int]) -> int:
    """``fn()``, or the exit code of the database error it raised: printed as
    ``cli_support.report_db_error`` prints it, then its SQLSTATE."""
    import psycopg

    try:
        return fn()
    except psycopg.errors.DatabaseError as exc:
        code = cli_support.report_db_error(prog, exc)
        sqlstate = getattr(exc, "sqlstate", None)
        if sqlstate:
            print(f"  sqlstate: {sqlstate}", file=sys.stderr)
        if code == EXIT_ERROR and sqlstate in _INVALID_SQLSTATES:
            code = EXIT_INVALID
        return code


def _status_rows(conn: psycopg.Connection[Any], name: str | None) -> list[dict[str, Any]]:
    from psycopg.rows import dict_row

    cur = conn.cursor(row_factory=dict_row)
    return cur.execute(
        "SELECT st.source, st.table_name, st.key_columns, st.mapping, st.rows_registered,"
        " st.table_rows_estimate, st.backfill, st.backfill_rows, st.backfill_percent,"
        " st.backfill_started_at, st.backfill_completed_at, st.capture_failures"
        " FROM pgingest.source_status AS st"
        " WHERE %(name)s::text IS NULL OR st.source = %(name)s"
        " ORDER BY st.source <> 'documents', st.source",
        {"name": name},
    ).fetchall()


def list_sources(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    """One dict per source (the built-in ``documents`` first): the rows of
    ``pgingest.source_status``."""
    return [_plain(r) for r in _status_rows(conn, None)]


def show_source(conn: psycopg.Connection[Any], name: str) -> dict[str, Any] | None:
    """The ``source_status`` row of one source with its mapping from ``pgingest.sources`` (key
    types, body column or template, title and metadata columns, who attached it, the column
    grant); None when there is no such source."""
    import psycopg
    from psycopg.rows import dict_row

    rows = _status_rows(conn, name)
    if not rows:
        return None
    out = _plain(rows[0])
    try:
        mapping = (
            conn.cursor(row_factory=dict_row)
            .execute(
                "SELECT s.key_types, s.body_column, s.template, s.title_column,"
                " s.metadata_columns, s.created_at, s.created_by, s.select_granted_to"
                " FROM pgingest.sources AS s WHERE s.name = %s",
                (name,),
            )
            .fetchone()
        )
    except psycopg.errors.InsufficientPrivilege:
        # pgingest.sources is for admins; monitors and readers see the status view only.
        return out
    out.update(mapping or {})
    return out


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    out = dict(row)
    if out.get("backfill_percent") is not None:
        out["backfill_percent"] = float(out["backfill_percent"])
    return out


def _num(x: Any) -> str:
    return "-" if x is None else f"{x:,}"


def _backfill_cell(r: dict[str, Any]) -> str:
    """done; waiting; running 40.0%."""
    pct = r.get("backfill_percent")
    if r["backfill"] != "running" or pct is None:
        return str(r["backfill"])
    return f"running {pct:.1f}%"


def format_sources(rows: Sequence[dict[str, Any]]) -> str:
    body = [
        [
            r["source"],
            r["table_name"],
            ", ".join(r["key_columns"] or ()),
            _short(r["mapping"]),
            _num(r["rows_registered"]),
            _num(r["table_rows_estimate"]),
            _backfill_cell(r),
            _num(r["capture_failures"]),
        ]
        for r in rows
    ]
    headers = ["source", "table", "key", "mapping", "rows", "table rows (est.)", "backfill"]
    headers.append("capture failures")
    text = cli_support.table(headers, body)
    for r in rows:
        if r["capture_failures"]:
            text += (
                f"\n{r['source']}: {r['capture_failures']} failed capture(s): fix the cause, "
                f"then pgingest source resync {r['source']}"
            )
    return text


def _ts(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dt.datetime):
        return value.isoformat(sep=" ", timespec="seconds")
    return str(value)


def _short(text: Any, n: int = 40) -> str:
    s = " ".join(str(text or "").split())
    return s if len(s) <= n else s[: n - 1] + "…"


def format_source(r: dict[str, Any]) -> str:
    key_types = r.get("key_types") or [None] * len(r["key_columns"] or ())
    key = ", ".join(
        f"{c} {t}" if t else c for c, t in zip(r["key_columns"] or (), key_types, strict=False)
    )
    lines: list[tuple[str, Any]] = [
        ("source", r["source"]),
        ("table", r["table_name"]),
        ("key", key),
    ]
    if "template" not in r:  # no privilege on pgingest.sources: the status view's mapping only
        lines.append(("mapping", json.dumps(r["mapping"], ensure_ascii=False)))
    elif r["template"] is not None:
        lines.append(("template", json.dumps(r["template"], ensure_ascii=False)))
    else:
        lines.append(("body", r["body_column"]))
    if "template" in r:
        lines += [
            ("title", r["title_column"] or "-"),
            ("metadata", ", ".join(r["metadata_columns"] or ()) or "-"),
        ]
    lines += [
        ("rows registered", _num(r["rows_registered"])),
        ("table rows (est.)", _num(r["table_rows_estimate"])),
        (
            "backfill",
            _backfill_cell(r)
            + (f" ({_num(r['backfill_rows'])} rows walked)" if r["backfill_rows"] else ""),
        ),
        ("backfill started", _ts(r["backfill_started_at"])),
        ("backfill completed", _ts(r["backfill_completed_at"])),
        ("capture failures", _num(r["capture_failures"])),
    ]
    if r.get("created_by") is not None:
        lines.append(("attached", f"{_ts(r['created_at'])} by {r['created_by']}"))
    if r.get("select_granted_to"):
        lines.append(
            ("column grant", f"SELECT on the mapped and key columns to {r['select_granted_to']}")
        )
    width = max(len(k) for k, _ in lines)
    text = "\n".join(f"{k + ':':<{width + 1}} {v}" for k, v in lines)
    if r["capture_failures"]:
        text += (
            f"\nfailed captures are dead letters (error class capture_failed): fix the cause, "
            f"then pgingest source resync {r['source']}"
        )
    return text


# -- commands --------------------------------------------------------------------------------


def cmd_add(args: argparse.Namespace) -> int:
    def run() -> int:
        with _connect(args) as conn:
            cli_support.print_notices(conn, sys.stderr)
            row = conn.execute(
                "SELECT pgingest.add_source(name => %s, source_table => %s::regclass,"
                " body => %s, template => %s, title => %s, metadata => %s::text[],"
                " backfill => %s)",
                (
                    args.name,
                    args.table,
                    args.body,
                    args.template,
                    args.title,
                    list(args.metadata),
                    args.backfill,
                ),
            ).fetchone()
            st = show_source(conn, args.name)
        assert row is not None and st is not None
        about = f"; about {_num(row[0])} rows" if row[0] else ""  # reltuples: 0 before ANALYZE
        print(
            f"source {args.name} attached to {st['table_name']} (key: "
            f"{', '.join(st['key_columns'])}{about})"
        )
        if args.backfill:
            print(
                "the workers queue its rows in paced batches (pgingest source show "
                f"{args.name}); CALL pgingest.run_source_backfill() queues them all now"
            )
        else:
            print("its existing rows are not queued (--no-backfill); later changes are")
        return 0

    return _run("pgingest source add", run)


def cmd_list(args: argparse.Namespace) -> int:
    def run() -> int:
        with _connect(args) as conn:
            rows = list_sources(conn)
        if args.json:
            print(json.dumps(rows, default=cli_support.json_default, indent=2))
        else:
            print(format_sources(rows))
        return 0

    return _run("pgingest source list", run)


def cmd_show(args: argparse.Namespace) -> int:
    def run() -> int:
        with _connect(args) as conn:
            st = show_source(conn, args.name)
        if st is None:
            print(
                f"pgingest source show: no source {args.name!r} (pgingest source list)",
                file=sys.stderr,
            )
            return EXIT_INVALID
        if args.json:
            print(json.dumps(st, default=cli_support.json_default, indent=2))
        else:
            print(format_source(st))
        return 0

    return _run("pgingest source show", run)


def cmd_remove(args: argparse.Namespace) -> int:
    if not args.yes:
        if not sys.stdin.isatty():
            print(
                "pgingest source remove: this drops the chunks and vectors of the source's rows;"
                " add --yes to confirm",
                file=sys.stderr,
            )
            return EXIT_INVALID
        answer = input(
            f"remove source {args.name}: drop its triggers, chunks, vectors and queued messages"
            " (the table is not touched)? [y/N] "
        )
        if answer.strip().lower() not in ("y", "yes"):
            print("not removed")
            return EXIT_ERROR

    def run() -> int:
        with _connect(args) as conn:
            cli_support.print_notices(conn, sys.stderr)
            row = conn.execute("SELECT pgingest.remove_source(%s)", (args.name,)).fetchone()
        assert row is not None
        print(f"source {args.name} removed: {_num(row[0])} rows forgotten; the table is untouched")
        return 0

    return _run("pgingest source remove", run)


def cmd_resync(args: argparse.Namespace) -> int:
    def run() -> int:
        with _connect(args) as conn:
            cli_support.print_notices(conn, sys.stderr)
            conn.execute("SELECT pgingest.resync_source(%s)", (args.name,))
        print(
            f"source {args.name}: its table is walked again by the workers in paced batches "
            f"(pgingest source show {args.name}); CALL pgingest.run_source_backfill() does it now"
        )
        return 0

    return _run("pgingest source resync", run)
