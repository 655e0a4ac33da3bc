"""Issue 18, small fixes beside the installer (each test fails before its fix):

- item 14: register_filter's lock wait is bounded, hybrid_search refuses rrf_k < 1, text logs
  keep one record on one line.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import psycopg
import pytest
from pgvector import Vector

from pgingest import logs
from pgingest.testing.fake_provider import FakeEmbeddingServer
from tests.helpers import drain, insert_docs, register
from tests.test_dba_install import one

# ---- item 14: register_filter's lock, rrf_k, text logs -------------------------------------


def test_register_filter_waits_for_its_lock_at_most_lock_timeout(dsn: str) -> None:
    with (
        psycopg.connect(dsn) as holder,
        psycopg.connect(dsn, autocommit=True) as admin,
    ):
        holder.execute("SELECT count(*) FROM pgingest.documents")  # ACCESS SHARE, kept open
        admin.execute("SET statement_timeout = '30s'")
        started = time.monotonic()
        with pytest.raises(psycopg.errors.LockNotAvailable):
            admin.execute("SELECT pgingest.register_filter('tenant', 'integer')")
        assert time.monotonic() - started < 15  # 5 s by default, not statement_timeout
        # The caller's own lock_timeout wins.
        admin.execute("SET lock_timeout = '200ms'")
        started = time.monotonic()
        with pytest.raises(psycopg.errors.LockNotAvailable):
            admin.execute("SELECT pgingest.register_filter('tenant', 'integer')")
        assert time.monotonic() - started < 3
        holder.rollback()
        admin.execute("RESET lock_timeout")
        assert one(admin, "SELECT pgingest.register_filter('tenant', 'integer')") == "meta_tenant"


def test_hybrid_search_refuses_rrf_k_below_one(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    register(conn, "v1", fake.url)
    conn.execute("SELECT pgingest.set_text_search_config('english')")
    insert_docs(conn, [("d1", "Calibration", "The quuxotron calibration is documented here.")])
    drain(dsn)
    query = Vector(np.ones(384, dtype=np.float32) / np.sqrt(384))
    # rrf_k = -rank made the fused score divide by zero (DivisionByZero before the fix).
    for rrf_k in (-1, 0, -60):
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="rrf_k must be at least 1"):
            conn.execute(
                "SELECT * FROM pgingest.hybrid_search('quuxotron', %s, 5, rrf_k => %s)",
                (query, rrf_k),
            )
        conn.rollback()
    rows = conn.execute(
        "SELECT doc_key FROM pgingest.hybrid_search('quuxotron', %s, 5, rrf_k => 1)", (query,)
    ).fetchall()
    assert rows == [("d1",)]


def test_text_logs_keep_one_record_on_one_line() -> None:
    formatter = logs.TextFormatter("%(levelname)s %(name)s: %(message)s")
    record = logging.makeLogRecord(
        {
            "name": "pgingest.worker",
            "levelname": "WARNING",
            "msg": "document %s dead-lettered",
            "args": ("k1\nERROR pgingest.worker: forged line",),
            "doc_key": "k2\r\nERROR forged=1",
            "model": "v1",
        }
    )
    line = formatter.format(record)
    assert "\n" not in line and "\r" not in line, line
    assert line.startswith(
        "WARNING pgingest.worker: document k1\\nERROR pgingest.worker: forged line dead-lettered"
    )
    assert line.endswith(' doc_key="k2\\r\\nERROR forged=1" model=v1')
