"""A ``systemctl stop`` in the middle of a parse (KillMode=control-group: SIGTERM to every process
of the service, the parse children included) does not dead-letter the document: the child goes
on, the worker finishes its batch and stops (review bug 8; before: ``parse_error: the parser
crashed (SIGTERM)``, a dead letter at once)."""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

import psycopg
import pytest

from pgingest import worker
from pgingest.testing.fake_provider import FakeEmbeddingServer
from tests.helpers import queue_count, settings
from tests.test_raw_worker import _state, model, moto, raw_env  # noqa: F401

pytestmark = pytest.mark.timeout(120)


def test_sigterm_to_the_parse_children_mid_parse_costs_nothing(
    model: psycopg.Connection[Any],  # noqa: F811
    dsn: str,
    fake: FakeEmbeddingServer,
    raw_env: str,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    conn = model
    monkeypatch.setenv("PGINGEST_RAW_TEST_HOOKS", "1")
    monkeypatch.setenv("PGINGEST_RAW_PARSE_TIMEOUT", "60")
    conn.execute("CREATE TABLE public.blobs (name text PRIMARY KEY, data bytea, mime text)")
    conn.execute(
        "SELECT pgingest.add_source('blobs', 'public.blobs', content => 'data', mime => 'mime')"
    )
    # the "slow" hook: the parse takes 2 s more (a big PDF, say), then goes on as usual
    conn.execute(
        "INSERT INTO public.blobs VALUES"
        " ('slow', 'some words to embed', 'application/x-pgingest-test-slow')"
    )
    w = worker.Worker(settings(dsn, parse_processes=1, raw_wait_seconds=30))
    th = threading.Thread(target=w.run, daemon=True)
    th.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (w.raw._pool and w.raw._inflight):
        time.sleep(0.02)
    time.sleep(0.7)  # the parse is under way
    assert w.raw._pool is not None
    children = w.raw._pool.child_pids
    assert children and w.raw._inflight
    for pid in children:
        os.kill(pid, signal.SIGTERM)  # what systemd sends to every process of the unit
    w.stopping.set()  # what the worker's own SIGTERM handler does
    th.join(60)
    assert not th.is_alive()
    assert conn.execute("SELECT error_class FROM pgingest.dead_letters").fetchall() == []
    assert _state(conn, "blobs") == {"slow": "embedded"}
    assert queue_count(conn, "v1") == 0
