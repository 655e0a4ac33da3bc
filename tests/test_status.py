"""Status views, heartbeats and `pgingest status` against the real database and the fake provider.

The views' figures are checked against the tables after a run with planted dead letters; the
health check's exit codes against a paused model (the provider answers 401), a stale worker and
dead letters; and the API key against every log line, table column and dead letter.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import logging
import uuid
from collections import Counter
from contextlib import redirect_stderr, redirect_stdout
from typing import Any

import psycopg
import pytest
from psycopg import sql

from pgingest import db, status, worker
from pgingest.logs import JsonFormatter
from pgingest.testing.fake_provider import FakeEmbeddingServer
from pgingest.worker import heartbeat
from tests.helpers import insert_docs, queue_count, register, wait_for

BAD = {
    "bad-nan": "__NAN__",
    "bad-dim": "__DIM__",
    "bad-zero": "__ZERO__",
    "bad-reject": "__REJECT__",
}


def run_worker(dsn: str, **kw: Any) -> worker.Worker:
    base: dict[str, Any] = {
        "conninfo": dsn,
        "drain": True,
        "install_signal_handlers": False,
        "poll_interval": 0.1,
        "probe_interval": 0.2,
        "visibility_timeout": 30,
        "max_retry_after": 2.0,
    }
    base.update(kw)
    w = worker.Worker(worker.WorkerSettings(**base))
    w.run()
    return w


def status_cli(dsn: str, *args: str) -> tuple[int, str, str]:
    """Runs `pgingest status` through the parser the CLI uses; returns (code, stdout, stderr)."""
    parser = argparse.ArgumentParser(prog="pgingest")
    status.add_status_command(parser.add_subparsers(dest="command", required=True))
    ns = parser.parse_args(["status", "--database-url", dsn, *args])
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = ns.func(ns)
    return code, out.getvalue(), err.getvalue()


def one(conn: psycopg.Connection[Any], query: str, *params: Any) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def by_model(conn: psycopg.Connection[Any]) -> dict[str, dict[str, Any]]:
    return {r["model"]: r for r in db.status_view(conn, "model_status")}


# --------------------------------------------------------------------------------------------
# Views against the tables
# --------------------------------------------------------------------------------------------


def test_model_status_and_dead_letter_summary_match_the_tables(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    # Ten documents exist before the model (its backfill), five more come after (dual write).
    Doc = tuple[str, str | None, str]
    before: list[Doc] = [
        (f"doc-{i}", f"Title {i}", f"Body of document {i}. " * 20) for i in range(8)
    ]
    before += [
        ("bad-nan", None, "This one has a __NAN__ in it."),
        ("bad-dim", None, "A __DIM__ one."),
    ]
    insert_docs(conn, before)
    assert register(conn, "v1", fake.url) == "active"
    after: list[Doc] = [(f"doc-{i}", None, f"Later document {i}.") for i in range(8, 11)]
    after += [
        ("bad-zero", None, "All __ZERO__ here."),
        ("bad-reject", None, "Please __REJECT__ me."),
    ]
    insert_docs(conn, after)

    s = by_model(conn)["v1"]
    assert (s["documents"], s["embedded"], s["pending"], s["dead_lettered"]) == (15, 0, 15, 0)
    assert s["queue_length"] == 5 == queue_count(conn, "v1")  # the backfill is not queued yet
    assert s["backfill_state"] == "queueing"
    assert (s["backfill_documents"], s["backfill_pending"]) == (10, 10)
    assert s["coverage_pct"] == 0
    assert s["freshness_lag_seconds"] >= 0 and s["oldest_pending_age"] is not None

    run_worker(dsn)

    s = by_model(conn)["v1"]
    n_docs = one(conn, "SELECT count(*) FROM pgingest.documents")
    embedded = one(
        conn,
        "SELECT count(*) FROM pgingest.embedding_state AS s JOIN pgingest.documents AS d"
        " ON d.id = s.doc_id AND d.content_hash = s.content_hash WHERE s.model = 'v1'",
    )
    dead = one(conn, "SELECT count(*) FROM pgingest.dead_letters WHERE model = 'v1'")
    assert (n_docs, embedded, dead) == (15, 11, 4)
    assert s["documents"] == n_docs
    assert s["embedded"] == embedded
    assert s["dead_lettered"] == dead == s["dead_letters"]
    assert s["pending"] == 0
    assert float(s["coverage_pct"]) == round(100 * embedded / n_docs, 2)
    assert s["queue_length"] == 0 == queue_count(conn, "v1")
    assert s["freshness_lag_seconds"] == 0 and s["oldest_pending_age"] is None
    assert s["embedded_in_window"] == embedded
    assert float(s["docs_per_second"]) == round(embedded / s["throughput_window_seconds"], 3)
    # The backfill: the ten documents that existed at registration, two of them planted.
    assert s["backfill_state"] == "done"
    assert (s["backfill_documents"], s["backfill_embedded"], s["backfill_dead"]) == (10, 8, 2)
    assert (s["backfill_pending"], float(s["backfill_pct"])) == (0, 100.0)
    assert s["backfill_eta"] == dt.timedelta(0)

    # Exactly the planted documents are dead-lettered, and the summary groups them faithfully.
    keys = {r[0] for r in conn.execute("SELECT doc_key FROM pgingest.dead_letters")}
    assert keys == set(BAD)
    table = conn.execute(
        "SELECT error_class, count(*), min(first_failed_at), max(last_failed_at), max(attempts)"
        " FROM pgingest.dead_letters WHERE model = 'v1' GROUP BY error_class ORDER BY 1"
    ).fetchall()
    summary = db.status_view(conn, "dead_letter_summary")
    assert [
        (r["error_class"], r["dead_letters"], r["oldest"], r["newest"], r["max_attempts"])
        for r in summary
    ] == [tuple(t) for t in table]
    for r in summary:
        assert r["documents"] == r["dead_letters"]
        newest = conn.execute(
            "SELECT doc_key, error_message FROM pgingest.dead_letters"
            " WHERE model = 'v1' AND error_class = %s ORDER BY last_failed_at DESC, id DESC LIMIT 1",
            (r["error_class"],),
        ).fetchone()
        assert (r["sample_doc_key"], r["sample_message"]) == newest
        assert r["sample_message"]  # a readable reason

    # A new version of a dead-lettered document is pending again, not dead.
    conn.execute("UPDATE pgingest.documents SET body = 'Fixed now.' WHERE key = 'bad-nan'")
    s = by_model(conn)["v1"]
    assert (s["dead_lettered"], s["dead_letters"], s["pending"]) == (3, 4, 1)
    assert s["queue_length"] == 1


def test_queue_stats_tell_ready_in_flight_and_delayed_apart(
    conn: psycopg.Connection[Any], fake: FakeEmbeddingServer
) -> None:
    register(conn, "v1", fake.url)
    insert_docs(conn, [(f"k{i}", None, f"text {i}") for i in range(6)])
    claimed = db.read_batch(conn, "v1", 60, 2)
    assert len(claimed) == 2
    deferred = db.read_batch(conn, "v1", 60, 1)
    db.defer(conn, "v1", [deferred[0].msg_id], [deferred[0].message], 60)
    (q,) = db.queue_stats(conn, "v1")
    assert (q["queue_length"], q["ready"], q["in_flight"], q["delayed"]) == (6, 3, 2, 1)
    assert q["oldest_age_seconds"] >= 0
    assert db.pending_messages(conn, "v1") == 6
    assert db.queue_stats(conn, "nope") == []
    s = by_model(conn)["v1"]
    assert (s["queue_ready"], s["queue_in_flight"], s["queue_delayed"]) == (3, 2, 1)


def test_vector_health_reports_the_index_and_the_search_settings(
    conn: psycopg.Connection[Any], fake: FakeEmbeddingServer
) -> None:
    register(conn, "v1", fake.url)
    (v,) = db.status_view(conn, "vector_health")
    assert (v["model"], v["index_status"], v["index_name"]) == ("v1", "missing", None)
    assert (v["hnsw_ef_search"], v["ivfflat_probes"]) == ("40", "1")
    conn.execute(
        "CREATE INDEX store_v1_idx ON pgingest.store_v1 USING hnsw (embedding vector_cosine_ops)"
    )
    conn.execute("SET hnsw.ef_search = 123")
    (v,) = db.status_view(conn, "vector_health")
    assert (v["index_name"], v["access_method"], v["valid"], v["index_status"]) == (
        "store_v1_idx",
        "hnsw",
        True,
        "ok",
    )
    assert v["size_bytes"] > 0 and v["hnsw_ef_search"] == "123"
    assert v["chunks_dead_tuples"] is not None
    assert db.status_view(conn, "index_builds") == []  # nothing running


# --------------------------------------------------------------------------------------------
# Heartbeats
# --------------------------------------------------------------------------------------------


def test_heartbeat_upserts_goes_stale_and_is_removed_on_a_clean_stop(
    conn: psycopg.Connection[Any], dsn: str
) -> None:
    snap = heartbeat.WorkerSnapshot(
        models=["v1"], in_flight=3, batch_size=64, documents=42, seconds_since_batch=1.5
    )
    hb = heartbeat.Heartbeat(dsn, lambda: snap, interval=0.05)
    hb.start()
    wait_for(lambda: bool(db.status_view(conn, "worker_status")))
    (w,) = db.status_view(conn, "worker_status")
    assert (
        str(w["id"]),
        w["pid"],
        w["models"],
        w["in_flight"],
        w["batch_size"],
        w["documents"],
    ) == (
        hb.worker_id,
        hb.pid,
        ["v1"],
        3,
        64,
        42,
    )
    assert not w["stale"] and w["last_batch_at"] is not None
    first_seen = w["last_seen"]
    wait_for(lambda: db.status_view(conn, "worker_status")[0]["last_seen"] > first_seen)
    hb.stop()
    assert db.status_view(conn, "worker_status") == []

    # A killed worker's row goes stale, is reported, and is forgotten later.
    dead_id = str(uuid.uuid4())
    db.heartbeat(conn, dead_id, "gone-host", 4242, "0.0.1", [], 0, None, 0, None, {})
    conn.execute(
        "UPDATE pgingest.workers SET last_seen = now() - interval '2 minutes' WHERE id = %s",
        (dead_id,),
    )
    (w,) = db.status_view(conn, "worker_status")
    assert w["stale"]
    assert db.forget_stale_workers(conn, 3600) == 0
    assert db.forget_stale_workers(conn, None) == 1
    # Rows silent past worker_forget_after_seconds go at the next heartbeat of anyone.
    db.heartbeat(conn, dead_id, "gone-host", 4242, "0.0.1", [], 0, None, 0, None, {})
    conn.execute(
        "UPDATE pgingest.workers SET last_seen = now() - interval '1 hour' WHERE id = %s",
        (dead_id,),
    )
    live_id = str(uuid.uuid4())
    assert db.heartbeat(conn, live_id, "h", 1, "0.1.0", [], 0, None, 0, None, {}) == 10
    assert [str(r["id"]) for r in db.status_view(conn, "worker_status")] == [live_id]
    assert db.worker_exit(conn, live_id) and not db.worker_exit(conn, live_id)


def test_heartbeat_survives_a_terminated_connection(
    conn: psycopg.Connection[Any], dsn: str
) -> None:
    hb = heartbeat.Heartbeat(dsn, heartbeat.WorkerSnapshot, interval=0.05)
    hb.start()
    try:
        wait_for(lambda: bool(db.status_view(conn, "worker_status")))
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = 'pgingest-heartbeat' AND datname = current_database()"
        )
        before = db.status_view(conn, "worker_status")[0]["last_seen"]
        wait_for(lambda: db.status_view(conn, "worker_status")[0]["last_seen"] > before)
    finally:
        hb.stop()


# --------------------------------------------------------------------------------------------
# pgingest status
# --------------------------------------------------------------------------------------------


def test_status_exits_zero_when_healthy_and_one_on_dead_letters_or_a_stale_worker(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    code, out, err = status_cli(dsn)
    assert code == 0, out + err
    assert "no model registered" in out

    register(conn, "v1", fake.url)
    insert_docs(conn, [(f"k{i}", None, f"Document number {i}.") for i in range(5)])
    run_worker(dsn)
    code, out, _ = status_cli(dsn)
    assert code == 0, out
    assert out.startswith("pgingest status: healthy")
    assert "v1" in out and "100%" in out

    code, out, _ = status_cli(dsn, "--json")
    report = json.loads(out)
    assert code == 0 and report["healthy"] and report["problems"] == []
    assert report["models"][0]["embedded"] == 5
    assert isinstance(report["models"][0]["freshness_lag_seconds"], float)

    insert_docs(conn, [("poison", None, "A __NAN__ vector.")])
    run_worker(dsn)
    code, out, _ = status_cli(dsn)
    assert code == 1
    assert "1 dead letter(s)" in out and "v1/invalid_vector" in out
    assert status_cli(dsn, "--max-dead-letters", "1")[0] == 0

    wid = str(uuid.uuid4())
    db.heartbeat(conn, wid, "host-a", 99, "0.1.0", ["v1"], 0, 64, 5, None, {})
    assert status_cli(dsn, "--max-dead-letters", "1")[0] == 0
    conn.execute("UPDATE pgingest.workers SET last_seen = now() - interval '5 minutes'")
    code, out, _ = status_cli(dsn, "--max-dead-letters", "1")
    assert code == 1 and "worker host-a:99" in out and "stale" in out
    assert status_cli(dsn, "--max-dead-letters", "1", "--stale-after", "600")[0] == 0


def test_status_exits_two_when_it_cannot_check(dsn: str) -> None:
    code, out, err = status_cli("host=127.0.0.1 port=1 connect_timeout=2")
    assert code == 2 and out == "" and "pgingest status" in err


def test_status_exits_nonzero_when_the_provider_answers_401_and_zero_once_fixed(
    conn: psycopg.Connection[Any], dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FakeEmbeddingServer(api_key="sk-right-0123456789abcdef") as srv:
        monkeypatch.setenv("PGINGEST_TEST_STATUS_KEY", "sk-wrong-0123456789abcdef")
        register(conn, "v1", srv.url, api_key_env="PGINGEST_TEST_STATUS_KEY")
        insert_docs(conn, [(f"k{i}", None, f"Document {i}.") for i in range(4)])
        run_worker(dsn)
        assert db.get_model(conn, "v1").paused  # type: ignore[union-attr]
        code, out, _ = status_cli(dsn)
        assert code == 1
        assert "model v1 is paused" in out and "PAUSED" in out
        report = json.loads(status_cli(dsn, "--json")[1])
        assert any("paused" in p for p in report["problems"])

        monkeypatch.setenv("PGINGEST_TEST_STATUS_KEY", "sk-right-0123456789abcdef")
        run_worker(dsn)  # the probe succeeds and resumes the model
        run_worker(dsn)
        code, out, _ = status_cli(dsn)
        assert code == 0, out
        assert by_model(conn)["v1"]["embedded"] == 4


# --------------------------------------------------------------------------------------------
# Secrets
# --------------------------------------------------------------------------------------------


def _text_columns(conn: psycopg.Connection[Any]) -> list[tuple[str, str, str, str]]:
    """(schema, table, column, type) of every text-like column of every table of pgingest and pgmq."""
    return [
        (r[0], r[1], r[2], r[3])
        for r in conn.execute(
            "SELECT n.nspname, c.relname, a.attname, a.atttypid::regtype::text FROM pg_attribute AS a"
            " JOIN pg_class AS c ON c.oid = a.attrelid JOIN pg_namespace AS n ON n.oid = c.relnamespace"
            " WHERE n.nspname IN ('pgingest', 'pgmq') AND c.relkind IN ('r', 'p')"
            " AND a.attnum > 0 AND NOT a.attisdropped"
            " AND a.atttypid IN ('text'::regtype, 'varchar'::regtype, 'jsonb'::regtype,"
            " 'json'::regtype, 'bytea'::regtype, 'text[]'::regtype, 'name'::regtype)"
            " ORDER BY 1, 2, 3"
        )
    ]


def tables_containing(conn: psycopg.Connection[Any], needle: str) -> list[str]:
    hits = []
    for schema, table, column, typ in _text_columns(conn):
        value = (sql.SQL("encode({}, 'escape')") if typ == "bytea" else sql.SQL("{}::text")).format(
            sql.Identifier(column)
        )
        query = sql.SQL("SELECT count(*) FROM {} WHERE strpos({}, %s) > 0").format(
            sql.Identifier(schema, table), value
        )
        row = conn.execute(query, (needle,)).fetchone()
        if row and row[0]:
            hits.append(f"{schema}.{table}.{column}")
    return hits


def test_the_api_key_never_appears_in_logs_tables_or_dead_letters(
    conn: psycopg.Connection[Any],
    dsn: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    right = "sk-right-SECRET-7f3a9c1e5b"
    wrong = "sk-wrong-SECRET-2d8e4f6a0c"
    monkeypatch.setattr(logging.getLogger("pgingest"), "propagate", True)
    caplog.set_level(logging.DEBUG, logger="pgingest")
    with FakeEmbeddingServer(api_key=right) as srv:
        # The server echoes the whole wrong key in its 401 message: the client must redact it.
        srv.configure(echo_key_in_errors=True)
        monkeypatch.setenv("PGINGEST_TEST_LEAK_KEY", wrong)
        register(conn, "v1", srv.url, api_key_env="PGINGEST_TEST_LEAK_KEY")
        insert_docs(conn, [(f"k{i}", None, f"Document {i}.") for i in range(3)])
        insert_docs(conn, [(key, None, f"Planted {marker}.") for key, marker in BAD.items()])
        run_worker(dsn)
        assert db.get_model(conn, "v1").paused  # type: ignore[union-attr]
        assert srv.stats()["by_status"].get(401)

        monkeypatch.setenv("PGINGEST_TEST_LEAK_KEY", right)
        run_worker(dsn)
        run_worker(dsn)
        assert one(conn, "SELECT count(*) FROM pgingest.dead_letters") == len(BAD)
        assert not db.get_model(conn, "v1").paused  # type: ignore[union-attr]
        hb = heartbeat.Heartbeat(dsn, heartbeat.WorkerSnapshot)
        hb.beat()

    assert caplog.records, "the worker logged nothing"
    fmt = JsonFormatter()
    for record in caplog.records:
        line = fmt.format(record)
        json.loads(line)
        for key in (right, wrong):
            assert key not in line
            assert key[-12:] not in line  # not even the secret part
    for key in (right, wrong):
        assert tables_containing(conn, key) == []
        assert tables_containing(conn, key[-12:]) == []
    letters = conn.execute(
        "SELECT error_message, payload::text FROM pgingest.dead_letters"
    ).fetchall()
    assert letters and all(right not in str(r) and wrong not in str(r) for r in letters)
    reason = one(conn, "SELECT coalesce(paused_reason, '') FROM pgingest.models")
    assert right not in reason and wrong not in reason
    hb.stop()


def test_text_columns_scan_finds_a_planted_value(conn: psycopg.Connection[Any]) -> None:
    """The scanner above would see a key if one were stored (a test of the test)."""
    conn.execute("INSERT INTO pgingest.config (key, value) VALUES ('planted', 'xx-needle-0042-xx')")
    assert tables_containing(conn, "needle-0042") == ["pgingest.config.value"]
    assert len(_text_columns(conn)) > 10


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


def test_text_report_renders_every_section() -> None:
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    report = status.Report(
        models=[
            {
                "model": "v2",
                "state": "shadow",
                "paused": True,
                "paused_reason": "auth: Incorrect API key provided: sk-****",
                "documents": 1000,
                "embedded": 400,
                "pending": 590,
                "dead_lettered": 10,
                "coverage_pct": 40.0,
                "queue_length": 600,
                "queue_ready": 500,
                "queue_in_flight": 64,
                "queue_delayed": 36,
                "oldest_pending_age": dt.timedelta(seconds=95.5),
                "freshness_lag_seconds": 95.5,
                "docs_per_second": 12.5,
                "backfill_state": "running",
                "backfill_pct": 41.0,
                "backfill_pending": 590,
                "backfill_eta": dt.timedelta(seconds=47),
            }
        ],
        dead_letters=[
            {
                "model": "v2",
                "error_class": "invalid_vector_nan",
                "dead_letters": 10,
                "oldest": now - dt.timedelta(hours=2),
                "newest": now - dt.timedelta(minutes=3),
                "sample_doc_key": "doc-7",
                "sample_message": "vector has 1 non-finite value",
            }
        ],
        workers=[
            {
                "id": uuid.uuid4(),
                "host": "w1",
                "pid": 7,
                "version": "0.1.0",
                "uptime": dt.timedelta(hours=3),
                "last_seen_age": dt.timedelta(seconds=3),
                "in_flight": 64,
                "batch_size": 64,
                "documents": 400,
                "stale": False,
            }
        ],
        vector_health=[
            {
                "model": "v2",
                "state": "shadow",
                "index_method": "hnsw",
                "index_name": "store_v2_idx",
                "index_status": "invalid or building",
                "building": True,
                "valid": False,
                "size_bytes": 5 * 1024 * 1024,
                "hnsw_ef_search": "40",
                "ivfflat_probes": "1",
                "chunks_dead_tuples": 12,
                "chunks_dead_pct": 0.5,
                "chunks_last_autovacuum": None,
            }
        ],
        index_builds=[
            {
                "pid": 1234,
                "model": "v2",
                "index_name": "store_v2_idx",
                "phase": "building index: loading tuples in tree",
                "pct": 42.0,
                "elapsed": dt.timedelta(seconds=75),
            }
        ],
    )
    status.evaluate(report, status.HealthPolicy())
    text = status.render_text(report, now)
    assert text.startswith("pgingest status: UNHEALTHY")
    for needle in (
        "model v2 is paused",
        "10 dead letter(s)",
        "shadow (PAUSED)",
        "running 41% 590 left eta 47s",
        "600 (500/64/36)",
        "1m35s",
        "invalid_vector_nan",
        "doc-7: vector has 1 non-finite value",
        "3h00m",
        "invalid or building (building)",
        "5.0 MB",
        "INDEX BUILDS",
        "42.0%",
        "[########............]",
    ):
        assert needle in text, needle
    assert not any("index" in p for p in report.problems)  # a build is running: not a failure
    doc = json.loads(status.render_json(report))
    assert doc["healthy"] is False
    assert doc["models"][0]["backfill_eta"] == 47.0
    assert Counter(type(p) for p in doc["problems"]) == Counter({str: 2})
