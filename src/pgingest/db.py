"""Every SQL statement of the worker and the CLI lives here (style rule: one module owns the SQL).

Connections are autocommit; callers open explicit ``with conn.transaction():`` blocks, so no
transaction ever stays open across an HTTP call.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import psycopg
from psycopg import sql
from psycopg.abc import Buffer
from psycopg.adapt import Dumper
from psycopg.pq import Format
from psycopg.rows import dict_row

from pgingest import vectors

APPLICATION_NAME = "pgingest"


def conninfo_from_env(conninfo: str | None = None) -> str:
    """``conninfo`` if given, else ``DATABASE_URL``, else '' (libpq reads the PG* variables)."""
    if conninfo:
        return conninfo
    return os.environ.get("DATABASE_URL", "")


def close_quietly(conn: psycopg.Connection[Any] | None) -> None:
    """Closes ``conn`` if there is one; closing a broken connection may fail: nothing to
    recover, so the failure is only logged at debug level."""
    if conn is None:
        return
    try:
        conn.close()
    except Exception:
        logging.getLogger("pgingest.db").debug("close failed", exc_info=True)


def connect(
    conninfo: str | None = None,
    *,
    register_vector: bool = True,
    application_name: str = APPLICATION_NAME,
    session_defaults: dict[str, str] | None = None,
    **kwargs: Any,
) -> psycopg.Connection[Any]:
    """``session_defaults``: settings made for the session where they are still at their
    built-in default (none of the DSN, PGOPTIONS, role, database or server configuration set
    them)."""
    conn = psycopg.connect(
        conninfo_from_env(conninfo),
        autocommit=True,
        application_name=application_name,
        **kwargs,
    )
    if session_defaults:
        conn.execute(
            "SELECT pg_catalog.set_config(s.name, d.value, false)"
            " FROM pg_catalog.pg_settings AS s"
            " INNER JOIN unnest(%s::text[], %s::text[]) AS d (name, value) ON d.name = s.name"
            " WHERE s.source = 'default'",
            (list(session_defaults), list(session_defaults.values())),
        )
    if register_vector:
        from pgvector.psycopg import register_vector as _register

        _register(conn)
        info = conn.adapters.types.get("vector")
        if info is not None:
            dumper = type(
                "VectorBlockDumper",
                (_VectorBlockDumper,),
                {"oid": info.array_oid, "element_oid": info.oid},
            )
            conn.adapters.register_dumper(VectorBlock, dumper)
    return conn


# The worker's connections (main, listener, writer, claims, heartbeat): a dead server or a
# black-holed network is noticed in about a minute instead of the kernel's two hours, a hung
# statement or a lock held by someone else fails the call instead of stalling the loop.
WORKER_TCP_DEFAULTS: dict[str, int] = {
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
    "tcp_user_timeout": 60_000,  # milliseconds
}


def worker_connect_params(
    conninfo: str | None,
    *,
    connect_timeout: int = 10,
    statement_timeout: float = 60.0,
    lock_timeout: float = 10.0,
) -> dict[str, Any]:
    """libpq parameters for a worker connection: ``connect_timeout``, TCP keepalives,
    ``tcp_user_timeout``, and ``statement_timeout`` and ``lock_timeout`` (seconds; 0 turns one
    off) as ``session_defaults`` for :func:`connect`. Whatever the
    connection string already names wins (``keepalives_idle=5``), and a session setting is set
    only where nothing else did: ``options='-c statement_timeout=5min'`` in the DSN,
    ``PGOPTIONS``, ``ALTER ROLE`` / ``ALTER DATABASE ... SET`` or postgresql.conf win."""
    from psycopg.conninfo import conninfo_to_dict

    given = conninfo_to_dict(conninfo_from_env(conninfo))
    params: dict[str, Any] = {}
    if "connect_timeout" not in given and "PGCONNECT_TIMEOUT" not in os.environ:
        params["connect_timeout"] = int(connect_timeout)
    for key, value in WORKER_TCP_DEFAULTS.items():
        if key not in given:
            params[key] = value
    params["session_defaults"] = {
        name: f"{int(round(max(0.0, seconds) * 1000))}ms"
        for name, seconds in (
            ("statement_timeout", statement_timeout),
            ("lock_timeout", lock_timeout),
        )
        if seconds > 0
    }
    return params


class VectorBlock:
    """The rows of a 2-D float32 array, sent as one ``vector[]`` parameter in binary.

    The array's wire format is built by numpy in one pass: element by element, the generic
    list dumper costs more CPU than the database spends storing the rows.
    """

    __slots__ = ("rows",)

    def __init__(self, rows: np.ndarray) -> None:
        if rows.ndim != 2:
            raise ValueError(f"a vector block is 2-D, got shape {rows.shape}")
        self.rows = rows


class _VectorBlockDumper(Dumper):
    """array_recv's format: ndim, flags, element type, (size, lower bound), then per element
    its length and vector_recv's format (int16 dim, int16 unused, float4 values), big-endian."""

    format = Format.BINARY
    element_oid = 0

    def dump(self, obj: VectorBlock) -> Buffer:
        n, d = obj.rows.shape
        if n == 0:
            return struct.pack(">iiI", 0, 0, self.element_oid)
        dtype = np.dtype([("len", ">i4"), ("dim", ">u2"), ("unused", ">u2"), ("v", ">f4", (d,))])
        header = struct.pack(">iiIii", 1, 0, self.element_oid, n, 1)
        out = bytearray(len(header) + n * dtype.itemsize)  # one buffer, no copy after it
        out[: len(header)] = header
        rec = np.frombuffer(out, dtype=dtype, offset=len(header))
        rec["len"] = 4 + 4 * d
        rec["dim"] = d
        rec["unused"] = 0
        rec["v"] = obj.rows
        return out


