"""The capture of attached tables made cheaper (issue 19, attached tables' capture).

The compiled ``pgingest._source_capture()`` writes the content hash into its statements (no call
of the LANGUAGE sql ``_source_hash``, which fmgr_sql planned on every statement), runs the first
live model's queue INSERT as the statement itself, tests the wake-up memo without an executor,
takes its source's lock (``pgingest.source_lock_<id>``), and sets ``lock_timeout`` to 0 around
it only when the application's is not 0. These tests pin what must not change on the way: the application's
settings after its statement, one message per (changed version, live model), a failure that
becomes a dead letter and never fails the statement, and the wake-up of a sleeping worker.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
import pytest

from pgingest import db
from pgingest.testing.fake_provider import FakeEmbeddingServer
from tests.helpers import queue_count, register

ORDERS = """
CREATE TABLE public.orders (
    tenant text NOT NULL,
    id integer NOT NULL,
    title text,
    body text,
    lang text,
    views integer NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant, id)
)
"""


def one(conn: psycopg.Connection[Any], query: str, params: Any = None) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def attach_orders(conn: psycopg.Connection[Any]) -> None:
    conn.execute(ORDERS)
    conn.execute(
        "SELECT pgingest.add_source('orders', 'public.orders', body => 'body', title => 'title',"
        " metadata => ARRAY['lang'])"
    )


def queued(conn: psycopg.Connection[Any], model: str) -> list[tuple[int, str]]:
    """The (doc_id, hash) of every message in a model's queue, in order."""
    return [
        (int(r[0]), str(r[1]))
        for r in conn.execute(
            f"SELECT (message ->> 'doc_id')::bigint, message ->> 'hash'"  # noqa: S608
            f" FROM pgmq.q_pgingest_{model} ORDER BY msg_id"
        ).fetchall()
    ]


def registry(conn: psycopg.Connection[Any]) -> dict[str, tuple[int, str, Any]]:
    """The orders' registry rows: key text -> (doc_id, hash hex, metadata)."""
    return {
        str(r[0]): (int(r[1]), str(r[2]), r[3])
        for r in conn.execute(
            "SELECT r.row_key::text, r.doc_id, encode(r.content_hash, 'hex'), r.metadata"
            " FROM pgingest.source_rows AS r JOIN pgingest.sources AS s ON s.id = r.source_id"
            " WHERE s.name = 'orders'"
        ).fetchall()
    }


def test_the_hash_written_into_the_statements_is_source_hash(
    conn: psycopg.Connection[Any],
) -> None:
    cases = [
        (None, None),
        (None, "body"),
        ("", "body"),
        ("Titel: ä ö ü €", "Körper mit Umlauten, 日本語"),
        ("a" + chr(30) + "b", "c"),
        ("null", ""),
    ]
    expr = one(conn, "SELECT pgingest._source_hash_sql('t.title', 't.body')")
    for title, body in cases:
        inline = one(
            conn,
            f"SELECT {expr} FROM (SELECT %s::text AS title, %s::text AS body) AS t",  # noqa: S608
            (title, body),
        )
        assert inline == one(conn, "SELECT pgingest._source_hash(%s, %s)", (title, body))
    # And the compiled capture registers that hash (no call of _source_hash left in it).
    attach_orders(conn)
    conn.execute("INSERT INTO public.orders (tenant, id, title, body) VALUES ('t', 1, 'T', 'B')")
    assert one(
        conn,
        "SELECT r.content_hash = pgingest._source_hash('T', 'B') FROM pgingest.source_rows AS r",
    )
    body = one(
        conn, "SELECT prosrc FROM pg_proc WHERE oid = 'pgingest._source_capture()'::regprocedure"
    )
    assert "_source_hash(" not in body and "_source_lock_key()" not in body


