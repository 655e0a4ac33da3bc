"""Per-model ANN indexes: ``CREATE INDEX CONCURRENTLY`` with progress.

The statement comes from ``pgingest.index_ddl(model)`` (HNSW or IVFFlat, the operator class that
matches the model's storage and metric, ``m``/``ef_construction`` or ``lists``). It runs here, on an
autocommit connection, because ``CREATE INDEX CONCURRENTLY`` cannot run inside a function or a
transaction block; readers and the workers' writes go on during the build.

* ``maintenance_work_mem`` and ``max_parallel_maintenance_workers`` are set for the building
  session only (an HNSW graph that fits in ``maintenance_work_mem`` builds much faster).
* Progress is polled from ``pg_stat_progress_create_index`` over a second connection and shown
  with tqdm on a terminal, as plain lines otherwise, or handed to a callback.
* An invalid index left by a failed or interrupted build is dropped (``DROP INDEX
  CONCURRENTLY``) and built again; ``rebuild=True`` rebuilds a valid one with ``REINDEX INDEX
  CONCURRENTLY`` (searches keep using the old one meanwhile).
* The index is on the model's store (``pgingest.store_<model>``, column ``embedding``). Stores are
  hash-partitioned like the chunks (``pgingest install --chunk-partitions N``): PostgreSQL cannot
  build a partitioned index concurrently, so each partition's index is built ``CONCURRENTLY``,
  then the model's index is created ``ON ONLY`` the store and every partition's index is attached
  to it (valid once all are). An interrupted run keeps the valid partition indexes and resumes.
* After an upgrade to per-model stores (migration 0006), :func:`rebuild_after_upgrade` builds the
  indexes the migration could not build (it runs in the installer's transaction).
* For a backfill, build after the load: inserting into a live HNSW graph is many times slower
  than building it once (``scripts/bench_index.py`` measures it).
"""

from __future__ import annotations

import hashlib
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TextIO

import psycopg

from pgingest import db

log = logging.getLogger("pgingest.index")

__all__ = ["IndexBuildError", "IndexResult", "Progress", "build_index", "rebuild_after_upgrade"]


class IndexBuildError(RuntimeError):
    """The index cannot be built (no such model, index_method none, a build already running)."""


@dataclass(frozen=True)
class Progress:
    """One sample of ``pg_stat_progress_create_index`` for the building backend."""

    phase: str
    done: int | None
    total: int | None
    elapsed: float

    @property
    def fraction(self) -> float | None:
        if self.total and self.done is not None:
            return min(1.0, self.done / self.total)
        return None

    def describe(self) -> str:
        frac = self.fraction
        amount = (
            f" {self.done}/{self.total} ({frac:.0%})" if frac is not None and self.total else ""
        )
        return f"{self.phase}{amount}, {self.elapsed:.0f} s"


@dataclass
class IndexResult:
    model: str
    index_name: str
    action: str  # "exists" | "built" | "rebuilt"
    seconds: float
    size_bytes: int | None
    valid: bool
    dropped_invalid: bool = False
    dropped_leftovers: list[str] = field(default_factory=list)
    ddl: str | None = None
    settings: dict[str, str] = field(default_factory=dict)
    phases: list[str] = field(default_factory=list)
    # Partitioned chunks: partition indexes this run built (the others existed, valid).
    partitions_built: int | None = None


ProgressCallback = Callable[[Progress], None]


def _sample(row: dict[str, Any] | None, started: float) -> Progress | None:
    if row is None:
        return None
    tuples_total = row.get("tuples_total") or 0
    if tuples_total:
        done, total = row.get("tuples_done"), tuples_total
    elif row.get("blocks_total"):
        done, total = row.get("blocks_done"), row.get("blocks_total")
    elif row.get("lockers_total"):
        done, total = row.get("lockers_done"), row.get("lockers_total")
    else:
        done, total = None, None
    return Progress(
        phase=str(row.get("phase") or "starting"),
        done=None if done is None else int(done),
        total=None if total is None else int(total),
        elapsed=time.monotonic() - started,
    )


