"""The worker loop: claim a batch, chunk, embed, validate, hand it to the writer.

:class:`Worker` only orchestrates. Decisions are in ``batch`` and ``inputs`` (pure), HTTP in
``embedding``, the write-back transaction in ``writer``, SQL in ``db``. No transaction is open
while HTTP runs: a batch is claimed in one short autocommit call, embedded with no transaction,
and written back in one short transaction on the writer's own connection (several when it
exceeds the write budget: ``batch.split``), while the next batch is claimed and embedded. A
failed read or write-back halves the batch size. Around the batches: the main loop (database errors retried with a
growing delay, ``--drain`` and its exit code, waiting for ``NOTIFY``), backfill, probes of
paused models and periodic maintenance.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg

from pgingest import __version__, chunking, db, providers
from pgingest.metrics import Metrics
from pgingest.settings import WorkerSettings
from pgingest.worker import batch as core
from pgingest.worker import memory
from pgingest.worker.bulk import Bulk, Results
from pgingest.worker.claims import ClaimKeeper
from pgingest.worker.embedding import Embedder
from pgingest.worker.heartbeat import Heartbeat, WorkerSnapshot
from pgingest.worker.inputs import Inputs, hash_inputs
from pgingest.worker.raw import RawStage
from pgingest.worker.writer import (
    MODEL_GONE,
    Timings,
    Writer,
    error_text,
    model_retired,
    passes_through,
)

log = logging.getLogger("pgingest.worker")

WriterFactory = Callable[[WorkerSettings, Metrics, core.BatchSizers], Writer]


@dataclass
class Prepared:
    """A batch ready to embed (:meth:`Worker.prepare`)."""

    batch: core.Batch
    inputs: Inputs  # of the jobs still to do, the vectors at hand filled in
    chunker_version: str
    t_read: float  # time.perf_counter() when it was read, and chunked
    t_chunked: float
    carried: list[db.Message] = field(default_factory=list)  # raw documents still in work


class Worker:
    def __init__(
        self,
        settings: WorkerSettings,
        metrics: Metrics | None = None,
        *,
        writer_factory: WriterFactory = Writer,
    ) -> None:
        """``writer_factory``: builds the write-back side (a test passes a ``Writer`` whose
        ``execute`` fails)."""
        self.s = settings
        self.metrics = metrics or Metrics()
        self.stopping = threading.Event()
        self.sizers = core.BatchSizers(  # one per model
            settings.batch_size,
            settings.min_batch_size,
            settings.max_batch_size,
            settings.commit_target_seconds,
            # a batch is embedded within a third of the visibility timeout at the observed pace,
            # and never less than 30 s of it (its claim is extended meanwhile anyway:
            # worker/claims.py; a short timeout must not shrink batches to nothing)
            embed_window=max(30.0, settings.visibility_timeout / 3),
        )
        self.embedder = Embedder(settings, self.metrics, self._pause, self.stopping)
        self.raw = RawStage(settings, metrics=self.metrics)  # raw documents (pools start lazily)
        self.writer = writer_factory(settings, self.metrics, self.sizers)
        self.connect_params = settings.connect_params()
        self.claims = ClaimKeeper(
            settings.conninfo, settings.visibility_timeout, connect_params=self.connect_params
        )
        self._last_probe: dict[str, float] = {}
        self._last_maintenance = time.monotonic()
        self._conn: psycopg.Connection[Any] | None = None
        self._listen: psycopg.Connection[Any] | None = None
        self._config: dict[str, str] = {}
        self._chunkers: dict[int, chunking.ChunkerConfig] = {}  # by chunking profile id
        self.hostname = socket.gethostname()
        self.in_flight = 0
        self.failed_batches = 0  # failed on the main thread (the writer counts its own)
        self.consecutive_failed = 0
        self._last_batch_end: float | None = None
        self._last_tick = time.monotonic()  # the main loop's progress (the heartbeat reports it)
        self._served: list[str] = []  # the live models the last pass served (tick)
        # of those, the ones not paused: a raw document parsed for one of them is kept for the
        # others' batches (RawStage.prepare(share=)); a paused model's batch would not come
        # for it, and the result would hold memory until SHARED_TTL
        self._sharing = 1
        # Per model: messages of raw documents still fetching or parsing, claimed, taken out of
        # their batch and brought into the model's next one (RawStage.prepare(carry=True)).
        self._carry: dict[str, list[db.Message]] = {}
        # Backfills through the provider's Batch API; provider batches leased by this process.
        self.bulk = Bulk(self, f"{self.hostname}:{os.getpid()}:{uuid.uuid4().hex[:8]}")
        self.heartbeat = (
            Heartbeat(
                settings.conninfo,
                self.snapshot,
                metrics=self.metrics,
                interval=settings.heartbeat_interval,
                connect_params=self.connect_params,
                host=self.hostname,
            )
            if settings.heartbeat
            else None
        )

    @property
    def batch_size(self) -> int:
        """The smallest batch size of the models (the heartbeat reports it)."""
        return self.sizers.size

    @property
    def documents_done(self) -> int:
        return self.writer.documents

    def snapshot(self) -> WorkerSnapshot:
        """What the heartbeat thread reports: plain attribute reads, no lock needed."""
        last = self._last_batch_end
        return WorkerSnapshot(
            models=list(self.s.models or ()),
            in_flight=self.in_flight,
            batch_size=self.batch_size,
            documents=self.documents_done,
            seconds_since_batch=None if last is None else time.monotonic() - last,
            seconds_since_tick=time.monotonic() - self._last_tick,
            breakers=self.embedder.breaker_states(),
        )

    # -- connections ---------------------------------------------------------------------------

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = db.connect(
                self.s.conninfo, application_name="pgingest-worker", **self.connect_params
            )
            self._config = db.get_config(self._conn)
        return self._conn

    def _listener(self) -> psycopg.Connection[Any]:
        if self._listen is None or self._listen.closed:
            self._listen = db.connect(
                self.s.conninfo,
                register_vector=False,
                application_name="pgingest-listen",
                **self.connect_params,
            )
            db.listen(self._listen)
        return self._listen

    def _reset_connections(self) -> None:
        db.close_quietly(self._conn)
        db.close_quietly(self._listen)
        self._conn = None
        self._listen = None
        self.writer.close()

    @property
    def max_attempts(self) -> int:
        if self.s.max_attempts is not None:
            return self.s.max_attempts
        return int(self._config.get("max_attempts", "5"))

    def chunker(self, m: db.Model) -> chunking.ChunkerConfig:
        """The chunker of the model's chunking profile (profiles never change: cached by id)."""
        config = self._chunkers.get(m.profile_id)
        if config is None:
            config = self._chunkers[m.profile_id] = chunking.ChunkerConfig(
                tokenizer=m.chunk_tokenizer,
                max_tokens=m.chunk_max_tokens,
                overlap_tokens=m.chunk_overlap_tokens,
                include_title=m.title_in_chunks,
            )
        return config

    # -- main loop -----------------------------------------------------------------------------

    def run(self) -> int:
        if self.s.install_signal_handlers:
            signal.signal(signal.SIGTERM, lambda *_: self.stopping.set())
            signal.signal(signal.SIGINT, lambda *_: self.stopping.set())
        log.info("worker started", extra={"pid": os.getpid(), "version": __version__})
        if self.heartbeat is not None:
            self.heartbeat.start()
        self.claims.start()
        failures = 0
        code = 0
        announced = False
        trimmed = True  # nothing to hand back before the first batch
        try:
            while not self.stopping.is_set():
                try:
                    worked, pending = self.tick()
                    failures = 0
                    self._last_tick = time.monotonic()
                except (psycopg.OperationalError, psycopg.errors.ReadOnlySqlTransaction) as exc:
                    self._last_tick = time.monotonic()  # a pass that ended, in a retry
                    # Connection lost, restart, failover (a standby answers read-only), or a
                    # statement cancelled on a healthy connection (statement or lock timeout,
                    # deadlock): retried with a growing delay either way.
                    failures += 1
                    delay = min(30.0, 0.5 * 2 ** min(failures, 6))
                    lost = (
                        self._conn is None
                        or self._conn.closed
                        or isinstance(exc, psycopg.errors.ReadOnlySqlTransaction)
                    )
                    log.warning(
                        "database unavailable, reconnecting"
                        if lost
                        else "database statement failed, retrying",
                        extra={
                            "error": str(exc).strip()[:200],
                            "sqlstate": exc.sqlstate,
                            "retry_in_s": delay,
                        },
                    )
                    if lost:
                        self.writer.settle()
                        self._reset_connections()
                        for name in list(self._carry):  # their claims may lapse meanwhile
                            self._drop_carry(name)
                    self.stopping.wait(delay)
                    continue
                if self.s.drain and self._write_kept_failing():
                    code = 4
                    break
                if worked:
                    announced = False
                    trimmed = False
                    continue
                if self.s.drain and not pending:
                    code = self._drained_exit_code()
                    break
                if not announced:
                    # The capture notifies only while a worker says it waits (issue 19): say so,
                    # then read once more (a write since the last read sent no notification).
                    announced = self._announce_idle()
                    if announced:
                        continue
                announced = False
                if not trimmed:
                    # Idle: the batches' free memory goes back to the system (worker/memory.py;
                    # kept while batches come one after another), once per idle spell.
                    memory.release_free_memory()
                    trimmed = True
                self._wait_for_work(self.s.poll_interval if not self.s.drain else 0.2)
        finally:
            if self.heartbeat is not None:
                self.heartbeat.stop()
            self.writer.settle()
            self.writer.shutdown()
            self._release_held()
            self.claims.stop()
            self.embedder.shutdown()
            self.raw.close()
            self._reset_connections()
            log.info("worker stopped")
        return code

    def _release_carry(self, model: str, delay: int) -> int:
        """Gives back the deliveries of the model's carried messages (``release_v2``: no attempt
        charged; their parses go on and a later delivery here takes the results)."""
        carried = self._drop_carry(model)
        if not carried:
            return 0
        ids = [c.msg_id for c in carried]
        try:
            return db.release(self._connection(), model, ids, [c.read_ct for c in carried], delay)
        except MODEL_GONE:
            return 0  # retired: nothing to give back
        except psycopg.OperationalError:
            raise  # the loop reconnects; the claims, dropped, expire
        except psycopg.Error as exc:  # not worth dying for: the claims, dropped, expire
            log.warning(
                "could not give back carried messages; they come back after the visibility timeout",
                extra={"model": model, "error": str(exc).splitlines()[0][:200]},
            )
            return 0

    def _drop_carry(self, model: str) -> list[db.Message]:
        """Forgets the model's carried messages and stops extending their claims; returns them."""
        carried = self._carry.pop(model, [])
        if carried:
            self.claims.drop(model, [c.msg_id for c in carried])
        return carried

    def _announce_idle(self) -> bool:
        """``worker_idle_v1`` for the models this worker serves. False when it could not (a
        schema older than the function: the capture then notifies on every statement anyway)."""
        if not self._served:
            return False
        try:
            db.worker_idle(self._connection(), self._served)
        except psycopg.errors.UndefinedFunction:
            return False
        except psycopg.OperationalError as exc:
            # A restart or a lost connection between two passes (this call is outside tick's
            # retry): not announced; the next pass reconnects.
            log.warning(
                "database unavailable, reconnecting", extra={"error": str(exc).strip()[:200]}
            )
            self._reset_connections()
            return False
        return True

    def _release_held(self) -> None:
        """On the way out: the claims still held (a batch interrupted by KeyboardInterrupt or
        SystemExit) are released with their deliveries given back (``release_v2``), so that
        stopping a worker charges no attempt, and the provider batches it leases are left to
        the others at once (worker/bulk.py). Best effort: if the database is unreachable they
        expire as after a crash."""
        held = self.claims.held()
        if not held and not self.bulk.leased:
            return
        conn: psycopg.Connection[Any] | None = None
        try:
            conn = db.connect(
                self.s.conninfo, application_name="pgingest-worker", **self.connect_params
            )
            self.bulk.close(conn)
            for model, claims in held.items():
                n = db.release(conn, model, list(claims), list(claims.values()), 0)
                self.claims.drop(model, list(claims))
                log.info("claims released on shutdown", extra={"model": model, "released": n})
        except Exception as exc:
            log.warning(
                "could not release the claims still held on shutdown; they expire",
                extra={"error": str(exc).strip().splitlines()[0][:200] if str(exc) else ""},
            )
        finally:
            db.close_quietly(conn)

    def _write_kept_failing(self) -> bool:
        """--drain: True once ``drain_max_write_failures`` batches in a row failed (exit 4, their
        messages still queued) rather than retrying the same failing batch forever."""
        limit = max(1, self.s.drain_max_write_failures)
        kept = max(self.writer.consecutive_failures, self.consecutive_failed) >= limit
        if kept:
            log.error(
                "write-backs kept failing; exiting --drain with their messages still queued",
                extra={"failures": limit},
            )
        return kept

    def _drained_exit_code(self) -> int:
        """--drain: 0 when every queue is empty; 3 when paused models still hold queued work."""
        conn = self._connection()
        waiting = [
            m.name
            for m in db.live_models(conn)
            if m.paused
            and (not self.s.models or m.name in self.s.models)
            and db.has_messages(conn, m.name)
        ]
        if waiting:
            log.warning(
                "queues drained except for paused models; their work is still queued",
                extra={"paused_models": ",".join(waiting)},
            )
            return 3
        log.info("queues drained, exiting")
        return 0

    def _wait_for_work(self, timeout: float) -> None:
        fresh = self._listen is None or self._listen.closed
        try:
            listener = self._listener()
            if fresh:
                # LISTEN began after the last read (the first wait, or the listening connection
                # was lost and opened again): a write in between notified nobody. Back to the
                # loop, which reads (and says it waits) once more before sleeping on it.
                return
            gen = listener.notifies(timeout=timeout, stop_after=1)
            for _ in gen:
                break
        except psycopg.OperationalError:
            self._listen = None
            self.stopping.wait(min(timeout, 1.0))

    def _maybe_maintain(self, conn: psycopg.Connection[Any]) -> None:
        """Dead-letter retention and cache bounds, every maintenance_interval seconds."""
        now = time.monotonic()
        if now - self._last_maintenance < self.s.maintenance_interval:
            return
        self._last_maintenance = now
        result = db.run_maintenance(conn)
        self.metrics.maintenance(result)
        if any(result.values()):
            log.info("maintenance", extra=result)

    def tick(self) -> tuple[int, bool]:
        """One pass over the live models. Returns (messages handled, anything left pending)."""
        conn = self._connection()
        self._maybe_maintain(conn)
        models = db.live_models(conn)
        if self.s.models:
            models = [m for m in models if m.name in self.s.models]
        self._served = [m.name for m in models]  # for _announce_idle, after this pass
        self._sharing = max(1, sum(1 for m in models if not m.paused))
        for name in [n for n in self._carry if n not in self._served]:
            self._release_carry(name, 0)  # no longer served here (retired, filtered out)
        worked = 0
        pending = False
        if models:
            # Attached tables' existing rows, in paced batches (sql/015_sources.sql).
            registered = db.source_backfill_step(conn, self.s.source_backfill_batch)
            if registered:
                pending = True
                if registered > 0:
                    log.info("source backfill queued", extra={"documents": registered})
        for m in models:
            if self.stopping.is_set():
                break
            if m.paused:
                self._release_carry(m.name, int(self.s.probe_interval))
                if self._maybe_probe(m):
                    pending = True  # resumed: its released messages come back (--drain waits)
                continue
            if not m.backfill_done:
                queued = db.backfill_step(conn, m.name, self.s.backfill_batch)
                if queued:  # -1: paced, the queue is deep enough for now
                    pending = True
                if queued > 0:
                    log.info("backfill queued", extra={"model": m.name, "documents": queued})
            # retry_in(), not allow(): a pass may send nothing (no message visible, all of them
            # cached, stale or deferred), and a half-open breaker's trial slot is taken by the
            # request that is really sent (Embedder.embed), never by the pass.
            if self.embedder.breaker(m.name).retry_in() > 0 or self.embedder.held(m.name):
                pending = True  # its provider rests (breaker open) or its quota is spent
                self._release_carry(m.name, 0)
                continue
            if m.batch_api and self.s.batch_api and self._bulk_step(m):
                pending = True  # a backfill waits for, or sits in, a provider batch
            try:
                stats = self.process_batch(m)
                busy = bool(stats.read or stats.deferred or stats.released)
                if not busy:
                    busy = db.has_messages(conn, m.name)
            except MODEL_GONE as exc:
                if not model_retired(self._connection(), m.name):
                    # Not a retirement: something the batch reads is gone (an attached
                    # table dropped or renamed, a mapped column renamed). The batch fails
                    # (its messages come back; --drain gives up after a few), never dropped
                    # as if the model were gone.
                    self._batch_failed(m, exc)
                    pending = True
                    continue
                # retire_model() ran while this batch was in flight: the model's queue and
                # column are gone, nothing is left to write or acknowledge. Not worth dying for.
                log.warning(
                    "model retired while its batch was in flight; batch dropped",
                    extra={"model": m.name, "error": str(exc).splitlines()[0][:200]},
                )
                self._drop_carry(m.name)
                continue
            except Exception as exc:
                if passes_through(exc):
                    raise
                # One of the main thread's own writes for this batch (a pause, a release) or
                # a bug on its way failed: that batch fails, not the worker. Its claims are
                # dropped (process_batch): the messages come back after the visibility timeout.
                self._batch_failed(m, exc)
                pending = True
                continue
            if stats.read:
                self.consecutive_failed = 0
            worked += stats.read
            if busy:
                pending = True
            if self._carry.get(m.name):
                # in work here: the next pass comes at once (no idle wait) and takes them
                worked += len(self._carry[m.name])
                pending = True
        if not worked:
            self.writer.flush()  # --drain must not exit, nor the queue look empty, mid-write
        return worked, pending

    def _bulk_step(self, m: db.Model) -> bool:
        """One step of the model's backfill through the provider's Batch API (worker/bulk.py);
        its failure fails that step, not the worker."""
        try:
            return self.bulk.step(m)
        except MODEL_GONE:
            return False
        except Exception as exc:
            if passes_through(exc):
                raise
            self._batch_failed(m, exc)
            return True

    def _batch_failed(self, m: db.Model, exc: Exception) -> None:
        self.failed_batches += 1
        self.consecutive_failed += 1
        self.metrics.batch_failed(m.name, type(exc).__name__)
        log.error(
            "batch failed; its messages come back after the visibility timeout",
            extra={"model": m.name, "error_class": type(exc).__name__, "error": error_text(exc)},
        )
        if self._conn is not None and not self._conn.closed:
            try:
                self._conn.rollback()  # autocommit: a no-op unless something left one open
            except Exception:
                log.debug("rollback failed", exc_info=True)
                self._reset_connections()

    # -- paused models ---------------------------------------------------------------------------

    def _pause(self, m: db.Model, exc: providers.ProviderError) -> None:
        db.pause_model(self._connection(), m.name, f"{exc.error_class}: {exc}")
        log.error(
            "model paused: the provider refused the credentials or the model",
            extra={"model": m.name, "error_class": exc.error_class, "error": str(exc)},
        )

    def _maybe_probe(self, m: db.Model) -> bool:
        """Probe a paused model when it is time; True when the probe resumed it."""
        if time.monotonic() - self._last_probe.get(m.name, 0.0) < self.s.probe_interval:
            return False
        self.embedder.forget(m.name)  # re-read the key from the environment or file
        try:
            self.embedder.provider(m).embed(["pgingest probe"])
        except providers.ProviderError as exc:
            log.info(
                "model still failing",
                extra={"model": m.name, "error_class": exc.error_class},
            )
            return False
        finally:
            # The interval runs from the probe's end: a probe that hangs until the HTTP timeout
            # (an endpoint that accepts and never answers) is not due again on the very next
            # pass, so the healthy models' batches go on in between.
            self._last_probe[m.name] = time.monotonic()
        db.resume_model(self._connection(), m.name)
        log.warning("model resumed after a successful probe", extra={"model": m.name})
        return True

    # -- one batch -------------------------------------------------------------------------------

    def process_batch(self, m: db.Model) -> core.BatchStats:
        try:
            stats = self._process_batch(m)
        finally:
            self.in_flight = 0
        if stats.read:
            self._last_batch_end = time.monotonic()  # documents_done: counted by the writer
        return stats

    def _process_batch(self, m: db.Model) -> core.BatchStats:
        conn = self._connection()
        stats = core.BatchStats()
        carried = self._carry.pop(m.name, [])  # claimed already: the batch takes them first
        try:
            msgs = self._read_new(m, conn, stats, carried)
        except Exception:
            if carried:
                self._carry[m.name] = carried  # still claimed: the next pass takes them
            raise
        if not msgs and not carried:
            return stats
        # Claimed until written: extended while the batch is embedded (worker/claims.py).
        self.claims.hold(m.name, msgs)
        msgs = carried + msgs
        stats.read = self.in_flight = len(msgs)
        ids = [msg.msg_id for msg in msgs]
        try:
            return self._embed_and_submit(m, conn, msgs, stats, carry=True)
        except Exception:
            # Not handed to the writer: the claims expire, except those of the messages carried
            # out of it (still parsing: the next pass takes them; the failure, such as an
            # earlier batch's write re-raised by the writer, was not theirs). (KeyboardInterrupt,
            # SystemExit: the worker stops and run() releases the claims still held, charging
            # nothing.)
            kept = {c.msg_id for c in self._carry.get(m.name, [])}
            self.claims.drop(m.name, [i for i in ids if i not in kept])
            raise

    def _read_new(
        self,
        m: db.Model,
        conn: psycopg.Connection[Any],
        stats: core.BatchStats,
        carried: list[db.Message],
    ) -> list[db.Message]:
        """The messages a batch reads beside the ``carried`` ones (up to the model's batch
        size), crash suspects isolated (``stats.released``: those given back)."""
        sizer = self.sizers.for_model(m.name)
        # A carried crash suspect keeps its isolation: nothing new joins it.
        if sizer.size <= len(carried) or any(c.crashes for c in carried):
            return []
        try:
            msgs = db.read_batch(conn, m.name, self.s.visibility_timeout, sizer.size - len(carried))
        except Exception as exc:
            if not isinstance(exc, MODEL_GONE):
                # Out of memory, a statement timeout, a message too large (up to batch_size
                # bodies of 10 MiB): the next read of this model asks for half as many.
                self.metrics.batch_size(sizer.failed())
            raise
        # Crash redeliveries: only a group of the most crashed suspects is processed, the rest
        # given back at once without charge (batch.isolate, sql/025_claims.sql). Suspects are
        # not mixed with carried messages: they wait for a batch of their own.
        msgs, aside = core.isolate(msgs)
        if carried and msgs and msgs[0].crashes:
            msgs, aside = [], aside + msgs
        if aside:
            stats.released = db.release(
                conn, m.name, [a.msg_id for a in aside], [a.read_ct for a in aside], 0
            )
            group = msgs or aside  # empty: the suspects wait for the carried messages
            log.warning(
                "crash redeliveries: processing a smaller group, the rest released",
                extra={
                    "model": m.name,
                    "crashes": group[0].crashes,
                    "group": len(msgs),
                    "released": len(aside),
                    "msg_ids": [msg.msg_id for msg in msgs][:16],
                },
            )
        return msgs

    def process_known(self, m: db.Model, msgs: list[db.Message], known: Results) -> core.BatchStats:
        """Messages taken back from a provider batch that ended (worker/bulk.py): written like
        an online batch, with ``known``'s vectors in place of requests."""
        stats = core.BatchStats(read=len(msgs))
        self.in_flight = len(msgs)
        self.claims.hold(m.name, msgs)
        try:
            return self._embed_and_submit(m, self._connection(), msgs, stats, known)
        except Exception:
            self.claims.drop(m.name, [msg.msg_id for msg in msgs])
            raise
        finally:
            self.in_flight = 0

    def prepare(
        self,
        m: db.Model,
        conn: psycopg.Connection[Any],
        msgs: list[db.Message],
        known: Results | None = None,
        *,
        carry: bool = False,
    ) -> Prepared:
        """What a batch of messages asks of the model: triaged, chunked, chunk counts checked,
        and its inputs with the vectors already at hand filled in (``known``: a provider
        batch's; then the embedding cache's). ``known``'s rejected inputs fail their documents
        first. The online path sends the rest; a provider batch (worker/bulk.py) is built from
        it. With ``carry`` (the online path), raw documents still fetching or parsing leave the
        batch in ``Prepared.carried`` (RawStage.prepare)."""
        # raw documents fetched, parsed and chunked on the fetch threads (worker/raw.py)
        msgs, raw = self.raw.prepare(conn, msgs, self.chunker(m), carry=carry, share=self._sharing)
        t0 = time.perf_counter()
        batch = core.triage(msgs, self.max_attempts)
        chunker = self.chunker(m)
        self.raw.chunk(batch, raw, chunker)
        core.chunk(batch, chunker)
        t_chunk = time.perf_counter()
        self.metrics.chunking_seconds(m.name, t_chunk - t0)
        core.check_chunks(batch, self.s.max_chunks_per_document)
        if known is not None and known.rejected:
            # A provider batch's results: the documents of an input it rejected are
            # dead-lettered with its reason; the other inputs take its vectors.
            for job in batch.todo():
                for h in hash_inputs(job):
                    err = known.rejected.get(h)
                    if err is not None:
                        job.fail(core.Failure("rejected", err.error_class, str(err)))
                        break
        inputs = Inputs(batch.todo(), m.name, m.dimensions)
        if inputs.jobs:
            if known is not None:
                inputs.fill_cached(
                    {h: known.vectors[h] for h in inputs.distinct() if h in known.vectors}
                )
            inputs.fill_cached(db.cached_vectors(conn, m.name, inputs.distinct()))
        carried = raw.carried if raw is not None else []
        return Prepared(batch, inputs, chunker.version, t0, t_chunk, carried)

    def _embed_and_submit(
        self,
        m: db.Model,
        conn: psycopg.Connection[Any],
        msgs: list[db.Message],
        stats: core.BatchStats,
        known: Results | None = None,
        *,
        carry: bool = False,
    ) -> core.BatchStats:
        p = self.prepare(m, conn, msgs, known, carry=carry)
        if p.carried:
            self._carry[m.name] = p.carried  # still claimed: the model's next batch takes them
            out = {c.msg_id for c in p.carried}
            msgs = [msg for msg in msgs if msg.msg_id not in out]
            stats.read -= len(p.carried)
            if not msgs:
                return stats  # all of it still in work
        batch, inputs = p.batch, p.inputs
        todo = inputs.jobs
        if todo:
            self.metrics.cache(m.name, inputs.hits, len(inputs.unseen()))
            sent = bool(inputs.unseen())
            t_send = time.perf_counter()
            if not self.embedder.embed(m, inputs):  # paused: the batch waits for a probe
                # Every message read, with its delivery given back: a pause charges no attempt
                # (an invalid message too: left to expire, it would come back as a suspect).
                ids = [msg.msg_id for msg in msgs]
                self.claims.drop(m.name, ids)
                stats.released += db.release(
                    conn, m.name, ids, [msg.read_ct for msg in msgs], int(self.s.probe_interval)
                )
                stats.released += self._release_carry(m.name, int(self.s.probe_interval))
                return stats
            if sent:
                self.sizers.for_model(m.name).embedded(time.perf_counter() - t_send, len(msgs))
        t_embed = time.perf_counter()

        for _ in core.validate([j for j in todo if j.failure is None and j.vectors is not None], m):
            self.metrics.embed_error(m.name, "validation")

        plan = core.settle(batch, self.max_attempts)
        self.writer.submit(
            m.name,
            plan,
            stats,
            p.chunker_version,
            m.profile_id,
            Timings(p.t_read, p.t_chunked, t_embed),
            done=functools.partial(self.claims.drop, m.name, [msg.msg_id for msg in msgs]),
        )
        return stats
