"""What every ``pgingest`` command shares: the ``--database-url`` option, exit codes, plain-text
tables, JSON of database values, server notices on the terminal and database errors as one
readable message with an exit code.

Used by ``cli.py`` and ``models_cli.py`` (and meant for ``status.py``). Cheap to import:
psycopg is imported only when a database error is handled, so ``pgingest --help`` stays fast.
"""

from __future__ import annotations

import argparse
import datetime as dt
import decimal
import math
import os
import re
import sys
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    import psycopg

__all__ = [
    "DATABASE_URL_HELP",
    "EXIT_ERROR",
    "EXIT_INVALID",
    "EXIT_OK",
    "EXIT_REFUSED",
    "add_database_url",
    "conninfo_error",
    "error_text",
    "json_default",
    "positive_float",
    "print_notices",
    "redact_conninfo",
    "report_db_error",
    "run_reporting_db_errors",
    "share",
    "table",
    "use_conninfo",
]

EXIT_OK = 0
EXIT_ERROR = 1
"""Anything that failed (a database error of no class below, an endpoint that failed)."""
EXIT_INVALID = 2
"""Invalid arguments: a bad or unknown name, a bad option value."""
EXIT_REFUSED = 3
"""Refused in the present state (``swap`` before the backfill is complete, say)."""

DATABASE_URL_HELP = (
    "libpq connection string or URL (default: $DATABASE_URL, else the PG* variables)"
)


def add_database_url(parser: argparse.ArgumentParser) -> None:
    """Adds ``--database-url`` (``args.database_url``, default None: libpq's defaults)."""
    parser.add_argument("--database-url", default=None, help=DATABASE_URL_HELP)


# -- argparse types: a bad value is a usage error (exit 2) before anything connects ----------


def positive_float(text: str) -> float:
    """A finite number > 0 (argparse ``type``)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def share(text: str) -> float:
    """A share: 0 <= value < 1 (argparse ``type``)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 <= value < 1:  # NaN too
        raise argparse.ArgumentTypeError(f"must be a share: 0 <= value < 1, got {text}")
    return value


# -- secrets of the connection string in messages --------------------------------------------

_conninfo: str | None = None
"""The ``--database-url`` of the command that runs (``use_conninfo``)."""

_QUOTED = re.compile(r'"([^"]*)"')
_URL_USERINFO = re.compile(r"^\s*[a-z][a-z0-9+.-]*://([^/?#]*)@", re.IGNORECASE)
_URL_PASSWORD = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^:/?#@\s]*:)[^@\s]*(@)", re.IGNORECASE)
_KEYWORD_PASSWORD = re.compile(r"(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'?|[^\s'\"]+)", re.IGNORECASE)

INVALID_CONNINFO_HINT = (
    "in a URL, percent-encode a % @ : / or space of the user name or password: %25 for %"
)


def use_conninfo(conninfo: str | None) -> None:
    """Names the connection string of the command that runs (its ``--database-url``), whose
    password ``redact_conninfo`` and ``error_text`` keep out of messages; None: $DATABASE_URL."""
    global _conninfo
    _conninfo = conninfo


def _in_use(conninfo: str | None) -> str:
    return conninfo or _conninfo or os.environ.get("DATABASE_URL") or ""


def _parses(conninfo: str) -> dict[str, Any] | None:
    """libpq's reading of ``conninfo``, or None when it cannot read it."""
    import psycopg

    try:
        return psycopg.conninfo.conninfo_to_dict(conninfo)
    except psycopg.Error:
        return None


def redact_conninfo(text: str, conninfo: str | None = None) -> str:
    """``text`` (a message about to be printed) with the password of the connection string in
    use (``conninfo``, else the one named by ``use_conninfo``, else $DATABASE_URL) replaced by
    ``***``, decoded or percent-encoded, and any ``scheme://user:password@`` or
    ``password=...`` in it. Of a string libpq cannot read, every double-quoted part of the
    message taken from the string goes too: libpq quotes the token it failed on, the password
    (or a piece of it) as well (review finding 10)."""
    from urllib.parse import quote

    ci = _in_use(conninfo)
    secrets: set[str] = set()
    if ci:
        params = _parses(ci)
        if params is None:
            text = _QUOTED.sub(
                lambda m: '"***"' if m.group(1) not in ("", "=") and m.group(1) in ci else m[0],
                text,
            )
        elif params.get("password"):
            pw = str(params["password"])
            secrets |= {pw, quote(pw, safe=""), quote(pw)}
        m = _URL_USERINFO.match(ci)
        if m and ":" in m.group(1):
            secrets.add(m.group(1).split(":", 1)[1])
        for m in _KEYWORD_PASSWORD.finditer(ci):
            secrets.add(m.group(2).strip("'"))
    for secret in sorted(secrets, key=len, reverse=True):
        if secret:
            text = text.replace(secret, "***")
    text = _URL_PASSWORD.sub(r"\1***\2", text)
    return _KEYWORD_PASSWORD.sub(r"\1***", text)


