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
    "json_default",
    "positive_float",
    "print_notices",
    "report_db_error",
    "run_reporting_db_errors",
    "share",
    "table",
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
    standard error; returns the exit code for its SQLSTATE: ``EXIT_REFUSED`` (object not in
    prerequisite state, object in use), ``EXIT_INVALID`` (invalid parameter value, undefined or
    duplicate object, check violation), else ``EXIT_ERROR``."""
    import psycopg

    diag = getattr(exc, "diag", None)
    primary = (diag.message_primary if diag else None) or str(exc).strip()
    print(f"{prog}: {primary}", file=sys.stderr)
    if diag is not None and diag.message_detail:
        for line in diag.message_detail.splitlines():
            print(f"  {line}", file=sys.stderr)
    if diag is not None and diag.message_hint:
        print(f"  hint: {diag.message_hint}", file=sys.stderr)
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
