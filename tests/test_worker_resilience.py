"""The worker survives what one batch or one stuck call can do to it (issue 18, items 2, 5, 10).

Item 2: an unexpected error in a write-back (a ``DataError``, a ``UnicodeEncodeError``, a value
out of range, a bug) fails that batch, not the process: its messages come back after their
visibility timeout. Item 10: the worker's connections carry timeouts and keepalives, and the
heartbeat reports main-loop progress so that ``pgingest status`` flags a stuck loop.

Item 5: a batch of large documents is written back in several transactions within the write
budget (chunks, bytes), each acknowledging its own documents' messages; a failed read or
write-back halves the next batches.

Crash redeliveries (a worker killed or hung while it held a batch): processed in shrinking
groups, only crashes of a document processed alone charged, and releases that are no failure
(a paused model, a worker that stops, a redelivery set aside) charge nothing
(``release_v2``, sql/025_claims.sql; the rules in tests/unit/test_crash_isolation.py).
"""

from __future__ import annotations

import threading
from typing import Any, NamedTuple

import psycopg
import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from pgingest import db, worker
from pgingest.metrics import Metrics
from pgingest.testing.fake_provider import FakeEmbeddingServer
from pgingest.testing.texts import body as make_body
from pgingest.worker import batch as core
from pgingest.worker.writer import Writer, plan_msg_ids
from tests.helpers import (
    assert_exactly_predicted,
    drain,
    expected_chunks,
    insert_corpus,
    insert_docs,
    queue_count,
    register,
    settings,
    wait_for,
)


def failing_writer(exc: BaseException, times: int | None) -> type[Writer]:
    """A writer whose first ``times`` write-backs (all when None) raise ``exc``."""

    class Failing(Writer):
        calls = 0

        def execute(self, *a: Any, **kw: Any) -> None:
            type(self).calls += 1
            if times is None or type(self).calls <= times:
                raise exc
            super().execute(*a, **kw)

    return Failing


def failures_counted(reader: InMemoryMetricReader) -> dict[str, int]:
    """``pgingest.batch.failures`` by error.type (the series each live model's heartbeat makes
    exist at 0, without an error.type, counts no failure: left out)."""
    out: dict[str, int] = {}
    data = reader.get_metrics_data()
    for rm in data.resource_metrics if data else ():
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                if metric.name == "pgingest.batch.failures":
                    for p in metric.data.data_points:
                        if not p.value:
                            continue
                        key = str(p.attributes.get("error.type"))
                        out[key] = out.get(key, 0) + int(p.value)
    return out


def embedded(conn: psycopg.Connection[Any], model: str = "v1") -> int:
    row = conn.execute(
        "SELECT count(*) FROM pgingest.embedding_state WHERE model = %s", (model,)
    ).fetchone()
    return int(row[0]) if row else 0


def in_thread(w: worker.Worker) -> tuple[threading.Thread, list[int]]:
    codes: list[int] = []
    t = threading.Thread(target=lambda: codes.append(w.run()), daemon=True)
    t.start()
    return t, codes


@pytest.mark.parametrize(
    "exc",
    [
        psycopg.errors.DataError('invalid byte sequence for encoding "UTF8": 0x00'),
        psycopg.errors.NumericValueOutOfRange("value out of range for type halfvec"),
        UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed"),
    ],
    ids=["DataError", "NumericValueOutOfRange", "UnicodeEncodeError"],
)
def test_a_write_back_failing_once_fails_that_batch_not_the_worker(
    conn: psycopg.Connection[Any],
    dsn: str,
    fake: FakeEmbeddingServer,
    exc: BaseException,
    worker_log: pytest.LogCaptureFixture,
) -> None:
    register(conn, "v1", fake.url)
    insert_corpus(conn, 30)
    reader = InMemoryMetricReader()
    w = worker.Worker(
        settings(dsn, drain=False, batch_size=10, max_batch_size=10, visibility_timeout=1),
        Metrics([reader]),
        writer_factory=failing_writer(exc, 1),
    )
    t, codes = in_thread(w)
    try:
        wait_for(lambda: embedded(conn) == 30, timeout=60)
        assert t.is_alive() and not codes  # the worker never exited
    finally:
        w.stopping.set()
        t.join(30)
    assert not t.is_alive()
    assert w.writer.failures == 1
    assert queue_count(conn, "v1") == 0
    assert conn.execute("SELECT count(*) FROM pgingest.dead_letters").fetchone() == (0,)
    # Logged with the model and the message ids; the error text cleaned (no NUL, no surrogate).
    failed = [r for r in worker_log.records if r.getMessage().startswith("write-back failed")]
    assert failed and len({r.created for r in failed}) == 1  # one failure (caplog may see it twice)
    rec: Any = failed[0]
    assert rec.model == "v1" and rec.msg_ids and rec.error_class == type(exc).__name__
    assert "\x00" not in rec.error and "\ud800" not in rec.error
    rec.error.encode("ascii")
    assert failures_counted(reader) == {type(exc).__name__: 1}


