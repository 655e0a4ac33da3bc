"""Pacing within a provider's quota, shared by every worker of a model (issue 25, point 3): the
fake provider enforces requests/tokens per minute like the hosted APIs (token buckets, 429 with
Retry-After, x-ratelimit-* headers); pgingest.provider_quota holds the shared buckets."""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
import pytest

from pgingest import worker
from pgingest.testing.fake_provider import FakeEmbeddingServer, count_tokens
from tests.helpers import assert_exactly_predicted, expected_chunks, register, settings


def documents_of(conn: psycopg.Connection[Any], n: int) -> int:
    """``n`` documents of 2-3 chunks; returns the tokens of their distinct chunks (identical
    chunks are sent once) as the fake's quota counts them."""
    conn.execute(
        "INSERT INTO pgingest.documents (key, title, body)"
        " SELECT 'k' || g, 'Title ' || g,"
        "  repeat('Quota pacing shares one budget among workers, sentence ' || g || '. ', 30 + g %% 20)"
        " FROM generate_series(1, %s) AS g",
        (n,),
    )
    return count_tokens({c.embed_input for cs in expected_chunks(conn).values() for c in cs})


def rejected(fake: FakeEmbeddingServer) -> int:
    return sum(fake.stats()["quota_rejected"].values())


def quota_row(conn: psycopg.Connection[Any], model: str = "v1") -> dict[str, Any]:
    cur = conn.execute("SELECT * FROM pgingest.provider_quota WHERE model = %s", (model,))
    row = cur.fetchone()
    assert row is not None and cur.description is not None
    return {d.name: v for d, v in zip(cur.description, row, strict=True)}


def test_take_observe_and_reject_in_sql(conn: psycopg.Connection[Any], fake: Any) -> None:
    register(conn, "v1", fake.url)

    def take(tokens: int) -> float | None:
        row = conn.execute("SELECT pgingest.quota_take_v1('v1', %s)", (tokens,)).fetchone()
        assert row is not None
        return None if row[0] is None else float(row[0])

    assert take(1000) is None  # no quota known: no pacing
    # 10 tokens per second, no headroom (the default keeps 3% unused)
    conn.execute("SELECT pgingest.set_model_quota('v1', NULL, 600, 0)")
    assert take(600) == 0.0  # the bucket starts with a minute of quota
    assert take(100) == pytest.approx(10.0, abs=0.2)  # owed: 100 tokens at 10/s
    assert take(50) == pytest.approx(15.0, abs=0.2)  # queued behind the first
    conn.execute("SELECT pgingest.quota_rejected_v1('v1', 3)")
    q = quota_row(conn)
    assert q["pace"] == pytest.approx(0.8) and q["rejections"] == 1
    conn.execute("SELECT pgingest.quota_rejected_v1('v1', 3)")  # same burst: cut once
    assert quota_row(conn)["pace"] == pytest.approx(0.8)
    # A configured quota keeps its limits whatever the headers say.
    conn.execute("SELECT pgingest.set_model_quota('v1', 100, 600000)")
    conn.execute("SELECT pgingest.quota_observe_v1('v1', 5, 1000, 4, 10)")
    q = quota_row(conn)
    assert (q["requests_per_minute"], q["tokens_per_minute"], q["source"]) == (
        100,
        600000,
        "configured",
    )
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        conn.execute("SELECT pgingest.set_model_quota('v1', 0, NULL)")
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        conn.execute("SELECT pgingest.set_model_quota('v1', 10, NULL, 1)")
    conn.execute("SELECT pgingest.set_model_quota('v1')")  # forget: learned again
    assert conn.execute("SELECT count(*) FROM pgingest.provider_quota").fetchone() == (0,)
    conn.execute("SELECT pgingest.quota_observe_v1('v1', 5, 1000, 4, 10)")
    q = quota_row(conn)
    assert (q["requests_per_minute"], q["tokens_per_minute"], q["source"]) == (5, 1000, "headers")
    # what remains, less the headroom
    assert (q["request_level"], q["token_level"]) == (pytest.approx(3.88), pytest.approx(9.7))
    conn.execute("SELECT pgingest.quota_observe_v1('v1', 5, 2000, 5, 2000)")
    q = quota_row(conn)
    assert q["tokens_per_minute"] == 2000 and q["token_level"] == pytest.approx(9.7)  # followed


