"""Every SQL statement of the worker and the CLI lives here (style rule: one module owns the SQL).

Connections are autocommit; callers open explicit ``with conn.transaction():`` blocks, so no
transaction ever stays open across an HTTP call.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import psycopg
from psycopg import sql
from psycopg.rows import dict_row

APPLICATION_NAME = "pgingest"


def conninfo_from_env(conninfo: str | None = None) -> str:
    """``conninfo`` if given, else ``DATABASE_URL``, else '' (libpq reads the PG* variables)."""
    if conninfo:
        return conninfo
    return os.environ.get("DATABASE_URL", "")


def connect(
    conninfo: str | None = None,
    *,
    register_vector: bool = True,
    application_name: str = APPLICATION_NAME,
    **kwargs: Any,
) -> psycopg.Connection[Any]:
    conn = psycopg.connect(
        conninfo_from_env(conninfo),
        autocommit=True,
        application_name=application_name,
        **kwargs,
    )
    if register_vector:
        from pgvector.psycopg import register_vector as _register

        _register(conn)
    return conn


@dataclass(frozen=True)
class Model:
    name: str
    model_id: str
    base_url: str
    api_key_env: str | None
    dimensions: int
    storage: str
    metric: str
    max_input_tokens: int
    request_dimensions: bool
    state: str
    paused: bool
    paused_reason: str | None
    column_name: str
    queue_name: str
    index_method: str
    index_options: dict[str, Any]
    backfill_done: bool


@dataclass(frozen=True)
class Message:
    msg_id: int
    read_ct: int
    message: Any
    doc_id: int | None
    doc_key: str | None
    title: str | None
    body: str | None
    status: str  # current | stale | done | invalid

    @property
    def attempts_before(self) -> int:
        """Failed attempts already spent on this version (429 deferrals excluded)."""
        base = 0
        if isinstance(self.message, dict):
            raw = self.message.get("attempts", 0)
            base = raw if isinstance(raw, int) and raw >= 0 else 0
        # read_ct counts this delivery too; earlier unacknowledged deliveries were crashes or timeouts.
        return base + max(self.read_ct - 1, 0)

    @property
    def content_hash(self) -> bytes | None:
        if isinstance(self.message, dict):
            h = self.message.get("hash")
            if isinstance(h, str):
                try:
                    return bytes.fromhex(h)
                except ValueError:
                    return None
        return None


def get_config(conn: psycopg.Connection[Any]) -> dict[str, str]:
    rows = conn.execute("SELECT key, value FROM pgingest.config").fetchall()
    return {k: v for k, v in rows}


_MODEL_COLUMNS = """
    name, model_id, base_url, api_key_env, dimensions, storage, metric, max_input_tokens,
    request_dimensions, state, paused, paused_reason, column_name, queue_name, index_method,
    index_options, backfill_completed_at IS NOT NULL AS backfill_done
