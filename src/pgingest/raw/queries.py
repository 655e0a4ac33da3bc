"""The SQL of raw-document sources (``sql/016_raw.sql``): every statement the worker and the
source CLI run for them, so that ``worker/raw.py`` and ``sources_cli.py`` hold no SQL."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import psycopg
from psycopg.types.json import Jsonb

from pgingest.raw.errors import UNANSWERED_CLASSES


@dataclass(frozen=True)
class RawRow:
    """One raw document as ``raw_documents_v1`` gives it."""

    doc_id: int
    source: str
    paused_reason: str | None
    content: bytes | None
    content_bytes: int | None
    uri: str | None
    mime: str | None
    version: bytes
    sha256: bytes | None
    etag: str | None
    last_modified: str | None
    parsed_version: bytes | None
    refreshed_from: bytes | None


def raw_documents(
    conn: psycopg.Connection[Any], doc_ids: Sequence[int], max_bytes: int
) -> dict[int, RawRow]:
    rows = conn.execute(
        "SELECT doc_id, source, paused_reason, content, content_bytes, uri, mime, version, sha256,"
        " etag, last_modified, parsed_version, refreshed_from"
        " FROM pgingest.raw_documents_v1(%s::bigint[], %s)",
        (list(doc_ids), max_bytes),
    ).fetchall()
    return {
        int(r[0]): RawRow(
            int(r[0]),
            r[1],
            r[2],
            bytes(r[3]) if r[3] is not None else None,
            r[4],
            r[5],
            r[6],
            bytes(r[7]),
            bytes(r[8]) if r[8] is not None else None,
            r[9],
            r[10],
            bytes(r[11]) if r[11] is not None else None,
            bytes(r[12]) if r[12] is not None else None,
        )
        for r in rows
    }


@dataclass(frozen=True)
class Record:
    """What one fetch and parse found, for ``raw_record_v1`` (``error_class`` None: success)."""

    doc_id: int
    version: bytes
    sha256: bytes | None = None
    etag: str | None = None
    last_modified: str | None = None
    error_class: str | None = None
    structure: dict[str, Any] | None = None


def record(conn: psycopg.Connection[Any], records: Sequence[Record]) -> int:
    if not records:
        return 0
    row = conn.execute(
        "SELECT pgingest.raw_record_v1(%s::bigint[], %s::bytea[], %s::bytea[], %s::text[],"
        " %s::text[], %s::text[], %s::jsonb[])",
        (
            [r.doc_id for r in records],
            [r.version for r in records],
            [r.sha256 for r in records],
            [r.etag for r in records],
            [r.last_modified for r in records],
            [r.error_class for r in records],
            [Jsonb(r.structure) if r.structure is not None else None for r in records],
        ),
    ).fetchone()
    return int(row[0]) if row else 0


def unchanged(
    conn: psycopg.Connection[Any],
    doc_ids: Sequence[int],
    versions: Sequence[bytes],
    etags: Sequence[str | None],
    last_modified: Sequence[str | None],
) -> int:
    """Re-checked rows whose bytes did not change: their version before the refresh back, with
    the validators the re-check saw (None: the recorded one kept)."""
    if not doc_ids:
        return 0
    row = conn.execute(
        "SELECT pgingest.raw_unchanged_v2(%s::bigint[], %s::bytea[], %s::text[], %s::text[])",
        (list(doc_ids), list(versions), list(etags), list(last_modified)),
    ).fetchone()
    return int(row[0]) if row else 0


def refused_alone(
    conn: psycopg.Connection[Any], refusals: Sequence[tuple[int, bytes, str]]
) -> set[int]:
    """Of these source-wide refusals (doc_id, version, class), the documents that paused their
    source before while another document of it got through since (``raw_refused_alone_v2``:
    with no error, or with a class not in ``UNANSWERED_CLASSES``)."""
    if not refusals:
        return set()
    rows = conn.execute(
        "SELECT * FROM pgingest.raw_refused_alone_v2(%s::bigint[], %s::bytea[], %s::text[],"
        " %s::text[])",
        (
            [r[0] for r in refusals],
            [r[1] for r in refusals],
            [r[2] for r in refusals],
            sorted(UNANSWERED_CLASSES),
        ),
    ).fetchall()
    return {int(r[0]) for r in rows}


def pause_source(conn: psycopg.Connection[Any], source: str, reason: str) -> None:
    conn.execute("SELECT pgingest.raw_pause_source_v1(%s, %s)", (source, reason))


def resume_source(conn: psycopg.Connection[Any], source: str) -> None:
    conn.execute("SELECT pgingest.raw_resume_source_v1(%s)", (source,))


def allowlist(conn: psycopg.Connection[Any]) -> list[tuple[str, str]]:
    """The admin-managed allow-list; empty on a schema without it (before 0022)."""
    row = conn.execute(
        "SELECT to_regprocedure('pgingest.raw_allowlist_v1()') IS NOT NULL"
    ).fetchone()
    if not row or not row[0]:
        return []
    return [(k, v) for k, v in conn.execute("SELECT kind, value FROM pgingest.raw_allowlist_v1()")]


# -- source sync (sources_cli) ------------------------------------------------------------------


@dataclass(frozen=True)
class SyncSource:
    name: str
    table: str  # regclass text, quoted as needed
    key_columns: list[str]
    uri_column: str | None
    content_column: str | None


def sync_source(conn: psycopg.Connection[Any], name: str) -> SyncSource | None:
    row = conn.execute(
        "SELECT s.name, s.relid::regclass::text, s.key_columns, s.uri_column, s.content_column"
        " FROM pgingest.sources AS s WHERE s.name = %s AND s.id <> 0",
        (name,),
    ).fetchone()
    if row is None:
        return None
    return SyncSource(row[0], row[1], list(row[2]), row[3], row[4])


class RecordedObject(NamedTuple):
    """What a URI source's row recorded of its object's last fetch."""

    key: Any  # the row key, as jsonb
    etag: str | None
    sha256: bytes | None
    last_modified: str | None
    failed: bool = False  # the last fetch or parse failed (source_rows.parse_error_class)


def recorded_objects(
    conn: psycopg.Connection[Any], source: str, uri_column: str
) -> dict[str, RecordedObject]:
    """Per URI of a URI source's rows (its key being the URI column): its row key, the
    recorded ETag, sha256 and Last-Modified (those of the last success: a failure records
    none), and whether the last attempt failed."""
    rows = conn.execute(
        "SELECT r.row_key ->> %s, r.row_key, r.etag, r.sha256, r.last_modified,"
        " r.parse_error_class IS NOT NULL"
        " FROM pgingest.source_rows AS r"
        " INNER JOIN pgingest.sources AS s ON s.id = r.source_id WHERE s.name = %s",
        (uri_column, source),
    ).fetchall()
    return {
        u: RecordedObject(k, e, bytes(h) if h is not None else None, m, bool(f))
        for u, k, e, h, m, f in rows
        if u is not None
    }


def table_name(conn: psycopg.Connection[Any], source: str) -> tuple[str, str]:
    """(schema, table) of a source's table, for ``psycopg.sql.Identifier``."""
    row = conn.execute(
        "SELECT n.nspname, c.relname FROM pgingest.sources AS s"
        " INNER JOIN pg_catalog.pg_class AS c ON c.oid = s.relid"
        " INNER JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace WHERE s.name = %s",
        (source,),
    ).fetchone()
    if row is None:
        raise LookupError(f"source {source!r} has no table")
    return str(row[0]), str(row[1])


def refresh(conn: psycopg.Connection[Any], source: str, keys: Sequence[Any] | None) -> int:
    row = conn.execute(
        "SELECT pgingest.refresh_source_rows(%s, %s::jsonb[])",
        (source, None if keys is None else [Jsonb(k) for k in keys]),
    ).fetchone()
    return int(row[0]) if row else 0