class PackedArray:
    """A 1-D array parameter already in ``array_recv``'s binary format, built in one pass (numpy
    for integers, one join for strings): psycopg's generic list dumper looks up and calls a dumper
    per element (0.8-2 us each, issue 19). ``int4``, ``int8``, ``text`` and ``bytea`` arrays;
    ``None`` elements are not supported (the write-back has none)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes | bytearray) -> None:
        self.data = data


class Int4Array(PackedArray):
    __slots__ = ()

    def __init__(self, values: Sequence[int]) -> None:
        super().__init__(_pack_ints(values, 23, ">i4"))


class Int8Array(PackedArray):
    __slots__ = ()

    def __init__(self, values: Sequence[int]) -> None:
        super().__init__(_pack_ints(values, 20, ">i8"))


class TextArray(PackedArray):
    __slots__ = ()

    def __init__(self, values: Sequence[str]) -> None:
        super().__init__(_pack_varlena([v.encode("utf-8") for v in values], 25))


class ByteaArray(PackedArray):
    __slots__ = ()

    def __init__(self, values: Sequence[bytes]) -> None:
        super().__init__(_pack_varlena(values, 17))


def _array_header(element_oid: int, n: int) -> bytes:
    if n == 0:
        return struct.pack(">iiI", 0, 0, element_oid)
    return struct.pack(">iiIii", 1, 0, element_oid, n, 1)


def _pack_ints(values: Sequence[int], element_oid: int, code: str) -> bytearray:
    arr = np.asarray(values, dtype=np.int64)
    if arr.ndim != 1:
        raise ValueError(f"an integer array is 1-D, got shape {arr.shape}")
    info = np.iinfo(np.dtype(code))
    if arr.size and (int(arr.min()) < info.min or int(arr.max()) > info.max):
        raise ValueError(f"a value out of the range of {np.dtype(code).name}")
    header = _array_header(element_oid, arr.size)
    dtype = np.dtype([("len", ">i4"), ("v", code)])
    out = bytearray(len(header) + arr.size * dtype.itemsize)
    out[: len(header)] = header
    rec = np.frombuffer(out, dtype=dtype, offset=len(header))
    rec["len"] = np.dtype(code).itemsize
    rec["v"] = arr
    return out


def _pack_varlena(values: Sequence[bytes], element_oid: int) -> bytes:
    n = len(values)
    lengths = np.fromiter(map(len, values), dtype=">i4", count=n).tobytes()
    prefixes = [lengths[i : i + 4] for i in range(0, 4 * n, 4)]
    return _array_header(element_oid, n) + b"".join(
        itertools.chain.from_iterable(zip(prefixes, values, strict=True))
    )


class _PackedArrayDumper(Dumper):
    format = Format.BINARY

    def dump(self, obj: PackedArray) -> Buffer:
        return obj.data


def _packed_dumper(name: str, array_oid: int) -> type[Dumper]:
    return type(name, (_PackedArrayDumper,), {"oid": array_oid})


# (class, its dumper): the array types' OIDs are built in.
_PACKED_DUMPERS: tuple[tuple[type[PackedArray], type[Dumper]], ...] = (
    (Int4Array, _packed_dumper("Int4ArrayDumper", 1007)),
    (Int8Array, _packed_dumper("Int8ArrayDumper", 1016)),
    (TextArray, _packed_dumper("TextArrayDumper", 1009)),
    (ByteaArray, _packed_dumper("ByteaArrayDumper", 1001)),
)


def packed_cursor(conn: psycopg.Connection[Any]) -> psycopg.Cursor[Any]:
    """A binary cursor that can send :class:`PackedArray` parameters."""
    cur = conn.cursor(binary=True)
    for cls, dumper in _PACKED_DUMPERS:
        cur.adapters.register_dumper(cls, dumper)
    return cur


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
    store_name: str
    queue_name: str
    index_method: str
    index_options: dict[str, Any]
    backfill_done: bool
    # The chunking profile (pgingest.chunk_profiles); defaults: the default profile.
    profile_id: int = 1
    chunk_tokenizer: str = "all-MiniLM-L6-v2"
    chunk_max_tokens: int = 200
    chunk_overlap_tokens: int = 20
    title_in_chunks: bool = True
    # Its backfills go through the provider's Batch API (set_model_batch_api; worker/bulk.py).
    batch_api: bool = False


@dataclass(frozen=True)
class Message:
    msg_id: int
    read_ct: int
    message: Any
    doc_id: int | None
    doc_key: str | None
    title: str | None
    body: str | None
    status: str  # current | stale | done | invalid | too_large

    @property
    def attempts_recorded(self) -> int:
        """Failed attempts recorded in the message body (transient failures, 429 deferrals
        excluded), not counting crashes: ``worker.batch.attempts_before`` adds the charged ones."""
        if isinstance(self.message, dict):
            raw = self.message.get("attempts", 0)
            return raw if isinstance(raw, int) and raw >= 0 else 0
        return 0

    @property
    def crashes(self) -> int:
        """Earlier deliveries of this message that were neither acknowledged nor released: the
        worker died or hung (claims are extended while a worker is alive). read_ct counts this
        delivery too; a release (``release_v2``) gives its delivery back."""
        return max(self.read_ct - 1, 0)

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
    m.name, m.model_id, m.base_url, m.api_key_env, m.dimensions, m.storage, m.metric,
    m.max_input_tokens, m.request_dimensions, m.state, m.paused, m.paused_reason, m.store_name,
    m.queue_name, m.index_method, m.index_options, m.backfill_completed_at IS NOT NULL AS backfill_done,
    m.profile_id, p.tokenizer AS chunk_tokenizer, p.max_tokens AS chunk_max_tokens,
    p.overlap_tokens AS chunk_overlap_tokens, p.title_in_chunks, m.batch_api
"""
_MODEL_FROM = "pgingest.models AS m JOIN pgingest.chunk_profiles AS p ON p.id = m.profile_id"


def live_models(conn: psycopg.Connection[Any]) -> list[Model]:
    cur = conn.cursor(row_factory=dict_row)
    rows = cur.execute(
        f"SELECT {_MODEL_COLUMNS} FROM {_MODEL_FROM} WHERE m.state <> 'retired' ORDER BY m.name"  # noqa: S608
    ).fetchall()
    return [Model(**r) for r in rows]


