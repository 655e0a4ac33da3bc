"""Backfills through the provider's Batch API (issue 25, point 4; worker/bulk.py,
sql/075_provider_batches.sql), against the fake provider's /v1/files and /v1/batches: one
submission per provider batch even across a worker's death, the same write-back and
exactly-once acknowledgement as online, rejected inputs dead-lettered with the provider's
reason, expired and failed requests embedded online, live writes online meanwhile."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from pgingest import providers, worker
from pgingest.testing.fake_provider import REJECT_MARKER, FakeEmbeddingServer
from tests.helpers import assert_exactly_predicted, insert_corpus, queue_count, register, settings


def bulk_settings(dsn: str, **kw: Any) -> worker.WorkerSettings:
    return settings(dsn, batch_api_poll_interval=0.1, **kw)


def batches(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    cur = conn.execute("SELECT * FROM pgingest.provider_batch_status ORDER BY id")
    assert cur.description is not None
    return [{d.name: v for d, v in zip(cur.description, r, strict=True)} for r in cur.fetchall()]


def v2_in_batch_mode(conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer) -> int:
    """v1 live and drained online, then v2 registered with its backfill through the Batch API.
    Returns the fake's online inputs so far."""
    register(conn, "v1", fake.url)
    worker.Worker(settings(dsn)).run()
    register(conn, "v2", fake.url, model_id="fake-768", dimensions=768)
    msg = conn.execute("SELECT pgingest.set_model_batch_api('v2')").fetchone()
    assert msg is not None and "Batch API" in msg[0]
    return int(fake.stats()["inputs"])