@pytest.mark.parametrize("lock_timeout", ["0", "250ms", "3s"])
@pytest.mark.parametrize("nestloop", ["on", "off"])
def test_the_applications_lock_timeout_and_enable_nestloop_are_as_it_set_them_after_each_statement(
    conn: psycopg.Connection[Any], fake: FakeEmbeddingServer, lock_timeout: str, nestloop: str
) -> None:
    register(conn, "v1", fake.url)
    attach_orders(conn)
    statements = [
        "INSERT INTO public.orders (tenant, id, title, body) VALUES ('a', 1, 'One', 'First')",
        "INSERT INTO public.orders (tenant, id, title, body) SELECT 'a', g, 'T', 'B' || g"
        " FROM generate_series(2, 5) AS g",
        "UPDATE public.orders SET body = 'Changed' WHERE tenant = 'a' AND id = 1",
        "UPDATE public.orders SET body = body || '!' WHERE tenant = 'a'",
        "UPDATE public.orders SET id = id + 100 WHERE tenant = 'a' AND id = 2",
        "DELETE FROM public.orders WHERE tenant = 'a' AND id = 3",
    ]
    # Session-wide, then SET LOCAL in a transaction (what set_config(..., TRUE) could clobber).
    conn.execute(f"SET lock_timeout = '{lock_timeout}'")
    conn.execute(f"SET enable_nestloop = {nestloop}")
    expected = (one(conn, "SHOW lock_timeout"), one(conn, "SHOW enable_nestloop"))
    for stmt in statements[:2]:
        conn.execute(stmt)
        assert (one(conn, "SHOW lock_timeout"), one(conn, "SHOW enable_nestloop")) == expected
    conn.execute("RESET lock_timeout")
    conn.execute("RESET enable_nestloop")
    with conn.transaction():
        conn.execute(f"SET LOCAL lock_timeout = '{lock_timeout}'")
        conn.execute(f"SET LOCAL enable_nestloop = {nestloop}")
        for stmt in statements[2:]:
            conn.execute(stmt)
            assert (one(conn, "SHOW lock_timeout"), one(conn, "SHOW enable_nestloop")) == expected
    # SET LOCAL ends with the transaction: the defaults again, nothing of the capture's left.
    assert (one(conn, "SHOW lock_timeout"), one(conn, "SHOW enable_nestloop")) == ("0", "on")
    assert len(registry(conn)) == 4  # 5 rows, one deleted; a key moved (2 -> 102)
    assert '{"id": 2, "tenant": "a"}' not in registry(conn)


def test_a_capture_waits_for_a_backfill_step_but_never_fails_by_the_applications_lock_timeout(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    register(conn, "v1", fake.url)
    attach_orders(conn)
    source_id = one(conn, "SELECT id FROM pgingest.sources WHERE name = 'orders'")
    errors: list[BaseException] = []
    done = threading.Event()

    def write() -> None:
        try:
            with psycopg.connect(dsn, autocommit=True) as app:
                app.execute("SET lock_timeout = '50ms'")
                app.execute(
                    "INSERT INTO public.orders (tenant, id, title, body) VALUES ('w', 1, 'T', 'B')"
                )
                assert one(app, "SHOW lock_timeout") == "50ms"
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)
        finally:
            done.set()

    with psycopg.connect(dsn) as step:  # a backfill step holds the source's lock exclusively
        step.execute(f"LOCK TABLE pgingest.source_lock_{int(source_id)} IN SHARE MODE")
        thread = threading.Thread(target=write)
        thread.start()
        assert not done.wait(0.5), errors  # waiting past its 50 ms, not failed
        step.commit()
    thread.join(10)
    assert done.is_set() and not errors, errors
    assert queue_count(conn, "v1") == 1


def test_one_message_per_changed_version_and_live_model_with_a_composite_key(
    conn: psycopg.Connection[Any], fake: FakeEmbeddingServer
) -> None:
    register(conn, "v1", fake.url)
    register(conn, "v2", fake.url)
    attach_orders(conn)
    body = one(
        conn, "SELECT prosrc FROM pg_proc WHERE oid = 'pgingest._source_capture()'::regprocedure"
    )
    assert "q_pgingest_v1" in body and "q_pgingest_v2" in body

    def check(expected_total: int) -> None:
        """Both queues hold the same messages, expected_total of them, each of a version
        registered (or registered before and replaced since), never twice the same one."""
        v1, v2 = queued(conn, "v1"), queued(conn, "v2")
        assert v1 == v2
        assert len(v1) == expected_total
        assert len(set(v1)) == len(v1)

    # single-row INSERT, then a multi-row one
    conn.execute(
        "INSERT INTO public.orders (tenant, id, title, body, lang) VALUES ('a', 1, 'A1', 'x', 'en')"
    )
    check(1)
    conn.execute(
        "INSERT INTO public.orders (tenant, id, title, body, lang)"
        " VALUES ('a', 2, 'A2', 'y', 'en'), ('b', 1, 'B1', 'z', NULL), ('b', 2, 'B2', 'w', 'de')"
    )
    check(4)
    reg = registry(conn)
    assert len(reg) == 4
    assert {m for m in queued(conn, "v1")} == {(d, h) for d, h, _ in reg.values()}
    # single-row UPDATE of the text: one new version
    conn.execute("UPDATE public.orders SET body = 'x2' WHERE tenant = 'a' AND id = 1")
    check(5)
    assert queued(conn, "v1")[-1] == registry(conn)['{"id": 1, "tenant": "a"}'][:2]
    # multi-row UPDATE: two rows' text changes, one row's text is set to what it was
    conn.execute(
        "UPDATE public.orders SET body = CASE WHEN id = 1 THEN body ELSE body || '!' END"
        " WHERE tenant = 'b' OR (tenant = 'a' AND id = 1)"
    )
    check(6)
    # the title is mapped text too
    conn.execute("UPDATE public.orders SET title = 'B1 new' WHERE tenant = 'b' AND id = 1")
    check(7)
    # an unmapped column, then the metadata column alone: registered, not queued
    conn.execute("UPDATE public.orders SET views = views + 1")
    check(7)
    conn.execute("UPDATE public.orders SET lang = 'fr' WHERE tenant = 'a'")
    check(7)
    assert registry(conn)['{"id": 2, "tenant": "a"}'][2] == {"lang": "fr"}
    # a key change: the old key forgotten, the new one registered and queued
    old_doc = registry(conn)['{"id": 2, "tenant": "b"}'][0]
    conn.execute("UPDATE public.orders SET tenant = 'c' WHERE tenant = 'b' AND id = 2")
    check(8)
    reg = registry(conn)
    assert '{"id": 2, "tenant": "b"}' not in reg and '{"id": 2, "tenant": "c"}' in reg
    assert reg['{"id": 2, "tenant": "c"}'][0] != old_doc
    # both keys of a tenant moved by one statement: both forgotten, both new ones queued
    conn.execute("UPDATE public.orders SET id = id + 10 WHERE tenant = 'a'")
    check(10)
    reg = registry(conn)
    assert len(reg) == 4
    assert '{"id": 1, "tenant": "a"}' not in reg and '{"id": 11, "tenant": "a"}' in reg
    # a statement that changes nothing
    conn.execute("UPDATE public.orders SET body = body")
    check(10)
    # every queued version of a row still registered is its current one, or an older one
    current = {(d, h) for d, h, _ in registry(conn).values()}
    assert current <= set(queued(conn, "v1"))


