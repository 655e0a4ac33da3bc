"""Gradual traffic shifting (issue 20, item 2): pgingest.shift_traffic serves a share of the text
searches from a candidate model, routed by a stable hash of a routing key; share 0 rolls back at
once, swap_model completes the move, and every search says which model served it."""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
import pytest

from pgingest import db, models_cli
from pgingest import status as status_cli
from pgingest.search import route_bucket
from pgingest.testing.fake_provider import FakeEmbeddingServer
from tests.helpers import drain, insert_corpus, register

KEYS = [f"user-{i}" for i in range(40)]


def one(conn: psycopg.Connection[Any], query: str, params: Any = None) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def served(conn: psycopg.Connection[Any], key: str, query: str = "vectors and stores") -> str:
    """The one model that served a search_text with this routing key."""
    models = {
        r[0]
        for r in conn.execute(
            "SELECT model_name FROM pgingest.search_text(%s, 3, routing_key => %s)", (query, key)
        )
    }
    assert len(models) == 1, models
    return models.pop()


def two_models(conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer) -> None:
    register(conn, "v1", fake.url, index_method="none")
    register(conn, "v2", fake.url, model_id="fake-768", dimensions=768, index_method="none")
    insert_corpus(conn, 6)
    drain(dsn)


def test_shares_route_a_fixed_set_of_keys_the_same_way_every_time(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    two_models(conn, dsn, fake)
    assert {served(conn, k) for k in KEYS[:5]} == {"v1"}  # no shift: the active model

    assert "v2 serves 10" in one(conn, "SELECT pgingest.shift_traffic('v2', 0.1)")
    expected = {k: ("v2" if route_bucket(k) < 0.1 else "v1") for k in KEYS}
    assert "v2" in expected.values() and "v1" in expected.values()
    for _ in range(2):
        assert {k: served(conn, k) for k in KEYS} == expected
    assert {k: one(conn, "SELECT pgingest.route_model(%s)", (k,)) for k in KEYS} == expected
    # Without a routing key, the query text routes: the same question, the same model.
    q = "how are documents chunked"
    by_text = "v2" if route_bucket(q) < 0.1 else "v1"
    for _ in range(3):
        assert {
            r[0] for r in conn.execute("SELECT model_name FROM pgingest.search_text(%s, 2)", (q,))
        } == {by_text}
    # Hybrid search routes the same way and names its model.
    conn.execute("SELECT pgingest.set_text_search_config('english')")
    for k in KEYS[:10]:
        rows = conn.execute(
            "SELECT DISTINCT model_name FROM pgingest.hybrid_search_text('documents', 3, routing_key => %s)",
            (k,),
        ).fetchall()
        assert rows == [(expected[k],)]

    # A growing share keeps the keys the candidate had.
    conn.execute("SELECT pgingest.shift_traffic('v2', 0.5)")
    half = {k: served(conn, k) for k in KEYS}
    assert all(half[k] == "v2" for k in KEYS if expected[k] == "v2")
    assert half == {k: ("v2" if route_bucket(k) < 0.5 else "v1") for k in KEYS}

    conn.execute("SELECT pgingest.shift_traffic('v2', 1)")
    assert {served(conn, k) for k in KEYS} == {"v2"}

    # Rollback: the very next search is served by the active model.
    assert one(conn, "SELECT pgingest.shift_traffic('v2', 0)") == "v2 serves 0% of searches"
    assert {served(conn, k) for k in KEYS} == {"v1"}
    assert one(conn, "SELECT count(*) FROM pgingest.traffic_shift") == 0


def test_the_log_and_the_status_say_which_model_served(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    two_models(conn, dsn, fake)
    conn.execute("SELECT pgingest.set_query_log(1)")
    conn.execute("SELECT pgingest.shift_traffic('v2', 0.3)")
    got = {k: served(conn, k) for k in KEYS}
    logged = conn.execute(
        "SELECT model, count(*) FROM pgingest.query_log GROUP BY 1 ORDER BY 1"
    ).fetchall()
    assert dict(logged) == {m: sum(1 for v in got.values() if v == m) for m in ("v1", "v2")}
    status = {
        r[0]: r[1:]
        for r in conn.execute(
            "SELECT model, state, share, logged_searches, est_searches, p50_ms, p95_ms"
            " FROM pgingest.traffic_status()"
        )
    }
    assert status["v1"][:2] == ("active", pytest.approx(0.7))
    assert status["v2"][:2] == ("shadow", pytest.approx(0.3))
    assert status["v2"][2] == dict(logged)["v2"] == status["v2"][3]
    assert status["v2"][4] > 0 and status["v2"][5] >= status["v2"][4]
    # pgingest model list and pgingest status show the same.
    listed = {r["name"]: r for r in models_cli.list_models(conn)}
    assert listed["v2"]["share"] == pytest.approx(0.3)
    assert listed["v2"]["searches_15min"] == dict(logged)["v2"]
    table = models_cli.format_models(list(listed.values()))
    assert "30.0%" in table and "70.0%" in table
    report = status_cli.collect(conn)
    assert report.traffic is not None and report.query_log is not None
    assert report.query_log["logged_rows"] == len(KEYS)
    text = status_cli.render_text(report)
    assert "TRAFFIC" in text and "30.0%" in text and "query log: 1 of searches" in text


def test_refusals_force_and_the_ends_of_a_shift(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    two_models(conn, dsn, fake)
    register(conn, "v3", fake.url, index_method="none")  # registered, nothing embedded yet
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState) as ei:
        conn.execute("SELECT pgingest.shift_traffic('v3', 0.1)")
    assert "cannot shift traffic to model v3" in (ei.value.diag.message_primary or "")
    assert "force => true" in (ei.value.diag.message_hint or "")
    for bad in ("-0.1", "1.5", "'NaN'", "NULL"):
        with pytest.raises(psycopg.errors.InvalidParameterValue):
            conn.execute(f"SELECT pgingest.shift_traffic('v2', {bad})")
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState):
        conn.execute("SELECT pgingest.shift_traffic('v1', 0.1)")  # the active model
    with pytest.raises(psycopg.errors.UndefinedObject):
        conn.execute("SELECT pgingest.shift_traffic('nope', 0.1)")

    conn.execute("SELECT pgingest.shift_traffic('v3', 0.2, force => true)")
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState) as ei:
        conn.execute("SELECT pgingest.shift_traffic('v2', 0.1)")  # one candidate at a time
    assert "shift_traffic('v3', 0)" in (ei.value.diag.message_hint or "")
    # Retiring the candidate ends its shift.
    conn.execute("SELECT pgingest.retire_model('v3')")
    assert one(conn, "SELECT count(*) FROM pgingest.traffic_shift") == 0

    # A paused candidate serves nothing (its endpoint fails): its keys go to the active model.
    conn.execute("SELECT pgingest.shift_traffic('v2', 1)")
    conn.execute("SELECT pgingest.pause_model('v2', 'endpoint down')")
    assert {served(conn, k) for k in KEYS[:5]} == {"v1"}
    conn.execute("SELECT pgingest.resume_model('v2')")
    assert {served(conn, k) for k in KEYS[:5]} == {"v2"}

    # swap_model completes the move and ends the shift.
    conn.execute("SELECT pgingest.shift_traffic('v2', 0.5)")
    assert db.swap_model(conn, "v2") == "v2 active, v1 standby"
    assert one(conn, "SELECT count(*) FROM pgingest.traffic_shift") == 0
    assert {served(conn, k) for k in KEYS} == {"v2"}


