"""Attached tables: the fixes of the review of 2026-12-07 (docs/operations.md, "Hardening after
review (2026-12-07)"). Each test reproduces what the reviewer found, against the real database."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from pgingest import install

MODEL = "m1"


def one(conn: psycopg.Connection[Any], query: str | sql.Composable, params: Any = None) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def register(conn: psycopg.Connection[Any]) -> None:
    conn.execute(
        "SELECT pgingest.register_model(%s, 'fake-384', 384, 'http://127.0.0.1:9/v1')", (MODEL,)
    )


def registry(conn: psycopg.Connection[Any], source: str) -> list[tuple[Any, ...]]:
    """(row_key, content_hash hex, doc_id) of a source's registry rows, in doc_id order."""
    return conn.execute(
        "SELECT r.row_key, encode(r.content_hash, 'hex'), r.doc_id FROM pgingest.source_rows AS r"
        " JOIN pgingest.sources AS s ON s.id = r.source_id WHERE s.name = %s ORDER BY r.doc_id",
        (source,),
    ).fetchall()


def messages(conn: psycopg.Connection[Any], source: str) -> list[tuple[int, str]]:
    """(doc_id, hash) of the queued messages of a source's rows."""
    return [
        (int(r[0]), str(r[1]))
        for r in conn.execute(
            sql.SQL(
                "SELECT (q.message ->> 'doc_id')::bigint, q.message ->> 'hash' FROM pgmq.{} AS q"
                " JOIN pgingest.source_rows AS r ON r.doc_id = (q.message ->> 'doc_id')::bigint"
                " JOIN pgingest.sources AS s ON s.id = r.source_id AND s.name = %s"
                " ORDER BY q.msg_id"
            ).format(sql.Identifier(f"q_pgingest_{MODEL}")),
            (source,),
        ).fetchall()
    ]


def capture_failures(conn: psycopg.Connection[Any]) -> int:
    return int(
        one(conn, "SELECT count(*) FROM pgingest.dead_letters WHERE error_class = 'capture_failed'")
    )


# -- 3: the registry's keys and the hashed text do not depend on the session's settings --------


def test_a_delete_from_a_session_in_another_time_zone_finds_the_registry_row(
    conn: psycopg.Connection[Any],
) -> None:
    register(conn)
    conn.execute(
        "CREATE TABLE public.ev (dev int, ts timestamptz, body text, PRIMARY KEY (dev, ts))"
    )
    conn.execute("SELECT pgingest.add_source('ev', 'public.ev', body => 'body', backfill => false)")
    conn.execute("SET TimeZone = 'UTC'")
    conn.execute("INSERT INTO public.ev VALUES (1, '2024-01-01 00:00:00+00', 'hello')")
    (first,) = registry(conn, "ev")
    conn.execute("SET TimeZone = 'America/New_York'")
    conn.execute("UPDATE public.ev SET body = 'hello v2'")
    rows = registry(conn, "ev")
    assert len(rows) == 1 and rows[0][2] == first[2], rows  # the same row, not a second document
    assert len(messages(conn, "ev")) == 2  # the insert and the new text
    conn.execute("SET TimeZone = 'Asia/Tokyo'")
    conn.execute("DELETE FROM public.ev")
    assert registry(conn, "ev") == []
    assert capture_failures(conn) == 0


def test_a_bytea_key_deleted_from_a_session_with_escape_output_is_forgotten(
    conn: psycopg.Connection[Any],
) -> None:
    register(conn)
    conn.execute("CREATE TABLE public.blob (h bytea PRIMARY KEY, body text)")
    conn.execute(
        "SELECT pgingest.add_source('blob', 'public.blob', body => 'body', backfill => false)"
    )
    conn.execute("INSERT INTO public.blob VALUES ('\\x0102'::bytea, 'x')")
    conn.execute("SET bytea_output = 'escape'")
    conn.execute("SET extra_float_digits = -3")
    conn.execute("DELETE FROM public.blob")
    assert registry(conn, "blob") == []


def test_a_template_over_a_timestamptz_hashes_the_same_text_in_every_time_zone(
    conn: psycopg.Connection[Any],
) -> None:
    register(conn)
    conn.execute(
        "CREATE TABLE public.post (id int PRIMARY KEY, body text, published timestamptz,"
        " status text)"
    )
    conn.execute(
        "SELECT pgingest.add_source('post', 'public.post',"
        " template => '{body} (published {published})', metadata => '{status}',"
        " backfill => false)"
    )
    conn.execute("SET TimeZone = 'UTC'")
    conn.execute("INSERT INTO public.post VALUES (1, 'hello', '2024-01-01 00:00+00', 'draft')")
    ((_, inserted, doc_id),) = registry(conn, "post")
    conn.execute("SET TimeZone = 'Asia/Tokyo'")
    conn.execute("SET DateStyle = 'SQL, DMY'")
    conn.execute("UPDATE public.post SET status = 'live'")  # metadata only: no new version
    ((_, after, _),) = registry(conn, "post")
    assert after == inserted
    assert messages(conn, "post") == [(doc_id, inserted)]
    # The worker reads the text it hashed, whatever its own session's settings.
    conn.execute("BEGIN")
    row = conn.execute(
        "SELECT body, status FROM pgingest.read_batch_v1(%s, 30, 10)", (MODEL,)
    ).fetchone()
    conn.execute("ROLLBACK")
    assert row == ("hello (published 2024-01-01 00:00:00+00)", "current")