def get_model(conn: psycopg.Connection[Any], name: str) -> Model | None:
    cur = conn.cursor(row_factory=dict_row)
    row = cur.execute(
        f"SELECT {_MODEL_COLUMNS} FROM {_MODEL_FROM} WHERE m.name = %s",  # noqa: S608
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


# -- provider batches (the Batch API, sql/075_provider_batches.sql) ------------------------------


@dataclass(frozen=True)
class ProviderBatch:
    """A row of pgingest.provider_batches that this worker leases."""

    id: int
    submission: str
    state: str  # preparing | submitted | collecting
    provider_batch_id: str | None
    input_file_id: str | None
    messages: int
    input_hashes: list[bytes] | None


def provider_batch_open(
    conn: psycopg.Connection[Any], model: str, max_messages: int, worker: str, lease: int
) -> int | None:
    row = conn.execute(
        "SELECT pgingest.provider_batch_open_v1(%s, %s, %s, %s)",
        (model, max_messages, worker, lease),
    ).fetchone()
    return None if row is None or row[0] is None else int(row[0])


def provider_batch_lease(
    conn: psycopg.Connection[Any], model: str, worker: str, lease: int
) -> ProviderBatch | None:
    row = conn.execute(
        "SELECT id, submission::text, state, provider_batch_id, input_file_id, messages,"
        " input_hashes FROM pgingest.provider_batch_lease_v1(%s, %s, %s)",
        (model, worker, lease),
    ).fetchone()
    if row is None:
        return None
    hashes = None if row[6] is None else [bytes(h) for h in row[6]]
    return ProviderBatch(row[0], row[1], row[2], row[3], row[4], row[5], hashes)


_PROVIDER_BATCH_FIELDS = frozenset(
    (
        "state",
        "provider_batch_id",
        "input_file_id",
        "provider_status",
        "input_hashes",
        "tokens",
        "requests_completed",
        "requests_failed",
        "error",
        "inputs_embedded",
        "inputs_rejected",
        "inputs_online",
    )
)


def provider_batch_update(
    conn: psycopg.Connection[Any], batch_id: int, worker: str, lease: int, **fields: Any
) -> bool:
    """``provider_batch_update_v1`` with the named fields (state, provider_batch_id,
    input_file_id, provider_status, input_hashes, tokens, requests_completed,
    requests_failed, error, inputs_embedded, inputs_rejected, inputs_online)."""
    names = sorted(fields)
    unknown = set(names) - _PROVIDER_BATCH_FIELDS
    if unknown:
        raise ValueError(f"provider_batch_update: unknown fields {sorted(unknown)}")
    args = ", ".join(f"p_{n} => %s" for n in names)
    row = conn.execute(
        f"SELECT pgingest.provider_batch_update_v1(%s, %s, {args}, p_lease_seconds => %s)",
        (batch_id, worker, *(fields[n] for n in names), lease),
    ).fetchone()
    return bool(row and row[0])


def provider_batch_release(
    conn: psycopg.Connection[Any], batch_id: int, worker: str, msg_ids: Sequence[int]
) -> int:
    row = conn.execute(
        "SELECT pgingest.provider_batch_release_v1(%s, %s, %s::bigint[])",
        (batch_id, worker, list(msg_ids)),
    ).fetchone()
    return int(row[0]) if row else 0


def provider_batch_rows(
    conn: psycopg.Connection[Any], model: str | None = None, *, latest: bool = False
) -> list[dict[str, Any]]:
    """Rows of ``pgingest.provider_batch_status`` as dicts, by model and id: the model's (or
    every model's); ``latest``: only those not collected and each model's last one."""
    from psycopg.rows import dict_row

    where = []
    if model is not None:
        where.append("b.model = %(model)s")
    if latest:
        where.append(
            "(b.state <> 'collected' OR b.id = (SELECT max(x.id)"
            " FROM pgingest.provider_batch_status AS x WHERE x.model = b.model))"
        )
    query = "SELECT * FROM pgingest.provider_batch_status AS b"
    if where:
        query += " WHERE " + " AND ".join(where)
    cur = conn.cursor(row_factory=dict_row)
    return cur.execute(query + " ORDER BY b.model, b.id", {"model": model}).fetchall()


def provider_batch_unlease(conn: psycopg.Connection[Any], worker: str) -> int:
    row = conn.execute("SELECT pgingest.provider_batch_unlease_v1(%s)", (worker,)).fetchone()
    return int(row[0]) if row else 0


def provider_batch_messages(
    conn: psycopg.Connection[Any], batch_id: int, worker: str, vt: int, take: int = 0
) -> list[Message]:
    """The messages of a provider batch the worker leases, with their documents. ``take``: the
    next ``take`` pending ones are taken out of the batch (visible again after ``vt``
    seconds); 0: every pending one, untouched."""
    rows = conn.execute(
        "SELECT msg_id, read_ct, message, doc_id, doc_key, title, body, status"
        " FROM pgingest.provider_batch_messages_v1(%s, %s, %s, %s, %s)",
        (batch_id, worker, vt, max(1, take), take > 0),
    ).fetchall()
    return [Message(*r) for r in rows]


@dataclass
class ChunkRows:
    """Column arrays for complete_batch_v2 (one entry per chunk)."""

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
    profile_id: int,
) -> tuple[int, int, int]:
    cur = packed_cursor(conn)
    row = cur.execute(
        "SELECT written, stale, chunks FROM pgingest.complete_batch_v2("
        "%b, %b::bigint[], %b::bigint[], %b::bytea[], %b::bigint[], %b::integer[], %b::text[],"
        " %b::bytea[], %b::integer[], %b::integer[], %b::integer[], %b::vector[], %b, %b::integer)",
        (
            model,
            Int8Array(msg_ids),
            Int8Array(doc_ids),
            ByteaArray(hashes),
            Int8Array(rows.doc_ids),
            Int4Array(rows.ordinals),
            TextArray(rows.contents),
            ByteaArray(rows.chunk_hashes),
            Int4Array(rows.token_counts),
            Int4Array(rows.char_starts),
            Int4Array(rows.char_ends),
            VectorBlock(
                np.asarray(rows.embeddings, dtype=np.float32).reshape(len(rows.embeddings), -1)
                if rows.embeddings
                else np.zeros((0, 0), dtype=np.float32)
            ),
            chunker,
            profile_id,
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


def release(
    conn: psycopg.Connection[Any],
    model: str,
    msg_ids: Sequence[int],
    read_cts: Sequence[int],
    delay: int,
) -> int:
    """Makes the messages this worker still holds (read as ``read_cts``) visible again after
    ``delay`` seconds without charging an attempt (``release_v2``: the delivery is given back);
    returns how many were released."""
    row = conn.execute(
        "SELECT pgingest.release_v2(%s, %s::bigint[], %s::integer[], %s)",
        (model, list(msg_ids), list(read_cts), delay),
    ).fetchone()
    assert row is not None
    return int(row[0])


def extend_claims(
    conn: psycopg.Connection[Any],
    model: str,
    msg_ids: Sequence[int],
    read_cts: Sequence[int],
    vt: int,
) -> int:
    """Keeps claimed messages invisible ``vt`` seconds more (only those still read as
    ``read_ct``); returns how many were extended."""
    row = conn.execute(
        "SELECT pgingest.extend_claims_v1(%s, %s::bigint[], %s::integer[], %s)",
        (model, list(msg_ids), list(read_cts), vt),
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


def source_backfill_step(conn: psycopg.Connection[Any], batch: int) -> int:
    """Registers and queues the next rows of an attached table being backfilled
    (``source_backfill_step_v1``): the number of rows, 0 when no source backfill is left, -1
    while the queues are too deep (the step waits, the application's changes keep their
    freshness)."""
    row = conn.execute("SELECT pgingest.source_backfill_step_v1(%s)", (batch,)).fetchone()
    assert row is not None
    return int(row[0])


def worker_idle(conn: psycopg.Connection[Any], models: Sequence[str]) -> None:
    """The worker is about to sleep until a NOTIFY: the capture of ``models`` notifies again
    (``worker_idle_v1``; the capture notifies only while a worker waits)."""
    conn.execute("SELECT pgingest.worker_idle_v1(%s::text[])", (list(models),))


def listen(conn: psycopg.Connection[Any]) -> None:
    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier("pgingest")))


# -- model lifecycle: register, progress, indexes, comparison, swap, retire -------------------
# (sql/030_models.sql and sql/040_lifecycle.sql; used by models_cli.py and index.py)

_DISTANCE_OPERATORS = {"cosine": "<=>", "ip": "<#>", "l2": "<->"}


def register_model(
    conn: psycopg.Connection[Any],
    name: str,
    model_id: str,
    dimensions: int,
    base_url: str,
    *,
    storage: str = "vector",
    metric: str = "cosine",
    max_input_tokens: int = 256,
    api_key_env: str | None = None,
    index_method: str = "hnsw",
    index_options: dict[str, Any] | None = None,
    request_dimensions: bool = False,
    chunk_tokenizer: str | None = None,
    chunk_max_tokens: int | None = None,
    chunk_overlap_tokens: int | None = None,
    title_in_chunks: bool | None = None,
) -> str:
    """``pgingest.register_model(...)``; returns the new model's state (active or shadow). The
    chunking profile's parameters left None take the default profile's (config ``chunk_*``)."""
    row = conn.execute(
        "SELECT pgingest.register_model(name => %s, model_id => %s, dimensions => %s,"
        " base_url => %s, storage => %s, metric => %s, max_input_tokens => %s,"
        " api_key_env => %s, index_method => %s, index_options => %s::jsonb,"
        " request_dimensions => %s, chunk_tokenizer => %s, chunk_max_tokens => %s,"
        " chunk_overlap_tokens => %s, title_in_chunks => %s)",
        (
            name,
            model_id,
            dimensions,
            base_url,
            storage,
            metric,
            max_input_tokens,
            api_key_env,
            index_method,
            json.dumps(index_options or {}),
            request_dimensions,
            chunk_tokenizer,
            chunk_max_tokens,
            chunk_overlap_tokens,
            title_in_chunks,
        ),
    ).fetchone()
    assert row is not None
    return str(row[0])


def swap_model(conn: psycopg.Connection[Any], name: str, *, force: bool = False) -> str:
    row = conn.execute("SELECT pgingest.swap_model(%s, force => %s)", (name, force)).fetchone()
    assert row is not None
    return str(row[0])


def retire_model(conn: psycopg.Connection[Any], name: str) -> str:
    row = conn.execute("SELECT pgingest.retire_model(%s)", (name,)).fetchone()
    assert row is not None
    return str(row[0])


def run_backfill(conn: psycopg.Connection[Any], name: str, batch: int = 5000) -> None:
    """``CALL pgingest.run_backfill``: commits after every batch, so ``conn`` must be autocommit."""
    conn.execute("CALL pgingest.run_backfill(%s, %s)", (name, batch))


def all_models(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    """Every registered model, retired ones included, in name order."""
    cur = conn.cursor(row_factory=dict_row)
    return cur.execute(
        "SELECT name, model_id, base_url, dimensions, storage, metric, max_input_tokens, state,"
        " paused, paused_reason, index_method, index_options, created_at, activated_at,"
        " retired_at FROM pgingest.models ORDER BY name"
    ).fetchall()


def backfill_progress(
    conn: psycopg.Connection[Any], name: str | None = None
) -> list[dict[str, Any]]:
    cur = conn.cursor(row_factory=dict_row)
    return cur.execute(
        "SELECT model, state, paused, documents, embedded, dead_lettered, pending, percent,"
        " backfill_queued_all, backfill_queued, rate_per_s, eta FROM pgingest.backfill_progress"
        " WHERE %(name)s::text IS NULL OR model = %(name)s ORDER BY model",
        {"name": name},
    ).fetchall()


def model_index_status(
    conn: psycopg.Connection[Any], name: str | None = None
) -> list[dict[str, Any]]:
    cur = conn.cursor(row_factory=dict_row)
    return cur.execute("SELECT * FROM pgingest.model_index_status(%s)", (name,)).fetchall()


def index_ddl(conn: psycopg.Connection[Any], name: str, *, concurrent: bool = True) -> str:
    """The CREATE INDEX statement of a model's ANN index, built by the server with format('%I')."""
    row = conn.execute("SELECT pgingest.index_ddl(%s, %s)", (name, concurrent)).fetchone()
    assert row is not None
    return str(row[0])


def execute_ddl(conn: psycopg.Connection[Any], ddl: str) -> None:
    """Runs DDL text composed by the server (``index_ddl``); ``conn`` must be autocommit."""
    conn.execute(sql.SQL(ddl))  # built by pgingest.index_ddl with format('%I')


def drop_index_concurrently(conn: psycopg.Connection[Any], index_name: str) -> None:
    conn.execute(
        sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}.{}").format(
            sql.Identifier("pgingest"), sql.Identifier(index_name)
        )
    )