def test_shifting_during_another_backfill_and_swapping_with_searches_running(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    """Searches run throughout a shift 0.1 -> 0.5 -> 1 -> swap, while a third model backfills:
    none fails, and each is served by the model its key was routed to (read in the same
    snapshot: a REPEATABLE READ transaction)."""
    register(conn, "v1", fake.url, index_method="none")
    register(conn, "v2", fake.url, model_id="fake-768", dimensions=768, index_method="none")
    insert_corpus(conn, 30)
    drain(dsn)
    # The third model's endpoint is slow: its backfill runs all along.
    slow = FakeEmbeddingServer(latency_ms=250).start()
    register(conn, "v3", slow.url, index_method="none")
    stop = threading.Event()
    failures: list[str] = []
    counts: dict[str, int] = {"v1": 0, "v2": 0}

    def search_loop(offset: int) -> None:
        with db.connect(dsn) as c:
            c.autocommit = False
            c.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            i = offset
            while not stop.is_set():
                key = KEYS[i % len(KEYS)]
                i += 1
                try:
                    routed = one(c, "SELECT pgingest.route_model(%s)", (key,))
                    got = {
                        r[0]
                        for r in c.execute(
                            "SELECT model_name FROM pgingest.search_text('stores', 2, routing_key => %s)",
                            (key,),
                        )
                    }
                    c.commit()
                except psycopg.Error as exc:
                    failures.append(f"{key}: {exc}")
                    c.rollback()
                    continue
                if got != {routed}:
                    failures.append(f"{key}: routed to {routed}, served by {got}")
                counts[routed] += 1

    backfill = threading.Thread(target=drain, args=(dsn,))
    searchers = [threading.Thread(target=search_loop, args=(n * 7,)) for n in range(2)]
    backfill.start()
    for t in searchers:
        t.start()
    try:
        assert one(conn, "SELECT pending FROM pgingest.backfill_progress WHERE model = 'v3'") > 0
        for share in (0.1, 0.5, 1.0):
            conn.execute("SELECT pgingest.shift_traffic('v2', %s)", (share,))
            time.sleep(0.7)
        assert db.swap_model(conn, "v2") == "v2 active, v1 standby"
        time.sleep(0.7)
    finally:
        stop.set()
        for t in searchers:
            t.join(30)
        backfill.join(120)
        slow.stop()
    assert failures == []
    assert counts["v1"] > 0 and counts["v2"] > 0
    assert one(conn, "SELECT pending FROM pgingest.backfill_progress WHERE model = 'v3'") == 0
