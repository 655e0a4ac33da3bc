"""The worker's write-back side: a ``batch.WritePlan`` executed in one transaction, or in several
when it exceeds the write budget (``--write-max-chunks``, ``--write-max-bytes``: ``batch.split``),
each acknowledging exactly the messages of the documents it writes.

Pipelining: batch k is written on this side's own connection and thread while batch k+1 is read,
chunked and embedded. The contract (tested end to end in ``tests/test_worker.py``):

* one write in flight: :meth:`Writer.submit` waits for the previous write (backpressure);
* a failed write does not drop the next, already embedded batch: only the failed batch's
  messages wait for their visibility timeout. A lost connection or a cancelled statement
  (``RETRIED``) is raised by ``submit`` after the next batch has been handed over (the loop
  reconnects or retries); any other error (``DataError``, ``UnicodeEncodeError``, a value out of
  range, a bug) fails that batch only: logged with the model and the message ids, counted
  (``pgingest.batch.failures``), the connection reset, the worker goes on; of a batch written
  in several transactions only the failed one's messages wait, the others are written;
* a failed write-back halves the batch size (``BatchSizer.failed``): a batch too large to write
  is not read again at the same size;
* ``--drain`` never exits mid-write: the loop calls :meth:`Writer.flush` before it looks at
  the queues.

:meth:`Writer.execute` is the transaction itself (``complete_batch_v2``, ``dead_letter_v1``,
``defer_v1``), and the seam where a test injects a write failure.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, NamedTuple

import psycopg

from pgingest import db, providers
from pgingest.metrics import Metrics
from pgingest.settings import WorkerSettings
from pgingest.worker.batch import BatchSizers, BatchStats, Job, WritePlan, split

log = logging.getLogger("pgingest.worker")

# What a batch of a model retired under the worker's feet raises (no live model, no queue
# table, no store): the batch is dropped, the worker goes on.
MODEL_GONE = (
    psycopg.errors.UndefinedObject,
    psycopg.errors.UndefinedTable,
    psycopg.errors.UndefinedColumn,
)

# What the worker loop handles itself: a lost connection, a restart or failover, a cancelled
# statement (statement or lock timeout): reconnect or retry.
RETRIED = (psycopg.OperationalError, psycopg.errors.ReadOnlySqlTransaction)


def model_retired(conn: psycopg.Connection[Any], model: str) -> bool:
    """Whether ``model`` is retired (or gone) now: what an undefined table, column or object in
    its batch means only then. Otherwise something the batch reads or writes is missing (an
    attached table dropped or renamed, a mapped column renamed, a store renamed by hand): the
    batch fails and its messages come back, never dropped as if the model were gone."""
    try:
        conn.rollback()  # autocommit: a no-op unless the failed statement left one open
        found = db.get_model(conn, model)
    except psycopg.Error:
        return True  # cannot tell: as before, the batch is dropped and its claims expire
    return found is None or found.state == "retired"


def passes_through(exc: BaseException) -> bool:
    """True for what is not one batch's failure: the loop's reconnect path, a retired model,
    or not an ``Exception`` at all (KeyboardInterrupt, SystemExit)."""
    return isinstance(exc, RETRIED + MODEL_GONE) or not isinstance(exc, Exception)


def error_text(exc: BaseException) -> str:
    """An exception's type and first line, safe to log whatever it holds (NUL, surrogates)."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return providers.clean_text(f"{type(exc).__name__}: {first}")[:300]


class Timings(NamedTuple):
    """``time.perf_counter()`` when the batch was read, chunked and embedded."""

    read: float
    chunked: float
    embedded: float


