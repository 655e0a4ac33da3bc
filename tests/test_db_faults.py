"""Database faults: the worker survives them, retries with a growing delay, says so in its log,
and in the end everything is embedded exactly once.

A killed backend, a killed LISTEN connection, a statement timeout, a lock timeout on a busy
table, a database that refuses connections for a while, a row lock held by a writer. A restart
of PostgreSQL itself is exercised by scripts/chaos.py (make chaos): restarting the test
cluster here would break the tests that share it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Collection
from typing import Any

import psycopg
import pytest
from psycopg import sql

from pgingest import worker
from pgingest.testing.fake_provider import FakeEmbeddingServer, RequestInfo
from tests.helpers import (
    assert_exactly_predicted,
    drain,
    insert_corpus,
    queue_count,
    register,
    settings,
    wait_for,
)


def db_retries(log: pytest.LogCaptureFixture) -> list[tuple[str, str, float]]:
    """(message, error, retry_in_s) of the worker's database retry warnings, in order."""
    return [
        (r.getMessage(), str(getattr(r, "error", "")), float(r.retry_in_s))
        for r in log.records
        if r.levelno == logging.WARNING and hasattr(r, "retry_in_s")
    ]


def assert_all_done(conn: psycopg.Connection[Any]) -> None:
    assert_exactly_predicted(conn)
    assert queue_count(conn, "v1") == 0
    assert conn.execute("SELECT count(*) FROM pgingest.dead_letters").fetchone() == (0,)
    dup = conn.execute(
        "SELECT count(*) FROM (SELECT doc_id, ordinal FROM pgingest.chunks"
        " GROUP BY 1, 2 HAVING count(*) > 1) s"
    ).fetchone()
    assert dup == (0,)


def terminate(
    dsn: str,
    application_name: str,
    spare: Collection[int] = (),
    via: psycopg.Connection[Any] | None = None,
) -> list[int]:
    """pg_terminate_backend() the backends of ``application_name`` in the database of ``dsn``
    (except the pids in ``spare``), through ``via`` or a new connection.

    The pids are picked first, in a statement of their own: in one WHERE clause nothing
    guarantees that the filters run before pg_terminate_backend().
    """
    dbname = psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]
    c = via or psycopg.connect(dsn, autocommit=True)
    try:
        rows = c.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND application_name = %s"
            " AND pid <> pg_backend_pid()",
            (dbname, application_name),
        ).fetchall()
        pids = [int(r[0]) for r in rows if int(r[0]) not in spare]
        return [
            p
            for p in pids
            if c.execute("SELECT pg_terminate_backend(%s)", (p,)).fetchone() == (True,)
        ]
    finally:
        if via is None:
            c.close()


def hold_lock(dsn: str, statement: str, seconds: float) -> threading.Thread:
    """Run ``statement`` in a transaction of another connection, and end it after ``seconds``."""
    locker = psycopg.connect(dsn, application_name="test-locker")
    locker.execute(statement)

    def release() -> None:
        time.sleep(seconds)
        locker.rollback()
        locker.close()

    t = threading.Thread(target=release)
    t.start()
    return t


def test_worker_backend_terminated_mid_run_reconnects(
    conn: psycopg.Connection[Any],
    dsn: str,
    fake: FakeEmbeddingServer,
    worker_log: pytest.LogCaptureFixture,
) -> None:
    """pg_terminate_backend() of the worker's connection while it waits on the provider, three
    times: each write-back fails, the worker reconnects, the claimed messages come back after
    their visibility timeout and are embedded once."""
    register(conn, "v1", fake.url)
    insert_corpus(conn, 60)
    lock = threading.Lock()
    killed: list[int] = []
    seen = [0]

    def hook(info: RequestInfo) -> None:
        with lock:
            seen[0] += 1
            if seen[0] % 3 == 0 and len(killed) < 3:  # each connection at most once
                killed.extend(terminate(dsn, "pgingest-worker", spare=killed))

    fake.on_request = hook
    drain(dsn, visibility_timeout=2, batch_size=10, request_max_inputs=8, in_flight=2)
    assert len(killed) == 3
    assert_all_done(conn)
    retries = db_retries(worker_log)
    assert 3 <= len(retries) <= 10
    assert all(
        "terminating connection" in e or "closed" in e or "lost" in e for _, e, _ in retries
    ), retries


def test_listen_connection_terminated_is_reopened(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    """The LISTEN connection is killed while the worker sleeps on it: the worker opens a new
    one and is still woken at once by the next INSERT (the poll interval here is 30 s)."""
    register(conn, "v1", fake.url)
    insert_corpus(conn, 5)
    w = worker.Worker(settings(dsn, drain=False, poll_interval=30.0))
    t = threading.Thread(target=w.run)
    t.start()
    try:

        def embedded() -> int:
            row = conn.execute("SELECT count(*) FROM pgingest.embedding_state").fetchone()
            return int(row[0]) if row else 0

        def listener() -> int | None:
            row = conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                " AND application_name = 'pgingest-listen'"
            ).fetchone()
            return int(row[0]) if row else None

        wait_for(lambda: embedded() == 5 and listener() is not None)
        old = listener()
        assert terminate(dsn, "pgingest-listen") == [old]
        wait_for(lambda: listener() not in (None, old), timeout=15)
        insert_corpus(conn, 5, start=5)
        wait_for(lambda: embedded() == 10, timeout=15)  # well before the 30 s poll
        assert t.is_alive()
    finally:
        w.stopping.set()
        conn.execute("SELECT pg_notify('pgingest', 'wake up')")  # ends its 30 s wait
        t.join()
    assert_all_done(conn)