def test_a_failed_capture_is_a_dead_letter_per_live_model_and_never_fails_the_statement(
    conn: psycopg.Connection[Any], fake: FakeEmbeddingServer
) -> None:
    register(conn, "v1", fake.url)
    register(conn, "v2", fake.url)
    attach_orders(conn)
    conn.execute("INSERT INTO public.orders (tenant, id, title, body) VALUES ('a', 1, 'T', 'B')")
    conn.execute("ALTER TABLE public.orders DROP COLUMN title")  # a mapped column gone
    conn.execute("SET lock_timeout = '2s'")
    with conn.transaction():
        conn.execute("SET LOCAL enable_nestloop = off")
        conn.execute("INSERT INTO public.orders (tenant, id, body) VALUES ('a', 2, 'C')")
        conn.execute("UPDATE public.orders SET body = 'D' WHERE tenant = 'a' AND id = 1")
        assert (one(conn, "SHOW lock_timeout"), one(conn, "SHOW enable_nestloop")) == ("2s", "off")
        # the transaction goes on: the application's writes are there
        assert one(conn, "SELECT count(*) FROM public.orders") == 2
    letters = conn.execute(
        "SELECT model, payload ->> 'operation' FROM pgingest.dead_letters"
        " WHERE error_class = 'capture_failed' ORDER BY 2, 1"
    ).fetchall()
    assert letters == [("v1", "INSERT"), ("v2", "INSERT"), ("v1", "UPDATE"), ("v2", "UPDATE")]
    assert queue_count(conn, "v1") == 1 and queue_count(conn, "v2") == 1  # the first row's