def reindex_concurrently(conn: psycopg.Connection[Any], index_name: str) -> None:
    conn.execute(
        sql.SQL("REINDEX INDEX CONCURRENTLY {}.{}").format(
            sql.Identifier("pgingest"), sql.Identifier(index_name)
        )
    )


def set_session(conn: psycopg.Connection[Any], setting: str, value: str) -> str:
    """``SET`` for the session (``set_config(..., false)``); returns the value now in effect."""
    row = conn.execute("SELECT set_config(%s, %s, false)", (setting, value)).fetchone()
    assert row is not None
    return str(row[0])


def show(conn: psycopg.Connection[Any], setting: str) -> str | None:
    row = conn.execute("SELECT current_setting(%s, true)", (setting,)).fetchone()
    return None if row is None or row[0] is None else str(row[0])


def create_index_progress(conn: psycopg.Connection[Any], pid: int) -> dict[str, Any] | None:
    """The row of ``pg_stat_progress_create_index`` for backend ``pid`` (None when idle)."""
    cur = conn.cursor(row_factory=dict_row)
    return cur.execute(
        "SELECT phase, blocks_total, blocks_done, tuples_total, tuples_done, lockers_total,"
        " lockers_done, partitions_total, partitions_done"
        " FROM pg_stat_progress_create_index WHERE pid = %s",
        (pid,),
    ).fetchone()