def test_a_configured_quota_is_never_exceeded(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    """Tokens worth 1.04 minutes of quota: most go from the bucket (a minute of quota, less the
    3% headroom), the rest is paced (about 6 s); no 429 (the same worker unpaced meets them)."""
    register(conn, "v1", fake.url)
    total = documents_of(conn, 60)
    tpm = int(total / 1.04)
    fake.configure(quota={"tpm": tpm})
    conn.execute("SELECT pgingest.set_model_quota('v1', NULL, %s)", (tpm,))
    w = worker.Worker(settings(dsn, batch_size=20, request_max_inputs=8))
    assert w.run() == 0
    assert rejected(fake) == 0
    pacer = w.embedder.pacer("v1")
    assert pacer is not None and pacer.waits > 0
    assert quota_row(conn)["taken_tokens"] == total
    assert_exactly_predicted(conn)


def test_the_quota_is_learned_from_the_headers(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    """Nothing configured: the first answers' x-ratelimit-* headers teach the limit and what
    remains, and the worker paces from then on (at most the requests already in flight when it
    learned can meet a 429)."""
    register(conn, "v1", fake.url)
    total = documents_of(conn, 60)
    tpm = int(total / 1.04)
    fake.configure(quota={"tpm": tpm, "rpm": 10_000})
    w = worker.Worker(settings(dsn, batch_size=20, request_max_inputs=8))
    assert w.run() == 0
    q = quota_row(conn)
    assert q["source"] == "headers"
    assert (q["tokens_per_minute"], q["requests_per_minute"]) == (tpm, 10_000)
    assert rejected(fake) <= 2
    assert_exactly_predicted(conn)


def test_two_workers_share_one_quota(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    """Two workers (as on two machines: each its own connections) take from the same buckets:
    together they stay within the quota."""
    register(conn, "v1", fake.url)
    total = documents_of(conn, 80)
    tpm = int(total / 1.04)
    fake.configure(quota={"tpm": tpm})
    conn.execute("SELECT pgingest.set_model_quota('v1', NULL, %s)", (tpm,))
    workers = [worker.Worker(settings(dsn, batch_size=10, request_max_inputs=8)) for _ in range(2)]
    threads = [threading.Thread(target=w.run) for w in workers]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads)
    assert rejected(fake) == 0
    assert all(w.documents_done > 0 for w in workers)  # both took part
    assert quota_row(conn)["taken_tokens"] == total
    # Paced: the tokens beyond the first minute's bucket took at least their time at the quota.
    assert time.monotonic() - t0 >= 0.9 * (total - tpm) / (tpm / 60)
    assert_exactly_predicted(conn)


def test_the_cli_sets_shows_and_clears_a_quota(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer, capsys: Any
) -> None:
    from pgingest import cli

    register(conn, "v1", fake.url)

    def run(*argv: str) -> str:
        assert cli.main([*argv, "--database-url", dsn]) == 0
        return str(capsys.readouterr().out)

    assert "no quota known" in run("model", "quota", "v1")
    out = run("model", "quota", "v1", "--rpm", "3000", "--tpm", "1000000", "--headroom", "0.1")
    assert "3,000 requests/min, 1,000,000 tokens/min (configured, 10% headroom)" in out
    q = quota_row(conn)
    assert (q["requests_per_minute"], q["tokens_per_minute"], q["headroom"]) == (3000, 1e6, 0.1)
    status = run("status")
    assert "QUOTAS" in status and "v1: 3,000 requests/min" in status
    assert "no quota known" in run("model", "quota", "v1", "--clear")
    assert conn.execute("SELECT count(*) FROM pgingest.provider_quota").fetchone() == (0,)


def test_a_spent_quota_defers_its_model_and_never_starves_the_others(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    """v2's quota (a backfill's new model) has no room for a while: its batches are deferred
    (no attempt spent: one allowed) and the worker serves v1 meanwhile; both end embedded."""
    register(conn, "v1", fake.url)
    register(conn, "v2", fake.url, model_id="fake-768", dimensions=768)
    total = documents_of(conn, 60)
    tpm = int(total / 1.08)
    conn.execute("SELECT pgingest.set_model_quota('v2', NULL, %s)", (tpm,))
    w = worker.Worker(
        settings(dsn, batch_size=10, request_max_inputs=8, max_attempts=1, quota_max_wait=0.5)
    )
    t = threading.Thread(target=w.run)
    t0 = time.monotonic()
    t.start()

    def embedded(model: str) -> int:
        row = conn.execute(
            "SELECT count(*) FROM pgingest.embedding_state WHERE model = %s", (model,)
        ).fetchone()
        return int(row[0]) if row else 0

    v1_done = None
    while t.is_alive() and time.monotonic() - t0 < 120:
        if v1_done is None and embedded("v1") == 60:
            v1_done = time.monotonic() - t0
        time.sleep(0.05)
    t.join(5)
    total_s = time.monotonic() - t0
    assert not t.is_alive()
    assert embedded("v1") == 60 and embedded("v2") == 60
    assert v1_done is not None and v1_done < total_s / 2  # v1 never waited for v2's quota
    assert conn.execute("SELECT count(*) FROM pgingest.dead_letters").fetchone() == (0,)
    assert quota_row(conn, "v2")["taken_tokens"] == total