def test_a_write_back_that_always_fails_loses_nothing_and_stops_no_worker(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    register(conn, "v1", fake.url)
    insert_corpus(conn, 10)
    w = worker.Worker(
        settings(dsn, drain=False, batch_size=10, visibility_timeout=1),
        writer_factory=failing_writer(psycopg.errors.DataError("always"), None),
    )
    t, codes = in_thread(w)
    try:
        wait_for(lambda: w.writer.failures >= 3, timeout=60)
        assert t.is_alive() and not codes
    finally:
        w.stopping.set()
        t.join(30)
    assert not t.is_alive()
    assert embedded(conn) == 0
    assert queue_count(conn, "v1") == 10  # every message of the batch is still queued
    assert w.claims.held() == {}  # nothing kept claimed: they come back after the timeout


def test_drain_exits_4_when_write_backs_keep_failing(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    register(conn, "v1", fake.url)
    insert_corpus(conn, 10)
    w = worker.Worker(
        settings(
            dsn,
            drain=True,
            batch_size=10,
            min_batch_size=10,  # not halved (item 5): one batch of 10 each time, 2 failures
            visibility_timeout=1,
            drain_max_write_failures=2,
        ),
        writer_factory=failing_writer(psycopg.errors.DataError("always"), None),
    )
    t, codes = in_thread(w)
    t.join(60)
    assert not t.is_alive()
    assert codes == [4]
    assert w.writer.failures == 2
    assert queue_count(conn, "v1") == 10
    assert embedded(conn) == 0


def test_a_main_thread_write_failing_fails_the_batch_not_the_worker(
    conn: psycopg.Connection[Any],
    dsn: str,
    fake: FakeEmbeddingServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A release or pause written by the main thread that fails with a DataError."""
    register(conn, "v1", fake.url)
    insert_corpus(conn, 10)
    calls: list[int] = []
    real = worker.loop.db.cached_vectors

    def broken_once(*a: Any, **kw: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise psycopg.errors.DataError("simulated: a main-thread statement refused its data")
        return real(*a, **kw)

    monkeypatch.setattr(worker.loop.db, "cached_vectors", broken_once)
    w = worker.Worker(settings(dsn, drain=False, batch_size=10, visibility_timeout=1))
    t, codes = in_thread(w)
    try:
        wait_for(lambda: embedded(conn) == 10, timeout=60)
        assert t.is_alive() and not codes
    finally:
        w.stopping.set()
        t.join(30)
    assert w.failed_batches == 1
    assert w.claims.held() == {}
    assert queue_count(conn, "v1") == 0


# -- item 10: connection timeouts, keepalives, session timeouts ----------------------------------


def session_timeouts(c: psycopg.Connection[Any]) -> tuple[str, str]:
    st = c.execute("SHOW statement_timeout").fetchone()
    lt = c.execute("SHOW lock_timeout").fetchone()
    assert st is not None and lt is not None
    return str(st[0]), str(lt[0])


def test_every_worker_connection_has_timeouts_and_keepalives(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    register(conn, "v1", fake.url)
    insert_corpus(conn, 5)
    w = worker.Worker(settings(dsn, drain=False, visibility_timeout=3, heartbeat_interval=0.2))
    t, _codes = in_thread(w)
    try:
        wait_for(lambda: embedded(conn) == 5, timeout=60)
        w.claims.extend_now()  # opens the claims connection if no batch needed it yet
        names = {
            r[0]
            for r in conn.execute(
                "SELECT application_name FROM pg_stat_activity WHERE application_name LIKE 'pgingest-%'"
            )
        }
        assert {"pgingest-worker", "pgingest-writer", "pgingest-heartbeat"} <= names
        assert w.heartbeat is not None
        conns = {
            "worker": w._connection(),
            "listen": w._listener(),
            "writer": w.writer.connection(),
            "heartbeat": w.heartbeat._connection(),
        }
        if w.claims._conn is not None:
            conns["claims"] = w.claims._conn
        for name, c in conns.items():
            assert session_timeouts(c) == ("1min", "10s"), name
            p = c.info.get_parameters()
            assert p.get("connect_timeout") == "10", name
            assert p.get("keepalives_idle") == "30", name
            assert p.get("keepalives_interval") == "10", name
            assert p.get("keepalives_count") == "3", name
            assert p.get("tcp_user_timeout") == "60000", name
    finally:
        w.stopping.set()
        t.join(30)


def test_the_timeouts_can_be_overridden(dsn: str) -> None:
    from pgingest import db

    s = settings(dsn, statement_timeout=2.5, lock_timeout=0, connect_timeout=3)
    with db.connect(dsn, **s.connect_params()) as c:
        assert session_timeouts(c) == ("2500ms", "0")
        assert c.info.get_parameters().get("connect_timeout") == "3"
    # libpq-style: what the connection string names wins over the settings.
    with_options = psycopg.conninfo.make_conninfo(
        dsn, options="-c statement_timeout=5s", keepalives_idle=7
    )
    s = settings(with_options)
    with db.connect(with_options, **s.connect_params()) as c:
        assert session_timeouts(c) == ("5s", "10s")
        assert c.info.get_parameters().get("keepalives_idle") == "7"


# -- item 10: a stuck main loop is reported although its heartbeat beats -------------------------


def test_a_worker_whose_main_loop_is_stuck_is_reported_unhealthy(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    from pgingest import status

    register(conn, "v1", fake.url)
    conn.execute("UPDATE pgingest.config SET value = '2' WHERE key = 'worker_stuck_after_seconds'")
    release = threading.Event()
    fake.on_request = lambda _info: release.wait(30)  # the provider call hangs
    insert_corpus(conn, 3)
    w = worker.Worker(
        settings(dsn, drain=False, heartbeat_interval=0.2, http_timeout=60, visibility_timeout=60)
    )
    t, codes = in_thread(w)

    def report() -> status.Report:
        return status.evaluate(status.collect(conn), status.HealthPolicy())

    def stuck_problems() -> list[str]:
        return [p for p in report().problems if "is stuck" in p]

    try:
        wait_for(lambda: bool(stuck_problems()), timeout=30)
        r = report()
        assert not r.healthy
        (row,) = r.workers
        assert row["stuck"] and not row["stale"]
        seen = conn.execute(
            "SELECT now() - last_seen < interval '2 seconds' FROM pgingest.workers"
        ).fetchone()
        assert seen == (True,)  # the heartbeat still beats
        # The provider answers again: the loop completes a pass, the worker is healthy again.
        release.set()
        wait_for(lambda: embedded(conn) == 3, timeout=30)
        wait_for(lambda: not stuck_problems(), timeout=10)
        assert t.is_alive() and not codes
    finally:
        release.set()
        w.stopping.set()
        t.join(30)


def test_a_worker_still_calling_heartbeat_v1_keeps_working(conn: psycopg.Connection[Any]) -> None:
    """A worker older than heartbeat_v2 (running through an upgrade) still beats; it reports no
    main-loop progress, so it is never called stuck."""
    row = conn.execute(
        "SELECT pgingest.heartbeat_v1(gen_random_uuid(), 'old-host', 42, '0.0.1')"
    ).fetchone()
    assert row is not None and row[0] > 0
    rows = conn.execute(
        "SELECT host, stale, stuck, last_tick_at FROM pgingest.worker_status"
    ).fetchall()
    assert rows == [("old-host", False, False, None)]


# -- crash redeliveries: isolated in shrinking groups, charged only when alone ---------------------


def queue_rows(conn: psycopg.Connection[Any], model: str = "v1") -> dict[int, tuple[int, bool]]:
    """msg_id -> (read_ct, visible now)."""
    rows = conn.execute(
        f"SELECT msg_id, read_ct, vt <= clock_timestamp() FROM pgmq.q_pgingest_{model}"  # noqa: S608
    ).fetchall()
    return {int(i): (int(r), bool(v)) for i, r, v in rows}


def dead_letters(conn: psycopg.Connection[Any]) -> list[tuple[str, str]]:
    rows = conn.execute(
        "SELECT doc_key, error_class FROM pgingest.dead_letters ORDER BY doc_key"
    ).fetchall()
    return [(str(k), str(c)) for k, c in rows]


def isolation_groups(log: pytest.LogCaptureFixture) -> list[tuple[int, int, int]]:
    """(crash count, group, released) of each 'crash redeliveries' log line."""
    seen: dict[float, tuple[int, int, int]] = {}
    for r in log.records:
        if r.getMessage().startswith("crash redeliveries"):
            rec: Any = r
            seen[r.created] = (rec.crashes, rec.group, rec.released)
    return list(seen.values())


def test_crash_redeliveries_are_processed_in_groups_and_all_embedded(
    conn: psycopg.Connection[Any],
    dsn: str,
    fake: FakeEmbeddingServer,
    worker_log: pytest.LogCaptureFixture,
) -> None:
    """Messages delivered before to workers that died: 10 of them 6 times (the old rule,
    every crash an attempt, dead-lettered them all as attempts_exhausted), 10 of them 3 times,
    10 fresh. Every document is embedded, none dead-lettered, the suspects in groups."""
    register(conn, "v1", fake.url)
    insert_corpus(conn, 30)
    crashed = core.GROUPED_DELIVERIES + 2  # 6 crashes, 2 of them charged
    conn.execute(
        "UPDATE pgmq.q_pgingest_v1 SET read_ct = CASE"
        " WHEN (message->>'doc_id')::bigint IN (SELECT id FROM pgingest.documents"
        "   WHERE key IN ('doc-0','doc-1','doc-2','doc-3','doc-4','doc-5','doc-6','doc-7','doc-8',"
        "                 'doc-9')) THEN %s"
        " WHEN (message->>'doc_id')::bigint IN (SELECT id FROM pgingest.documents"
        "   WHERE key ~ '^doc-1[0-9]$') THEN 3"
        " ELSE 0 END",
        (crashed,),
    )
    drain(dsn, batch_size=256)
    assert embedded(conn) == 30
    assert dead_letters(conn) == []
    assert queue_count(conn, "v1") == 0
    groups = isolation_groups(worker_log)
    # 10 alone at crash count 6, then 10 of crash count 3 in groups of 4 (4, 4, 2); the fresh
    # ones last, in one batch (no log line).
    assert [g[:2] for g in groups] == [(crashed, 1)] * 10 + [(3, 4), (3, 4), (3, 2)]
    assert groups[0][2] == 29
    assert all(g <= core.group_size(c) for c, g, _ in groups)


class SimulatedCrash(Exception):
    """The worker dies on the poison document (an OOM, a segfault in a tokenizer)."""


def test_a_poison_document_is_dead_lettered_and_its_companions_embedded(
    conn: psycopg.Connection[Any],
    dsn: str,
    fake: FakeEmbeddingServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A document that kills every worker that chunks it: each crash leaves the claims of its
    batch to expire (simulated: the claims are dropped and their visibility timeout ended at
    once). It ends as attempts_exhausted after GROUPED_DELIVERIES + max_attempts crashes; the 40
    documents read with it are embedded (the old rule dead-lettered the whole batch)."""
    register(conn, "v1", fake.url)
    insert_corpus(conn, 20)
    conn.execute(
        "INSERT INTO pgingest.documents (key, title, body) VALUES ('poison', 'P', 'POISON text')"
    )
    insert_corpus(conn, 20, start=20)
    real_chunk = core.chunk

    def chunk(batch: core.Batch, config: Any) -> None:
        if any("POISON" in body for _title, body in batch.texts.values()):
            raise SimulatedCrash
        real_chunk(batch, config)

    monkeypatch.setattr(core, "chunk", chunk)
    w = worker.Worker(settings(dsn, batch_size=256, visibility_timeout=30))
    m = db.get_model(conn, "v1")
    assert m is not None
    crashes = 0
    try:
        for _ in range(200):
            if queue_count(conn, "v1") == 0:
                break
            try:
                w.process_batch(m)
                w.writer.flush()
            except SimulatedCrash:
                crashes += 1
                # The dead worker's claims expire (vt reached; read_ct stays).
                conn.execute(
                    "UPDATE pgmq.q_pgingest_v1 SET vt = clock_timestamp()"
                    " WHERE vt > clock_timestamp()"
                )
    finally:
        w.writer.settle()
        w.writer.shutdown()
        w.embedder.shutdown()
        w._reset_connections()
    assert queue_count(conn, "v1") == 0
    assert dead_letters(conn) == [("poison", "attempts_exhausted")]
    assert embedded(conn) == 40
    assert crashes == core.GROUPED_DELIVERIES + 5  # max_attempts: 5 by default
    (message,) = conn.execute("SELECT error_message FROM pgingest.dead_letters").fetchone()
    assert message.startswith(
        f"gave up after 5 attempts ({crashes} deliveries ended with the worker dead or stuck,"
        " 5 of them with this document alone)"
    )


def test_release_v2_gives_back_only_the_deliveries_still_held(
    conn: psycopg.Connection[Any], fake: FakeEmbeddingServer
) -> None:
    register(conn, "v1", fake.url)
    insert_corpus(conn, 3)
    ids = [r[0] for r in conn.execute("SELECT msg_id FROM pgingest.read_batch_v1('v1', 30, 3)")]
    assert len(ids) == 3
    # Another worker has read the second one again since (its claim had expired).
    conn.execute("SELECT pgmq.set_vt('pgingest_v1', %s, 0)", (ids[1],))
    conn.execute("SELECT * FROM pgmq.read('pgingest_v1', 30, 1)").fetchall()
    (n,) = conn.execute(
        "SELECT pgingest.release_v2('v1', %s::bigint[], '{1,1,1}', 0)", (ids,)
    ).fetchone()
    assert n == 2
    rows = queue_rows(conn)
    assert rows[ids[0]] == (0, True) and rows[ids[2]] == (0, True)  # given back, visible
    assert rows[ids[1]] == (2, False)  # the other worker's claim, untouched
    # A delay keeps them invisible; a read_ct that is not the one held changes nothing.
    (n,) = conn.execute(
        "SELECT pgingest.release_v2('v1', %s::bigint[], '{1}', 60)", ([ids[0]],)
    ).fetchone()
    assert n == 0
    conn.execute("SELECT * FROM pgmq.read('pgingest_v1', 30, 1)").fetchall()  # ids[0] again
    (n,) = conn.execute(
        "SELECT pgingest.release_v2('v1', %s::bigint[], '{1}', 60)", ([ids[0]],)
    ).fetchone()
    assert n == 1 and queue_rows(conn)[ids[0]] == (0, False)
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        conn.execute("SELECT pgingest.release_v2('v1', %s::bigint[], '{1}', 0)", (ids,))
    with pytest.raises(psycopg.errors.UndefinedObject):
        conn.execute("SELECT pgingest.release_v2('nope', '{1}', '{1}', 0)")


def test_pausing_a_model_releases_its_batch_without_charging_an_attempt(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    """Issue 18, item 7: a pause (401 from the provider) releases the batch with its deliveries
    given back; pausing again and again never brings a document nearer to attempts_exhausted."""
    register(conn, "v1", fake.url)
    insert_corpus(conn, 10)
    conn.execute("SELECT pgmq.send('pgingest_v1', '\"not a job\"')")  # released with the rest
    w = worker.Worker(settings(dsn, probe_interval=60))
    try:
        for _ in range(7):  # more pauses than max_attempts + GROUPED_DELIVERIES
            m = db.get_model(conn, "v1")
            assert m is not None
            fake.fail_next("auth", 1)
            stats = w.process_batch(m)
            assert stats.released == 11
            assert conn.execute("SELECT paused FROM pgingest.models").fetchone() == (True,)
            rows = queue_rows(conn)
            assert sorted(rows.values()) == [(0, False)] * 11  # not charged, held for the probe
            assert w.claims.held() == {}
            db.resume_model(conn, "v1")
            conn.execute("UPDATE pgmq.q_pgingest_v1 SET vt = clock_timestamp()")
    finally:
        w.embedder.shutdown()
        w._reset_connections()
    drain(dsn)
    assert embedded(conn) == 10
    assert dead_letters(conn) == [("None", "invalid_message")]


def test_a_worker_stopped_mid_batch_releases_its_claims_without_charge(
    conn: psycopg.Connection[Any],
    dsn: str,
    fake: FakeEmbeddingServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SystemExit (or KeyboardInterrupt) while a batch is embedded: run() gives its claims
    back on the way out (they used to expire, one crash counted each)."""
    register(conn, "v1", fake.url)
    insert_corpus(conn, 5)

    def chunk(batch: core.Batch, config: Any) -> None:
        raise SystemExit(1)

    monkeypatch.setattr(core, "chunk", chunk)
    w = worker.Worker(settings(dsn, visibility_timeout=60))
    with pytest.raises(SystemExit):
        w.run()
    assert w.claims.held() == {}
    assert sorted(queue_rows(conn).values()) == [(0, True)] * 5


# -- item 5: the write budget, split write-backs, halving after a failure --------------------------


class Part(NamedTuple):
    doc_ids: list[int]
    msg_ids: list[int]
    chunks: int
    size: int  # bytes (batch.job_cost)


def recording_writer(parts: list[Part], fail_calls: set[int] | None = None) -> type[Writer]:
    """A writer that records each transaction's plan (``execute``: one per transaction); the
    calls numbered in ``fail_calls`` (from 1) raise a DataError instead."""

    class Recording(Writer):
        calls = 0

        def execute(self, conn: Any, model: str, plan: core.WritePlan, *a: Any, **kw: Any) -> None:
            type(self).calls += 1
            chunks, size = core.plan_cost(plan)
            parts.append(Part([j.doc_id for j in plan.done], plan_msg_ids(plan), chunks, size))
            if fail_calls and type(self).calls in fail_calls:
                raise psycopg.errors.DataError("simulated: this write-back is refused")
            super().execute(conn, model, plan, *a, **kw)

    return Recording


def insert_large(conn: psycopg.Connection[Any], n: int, sentences: int = 120) -> None:
    """Documents of 16 chunks each (about 38 KB to write with 384 dimensions)."""
    insert_docs(conn, [(f"big-{i}", f"Big {i}", make_body(i, sentences)) for i in range(n)])


def transactions_seen(conn: psycopg.Connection[Any]) -> int:
    """Distinct embedded_at (now(): the transaction's start) in embedding_state: how many
    write-back transactions wrote the documents."""
    row = conn.execute(
        "SELECT count(DISTINCT embedded_at) FROM pgingest.embedding_state"
    ).fetchone()
    assert row is not None
    return int(row[0])


def embedded_ids(conn: psycopg.Connection[Any]) -> set[int]:
    return {int(r[0]) for r in conn.execute("SELECT doc_id FROM pgingest.embedding_state")}


@pytest.mark.parametrize(
    ("max_chunks", "max_bytes"),
    [(10_000, 100_000), (1, 64 << 20)],
    ids=["bytes", "chunks"],
)
def test_a_batch_over_the_write_budget_is_written_in_several_transactions(
    conn: psycopg.Connection[Any],
    dsn: str,
    fake: FakeEmbeddingServer,
    max_chunks: int,
    max_bytes: int,
) -> None:
    """12 documents of about 16 chunks read in one batch: with a budget of 100,000 bytes (two
    documents' text and vectors) they are written in transactions of two or so; with a budget
    of one chunk, each alone (a document over the budget is never refused, only written
    alone). Every transaction within the budget unless it holds one document; each
    acknowledges exactly its documents' messages."""
    register(conn, "v1", fake.url)
    insert_large(conn, 12)
    n_chunks = {d: len(c) for d, c in expected_chunks(conn).items()}
    parts: list[Part] = []
    w = worker.Worker(
        settings(dsn, batch_size=256, write_max_chunks=max_chunks, write_max_bytes=max_bytes),
        writer_factory=recording_writer(parts),
    )
    assert w.run() == 0
    assert len(parts) >= 5  # one batch (all 12 read at once), several transactions
    if max_chunks == 1:
        assert [len(p.doc_ids) for p in parts] == [1] * 12
    for p in parts:
        assert p.chunks == sum(n_chunks[d] for d in p.doc_ids)
        assert len(p.doc_ids) == 1 or (p.chunks <= max_chunks and p.size <= max_bytes)
        assert len(p.msg_ids) == len(p.doc_ids)  # one message each, acknowledged with it
    assert sorted(d for p in parts for d in p.doc_ids) == sorted(n_chunks)
    assert transactions_seen(conn) == len(parts)  # several transactions in the database too
    assert_exactly_predicted(conn)
    assert queue_count(conn, "v1") == 0
    assert dead_letters(conn) == []


def test_a_failed_part_of_a_split_write_back_fails_alone(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    """The second of several transactions is refused: the others are committed and
    acknowledged, exactly the second's messages stay queued; they are embedded on their next
    delivery; the batch size is halved."""
    register(conn, "v1", fake.url)
    insert_large(conn, 6)
    parts: list[Part] = []
    w = worker.Worker(
        settings(dsn, batch_size=256, write_max_chunks=36, commit_target_seconds=60),
        writer_factory=recording_writer(parts, fail_calls={2}),
    )
    m = db.get_model(conn, "v1")
    assert m is not None
    try:
        w.process_batch(m)
        w.writer.flush()
    finally:
        w.writer.settle()
        w.writer.shutdown()
        w.embedder.shutdown()
        w._reset_connections()
    assert len(parts) >= 3
    assert w.writer.failures == 1
    assert w.sizers.for_model("v1").size == 128
    failed = set(parts[1].doc_ids)
    assert embedded_ids(conn) == {d for p in parts for d in p.doc_ids} - failed
    assert sorted(queue_rows(conn)) == sorted(parts[1].msg_ids)  # exactly the failed part's
    assert w.claims.held() == {}
    conn.execute("UPDATE pgmq.q_pgingest_v1 SET vt = clock_timestamp()")  # their claims expire
    drain(dsn)
    assert_exactly_predicted(conn)
    assert queue_count(conn, "v1") == 0
    assert dead_letters(conn) == []


@pytest.mark.parametrize(
    "exc",
    [
        psycopg.errors.DataError("simulated: a row too big"),
        psycopg.errors.QueryCanceled("simulated: canceling statement due to statement timeout"),
        psycopg.errors.OutOfMemory("simulated: out of memory"),
    ],
    ids=["DataError", "statement_timeout", "out_of_memory"],
)
def test_a_failed_write_back_halves_the_next_batches(
    conn: psycopg.Connection[Any],
    dsn: str,
    fake: FakeEmbeddingServer,
    monkeypatch: pytest.MonkeyPatch,
    exc: Exception,
) -> None:
    """Batches of 10; the first write-back fails: the following reads ask for 5 (then grow back
    after successes); every document is embedded, none dead-lettered."""
    register(conn, "v1", fake.url)
    insert_corpus(conn, 40)
    reads: list[int] = []
    real = worker.loop.db.read_batch

    def read_batch(c: Any, model: str, vt: int, qty: int) -> Any:
        msgs = real(c, model, vt, qty)
        if msgs:
            reads.append(qty)
        return msgs

    monkeypatch.setattr(worker.loop.db, "read_batch", read_batch)
    w = worker.Worker(
        settings(
            dsn,
            drain=False,
            batch_size=10,
            min_batch_size=2,
            max_batch_size=10,
            visibility_timeout=1,
            commit_target_seconds=60,  # only a failure shrinks the batch here
        ),
        writer_factory=failing_writer(exc, 1),
    )
    halved: list[int] = []
    sizer = w.sizers.for_model("v1")
    real_failed = sizer.failed
    monkeypatch.setattr(sizer, "failed", lambda: halved.append(real_failed()) or halved[-1])
    t, codes = in_thread(w)
    try:
        wait_for(lambda: embedded(conn) == 40, timeout=60)
        assert t.is_alive() and not codes
    finally:
        w.stopping.set()
        t.join(30)
    assert halved == [5]  # once, for the one failure
    assert reads[0] == 10
    # The batch read while the failed one was written may still be of 10 (its success grows
    # the size back: 5 -> 7); a later read asks for fewer.
    assert min(reads[1:]) < 10
    assert queue_count(conn, "v1") == 0
    assert dead_letters(conn) == []


def test_a_failed_write_back_halves_only_its_models_batches(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    """Two models; v2's write-back fails: v2's next batch is halved, v1's is not."""
    register(conn, "v1", fake.url)
    register(conn, "v2", fake.url)
    insert_corpus(conn, 10)

    class FailingV2(Writer):
        def execute(self, conn: Any, model: str, *a: Any, **kw: Any) -> None:
            if model == "v2":
                raise psycopg.errors.DataError("simulated: v2's write-back is refused")
            super().execute(conn, model, *a, **kw)

    w = worker.Worker(
        settings(dsn, batch_size=10, max_batch_size=10, commit_target_seconds=60),
        writer_factory=FailingV2,
    )
    try:
        for name in ("v1", "v2"):
            m = db.get_model(conn, name)
            assert m is not None
            assert w.process_batch(m).read == 10
            w.writer.flush()
    finally:
        w.writer.settle()
        w.writer.shutdown()
        w.embedder.shutdown()
        w._reset_connections()
    assert (w.sizers.for_model("v1").size, w.sizers.for_model("v2").size) == (10, 5)
    assert w.batch_size == 5  # the heartbeat reports the smallest
    assert embedded(conn, "v1") == 10 and embedded(conn, "v2") == 0
    assert queue_count(conn, "v2") == 10


def test_a_failed_read_halves_the_next_read(
    conn: psycopg.Connection[Any],
    dsn: str,
    fake: FakeEmbeddingServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A read that fails (out of memory fetching up to batch_size bodies of 10 MiB) is retried
    for half as many messages."""
    register(conn, "v1", fake.url)
    insert_corpus(conn, 20)
    asked: list[int] = []
    real = worker.loop.db.read_batch

    def read_batch(c: Any, model: str, vt: int, qty: int) -> Any:
        asked.append(qty)
        if len(asked) == 1:
            raise psycopg.errors.OutOfMemory("simulated: out of memory")
        return real(c, model, vt, qty)

    monkeypatch.setattr(worker.loop.db, "read_batch", read_batch)
    w = drain(dsn, batch_size=16, min_batch_size=2, commit_target_seconds=60)
    assert asked[:2] == [16, 8]
    assert w.documents_done == 20
    assert queue_count(conn, "v1") == 0


def test_a_connection_lost_while_announcing_idle_does_not_end_the_worker(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    """The idle announcement runs between two passes, outside their retry: a restart that ends
    its connection there (chaos: AdminShutdown) must not end the worker; the next pass
    reconnects."""
    register(conn, "v1", fake.url)
    w = worker.Worker(settings(dsn))
    try:
        pid = w._connection().info.backend_pid
        conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
        w._served = ["v1"]
        assert w._announce_idle() is False
        insert_docs(conn, [("after", None, "Written after the lost connection.")])
        assert w.tick()[0] == 1  # reconnected
    finally:
        w.writer.shutdown()