def test_an_install_rewrites_keys_registered_in_a_sessions_time_zone(
    conn: psycopg.Connection[Any], dsn: str
) -> None:
    register(conn)
    conn.execute("CREATE TABLE public.ev (id int, ts timestamptz, body text, PRIMARY KEY (id, ts))")
    conn.execute("SELECT pgingest.add_source('ev', 'public.ev', body => 'body', backfill => false)")
    conn.execute(
        "INSERT INTO public.ev VALUES (1, '2024-01-01 00:00+00', 'a'), (2, '2024-01-01 00:00+00', 'b')"
    )
    # What an earlier release registered from a session in Tokyo (and, for row 2, the duplicate
    # its UPDATE from a UTC session then made).
    conn.execute(
        "UPDATE pgingest.source_rows SET row_key = jsonb_set(row_key, '{ts}',"
        " '\"2024-01-01T09:00:00+09:00\"')"
    )
    conn.execute(
        "INSERT INTO pgingest.source_rows (source_id, row_key, content_hash)"
        " SELECT r.source_id, jsonb_build_object('id', 2, 'ts', '2024-01-01T00:00:00+00:00'),"
        " r.content_hash FROM pgingest.source_rows AS r WHERE r.row_key ->> 'id' = '2'"
    )
    assert len(registry(conn, "ev")) == 3
    install.install(dsn)
    rows = registry(conn, "ev")
    assert [r[0] for r in rows] == [
        {"id": 1, "ts": "2024-01-01T00:00:00+00:00"},
        {"id": 2, "ts": "2024-01-01T00:00:00+00:00"},
    ]
    conn.execute("SET TimeZone = 'Europe/Paris'")
    conn.execute("DELETE FROM public.ev")
    assert registry(conn, "ev") == []


# -- 4: an UPDATE of metadata alone on a row not registered yet queues it ------------------------


def art(conn: psycopg.Connection[Any], backfill: bool) -> None:
    register(conn)
    conn.execute("CREATE TABLE public.art (id int PRIMARY KEY, body text, status text)")
    conn.execute(
        "INSERT INTO public.art SELECT g, 'text ' || g, 'draft' FROM generate_series(1, 5) AS g"
    )
    conn.execute(
        "SELECT pgingest.add_source('art', 'public.art', body => 'body', metadata => '{status}',"
        " backfill => %s)",
        (backfill,),
    )


def messages_per_row(conn: psycopg.Connection[Any], source: str) -> dict[int, int]:
    per = {int(r[0]["id"]): 0 for r in registry(conn, source)}
    by_doc = {r[2]: int(r[0]["id"]) for r in registry(conn, source)}
    for doc_id, _ in messages(conn, source):
        per[by_doc[doc_id]] += 1
    return per


def test_a_metadata_update_before_the_backfill_reaches_the_row_queues_it_once(
    conn: psycopg.Connection[Any],
) -> None:
    art(conn, backfill=True)
    conn.execute("UPDATE public.art SET status = 'published' WHERE id = 5")
    assert messages_per_row(conn, "art") == {5: 1}
    conn.execute("CALL pgingest.run_source_backfill(2)")
    assert messages_per_row(conn, "art") == {1: 1, 2: 1, 3: 1, 4: 1, 5: 1}


def test_a_metadata_update_of_a_row_held_before_attaching_without_backfill_queues_it(
    conn: psycopg.Connection[Any],
) -> None:
    art(conn, backfill=False)
    conn.execute("UPDATE public.art SET status = 'published' WHERE id IN (2, 3)")
    assert messages_per_row(conn, "art") == {2: 1, 3: 1}
    conn.execute("UPDATE public.art SET status = 'archived' WHERE id IN (2, 3)")  # registered now
    assert messages_per_row(conn, "art") == {2: 1, 3: 1}
    assert registry(conn, "art")[0][1] == one(
        conn, "SELECT encode(sha256(convert_to('null:text 2', 'UTF8')), 'hex')"
    )


def test_a_metadata_update_keeps_the_registered_hash_so_a_resync_still_queues_the_text(
    conn: psycopg.Connection[Any],
) -> None:
    art(conn, backfill=False)
    conn.execute("UPDATE public.art SET body = 'changed' WHERE id = 1")
    ((_, real, doc_id),) = registry(conn, "art")
    # The registry is behind the table (a capture that failed, say): the metadata UPDATE must not
    # record the table's hash without queueing it, or a resync finds nothing to do.
    conn.execute("UPDATE pgingest.source_rows SET content_hash = '\\x00'")
    conn.execute("UPDATE public.art SET status = 'published' WHERE id = 1")
    assert registry(conn, "art")[0][1] == "00"
    conn.execute("SELECT pgingest.resync_source('art')")
    conn.execute("CALL pgingest.run_source_backfill(100)")
    assert (doc_id, real) in messages(conn, "art")