@pytest.mark.parametrize("how", ["alter-database", "connection-option"])
def test_statement_timeout_while_a_table_is_locked(
    conn: psycopg.Connection[Any],
    dsn: str,
    fake: FakeEmbeddingServer,
    worker_log: pytest.LogCaptureFixture,
    how: str,
) -> None:
    """A DBA holds ACCESS EXCLUSIVE on pgingest.chunks for 2.5 s while statement_timeout is
    300 ms: the worker's write-back is cancelled (QueryCanceled), retried with a growing delay,
    and goes through once the lock is gone. Nothing is half-written."""
    register(conn, "v1", fake.url)
    insert_corpus(conn, 30)
    worker_dsn = dsn
    if how == "alter-database":
        conn.execute(
            sql.SQL("ALTER DATABASE {} SET statement_timeout = '300ms'").format(
                sql.Identifier(conn.info.dbname)
            )
        )
    else:
        worker_dsn = psycopg.conninfo.make_conninfo(dsn, options="-c statement_timeout=300")
    t = hold_lock(dsn, "LOCK TABLE pgingest.chunks IN ACCESS EXCLUSIVE MODE", 2.5)
    try:
        drain(worker_dsn, visibility_timeout=1)
    finally:
        t.join()
    assert_all_done(conn)
    retries = db_retries(worker_log)
    assert retries, "the worker never hit the timeout"
    assert all("statement timeout" in e for _, e, _ in retries), retries
    delays = [d for _, _, d in retries]
    assert delays == sorted(delays) and len(delays) <= 5  # bounded and growing


def test_lock_timeout_on_a_busy_table(
    conn: psycopg.Connection[Any],
    dsn: str,
    fake: FakeEmbeddingServer,
    worker_log: pytest.LogCaptureFixture,
) -> None:
    """The worker runs with lock_timeout = 200 ms (a connection option); the chunks table is
    locked by another session for 2.5 s: LockNotAvailable, retried, then everything lands."""
    register(conn, "v1", fake.url)
    insert_corpus(conn, 30)
    worker_dsn = psycopg.conninfo.make_conninfo(dsn, options="-c lock_timeout=200")
    t = hold_lock(dsn, "LOCK TABLE pgingest.chunks IN ACCESS EXCLUSIVE MODE", 2.5)
    try:
        drain(worker_dsn, visibility_timeout=1)
    finally:
        t.join()
    assert_all_done(conn)
    retries = db_retries(worker_log)
    assert retries, "the worker never hit the lock timeout"
    assert all("lock timeout" in e for _, e, _ in retries), retries
    delays = [d for _, _, d in retries]
    assert delays == sorted(delays) and len(delays) <= 5


def test_a_row_locked_by_a_writer_makes_the_worker_wait_not_fail(
    conn: psycopg.Connection[Any],
    dsn: str,
    fake: FakeEmbeddingServer,
    worker_log: pytest.LogCaptureFixture,
) -> None:
    """Without a lock_timeout, a document row held FOR UPDATE by a writer's open transaction
    only delays the write-back (complete_batch_v1 locks the rows it writes FOR SHARE)."""
    register(conn, "v1", fake.url)
    insert_corpus(conn, 10)
    t = hold_lock(dsn, "SELECT 1 FROM pgingest.documents WHERE key = 'doc-3' FOR UPDATE", 1.5)
    try:
        started = time.monotonic()
        drain(dsn)
        assert time.monotonic() - started >= 1.0
    finally:
        t.join()
    assert_all_done(conn)
    assert db_retries(worker_log) == []


def test_database_refusing_connections_for_a_while(
    conn: psycopg.Connection[Any],
    dsn: str,
    fake: FakeEmbeddingServer,
    worker_log: pytest.LogCaptureFixture,
) -> None:
    """The worker's backend is killed and the database refuses new connections for 3 s (as
    during a failover): reconnection attempts back off (1 s, 2 s, ...) and then succeed."""
    register(conn, "v1", fake.url)
    insert_corpus(conn, 20)
    dbname = sql.Identifier(conn.info.dbname)
    # "cannot disallow connections for current database": done from another database.
    admin = psycopg.connect(psycopg.conninfo.make_conninfo(dsn, dbname="postgres"), autocommit=True)
    done = threading.Event()

    def hook(info: RequestInfo) -> None:
        if done.is_set():
            return
        done.set()
        admin.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(dbname))
        assert terminate(dsn, "pgingest-worker", via=admin)

        def reopen() -> None:
            time.sleep(3.0)
            admin.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(dbname))

        threading.Thread(target=reopen).start()

    fake.on_request = hook
    try:
        drain(dsn, visibility_timeout=1)
    finally:
        admin.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(dbname))
        admin.close()
    assert done.is_set()
    assert_all_done(conn)
    retries = db_retries(worker_log)
    refused = [r for r in retries if "not currently accepting connections" in r[1]]
    assert len(refused) >= 1, retries
    delays = [d for _, _, d in retries]
    assert delays == sorted(delays) and delays[-1] > delays[0] and len(delays) <= 6


# A full PostgreSQL restart is exercised by scripts/chaos.py (make chaos; PGINGEST_CHAOS_RESTART=1
# in tests/test_chaos.py): restarting the shared test cluster here would break concurrent tests.
