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


def assert_exactly_predicted(
    conn: psycopg.Connection[Any], model: str = "v1", dims: int = 384
) -> None:
    exp = expected_chunks(conn)
    got: dict[int, list[tuple[Any, ...]]] = {}
    for r in conn.execute(
        f"SELECT doc_id, ordinal, content, char_start, char_end, token_count,"  # noqa: S608
        f" vector_dims(emb_{model}), vector_norm(emb_{model})"
        " FROM pgingest.chunks ORDER BY doc_id, ordinal"
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