class Writer:
    def __init__(self, settings: WorkerSettings, metrics: Metrics, sizers: BatchSizers) -> None:
        self.s = settings
        self.metrics = metrics
        self.sizers = sizers
        self.documents = 0  # written since the start (the heartbeat reports it)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pgingest-writer")
        self._pending: Future[BatchStats] | None = None
        self._conn: psycopg.Connection[Any] | None = None
        self.failures = 0  # write-backs failed with an unexpected error since the start
        self.consecutive_failures = 0  # since the last write-back that succeeded

    def connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = db.connect(
                self.s.conninfo, application_name="pgingest-writer", **self.s.connect_params()
            )
        return self._conn

    def submit(
        self,
        model: str,
        plan: WritePlan,
        stats: BatchStats,
        chunker: str,
        profile_id: int,
        timings: Timings,
        done: Callable[[], None] | None = None,
    ) -> None:
        """Hands a batch over once the write in flight has ended; re-raises that write's error
        after the hand-over (this batch is embedded: it is written anyway). ``done`` runs on
        the writer thread when this batch's write has ended, whatever its outcome."""
        try:
            self.flush()
        finally:
            self._pending = self._pool.submit(
                self._write, model, plan, stats, chunker, profile_id, timings, done
            )

    def flush(self) -> None:
        """Waits for the write in flight; re-raises its error in the calling thread."""
        fut, self._pending = self._pending, None
        if fut is None:
            return
        try:
            fut.result()
        except MODEL_GONE as exc:  # retired while its batch was being written: as in tick()
            log.warning(
                "model retired while its batch was in flight; batch dropped",
                extra={"error": str(exc).splitlines()[0][:200]},
            )

    def settle(self) -> None:
        """Waits for the write in flight before its connection is closed; a failure only logs
        (its messages come back after their visibility timeout)."""
        try:
            self.flush()
        except Exception:
            log.warning("write-back of the last batch failed", exc_info=True)

    def close(self) -> None:
        db.close_quietly(self._conn)
        self._conn = None

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True)

    # -- on the writer thread ------------------------------------------------------------------

    def _write(
        self,
        model: str,
        plan: WritePlan,
        stats: BatchStats,
        chunker: str,
        profile_id: int,
        timings: Timings,
        done: Callable[[], None] | None = None,
    ) -> BatchStats:
        """The write (split into transactions within the write budget: ``batch.split``), then
        its counters, the batch-size adaptation and the batch log line. A failed transaction
        fails its own part only (its messages come back after their visibility timeout; the
        parts after it are still written) and halves the batch size."""
        t_write = time.perf_counter()
        sizer = self.sizers.for_model(model)
        parts = split(plan, self.s.write_max_chunks, self.s.write_max_bytes)
        failed = 0
        try:
            for i, part in enumerate(parts):
                part_stats = BatchStats()
                try:
                    self.execute(self.connection(), model, part, part_stats, chunker, profile_id)
                except Exception as exc:
                    if isinstance(exc, RETRIED):
                        # A statement timeout, out of memory, a message too large, a lost
                        # connection: smaller batches next (the loop retries or reconnects).
                        self.metrics.batch_size(sizer.failed())
                    if passes_through(exc) and not (
                        isinstance(exc, MODEL_GONE) and not model_retired(self.connection(), model)
                    ):
                        raise
                    # This part's failure, not the worker's: nothing of it was committed, its
                    # messages come back after their visibility timeout.
                    self._failed(model, part, exc, f"{i + 1}/{len(parts)}")
                    failed += 1
                    continue
                self.consecutive_failures = 0
                self._report(model, part, part_stats)
                _add(stats, part_stats)
        finally:
            if done is not None:
                done()  # stops extending the claims, whatever the outcome
        t_done = time.perf_counter()
        if failed:
            self.metrics.batch_size(sizer.failed())
            if failed == len(parts):
                return stats
        else:
            self.metrics.batch_size(sizer.observe(t_done - t_write, stats.read))
        self.documents += stats.written
        self.metrics.batch(model, t_done - t_write, stats.read)
        log.info(
            "batch",
            extra={
                "model": model,
                "messages": stats.read,
                "written": stats.written,
                "stale": stats.stale,
                "chunks": stats.chunks,
                "dead": stats.dead,
                "deferred": stats.deferred,
                "writes": len(parts),
                "failed_writes": failed,
                "chunk_ms": round((timings.chunked - timings.read) * 1000, 1),
                "embed_ms": round((timings.embedded - timings.chunked) * 1000, 1),
                "write_ms": round((t_done - t_write) * 1000, 1),
                "write_wait_ms": round((t_write - timings.embedded) * 1000, 1),
                "next_batch": sizer.size,
            },
        )
        return stats

    def execute(
        self,
        conn: psycopg.Connection[Any],
        model: str,
        plan: WritePlan,
        stats: BatchStats,
        chunker: str,
        profile_id: int = 1,
    ) -> None:
        """The plan in one transaction; fills the counters of ``stats``. ``chunker`` and
        ``profile_id``: the chunker version and the chunking profile the batch was cut with."""
        with conn.transaction():
            msg_ids = plan.ack + [i for j in plan.done for i in j.msg_ids]
            if msg_ids or plan.done:
                stats.written, stats.stale, stats.chunks = db.complete_batch(
                    conn,
                    model,
                    msg_ids,
                    [j.doc_id for j in plan.done],
                    [j.content_hash for j in plan.done],
                    _rows(plan.done),
                    chunker,
                    profile_id,
                )
            if plan.dead:
                d = plan.dead
                db.dead_letter(
                    conn,
                    model,
                    [r.msg_id for r in d],
                    [r.doc_id for r in d],
                    [r.content_hash for r in d],
                    [r.error_class for r in d],
                    [r.message for r in d],
                    [r.attempts for r in d],
                    [r.payload for r in d],
                )
                stats.dead = len(d)
            for deferral in (plan.rate_limited, plan.transient):
                if deferral is not None:
                    db.defer(conn, model, deferral.msg_ids, deferral.messages, deferral.delay)
                    stats.deferred += len(deferral.msg_ids)

    def _failed(self, model: str, plan: WritePlan, exc: Exception, part: str = "1/1") -> None:
        self.failures += 1
        self.consecutive_failures += 1
        self.metrics.batch_failed(model, type(exc).__name__)
        log.error(
            "write-back failed; the batch's messages come back after the visibility timeout",
            extra={
                "model": model,
                "write": part,
                "msg_ids": ",".join(str(i) for i in plan_msg_ids(plan)),
                "error_class": type(exc).__name__,
                "error": error_text(exc),
                "consecutive_failures": self.consecutive_failures,
            },
        )
        self.reset()

    def reset(self) -> None:
        """Rolls back whatever the failed write left open by closing the connection; the next
        write opens a new one."""
        conn = self._conn
        if conn is not None and not conn.closed:
            try:
                conn.rollback()
            except Exception:  # a connection in an unknown state: closed below anyway
                log.debug("rollback failed", exc_info=True)
        self.close()

    def _report(self, model: str, plan: WritePlan, stats: BatchStats) -> None:
        self.metrics.documents(model, "embedded", stats.written)
        self.metrics.documents(model, "stale", stats.stale + len(plan.ack))
        self.metrics.chunks(model, stats.chunks)
        for row in plan.dead:
            self.metrics.dead_letter(model, row.error_class)
        if plan.rate_limited is not None:
            self.metrics.deferred(model, "rate_limited", len(plan.rate_limited.msg_ids))
        if plan.transient is not None:
            self.metrics.deferred(model, "transient", len(plan.transient.msg_ids))
        for job in plan.dead_jobs():
            assert job.failure is not None
            log.warning(
                "document dead-lettered",
                extra={
                    "model": model,
                    "doc_id": job.doc_id,
                    "doc_key": _loggable_key(job.doc_key),
                    "error_class": job.failure.error_class,
                    "error": job.failure.message[:300],
                },
            )