def sample_chunk_texts(
    conn: psycopg.Connection[Any], models: Sequence[Model], n: int, seed: float | None = None
) -> list[str]:
    """Texts of the first chunk (in the first model's profile) of ``n`` random documents with
    vectors in the store of every one of ``models``."""
    with conn.transaction():
        if seed is not None:
            conn.execute("SELECT setseed(%s)", (seed,))
        filters = sql.SQL(" AND ").join(
            sql.SQL("EXISTS (SELECT 1 FROM pgingest.{} AS s WHERE s.doc_id = c.doc_id)").format(
                sql.Identifier(m.store_name)
            )
            for m in models
        )
        rows = conn.execute(
            sql.SQL(
                "SELECT c.content FROM pgingest.chunks AS c"
                " WHERE c.profile_id = %s AND c.ordinal = 0 AND {}"
                " ORDER BY random() LIMIT %s"
            ).format(filters),
            (models[0].profile_id, n),
        ).fetchall()
    return [str(r[0]) for r in rows]


def knn(
    conn: psycopg.Connection[Any],
    model: Model,
    query: np.ndarray,
    k: int,
    *,
    exact: bool = False,
) -> list[tuple[int, int]]:
    """(doc_id, ordinal) of the ``k`` chunks nearest to ``query`` in ``model``'s store, through
    its ANN index, or by exact search (index scans off, in a transaction) when ``exact``."""
    if model.storage not in vectors.STORAGES:
        raise ValueError(f"unknown storage {model.storage!r}")
    query_sql = sql.SQL(
        "SELECT doc_id, ordinal FROM pgingest.{store} ORDER BY embedding {op} %s::{typ} LIMIT %s"
    ).format(
        store=sql.Identifier(model.store_name),
        op=sql.SQL(_DISTANCE_OPERATORS[model.metric]),
        typ=sql.SQL(model.storage),
    )
    params = (np.asarray(query, dtype=np.float32), k)
    if not exact:
        return [(int(r[0]), int(r[1])) for r in conn.execute(query_sql, params).fetchall()]
    with conn.transaction():
        conn.execute("SET LOCAL enable_indexscan = off")
        return [(int(r[0]), int(r[1])) for r in conn.execute(query_sql, params).fetchall()]


# -- search (CLI) ------------------------------------------------------------------------------


def active_model(conn: psycopg.Connection[Any]) -> Model | None:
    cur = conn.cursor(row_factory=dict_row)
    row = cur.execute(
        f"SELECT {_MODEL_COLUMNS} FROM {_MODEL_FROM} WHERE m.state = 'active'"  # noqa: S608
    ).fetchone()
    return Model(**row) if row else None


