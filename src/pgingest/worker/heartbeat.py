"""The worker's heartbeat: its row in ``pgingest.workers`` and the queue gauges.

:class:`Heartbeat` is a daemon thread with its own connection that calls
``pgingest.heartbeat_v1`` every few seconds (the interval comes from ``pgingest.config``),
refreshes the queue depth, freshness lag, paused and circuit-breaker gauges of
:class:`~pgingest.metrics.Metrics`, and removes the row when the worker stops cleanly. What it
reports is a :class:`WorkerSnapshot` that ``loop.Worker.snapshot`` reads from the loop's
attributes. ``pgingest status`` (``pgingest.status``) reads the rows back.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg

from pgingest import __version__, db

# The logger of the heartbeat since before it moved here from pgingest.status (log filters).
log = logging.getLogger("pgingest.status")


@dataclass(frozen=True)
class WorkerSnapshot:
    """What a worker reports in each heartbeat (read from the worker loop's attributes)."""

    models: Sequence[str] = ()
    in_flight: int = 0
    batch_size: int | None = None
    documents: int = 0
    seconds_since_batch: float | None = None
    seconds_since_tick: float | None = None
    """Since the main loop last completed a pass (a hung loop: this grows, the beats go on)."""
    breakers: dict[str, str] = field(default_factory=dict)


class Heartbeat:
    """Keeps this worker's row in ``pgingest.workers`` fresh from a background thread.

    Its own autocommit connection (the worker's may be busy in a long batch); database errors
    are logged and retried at the next beat, so a restart of PostgreSQL costs a few missed beats.
    ``stop()`` deletes the row (a clean exit is not a stale worker); a killed process leaves it
    to go stale.
    """

    def __init__(
        self,
        conninfo: str | None,
        snapshot: Callable[[], WorkerSnapshot],
        *,
        metrics: Any | None = None,
        interval: float | None = None,
        worker_id: str | None = None,
        host: str | None = None,
        version: str = __version__,
        connect_params: dict[str, Any] | None = None,
    ) -> None:
        self.conninfo = conninfo
        self.snapshot = snapshot
        self.metrics = metrics
        self.interval = interval
        self.worker_id = worker_id or str(uuid.uuid4())
        self.host = host or socket.gethostname()
        self.version = version
        self.connect_params = {"connect_timeout": 10, **(connect_params or {})}
        self.pid = os.getpid()
        self._conn: psycopg.Connection[Any] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failures = 0

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = db.connect(
                self.conninfo,
                register_vector=False,
                application_name="pgingest-heartbeat",
                **self.connect_params,
            )
        return self._conn

    def _close(self) -> None:
        db.close_quietly(self._conn)
        self._conn = None

    def beat(self) -> float:
        """One heartbeat now; returns the seconds until the next one."""
        snap = self.snapshot()
        conn = self._connection()
        server_interval = db.heartbeat(
            conn,
            self.worker_id,
            self.host,
            self.pid,
            self.version,
            list(snap.models),
            snap.in_flight,
            snap.batch_size,
            snap.documents,
            snap.seconds_since_batch,
            {"breakers": dict(snap.breakers)},
            snap.seconds_since_tick,
        )
        if self.metrics is not None:
            self._refresh_gauges(conn, snap)
        return float(self.interval if self.interval is not None else max(server_interval, 1))

    def _refresh_gauges(self, conn: psycopg.Connection[Any], snap: WorkerSnapshot) -> None:
        assert self.metrics is not None
        wanted = set(snap.models)
        for row in db.queue_stats(conn):
            if wanted and row["model"] not in wanted:
                continue
            self.metrics.queue_depth(row["model"], int(row["queue_length"] or 0))
            self.metrics.freshness_lag(row["model"], float(row["oldest_age_seconds"] or 0.0))
        for m in db.live_models(conn):
            if wanted and m.name not in wanted:
                continue
            self.metrics.paused(m.name, m.paused)
            self.metrics.breaker_state(m.name, snap.breakers.get(m.name, "closed"))
        self.metrics.loop_age(snap.seconds_since_tick)
        self.metrics.refresh_database(conn)  # status views, connections: every 30 s at most

    def _run(self) -> None:
        delay = 0.0
        while not self._stop.wait(delay):
            try:
                delay = self.beat()
                if self._failures:
                    log.info("heartbeat restored", extra={"worker_id": self.worker_id})
                self._failures = 0
            except psycopg.Error as exc:
                self._failures += 1
                delay = float(self.interval or 10.0)
                if self._failures in (1, 10) or self._failures % 60 == 0:
                    log.warning(
                        "heartbeat failed",
                        extra={
                            "worker_id": self.worker_id,
                            "error": str(exc).strip()[:200],
                            "failures": self._failures,
                        },
                    )
                self._close()

    def start(self) -> Heartbeat:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._run, name="pgingest-heartbeat", daemon=True
            )
            self._thread.start()
        return self

    def stop(self, *, remove: bool = True, timeout: float = 10.0) -> None:
        """Stops the thread and (``remove``) deletes this worker's row."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if remove:
            try:
                db.worker_exit(self._connection(), self.worker_id)
            except psycopg.Error as exc:
                log.warning(
                    "could not remove the heartbeat row",
                    extra={"worker_id": self.worker_id, "error": str(exc).strip()[:200]},
                )
        self._close()
