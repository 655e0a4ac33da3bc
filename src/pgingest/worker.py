"""The worker loop: claim messages, chunk, embed, validate, write back, dead-letter.

Only orchestration lives here: chunking (``chunking``), vector checks (``vectors``), HTTP
(``providers``) and SQL (``db``) are separate. No transaction is open while HTTP runs: a batch is
claimed in one short autocommit call, embedded with no transaction, and written back with one
short transaction (``complete_batch_v1`` + ``dead_letter_v1`` + ``defer_v1``).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import random
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import psycopg

from pgingest import __version__, chunking, db, providers, status, vectors
from pgingest.metrics import Metrics
from pgingest.settings import WorkerSettings

log = logging.getLogger("pgingest.worker")

# What a batch of a model retired under the worker's feet raises (no live model, no queue
# table, no column): the batch is dropped, the worker goes on.
_MODEL_GONE = (
    psycopg.errors.UndefinedObject,
    psycopg.errors.UndefinedTable,
    psycopg.errors.UndefinedColumn,
)

# A dead letter to write: (msg_id, doc_id, content hash, error class, message, attempts, payload).
_DeadRow = tuple[int, int | None, bytes | None, str, str, int, Any]

# Vectors validated per numpy call (the float64 temporaries are 16 bytes per value).
_VALIDATE_ROWS = 256

# Priority when one document's chunks hit several failures in one batch.
_FAILURE_PRIORITY = {"auth": 0, "rejected": 1, "transient": 2, "rate_limited": 3}


@dataclass
class _Doc:
    msg_ids: list[int]
    doc_id: int
    doc_key: str | None
    content_hash: bytes
    attempts_before: int
    message: dict[str, Any]
    chunks: list[chunking.Chunk] = field(default_factory=list)
    vectors: np.ndarray | None = None
    hashes: list[bytes] = field(default_factory=list)  # sha256 of each chunk's model input
    failure: tuple[str, str, str] | None = None  # (kind, error_class, message)
    retry_after: float = 0.0


@dataclass
class BatchStats:
    read: int = 0
    written: int = 0
    stale: int = 0
    chunks: int = 0
    dead: int = 0
    deferred: int = 0
    released: int = 0


def backoff_delay(attempts: int, base: float = 2.0, cap: float = 300.0) -> int:
    """Seconds before a failed version is retried: exponential with full jitter, at least 1 s."""
    return max(1, int(random.uniform(0, min(cap, base * (2**attempts)))))


class Worker:
    def __init__(self, settings: WorkerSettings, metrics: Metrics | None = None) -> None:
        self.s = settings
        self.metrics = metrics or Metrics()
        self.stopping = threading.Event()
        self.batch_size = settings.batch_size
        self._providers: dict[str, providers.EmbeddingProvider] = {}
        self._breakers: dict[str, providers.CircuitBreaker] = {}
        self._last_probe: dict[str, float] = {}
        self._last_maintenance = time.monotonic()
        self._pool = ThreadPoolExecutor(max_workers=max(1, settings.in_flight))
        # Pipelining: batch k is written (its own connection, one transaction) while batch k+1 is
        # read, chunked and embedded. At most one write in flight (backpressure).
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pgingest-writer")
        self._pending_write: Any = None
        self._wconn: psycopg.Connection[Any] | None = None
        self._conn: psycopg.Connection[Any] | None = None
        self._listen: psycopg.Connection[Any] | None = None
        self._config: dict[str, str] = {}
        self._chunker: chunking.ChunkerConfig | None = None
        self.hostname = socket.gethostname()
        self.in_flight = 0
        self.documents_done = 0
        self._last_batch_end: float | None = None
        self.heartbeat = (
            status.Heartbeat(
                settings.conninfo,
                self.snapshot,
                metrics=self.metrics,
                interval=settings.heartbeat_interval,
                host=self.hostname,
            )
            if settings.heartbeat
            else None
        )

    def snapshot(self) -> status.WorkerSnapshot:
        """What the heartbeat thread reports: plain attribute reads, no lock needed."""
        last = self._last_batch_end
        return status.WorkerSnapshot(
            models=list(self.s.models or ()),
            in_flight=self.in_flight,
            batch_size=self.batch_size,
            documents=self.documents_done,
            seconds_since_batch=None if last is None else time.monotonic() - last,
            breakers={name: b.state for name, b in list(self._breakers.items())},
        )

    # -- connections ---------------------------------------------------------------------------

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = db.connect(self.s.conninfo, application_name="pgingest-worker")
            self._config = db.get_config(self._conn)
            self._chunker = chunking.ChunkerConfig.from_settings(self._config)
        return self._conn

    def _write_connection(self) -> psycopg.Connection[Any]:
        if self._wconn is None or self._wconn.closed:
            self._wconn = db.connect(self.s.conninfo, application_name="pgingest-writer")
        return self._wconn

    def _flush_write(self) -> None:
        """Waits for the write in flight; re-raises its error in the calling thread."""
        fut, self._pending_write = self._pending_write, None
        if fut is None:
            return
        try:
            fut.result()
        except _MODEL_GONE as exc:  # retired while its batch was being written: as in tick()
            log.warning(
                "model retired while its batch was in flight; batch dropped",
                extra={"error": str(exc).splitlines()[0][:200]},
            )

    def _settle_write(self) -> None:
        """Waits for the write in flight before its connection is closed; a failure only logs
        (its messages come back after their visibility timeout)."""
        try:
            self._flush_write()
        except Exception:
            log.warning("write-back of the last batch failed", exc_info=True)

    def _listener(self) -> psycopg.Connection[Any]:
        if self._listen is None or self._listen.closed:
            self._listen = db.connect(
                self.s.conninfo, register_vector=False, application_name="pgingest-listen"
            )
            db.listen(self._listen)
        return self._listen

    def _reset_connections(self) -> None:
        for c in (self._conn, self._listen, self._wconn):
            if c is not None:
                try:
                    c.close()
                except Exception:  # closing a broken connection may fail: nothing to recover
                    log.debug("close failed", exc_info=True)
        self._conn = None
        self._listen = None
        self._wconn = None

    @property
    def max_attempts(self) -> int:
        if self.s.max_attempts is not None:
            return self.s.max_attempts
        return int(self._config.get("max_attempts", "5"))

    @property
    def chunker(self) -> chunking.ChunkerConfig:
        assert self._chunker is not None
        return self._chunker

    # -- providers -----------------------------------------------------------------------------

    def provider(self, m: db.Model) -> providers.EmbeddingProvider:
        p = self._providers.get(m.name)
        if p is None:
            if self.s.provider_factory is not None:
                p = self.s.provider_factory(m)
            else:
                p = providers.OpenAICompatibleProvider(
                    base_url=m.base_url,
                    model=m.model_id,
                    dimensions=m.dimensions,
                    api_key_env=m.api_key_env,
                    timeout=self.s.http_timeout,
                    request_dimensions=m.request_dimensions,
                    max_retry_after=self.s.max_retry_after,
                    on_request=functools.partial(self.metrics.embed_request, m.name),
                    on_retry=functools.partial(self.metrics.retry, m.name),
                )
            self._providers[m.name] = p
        return p

    def breaker(self, model: str) -> providers.CircuitBreaker:
        b = self._breakers.get(model)
        if b is None:
            b = providers.CircuitBreaker(
                failure_threshold=self.s.breaker_threshold,
                reset_timeout=self.s.breaker_reset_seconds,
            )
            self._breakers[model] = b
        return b

    # -- main loop -----------------------------------------------------------------------------

    def run(self) -> int:
        if self.s.install_signal_handlers:
            signal.signal(signal.SIGTERM, lambda *_: self.stopping.set())
            signal.signal(signal.SIGINT, lambda *_: self.stopping.set())
        log.info("worker started", extra={"pid": os.getpid(), "version": __version__})
        if self.heartbeat is not None:
            self.heartbeat.start()
        failures = 0
        code = 0
        try:
            while not self.stopping.is_set():
                try:
                    worked, pending = self.tick()
                    failures = 0
                except (psycopg.OperationalError, psycopg.errors.ReadOnlySqlTransaction) as exc:
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
                        self._settle_write()
                        self._reset_connections()
                    self.stopping.wait(delay)
                    continue
                if worked:
                    continue
                if self.s.drain and not pending:
                    code = self._drained_exit_code()
                    break
                self._wait_for_work(self.s.poll_interval if not self.s.drain else 0.2)
        finally:
            if self.heartbeat is not None:
                self.heartbeat.stop()
            self._settle_write()
            self._writer.shutdown(wait=True)
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._reset_connections()
            log.info("worker stopped")
        return code

    def _drained_exit_code(self) -> int:
        """--drain: 0 when every queue is empty; 3 when paused models still hold queued work."""
        conn = self._connection()
        waiting = [
            m.name
            for m in db.live_models(conn)
            if m.paused
            and (not self.s.models or m.name in self.s.models)
            and db.pending_messages(conn, m.name) > 0
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
        try:
            gen = self._listener().notifies(timeout=timeout, stop_after=1)
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
        worked = 0
        pending = False
        for m in models:
            if self.stopping.is_set():
                break
            if m.paused:
                if self._maybe_probe(m):
                    pending = True  # resumed: its released messages come back (--drain waits)
                continue
            if not m.backfill_done:
                queued = db.backfill_step(conn, m.name, self.s.backfill_batch)
                if queued:
                    log.info("backfill queued", extra={"model": m.name, "documents": queued})
                    pending = True
            if not self.breaker(m.name).allow():
                pending = True
                continue
            try:
                stats = self.process_batch(m)
                busy = bool(stats.read or stats.deferred)
                if not busy:
                    busy = db.pending_messages(conn, m.name) > 0
            except _MODEL_GONE as exc:
                # retire_model() ran while this batch was in flight: the model's queue and
                # column are gone, nothing is left to write or acknowledge. Not worth dying for.
                log.warning(
                    "model retired while its batch was in flight; batch dropped",
                    extra={"model": m.name, "error": str(exc).splitlines()[0][:200]},
                )
                continue
            worked += stats.read
            if busy:
                pending = True
        if not worked:
            self._flush_write()  # --drain must not exit, nor the queue look empty, mid-write
        return worked, pending

    # -- probing paused models ------------------------------------------------------------------

    def _maybe_probe(self, m: db.Model) -> bool:
        """Probe a paused model when it is time; True when the probe resumed it."""
        now = time.monotonic()
        if now - self._last_probe.get(m.name, 0.0) < self.s.probe_interval:
            return False
        self._last_probe[m.name] = now
        self._providers.pop(m.name, None)  # re-read the key from the environment or file
        try:
            self.provider(m).embed(["pgingest probe"])
        except providers.ProviderError as exc:
            log.info(
                "model still failing",
                extra={"model": m.name, "error_class": exc.error_class},
            )
            return False
        db.resume_model(self._connection(), m.name)
        log.warning("model resumed after a successful probe", extra={"model": m.name})
        return True

    # -- one batch -------------------------------------------------------------------------------

    def process_batch(self, m: db.Model) -> BatchStats:
        try:
            stats = self._process_batch(m)
        finally:
            self.in_flight = 0
        if stats.read:
            self._last_batch_end = time.monotonic()  # documents_done: counted by the writer
        return stats

    def _process_batch(self, m: db.Model) -> BatchStats:
        conn = self._connection()
        stats = BatchStats()
        msgs = db.read_batch(conn, m.name, self.s.visibility_timeout, self.batch_size)
        stats.read = len(msgs)
        self.in_flight = len(msgs)
        if not msgs:
            return stats
        t0 = time.perf_counter()

        ack: list[int] = []
        dead: list[_DeadRow] = []
        docs: dict[int, _Doc] = {}
        texts: dict[int, tuple[str | None, str]] = {}
        for msg in msgs:
            if msg.status in ("stale", "done"):
                ack.append(msg.msg_id)
                continue
            if msg.status == "invalid" or msg.doc_id is None or msg.content_hash is None:
                dead.append(
                    (
                        msg.msg_id,
                        None,
                        None,
                        "invalid_message",
                        "queue message is not a pgingest job (expected doc_id and hash)",
                        msg.read_ct,
                        {"message": msg.message},
                    )
                )
                continue
            existing = docs.get(msg.doc_id)
            if existing is not None:  # a duplicate message of the same version
                existing.msg_ids.append(msg.msg_id)
                continue
            docs[msg.doc_id] = _Doc(
                msg_ids=[msg.msg_id],
                doc_id=msg.doc_id,
                doc_key=msg.doc_key,
                content_hash=msg.content_hash,
                attempts_before=msg.attempts_before,
                message=msg.message,
            )
            if msg.attempts_before >= self.max_attempts:
                docs[msg.doc_id].failure = (
                    "dead",
                    "attempts_exhausted",
                    f"gave up after {msg.attempts_before} attempts (the worker died or timed out "
                    "on every delivery)",
                )
            else:
                texts[msg.doc_id] = (msg.title, msg.body or "")
        self._chunk_all(docs, texts)
        t_chunk = time.perf_counter()
        self.metrics.chunking_seconds(m.name, t_chunk - t0)

        todo = [d for d in docs.values() if d.failure is None]
        for d in todo:
            if not d.chunks:
                d.failure = ("dead", "empty_document", "the document has no text to embed")
            elif len(d.chunks) > self.s.max_chunks_per_document:
                d.failure = (
                    "dead",
                    "too_many_chunks",
                    f"{len(d.chunks)} chunks exceed the limit of {self.s.max_chunks_per_document}",
                )
        todo = [d for d in docs.values() if d.failure is None]
        if todo:
            outcome = self._embed(m, todo)
            if outcome == "paused":
                all_ids = [i for d in docs.values() for i in d.msg_ids] + ack
                db.release(conn, m.name, all_ids, int(self.s.probe_interval))
                stats.released = len(all_ids)
                return stats
        t_embed = time.perf_counter()

        self._validate(m, [d for d in todo if d.failure is None and d.vectors is not None])

        try:
            self._flush_write()  # backpressure: one write in flight
        finally:  # even when the previous write failed: this batch is embedded, write it
            self._pending_write = self._writer.submit(
                self._finish_batch, m, docs, ack, dead, stats, t0, t_chunk, t_embed
            )
        return stats

    def _finish_batch(
        self,
        m: db.Model,
        docs: dict[int, _Doc],
        ack: list[int],
        dead: list[_DeadRow],
        stats: BatchStats,
        t0: float,
        t_chunk: float,
        t_embed: float,
    ) -> BatchStats:
        """Runs on the writer thread: write-back, batch-size adaptation, the batch log line."""
        t_write = time.perf_counter()
        stats = self._write_back(m, docs, ack, dead, stats)
        t_done = time.perf_counter()
        self.documents_done += stats.written
        self._adapt_batch(t_done - t_write, stats.read)
        self.metrics.batch(m.name, t_done - t_write, stats.read)
        log.info(
            "batch",
            extra={
                "model": m.name,
                "messages": stats.read,
                "written": stats.written,
                "stale": stats.stale,
                "chunks": stats.chunks,
                "dead": stats.dead,
                "deferred": stats.deferred,
                "chunk_ms": round((t_chunk - t0) * 1000, 1),
                "embed_ms": round((t_embed - t_chunk) * 1000, 1),
                "write_ms": round((t_done - t_write) * 1000, 1),
                "write_wait_ms": round((t_write - t_embed) * 1000, 1),
                "next_batch": self.batch_size,
            },
        )
        return stats

    def _chunk_all(self, docs: dict[int, _Doc], texts: dict[int, tuple[str | None, str]]) -> None:
        ids = list(texts)
        try:
            results = chunking.chunk_documents([texts[i] for i in ids], self.chunker)
        except ValueError:  # find the culprit(s) one by one
            results = []
            for i in ids:
                try:
                    results.append(chunking.chunk_document(*texts[i], self.chunker))
                except ValueError as exc:
                    docs[i].failure = ("dead", "chunking", str(exc))
                    results.append([])
        for i, chunks in zip(ids, results, strict=True):
            docs[i].chunks = chunks

    def _embed(self, m: db.Model, todo: list[_Doc]) -> str:
        """Fills ``vectors`` or ``failure`` of each document. Returns 'paused' on an auth error.

        Inputs whose exact text this model has embedded before (a live chunk or the embedding
        cache) are not sent again, nor are duplicates within the batch.
        """
        inputs: list[str] = []
        owners: list[_Doc] = []
        token_counts: list[int] = []
        for d in todo:
            d.hashes = []
            for c in d.chunks:
                h = hashlib.sha256(c.embed_input.encode("utf-8")).digest()
                d.hashes.append(h)
                inputs.append(c.embed_input)
                owners.append(d)
                token_counts.append(c.token_count)
        hashes = [h for d in todo for h in d.hashes]
        out = np.zeros((len(inputs), m.dimensions), dtype=np.float32)
        ok = np.zeros(len(inputs), dtype=bool)

        positions: dict[bytes, list[int]] = {}
        for i, h in enumerate(hashes):
            positions.setdefault(h, []).append(i)
        cached = db.cached_vectors(self._connection(), m.name, list(positions))
        for h, vec in cached.items():
            if vec.shape == (m.dimensions,):
                for i in positions.pop(h, []):
                    out[i] = vec
                    ok[i] = True
        send = [idx[0] for idx in positions.values()]  # one request input per unseen text
        self.metrics.cache(m.name, len(inputs) - len(send), len(send))
        if not send:
            self._collect(todo, out, ok)
            return "ok"

        provider = self.provider(m)
        # Large requests (less overhead per input on both sides), but at least ``in_flight`` of
        # them when the batch allows requests of 16 inputs or more (latency is hidden in parallel).
        per_request = min(
            self.s.request_max_inputs, max(16, -(-len(send) // max(1, self.s.in_flight)))
        )
        plans = providers.plan_requests(
            [token_counts[i] for i in send], per_request, self.s.request_max_tokens
        )

        def call(r: range) -> tuple[range, Any, BaseException | None]:
            try:
                return r, provider.embed_detailed([inputs[send[j]] for j in r]), None
            except providers.ProviderError as exc:
                return r, None, exc

        breaker = self.breaker(m.name)
        paused = False
        for r, result, exc in self._pool.map(call, plans):
            if exc is not None:
                assert isinstance(exc, providers.ProviderError)
                kind = self._classify(exc)
                if kind == "auth":
                    paused = True
                    reason = f"{exc.error_class}: {exc}"
                    db.pause_model(self._connection(), m.name, reason)
                    log.error(
                        "model paused: the provider refused the credentials or the model",
                        extra={"model": m.name, "error_class": exc.error_class, "error": str(exc)},
                    )
                elif kind == "transient":
                    breaker.record_failure()
                for j in r:
                    for i in positions[hashes[send[j]]]:
                        self._fail(owners[i], kind, exc.error_class, str(exc), exc)
                continue
            breaker.record_success()
            if self._store_block(r, result, send, out, ok, m.dimensions):
                continue
            for offset, j in enumerate(r):
                group = positions[hashes[send[j]]]
                err = result.errors.get(offset)
                if err is not None:
                    for i in group:
                        self._fail(owners[i], "rejected", err.error_class, str(err), err)
                    continue
                vec = result.vectors[offset]
                arr = np.asarray(vec) if vec is not None else None
                if arr is None or arr.ndim != 1 or arr.shape[0] != m.dimensions:
                    got = "no vector" if arr is None else f"a vector of {arr.size} dimensions"
                    for i in group:
                        self._fail(
                            owners[i],
                            "dead",
                            "invalid_vector_dimension",
                            f"the provider returned {got} for a chunk; model {m.name} expects "
                            f"{m.dimensions}",
                            None,
                        )
                    continue
                for i in group:
                    out[i] = arr
                    ok[i] = True
        if paused:
            return "paused"
        for group in positions.values():  # inputs sent once for several chunks
            if len(group) > 1 and ok[group[0]]:
                out[group[1:]] = out[group[0]]
                ok[group[1:]] = True
        self._collect(todo, out, ok)
        return "ok"

    @staticmethod
    def _store_block(
        r: range,
        result: providers.EmbedResult,
        send: list[int],
        out: np.ndarray,
        ok: np.ndarray,
        dimensions: int,
    ) -> bool:
        """The common case in one numpy assignment: every input of the request has a vector of
        the model's dimension. False (nothing stored) sends the request through the per-input
        checks instead."""
        if result.errors or any(getattr(v, "shape", None) != (dimensions,) for v in result.vectors):
            return False
        firsts = send[r.start : r.stop]
        out[firsts] = np.stack(result.vectors)  # type: ignore[arg-type]
        ok[firsts] = True
        return True

    def _validate(self, m: db.Model, docs: list[_Doc]) -> None:
        """Checks and normalises the vectors, documents grouped into blocks of about
        ``_VALIDATE_ROWS`` rows (few numpy calls, bounded temporary memory); a block with a bad
        vector is checked again document by document, to dead-letter only the culprits."""
        block: list[_Doc] = []
        rows = 0
        for d in docs:
            block.append(d)
            rows += len(d.chunks)
            if rows >= _VALIDATE_ROWS:
                self._validate_block(m, block)
                block, rows = [], 0
        if block:
            self._validate_block(m, block)

    def _validate_block(self, m: db.Model, docs: list[_Doc]) -> None:
        try:
            every = vectors.validate_and_normalize(
                np.concatenate([d.vectors for d in docs if d.vectors is not None]),
                dimensions=m.dimensions,
                metric=m.metric,
            )
        except vectors.VectorError:
            pass
        else:
            pos = 0
            for d in docs:
                n = len(d.chunks)
                d.vectors = every[pos : pos + n]
                pos += n
            return
        for d in docs:
            if d.vectors is None:
                continue
            try:
                d.vectors = vectors.validate_and_normalize(
                    d.vectors, dimensions=m.dimensions, metric=m.metric
                )
            except vectors.VectorError as exc:
                d.failure = ("dead", f"invalid_vector_{exc.reason}", str(exc))
                self.metrics.embed_error(m.name, "validation")

    @staticmethod
    def _collect(todo: list[_Doc], out: np.ndarray, ok: np.ndarray) -> None:
        pos = 0
        for d in todo:
            n = len(d.chunks)
            if d.failure is None and bool(ok[pos : pos + n].all()):
                d.vectors = out[pos : pos + n]
            pos += n

    @staticmethod
    def _classify(exc: providers.ProviderError) -> str:
        if isinstance(exc, providers.ModelUnavailable):
            return "auth"
        if isinstance(exc, providers.RateLimited | providers.CircuitOpen):
            return "rate_limited"
        if isinstance(exc, providers.InputRejected):
            return "rejected"
        return "transient"

    @staticmethod
    def _fail(
        d: _Doc, kind: str, error_class: str, message: str, exc: BaseException | None
    ) -> None:
        prio = _FAILURE_PRIORITY.get(kind, 1)
        if d.failure is not None and _FAILURE_PRIORITY.get(d.failure[0], 1) <= prio:
            return
        d.failure = (kind, error_class, message)
        if isinstance(exc, providers.RateLimited):
            d.retry_after = max(d.retry_after, float(exc.retry_after or 1.0))

    def _write_back(
        self,
        m: db.Model,
        docs: dict[int, _Doc],
        ack: list[int],
        dead: list[_DeadRow],
        stats: BatchStats,
    ) -> BatchStats:
        conn = self._write_connection()
        rows = db.ChunkRows([], [], [], [], [], [], [], [])
        done: list[_Doc] = []
        defer_rl: list[_Doc] = []
        defer_tr: list[_Doc] = []
        for d in docs.values():
            if d.failure is None and d.vectors is not None:
                done.append(d)
                for c, h, v in zip(d.chunks, d.hashes, d.vectors, strict=True):
                    rows.doc_ids.append(d.doc_id)
                    rows.ordinals.append(c.ordinal)
                    rows.contents.append(c.text)
                    rows.chunk_hashes.append(h)
                    rows.token_counts.append(c.token_count)
                    rows.char_starts.append(c.char_start)
                    rows.char_ends.append(c.char_end)
                    rows.embeddings.append(v)
                continue
            kind, error_class, message = d.failure or ("dead", "bad_response", "no vectors")
            attempts = d.attempts_before + 1
            if kind == "rate_limited":
                defer_rl.append(d)
            elif kind == "transient" and attempts < self.max_attempts:
                defer_tr.append(d)
            else:
                if kind == "transient":
                    message = f"{message} (gave up after {attempts} attempts)"
                dead.extend(
                    (i, d.doc_id, d.content_hash, error_class, message, attempts, None)
                    for i in d.msg_ids[:1]
                )
                ack.extend(d.msg_ids[1:])

        with conn.transaction():
            msg_ids = ack + [i for d in done for i in d.msg_ids]
            if msg_ids or done:
                written, stale, nchunks = db.complete_batch(
                    conn,
                    m.name,
                    msg_ids,
                    [d.doc_id for d in done],
                    [d.content_hash for d in done],
                    rows,
                    self.chunker.version,
                )
                stats.written, stats.stale, stats.chunks = written, stale, nchunks
            if dead:
                db.dead_letter(conn, m.name, *map(list, zip(*dead, strict=True)))
                stats.dead = len(dead)
            if defer_rl:
                delay = int(max(d.retry_after for d in defer_rl)) or 1
                db.defer(
                    conn,
                    m.name,
                    [i for d in defer_rl for i in d.msg_ids],
                    [
                        {**d.message, "attempts": d.attempts_before}
                        for d in defer_rl
                        for _ in d.msg_ids
                    ],
                    delay,
                )
                stats.deferred += sum(len(d.msg_ids) for d in defer_rl)
            if defer_tr:
                delay = backoff_delay(max(d.attempts_before for d in defer_tr))
                db.defer(
                    conn,
                    m.name,
                    [i for d in defer_tr for i in d.msg_ids],
                    [
                        {**d.message, "attempts": d.attempts_before + 1}
                        for d in defer_tr
                        for _ in d.msg_ids
                    ],
                    delay,
                )
                stats.deferred += sum(len(d.msg_ids) for d in defer_tr)
        self.metrics.documents(m.name, "embedded", stats.written)
        self.metrics.documents(m.name, "stale", stats.stale + len(ack))
        self.metrics.chunks(m.name, stats.chunks)
        for row in dead:
            self.metrics.dead_letter(m.name, row[3])
        if defer_rl:
            self.metrics.deferred(m.name, "rate_limited", sum(len(d.msg_ids) for d in defer_rl))
        if defer_tr:
            self.metrics.deferred(m.name, "transient", sum(len(d.msg_ids) for d in defer_tr))
        for d in docs.values():
            if d.failure is not None and d.failure[0] in ("dead", "rejected"):
                log.warning(
                    "document dead-lettered",
                    extra={
                        "model": m.name,
                        "doc_id": d.doc_id,
                        "doc_key": d.doc_key,
                        "error_class": d.failure[1],
                        "error": d.failure[2][:300],
                    },
                )
        return stats

    def _adapt_batch(self, commit_seconds: float, n: int) -> None:
        """AIMD on the batch size: grow while write-back stays under target, halve above it."""
        target = self.s.commit_target_seconds
        if commit_seconds > target:
            self.batch_size = max(self.s.min_batch_size, self.batch_size // 2)
        elif n >= self.batch_size and commit_seconds < target / 2:
            self.batch_size = min(self.s.max_batch_size, int(self.batch_size * 1.25) + 1)
        self.metrics.batch_size(self.batch_size)


def fix_malloc_mmap_threshold(threshold: int = 1 << 20) -> bool:
    """Keeps the RSS of a long-running worker flat (glibc only; True when applied).

    glibc raises its mmap threshold (up to 32 MiB) each time an mmapped block is freed; after a
    few batches the batch-sized buffers (vectors, request bodies: megabytes each) come from the
    heap instead, where fragmentation keeps them resident. A fixed threshold keeps them mmapped,
    returned to the system when freed. ``MALLOC_MMAP_THRESHOLD_`` in the environment wins.
    """
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to tune
        return False
    m_mmap_threshold = -3  # malloc.h
    return bool(mallopt(m_mmap_threshold, threshold))


def run(settings: WorkerSettings) -> int:
    fix_malloc_mmap_threshold()
    metrics = Metrics.start(settings.metrics_port)
    return Worker(settings, metrics=metrics).run()


def run_processes(settings: WorkerSettings, processes: int) -> int:
    """Runs N worker processes (fork) and waits; SIGTERM/SIGINT are forwarded."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    procs = []
    for i in range(processes):
        s = WorkerSettings(**{**settings.__dict__})
        if settings.metrics_port is not None:
            s.metrics_port = settings.metrics_port + i
        p = ctx.Process(target=run, args=(s,), name=f"pgingest-worker-{i}")
        p.start()
        procs.append(p)

    def forward(signum: int, _frame: Any) -> None:
        for p in procs:
            if p.pid is not None and p.is_alive():
                os.kill(p.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    code = 0
    for p in procs:
        p.join()
        code = code or (p.exitcode or 0)
    return code
