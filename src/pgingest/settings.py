"""The worker's settings, in a module of their own: the CLI reads the defaults for its options
from here without importing the worker (numpy, psycopg, requests: ~250 ms of start-up)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pgingest import db, providers


@dataclass
class WorkerSettings:
    conninfo: str | None = None
    models: Sequence[str] | None = None
    batch_size: int = 256
    min_batch_size: int = 4
    max_batch_size: int = 512
    visibility_timeout: int = 120
    max_attempts: int | None = None
    # The most embedding requests in flight per model; the worker uses fewer while the
    # provider's latency says they would only queue there (worker/capacity.py).
    in_flight: int = 8
    request_max_inputs: int = 256
    request_max_tokens: int = 100_000
    drain: bool = False
    # --drain exits 4 (messages still queued) once this many write-backs in a row failed
    drain_max_write_failures: int = 3
    poll_interval: float = 5.0
    probe_interval: float = 30.0
    # The HTTP timeout of a request before any latency was observed, and the least ever given;
    # from the observed latency it grows up to http_timeout_max (worker/capacity.py).
    http_timeout: float = 30.0
    http_timeout_max: float = 600.0
    # A request that timed out is sent again at most this many times (each time with twice the
    # timeout, after the concurrency was halved and the other requests answered), then its
    # documents are deferred with an attempt spent.
    max_resends: int = 3
    # Pace requests within the model's quota (pgingest.provider_quota, shared by every worker;
    # limits configured with set_model_quota or learned from x-ratelimit-* headers).
    quota_pacing: bool = True
    # The longest a request waits for the quota; a longer wait defers its batch (no attempt
    # spent) and holds the model back for that long while the worker serves the others.
    quota_max_wait: float = 10.0
    # Backfills of models with batch_api on (set_model_batch_api) go through the provider's
    # Batch API (worker/bulk.py): documents per provider batch, and seconds between two polls of
    # a batch in flight. batch_api False: this worker leaves them to the others (after a day,
    # to the online path).
    batch_api: bool = True
    batch_api_documents: int = 5000
    batch_api_poll_interval: float = 30.0
    commit_target_seconds: float = 0.5
    backfill_batch: int = 5000
    # rows of an attached table registered and queued per step (each one reads that many rows)
    source_backfill_batch: int = 1000
    max_chunks_per_document: int = 5000
    # Raw documents (worker/raw.py): child processes parsing (apart from the embedding
    # concurrency) and threads fetching, started at the first raw document.
    parse_processes: int = 2
    raw_fetch_threads: int = 8
    # A batch waits at most this long for its raw documents; those still fetching or parsing are
    # released (no attempt spent) and picked up, parsed, at their next delivery.
    raw_wait_seconds: float = 10.0
    # A batch reads at most this many bytes of bytea content at once (each document's own cap is
    # the fetch policy's max_bytes); the documents over it wait for a later delivery, no attempt
    # spent (the first one is always read).
    raw_batch_bytes: int = 256 * 1024 * 1024
    # One write-back transaction (complete_batch_v2: one Bind of every chunk and vector) holds at
    # most this many chunks and bytes (text + float32 vectors + 64 per row); a batch over either
    # is written as several transactions, a document over them alone (worker/batch.split).
    write_max_chunks: int = 10_000
    write_max_bytes: int = 64 * 1024 * 1024
    metrics_port: int | None = None
    breaker_threshold: int = 5
    breaker_reset_seconds: float = 30.0
    max_retry_after: float = 10.0
    maintenance_interval: float = 300.0
    provider_factory: Callable[[db.Model], providers.EmbeddingProvider] | None = None
    install_signal_handlers: bool = True
    heartbeat: bool = True
    heartbeat_interval: float | None = None  # None: pgingest.config worker_heartbeat_seconds
    # Every worker connection (db.worker_connect_params; the connection string's own
    # parameters win): seconds, 0 turns one off.
    connect_timeout: int = 10
    statement_timeout: float = 60.0
    lock_timeout: float = 10.0

    def connect_params(self) -> dict[str, Any]:
        """The libpq parameters of the worker's connections (db.worker_connect_params)."""
        from pgingest import db

        return db.worker_connect_params(
            self.conninfo,
            connect_timeout=self.connect_timeout,
            statement_timeout=self.statement_timeout,
            lock_timeout=self.lock_timeout,
        )
