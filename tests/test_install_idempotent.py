"""A second install changes nothing (README: "run it again and it changes nothing"), also after
the routines that create objects at run time: register_model (a model's store, partitioned like
the chunks), register_filter (the source_documents view). Review of 2026-12-07, finding 8: the
install granted admins SELECT on store partitions register_model had not, and revoked the grant
register_filter gives on source_documents."""

from __future__ import annotations

from typing import Any

import psycopg

from pgingest import db, install


def acls(conn: psycopg.Connection[Any]) -> dict[str, list[str]]:
    """Every relation of schema pgingest and pgmq with its ACL (sorted items)."""
    rows = conn.execute(
        "SELECT n.nspname || '.' || c.relname, coalesce(c.relacl::text[], '{}')"
        " FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace"
        " WHERE n.nspname IN ('pgingest', 'pgmq') AND c.relkind IN ('r', 'p', 'v', 'm', 'S')"
        " ORDER BY 1"
    ).fetchall()
    return {name: sorted(acl) for name, acl in rows}


def test_a_second_install_changes_no_privilege_after_register_model_and_register_filter(
    empty_database: Any,
) -> None:
    dsn = empty_database("idempotent")
    install.install(dsn, chunk_partitions=4)
    conn = db.connect(dsn)
    try:
        conn.execute(
            "SELECT pgingest.register_model('v1', 'fake-384', 384, 'http://127.0.0.1:9/v1')"
        )
        conn.execute("SELECT pgingest.register_filter('lang', 'text')")
        parts = conn.execute(
            "SELECT c.relname, has_table_privilege('pgingest_admin', c.oid, 'SELECT')"
            " FROM pg_class AS c WHERE c.relname LIKE 'store\\_v1\\_p%' AND c.relkind = 'r' ORDER BY 1"
        ).fetchall()
        assert [p for p, _ in parts] == [f"store_v1_p{i}" for i in range(4)]
        assert all(ok for _, ok in parts), parts
        before = acls(conn)
        install.install(dsn, chunk_partitions=4)
        after = acls(conn)
    finally:
        conn.close()
    changed = {
        k: (before.get(k), after.get(k))
        for k in before.keys() | after.keys()
        if before.get(k) != after.get(k)
    }
    assert changed == {}
