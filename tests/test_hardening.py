"""Defects found by the reliability and security review of 37f1ecc (issue 18), one test each.

Each test fails on 37f1ecc and passes since the fix; docs/reliability.md lists them.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg

from pgingest import db, worker
from pgingest.testing.fake_provider import FakeEmbeddingServer
from tests.helpers import drain, insert_corpus, register, settings, wait_for


def test_a_late_dead_letter_never_undoes_a_version_another_worker_embedded(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    """Issue 18, item 1. Worker A's batch outlives its visibility timeout; worker B claims the
    same message past max_attempts and decides ``attempts_exhausted``; A commits the embedding;
    then B commits its dead letter. B's dead letter must only acknowledge the message."""
    register(conn, "v1", fake.url)
    insert_corpus(conn, 1)
    (queue,) = conn.execute("SELECT queue_name FROM pgingest.models WHERE name = 'v1'").fetchone()
    msg_id, doc_id, payload = conn.execute(
        f"SELECT msg_id, (message->>'doc_id')::bigint, message FROM pgmq.q_{queue}"  # noqa: S608
    ).fetchone()
    (content_hash,) = conn.execute(
        "SELECT content_hash FROM pgingest.documents WHERE id = %s", (doc_id,)
    ).fetchone()
    drain(dsn)  # worker A: embeds and acknowledges the version
    before = conn.execute(
        "SELECT count(*) FROM pgingest.store_v1 WHERE doc_id = %s", (doc_id,)
    ).fetchone()
    assert before is not None and before[0] > 0

    # Worker B, holding the same message, writes its dead letter for the same version.
    db.dead_letter(
        conn,
        "v1",
        [msg_id],
        [doc_id],
        [content_hash],
        ["attempts_exhausted"],
        ["gave up after 5 attempts"],
        [5],
        [payload],
    )

    after = conn.execute(
        "SELECT count(*) FROM pgingest.store_v1 WHERE doc_id = %s", (doc_id,)
    ).fetchone()
    assert after == before
    state = conn.execute(
        "SELECT content_hash FROM pgingest.embedding_state WHERE doc_id = %s AND model = 'v1'",
        (doc_id,),
    ).fetchone()
    assert state == (content_hash,)
    assert conn.execute("SELECT count(*) FROM pgingest.dead_letters").fetchone() == (0,)