class _Reporter:
    """tqdm on a terminal, one plain line per phase (and every ``every`` seconds) otherwise."""

    def __init__(self, label: str, out: TextIO, tty: bool, every: float = 10.0) -> None:
        self.label = label
        self.out = out
        self.tty = tty
        self.every = every
        self._bar: Any = None
        self._phase: str | None = None
        self._last_line = 0.0

    def __call__(self, p: Progress) -> None:
        if self.tty:
            self._tqdm(p)
            return
        now = time.monotonic()
        if p.phase != self._phase or now - self._last_line >= self.every:
            self._phase = p.phase
            self._last_line = now
            print(f"{self.label}: {p.describe()}", file=self.out, flush=True)

    def _tqdm(self, p: Progress) -> None:
        from tqdm import tqdm

        if self._bar is None or p.phase != self._phase:
            if self._bar is not None:
                self._bar.close()
            self._phase = p.phase
            self._bar = tqdm(
                total=p.total, desc=f"{self.label}: {p.phase}", file=self.out, leave=False
            )
        if p.total is not None and self._bar.total != p.total:
            self._bar.total = p.total
        if p.done is not None:
            self._bar.n = p.done
        self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _poll(
    conninfo: str | None,
    pid: int,
    stop: threading.Event,
    interval: float,
    started: float,
    callback: ProgressCallback,
    phases: list[str],
) -> None:
    try:
        with db.connect(
            conninfo, register_vector=False, application_name="pgingest-index-progress"
        ) as conn:
            while not stop.wait(interval):
                p = _sample(db.create_index_progress(conn, pid), started)
                if p is None:
                    continue
                if not phases or phases[-1] != p.phase:
                    phases.append(p.phase)
                callback(p)
    except psycopg.Error as exc:  # progress is cosmetic: never fail the build because of it
        log.warning("index progress unavailable", extra={"error": str(exc).strip()[:200]})


@contextmanager
def _progress(
    conninfo: str | None,
    conn: psycopg.Connection[Any],
    progress: bool | ProgressCallback | None,
    out: TextIO,
    label: str,
    started: float,
    poll_interval: float,
    phases: list[str],
) -> Iterator[None]:
    """Polls the build's progress from a second connection while the block runs."""
    callback: ProgressCallback | None = None
    reporter: _Reporter | None = None
    if callable(progress):
        callback = progress
    elif progress is not False:
        tty = bool(getattr(out, "isatty", lambda: False)())
        reporter = _Reporter(label, out, tty=tty)
        callback = reporter
    stop = threading.Event()
    poller: threading.Thread | None = None
    if callback is not None:
        poller = threading.Thread(
            target=_poll,
            args=(
                conninfo,
                conn.info.backend_pid,
                stop,
                poll_interval,
                started,
                callback,
                phases,
            ),
            name=f"pgingest-{label.replace(' ', '-')}-progress",
            daemon=True,
        )
        poller.start()
    try:
        yield
    finally:
        stop.set()
        if poller is not None:
            poller.join(timeout=5)
        if reporter is not None:
            reporter.close()


def _set_build_session(
    conn: psycopg.Connection[Any],
    result: IndexResult,
    maintenance_work_mem: str | None,
    parallel_workers: int | None,
) -> None:
    if maintenance_work_mem is not None:
        result.settings["maintenance_work_mem"] = db.set_session(
            conn, "maintenance_work_mem", maintenance_work_mem
        )
    if parallel_workers is not None:
        result.settings["max_parallel_maintenance_workers"] = db.set_session(
            conn, "max_parallel_maintenance_workers", str(int(parallel_workers))
        )