def test_a_backfill_goes_through_one_provider_batch(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    insert_corpus(conn, 40)
    online_before = v2_in_batch_mode(conn, dsn, fake)
    fake.configure(batch_completion_s=0.5)
    w = worker.Worker(bulk_settings(dsn))
    assert w.run() == 0
    stats = fake.stats()
    assert stats["batch_submissions"] == 1 and stats["files_uploaded"] == 1
    assert stats["inputs"] == online_before  # not one backfill input sent online
    assert_exactly_predicted(conn)
    assert_exactly_predicted(conn, "v2", 768)
    (b,) = batches(conn)
    assert b["state"] == "collected" and b["provider_status"] == "completed"
    assert b["messages"] == 40 and b["pending_messages"] == 0
    assert b["inputs"] == stats["batch_inputs"] > 0
    assert (b["inputs_embedded"], b["inputs_rejected"], b["inputs_online"]) == (b["inputs"], 0, 0)
    assert queue_count(conn, "v2") == 0


def test_live_writes_stay_online_while_the_backfill_waits_for_its_batch(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    insert_corpus(conn, 20)
    v2_in_batch_mode(conn, dsn, fake)
    # The backfill is queued (hidden) and handed to a provider batch that takes a while.
    fake.configure(batch_completion_s=3.0)
    w = worker.Worker(bulk_settings(dsn, drain=False))
    w.tick()  # queues the backfill, opens and submits the provider batch
    assert [b["state"] for b in batches(conn)] == ["submitted"]
    online_before = int(fake.stats()["inputs"])
    insert_corpus(conn, 3, start=100)  # live writes, for both models
    w.tick()
    w.writer.flush()
    live = conn.execute(
        "SELECT count(*) FROM pgingest.embedding_state AS s JOIN pgingest.documents AS d"
        " ON d.id = s.doc_id WHERE s.model = 'v2' AND d.key IN ('doc-100', 'doc-101', 'doc-102')"
    ).fetchone()
    assert live == (3,)  # embedded online at once
    assert int(fake.stats()["inputs"]) > online_before
    w.writer.shutdown()
    w.claims.stop()
    w.bulk.close(w._connection())  # as a worker that stops does: its successor goes on at once
    assert worker.Worker(bulk_settings(dsn)).run() == 0
    assert fake.stats()["batch_submissions"] == 1
    assert_exactly_predicted(conn)
    assert_exactly_predicted(conn, "v2", 768)


def test_rejected_inputs_are_dead_lettered_and_failed_requests_go_online(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    insert_corpus(conn, 30)
    conn.execute(
        "INSERT INTO pgingest.documents (key, body) VALUES ('poison', %s)",
        (f"Refused by the filter {REJECT_MARKER} in the batch as online.",),
    )
    online_before = v2_in_batch_mode(conn, dsn, fake)  # v1 dead-letters it online
    fake.configure(batch_completion_s=0.3, batch_fail_share=0.3, batch_fail_status=500)
    assert worker.Worker(bulk_settings(dsn)).run() == 0
    (b,) = batches(conn)
    assert b["inputs_rejected"] == 1
    assert b["inputs_online"] > 0  # the 500s: embedded online
    assert b["inputs_embedded"] + b["inputs_rejected"] + b["inputs_online"] == b["inputs"]
    assert int(fake.stats()["inputs"]) - online_before == b["inputs_online"]
    dead = conn.execute(
        "SELECT d.key, l.error_class, l.error_message FROM pgingest.dead_letters AS l"
        " JOIN pgingest.documents AS d ON d.id = l.doc_id WHERE l.model = 'v2'"
    ).fetchall()
    assert [(k, c) for k, c, _ in dead] == [("poison", "rejected_input")]
    assert "content filter" in dead[0][2]
    assert fake.stats()["batch_submissions"] == 1
    conn.execute("DELETE FROM pgingest.documents WHERE key = 'poison'")
    assert_exactly_predicted(conn, "v2", 768)


@pytest.mark.parametrize("outcome", ["expired", "cancelled", "failed"])
def test_an_expired_or_failed_batch_falls_back_to_online(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer, outcome: str
) -> None:
    insert_corpus(conn, 30)
    online_before = v2_in_batch_mode(conn, dsn, fake)
    fake.configure(batch_completion_s=0.3, batch_done_share=0.5, batch_outcome=outcome)
    assert worker.Worker(bulk_settings(dsn)).run() == 0
    (b,) = batches(conn)
    assert b["provider_status"] == outcome and b["state"] == "collected"
    assert b["inputs_online"] > 0
    if outcome == "failed":
        assert b["inputs_embedded"] == 0
    else:  # the first half of the requests ran
        assert 0 < b["inputs_embedded"] < b["inputs"]
    assert int(fake.stats()["inputs"]) - online_before == b["inputs_online"]
    assert fake.stats()["batch_submissions"] == 1
    assert_exactly_predicted(conn)
    assert_exactly_predicted(conn, "v2", 768)


class Died(BaseException):
    """The worker process dying (not an Exception: nothing catches it)."""


def test_a_successor_finds_the_batch_of_a_worker_that_died_and_never_submits_twice(
    conn: psycopg.Connection[Any],
    dsn: str,
    fake: FakeEmbeddingServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    insert_corpus(conn, 25)
    v2_in_batch_mode(conn, dsn, fake)
    fake.configure(batch_completion_s=0.3)
    real = providers.OpenAICompatibleProvider.create_batch

    def create_then_die(self: Any, *a: Any, **kw: Any) -> Any:
        real(self, *a, **kw)
        raise Died  # before the provider's batch id is recorded

    monkeypatch.setattr(providers.OpenAICompatibleProvider, "create_batch", create_then_die)
    with pytest.raises(Died):
        worker.Worker(bulk_settings(dsn)).run()
    monkeypatch.undo()
    (b,) = batches(conn)
    assert b["state"] == "preparing" and b["provider_batch_id"] is None and b["inputs"] > 0
    assert fake.stats()["batch_submissions"] == 1
    # Its lease runs out (as 10 minutes after a death); a successor takes the batch over.
    conn.execute("UPDATE pgingest.provider_batches SET leased_until = now() - interval '1 second'")
    assert worker.Worker(bulk_settings(dsn)).run() == 0
    assert fake.stats()["batch_submissions"] == 1 and fake.stats()["files_uploaded"] == 1
    (b,) = batches(conn)
    assert b["state"] == "collected" and b["inputs_embedded"] == b["inputs"]
    assert_exactly_predicted(conn)
    assert_exactly_predicted(conn, "v2", 768)


def test_a_worker_whose_lease_ran_out_while_preparing_never_submits(
    conn: psycopg.Connection[Any],
    dsn: str,
    fake: FakeEmbeddingServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A worker slow enough to lose its lease while it uploads (another worker took the batch
    over) stops before it creates the provider's batch; the batch is submitted once, by the
    lease's holder (found by a loaded chaos run: 5 batches created at the provider for 4)."""
    insert_corpus(conn, 20)
    v2_in_batch_mode(conn, dsn, fake)
    fake.configure(batch_completion_s=0.2)
    real = providers.OpenAICompatibleProvider.upload_batch_file

    slow = worker.Worker(bulk_settings(dsn))

    def upload_then_lose_the_lease(self: Any, data: bytes) -> str:
        file_id = real(self, data)
        conn.execute("UPDATE pgingest.provider_batches SET leased_by = 'a-successor'")
        slow.stopping.set()  # (its drain would wait for the batch another worker holds)
        return file_id

    monkeypatch.setattr(
        providers.OpenAICompatibleProvider, "upload_batch_file", upload_then_lose_the_lease
    )
    slow.run()
    monkeypatch.undo()
    assert fake.stats()["batch_submissions"] == 0 and fake.stats()["files_uploaded"] == 1
    (b,) = batches(conn)
    assert b["state"] == "preparing" and b["provider_batch_id"] is None
    # The successor's lease (as if it died in its turn) runs out; a worker finishes the batch.
    conn.execute("UPDATE pgingest.provider_batches SET leased_until = now() - interval '1 second'")
    assert worker.Worker(bulk_settings(dsn)).run() == 0
    assert fake.stats()["batch_submissions"] == 1
    (b,) = batches(conn)
    assert b["state"] == "collected" and b["inputs_embedded"] == b["inputs"] > 0
    assert_exactly_predicted(conn, "v2", 768)


def test_a_worker_whose_lease_ran_out_while_creating_cancels_its_batch(
    conn: psycopg.Connection[Any],
    dsn: str,
    fake: FakeEmbeddingServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The narrowest window: the lease runs out between the worker's last renewal and the
    provider's answer to POST /batches. The worker cannot record its batch, so it cancels it;
    the successor submits the batch once more and only that one is paid for and collected."""
    insert_corpus(conn, 20)
    v2_in_batch_mode(conn, dsn, fake)
    fake.configure(batch_completion_s=0.2)
    real = providers.OpenAICompatibleProvider.create_batch

    slow = worker.Worker(bulk_settings(dsn))

    def create_then_lose_the_lease(self: Any, file_id: str, metadata: dict[str, str]) -> Any:
        created = real(self, file_id, metadata)
        conn.execute("UPDATE pgingest.provider_batches SET leased_by = 'a-successor'")
        slow.stopping.set()
        return created

    monkeypatch.setattr(
        providers.OpenAICompatibleProvider, "create_batch", create_then_lose_the_lease
    )
    slow.run()
    monkeypatch.undo()
    (orphan,) = fake.batches()
    assert orphan["status"] in ("cancelling", "cancelled")
    (b,) = batches(conn)
    assert b["state"] == "preparing" and b["provider_batch_id"] is None
    conn.execute("UPDATE pgingest.provider_batches SET leased_until = now() - interval '1 second'")
    assert worker.Worker(bulk_settings(dsn)).run() == 0
    assert fake.stats()["batch_submissions"] == 2
    statuses = sorted(x["status"] for x in fake.batches())
    assert statuses == ["cancelled", "completed"]
    (b,) = batches(conn)
    assert b["state"] == "collected" and b["inputs_embedded"] == b["inputs"] > 0
    assert b["provider_batch_id"] != orphan["id"]
    assert_exactly_predicted(conn, "v2", 768)


def test_a_lease_keeps_other_workers_off_a_batch(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    insert_corpus(conn, 5)
    v2_in_batch_mode(conn, dsn, fake)
    conn.execute("SELECT pgingest.backfill_step_v1('v2', 100)")
    opened = conn.execute("SELECT pgingest.provider_batch_open_v1('v2', 100, 'a')").fetchone()
    assert opened is not None and opened[0] is not None
    assert conn.execute(
        "SELECT count(*) FROM pgingest.provider_batch_lease_v1('v2', 'b')"
    ).fetchone() == (0,)
    assert conn.execute(
        "SELECT count(*) FROM pgingest.provider_batch_lease_v1('v2', 'a')"
    ).fetchone() == (1,)
    # Nothing else waits for a batch: a second one is not opened.
    assert conn.execute("SELECT pgingest.provider_batch_open_v1('v2', 100, 'b')").fetchone() == (
        None,
    )
    assert not conn.execute(
        "SELECT pgingest.provider_batch_update_v1(%s, 'b', p_state => 'submitted')", (opened[0],)
    ).fetchone()[0]
    # Collected only once nothing is pending; messages cannot be taken before the batch ended.
    assert not conn.execute(
        "SELECT pgingest.provider_batch_update_v1(%s, 'a', p_state => 'collected')", (opened[0],)
    ).fetchone()[0]
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState):
        conn.execute(
            "SELECT * FROM pgingest.provider_batch_messages_v1(%s, 'a', 30, 10)", (opened[0],)
        )


def test_turning_the_batch_api_off_hands_waiting_backfills_to_the_online_path(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    insert_corpus(conn, 12)
    online_before = v2_in_batch_mode(conn, dsn, fake)
    conn.execute("SELECT pgingest.backfill_step_v1('v2', 100)")
    msg = conn.execute("SELECT pgingest.set_model_batch_api('v2', false)").fetchone()
    assert msg is not None and "12 waiting backfill messages made visible" in msg[0]
    assert worker.Worker(settings(dsn)).run() == 0
    assert fake.stats()["batch_submissions"] == 0
    assert int(fake.stats()["inputs"]) > online_before
    assert_exactly_predicted(conn)
    assert_exactly_predicted(conn, "v2", 768)


class OnlineOnly(providers.ProviderBase):
    """A provider with no Batch API: embeddings only (through the fake)."""

    def __init__(self, inner: providers.OpenAICompatibleProvider) -> None:
        self.inner = inner

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def dimensions(self) -> int:
        return self.inner.dimensions

    def embed(self, inputs: Any) -> Any:
        return self.inner.embed(inputs)


def test_a_provider_without_a_batch_api_gets_the_backfill_online(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    insert_corpus(conn, 10)
    online_before = v2_in_batch_mode(conn, dsn, fake)
    s = bulk_settings(dsn, provider_factory=lambda m: OnlineOnly(providers.for_model(m)))
    assert worker.Worker(s).run() == 0
    (b,) = batches(conn)
    assert b["state"] == "collected" and b["error"] == "the model's provider has no Batch API"
    assert fake.stats()["batch_submissions"] == 0
    assert int(fake.stats()["inputs"]) > online_before
    assert_exactly_predicted(conn)
    assert_exactly_predicted(conn, "v2", 768)


def test_the_cli_switches_the_batch_api_and_status_shows_the_batches(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer, capsys: Any
) -> None:
    from pgingest import cli

    def run(*argv: str) -> str:
        assert cli.main([*argv, "--database-url", dsn]) == 0
        return str(capsys.readouterr().out)

    insert_corpus(conn, 8)
    register(conn, "v1", fake.url)
    out = run(
        "model", "add", "v2", "--model-id", "fake-768", "--dimensions", "768",
        "--base-url", fake.url, "--batch-api",
    )  # fmt: skip
    assert "through the provider's Batch API" in out
    assert "backfills through the Batch API" in run("model", "batch-api", "v2")
    fake.configure(batch_completion_s=3.0)
    w = worker.Worker(bulk_settings(dsn, drain=False))
    w.tick()  # v1 online; v2's backfill handed to a provider batch
    w.tick()
    w.writer.flush()
    status = run("status")
    assert "BATCH API" in status and "v2 #1 batch_" in status and "submitted" in status
    w.writer.shutdown()
    w.claims.stop()
    w.bulk.close(w._connection())
    assert worker.Worker(bulk_settings(dsn)).run() == 0
    out = run("model", "batch-api", "v2")
    assert "collected (completed), 8 documents" in out and "0 rejected, 0 online" in out
    assert "backfills online" in run("model", "batch-api", "v2", "off")
    assert conn.execute("SELECT batch_api FROM pgingest.models WHERE name = 'v2'").fetchone() == (
        False,
    )
    assert_exactly_predicted(conn, "v2", 768)
