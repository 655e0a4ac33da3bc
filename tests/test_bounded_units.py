"""Bounded units of work (issue 18, item 12).

Nothing pgingest does inside an application's statement, or on every tick of a worker, grows
without bound with the size of that statement or of a queue: capture builds no array of messages,
a DELETE copies a bounded number of vectors to the embedding cache, a model's backfill is paced on
its queue's depth, and the queue gauges stop counting past a limit. The limits are settings of
pgingest.config; the tests set them small.
"""

from __future__ import annotations

from typing import Any

import psycopg

from pgingest import db
from pgingest.testing.fake_provider import FakeEmbeddingServer
from tests.helpers import drain, insert_corpus, queue_count, register


def one(conn: psycopg.Connection[Any], query: str, params: Any = None) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def setting(conn: psycopg.Connection[Any], key: str, value: int) -> None:
    conn.execute(
        "INSERT INTO pgingest.config (key, value) VALUES (%s, %s)"
        " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (key, str(value)),
    )


def queued_doc_ids(conn: psycopg.Connection[Any], model: str) -> list[int]:
    return [
        r[0]
        for r in conn.execute(
            f"SELECT (message ->> 'doc_id')::bigint FROM pgmq.q_pgingest_{model} ORDER BY 1"  # noqa: S608
        )
    ]


def test_a_multi_row_statement_queues_each_row_once_per_model(
    conn: psycopg.Connection[Any], fake: FakeEmbeddingServer
) -> None:
    register(conn, "v1", fake.url)
    register(conn, "v2", fake.url, model_id="fake-768", dimensions=768)
    conn.execute("CALL pgingest.run_backfill('v2')")
    # The capture inserts straight from the statement's arrays into each queue table
    # (sql/010_capture.sql): no array of messages is built, whatever the statement's size.
    insert_corpus(conn, 1)
    conn.execute(
        "INSERT INTO pgingest.documents (key, body) SELECT 'bulk-' || i, 'Body ' || i"
        " FROM generate_series(1, 23) AS i"
    )
    ids = [r[0] for r in conn.execute("SELECT id FROM pgingest.documents ORDER BY id")]
    assert len(ids) == 24
    for model in ("v1", "v2"):
        assert queued_doc_ids(conn, model) == ids
    # An attached table's statement goes through the same path.
    conn.execute("CREATE TABLE public.notes (id bigint PRIMARY KEY, body text)")
    conn.execute("SELECT pgingest.add_source('notes', 'public.notes', body => 'body')")
    conn.execute("INSERT INTO public.notes SELECT i, 'Note ' || i FROM generate_series(1, 15) AS i")
    for model in ("v1", "v2"):
        assert queue_count(conn, model) == 24 + 15


def test_a_delete_copies_a_bounded_number_of_vectors_to_the_cache(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    register(conn, "v1", fake.url)
    insert_corpus(conn, 12)
    drain(dsn)
    vectors = one(conn, "SELECT count(DISTINCT chunk_hash) FROM pgingest.store_v1")
    assert vectors > 12
    setting(conn, "delete_cache_max_chunks", 5)
    conn.execute("DELETE FROM pgingest.documents WHERE key LIKE 'doc-%'")
    assert one(conn, "SELECT count(*) FROM pgingest.store_v1") == 0
    assert one(conn, "SELECT count(*) FROM pgingest.embedding_cache") == 5
    # The default bound (10,000) keeps every one of these.
    conn.execute("DELETE FROM pgingest.config WHERE key = 'delete_cache_max_chunks'")
    conn.execute("SELECT pgingest.clear_embedding_cache('v1')")
    insert_corpus(conn, 12)
    drain(dsn)
    conn.execute("DELETE FROM pgingest.documents")
    assert one(conn, "SELECT count(*) FROM pgingest.embedding_cache") == vectors


def test_a_models_backfill_is_paced_on_its_queue_depth(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    register(conn, "v1", fake.url)
    insert_corpus(conn, 20)
    drain(dsn)
    setting(conn, "backfill_max_queue", 6)
    register(conn, "v2", fake.url, model_id="fake-768", dimensions=768)
    assert one(conn, "SELECT pgingest.backfill_step_v1('v2', 4)") == 4
    assert one(conn, "SELECT pgingest.backfill_step_v1('v2', 4)") == 4
    assert one(conn, "SELECT pgingest.backfill_step_v1('v2', 4)") == -1  # 8 queued >= 6
    assert queue_count(conn, "v2") == 8
    # An application's write is queued at once, behind at most the paced backfill.
    insert_corpus(conn, 1, start=100)
    assert queue_count(conn, "v2") == 9
    # The workers drain it all (the step waits while the queue is deep, then goes on).
    drain(dsn)
    assert one(conn, "SELECT count(*) FROM pgingest.embedding_state WHERE model = 'v2'") == 21
    assert one(
        conn, "SELECT backfill_completed_at IS NOT NULL FROM pgingest.models WHERE name = 'v2'"
    )
    # From psql, run_backfill is not paced.
    register(conn, "v3", fake.url, model_id="fake-768", dimensions=768)
    conn.execute("CALL pgingest.run_backfill('v3', 4)")
    assert queue_count(conn, "v3") == 21


def test_queue_gauges_count_up_to_a_limit_then_estimate(
    conn: psycopg.Connection[Any], fake: FakeEmbeddingServer
) -> None:
    register(conn, "v1", fake.url)
    insert_corpus(conn, 12)
    exact = db.queue_stats(conn, "v1")[0]
    assert (exact["queue_length"], exact["ready"], exact["in_flight"], exact["delayed"]) == (
        12,
        12,
        0,
        0,
    )
    setting(conn, "queue_count_limit", 10)
    capped = db.queue_stats(conn, "v1")[0]
    assert capped["queue_length"] >= 11
    assert (capped["ready"], capped["in_flight"], capped["delayed"]) == (None, None, None)
    assert capped["oldest_enqueued_at"] == exact["oldest_enqueued_at"]
    assert capped["oldest_age_seconds"] is not None


def test_the_worker_asks_whether_a_queue_holds_messages_without_counting_it(
    conn: psycopg.Connection[Any], fake: FakeEmbeddingServer
) -> None:
    register(conn, "v1", fake.url)
    assert not db.has_messages(conn, "v1")
    insert_corpus(conn, 3)
    # Claimed (invisible) messages still count as held: --drain must not exit on them.
    assert len(conn.execute("SELECT * FROM pgingest.read_batch_v1('v1', 60, 10)").fetchall()) == 3
    assert conn.execute("SELECT * FROM pgingest.read_batch_v1('v1', 60, 10)").fetchall() == []
    assert db.has_messages(conn, "v1")
    conn.execute("SELECT pgmq.purge_queue('pgingest_v1')")
    assert not db.has_messages(conn, "v1")