def build_index(
    conninfo: str | None,
    model: str,
    *,
    maintenance_work_mem: str | None = None,
    parallel_workers: int | None = None,
    rebuild: bool = False,
    progress: bool | ProgressCallback | None = None,
    poll_interval: float = 0.5,
    out: TextIO | None = None,
) -> IndexResult:
    """Builds (or verifies) ``model``'s ANN index; returns what was done.

    ``progress``: shown on ``out`` (default stderr) with tqdm when it is a terminal and as plain
    lines otherwise; False hides it; a callable receives every :class:`Progress` sample instead.

    When the store is hash-partitioned (``pgingest install --chunk-partitions N``), each
    partition's index is built ``CONCURRENTLY`` in turn (PostgreSQL cannot build a partitioned
    index concurrently), then the model's index is created ``ON ONLY`` the parent and each
    partition's index attached to it: it turns valid when the last one is attached.
    """
    out = out if out is not None else sys.stderr
    started = time.monotonic()
    with db.connect(conninfo, register_vector=False, application_name="pgingest-index") as conn:
        rows = db.model_index_status(conn, model)
        if not rows:
            raise IndexBuildError(f"no live model named {model!r}")
        st = rows[0]
        index_name = str(st["index_name"])
        if st["index_method"] == "none":
            raise IndexBuildError(
                f"model {model} has index_method 'none': it is searched exactly, without an index"
            )
        if st["build_phase"] is not None:
            raise IndexBuildError(
                f"index {index_name} is being built by backend {st['build_pid']} "
                f"({st['build_phase']}); wait for it to end"
            )
        result = IndexResult(
            model=model,
            index_name=index_name,
            action="exists",
            seconds=0.0,
            size_bytes=st["size_bytes"],
            valid=bool(st["valid"]),
        )
        spec = db.index_spec(conn, model)
        if spec is None:
            raise IndexBuildError(f"no live model named {model!r}")
        partitions = db.store_partitions(conn, spec.store)
        if partitions:
            return _build_partitioned(
                conninfo,
                conn,
                model,
                spec,
                st,
                result,
                partitions,
                maintenance_work_mem=maintenance_work_mem,
                parallel_workers=parallel_workers,
                rebuild=rebuild,
                progress=progress,
                poll_interval=poll_interval,
                out=out,
                started=started,
            )
        for leftover in db.reindex_leftovers(conn, spec.store, index_name):
            log.warning(
                "dropping an invalid index left by a failed REINDEX CONCURRENTLY",
                extra={"model": model, "index": leftover},
            )
            db.drop_index_concurrently(conn, leftover)
            result.dropped_leftovers.append(leftover)
        if st["present"] and st["valid"] and st["on_column"] and not rebuild:
            return result
        if st["present"] and (not st["valid"] or not st["on_column"]):
            log.warning(
                "dropping an invalid index left by a failed build",
                extra={"model": model, "index": index_name},
            )
            db.drop_index_concurrently(conn, index_name)
            result.dropped_invalid = True
        reindex = bool(st["present"] and st["valid"] and st["on_column"] and rebuild)

        _set_build_session(conn, result, maintenance_work_mem, parallel_workers)
        result.ddl = None if reindex else db.index_ddl(conn, model)

        t0 = time.monotonic()
        try:
            with _progress(
                conninfo,
                conn,
                progress,
                out,
                f"index {index_name}",
                started,
                poll_interval,
                result.phases,
            ):
                if reindex:
                    db.reindex_concurrently(conn, index_name)
                else:
                    assert result.ddl is not None
                    db.execute_ddl(conn, result.ddl)
        except BaseException:
            log.error(
                "index build failed; the next run drops the invalid leftover and rebuilds",
                extra={"model": model, "index": index_name},
            )
            raise
        result.seconds = time.monotonic() - t0
        result.action = "rebuilt" if (reindex or result.dropped_invalid) else "built"
        after = db.model_index_status(conn, model)[0]
        result.size_bytes = after["size_bytes"]
        result.valid = bool(after["valid"])
        return result


def partition_index_name(partition: str, column: str) -> str:
    """Name of a partition's index for a model's column (PostgreSQL's own naming, if it fits)."""
    name = f"{partition}_{column}_idx"
    if len(name.encode("utf-8")) > 63:
        digest = hashlib.sha256(partition.encode("utf-8")).hexdigest()[:8]
        name = f"store_{digest}_{column}_idx"
    return name


