"""Model lifecycle review (2026-12-07): dead-letter retention and current versions, requeue of
invalid messages, shared chunk rows rewritten by another model, the search view's grants and
dependants across a storage swap, the served share of a paused candidate, the routing bucket's
whitespace, and a backfill step that finds its model busy. Against the real database and the fake
provider."""

from __future__ import annotations

import argparse
import threading
import time
import uuid
from typing import Any

import psycopg
import pytest
from psycopg import sql

from pgingest import db, install, models_cli, search
from pgingest.testing.fake_provider import FakeEmbeddingServer
from tests.helpers import drain, insert_corpus, insert_docs, register


def _cli(dsn: str) -> Any:
    parser = argparse.ArgumentParser(prog="pgingest")
    models_cli.add_model_commands(parser.add_subparsers(dest="command"))

    def cli(*argv: str) -> int:
        args = parser.parse_args(["model", *argv, "--database-url", dsn])
        return int(args.func(args))

    return cli


def _progress(conn: psycopg.Connection[Any], model: str) -> dict[str, Any]:
    rows = db.backfill_progress(conn, model)
    assert len(rows) == 1
    return rows[0]


def _two_models_with_a_dead_letter(
    conn: psycopg.Connection[Any], dsn: str, url: str, v2_index: str = "none"
) -> None:
    """v1 active, v2 shadow (768), 10 documents embedded by both and one of zero-width
    characters only, dead-lettered empty_document for both."""
    register(conn, "v1", url, index_method="none")
    insert_corpus(conn, 10)
    insert_docs(conn, [("zw", None, "\u200b\u200b")])
    drain(dsn)
    register(conn, "v2", url, model_id="fake-768", dimensions=768, index_method=v2_index)
    drain(dsn)


# -- 1. retention never purges the letter of a current version --------------------------------


