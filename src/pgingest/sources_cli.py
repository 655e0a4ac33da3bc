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
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
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
    mapping.add_argument(
        "--content",
        metavar="COLUMN",
        help="a bytea column of documents (PDF, DOCX, HTML, Markdown, text) the workers parse",
    )
    mapping.add_argument(
        "--uri",
        metavar="COLUMN",
        help="a text column of URIs (file://, https://, s3://) the workers fetch and parse, within"
        " the allow-list (pgingest.allow_raw_location)",
    )
    p.add_argument(
        "--mime", metavar="COLUMN", help="a column whose MIME type overrides type detection"
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

    p = sub.add_parser(
        "sync",
        help="upsert the objects under a bucket prefix or file root into a URI source's table",
        description="Lists the objects under PREFIX (s3://bucket/prefix or file:///dir, within the "
        "allow-list of this environment and pgingest.raw_allowlist) and brings the table of URI "
        "source NAME in line: new objects are inserted (their URI is the key), changed ones "
        "(another ETag; a file's is its modification time and size) re-checked by the workers, the rows of "
        "vanished ones deleted (their chunks go). Unchanged objects cost nothing. The source's "
        "key must be its URI column alone; the login must write its table and be a member of "
        "pgingest_admin.",
    )
    cli_support.add_database_url(p)
    p.add_argument("name", metavar="NAME")
    p.add_argument("prefix", metavar="PREFIX", help="s3://bucket/prefix or file:///directory")
    p.add_argument("--dry-run", action="store_true", help="say what would change, change nothing")
    p.add_argument(
        "--progress-every",
        type=int,
        default=1000,
        metavar="N",
        help="print progress every N objects listed (default %(default)s; 0: never)",
    )
    p.set_defaults(func=cmd_sync)

    p = sub.add_parser(
        "refresh",
        help="re-check raw documents: changed bytes are embedded again, unchanged ones are not",
        description="Queues a re-check of rows of raw source NAME (pgingest.refresh_source_rows): "
        "the workers fetch each again (conditionally where the store allows); changed bytes are "
        "parsed and embedded, unchanged ones neither.",
    )
    cli_support.add_database_url(p)
    p.add_argument("name", metavar="NAME")
    p.add_argument(
        "keys",
        metavar="KEY",
        nargs="*",
        help='row keys as JSON objects (e.g. \'{"uri": "s3://b/k.pdf"}\'), or, for a source '
        "keyed by its URI column, URIs; none: every row",
    )
    p.set_defaults(func=cmd_refresh)
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
        " st.backfill_started_at, st.backfill_completed_at, st.capture_failures,"
        # raw sources (schema 0022; NULL before)
        " to_jsonb(st) ->> 'paused_reason' AS paused_reason,"
        " (to_jsonb(st) ->> 'raw_waiting')::bigint AS raw_waiting,"
        " to_jsonb(st) ->> 'last_parse_error' AS last_parse_error"
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
                " s.metadata_columns, s.created_at, s.created_by, s.select_granted_to,"
                " to_jsonb(s) ->> 'content_column' AS content_column,"
                " to_jsonb(s) ->> 'uri_column' AS uri_column,"
                " to_jsonb(s) ->> 'mime_column' AS mime_column"
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
            "PAUSED" if r.get("paused_reason") else "",
        ]
        for r in rows
    ]
    headers = ["source", "table", "key", "mapping", "rows", "table rows (est.)", "backfill"]
    headers += ["capture failures", "state"]
    text = cli_support.table(headers, body)
    for r in rows:
        if r["capture_failures"]:
            text += (
                f"\n{r['source']}: {r['capture_failures']} failed capture(s): fix the cause, "
                f"then pgingest source resync {r['source']}"
            )
        if r.get("paused_reason"):  # review finding 6: not only in `source show`
            text += (
                f"\n{r['source']} is paused: {r['paused_reason']} "
                f"(SELECT pgingest.resume_source('{r['source']}') once fixed)"
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
    elif r.get("content_column"):
        lines.append(("content", f"{r['content_column']} (bytea: raw documents)"))
    elif r.get("uri_column"):
        lines.append(("uri", f"{r['uri_column']} (URIs of raw documents)"))
    else:
        lines.append(("body", r["body_column"]))
    if r.get("mime_column"):
        lines.append(("mime", r["mime_column"]))
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
    if r.get("content_column") or r.get("uri_column") or r.get("raw_waiting"):
        lines += [
            ("waiting to be parsed", _num(r.get("raw_waiting"))),
            ("last parse error", r.get("last_parse_error") or "-"),
        ]
    if r.get("paused_reason"):
        lines.append(("paused", f"{r['paused_reason']} (pgingest.resume_source once fixed)"))
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
                " backfill => %s, content => %s, uri => %s, mime => %s)",
                (
                    args.name,
                    args.table,
                    args.body,
                    args.template,
                    args.title,
                    list(args.metadata),
                    args.backfill,
                    args.content,
                    args.uri,
                    args.mime,
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


# -- raw sources: sync and refresh -------------------------------------------------------------


def _etag(value: str | None) -> str | None:
    return value.strip('"') if value else None


@dataclass
class SyncPlan:
    """What ``source sync`` does: URIs to insert, row keys to re-check, URIs to delete."""

    listed: int = 0
    new: list[str] = field(default_factory=list)
    changed: list[Any] = field(default_factory=list)
    unchanged: int = 0
    vanished: list[str] = field(default_factory=list)


def plan_sync(
    listed: Iterable[Any],
    recorded: Mapping[str, tuple[Any, ...]],
    prefix: str,
    progress: Callable[[int], None] | None = None,
    unlisted: Sequence[str] = (),
) -> SyncPlan:
    """Compares the objects listed under ``prefix`` (``fetch.ObjectInfo``) with the rows
    recorded (``queries.recorded_objects``: key, ETag, sha256, Last-Modified, last attempt
    failed): an object is changed when its ETag differs from the recorded one (without both
    ETags, its Last-Modified: a file fetched before files had one, for instance); an object not
    fetched yet is left to the worker (its row is queued already); one whose last fetch or parse
    failed is compared alike when the failure recorded validators (it came after the fetch),
    and re-queued (once per sync) when none are recorded.

    A recorded URI is compared in the listing's form (``fetch.canonical_uri``: ``localhost``
    dropped, its directory's real path, percent-encoded alike); it vanished when it lies under the prefix in that form
    (``fetch.canonical_prefix``: a directory's real path, matched by path segment, so that
    ``docs`` never covers ``docs2/``) and was not listed, nor lies under one of ``unlisted``
    (read once the listing is consumed: the subtrees ``fetch.list_objects`` could not list,
    whose files were not seen, so not seen deleted either)."""
    from pgingest.raw import fetch

    canonical = fetch.canonical_prefix(prefix)  # before the listing: the directory exists
    real_dirs: dict[str, str] = {}
    by_form = {fetch.canonical_uri(u, real_dirs): u for u in recorded}
    plan = SyncPlan()
    seen: set[str] = set()
    for obj in listed:
        plan.listed += 1
        if progress is not None:
            progress(plan.listed)
        seen.add(obj.uri)
        rec = recorded.get(obj.uri)
        if rec is None and obj.uri in by_form:
            rec = recorded[by_form[obj.uri]]
        if rec is None:
            plan.new.append(obj.uri)
            continue
        key, etag, sha, modified = rec[:4]
        failed = len(rec) > 4 and bool(rec[4])
        if obj.etag and etag:
            changed = _etag(obj.etag) != _etag(etag)
        else:
            changed = obj.last_modified is not None and obj.last_modified != modified
        # Its last attempt failed: a failure after the fetch records the fetched object's
        # validators, compared like a success's (a broken object left as it is stays
        # unchanged: not re-queued by every sync); one before any fetch records none, and the
        # object is re-queued, once per sync (it may have been fixed since).
        changed = changed or (failed and etag is None and modified is None)
        # Not fetched yet (no sha256, no failure): the queued row will be.
        if changed and (sha is not None or failed):
            plan.changed.append(key)
        else:
            plan.unchanged += 1
    plan.vanished = sorted(
        u
        for form, u in by_form.items()
        if fetch.under_prefix(form, canonical)
        and form not in seen
        and u not in seen
        and not any(fetch.under_prefix(form, d.rstrip("/")) for d in unlisted)
    )
    return plan


def cmd_sync(args: argparse.Namespace) -> int:
    from psycopg import sql

    from pgingest.raw import fetch, queries
    from pgingest.raw.errors import RawDocumentError
    from pgingest.worker.raw import with_allowlist

    prog = "pgingest source sync"

    def run() -> int:
        with _connect(args) as conn:
            cli_support.print_notices(conn, sys.stderr)
            src = queries.sync_source(conn, args.name)
            if src is None:
                print(f"{prog}: no source {args.name!r} (pgingest source list)", file=sys.stderr)
                return EXIT_INVALID
            if src.uri_column is None or src.key_columns != [src.uri_column]:
                print(
                    f"{prog}: source {args.name} is not keyed by a URI column alone (add it with"
                    " --uri COLUMN over a table whose primary key is that column)",
                    file=sys.stderr,
                )
                return EXIT_INVALID
            policy = with_allowlist(fetch.FetchPolicy.from_env(), queries.allowlist(conn))
            recorded = queries.recorded_objects(conn, args.name, src.uri_column)
            every = max(0, args.progress_every)

            def progress(n: int) -> None:
                if every and n % every == 0:
                    print(f"{prog}: {n:,} objects listed", file=sys.stderr, flush=True)

            unlisted: list[str] = []
            try:
                plan = plan_sync(
                    fetch.list_objects(args.prefix, policy, unlisted),
                    recorded,
                    args.prefix,
                    progress,
                    unlisted,
                )
            except RawDocumentError as exc:
                print(
                    f"{prog}: {fetch.redact_uri(args.prefix)}: {exc} (the sync stopped: nothing"
                    " was inserted, re-checked or deleted)",
                    file=sys.stderr,
                )
                return EXIT_INVALID if exc.error_class in ("bad_uri", "not_allowed") else EXIT_ERROR
            if unlisted:
                # A directory this user cannot read (a volume's lost+found) is not a failed
                # sync: the rest is synced, nothing under it is deleted, exit status 0.
                shown = ", ".join(fetch.redact_uri(u) for u in unlisted[:10])
                more = f" and {len(unlisted) - 10:,} more" if len(unlisted) > 10 else ""
                print(
                    f"{prog}: warning: {len(unlisted):,} paths could not be listed, their rows"
                    f" are kept (not deleted): {shown}{more}",
                    file=sys.stderr,
                )
            summary = (
                f"{plan.listed:,} objects listed: {len(plan.new):,} new, {len(plan.changed):,}"
                f" changed, {plan.unchanged:,} unchanged; {len(plan.vanished):,} vanished"
            )
            if args.dry_run:
                print(f"dry run: {summary}")
                for uri in plan.new:
                    print(f"  new       {uri}")
                for key in plan.changed:
                    print(f"  changed   {key.get(src.uri_column)}")
                for uri in plan.vanished:
                    print(f"  vanished  {uri}")
                return 0
            schema, table = queries.table_name(conn, args.name)
            target, column = sql.Identifier(schema, table), sql.Identifier(src.uri_column)
            with conn.transaction():
                for i in range(0, len(plan.new), 1000):
                    conn.execute(
                        sql.SQL(
                            "INSERT INTO {t} ({c}) SELECT u FROM unnest(%s::text[]) AS u"
                            " ON CONFLICT DO NOTHING"
                        ).format(t=target, c=column),
                        (plan.new[i : i + 1000],),
                    )
                if plan.vanished:
                    conn.execute(
                        sql.SQL("DELETE FROM {t} WHERE {c} = ANY (%s::text[])").format(
                            t=target, c=column
                        ),
                        (plan.vanished,),
                    )
                if plan.changed:
                    queries.refresh(conn, args.name, plan.changed)
            print(f"source {args.name} synced with {fetch.redact_uri(args.prefix)}: {summary}")
            return 0

    return _run(prog, run)


def cmd_refresh(args: argparse.Namespace) -> int:
    from pgingest.raw import queries

    prog = "pgingest source refresh"

    def run() -> int:
        keys: list[Any] | None = None
        with _connect(args) as conn:
            if args.keys:
                src = queries.sync_source(conn, args.name)
                keys = []
                for k in args.keys:
                    if k.lstrip().startswith("{"):
                        try:
                            keys.append(json.loads(k))
                        except json.JSONDecodeError as exc:
                            print(f"{prog}: {k!r} is not a JSON object: {exc}", file=sys.stderr)
                            return EXIT_INVALID
                    elif src is not None and src.uri_column and src.key_columns == [src.uri_column]:
                        keys.append({src.uri_column: k})
                    else:
                        print(
                            f"{prog}: {k!r}: give row keys as JSON objects (the source is not keyed"
                            " by a URI column alone)",
                            file=sys.stderr,
                        )
                        return EXIT_INVALID
            n = queries.refresh(conn, args.name, keys)
        print(f"source {args.name}: {n:,} rows queued for a re-check")
        return 0

    return _run(prog, run)
