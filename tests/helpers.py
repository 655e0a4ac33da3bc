"""Small helpers shared by the tests (no fixtures here: see conftest.py)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql

from pgingest import chunking, worker
from pgingest.testing.texts import body as make_body


def register(
    conn: psycopg.Connection[Any],
    name: str,
    base_url: str,
    *,
    model_id: str = "fake-384",
    dimensions: int = 384,
    **kwargs: Any,
) -> str:
    args = [
        sql.SQL("{} => {}").format(sql.Identifier(k), sql.Literal(v)) for k, v in kwargs.items()
    ]
    query = sql.SQL("SELECT pgingest.register_model({}, {}, {}, {}{})").format(
        sql.Literal(name),
        sql.Literal(model_id),
        sql.Literal(dimensions),
        sql.Literal(base_url),
        sql.SQL("").join(sql.SQL(", ") + a for a in args),
    )
    row = conn.execute(query).fetchone()
    assert row is not None
    return str(row[0])


def queue_count(conn: psycopg.Connection[Any], model: str) -> int:
    row = conn.execute(
        sql.SQL("SELECT count(*) FROM pgmq.{}").format(sql.Identifier(f"q_pgingest_{model}"))
    ).fetchone()
    assert row is not None
    return int(row[0])


def wait_for(predicate: Callable[[], bool], timeout: float = 30.0, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")


def insert_docs(conn: psycopg.Connection[Any], docs: list[tuple[str, str | None, str]]) -> None:
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO pgingest.documents (key, title, body) VALUES (%s, %s, %s)", docs
        )


def schema_dump(dsn: str) -> list[str]:
    """``pg_dump --schema-only`` of the pgingest schema, without comments and the restrict
    lines (their random key differs from one dump to the next)."""
    out = subprocess.run(
        ["pg_dump", "--schema-only", "--no-owner", "--schema=pgingest", "-d", dsn],
        capture_output=True,
        text=True,
        check=True,
    )
    return [
        line
        for line in out.stdout.splitlines()
        if not line.startswith(("--", "\\restrict", "\\unrestrict"))
    ]


# -- the worker against the test database (shared by the worker, fault and search tests) --


def settings(dsn: str, **kw: Any) -> worker.WorkerSettings:
    base: dict[str, Any] = {
        "conninfo": dsn,
        "drain": True,
        "install_signal_handlers": False,
        "poll_interval": 0.2,
        "probe_interval": 0.5,
        "visibility_timeout": 30,
    }
    base.update(kw)
    return worker.WorkerSettings(**base)


def drain(dsn: str, **kw: Any) -> worker.Worker:
    w = worker.Worker(settings(dsn, **kw))
    w.run()
    return w


def insert_corpus(conn: psycopg.Connection[Any], n: int, start: int = 0) -> None:
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO pgingest.documents (key, title, body) VALUES (%s, %s, %s)",
            [(f"doc-{i}", f"Document {i}", make_body(i)) for i in range(start, start + n)],
        )


def expected_chunks(conn: psycopg.Connection[Any]) -> dict[int, list[chunking.Chunk]]:
    cfg = chunking.ChunkerConfig()
    rows = conn.execute("SELECT id, title, body FROM pgingest.documents ORDER BY id").fetchall()
    chunks = chunking.chunk_documents([(r[1], r[2]) for r in rows], cfg)
    return {r[0]: c for r, c in zip(rows, chunks, strict=True)}


def store_sql(model: str, columns: str, where: str = "TRUE") -> sql.Composed:
    """``SELECT <columns>`` over a model's store ``s`` joined to the chunks ``c`` of its profile
    on (doc_id, ordinal, chunk_hash): the rows search serves."""
    return sql.SQL(
        "SELECT {cols} FROM pgingest.{store} AS s"
        " JOIN pgingest.models AS m ON m.name = {model}"
        " JOIN pgingest.chunks AS c ON c.profile_id = m.profile_id AND c.doc_id = s.doc_id"
        " AND c.ordinal = s.ordinal AND c.chunk_hash = s.chunk_hash WHERE {where}"
    ).format(
        cols=sql.SQL(columns),
        store=sql.Identifier(f"store_{model}"),
        model=sql.Literal(model),
        where=sql.SQL(where),
    )


def assert_exactly_predicted(
    conn: psycopg.Connection[Any], model: str = "v1", dims: int = 384
) -> None:
    exp = expected_chunks(conn)
    got: dict[int, list[tuple[Any, ...]]] = {}
    n_store = conn.execute(
        sql.SQL("SELECT count(*) FROM pgingest.{}").format(sql.Identifier(f"store_{model}"))
    ).fetchone()
    assert n_store is not None
    for r in conn.execute(
        store_sql(
            model,
            "c.doc_id, c.ordinal, c.content, c.char_start, c.char_end, c.token_count,"
            " vector_dims(s.embedding), vector_norm(s.embedding)",
        )
        + sql.SQL(" ORDER BY c.doc_id, c.ordinal")
    ):
        got.setdefault(r[0], []).append(r)
    assert set(got) == set(exp)
    for doc_id, chunks in exp.items():
        rows = got[doc_id]
        assert [(r[1], r[2], r[3], r[4], r[5]) for r in rows] == [
            (c.ordinal, c.text, c.char_start, c.char_end, c.token_count) for c in chunks
        ]
        for r in rows:
            assert r[6] == dims
            assert abs(r[7] - 1.0) < 1e-5
    assert n_store[0] == sum(len(c) for c in exp.values())  # no surplus vector


def columns_in_any_order(lines: list[str]) -> list[str]:
    """The dump with each CREATE TABLE's lines sorted: a column added by register_model before a
    later migration's ADD COLUMN sits before it, after it in a fresh install (same table)."""
    out: list[str] = []
    block: list[str] | None = None
    for line in lines:
        if block is None:
            out.append(line)
            if line.startswith("CREATE TABLE ") and line.endswith("("):
                block = []
        elif line.startswith(")"):
            out.extend(sorted(b.rstrip(",") for b in block))
            out.append(line)
            block = None
        else:
            block.append(line)
    return out
