"""A model registered while an attached table is being written misses none of its rows.

register_model recompiles the capture triggers (they queue for the new model from then on) and
holds pgingest.source_rows in SHARE mode until it commits. An attached table's capture takes its
lock on source_rows inside the trigger, after it has loaded its compiled body: a write whose
trigger fired while the model was being registered waits for that lock, then runs the body it
loaded (which queues for the models of before) and registers its rows after the new model's
backfill_upto was read. Found by `chaos --trace`: five article rows never embedded by v2. The
first backfill step now waits for the writers still open (its fence, migration 0021), then queues
the versions registered after backfill_upto that the model has no trace of (no message, state or
dead letter at that hash): those the stale bodies wrote, whether their writer had committed by
then or not, and nothing that a capture queued itself.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg

from pgingest.testing.fake_provider import FakeEmbeddingServer
from tests.helpers import drain, register, wait_for


def one(conn: psycopg.Connection[Any], query: str, params: Any = None) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def write_while_held(
    conn: psycopg.Connection[Any], dsn: str, holder: psycopg.Connection[Any], statement: str
) -> None:
    """Runs the application's ``statement`` in its own connection, waits until its capture waits
    for a lock that ``holder`` (a registration or retirement not yet committed) holds, then
    commits ``holder`` and lets the statement finish."""
    errors: list[BaseException] = []

    def write() -> None:
        try:
            with psycopg.connect(dsn, autocommit=True) as w:
                w.execute("SET application_name = 'fence-writer'")
                w.execute(statement)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        wait_for(
            lambda: bool(
                one(
                    conn,
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE application_name = 'fence-writer' AND wait_event_type = 'Lock'",
                )
            ),
            timeout=20,
        )
    finally:
        holder.commit()
        holder.close()
    writer.join(30)
    assert not writer.is_alive() and errors == []


def test_a_write_caught_by_a_registration_is_backfilled(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    register(conn, "v1", fake.url, index_method="none")
    conn.execute(
        "CREATE TABLE public.notes (tenant text, id bigint, body text, PRIMARY KEY (tenant, id))"
    )
    conn.execute("INSERT INTO public.notes VALUES ('a', 1, 'A note written before anything.')")
    conn.execute("SELECT pgingest.add_source('notes', 'public.notes', body => 'body')")
    drain(dsn)

    # The registration holds source_rows in SHARE mode until it commits ...
    registrar = psycopg.connect(dsn)
    register(registrar, "v2", fake.url, model_id="fake-768", dimensions=768, index_method="none")

    # ... while an application's INSERT fires its capture (the body compiled for v1 alone),
    # which waits for source_rows.
    write_while_held(
        conn,
        dsn,
        registrar,
        "INSERT INTO public.notes VALUES ('a', 2, 'A note caught mid-registration.')",
    )

    doc = one(
        conn,
        "SELECT r.doc_id FROM pgingest.source_rows AS r WHERE r.row_key = %s::jsonb",
        ('{"tenant": "a", "id": 2}',),
    )
    # The capture ran the body it had loaded: v1's queue only, and after backfill_upto was read.
    assert one(conn, "SELECT backfill_upto FROM pgingest.models WHERE name = 'v2'") < doc
    assert (
        one(
            conn,
            "SELECT count(*) FROM pgmq.q_pgingest_v2 WHERE (message ->> 'doc_id')::bigint = %s",
            (doc,),
        )
        == 0
    )

    # The first step finds no writer open (the fence is empty) and queues the stale body's
    # version (1), then the backfill proper queues the note of before (1); nothing twice.
    steps = [one(conn, "SELECT pgingest.backfill_step_v1('v2', 100)") for _ in range(3)]
    assert steps == [1, 1, 0]
    assert (
        one(
            conn,
            "SELECT count(*) FROM pgmq.q_pgingest_v2 WHERE (message ->> 'doc_id')::bigint = %s",
            (doc,),
        )
        == 1
    )
    drain(dsn)
    for model in ("v1", "v2"):
        assert one(
            conn,
            "SELECT count(*) FROM pgingest.embedding_state WHERE doc_id = %s AND model = %s",
            (doc, model),
        ), f"{model} never embedded the row written during the registration"
    assert one(conn, "SELECT backfill_fence FROM pgingest.models WHERE name = 'v2'") == []
    assert one(conn, "SELECT pending FROM pgingest.backfill_progress WHERE model = 'v2'") == 0


def test_the_first_step_waits_for_the_writers_it_saw(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    """The fence holds the backfill (-1, not done) while a writer of a captured table that ran at
    the first step is open, and lets it finish once that writer has committed, queueing nothing
    twice."""
    register(conn, "v1", fake.url, index_method="none")
    conn.execute("CREATE TABLE public.notes (id bigint PRIMARY KEY, body text)")
    conn.execute("SELECT pgingest.add_source('notes', 'public.notes', body => 'body')")
    with psycopg.connect(dsn) as w:
        # A writer of the attached table, still open (as one whose trigger has not run yet).
        w.execute("LOCK TABLE public.notes IN ROW EXCLUSIVE MODE")
        register(conn, "v2", fake.url, model_id="fake-768", dimensions=768, index_method="none")
        assert one(conn, "SELECT pgingest.backfill_step_v1('v2', 100)") == -1
        assert one(
            conn, "SELECT cardinality(backfill_fence) FROM pgingest.models WHERE name = 'v2'"
        )
        time.sleep(0.1)
        assert one(conn, "SELECT pgingest.backfill_step_v1('v2', 100)") == -1
        w.execute(
            "INSERT INTO public.notes VALUES (1, 'Written by the writer the fence waits for.')"
        )
        w.commit()
    steps = [one(conn, "SELECT pgingest.backfill_step_v1('v2', 100)") for _ in range(3)]
    # The writer's trigger ran after the registration: its capture queued the row for v2 itself,
    # and the fence's catch-up does not queue it a second time.
    assert steps == [0, 0, 0]
    assert (
        one(
            conn,
            "SELECT count(*) FROM pgmq.q_pgingest_v2 AS q"
            " JOIN pgingest.source_rows AS r ON r.doc_id = (q.message ->> 'doc_id')::bigint",
        )
        == 1
    )
    assert one(conn, "SELECT backfill_fence FROM pgingest.models WHERE name = 'v2'") == []
    assert one(
        conn, "SELECT backfill_completed_at IS NOT NULL FROM pgingest.models WHERE name = 'v2'"
    )


def test_a_write_caught_by_a_retirement_is_captured_for_the_live_models(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    """The mirror of the registration's race: a capture that loaded its body while a model was
    being retired (a body that still writes to that model's queue) runs after the queue was
    dropped. The application's row must still be registered and queued for the live model, with
    no capture_failed dead letter."""
    register(conn, "v1", fake.url, index_method="none")
    register(conn, "v2", fake.url, model_id="fake-768", dimensions=768, index_method="none")
    conn.execute("CREATE TABLE public.notes (id bigint PRIMARY KEY, body text)")
    conn.execute("SELECT pgingest.add_source('notes', 'public.notes', body => 'body')")
    drain(dsn)

    retirer = psycopg.connect(dsn)
    retirer.execute("SELECT pgingest.retire_model('v2')")
    write_while_held(
        conn, dsn, retirer, "INSERT INTO public.notes VALUES (7, 'A note caught mid-retirement.')"
    )

    assert (
        one(
            conn,
            "SELECT string_agg(error_class || ': ' || error_message, '; ') FROM pgingest.dead_letters",
        )
        is None
    )
    doc = one(
        conn,
        "SELECT r.doc_id FROM pgingest.source_rows AS r WHERE r.row_key = %s::jsonb",
        ('{"id": 7}',),
    )
    assert (
        one(
            conn,
            "SELECT count(*) FROM pgmq.q_pgingest_v1 WHERE (message ->> 'doc_id')::bigint = %s",
            (doc,),
        )
        == 1
    )
    drain(dsn)
    assert one(
        conn,
        "SELECT count(*) FROM pgingest.embedding_state WHERE doc_id = %s AND model = 'v1'",
        (doc,),
    )