"""


def live_models(conn: psycopg.Connection[Any]) -> list[Model]:
    cur = conn.cursor(row_factory=dict_row)
    rows = cur.execute(
        f"SELECT {_MODEL_COLUMNS} FROM pgingest.models WHERE state <> 'retired' ORDER BY name"  # noqa: S608
    ).fetchall()
    return [Model(**r) for r in rows]


def get_model(conn: psycopg.Connection[Any], name: str) -> Model | None:
    cur = conn.cursor(row_factory=dict_row)
    row = cur.execute(
        f"SELECT {_MODEL_COLUMNS} FROM pgingest.models WHERE name = %s",  # noqa: S608
        (name,),
    ).fetchone()
    return Model(**row) if row else None


def read_batch(conn: psycopg.Connection[Any], model: str, vt: int, qty: int) -> list[Message]:
    rows = conn.execute(
        "SELECT msg_id, read_ct, message, doc_id, doc_key, title, body, status"
        " FROM pgingest.read_batch_v1(%s, %s, %s)",
        (model, vt, qty),
    ).fetchall()
    return [Message(*r) for r in rows]


@dataclass
class ChunkRows:
    """Column arrays for complete_batch_v1 (one entry per chunk)."""

    doc_ids: list[int]
    ordinals: list[int]
    contents: list[str]
    chunk_hashes: list[bytes]
    token_counts: list[int]
    char_starts: list[int]
    char_ends: list[int]
    embeddings: list[np.ndarray]


def complete_batch(
    conn: psycopg.Connection[Any],
    model: str,
    msg_ids: Sequence[int],
    doc_ids: Sequence[int],
    hashes: Sequence[bytes],
    rows: ChunkRows,
    chunker: str,
) -> tuple[int, int, int]:
    cur = conn.cursor(binary=True)
    row = cur.execute(
        "SELECT written, stale, chunks FROM pgingest.complete_batch_v1("
        "%b, %b::bigint[], %b::bigint[], %b::bytea[], %b::bigint[], %b::integer[], %b::text[],"
        " %b::bytea[], %b::integer[], %b::integer[], %b::integer[], %b::vector[], %b)",
        (
            model,
            list(msg_ids),
            list(doc_ids),
            list(hashes),
            rows.doc_ids,
            rows.ordinals,
            rows.contents,
            rows.chunk_hashes,
            rows.token_counts,
            rows.char_starts,
            rows.char_ends,
            rows.embeddings,
            chunker,
        ),
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2])


def dead_letter(
    conn: psycopg.Connection[Any],
    model: str,
    msg_ids: Sequence[int],
    doc_ids: Sequence[int | None],
    hashes: Sequence[bytes | None],
    error_classes: Sequence[str],
    error_messages: Sequence[str],
    attempts: Sequence[int],
    payloads: Sequence[Any],
) -> int:
    row = conn.execute(
        "SELECT pgingest.dead_letter_v1(%s, %s::bigint[], %s::bigint[], %s::bytea[], %s::text[],"
        " %s::text[], %s::integer[], %s::jsonb[])",
        (
            model,
            list(msg_ids),
            list(doc_ids),
            list(hashes),
            list(error_classes),
            list(error_messages),
            list(attempts),
            [json.dumps(p) if p is not None else None for p in payloads],
        ),
    ).fetchone()
    assert row is not None
    return int(row[0])


def defer(
    conn: psycopg.Connection[Any],
    model: str,
    msg_ids: Sequence[int],
    messages: Sequence[dict[str, Any]],
    delay_seconds: int,
) -> int:
    row = conn.execute(
        "SELECT pgingest.defer_v1(%s, %s::bigint[], %s::jsonb[], %s)",
        (model, list(msg_ids), [json.dumps(m) for m in messages], delay_seconds),
    ).fetchone()
    assert row is not None
    return int(row[0])


def release(conn: psycopg.Connection[Any], model: str, msg_ids: Sequence[int], delay: int) -> int:
    row = conn.execute(
        "SELECT pgingest.release_v1(%s, %s::bigint[], %s)", (model, list(msg_ids), delay)
    ).fetchone()
    assert row is not None
    return int(row[0])


def pause_model(conn: psycopg.Connection[Any], model: str, reason: str) -> None:
    conn.execute("SELECT pgingest.pause_model(%s, %s)", (model, reason))


def resume_model(conn: psycopg.Connection[Any], model: str) -> None:
    conn.execute("SELECT pgingest.resume_model(%s)", (model,))


def backfill_step(conn: psycopg.Connection[Any], model: str, batch: int) -> int:
    row = conn.execute("SELECT pgingest.backfill_step_v1(%s, %s)", (model, batch)).fetchone()
    assert row is not None
    return int(row[0])


def listen(conn: psycopg.Connection[Any]) -> None:
    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier("pgingest")))


def queue_depth(conn: psycopg.Connection[Any], queue_name: str) -> int:
    row = conn.execute(
        sql.SQL("SELECT count(*) FROM pgmq.{}").format(sql.Identifier("q_" + queue_name))
    ).fetchone()
    assert row is not None
    return int(row[0])