def test_a_single_row_write_to_an_attached_table_wakes_a_sleeping_worker_once(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    register(conn, "v1", fake.url)
    attach_orders(conn)
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute("LISTEN pgingest")
        list(listener.notifies(timeout=0.2))  # add_source's own
        db.worker_idle(conn, ["v1"])
        for i in range(3):
            conn.execute(
                "INSERT INTO public.orders (tenant, id, title, body) VALUES ('a', %s, 'T', 'B')",
                (i,),
            )
        assert [n.payload for n in listener.notifies(timeout=0.3)] == ["v1"]
        assert one(conn, "SELECT waiting FROM pgingest.wakeups WHERE model = 'v1'") is False
        # the session remembers that nobody waits; another one going to sleep is seen at once
        assert one(conn, "SELECT current_setting('pgingest.wake_memo', true)")
        with psycopg.connect(dsn, autocommit=True) as worker_conn:
            db.worker_idle(worker_conn, ["v1"])
        conn.execute("UPDATE public.orders SET body = 'changed' WHERE tenant = 'a' AND id = 0")
        assert [n.payload for n in listener.notifies(timeout=0.3)] == ["v1"]
    assert queue_count(conn, "v1") == 4


def test_an_attached_table_is_registered_without_a_live_model_and_queued_once_one_is(
    conn: psycopg.Connection[Any], fake: FakeEmbeddingServer
) -> None:
    attach_orders(conn)
    conn.execute("INSERT INTO public.orders (tenant, id, title, body) VALUES ('a', 1, 'T', 'B')")
    conn.execute("UPDATE public.orders SET body = 'C'")
    assert len(registry(conn)) == 1
    register(conn, "v1", fake.url)
    conn.execute("UPDATE public.orders SET body = 'D'")
    assert queued(conn, "v1")[-1] == registry(conn)['{"id": 1, "tenant": "a"}'][:2]


def test_a_single_row_update_after_a_bulk_one_in_the_same_session_is_not_jit_compiled(
    conn: psycopg.Connection[Any], fake: FakeEmbeddingServer
) -> None:
    """PL/pgSQL plans the capture's statements once per session, with the transition tables'
    sizes of the first statement: after a bulk UPDATE the plan's estimates passed the JIT
    thresholds, and every later single-row UPDATE of the session compiled it (~350 ms)."""
    register(conn, "v1", fake.url)
    attach_orders(conn)
    assert "jit=off" in one(
        conn, "SELECT proconfig FROM pg_proc WHERE oid = 'pgingest._source_capture()'::regprocedure"
    )
    conn.execute(
        "INSERT INTO public.orders (tenant, id, title, body, lang)"
        " SELECT 'a', g, 'T' || g, 'Body ' || g, 'en' FROM generate_series(1, 20000) AS g"
    )
    conn.execute("SET jit = on")  # as most servers run (it changes nothing where JIT is absent)
    conn.execute("UPDATE public.orders SET body = body || '.'")  # plans the capture: 20,000 rows
    elapsed = []
    for i in range(3):
        t0 = time.perf_counter()
        conn.execute("UPDATE public.orders SET body = %s WHERE tenant = 'a' AND id = 7", (str(i),))
        elapsed.append(time.perf_counter() - t0)
    assert min(elapsed) < 0.1, elapsed
    assert queue_count(conn, "v1") == 20000 + 20000 + 3


def test_a_key_moved_away_is_forgotten_when_the_key_is_deferrable_too(
    conn: psycopg.Connection[Any], fake: FakeEmbeddingServer
) -> None:
    """The key-change statement runs only when a changed row's key is not among the old rows'
    keys: enough where the key is unique in every statement (a unique index checked row by row).
    A deferrable key may hold duplicates within a transaction: its statement always runs.
    (add_source() refuses a deferrable key since the review of 2026-12-07; one made deferrable
    after attaching is compiled this way.)"""
    register(conn, "v1", fake.url)
    conn.execute(
        "CREATE TABLE public.dnotes (id integer, body text, CONSTRAINT dnotes_pkey PRIMARY KEY (id))"
    )
    conn.execute("SELECT pgingest.add_source('dnotes', 'public.dnotes', body => 'body')")
    conn.execute(
        "ALTER TABLE public.dnotes DROP CONSTRAINT dnotes_pkey,"
        " ADD CONSTRAINT dnotes_pkey PRIMARY KEY (id) DEFERRABLE INITIALLY DEFERRED"
    )
    attach_orders(conn)  # a source with an immediate key beside it, in the same function
    body = one(
        conn, "SELECT prosrc FROM pg_proc WHERE oid = 'pgingest._source_capture()'::regprocedure"
    )
    assert body.count("IF v_moved THEN") == 1  # orders' branch only
    conn.execute("INSERT INTO public.dnotes VALUES (1, 'first text'), (2, 'second text')")

    def keys() -> list[str]:
        return [
            r[0]
            for r in conn.execute(
                "SELECT r.row_key ->> 'id' FROM pgingest.source_rows AS r"
                " JOIN pgingest.sources AS s ON s.id = r.source_id WHERE s.name = 'dnotes'"
                " ORDER BY 1"
            ).fetchall()
        ]

    assert keys() == ["1", "2"]
    # Every new key is an old one, and key 2 is gone (a duplicate until the transaction ends:
    # here it never does, the constraint refuses it at commit).
    with pytest.raises(psycopg.errors.UniqueViolation), conn.transaction():
        conn.execute("UPDATE public.dnotes SET id = 1 WHERE id IN (1, 2)")
        assert keys() == ["1"]
    assert keys() == ["1", "2"]
    # the immediate key's branch forgets a moved key too (its new key is not an old one)
    conn.execute("INSERT INTO public.orders (tenant, id, title, body) VALUES ('a', 1, 'T', 'B')")
    conn.execute("UPDATE public.orders SET id = 2")
    assert list(registry(conn)) == ['{"id": 2, "tenant": "a"}']
