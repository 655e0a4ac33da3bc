"""Attached tables: the fixes of the review of 2026-12-07 (docs/operations.md, "Hardening after
review (2026-12-07)"). Each test reproduces what the reviewer found, against the real database."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
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


# -- 1: no column whose type runs the table owner's code as the owner of pgingest ----------------


@pytest.fixture
def owner(conn: psycopg.Connection[Any]) -> Iterator[str]:
    """A role in pgingest_admin owning a schema of its own, with a type whose cast to text and
    to json is its own function (which notes the role it ran as in public.ran_as)."""
    name = f"pgingest_t_app_{uuid.uuid4().hex[:8]}"
    conn.execute(sql.SQL("CREATE ROLE {} IN ROLE pgingest_admin").format(sql.Identifier(name)))
    conn.execute(sql.SQL("CREATE SCHEMA app AUTHORIZATION {}").format(sql.Identifier(name)))
    conn.execute("CREATE TABLE public.ran_as (who text)")
    conn.execute(sql.SQL("GRANT INSERT ON public.ran_as TO {}").format(sql.Identifier(name)))
    conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(name)))
    conn.execute("CREATE TYPE app.mood AS ENUM ('ok', 'sad')")
    for target in ("text", "jsonb"):
        note = (
            "BEGIN INSERT INTO public.ran_as VALUES (current_user); RETURN to_jsonb($1::varchar)::"
        )
        body = note + target + "; END"
        conn.execute(
            sql.SQL("CREATE FUNCTION {}(app.mood) RETURNS {} LANGUAGE plpgsql AS {}").format(
                sql.Identifier("app", f"mood_{target}"), sql.SQL(target), sql.Literal(body)
            )
        )
        conn.execute(
            sql.SQL("CREATE CAST (app.mood AS {}) WITH FUNCTION {}(app.mood)").format(
                sql.SQL(target), sql.Identifier("app", f"mood_{target}")
            )
        )
    conn.execute("CREATE DOMAIN app.code AS text CHECK (length(VALUE) < 10)")
    conn.execute("RESET ROLE")
    try:
        yield name
    finally:
        conn.execute("RESET ROLE")
        conn.execute("DROP SCHEMA app CASCADE")
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


@pytest.mark.parametrize(
    ("table", "mapping", "column"),
    [
        ("id int PRIMARY KEY, entry text, m app.mood", "template => '{entry} ({m})'", "m"),
        ("id int PRIMARY KEY, entry text, m app.mood", "body => 'entry', metadata => '{m}'", "m"),
        ("id int PRIMARY KEY, entry text, m app.mood[]", "template => '{entry} {m}'", "m"),
        ("id int PRIMARY KEY, entry text, t app.code", "body => 'entry', title => 't'", "t"),
        ("id app.mood PRIMARY KEY, entry text", "body => 'entry'", "id"),
        ("id app.code PRIMARY KEY, entry text", "body => 'entry'", "id"),
        ("id int PRIMARY KEY, entry app.code", "body => 'entry'", "entry"),
    ],
)
def test_a_column_of_the_owners_own_type_is_refused_at_attach(
    conn: psycopg.Connection[Any], owner: str, table: str, mapping: str, column: str
) -> None:
    register(conn)
    conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(owner)))
    conn.execute(f"CREATE TABLE app.diary ({table})")
    with pytest.raises(
        psycopg.errors.FeatureNotSupported, match=f"column {column} of app.diary"
    ) as exc:
        conn.execute(
            f"SELECT pgingest.add_source('diary', 'app.diary', {mapping}, backfill => false)"
        )
    assert "built-in type" in (exc.value.diag.message_hint or "")
    conn.execute("RESET ROLE")
    assert one(conn, "SELECT count(*) FROM pgingest.sources WHERE name = 'diary'") == 0


def test_a_column_changed_to_the_owners_own_type_after_attaching_is_never_read(
    conn: psycopg.Connection[Any], owner: str
) -> None:
    register(conn)
    conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(owner)))
    conn.execute("CREATE TABLE app.diary (id int PRIMARY KEY, entry text, m text)")
    conn.execute("INSERT INTO app.diary VALUES (1, 'held before', 'ok')")
    conn.execute("SELECT pgingest.add_source('diary', 'app.diary', template => '{entry} ({m})')")
    conn.execute("INSERT INTO app.diary VALUES (3, 'dear diary', 'ok')")  # registered
    conn.execute("INSERT INTO app.diary VALUES (5, 'kept', 'ok')")  # registered, read below
    conn.execute("ALTER TABLE app.diary ALTER COLUMN m TYPE app.mood USING m::app.mood")
    # The capture's statements (planned again after the ALTER) never read it: each fails, as a
    # capture_failed dead letter, and never fails the application's statement (a DELETE reads
    # the key alone).
    conn.execute("INSERT INTO app.diary VALUES (2, 'dear diary', 'sad')")
    conn.execute("UPDATE app.diary SET m = 'ok' WHERE id = 3")
    conn.execute("DELETE FROM app.diary WHERE id = 3")
    conn.execute("RESET ROLE")
    assert capture_failures(conn) == 2
    assert one(conn, "SELECT count(*) FROM pgingest.source_rows") == 1  # 5's
    conn.execute("SELECT pgingest._compile_source_capture()")  # what any install does
    conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(owner)))
    conn.execute("INSERT INTO app.diary VALUES (4, 'dear diary', 'sad')")
    conn.execute("RESET ROLE")
    assert capture_failures(conn) == 3
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="column m of app.diary"):
        conn.execute("SELECT pgingest.source_backfill_step_v1(100, NULL)")
    # The read path reads none of its rows: they become dead letters (item 6).
    assert (
        conn.execute(
            "SELECT * FROM pgingest._read_source_rows(ARRAY(SELECT doc_id FROM pgingest.source_rows))"
        ).fetchall()
        == []
    )
    assert "column m of app.diary" in one(
        conn,
        "SELECT error_message FROM pgingest.dead_letters WHERE error_class = 'source_unreadable'",
    )
    assert conn.execute("SELECT who FROM public.ran_as").fetchall() == []


# -- 2: attaching needs the table's owner; a trigger elsewhere naming a source does nothing ------


def test_a_role_with_only_the_trigger_privilege_cannot_attach_anothers_table(
    conn: psycopg.Connection[Any], dsn: str
) -> None:
    evil = f"pgingest_t_evil_{uuid.uuid4().hex[:8]}"
    conn.execute(
        sql.SQL("CREATE ROLE {} LOGIN IN ROLE pgingest_admin").format(sql.Identifier(evil))
    )
    try:
        conn.execute("CREATE TABLE public.secret (id int PRIMARY KEY, ssn text)")
        conn.execute("INSERT INTO public.secret VALUES (1, 'SSN 123-45-6789')")
        conn.execute(sql.SQL("GRANT TRIGGER ON public.secret TO {}").format(sql.Identifier(evil)))
        with psycopg.connect(
            psycopg.conninfo.make_conninfo(dsn, user=evil), autocommit=True
        ) as as_evil:
            for op, ref in (
                ("insert", "REFERENCING NEW TABLE AS new_rows"),
                ("update", "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows"),
                ("delete", "REFERENCING OLD TABLE AS old_rows"),
                ("truncate", ""),
            ):
                as_evil.execute(
                    sql.SQL(
                        "CREATE TRIGGER {} AFTER {} ON public.secret {} FOR EACH STATEMENT"
                        " EXECUTE FUNCTION pgingest._source_capture('leak')"
                    ).format(
                        sql.Identifier(f"pgingest_leak_capture_{op}"),
                        sql.SQL(op.upper()),
                        sql.SQL(ref),
                    )
                )
            attach = (
                "SELECT pgingest._attach_source('leak', 'public.secret', 'ssn', NULL, 'ssn', '{}',"
                " true, NULL)"
            )
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="only the owner"):
                as_evil.execute(attach)
        # the same from a session of a superuser that SET ROLE to it
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(evil)))
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="only the owner"):
            conn.execute(attach)
        conn.execute("RESET ROLE")
        assert one(conn, "SELECT count(*) FROM pgingest.sources WHERE name = 'leak'") == 0
    finally:
        conn.execute("RESET ROLE")
        conn.execute("DROP TABLE IF EXISTS public.secret")
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(evil)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(evil)))


@pytest.mark.parametrize("compiled", [True, False])
def test_a_trigger_on_another_table_naming_a_source_leaves_its_registry_alone(
    conn: psycopg.Connection[Any], compiled: bool
) -> None:
    art(conn, backfill=True)
    conn.execute("CALL pgingest.run_source_backfill(100)")
    before = registry(conn, "art")
    assert len(before) == 5
    if not compiled:  # a source whose capture is not compiled yet runs its stored statements
        conn.execute("UPDATE pgingest.sources SET statements = statements - 'capture_insert'")
        conn.execute("SELECT pgingest._compile_source_capture()")
    conn.execute("CREATE TABLE public.decoy (id int PRIMARY KEY, body text, status text)")
    conn.execute(
        "CREATE TRIGGER x AFTER TRUNCATE ON public.decoy FOR EACH STATEMENT"
        " EXECUTE FUNCTION pgingest._source_capture('art')"
    )
    conn.execute(
        "CREATE TRIGGER y AFTER INSERT ON public.decoy REFERENCING NEW TABLE AS new_rows"
        " FOR EACH STATEMENT EXECUTE FUNCTION pgingest._source_capture('art')"
    )
    conn.execute("INSERT INTO public.decoy VALUES (1, 'forged text', 'forged')")
    conn.execute("TRUNCATE public.decoy")
    assert registry(conn, "art") == before
    assert capture_failures(conn) == 0


# -- 9: run_source_backfill() backfills every source ---------------------------------------------


def test_run_source_backfill_goes_on_after_the_first_source_is_done(
    conn: psycopg.Connection[Any],
) -> None:
    art(conn, backfill=True)
    conn.execute("CREATE TABLE public.note (id int PRIMARY KEY, body text)")
    conn.execute("INSERT INTO public.note SELECT g, 'note ' || g FROM generate_series(1, 3) AS g")
    conn.execute("SELECT pgingest.add_source('note', 'public.note', body => 'body')")
    conn.execute("CALL pgingest.run_source_backfill(100)")
    assert conn.execute(
        "SELECT source, backfill, rows_registered FROM pgingest.source_status"
        " WHERE source <> 'documents' ORDER BY source"
    ).fetchall() == [("art", "done", 5), ("note", "done", 3)]
    assert len(messages(conn, "art")) == 5 and len(messages(conn, "note")) == 3


# -- 5: neither a partition nor a partitioned table is attached ----------------------------------


@pytest.mark.parametrize(
    ("table", "words"), [("public.p", "partitioned table"), ("public.p1", "partition")]
)
def test_a_partition_and_a_partitioned_table_are_refused(
    conn: psycopg.Connection[Any], table: str, words: str
) -> None:
    conn.execute("CREATE TABLE public.p (id int PRIMARY KEY, body text) PARTITION BY RANGE (id)")
    conn.execute("CREATE TABLE public.p1 PARTITION OF public.p FOR VALUES FROM (0) TO (100)")
    with pytest.raises(psycopg.errors.FeatureNotSupported, match=f"is a {words}") as exc:
        conn.execute("SELECT pgingest.add_source('s', %s::regclass, body => 'body')", (table,))
    assert "each partition" not in (exc.value.diag.message_hint or "")
    assert one(conn, "SELECT count(*) FROM pgingest.sources WHERE name = 's'") == 0


# -- 7: a key that does not read back from the registry's jsonb is refused -----------------------


@pytest.mark.parametrize(
    ("key", "words"),
    [
        ("tags int[] PRIMARY KEY", "integer\\[\\]"),
        ("span int4range PRIMARY KEY", "int4range"),
        ("pair public.pair PRIMARY KEY", "pair"),
        ("id int NOT NULL, tags text[] NOT NULL, PRIMARY KEY (id, tags)", "text\\[\\]"),
    ],
)
def test_an_array_composite_or_range_key_is_refused_at_attach(
    conn: psycopg.Connection[Any], key: str, words: str
) -> None:
    conn.execute("CREATE TYPE public.pair AS (a int, b int)")
    conn.execute(f"CREATE TABLE public.arr ({key}, body text)")
    with pytest.raises(psycopg.errors.FeatureNotSupported, match=f"key column .* of type {words}"):
        conn.execute("SELECT pgingest.add_source('arr', 'public.arr', body => 'body')")
    assert one(conn, "SELECT count(*) FROM pgingest.sources WHERE name = 'arr'") == 0


# -- 6: a renamed or broken source's table: no other table read, no other source's rows failed ---


def read_batch(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    """(doc_key, body, status) of what read_batch_v1 gives (in a transaction rolled back: the
    messages stay queued)."""
    conn.execute("BEGIN")
    try:
        return conn.execute(
            "SELECT doc_key, body, status FROM pgingest.read_batch_v1(%s, 30, 100) ORDER BY msg_id",
            (MODEL,),
        ).fetchall()
    finally:
        conn.execute("ROLLBACK")


def test_a_renamed_table_is_read_under_its_new_name_never_a_new_table_of_its_old_one(
    conn: psycopg.Connection[Any],
) -> None:
    register(conn)
    conn.execute("CREATE TABLE public.rn (id int PRIMARY KEY, body text)")
    conn.execute("SELECT pgingest.add_source('rn', 'public.rn', body => 'body', backfill => false)")
    conn.execute("INSERT INTO public.rn VALUES (1, 'a')")
    conn.execute("ALTER TABLE public.rn RENAME TO rn2")
    conn.execute("INSERT INTO public.rn2 VALUES (2, 'b')")
    assert read_batch(conn) == [("1", "a", "current"), ("2", "b", "current")]
    # a new table takes the old name (a blue/green swap): never read
    conn.execute("CREATE TABLE public.rn (id int PRIMARY KEY, body text)")
    conn.execute("INSERT INTO public.rn VALUES (1, 'SECRET'), (2, 'SECRET'), (3, 'SECRET')")
    assert read_batch(conn) == [("1", "a", "current"), ("2", "b", "current")]
    conn.execute("SELECT pgingest.resync_source('rn')")
    conn.execute("CALL pgingest.run_source_backfill(100)")
    assert sorted(r[0]["id"] for r in registry(conn, "rn")) == [1, 2]
    assert len(messages(conn, "rn")) == 2  # the versions queued when written, nothing new
    assert one(conn, "SELECT statements ->> 'table' FROM pgingest.sources WHERE name = 'rn'") == (
        "public.rn2"
    )


@pytest.mark.parametrize(
    "breakage",
    ["ALTER TABLE public.note RENAME COLUMN body TO txt", "DROP TABLE public.note"],
)
def test_a_source_that_cannot_be_read_leaves_the_others_read_and_its_rows_dead_lettered(
    conn: psycopg.Connection[Any], breakage: str
) -> None:
    art(conn, backfill=False)
    conn.execute("CREATE TABLE public.note (id int PRIMARY KEY, body text)")
    conn.execute(
        "SELECT pgingest.add_source('note', 'public.note', body => 'body', backfill => false)"
    )
    conn.execute("INSERT INTO public.note VALUES (1, 'note one'), (2, 'note two')")
    conn.execute("UPDATE public.art SET body = 'new ' || id WHERE id <= 2")
    conn.execute(breakage)
    assert read_batch(conn) == [
        (None, None, "stale"),
        (None, None, "stale"),
        ("1", "new 1", "current"),
        ("2", "new 2", "current"),
    ]
    conn.execute(
        sql.SQL("SELECT * FROM pgingest.read_batch_v1(%s, 30, 100)"), (MODEL,)
    )  # the note rows' messages are acknowledged by the worker; their dead letters stay
    dead = conn.execute(
        "SELECT doc_key, model, error_message FROM pgingest.dead_letters"
        " WHERE error_class = 'source_unreadable' ORDER BY doc_key"
    ).fetchall()
    assert [(d[0], d[1]) for d in dead] == [("1", MODEL), ("2", MODEL)]
    assert all("source note" in d[2] for d in dead)
    if breakage.startswith("ALTER"):  # fixed: the rows are requeued and read
        conn.execute("ALTER TABLE public.note RENAME COLUMN txt TO body")
        conn.execute(sql.SQL("DELETE FROM pgmq.{}").format(sql.Identifier(f"q_pgingest_{MODEL}")))
        assert (
            one(conn, "SELECT pgingest.requeue_dead_letters(p_error_class => 'source_unreadable')")
            == 2
        )
        assert read_batch(conn) == [("1", "note one", "current"), ("2", "note two", "current")]


# -- 8: a deferrable key is refused ---------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        "id int PRIMARY KEY DEFERRABLE INITIALLY DEFERRED",
        "id int PRIMARY KEY DEFERRABLE INITIALLY IMMEDIATE",
        "id int NOT NULL, CONSTRAINT kd_id UNIQUE (id) DEFERRABLE",
    ],
)
def test_a_deferrable_key_is_refused_at_attach(conn: psycopg.Connection[Any], key: str) -> None:
    conn.execute(f"CREATE TABLE public.kd ({key}, body text)")
    with pytest.raises(psycopg.errors.FeatureNotSupported, match="deferrable") as exc:
        conn.execute("SELECT pgingest.add_source('kd', 'public.kd', body => 'body')")
    assert "NOT DEFERRABLE" in (exc.value.diag.message_hint or "")
    assert one(conn, "SELECT count(*) FROM pgingest.sources WHERE name = 'kd'") == 0