def conninfo_error(exc: BaseException, conninfo: str | None = None) -> str | None:
    """The message for ``exc`` when it is libpq refusing to read the connection string in use
    (a client-side error, raised before any connection): what libpq says, with the tokens it
    quotes hidden, and what to fix. None for any other error."""
    import psycopg

    ci = _in_use(conninfo)
    if (
        not isinstance(exc, psycopg.ProgrammingError)
        or getattr(exc, "sqlstate", None)
        or not ci
        or _parses(ci) is not None
    ):
        return None
    reason = redact_conninfo(str(exc).strip(), ci)
    return (
        f"the connection string (--database-url or $DATABASE_URL) is not valid: {reason}"
        f" ({INVALID_CONNINFO_HINT})"
    )


def error_text(exc: BaseException, conninfo: str | None = None) -> str:
    """The message of ``exc`` to print, with no secret of the connection string in it."""
    return conninfo_error(exc, conninfo) or redact_conninfo(str(exc).strip(), conninfo)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, rule: bool = True) -> str:
    """Rows as left-aligned columns two spaces apart, under ``headers`` and, with ``rule``, a
    line of dashes. ``None`` shows as an empty cell, anything else as ``str(value)``; no
    trailing spaces."""
    cells = [[("" if v is None else str(v)) for v in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    if rule:
        lines.append("  ".join("-" * w for w in widths))
    for r in cells:
        lines.append("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
    return "\n".join(lines)


def json_default(value: Any) -> Any:
    """``json.dumps(..., default=json_default)`` for database values: an interval as seconds,
    a timestamp, date or time in ISO 8601, a numeric as a float, a UUID as its string.
    Anything else raises ``TypeError``, as ``json`` does."""
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


def print_notices(conn: psycopg.Connection[Any], out: TextIO | None = None) -> None:
    """Shows the server's notices on ``conn`` (``RAISE NOTICE`` of the SQL functions) as they
    arrive, on ``out`` (default: standard error), with their detail and hint; a severity other
    than NOTICE is written before the message."""
    stream = sys.stderr if out is None else out

    def show(d: Any) -> None:
        sev = d.severity_nonlocalized or d.severity or "NOTICE"
        prefix = "" if sev == "NOTICE" else f"{sev}: "
        print(f"{prefix}{d.message_primary}", file=stream)
        if d.message_detail:
            print(f"  {d.message_detail}", file=stream)
        if d.message_hint:
            print(f"  hint: {d.message_hint}", file=stream)

    conn.add_notice_handler(show)


def report_db_error(prog: str, exc: Exception) -> int:
    """Prints ``prog: message`` for a database error, then its DETAIL lines and HINT, on
    standard error, without the password of the connection string (``error_text``); returns
    ``EXIT_INVALID`` for a connection string libpq cannot read, else the exit code for its
    SQLSTATE: ``EXIT_REFUSED`` (object not in prerequisite state, object in use),
    ``EXIT_INVALID`` (invalid parameter value, undefined or duplicate object, check violation),
    else ``EXIT_ERROR``."""
    import psycopg

    # No password of the connection string is printed (review finding 10).
    invalid = conninfo_error(exc)
    if invalid is not None:
        print(f"{prog}: {invalid}", file=sys.stderr)
        return EXIT_INVALID
    diag = getattr(exc, "diag", None)
    primary = diag.message_primary if diag else None
    primary = redact_conninfo(primary) if primary else error_text(exc)
    print(f"{prog}: {primary}", file=sys.stderr)
    if diag is not None and diag.message_detail:
        for line in redact_conninfo(diag.message_detail).splitlines():
            print(f"  {line}", file=sys.stderr)
    if diag is not None and diag.message_hint:
        print(f"  hint: {redact_conninfo(diag.message_hint)}", file=sys.stderr)
    if isinstance(exc, psycopg.errors.ObjectNotInPrerequisiteState | psycopg.errors.ObjectInUse):
        return EXIT_REFUSED
    if isinstance(
        exc,
        psycopg.errors.InvalidParameterValue
        | psycopg.errors.UndefinedObject
        | psycopg.errors.DuplicateObject
        | psycopg.errors.CheckViolation,
    ):
        return EXIT_INVALID
    return EXIT_ERROR


def run_reporting_db_errors(prog: str, fn: Callable[[], int]) -> int:
    """``fn()``, or the exit code of the database error it raised (see ``report_db_error``)."""
    import psycopg

    try:
        return fn()
    except psycopg.errors.DatabaseError as exc:
        return report_db_error(prog, exc)