def _build_partitioned(
    conninfo: str | None,
    conn: psycopg.Connection[Any],
    model: str,
    spec: db.IndexSpec,
    st: dict[str, Any],
    result: IndexResult,
    partitions: list[tuple[str, str]],
    *,
    maintenance_work_mem: str | None,
    parallel_workers: int | None,
    rebuild: bool,
    progress: bool | ProgressCallback | None,
    poll_interval: float,
    out: TextIO,
    started: float,
) -> IndexResult:
    """Per-partition concurrent builds, then the parent index ON ONLY with each one attached.

    Resumable: valid partition indexes are kept, invalid ones (a failed or interrupted build) are
    dropped and built again, and those already attached are not attached twice.
    """
    index_name = result.index_name
    names = {partition_index_name(table, spec.column) for _, table in partitions}
    busy = [
        b
        for b in db.store_index_builds(conn, spec.store)
        if str(b["index"]).split(".")[-1] in names
    ]
    if busy:
        raise IndexBuildError(
            f"index {busy[0]['index']} of {index_name} is being built by backend "
            f"{busy[0]['pid']} ({busy[0]['phase']}); wait for it to end"
        )
    complete = bool(st["present"] and st["valid"] and st["on_column"])
    if complete and not rebuild:
        result.size_bytes = db.index_tree_size(conn, index_name)
        return result
    if st["present"] and not st["on_column"]:
        log.warning(
            "dropping a partitioned index that is not on the model's column",
            extra={"model": model, "index": index_name},
        )
        db.drop_index(conn, "pgingest", index_name)
        result.dropped_invalid = True
    _set_build_session(conn, result, maintenance_work_mem, parallel_workers)

    t0 = time.monotonic()
    try:
        with _progress(
            conninfo,
            conn,
            progress,
            out,
            f"index {index_name}",
            started,
            poll_interval,
            result.phases,
        ):
            if complete:  # rebuild: every partition's index, concurrently (PostgreSQL 14+)
                for schema, table in partitions:
                    for leftover in db.partition_reindex_leftovers(
                        conn, schema, table, partition_index_name(table, spec.column)
                    ):
                        db.drop_index_concurrently(conn, leftover)
                        result.dropped_leftovers.append(leftover)
                db.reindex_concurrently(conn, index_name)
            else:
                built = _build_partition_indexes(conn, spec, partitions, result)
                # Catalog only (no build): a SHARE lock on the parent for an instant.
                result.ddl = db.create_ann_index(
                    conn, "pgingest", spec.store, index_name, spec, concurrently=False, only=True
                )
                for schema, table in partitions:
                    name = partition_index_name(table, spec.column)
                    state = db.partition_index(conn, schema, table, name)
                    if state is not None and state["parent"] != index_name:
                        db.attach_index(conn, index_name, schema, name)
                result.partitions_built = built
    except BaseException:
        log.error(
            "partitioned index build failed; the next run keeps the partitions' valid indexes "
            "and builds the others",
            extra={"model": model, "index": index_name},
        )
        raise
    result.seconds = time.monotonic() - t0
    result.action = "rebuilt" if (complete or result.dropped_invalid) else "built"
    after = db.model_index_status(conn, model)[0]
    result.size_bytes = db.index_tree_size(conn, index_name)
    result.valid = bool(after["valid"])
    return result


def _build_partition_indexes(
    conn: psycopg.Connection[Any],
    spec: db.IndexSpec,
    partitions: list[tuple[str, str]],
    result: IndexResult,
) -> int:
    built = 0
    for schema, table in partitions:
        name = partition_index_name(table, spec.column)
        state = db.partition_index(conn, schema, table, name)
        if state is not None and not state["valid"]:
            log.warning(
                "dropping an invalid partition index left by a failed build",
                extra={"model": result.model, "index": name},
            )
            if schema == "pgingest":
                db.drop_index_concurrently(conn, name)
            else:
                db.drop_index(conn, schema, name)
            result.dropped_invalid = True
            state = None
        if state is not None:
            continue
        lists = None
        if spec.method == "ivfflat":
            lists = spec.options.get("lists") or _default_lists(
                db.count_embedded(conn, schema, table, spec.column)
            )
        db.create_ann_index(conn, schema, table, name, spec, lists=lists)
        built += 1
    return built


def _default_lists(rows: int) -> int:
    """pgvector's advice for IVFFlat: rows / 1000 up to a million rows, sqrt(rows) above."""
    return max(1, rows // 1000 if rows <= 1_000_000 else int(rows**0.5))


def rebuild_after_upgrade(
    conninfo: str | None, *, out: TextIO | None = None, progress: bool | None = None
) -> list[IndexResult]:
    """Builds, ``CONCURRENTLY`` and with progress, the ANN indexes that migration 0006 dropped
    when it moved the vectors to the per-model stores (config ``rebuild_indexes``, a list of
    models); each is removed from the list once built, so an interrupted run resumes. Reads and
    writes go on meanwhile; until a model's index is built its searches scan its store exactly."""
    results: list[IndexResult] = []
    with db.connect(conninfo, register_vector=False, application_name="pgingest-index") as conn:
        conn.autocommit = True
        for model in db.pending_index_rebuilds(conn):
            live = {m.name: m for m in db.live_models(conn)}
            if model in live and live[model].index_method != "none":
                log.info("rebuilding an index after the upgrade", extra={"model": model})
                results.append(build_index(conninfo, model, progress=progress, out=out))
            db.index_rebuilt(conn, model)
    return results
