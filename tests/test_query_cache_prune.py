"""Maintenance's bound of the shared query cache takes from the roles holding the most rows, as
the store does (review 2026-12-07, search finding 2, left by its fix): trimming to the newest
query_cache_max_rows of all roles together let one role's burst of questions evict every other
role's cached vectors at the next run_maintenance()."""

from __future__ import annotations

from typing import Any

import psycopg

from tests.helpers import register


def _fill(conn: psycopg.Connection[Any], role: str, n: int, minutes_ago: int) -> None:
    conn.execute(
        "INSERT INTO pgingest.query_cache (role_id, cache_key, model, embedding, created_at)"
        " SELECT %s::regrole::oid, sha256(convert_to(%s || g::text, 'UTF8')), 'v1',"
        " array_fill(0.5, ARRAY[384])::vector,"
        " now() - make_interval(mins => %s) + make_interval(secs => g)"
        " FROM generate_series(1, %s) AS g",
        (role, role, minutes_ago, n),
    )


def _counts(conn: psycopg.Connection[Any]) -> dict[str, int]:
    return {
        str(r): int(n)
        for r, n in conn.execute(
            "SELECT role_id::regrole::text, count(*) FROM pgingest.query_cache GROUP BY 1"
        ).fetchall()
    }


def test_maintenance_trims_the_roles_holding_the_most_rows(
    conn: psycopg.Connection[Any], fake: Any
) -> None:
    register(conn, "v1", fake.url)
    # pgingest_reader stands for the application's login here: a role with its own rows
    _fill(conn, "pgingest_reader", 5, 60)  # an hour ago: older than every row of the flood
    me = str(conn.execute("SELECT current_user::text").fetchone()[0])  # type: ignore[index]
    _fill(conn, me, 40, 1)  # a burst of another role's questions
    conn.execute("UPDATE pgingest.config SET value = '20' WHERE key = 'query_cache_max_rows'")
    pruned = conn.execute("SELECT pgingest.run_maintenance() ->> 'pruned_cache_rows'").fetchone()
    assert pruned is not None and int(pruned[0]) == 25
    assert _counts(conn) == {"pgingest_reader": 5, me: 15}
    # the flooding role kept its newest rows
    newest = conn.execute(
        "SELECT min(created_at) > now() - interval '1 minute' + interval '25 seconds'"
        " FROM pgingest.query_cache WHERE role_id = %s::regrole",
        (me,),
    ).fetchone()
    assert newest == (True,)
    # Off: every row goes.
    conn.execute("UPDATE pgingest.config SET value = '0' WHERE key = 'query_cache_max_rows'")
    conn.execute("SELECT pgingest.run_maintenance()")
    assert _counts(conn) == {}