def test_retention_keeps_the_dead_letter_of_a_current_version(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    _two_models_with_a_dead_letter(conn, dsn, fake.url)
    p = _progress(conn, "v2")
    assert (p["dead_lettered"], p["pending"]) == (1, 0)
    # An invalid queue message: its letter (doc_id NULL) is no version's and may go.
    conn.execute("SELECT pgmq.send('pgingest_v2', '\"garbage\"'::jsonb)")
    drain(dsn)
    assert conn.execute(
        "SELECT count(*) FROM pgingest.dead_letters WHERE model = 'v2'"
        " AND error_class = 'invalid_message'"
    ).fetchone() == (1,)

    conn.execute("SELECT pgingest.set_dead_letter_retention('v2', '1 second', 1)")
    time.sleep(1.2)
    assert conn.execute("SELECT pgingest.purge_dead_letters()").fetchone() == (1,)
    assert conn.execute(
        "SELECT doc_key, error_class FROM pgingest.dead_letters WHERE model = 'v2'"
    ).fetchall() == [("zw", "empty_document")]
    conn.execute("SELECT pgingest.run_maintenance()")
    p = _progress(conn, "v2")
    assert (p["dead_lettered"], p["pending"]) == (1, 0)
    # The swap is not refused for a pending document, and the letter can be requeued.
    assert db.swap_model(conn, "v2") == "v2 active, v1 standby"
    assert conn.execute("SELECT pgingest.requeue_dead_letters('v2')").fetchone() == (1,)

    # Once its document changes, the letter of the old version is not current any more: it goes.
    drain(dsn)
    conn.execute("UPDATE pgingest.documents SET body = '\u200b\u200b\u200b' WHERE key = 'zw'")
    drain(dsn)
    conn.execute("UPDATE pgingest.dead_letters SET content_hash = '\\x00' WHERE doc_key = 'zw'")
    time.sleep(1.2)
    assert conn.execute("SELECT pgingest.purge_dead_letters('v2')").fetchone() == (1,)


def test_index_wait_stops_when_only_versions_nothing_will_embed_remain(
    conn: psycopg.Connection[Any],
    dsn: str,
    fake: FakeEmbeddingServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _two_models_with_a_dead_letter(conn, dsn, fake.url, v2_index="hnsw")
    # A letter purged before the fix (or deleted by hand): the version is pending for good.
    conn.execute("DELETE FROM pgingest.dead_letters WHERE model = 'v2'")
    assert _progress(conn, "v2")["pending"] == 1
    result: list[int] = []
    t = threading.Thread(
        target=lambda: result.append(_cli(dsn)("index", "v2", "--wait", "--no-progress")),
        daemon=True,
    )
    t.start()
    t.join(timeout=60)
    assert not t.is_alive(), "pgingest model index --wait still waiting"
    assert result == [0]
    err = capsys.readouterr().err
    assert "1 documents of v2 are not embedded and nothing is queued or in work" in err
    assert db.model_index_status(conn, "v2")[0]["valid"]


# -- 5. requeue_dead_letters leaves invalid_message letters alone -----------------------------


def test_requeue_leaves_invalid_message_letters_alone_unless_named(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    register(conn, "v1", fake.url, index_method="none")
    insert_docs(conn, [("zw", None, "\u200b")])
    conn.execute("SELECT pgmq.send('pgingest_v1', '\"garbage\"'::jsonb)")
    drain(dsn)
    letters = "SELECT error_class, payload FROM pgingest.dead_letters ORDER BY error_class"
    before = conn.execute(letters).fetchall()
    assert [r[0] for r in before] == ["empty_document", "invalid_message"]
    notices: list[str] = []
    conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))

    assert conn.execute("SELECT pgingest.requeue_dead_letters()").fetchone() == (1,)
    assert conn.execute(letters).fetchall() == [before[1]]
    assert any(
        "1 dead letters of no document version (invalid_message) left alone" in n for n in notices
    )
    assert not any("deleted or has changed" in n for n in notices)
    drain(dsn)

    notices.clear()
    assert conn.execute(
        "SELECT pgingest.requeue_dead_letters(p_error_class => 'invalid_message')"
    ).fetchone() == (0,)
    assert any("1 invalid_message dead letters deleted, not requeued" in n for n in notices)
    assert [r[0] for r in conn.execute(letters).fetchall()] == ["empty_document"]


# -- 7. shared chunk rows rewritten by another model's chunker --------------------------------


def test_a_model_rewriting_shared_chunks_requeues_the_version_for_the_others(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    _rewrite_shared_chunks(conn, dsn, fake)


def test_a_model_rewriting_shared_partitioned_chunks_requeues_the_version_for_the_others(
    empty_database: Any, fake: FakeEmbeddingServer
) -> None:
    dsn = empty_database("sharedparts")
    install.install(dsn, chunk_partitions=4)
    conn = db.connect(dsn)
    try:
        _rewrite_shared_chunks(conn, dsn, fake)
    finally:
        conn.close()


def _rewrite_shared_chunks(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    register(conn, "v1", fake.url, index_method="none")
    insert_corpus(conn, 3)
    drain(dsn)
    register(conn, "v2", fake.url, model_id="fake-768", dimensions=768, index_method="none")
    drain(dsn)
    profiles = conn.execute("SELECT DISTINCT profile_id FROM pgingest.models").fetchall()
    assert len(profiles) == 1
    doc, h, text = conn.execute(
        "SELECT id, content_hash, left(body, 300) FROM pgingest.documents ORDER BY id LIMIT 1"
    ).fetchone() or (0, b"", "")
    search_rows = "SELECT count(*) FROM pgingest.search_chunks WHERE doc_id = %s"
    before = conn.execute(search_rows, (doc,)).fetchone()
    assert before is not None and before[0] > 1
    # A v2 worker whose chunker cuts this same version differently: one chunk.
    vec = "[" + ",".join(["0.036"] * 768) + "]"
    conn.execute(
        "SELECT * FROM pgingest.complete_batch_v2('v2', '{}'::bigint[], ARRAY[%s]::bigint[],"
        " ARRAY[%s]::bytea[], ARRAY[%s]::bigint[], ARRAY[0], ARRAY[%s],"
        " ARRAY[sha256(convert_to(%s, 'UTF8'))], ARRAY[10], ARRAY[0], ARRAY[300],"
        " ARRAY[%s::vector], 'chunker-next', %s)",
        (doc, h, doc, text, text, vec, profiles[0][0]),
    )
    # v1's state of that version is gone and the version is queued for v1 again.
    assert conn.execute(
        "SELECT count(*) FROM pgingest.embedding_state WHERE model = 'v1' AND doc_id = %s", (doc,)
    ).fetchone() == (0,)
    assert conn.execute(
        "SELECT count(*) FROM pgmq.q_pgingest_v1 WHERE (message ->> 'doc_id')::bigint = %s"
        " AND message ->> 'hash' = encode(%s, 'hex')",
        (doc, h),
    ).fetchone() == (1,)
    assert _progress(conn, "v1")["pending"] == 1
    drain(dsn)
    # The workers re-embed it (v1 writes its own cut back, which queues v2 again): both models
    # serve the document, and nothing is pending.
    assert conn.execute(search_rows, (doc,)).fetchone() == before
    for m in ("v1", "v2"):
        p = _progress(conn, m)
        assert (p["pending"], p["embedded"]) == (0, 3)
    assert db.swap_model(conn, "v2") == "v2 active, v1 standby"
    assert conn.execute(search_rows, (doc,)).fetchone() == before


# -- 3 and 4. a vector <-> halfvec swap: grants, owner and dependants of search_chunks --------


@pytest.fixture
def app_roles(conn: psycopg.Connection[Any]) -> Any:
    """Two roles of this test (the cluster's roles are shared): a reader and an owner."""
    names = [f"app_{uuid.uuid4().hex[:8]}" for _ in range(2)]
    for name in names:
        conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(name)))
    yield names
    for name in names:
        ident = sql.Identifier(name)
        conn.execute(sql.SQL("DROP OWNED BY {}; DROP ROLE {}").format(ident, ident))


def _halfvec_pair(conn: psycopg.Connection[Any], dsn: str, url: str) -> None:
    """v1 (vector, active) and v2 (halfvec, shadow), both complete, no index needed."""
    register(conn, "v1", url, index_method="none")
    insert_corpus(conn, 5)
    register(
        conn, "v2", url, model_id="fake-768", dimensions=768, storage="halfvec",
        index_method="none",
    )  # fmt: skip
    drain(dsn)


def _grants(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT grantee, privilege_type, is_grantable FROM information_schema.role_table_grants"
        " WHERE table_schema = 'pgingest' AND table_name = 'search_chunks' ORDER BY 1, 2"
    ).fetchall()


def _view_type(conn: psycopg.Connection[Any]) -> str:
    row = conn.execute(
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute"
        " WHERE attrelid = 'pgingest.search_chunks'::regclass AND attname = 'embedding'"
    ).fetchone()
    assert row is not None
    return str(row[0])


def test_a_storage_swap_keeps_the_grants_and_owner_of_search_chunks(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer, app_roles: list[str]
) -> None:
    _halfvec_pair(conn, dsn, fake.url)
    app_role, app_owner = app_roles
    role = sql.Identifier(app_role)
    conn.execute(sql.SQL("GRANT USAGE ON SCHEMA pgingest TO {}").format(role))
    conn.execute(sql.SQL("GRANT SELECT ON pgingest.search_chunks TO {}").format(role))
    conn.execute(
        sql.SQL("GRANT REFERENCES ON pgingest.search_chunks TO {} WITH GRANT OPTION").format(role)
    )
    before = _grants(conn)
    assert (app_role, "SELECT", "NO") in before and (app_role, "REFERENCES", "YES") in before
    assert _view_type(conn) == "vector"

    assert db.swap_model(conn, "v2") == "v2 active, v1 standby"
    assert _view_type(conn) == "halfvec"
    assert _grants(conn) == before
    # The role reads the view (its grants, not just the catalog's word).
    conn.execute(sql.SQL("SET ROLE {}").format(role))
    try:
        assert conn.execute("SELECT count(*) > 0 FROM pgingest.search_chunks").fetchone() == (True,)
    finally:
        conn.execute("RESET ROLE")

    # An owner of the DBA's choice is kept too (grants made by the owner move with it).
    conn.execute(
        sql.SQL("ALTER VIEW pgingest.search_chunks OWNER TO {}").format(sql.Identifier(app_owner))
    )
    before = _grants(conn)
    assert db.swap_model(conn, "v1") == "v1 active, v2 standby"
    assert _view_type(conn) == "vector"
    assert _grants(conn) == before
    owner = conn.execute(
        "SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = 'pgingest.search_chunks'::regclass"
    ).fetchone()
    assert owner == (app_owner,)


def test_a_storage_swap_names_the_views_that_depend_on_search_chunks(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    _halfvec_pair(conn, dsn, fake.url)
    conn.execute(
        "CREATE VIEW public.app_hits AS SELECT doc_id, content FROM pgingest.search_chunks"
    )
    states = "SELECT name, state FROM pgingest.models ORDER BY name"
    before = conn.execute(states).fetchall()
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState) as ei:
        db.swap_model(conn, "v2")
    assert "view app_hits depends on it" in str(ei.value)
    assert "Nothing was changed" in (ei.value.diag.message_detail or "")
    assert "Drop those objects" in (ei.value.diag.message_hint or "")
    assert conn.execute(states).fetchall() == before
    assert _view_type(conn) == "vector"
    # Same storage: replaced in place, the dependant kept.
    register(conn, "v3", fake.url, model_id="fake-768", dimensions=768, index_method="none")
    drain(dsn)
    assert db.swap_model(conn, "v3") == "v3 active, v1 standby"
    assert conn.execute("SELECT count(*) > 0 FROM public.app_hits").fetchone() == (True,)
    conn.execute("DROP VIEW public.app_hits")
    assert db.swap_model(conn, "v2") == "v2 active, v3 standby"


# -- 2. a paused candidate's served share ------------------------------------------------------


def test_a_paused_candidate_serves_no_share_and_says_what_was_set(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    register(conn, "v1", fake.url, index_method="none")
    register(conn, "v2", fake.url, model_id="fake-768", dimensions=768, index_method="none")
    insert_corpus(conn, 6)
    drain(dsn)
    conn.execute("SELECT pgingest.shift_traffic('v2', 0.3)")
    status = "SELECT model, share, configured_share FROM pgingest.traffic_status() ORDER BY 1"
    assert conn.execute(status).fetchall() == [
        ("v1", pytest.approx(0.7), pytest.approx(0.7)),
        ("v2", pytest.approx(0.3), pytest.approx(0.3)),
    ]
    conn.execute("SELECT pgingest.pause_model('v2', 'HTTP 401')")
    keys = [f"user-{i}" for i in range(40)]
    routed = {
        r[0]
        for r in conn.execute(
            "SELECT pgingest.route_model(k) FROM unnest(%s::text[]) AS k", (keys,)
        ).fetchall()
    }
    assert routed == {"v1"}
    assert conn.execute(status).fetchall() == [
        ("v1", 1.0, pytest.approx(0.7)),
        ("v2", 0.0, pytest.approx(0.3)),
    ]
    listed = {r["name"]: r for r in models_cli.list_models(conn)}
    assert (listed["v1"]["share"], listed["v2"]["share"]) == (1.0, 0.0)
    table = models_cli.format_models(list(listed.values()))
    assert "100.0% (70.0% set)" in table and "0.0% (30.0% set)" in table
    conn.execute("SELECT pgingest.resume_model('v2')")
    assert [r[1] for r in conn.execute(status).fetchall()] == [
        pytest.approx(0.7),
        pytest.approx(0.3),
    ]


# -- 8. the routing bucket: ASCII whitespace only, the same in Python and SQL ------------------

TRICKY_KEYS = [
    "user 42",
    "  user 42 ",
    "user\t\t42",
    "a  b\tc\r\nd\fe\vf",
    "user\u00a042",  # NBSP
    "user\u200342",  # EM SPACE
    "user\u300042",  # IDEOGRAPHIC SPACE
    "user\u200b42",  # ZERO WIDTH SPACE
    "user\u202f42",  # NARROW NBSP
    "user\u205f42",
    "user\u0085 42",  # NEL
    "user\u2028\u202942",
    "user\x1c\x1d\x1e\x1f42",  # Python's \s takes these
    "\u00a0user 42\u00a0",
    "\u3000",
    "",
    " ",
    "Ünïcödé ключ 用户",
]


def test_python_and_sql_route_every_key_to_the_same_bucket(
    conn: psycopg.Connection[Any],
) -> None:
    got = conn.execute(
        "SELECT k, pgingest._route_bucket(k) FROM unnest(%s::text[]) WITH ORDINALITY AS u (k, i)"
        " ORDER BY i",
        (TRICKY_KEYS,),
    ).fetchall()
    assert [(k, search.route_bucket(k)) for k in TRICKY_KEYS] == got
    # ASCII whitespace is collapsed and trimmed; Unicode spaces are characters of the key.
    assert search.route_bucket("  user \t 42\n") == search.route_bucket("user 42")
    assert search.route_bucket("user\u00a042") != search.route_bucket("user 42")
    assert search.route_bucket("user\x1f42") != search.route_bucket("user 42")
    # Whatever the session's collation and ctype: the function names its characters.
    for collation in ("C", "POSIX", "ucs_basic"):
        n = conn.execute(
            sql.SQL(
                "SELECT count(*) FROM unnest(%s::text[]) AS k"
                " WHERE pgingest._query_key(k COLLATE {}) IS DISTINCT FROM pgingest._query_key(k)"
            ).format(sql.Identifier(collation)),
            (TRICKY_KEYS,),
        ).fetchone()
        assert n == (0,)


# -- 6. run_backfill waits for a worker's backfill step instead of stopping -------------------


def test_run_backfill_waits_for_a_worker_step_that_holds_the_model(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    register(conn, "v1", fake.url, index_method="none")
    insert_corpus(conn, 30)
    register(conn, "v2", fake.url, model_id="fake-768", dimensions=768, index_method="none")
    assert _progress(conn, "v2")["backfill_queued_all"] is False
    # A worker's backfill step in progress: it holds the model's row.
    worker_step = psycopg.connect(dsn)
    worker_step.execute("SELECT 1 FROM pgingest.models WHERE name = 'v2' FOR NO KEY UPDATE")
    done = threading.Event()
    notices: list[str] = []
    errors: list[BaseException] = []

    def call() -> None:
        try:
            with db.connect(dsn) as c:
                c.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
                db.run_backfill(c, "v2", 10)
        except BaseException as exc:  # reported by the assertions below
            errors.append(exc)
        finally:
            done.set()

    t = threading.Thread(target=call, daemon=True)
    t.start()
    try:
        assert not done.wait(1.5), "run_backfill returned while the backfill was not queued"
        assert any("is being stepped by a worker" in n for n in notices)
    finally:
        worker_step.rollback()
        worker_step.close()
    assert done.wait(30) and not errors
    p = _progress(conn, "v2")
    assert p["backfill_queued_all"] is True
    assert p["backfill_queued"] == 30