def search(
    conn: psycopg.Connection[Any],
    query_vector: np.ndarray,
    k: int,
    filter_: dict[str, Any],
    per_document: bool,
    model: str | None,
    sources: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """pgingest.search(): the nearest chunks, with the source and the key (jsonb) of the row each
    comes from; ``sources``: only these sources (None: all)."""
    from pgvector import Vector

    cur = conn.cursor(row_factory=dict_row)
    return cur.execute(
        "SELECT doc_id, doc_key, title, ordinal, content, distance, metadata, model_name, source,"
        " source_key FROM pgingest.search(%s, %s, %s::jsonb, %s, %s, sources => %s::text[])",
        (
            Vector(query_vector),
            k,
            json.dumps(filter_),
            per_document,
            model,
            None if sources is None else list(sources),
        ),
    ).fetchall()


# -- operations: heartbeats and the status views (sql/050_status.sql) ---------------------------

STATUS_VIEWS = (
    "model_status",
    "dead_letter_summary",
    "worker_status",
    "vector_health",
    "index_builds",
)
_STATUS_ORDER = {
    "model_status": ("model",),
    "dead_letter_summary": ("model", "error_class"),
    "worker_status": ("host", "pid", "started_at"),
    "vector_health": ("model",),
    "index_builds": ("pid",),
}


def heartbeat(
    conn: psycopg.Connection[Any],
    worker_id: str,
    host: str,
    pid: int,
    version: str,
    models: Sequence[str],
    in_flight: int,
    batch_size: int | None,
    documents: int,
    seconds_since_batch: float | None,
    details: dict[str, Any],
    seconds_since_tick: float | None = None,
) -> int:
    """Upserts this worker's row in pgingest.workers; returns the heartbeat interval (s)."""
    row = conn.execute(
        "SELECT pgingest.heartbeat_v2(%s::uuid, %s, %s, %s, %s::text[], %s, %s, %s, %s, %s::jsonb,"
        " %s::double precision)",
        (
            worker_id,
            host,
            pid,
            version,
            list(models),
            in_flight,
            batch_size,
            documents,
            seconds_since_batch,
            json.dumps(details),
            seconds_since_tick,
        ),
    ).fetchone()
    assert row is not None
    return int(row[0])


def worker_exit(conn: psycopg.Connection[Any], worker_id: str) -> bool:
    row = conn.execute("SELECT pgingest.worker_exit_v1(%s::uuid)", (worker_id,)).fetchone()
    return bool(row and row[0])


def forget_stale_workers(conn: psycopg.Connection[Any], older_than_seconds: float | None) -> int:
    row = conn.execute(
        "SELECT pgingest.forget_stale_workers(%s * interval '1 second')", (older_than_seconds,)
    ).fetchone()
    assert row is not None
    return int(row[0])


def queue_stats(conn: psycopg.Connection[Any], model: str | None = None) -> list[dict[str, Any]]:
    """Per live model: queue_length, ready, in_flight, delayed, oldest_age_seconds (pgmq)."""
    cur = conn.cursor(row_factory=dict_row)
    return cur.execute(
        "SELECT model, queue_name, queue_length, ready, in_flight, delayed, oldest_enqueued_at,"
        " oldest_age_seconds FROM pgingest.queue_stats_v1(%s)",
        (model,),
    ).fetchall()


def has_messages(conn: psycopg.Connection[Any], model: str) -> bool:
    """Whether a model's queue holds any message, visible or not (``queue_has_messages_v1``:
    one row read, not a count; the worker role cannot read pgmq)."""
    row = conn.execute("SELECT pgingest.queue_has_messages_v1(%s)", (model,)).fetchone()
    return bool(row and row[0])


def pending_messages(conn: psycopg.Connection[Any], model: str) -> int:
    """Messages in a model's queue (through queue_stats_v1: the worker role cannot read pgmq)."""
    rows = queue_stats(conn, model)
    return int(rows[0]["queue_length"] or 0) if rows else 0


def status_view(conn: psycopg.Connection[Any], view: str) -> list[dict[str, Any]]:
    """All rows of one of the status views (``STATUS_VIEWS``), in a stable order."""
    if view not in STATUS_VIEWS:
        raise ValueError(f"not a status view: {view!r}")
    query = sql.SQL("SELECT * FROM {} ORDER BY {}").format(
        sql.Identifier("pgingest", view),
        sql.SQL(", ").join(sql.Identifier(c) for c in _STATUS_ORDER[view]),
    )
    return conn.cursor(row_factory=dict_row).execute(query).fetchall()


# -- demo --------------------------------------------------------------------------------------


def upsert_documents(
    conn: psycopg.Connection[Any], docs: Sequence[tuple[str, str, str, Any]]
) -> None:
    """Upserts (key, title, body, metadata) by key with COPY; unchanged rows are not touched."""
    with conn.transaction():
        conn.execute(
            "CREATE TEMP TABLE pgingest_load (key text, title text, body text, metadata jsonb)"
            " ON COMMIT DROP"
        )
        with conn.cursor().copy("COPY pgingest_load (key, title, body, metadata) FROM STDIN") as cp:
            for key, title, body, metadata in docs:
                cp.write_row((key, title, body, json.dumps(metadata)))
        conn.execute(
            "INSERT INTO pgingest.documents AS t (key, title, body, metadata)"
            " SELECT key, title, body, metadata FROM pgingest_load"
            " ON CONFLICT (key) DO UPDATE SET title = EXCLUDED.title, body = EXCLUDED.body,"
            " metadata = EXCLUDED.metadata"
            " WHERE (t.title, t.body, t.metadata) IS DISTINCT FROM"
            " (EXCLUDED.title, EXCLUDED.body, EXCLUDED.metadata)"
        )


def model_progress(conn: psycopg.Connection[Any], model: str) -> tuple[int, int, int]:
    """(documents, embedded at their current version, dead-lettered) for a model."""
    row = conn.execute(
        "SELECT (SELECT count(*) FROM pgingest.documents),"
        " (SELECT count(*) FROM pgingest.embedding_state s JOIN pgingest.documents d"
        "   ON d.id = s.doc_id AND d.content_hash = s.content_hash WHERE s.model = %s),"
        " (SELECT count(*) FROM pgingest.dead_letters WHERE model = %s)",
        (model, model),
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2])


