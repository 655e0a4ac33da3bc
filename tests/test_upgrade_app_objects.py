"""An upgrade that replaces a routine's signature never drops the application's objects that
call the old one (review 2026-12-07, install finding 1: sql/045_search.sql dropped the old
signatures of search() and hybrid_search() with CASCADE, and with them every view and BEGIN
ATOMIC function of the application calling them, without a word). The install refuses, names
them, and changes nothing; pgingest's own dependants (search_text, re-created after sql/) go."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from pgingest import db, install

OLD_SEARCH = "pgingest.search(vector, integer, jsonb, boolean, text)"
STUB = (
    "CREATE FUNCTION pgingest.search(query_vector vector, k integer, filter jsonb,"
    " per_document boolean, model text)"
    " RETURNS TABLE (doc_key text, distance double precision)"
    " LANGUAGE sql STABLE BEGIN ATOMIC SELECT 'x'::text, 0::double precision; END"
)


def _as_an_older_release(conn: psycopg.Connection[Any]) -> None:
    """The old signature of search(), as an older release had it, alone while the caller creates
    its objects (beside today's, a call would be ambiguous), then today's back beside it."""
    row = conn.execute(
        "SELECT oid::regprocedure::text FROM pg_proc"
        " WHERE proname = 'search' AND pronamespace = 'pgingest'::regnamespace"
    ).fetchone()
    assert row is not None
    conn.execute(f"ALTER FUNCTION {row[0]} RENAME TO search_today")
    conn.execute(STUB)


def _today_back(conn: psycopg.Connection[Any]) -> None:
    row = conn.execute(
        "SELECT oid::regprocedure::text FROM pg_proc"
        " WHERE proname = 'search_today' AND pronamespace = 'pgingest'::regnamespace"
    ).fetchone()
    assert row is not None
    conn.execute(f"ALTER FUNCTION {row[0]} RENAME TO search")


def test_an_application_view_on_an_old_signature_stops_the_upgrade_and_survives_it(
    empty_database: Any,
) -> None:
    dsn = empty_database("appobjects")
    install.install(dsn)
    with db.connect(dsn) as conn:
        _as_an_older_release(conn)
        conn.execute("CREATE SCHEMA app")
        conn.execute(
            "CREATE VIEW app.hits AS SELECT s.doc_key FROM"
            " pgingest.search(NULL::vector, 5, '{}'::jsonb, false, NULL::text) AS s"
        )
        conn.execute(
            "CREATE FUNCTION app.related() RETURNS SETOF text LANGUAGE sql STABLE BEGIN ATOMIC"
            " SELECT s.doc_key FROM pgingest.search(NULL::vector, 5, '{}'::jsonb, false,"
            " NULL::text) AS s; END"
        )
        _today_back(conn)
    with pytest.raises(psycopg.errors.DependentObjectsStillExist) as caught:
        install.install(dsn)
    message = str(caught.value)
    assert "app.hits" in message and "app.related()" in message, message
    assert "pgingest.search(" in message
    with db.connect(dsn) as conn:
        kept = conn.execute(
            "SELECT to_regclass('app.hits') IS NOT NULL,"
            " to_regprocedure('app.related()') IS NOT NULL, to_regprocedure(%s) IS NOT NULL",
            (OLD_SEARCH,),
        ).fetchone()
        assert kept == (True, True, True)
        # Once the application's objects are out of the way, the upgrade goes through.
        conn.execute("DROP VIEW app.hits")
        conn.execute("DROP FUNCTION app.related()")
    install.install(dsn)
    with db.connect(dsn) as conn:
        row = conn.execute("SELECT to_regprocedure(%s) IS NULL", (OLD_SEARCH,)).fetchone()
        assert row == (True,)


def test_pgingest_s_own_dependants_of_an_old_signature_go_with_it(empty_database: Any) -> None:
    dsn = empty_database("ownobjects")
    install.install(dsn)
    with db.connect(dsn) as conn:
        _as_an_older_release(conn)
        conn.execute(
            "CREATE FUNCTION pgingest.old_wrapper() RETURNS SETOF text LANGUAGE sql STABLE"
            " BEGIN ATOMIC SELECT s.doc_key FROM pgingest.search(NULL::vector, 5, '{}'::jsonb,"
            " false, NULL::text) AS s; END"
        )
        _today_back(conn)
    install.install(dsn)
    with db.connect(dsn) as conn:
        row = conn.execute(
            "SELECT to_regprocedure(%s) IS NULL, to_regprocedure('pgingest.old_wrapper()') IS NULL",
            (OLD_SEARCH,),
        ).fetchone()
        assert row == (True, True)