_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def _loggable_key(key: str | None) -> str | None:
    """A document's key for the log: a URI in it (a raw source's row key: the URI itself, or a
    composite key as JSON) without userinfo or query string, as in the error messages (a
    presigned URL's signature, credentials written into an s3:// URI)."""
    if key is None or "://" not in key:
        return key
    from pgingest.raw.fetch import redact_uri

    def clean(v: Any) -> Any:
        return redact_uri(v) if isinstance(v, str) and "://" in v else v

    if _SCHEME.match(key):
        return redact_uri(key)
    try:
        value = json.loads(key)
    except ValueError:
        return "<a key naming a URI>"
    if isinstance(value, dict):
        return json.dumps({k: clean(v) for k, v in value.items()})
    if isinstance(value, list):
        return json.dumps([clean(v) for v in value])
    return "<a key naming a URI>"


def _add(total: BatchStats, part: BatchStats) -> None:
    """Adds the counters a written part filled to the batch's."""
    total.written += part.written
    total.stale += part.stale
    total.chunks += part.chunks
    total.dead += part.dead
    total.deferred += part.deferred


def plan_msg_ids(plan: WritePlan) -> list[int]:
    """Every message a write plan touches."""
    ids = list(plan.ack)
    ids += [i for j in plan.done for i in j.msg_ids]
    ids += [r.msg_id for r in plan.dead]
    for deferral in (plan.rate_limited, plan.transient):
        if deferral is not None:
            ids += deferral.msg_ids
    return sorted(set(ids))


def _rows(done: list[Job]) -> db.ChunkRows:
    """The chunks of the jobs with vectors, as the column arrays of ``complete_batch_v2``."""
    rows = db.ChunkRows([], [], [], [], [], [], [], [])
    for job in done:
        assert job.vectors is not None
        for c, h, v in zip(job.chunks, job.hashes, job.vectors, strict=True):
            rows.doc_ids.append(job.doc_id)
            rows.ordinals.append(c.ordinal)
            rows.contents.append(c.text)
            rows.chunk_hashes.append(h)
            rows.token_counts.append(c.token_count)
            rows.char_starts.append(c.char_start)
            rows.char_ends.append(c.char_end)
            rows.embeddings.append(v)
    return rows
