"""The query log (issue 20, item 1): opt-in, sampled, bounded by age and rows, hashed text unless
text logging is on, readable by admins only, never a reason for a search to fail; and the replay
of the logged queries through two models (item 3)."""

from __future__ import annotations

import argparse
import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from psycopg import sql

from pgingest import db, models_cli
from pgingest.testing.fake_provider import FakeEmbeddingServer
from tests.helpers import drain, insert_corpus, register


@contextmanager
def as_role(dsn: str, role: str) -> Iterator[psycopg.Connection[Any]]:
    c = db.connect(dsn)
    try:
        c.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
        yield c
    finally:
        c.close()


def one(conn: psycopg.Connection[Any], query: str, params: Any = None) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def logged(conn: psycopg.Connection[Any]) -> int:
    return int(one(conn, "SELECT count(*) FROM pgingest.query_log"))


def corpus(conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer, n: int = 6) -> None:
    register(conn, "v1", fake.url, index_method="none")
    insert_corpus(conn, n)
    drain(dsn)


def test_off_by_default_and_on_logs_hashed_text(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    corpus(conn, dsn, fake)
    settings = dict(
        conn.execute("SELECT key, value FROM pgingest.config WHERE key LIKE 'query_log%'")
    )
    assert settings == {
        "query_log_sample_rate": "0",
        "query_log_text": "off",
        "query_log_keep": "7 days",
        "query_log_max_rows": "100000",
    }
    conn.execute("SELECT * FROM pgingest.search_text('vectors and stores', 3)").fetchall()
    assert logged(conn) == 0

    assert "query log on" in one(conn, "SELECT pgingest.set_query_log(1)")
    hits = conn.execute(
        "SELECT doc_id, doc_key, model_name FROM pgingest.search_text("
        "'  vectors   and stores ', 3, filter => '{\"lang\": \"en\"}'::jsonb)"
    ).fetchall()
    rows = conn.execute(
        "SELECT kind, model, k, latency_ms, filter_keys, filter, query_hash, query_text, doc_ids, doc_keys"
        " FROM pgingest.query_log"
    ).fetchall()
    assert len(rows) == 1
    kind, model, k, latency, filter_keys, filter_, qhash, qtext, doc_ids, doc_keys = rows[0]
    assert (kind, model, k) == ("search_text", "v1", 3)
    assert latency > 0
    assert filter_keys == ["lang"] and filter_ is None  # the filter's values only with text on
    assert qtext is None
    assert qhash == hashlib.md5(b"vectors and stores").hexdigest()
    assert doc_ids == [h[0] for h in hits] and doc_keys == [h[1] for h in hits]

    # Text logging, explicitly on: the text and the filter are kept.
    conn.execute("SELECT pgingest.set_query_log(1, log_text => true)")
    conn.execute("SELECT * FROM pgingest.search_text('what is a store', 2)").fetchall()
    vec = one(conn, "SELECT pgingest.embed_query('what is a store')::text")
    conn.execute("SELECT * FROM pgingest.search(%s::vector, 4)", (vec,)).fetchall()
    rows = conn.execute(
        "SELECT kind, query_text, k, cardinality(doc_ids) FROM pgingest.query_log ORDER BY id OFFSET 1"
    ).fetchall()
    assert rows == [("search_text", "what is a store", 2, 2), ("search", None, 4, 4)]

    # Hybrid search: one row (its vector side is not logged again), with the model that served.
    conn.execute("SELECT pgingest.set_text_search_config('english')")
    hybrid = conn.execute(
        "SELECT doc_id, model_name FROM pgingest.hybrid_search_text('stores', 3)"
    ).fetchall()
    row = conn.execute(
        "SELECT kind, model, query_text, doc_ids FROM pgingest.query_log ORDER BY id DESC LIMIT 1"
    ).fetchone()
    assert row == ("hybrid_search", "v1", "stores", [h[0] for h in hybrid])
    assert {h[1] for h in hybrid} == {"v1"}
    assert logged(conn) == 4

    # Off again: nothing more.
    conn.execute("SELECT pgingest.set_query_log(0)")
    conn.execute("SELECT * FROM pgingest.search_text('vectors and stores', 3)").fetchall()
    assert logged(conn) == 4


def test_the_sample_rate_is_honoured(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    corpus(conn, dsn, fake, 3)
    vec = one(conn, "SELECT pgingest.embed_query('sampled')::text")
    conn.execute("SELECT pgingest.set_query_log(0.25)")
    for _ in range(200):  # one statement each: the sample is drawn once per statement
        conn.execute("SELECT count(*) FROM pgingest.search(%s::vector, 2)", (vec,))
    n = logged(conn)
    assert 26 <= n <= 74, n  # 50 expected; 4 standard deviations (6.1) either side
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        conn.execute("SELECT pgingest.set_query_log(1.5)")


def test_retention_by_age_and_rows_through_run_maintenance(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    corpus(conn, dsn, fake, 3)
    conn.execute("SELECT pgingest.set_query_log(1, keep => '1 hour', max_rows => 5)")
    conn.execute(
        "INSERT INTO pgingest.query_log (logged_at, kind, model, latency_ms, k)"
        " SELECT now() - interval '2 hours', 'search', 'v1', 1, 10 FROM generate_series(1, 4)"
    )
    for i in range(8):
        conn.execute("SELECT * FROM pgingest.search_text(%s, 2)", (f"question {i}",)).fetchall()
    assert logged(conn) == 12
    result = db.run_maintenance(conn)
    assert result["purged_query_log"] == 4 + 3
    assert logged(conn) == 5
    kept = conn.execute("SELECT query_hash FROM pgingest.query_log ORDER BY id").fetchall()
    assert [k[0] for k in kept] == [
        hashlib.md5(f"question {i}".encode()).hexdigest() for i in range(3, 8)
    ]


def test_readers_search_but_cannot_read_the_log(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    corpus(conn, dsn, fake, 3)
    conn.execute("SELECT pgingest.set_query_log(1, log_text => true)")
    with as_role(dsn, "pgingest_reader") as r:
        assert (
            len(r.execute("SELECT * FROM pgingest.search_text('secret question', 2)").fetchall())
            == 2
        )
        for query in (
            "SELECT * FROM pgingest.query_log",
            "SELECT * FROM pgingest.replay_query_log('v1', 'v1')",
            "SELECT pgingest.set_query_log(0)",
            "SELECT * FROM pgingest.traffic_status()",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                r.execute(query)
    with as_role(dsn, "pgingest_monitor") as m:
        assert (
            one(m, "SELECT logged_searches FROM pgingest.traffic_status() WHERE model = 'v1'") == 1
        )
        assert one(m, "SELECT logged_rows FROM pgingest.query_log_status()") == 1
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            m.execute("SELECT query_text FROM pgingest.query_log")
    with as_role(dsn, "pgingest_admin") as a:
        assert one(a, "SELECT query_text FROM pgingest.query_log") == "secret question"
        # Admins (not superusers) replay it and set it.
        assert one(a, "SELECT count(*) FROM pgingest.compare_models_on_log('v1', 'v1', 2)") == 2
        assert one(a, "SELECT overlap FROM pgingest.replay_query_log('v1', 'v1', 2)") == 1
        assert "query log off" in one(a, "SELECT pgingest.set_query_log(0)")
        assert one(a, "SELECT pgingest.purge_query_log()") == 0


def test_the_log_never_fails_a_search(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    corpus(conn, dsn, fake, 3)
    conn.execute("SELECT pgingest.set_query_log(1)")
    # Every insert into the log fails: the searches go on, unlogged.
    conn.execute("ALTER TABLE pgingest.query_log ADD CONSTRAINT broken CHECK (k < 0) NOT VALID")
    assert len(conn.execute("SELECT * FROM pgingest.search_text('still works', 2)").fetchall()) == 2
    assert logged(conn) == 0
    conn.execute("ALTER TABLE pgingest.query_log DROP CONSTRAINT broken")
    # A read-only transaction (what a read replica allows): searched, not logged.
    with db.connect(dsn) as ro:
        ro.execute("SET default_transaction_read_only = on")
        assert len(ro.execute("SELECT * FROM pgingest.search_text('read only', 2)").fetchall()) == 2
    assert logged(conn) == 0
    # A hand-edited rate that is not a number turns the log off; it does not fail searches.
    conn.execute("UPDATE pgingest.config SET value = 'lots' WHERE key = 'query_log_sample_rate'")
    assert len(conn.execute("SELECT * FROM pgingest.search_text('odd rate', 2)").fetchall()) == 2
    assert logged(conn) == 0
    conn.execute("SELECT pgingest.set_query_log(1)")
    conn.execute("SELECT * FROM pgingest.search_text('logged again', 2)").fetchall()
    assert logged(conn) == 1


def test_replaying_the_log_compares_two_models(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    register(conn, "v1", fake.url, index_method="none")
    register(conn, "v2", fake.url, model_id="fake-768", dimensions=768, index_method="none")
    insert_corpus(conn, 8)
    drain(dsn)
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState):
        conn.execute("SELECT * FROM pgingest.compare_models_on_log('v1', 'v2')")
    conn.execute("SELECT pgingest.set_query_log(1, log_text => true)")
    questions = ["vectors and stores", "how are documents chunked", "what is a model", "search"]
    for q in [*questions, questions[0], questions[0]]:
        conn.execute("SELECT * FROM pgingest.search_text(%s, 3)", (q,)).fetchall()
    before = logged(conn)
    replay = conn.execute(
        "SELECT query, asked, overlap, recall, a_ms, b_ms, a_doc_keys, b_doc_keys"
        " FROM pgingest.replay_query_log('v1', 'v2', 3) ORDER BY overlap, query"
    ).fetchall()
    assert {r[0] for r in replay} == set(questions)
    assert {r[0]: r[1] for r in replay}["vectors and stores"] == 3
    for _q, _n, overlap, recall, a_ms, b_ms, a_keys, b_keys in replay:
        assert 0 <= overlap <= 1 and 0 <= recall <= 1
        assert a_ms > 0 and b_ms > 0
        assert len(a_keys) == len(b_keys) == 3
        assert float(recall) == round(len(set(a_keys) & set(b_keys)) / 3, 3)
    with pytest.raises(psycopg.errors.UndefinedObject):
        conn.execute("SELECT * FROM pgingest.replay_query_log('v1', 'nope')")
    # The same model on both sides agrees with itself.
    same = conn.execute(
        "SELECT DISTINCT overlap, recall FROM pgingest.replay_query_log('v1', 'v1', 3)"
    ).fetchall()
    assert same == [(1, 1)]
    rows = conn.execute(
        "SELECT model, queries, top_k, overlap, recall, p50_ms, p95_ms"
        " FROM pgingest.compare_models_on_log('v1', 'v2', 3)"
    ).fetchall()
    assert [r[0] for r in rows] == ["v1", "v2"]
    assert all(r[1] == 4 and r[2] == 3 for r in rows)
    assert rows[0][4] is None and rows[1][4] is not None
    assert rows[0][3] == rows[1][3]
    assert all(r[5] > 0 and r[6] >= r[5] for r in rows)
    assert logged(conn) == before  # the replays are not logged
    # An admin who is not a superuser runs both comparisons.
    with as_role(dsn, "pgingest_admin") as a:
        assert one(a, "SELECT count(*) FROM pgingest.compare_models_on_log('v1', 'v2', 3)") == 2
        assert one(a, "SELECT count(*) FROM pgingest.compare_models('v1', 'v2', 3, 5)") == 2


def test_model_compare_from_log(
    conn: psycopg.Connection[Any],
    dsn: str,
    fake: FakeEmbeddingServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    parser = argparse.ArgumentParser(prog="pgingest")
    models_cli.add_model_commands(parser.add_subparsers(dest="command"))

    def cli(*argv: str) -> int:
        args = parser.parse_args(["model", *argv, "--database-url", dsn])
        return int(args.func(args))

    register(conn, "v1", fake.url, index_method="none")
    register(conn, "v2", fake.url, model_id="fake-768", dimensions=768, index_method="none")
    insert_corpus(conn, 8)
    drain(dsn)
    assert cli("compare", "v1", "v2", "--from-log") == models_cli.EXIT_INVALID
    assert "query log holds no query text" in capsys.readouterr().err

    conn.execute("SELECT pgingest.set_query_log(1, log_text => true)")
    asked = ["vectors and stores", "what is a model", "search", "vectors and stores"]
    for q in asked:
        conn.execute("SELECT * FROM pgingest.search_text(%s, 3)", (q,)).fetchall()
    assert cli("compare", "v1", "v2", "--from-log", "--k", "3", "--json") == 0
    data = json.loads(capsys.readouterr().out)
    assert data["queries"] == 3 and "query log" in data["source"]
    assert 0 <= data["b_recall_of_a"] <= 1
    for d in data["disagreements"]:
        assert d["query"] in asked and d["overlap"] < 1
        assert len(d["a_doc_ids"]) == len(d["b_doc_ids"]) == 3
    overlaps = [d["overlap"] for d in data["disagreements"]]
    assert overlaps == sorted(overlaps)
    assert cli("compare", "v1", "v2", "--from-log", "--k", "3") == 0
    text = capsys.readouterr().out
    assert "from the query log" in text and "finds" in text
    # The most asked first: a sample of one is the repeated question.
    report = models_cli.compare_models(dsn, "v1", "v2", k=3, sample=1, from_log=True)
    assert report.queries == 1
    assert report.disagreements == [] or report.disagreements[0].query == "vectors and stores"


def test_the_log_says_where_each_query_vector_came_from(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    """A text search's row names the source of its query vector: the endpoint the first time,
    this session's cache the second, the shared table for another session; a vector search
    none. traffic_status() gives the cached share."""
    corpus(conn, dsn, fake, 3)
    conn.execute("SELECT pgingest.set_query_log(1)")
    q = "where did my vector come from"
    conn.execute("SELECT * FROM pgingest.search_text(%s, 2)", (q,)).fetchall()
    conn.execute("SELECT * FROM pgingest.search_text(%s, 2)", (q,)).fetchall()
    with psycopg.connect(dsn, autocommit=True) as other:
        other.execute("SELECT * FROM pgingest.search_text(%s, 2)", (q,)).fetchall()
    vec = one(conn, "SELECT pgingest.embed_query('another question')::text")
    conn.execute("SELECT count(*) FROM pgingest.search(%s::vector, 2)", (vec,))
    rows = conn.execute("SELECT kind, query_vector FROM pgingest.query_log ORDER BY id").fetchall()
    assert rows == [
        ("search_text", "endpoint"),
        ("search_text", "session"),
        ("search_text", "shared"),
        ("search", None),
    ]
    share = one(conn, "SELECT cached_share FROM pgingest.traffic_status() WHERE model = 'v1'")
    assert share == pytest.approx(2 / 3)
