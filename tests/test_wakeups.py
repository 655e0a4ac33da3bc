"""Wake-ups (issue 19): the capture sends a NOTIFY only while a worker of the model sleeps
waiting for one (pgingest.wakeups), instead of one per statement: a NOTIFY serialises committing
transactions on a cluster-wide lock, and a busy worker reads its queue anyway."""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
import pytest

from pgingest import db, worker
from pgingest.testing.fake_provider import FakeEmbeddingServer
from tests.helpers import queue_count, register, settings, wait_for


@pytest.fixture
def listener(dsn: str) -> Any:
    c = psycopg.connect(dsn, autocommit=True)
    c.execute("LISTEN pgingest")
    yield c
    c.close()


def notifications(listener: psycopg.Connection[Any], timeout: float = 0.3) -> list[str]:
    return [n.payload for n in listener.notifies(timeout=timeout)]


def insert(conn: psycopg.Connection[Any], key: str) -> None:
    conn.execute("INSERT INTO pgingest.documents (key, body) VALUES (%s, 'Some text.')", (key,))


def test_the_capture_notifies_only_while_a_worker_waits(
    conn: psycopg.Connection[Any], listener: psycopg.Connection[Any], fake: FakeEmbeddingServer
) -> None:
    register(conn, "v1", fake.url)
    notifications(listener)  # register_model's own
    # No worker ever said it waits (workers before this change): every statement notifies.
    insert(conn, "a")
    insert(conn, "b")
    assert notifications(listener) == ["v1", "v1"]
    # A worker waits: the next statement wakes it, once; the ones after do not notify.
    db.worker_idle(conn, ["v1"])
    for key in ("c", "d", "e"):
        insert(conn, key)
    assert notifications(listener) == ["v1"]
    assert conn.execute("SELECT waiting FROM pgingest.wakeups WHERE model = 'v1'").fetchone() == (
        False,
    )
    # Nobody said it waits for a second (a worker may have died asleep): notified again, once
    # (a session that found nobody to wake checks again at the latest a second later).
    conn.execute("UPDATE pgingest.wakeups SET changed_at = now() - interval '2 s'")
    time.sleep(1.0)
    insert(conn, "f")
    insert(conn, "g")
    assert notifications(listener) == ["v1"]
    # Several statements in one transaction: one notification at most.
    db.worker_idle(conn, ["v1"])
    with conn.transaction():
        for key in ("h", "i", "j"):
            insert(conn, key)
    assert notifications(listener) == ["v1"]


def test_a_session_that_found_nobody_to_wake_sees_a_worker_go_to_sleep_at_once(
    conn: psycopg.Connection[Any],
    dsn: str,
    listener: psycopg.Connection[Any],
    fake: FakeEmbeddingServer,
) -> None:
    """Issue 19: a session whose last check found no worker asleep skips the check of
    pgingest.wakeups (its memo: the wake-up generation and the second), but a worker that says it
    waits takes a new generation: the session's next statement wakes it, without waiting for
    the second to pass."""
    register(conn, "v1", fake.url)
    notifications(listener)  # register_model's own
    db.worker_idle(conn, ["v1"])
    insert(conn, "a")  # wakes the worker
    insert(conn, "b")  # checks again: nobody waits, remembered
    assert notifications(listener) == ["v1"]
    memo = conn.execute("SELECT current_setting('pgingest.wake_memo', true)").fetchone()
    assert memo is not None and memo[0]
    with psycopg.connect(dsn, autocommit=True) as worker_conn:
        db.worker_idle(worker_conn, ["v1"])  # another session goes to sleep
    insert(conn, "c")
    assert notifications(listener, timeout=0.1) == ["v1"]
    # A rolled back statement that remembered leaves the memo as it was.
    conn.execute("SELECT set_config('pgingest.wake_memo', 'before', false)")
    with pytest.raises(psycopg.errors.UniqueViolation), conn.transaction():
        insert(conn, "d")
        insert(conn, "d")
    assert conn.execute("SELECT current_setting('pgingest.wake_memo')").fetchone() == ("before",)
    # The queue has exactly the committed versions.
    assert queue_count(conn, "v1") == 3