def test_a_registered_url_the_client_refuses_pauses_the_model_not_the_worker(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    """Issue 18, items 2 and 13: a base_url with credentials (the table refuses it since
    migration 0008; here its constraints are dropped, as in a database where it stays NOT VALID)
    is refused by the client; the worker pauses that model with a reason that does not show the
    credentials, and goes on (``--drain`` exits 3: paused work is left)."""
    register(conn, "v1", fake.url)
    conn.execute(
        "ALTER TABLE pgingest.models DROP CONSTRAINT models_base_url_no_secrets,"
        " DROP CONSTRAINT models_base_url_loopback_or_https"
    )
    conn.execute(
        "UPDATE pgingest.models SET base_url = %s WHERE name = 'v1'",
        (fake.url.replace("http://", "http://user:s3cret@"),),
    )
    insert_corpus(conn, 2)
    assert worker.Worker(settings(dsn)).run() == 3
    paused, reason = conn.execute(
        "SELECT paused, paused_reason FROM pgingest.models WHERE name = 'v1'"
    ).fetchone()
    assert paused is True
    assert "s3cret" not in reason and "credentials" in reason
    assert fake.stats()["requests"] == 0


def test_a_batch_slower_than_the_visibility_timeout_keeps_its_claims(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    """Issue 18, item 7. The provider takes 3 s per request against a 1 s visibility timeout:
    the worker extends its claims while it embeds, so another reader finds nothing to claim,
    every message is read once, and nothing is dead-lettered."""
    register(conn, "v1", fake.url)
    insert_corpus(conn, 4)
    fake.configure(latency_ms=3000)
    (queue,) = conn.execute("SELECT queue_name FROM pgingest.models WHERE name = 'v1'").fetchone()
    w = worker.Worker(settings(dsn, visibility_timeout=1, batch_size=10, max_batch_size=10))
    runner = threading.Thread(target=w.run)
    runner.start()
    try:
        wait_for(  # the worker has claimed the batch
            lambda: (
                conn.execute(
                    f"SELECT count(*) FROM pgmq.q_{queue} WHERE read_ct > 0"  # noqa: S608
                ).fetchone()
                == (4,)
            )
        )
        stolen: list[Any] = []
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline:  # another worker polling the queue
            stolen += conn.execute("SELECT msg_id FROM pgmq.read(%s, 30, 10)", (queue,)).fetchall()
            time.sleep(0.2)
    finally:
        runner.join(timeout=60)
    assert stolen == []
    assert w.claims.extended > 0
    assert conn.execute("SELECT count(*) FROM pgingest.embedding_state").fetchone() == (4,)
    assert conn.execute("SELECT count(*) FROM pgingest.dead_letters").fetchone() == (0,)


def test_requeue_says_how_many_dead_letters_it_dropped(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    """Issue 18, item 14: letters of a version that changed since are dropped, and a
    NOTICE says how many (they were dropped silently)."""
    register(conn, "v1", fake.url)
    insert_corpus(conn, 3)
    conn.execute(
        "INSERT INTO pgingest.dead_letters (doc_id, doc_key, model, content_hash, error_class,"
        " error_message) SELECT id, key, 'v1', content_hash, 'planted', 'planted by the test'"
        " FROM pgingest.documents"
    )
    conn.execute("UPDATE pgingest.documents SET body = body || ' Edited.' WHERE key = 'doc-0'")
    notices: list[str] = []
    conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
    (requeued,) = conn.execute("SELECT pgingest.requeue_dead_letters('v1')").fetchone()
    assert requeued == 2
    assert [n for n in notices if "dead letters dropped" in n] == [
        "pgingest: model v1: 1 dead letters dropped, not requeued: their document was deleted"
        " or has changed since (a changed document was queued again when it changed)"
    ]
    assert conn.execute("SELECT count(*) FROM pgingest.dead_letters").fetchone() == (0,)


def test_defer_replaces_only_the_messages_it_deleted(
    conn: psycopg.Connection[Any], fake: FakeEmbeddingServer
) -> None:
    """Issue 18, item 7: a batch that outlived its visibility timeout defers messages another
    worker has acknowledged meanwhile; those must not come back as new messages (doubled jobs)."""
    register(conn, "v1", fake.url)
    insert_corpus(conn, 3)
    msgs = db.read_batch(conn, "v1", 30, 10)
    assert len(msgs) == 3
    conn.execute(
        "SELECT pgmq.delete('pgingest_v1', %s::bigint)", (msgs[0].msg_id,)
    )  # acked elsewhere
    n = db.defer(conn, "v1", [m.msg_id for m in msgs], [m.message for m in msgs], 0)
    assert n == 2
    left = conn.execute("SELECT message ->> 'doc_id' FROM pgmq.q_pgingest_v1 ORDER BY 1").fetchall()
    assert [r[0] for r in left] == sorted(str(m.doc_id) for m in msgs[1:])


def test_two_models_write_backs_of_one_profile_lock_chunk_rows_in_one_order(
    conn: psycopg.Connection[Any], dsn: str
) -> None:
    """Issue 18, item 9: two models of one profile write the same chunk rows. Their write-backs
    lock them in (document, ordinal) order, whatever order their batches list them in, so they
    cannot deadlock. Deterministic: the first write-back is held (by a test trigger) between its
    two rows while the second, listing them the other way round, starts."""
    for name in ("v1", "v2"):
        conn.execute(
            "SELECT pgingest.register_model(%s, 'm', 3, 'http://127.0.0.1:9/v1', index_method => 'none')",
            (name,),
        )
    conn.execute(
        "INSERT INTO pgingest.documents (key, body) VALUES ('a', 'Alpha.'), ('b', 'Beta.')"
    )
    (a, ha), (b, hb) = conn.execute(
        "SELECT id, content_hash FROM pgingest.documents ORDER BY id"
    ).fetchall()
    conn.execute(
        "CREATE FUNCTION public.hold_t1() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
        " IF current_setting('application_name') = 't1' THEN"
        " PERFORM pg_advisory_lock(4242); PERFORM pg_advisory_unlock(4242); END IF;"
        " RETURN NEW; END $$"
    )
    conn.execute(
        f"CREATE TRIGGER hold_t1 BEFORE INSERT ON pgingest.chunks FOR EACH ROW"
        f" WHEN (NEW.doc_id = {int(b)}) EXECUTE FUNCTION public.hold_t1()"
    )
    conn.execute("SELECT pg_advisory_lock(4242)")
    errors: list[BaseException] = []

    def write(model: str, app: str, order: list[tuple[int, bytes, str]]) -> None:
        try:
            with psycopg.connect(dsn, application_name=app, autocommit=True) as c:
                c.execute(
                    "SELECT pgingest.complete_batch_v2(%s, '{}'::bigint[], %s::bigint[], %s::bytea[],"
                    " %s::bigint[], %s::integer[], %s::text[], %s::bytea[], %s::integer[],"
                    " %s::integer[], %s::integer[], %s::vector[], 'test', 1)",
                    (
                        model,
                        [d for d, _, _ in order],
                        [h for _, h, _ in order],
                        [d for d, _, _ in order],
                        [0, 0],
                        [t for _, _, t in order],
                        [bytes([d]) * 32 for d, _, _ in order],
                        [2, 2],
                        [0, 0],
                        [5, 5],
                        ["[1,0,0]", "[0,1,0]"],
                    ),
                )
        except BaseException as exc:
            errors.append(exc)

    t1 = threading.Thread(target=write, args=("v1", "t1", [(a, ha, "Alpha"), (b, hb, "Beta")]))
    t2 = threading.Thread(target=write, args=("v2", "t2", [(b, hb, "Beta"), (a, ha, "Alpha")]))
    t1.start()
    time.sleep(0.3)  # t1 holds row a, waits before row b
    t2.start()
    time.sleep(0.3)  # t2 waits for row a (in order) or holds row b (out of order)
    conn.execute("SELECT pg_advisory_unlock(4242)")
    t1.join(15)
    t2.join(15)
    assert errors == []
    assert conn.execute("SELECT count(*) FROM pgingest.chunks").fetchone() == (2,)
    for store in ("store_v1", "store_v2"):
        assert conn.execute(f"SELECT count(*) FROM pgingest.{store}").fetchone() == (2,)  # noqa: S608
