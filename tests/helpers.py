"""Small helpers shared by the tests (no fixtures here: see conftest.py)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql


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