def test_a_writer_holding_the_wake_up_does_not_block_other_writers_or_the_worker(
    conn: psycopg.Connection[Any],
    dsn: str,
    listener: psycopg.Connection[Any],
    fake: FakeEmbeddingServer,
) -> None:
    register(conn, "v1", fake.url)
    db.worker_idle(conn, ["v1"])
    notifications(listener)
    long = psycopg.connect(dsn)  # a transaction that wakes the worker, then stays open
    insert(long, "long")
    with psycopg.connect(dsn, autocommit=True) as other:
        other.execute("SET lock_timeout = '500ms'")
        insert(other, "other")  # neither waits on the wake-up row...
        db.worker_idle(other, ["v1"])  # ...nor does a worker going to sleep
    assert notifications(listener) == []  # the long transaction's notification comes at its commit
    long.commit()
    long.close()
    assert notifications(listener) == ["v1"]


def test_an_idle_worker_picks_up_a_single_row_insert_at_once(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    register(conn, "v1", fake.url)
    w = worker.Worker(settings(dsn, drain=False, poll_interval=60.0))
    t = threading.Thread(target=w.run)
    t.start()
    try:
        wait_for(
            lambda: (
                conn.execute("SELECT waiting FROM pgingest.wakeups WHERE model = 'v1'").fetchone()
                == (True,)
            ),
            timeout=20,
        )
        time.sleep(0.2)  # asleep now, for 60 s unless notified
        started = time.monotonic()
        insert(conn, "fresh")
        wait_for(
            lambda: (
                conn.execute("SELECT count(*) FROM pgingest.embedding_state").fetchone() == (1,)
            ),
            timeout=5,
            interval=0.02,
        )
        assert time.monotonic() - started < 5
    finally:
        w.stopping.set()
        conn.execute("NOTIFY pgingest, 'v1'")  # out of its 60 s sleep
        t.join(30)


def test_every_compiled_capture_wakes_only_when_it_queued_something(
    conn: psycopg.Connection[Any], listener: psycopg.Connection[Any], fake: FakeEmbeddingServer
) -> None:
    """Issue 19: the wake-up check is part of each compiled capture statement (documents' INSERT
    and UPDATE, an attached table's INSERT and UPDATE): a statement that queues nothing (no row,
    an UPDATE that changes no text) sends nothing even to a waiting worker; one that queues wakes
    it, once."""
    register(conn, "v1", fake.url)
    conn.execute("CREATE TABLE public.notes (id bigint PRIMARY KEY, body text, views integer)")
    conn.execute("SELECT pgingest.add_source('notes', 'public.notes', body => 'body')")
    insert(conn, "a")
    conn.execute("INSERT INTO public.notes VALUES (1, 'One.', 0)")
    notifications(listener)
    db.worker_idle(conn, ["v1"])
    conn.execute("INSERT INTO pgingest.documents (key, body) SELECT 'x', 'y' WHERE false")
    conn.execute("UPDATE pgingest.documents SET body = 'Some text.' WHERE key = 'a'")  # same text
    conn.execute("INSERT INTO public.notes SELECT 2, 'Two.', 0 WHERE false")
    conn.execute("UPDATE public.notes SET views = views + 1")  # an unmapped column
    assert notifications(listener) == []
    assert conn.execute("SELECT waiting FROM pgingest.wakeups").fetchone() == (True,)
    conn.execute("UPDATE pgingest.documents SET body = 'Other text.' WHERE key = 'a'")
    assert notifications(listener) == ["v1"]
    db.worker_idle(conn, ["v1"])
    conn.execute("UPDATE public.notes SET body = 'One, again.'")
    conn.execute("INSERT INTO public.notes VALUES (3, 'Three.', 0)")
    assert notifications(listener) == ["v1"]
    db.worker_idle(conn, ["v1"])
    conn.execute("INSERT INTO public.notes VALUES (4, 'Four.', 0)")
    assert notifications(listener) == ["v1"]
