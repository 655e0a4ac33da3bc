"""Claims kept while a batch is in flight: its messages stay invisible until it is written.

A batch is claimed for the visibility timeout (``--visibility-timeout``). A slow provider
(retries, ``Retry-After``, a request that hangs until the HTTP timeout) can keep it longer than
that; without this, another worker would then claim the same messages, the provider would be
called twice and every delivery would spend an attempt, until good documents ended as
``attempts_exhausted``. A :class:`ClaimKeeper` thread, on its own connection, extends the
claims of every batch from its read until its write-back ends, every third of the visibility
timeout (``pgingest.extend_claims_v1``: only the messages still read as this worker read them).
A worker killed with SIGKILL extends nothing: its claims expire as before.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

import psycopg

from pgingest import db

log = logging.getLogger("pgingest.worker")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


class ClaimKeeper:
    def __init__(
        self,
        conninfo: str | None,
        visibility_timeout: int,
        *,
        connect_params: dict[str, Any] | None = None,
    ) -> None:
        self.conninfo = conninfo
        self.connect_params = dict(connect_params or {})
        self.vt = max(1, int(visibility_timeout))
        self.interval = max(0.5, self.vt / 3)
        self._held: dict[str, dict[int, int]] = {}  # model -> msg_id -> read_ct
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: psycopg.Connection[Any] | None = None
        self.extended = 0  # claims extended since the start (tests, logs)

    def hold(self, model: str, messages: Sequence[db.Message]) -> None:
        """Keeps ``messages`` (just read) claimed until :meth:`drop`."""
        with self._lock:
            held = self._held.setdefault(model, {})
            for m in messages:
                held[m.msg_id] = m.read_ct

    def drop(self, model: str, msg_ids: Sequence[int]) -> None:
        """Stops extending these claims (written, released, or given up)."""
        with self._lock:
            held = self._held.get(model)
            if held is None:
                return
            for i in msg_ids:
                held.pop(i, None)
            if not held:
                del self._held[model]

    def held(self) -> dict[str, dict[int, int]]:
        with self._lock:
            return {m: dict(h) for m, h in self._held.items()}

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="pgingest-claims", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        db.close_quietly(self._conn)
        self._conn = None

    def extend_now(self) -> int:
        """Extends every claim held now; returns how many the database extended."""
        n = 0
        for model, claims in self.held().items():
            if self._conn is None or self._conn.closed:
                self._conn = db.connect(
                    self.conninfo, application_name="pgingest-claims", **self.connect_params
                )
            try:
                n += db.extend_claims(
                    self._conn, model, list(claims), list(claims.values()), self.vt
                )
            except psycopg.OperationalError:
                raise  # the connection: no model's claims can be extended; the round ends
            except psycopg.Error as exc:
                # This model's claims only (retired while its batch is in flight, say; the loop
                # drops them when that batch ends): the other models' claims are still extended,
                # or their messages would be claimed again by another worker. (Autocommit: the
                # connection is usable for the next model.)
                log.warning(
                    "could not extend the claims of a model's batch in flight",
                    extra={"model": model, "error": _first_line(exc)},
                )
        self.extended += n
        return n

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.extend_now()
            except (psycopg.Error, OSError) as exc:
                # A lost connection or a retired model: the claims expire as they would have;
                # the next round reconnects.
                log.warning(
                    "could not extend the claims of the batches in flight",
                    extra={"error": _first_line(exc)},
                )
                db.close_quietly(self._conn)
                self._conn = None