def chunk_stats(conn: psycopg.Connection[Any]) -> tuple[int, int]:
    row = conn.execute(
        "SELECT count(*), coalesce(sum(token_count), 0) FROM pgingest.chunks"
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def search_text(
    conn: psycopg.Connection[Any], query: str, k: int, per_document: bool, embedding_url: str | None
) -> list[tuple[Any, ...]]:
    """pgingest.search_text() (the PL/Python path), optionally with the endpoint overridden."""
    with conn.transaction():
        if embedding_url:
            conn.execute("SELECT set_config('pgingest.embedding_url', %s, true)", (embedding_url,))
        return conn.execute(
            "SELECT doc_key, title, distance FROM pgingest.search_text(%s, %s, per_document => %s)",
            (query, k, per_document),
        ).fetchall()


def sample_documents(conn: psycopg.Connection[Any], limit: int) -> list[tuple[str | None, str]]:
    return [
        (r[0], r[1])
        for r in conn.execute(
            "SELECT title, body FROM pgingest.documents ORDER BY id LIMIT %s", (limit,)
        )
    ]


# -- embedding cache, maintenance ----------------------------------------------------------------


def cached_vectors(
    conn: psycopg.Connection[Any], model: str, hashes: Sequence[bytes]
) -> dict[bytes, np.ndarray]:
    """Vectors this model already computed for these exact inputs (live chunks, then the cache)."""
    if not hashes:
        return {}
    cur = conn.cursor(binary=True)
    rows = cur.execute(
        "SELECT chunk_hash, embedding FROM pgingest.cached_vectors_v1(%b, %b::bytea[])",
        (model, list(hashes)),
    ).fetchall()
    return {
        bytes(h): np.asarray(v.to_numpy() if hasattr(v, "to_numpy") else v, dtype=np.float32)
        for h, v in rows
    }


def run_maintenance(conn: psycopg.Connection[Any]) -> dict[str, int]:
    row = conn.execute("SELECT pgingest.run_maintenance()").fetchone()
    assert row is not None
    return {k: int(v) for k, v in row[0].items()}


def hybrid_search(
    conn: psycopg.Connection[Any],
    query_text: str,
    query_vector: np.ndarray,
    k: int,
    filter_: dict[str, Any],
    sources: Sequence[str] | None = None,
    per_document: bool = False,
    model: str | None = None,
) -> list[dict[str, Any]]:
    """pgingest.hybrid_search() with its tuned defaults, with the source and the key (jsonb) of
    each row; ``sources``: only these sources (None: all); ``per_document``: a row per document
    (its best chunk); ``model``: the model whose vector ``query_vector`` is (None: as routed)."""
    from pgvector import Vector

    cur = conn.cursor(row_factory=dict_row)
    return cur.execute(
        "SELECT doc_id, doc_key, title, ordinal, content, score, vector_rank, text_rank, source,"
        " source_key FROM pgingest.hybrid_search(%s, %s, %s, %s::jsonb, sources => %s::text[],"
        " per_document => %s, model => %s)",
        (
            query_text,
            Vector(query_vector),
            k,
            json.dumps(filter_),
            None if sources is None else list(sources),
            per_document,
            model,
        ),
    ).fetchall()


def hybrid_search_weighted(
    conn: psycopg.Connection[Any],
    query_text: str,
    query_vector: np.ndarray,
    k: int,
    vector_weight: float,
    text_weight: float,
) -> list[dict[str, Any]]:
    from pgvector import Vector

    cur = conn.cursor(row_factory=dict_row)
    return cur.execute(
        "SELECT doc_key, score, vector_rank, text_rank FROM pgingest.hybrid_search(%s, %s, %s,"
        " vector_weight => %s, text_weight => %s)",
        (query_text, Vector(query_vector), k, vector_weight, text_weight),
    ).fetchall()


def reindex_leftovers(conn: psycopg.Connection[Any], store: str, index_name: str) -> list[str]:
    """Invalid ``<index>_ccnew``/``_ccold`` indexes on the store ``pgingest.<store>`` left by a
    failed ``REINDEX INDEX CONCURRENTLY`` (still maintained by every write until dropped)."""
    rows = conn.execute(
        "SELECT c.relname FROM pg_index AS i JOIN pg_class AS c ON c.oid = i.indexrelid"
        " WHERE i.indrelid = format('pgingest.%%I', %s::text)::regclass AND NOT i.indisvalid"
        " AND c.relname ~ ('^' || %s || '_cc(new|old)[0-9]*$') ORDER BY c.relname",
        (store, index_name),
    ).fetchall()
    return [str(r[0]) for r in rows]


# ---- a model's store, hash-partitioned like pgingest.chunks (install --chunk-partitions):
# ---- per-partition ANN indexes

STORE_COLUMN = "embedding"
"""The vector column of every store (pgingest.<store_name>)."""


@dataclass(frozen=True)
class IndexSpec:
    """What a model's ANN index is made of, from the registry (validated by the server)."""

    store: str  # the table pgingest.<store>
    method: str
    opclass: str
    options: dict[str, Any]
    column: str = STORE_COLUMN


def store_partitions(conn: psycopg.Connection[Any], store: str) -> list[tuple[str, str]]:
    """(schema, name) of the leaf partitions of the store ``pgingest.<store>``; empty for a plain
    table."""
    rows = conn.execute(
        "SELECT n.nspname, c.relname"
        " FROM pg_partition_tree(format('pgingest.%%I', %s::text)::regclass) AS t"
        " JOIN pg_class AS c ON c.oid = t.relid JOIN pg_namespace AS n ON n.oid = c.relnamespace"
        " WHERE t.isleaf AND t.level > 0 ORDER BY t.relid",
        (store,),
    ).fetchall()
    return [(str(r[0]), str(r[1])) for r in rows]


def chunk_partitions(conn: psycopg.Connection[Any]) -> list[tuple[str, str]]:
    """(schema, name) of the leaf partitions of pgingest.chunks; empty for a plain table."""
    rows = conn.execute(
        "SELECT n.nspname, c.relname FROM pg_partition_tree('pgingest.chunks') AS t"
        " JOIN pg_class AS c ON c.oid = t.relid JOIN pg_namespace AS n ON n.oid = c.relnamespace"
        " WHERE t.isleaf AND t.level > 0 ORDER BY t.relid"
    ).fetchall()
    return [(str(r[0]), str(r[1])) for r in rows]


def index_spec(conn: psycopg.Connection[Any], model: str) -> IndexSpec | None:
    """Store, method, operator class and checked options of a live model's ANN index."""
    row = conn.execute(
        "SELECT m.store_name, m.index_method, pgingest._opclass(m),"
        " pgingest._check_index_options(m.index_method, m.index_options)"
        " FROM pgingest.models AS m WHERE m.name = %s AND m.state <> 'retired'",
        (model,),
    ).fetchone()
    if row is None:
        return None
    return IndexSpec(str(row[0]), str(row[1]), str(row[2]), dict(row[3] or {}))


def partition_index(
    conn: psycopg.Connection[Any], schema: str, table: str, index_name: str
) -> dict[str, Any] | None:
    """Index ``index_name`` of one partition: ``valid`` and ``parent`` (the partitioned index it
    is attached to, or None); None when it does not exist."""
    cur = conn.cursor(row_factory=dict_row)
    return cur.execute(
        "SELECT i.indisvalid AND i.indisready AS valid, pc.relname AS parent"
        " FROM pg_index AS i JOIN pg_class AS c ON c.oid = i.indexrelid"
        " LEFT JOIN pg_inherits AS h ON h.inhrelid = i.indexrelid"
        " LEFT JOIN pg_class AS pc ON pc.oid = h.inhparent"
        " WHERE i.indrelid = format('%%I.%%I', %s::text, %s::text)::regclass AND c.relname = %s",
        (schema, table, index_name),
    ).fetchone()


def partition_reindex_leftovers(
    conn: psycopg.Connection[Any], schema: str, table: str, index_name: str
) -> list[str]:
    """Invalid ``<index>_ccnew``/``_ccold`` leftovers of a failed REINDEX CONCURRENTLY on a
    partition."""
    rows = conn.execute(
        "SELECT c.relname FROM pg_index AS i JOIN pg_class AS c ON c.oid = i.indexrelid"
        " WHERE i.indrelid = format('%%I.%%I', %s::text, %s::text)::regclass AND NOT i.indisvalid"
        " AND c.relname ~ ('^' || %s || '_cc(new|old)[0-9]*$') ORDER BY c.relname",
        (schema, table, index_name),
    ).fetchall()
    return [str(r[0]) for r in rows]


def count_embedded(conn: psycopg.Connection[Any], schema: str, table: str, column: str) -> int:
    row = conn.execute(
        sql.SQL("SELECT count(*) FROM {}.{} WHERE {} IS NOT NULL").format(
            sql.Identifier(schema), sql.Identifier(table), sql.Identifier(column)
        )
    ).fetchone()
    return int(row[0]) if row else 0


def create_ann_index(
    conn: psycopg.Connection[Any],
    schema: str,
    table: str,
    index_name: str,
    spec: IndexSpec,
    *,
    lists: int | None = None,
    concurrently: bool = True,
    only: bool = False,
) -> str:
    """``CREATE INDEX [CONCURRENTLY] <index_name> ON [ONLY] <schema>.<table> USING <method>
    (<column> <opclass>) WITH (...)``; ``conn`` must be autocommit for CONCURRENTLY. Returns the
    statement."""
    if spec.method == "hnsw":
        with_ = sql.SQL("m = {}, ef_construction = {}").format(
            sql.SQL(str(int(spec.options["m"]))),
            sql.SQL(str(int(spec.options["ef_construction"]))),
        )
    else:
        with_ = sql.SQL("lists = {}").format(sql.SQL(str(int(lists or 1))))
    statement = sql.SQL(
        "CREATE INDEX {conc}IF NOT EXISTS {name} ON {only}{schema}.{table}"
        " USING {method} ({column} {opclass}) WITH ({with_})"
    ).format(
        conc=sql.SQL("CONCURRENTLY " if concurrently else ""),
        name=sql.Identifier(index_name),
        only=sql.SQL("ONLY " if only else ""),
        schema=sql.Identifier(schema),
        table=sql.Identifier(table),
        method=sql.Identifier(spec.method),
        column=sql.Identifier(spec.column),
        opclass=sql.Identifier(spec.opclass),
        with_=with_,
    )
    conn.execute(statement)
    return statement.as_string(conn)


def attach_index(
    conn: psycopg.Connection[Any], parent_index: str, schema: str, index_name: str
) -> None:
    """Attaches a partition's index to the partitioned index ``pgingest.<parent_index>``."""
    conn.execute(
        sql.SQL("ALTER INDEX {}.{} ATTACH PARTITION {}.{}").format(
            sql.Identifier("pgingest"),
            sql.Identifier(parent_index),
            sql.Identifier(schema),
            sql.Identifier(index_name),
        )
    )


def drop_index(conn: psycopg.Connection[Any], schema: str, index_name: str) -> None:
    """``DROP INDEX`` (not concurrently: a partitioned index cannot be dropped concurrently)."""
    conn.execute(
        sql.SQL("DROP INDEX IF EXISTS {}.{}").format(
            sql.Identifier(schema), sql.Identifier(index_name)
        )
    )


def index_tree_size(conn: psycopg.Connection[Any], index_name: str) -> int:
    """Bytes of ``pgingest.<index_name>`` with all its partitions' indexes (pg_partition_tree
    lists nothing for an index that is not partitioned)."""
    row = conn.execute(
        "SELECT coalesce((SELECT sum(pg_relation_size(t.relid)) FROM pg_partition_tree(i.oid) AS t),"
        " pg_relation_size(i.oid), 0)"
        " FROM (SELECT to_regclass(format('pgingest.%%I', %s::text)) AS oid) AS i",
        (index_name,),
    ).fetchone()
    return int(row[0]) if row else 0


def store_index_builds(conn: psycopg.Connection[Any], store: str) -> list[dict[str, Any]]:
    """Index builds running now on the store ``pgingest.<store>`` or any of its partitions."""
    cur = conn.cursor(row_factory=dict_row)
    return cur.execute(
        "SELECT p.pid, p.relid::regclass::text AS relation, p.index_relid::regclass::text AS index,"
        " p.phase FROM pg_stat_progress_create_index AS p"
        " WHERE p.relid = format('pgingest.%%I', %s::text)::regclass"
        " OR p.relid IN (SELECT t.relid"
        "   FROM pg_partition_tree(format('pgingest.%%I', %s::text)::regclass) AS t)"
        " ORDER BY p.pid",
        (store, store),
    ).fetchall()


def pending_index_rebuilds(conn: psycopg.Connection[Any]) -> list[str]:
    """Models whose ANN index migration 0006 dropped and ``pgingest install`` has not rebuilt
    yet (config ``rebuild_indexes``)."""
    row = conn.execute("SELECT value FROM pgingest.config WHERE key = 'rebuild_indexes'").fetchone()
    return [m for m in str(row[0]).split(",") if m] if row else []


def index_rebuilt(conn: psycopg.Connection[Any], model: str) -> None:
    """Takes ``model`` off config ``rebuild_indexes`` (the key goes with the last one)."""
    with conn.transaction():
        conn.execute(
            "UPDATE pgingest.config SET value = array_to_string("
            " array_remove(string_to_array(value, ','), %s), ','), updated_at = now()"
            " WHERE key = 'rebuild_indexes'",
            (model,),
        )
        conn.execute("DELETE FROM pgingest.config WHERE key = 'rebuild_indexes' AND value = ''")
