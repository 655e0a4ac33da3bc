"""Shared pieces of the benchmarks: throw-away databases, child processes measured with
``wait4`` (CPU seconds, peak RSS), the fake embedding server, synthetic documents, loading.

Every figure of ``bench.run`` and ``bench.peers`` is printed next to a reference measured in the
same run, because the machine (2 cores, shared with other people's tests) is noisy.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import psycopg
from psycopg import sql

from pgingest import db
from pgingest.testing import texts

ROOT = Path(__file__).resolve().parent.parent
RESULTS_PATH = ROOT / "bench-results.json"
T = TypeVar("T")
DB_PREFIX = "pgingest_bench"


class BenchError(RuntimeError):
    """A benchmark could not run (a child failed, a timeout)."""


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- database


def _terminated_from_outside(exc: BaseException) -> bool:
    text = str(exc)
    return isinstance(exc, psycopg.OperationalError) or (
        isinstance(exc, BenchError)
        and ("administrator command" in text or "connection is lost" in text)
    )


def retrying(name: str, fn: Callable[[], T], attempts: int = 2) -> T:
    """Runs ``fn`` again when the shared cluster's backends were terminated under it (other
    people's tests restart or kill backends on the development cluster)."""
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except (psycopg.OperationalError, BenchError) as exc:
            if attempt == attempts or not _terminated_from_outside(exc):
                raise
            log(f"{name}: the database connection was cut ({exc!s:.120}); running it again")
            time.sleep(5.0)
    raise AssertionError("unreachable")


def server_url() -> str:
    """``$DATABASE_URL``, else the private cluster's URL (scripts/pgcluster.sh url)."""
    url = os.environ.get("DATABASE_URL")
    if url:
        return url
    out = subprocess.run(
        [str(ROOT / "scripts" / "pgcluster.sh"), "url"], capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


def dsn_for(url: str, dbname: str) -> str:
    return psycopg.conninfo.make_conninfo(url, dbname=dbname)


def _drop(admin: psycopg.Connection[Any], name: str) -> None:
    admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def drop_stale_databases(url: str) -> list[str]:
    """Drops the databases of benchmark runs that died (their process is gone)."""
    dropped: list[str] = []
    with psycopg.connect(url, autocommit=True) as admin:
        names = [
            str(r[0])
            for r in admin.execute(
                "SELECT datname FROM pg_database WHERE datname LIKE %s", (DB_PREFIX + "\\_%",)
            )
        ]
        for name in names:
            pid = name.rsplit("_", 1)[-1]
            if pid.isdigit() and not Path(f"/proc/{pid}").exists():
                _drop(admin, name)
                dropped.append(name)
    return dropped


@contextlib.contextmanager
def fresh_database(
    url: str, label: str, *, install_pgingest: bool = True, keep: bool = False
) -> Iterator[str]:
    """A new database on ``url``'s server (pgingest installed), dropped afterwards."""
    name = f"{DB_PREFIX}_{label}_{os.getpid()}"
    with psycopg.connect(url, autocommit=True) as admin:
        _drop(admin, name)
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    dsn = dsn_for(url, name)
    try:
        if install_pgingest:
            from pgingest import install

            install.install(dsn)
        yield dsn
    finally:
        if keep:
            log(f"kept database {name}")
        else:
            with psycopg.connect(url, autocommit=True) as admin:
                _drop(admin, name)


def set_chunk_profile(
    conn: psycopg.Connection[Any],
    tokenizer: str,
    max_tokens: int,
    overlap_tokens: int,
    include_title: bool,
) -> None:
    """The pipeline's chunker profile (pgingest.config); set before registering a model."""
    values = {
        "chunk_tokenizer": tokenizer,
        "chunk_max_tokens": str(max_tokens),
        "chunk_overlap_tokens": str(overlap_tokens),
        "chunk_include_title": "true" if include_title else "false",
    }
    with conn.transaction():
        for key, value in values.items():
            conn.execute(
                "INSERT INTO pgingest.config (key, value) VALUES (%s, %s)"
                " ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                (key, value),
            )


def register_model(
    conn: psycopg.Connection[Any],
    name: str,
    model_id: str,
    dimensions: int,
    base_url: str,
    *,
    max_input_tokens: int = 8192,
    index_method: str = "none",
) -> None:
    """``db.register_model`` with the benchmarks' defaults (no index, a large context)."""
    db.register_model(
        conn,
        name,
        model_id,
        dimensions,
        base_url,
        max_input_tokens=max_input_tokens,
        index_method=index_method,
    )


def embedded_count(conn: psycopg.Connection[Any], model: str) -> int:
    row = conn.execute(
        "SELECT count(*) FROM pgingest.embedding_state WHERE model = %s", (model,)
    ).fetchone()
    assert row is not None
    return int(row[0])


def wait_until_embedded(
    conn: psycopg.Connection[Any], model: str, n: int, timeout: float, child: Child | None = None
) -> float:
    """Polls until ``n`` documents are embedded; returns the perf_counter time it saw it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if embedded_count(conn, model) >= n:
            return time.perf_counter()
        if child is not None and child.poll() is not None:
            raise BenchError(
                f"{child.name} exited early (rc {child.result.rc if child.result else '?'})"
            )
        time.sleep(0.05)
    raise BenchError(f"{n} documents not embedded within {timeout:.0f} s")


# --------------------------------------------------------------------------- child processes


@dataclass
class ChildResult:
    rc: int
    wall_s: float
    user_s: float
    sys_s: float
    maxrss_kb: int
    """Peak RSS: the last ``VmHWM`` read from ``/proc/<pid>/status`` (sampled every 20 ms).
    Not ``ru_maxrss``: Linux carries the parent's RSS at fork/vfork into the child's ru_maxrss
    across exec, so a big benchmark process would inflate a small worker's figure."""
    ru_maxrss_kb: int = 0

    @property
    def cpu_s(self) -> float:
        return self.user_s + self.sys_s

    @property
    def maxrss_mb(self) -> float:
        return self.maxrss_kb / 1024.0


class Child:
    """A subprocess measured on its own: CPU time from ``os.wait4``, peak RSS from ``VmHWM``,
    and ``VmRSS`` samples every 100 ms (``rss_samples_kb``). ``sample=False``: no sampling
    thread (a server whose memory nobody reads: the thread's /proc reads, 50 a second, would
    cost CPU and the GIL in the measuring process, which may be the measured one)."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        stdout: Any = None,
        stderr: Any = None,
        sample: bool = True,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            self.argv, env=env, stdout=stdout, stderr=stderr, cwd=str(ROOT), text=True
        )
        self.result: ChildResult | None = None
        self.rss_samples_kb: list[int] = []
        self._hwm_kb = 0
        self._done = threading.Event()
        self._sampler = threading.Thread(target=self._sample, name=f"rss-{name}", daemon=True)
        if sample:
            self._sampler.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _sample(self) -> None:
        n = 0
        while not self._done.is_set():
            hwm = self._status_kb("VmHWM")
            if hwm is not None:
                self._hwm_kb = max(self._hwm_kb, hwm)
                if n % 5 == 0:
                    rss = self._status_kb("VmRSS")
                    if rss is not None:
                        self.rss_samples_kb.append(rss)
                n += 1
            self._done.wait(0.02)

    def _reap(self, options: int) -> ChildResult | None:
        if self.result is not None:
            return self.result
        pid, status, ru = os.wait4(self.proc.pid, options)
        if pid == 0:
            return None
        self._done.set()
        if self._sampler.is_alive():
            self._sampler.join(1.0)
        rc = os.waitstatus_to_exitcode(status)
        self.proc.returncode = rc  # reaped here: Popen must not wait again
        self.result = ChildResult(
            rc=rc,
            wall_s=time.perf_counter() - self.started,
            user_s=ru.ru_utime,
            sys_s=ru.ru_stime,
            maxrss_kb=self._hwm_kb or int(ru.ru_maxrss),
            ru_maxrss_kb=int(ru.ru_maxrss),
        )
        return self.result

    def poll(self) -> ChildResult | None:
        return self._reap(os.WNOHANG)

    def wait(self, timeout: float) -> ChildResult:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            res = self.poll()
            if res is not None:
                return res
            time.sleep(0.02)
        self.kill()
        raise BenchError(f"{self.name} did not finish within {timeout:.0f} s (killed)")

    def stop(self, timeout: float = 30.0) -> ChildResult:
        """SIGTERM, then SIGKILL after ``timeout``."""
        if self.result is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self.poll() is None:
                time.sleep(0.02)
            if self.result is None:
                self.kill()
        assert self.result is not None
        return self.result

    def kill(self) -> None:
        if self.result is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            self._reap(0)

    def cpu_s_now(self) -> float | None:
        """CPU seconds used so far (``/proc/<pid>/stat``), while it runs."""
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def _status_kb(self, field: str) -> int | None:
        try:
            text = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return None
        for line in text.splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        return None

    def vm_hwm_kb(self) -> int | None:
        """Peak RSS so far (``/proc/<pid>/status`` VmHWM), while it runs."""
        return self._status_kb("VmHWM")

    def vm_rss_kb(self) -> int | None:
        return self._status_kb("VmRSS")


def read_line(child: Child, timeout: float, pattern: str = "") -> str:
    """The first stdout line of ``child`` that contains ``pattern``."""
    assert child.proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([child.proc.stdout], [], [], 0.2)
        if ready:
            line = child.proc.stdout.readline()
            if not line:
                break
            if pattern in line:
                return line.strip()
        elif child.poll() is not None:
            break
    child.kill()
    raise BenchError(f"{child.name} did not print {pattern or 'a line'!r} within {timeout:.0f} s")


@contextlib.contextmanager
def fake_server(
    dims: Iterable[str] = (), python: str = sys.executable
) -> Iterator[tuple[str, Child]]:
    """``python -m pgingest.testing.fake_provider`` on an ephemeral 127.0.0.1 port: (base URL, child)."""
    argv = [python, "-m", "pgingest.testing.fake_provider", "--port", "0"]
    for d in dims:
        argv += ["--dims", d]
    child = Child("fake server", argv, stdout=subprocess.PIPE, sample=False)
    try:
        url = read_line(child, 30.0, "http://")
        yield url, child
    finally:
        child.stop(10.0)
        if child.proc.stdout is not None:
            child.proc.stdout.close()


def connect_plain(dsn: str) -> psycopg.Connection[Any]:
    """An autocommit connection without pgingest's session setup (no vector type needed)."""
    return psycopg.connect(dsn, autocommit=True, application_name="pgingest-bench")


@dataclass
class LocalModel:
    """A running ``pgingest serve-model``: its child process and URLs."""

    server: Child
    url: str  # the OpenAI-compatible base URL (.../v1)

    @property
    def health_url(self) -> str:
        return self.url.rsplit("/v1", 1)[0] + "/health"

    def register(self, conn: psycopg.Connection[Any], name: str = "v1") -> None:
        """Registers it as model ``name`` with the default chunking profile (MiniLM tokenizer,
        200 tokens, 20 overlap)."""
        from pgingest import local_model

        register_model(
            conn,
            name,
            local_model.MODEL_NAME,
            local_model.DIMENSIONS,
            self.url,
            max_input_tokens=local_model.MAX_INPUT_TOKENS,
        )


@contextlib.contextmanager
def serve_model(warm_up: Sequence[str]) -> Iterator[LocalModel]:
    """``pgingest serve-model`` on an ephemeral port, warmed up with two requests of
    ``warm_up`` (the first calls of a new thread and of new shapes are slow: not timed),
    stopped at the end (its ``server.result`` then holds its CPU)."""
    import requests

    from pgingest import local_model

    server = Child(
        "serve-model",
        [sys.executable, "-m", "pgingest.cli", "serve-model", "--port", "0"],
        stdout=subprocess.PIPE,
    )
    try:
        line = read_line(server, 300.0, "serving")
        model = LocalModel(server, line.split(" at ", 1)[1].split()[0])
        for _ in range(2):
            requests.post(
                model.url + "/embeddings",
                json={"model": local_model.MODEL_NAME, "input": list(warm_up[:64])},
                timeout=300,
            ).raise_for_status()
        yield model
    finally:
        server.stop(30.0)
        if server.proc.stdout is not None:
            server.proc.stdout.close()


# --------------------------------------------------------------------------- the worker


@dataclass
class WorkerRun:
    result: ChildResult
    batches: list[dict[str, Any]] = field(default_factory=list)
    log_path: Path | None = None
    rss_samples_kb: list[int] = field(default_factory=list)

    def rss_profile(self) -> dict[str, float | None]:
        """RSS at start-up (first sample) and over the second half of the run (median)."""
        s = self.rss_samples_kb
        if not s:
            return {"rss_first_sample_mb": None, "rss_second_half_median_mb": None}
        return {
            "rss_first_sample_mb": round(s[0] / 1024, 1),
            "rss_second_half_median_mb": round(statistics.median(s[len(s) // 2 :]) / 1024, 1),
        }

    def stage_totals(self) -> dict[str, float]:
        """Seconds spent chunking, embedding and writing, summed over the batches."""
        out = {"chunk_s": 0.0, "embed_s": 0.0, "write_s": 0.0}
        for b in self.batches:
            out["chunk_s"] += float(b.get("chunk_ms", 0)) / 1000
            out["embed_s"] += float(b.get("embed_ms", 0)) / 1000
            out["write_s"] += float(b.get("write_ms", 0)) / 1000
        return {k: round(v, 3) for k, v in out.items()}

    def summary(self) -> dict[str, Any]:
        sizes = [int(b.get("messages", 0)) for b in self.batches]
        return {
            "batches": len(self.batches),
            "median_batch_messages": statistics.median(sizes) if sizes else 0,
            "last_batch_size": self.batches[-1].get("next_batch") if self.batches else None,
            **self.stage_totals(),
        }


PROFILE_DIR: Path | None = None
"""Set by ``--profile DIR``: workers then run under ``py-spy record`` (raw collapsed stacks)."""
PROFILE_ARGS: list[str] = ["--gil", "--threads"]
"""py-spy options: ``--gil`` keeps the samples that hold the GIL (Python CPU hot spots);
``--idle`` instead shows where the wall time goes, waits included."""


def worker_argv(dsn: str, *extra: str, python: str = sys.executable, tag: str = "") -> list[str]:
    prefix: list[str] = []
    if PROFILE_DIR is not None:
        spy = Path(sys.executable).with_name("py-spy")
        PROFILE_DIR.mkdir(parents=True, exist_ok=True)
        out = PROFILE_DIR / f"worker{('-' + tag) if tag else ''}.txt"
        prefix = [str(spy), "record", "-r", "250", "-f", "raw", *PROFILE_ARGS, "-o", str(out), "--"]
    return [
        *prefix,
        python,
        "-m",
        "pgingest.cli",
        "--log-format",
        "json",
        "worker",
        "--database-url",
        dsn,
        *extra,
    ]


def start_worker(dsn: str, log_path: Path, *extra: str) -> tuple[Child, Any]:
    fh = log_path.open("w")
    argv = worker_argv(dsn, *extra, tag=log_path.stem)
    child = Child("worker", argv, stdout=fh, stderr=subprocess.STDOUT)
    return child, fh


def parse_worker_log(path: Path) -> list[dict[str, Any]]:
    batches: list[dict[str, Any]] = []
    with path.open() as fh:
        for line in fh:
            line = line.strip()
            if not line.startswith("{"):
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if rec.get("msg") == "batch":
                batches.append(rec)
    return batches


def tail(path: Path, n: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def run_worker_drain(dsn: str, log_path: Path, timeout: float, *extra: str) -> WorkerRun:
    """``pgingest worker --drain``: runs until the queues are empty; measured with wait4."""
    child, fh = start_worker(dsn, log_path, "--drain", *extra)
    try:
        res = child.wait(timeout)
    finally:
        fh.close()
    if res.rc != 0:
        raise BenchError(f"worker exited with {res.rc}:\n{tail(log_path)}")
    return WorkerRun(res, parse_worker_log(log_path), log_path, child.rss_samples_kb)


class MachineLoad:
    """Busy cores of the whole machine over a span (``/proc/stat``): everything that ran, ours
    and other people's. Printed next to each benchmark so that a noisy run shows."""

    @staticmethod
    def _sample() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        idle = fields[3] + fields[4]  # idle + iowait
        return sum(fields[:8]) - idle, sum(fields[:8])

    def __enter__(self) -> MachineLoad:
        self._busy0, self._total0 = self._sample()
        self._t0 = time.perf_counter()
        self.busy_cores: float | None = None
        return self

    def __exit__(self, *exc: object) -> None:
        busy, total = self._sample()
        hz = os.sysconf("SC_CLK_TCK")
        seconds = time.perf_counter() - self._t0
        self.busy_cores = round((busy - self._busy0) / hz / seconds, 2) if seconds > 0 else None
        self.loadavg = float(Path("/proc/loadavg").read_text().split()[0])


def proc_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of any process of this machine, from ``/proc/<pid>/stat``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# The backends of a pgingest worker: its claiming connection and its writer's.
WORKER_APPLICATIONS = ("pgingest-worker", "pgingest-writer", "pgingest-claims")


class BackendCpu:
    """CPU seconds of the PostgreSQL backends serving one database (``/proc/<pid>/stat``),
    sampled in a thread: what the database spent for a benchmark, other databases excluded."""

    def __init__(self, dsn: str, interval: float = 0.1) -> None:
        self.dsn = dsn
        self.interval = interval
        self._ticks: dict[int, int] = {}
        self._base: dict[int, int] = {}  # ticks at the first sample of a backend already running
        self._names: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="backend-cpu", daemon=True)
        self._hz = os.sysconf("SC_CLK_TCK")

    def __enter__(self) -> BackendCpu:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5.0)

    @staticmethod
    def _read(pid: int) -> int | None:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return None
        return int(fields[11]) + int(fields[12])  # utime + stime (fields 14 and 15)

    def _run(self) -> None:
        try:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                me = conn.info.backend_pid
                first = True
                while not self._stop.is_set():
                    rows = conn.execute(
                        "SELECT pid, coalesce(application_name, '') FROM pg_stat_activity"
                        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    ).fetchall()
                    for pid, app in rows:
                        if pid == me:
                            continue
                        t = self._read(int(pid))
                        if t is not None:
                            if first:  # it ran before the span: only what it spends from now on
                                self._base.setdefault(int(pid), t)
                            self._ticks[int(pid)] = max(t, self._ticks.get(int(pid), 0))
                            self._names[int(pid)] = str(app)
                    first = False
                    self._stop.wait(self.interval)
        except psycopg.Error:
            return

    def seconds(
        self, application_prefix: str | tuple[str, ...] = "", exclude: str | None = None
    ) -> float:
        """CPU seconds of the backends whose application_name starts with
        ``application_prefix`` (all: ""), those starting with ``exclude`` left out. A backend
        that already ran when the span began counts from its first sample on; one that started
        later counts whole."""
        ticks = sum(
            t - self._base.get(pid, 0)
            for pid, t in self._ticks.items()
            if self._names[pid].startswith(application_prefix)
            and not (exclude and self._names[pid].startswith(exclude))
        )
        return round(ticks / self._hz, 3)


# --------------------------------------------------------------------------- documents


def synthetic_docs(n: int, seed: int = 7, start: int = 0) -> list[tuple[str, str, str]]:
    """(key, title, body) rows: ``n`` documents of 1,000-3,000 characters."""
    return [
        (f"bench-{i}", f"Benchmark document {i}", texts.synthetic_body(i, seed))
        for i in range(start, start + n)
    ]


def copy_documents(
    conn: psycopg.Connection[Any],
    docs: Sequence[tuple[str, str, str]],
    batch: int = 1000,
    table: str = "pgingest.documents",
) -> float:
    """COPY the documents in statements of ``batch`` rows (each its own transaction): the way an
    application bulk-loads. Returns the seconds it took."""
    schema, _, name = table.partition(".")
    target = sql.Identifier(schema, name)
    t0 = time.perf_counter()
    with conn.cursor() as cur:
        for i in range(0, len(docs), batch):
            with cur.copy(sql.SQL("COPY {} (key, title, body) FROM STDIN").format(target)) as cp:
                for row in docs[i : i + batch]:
                    cp.write_row(row)
    return time.perf_counter() - t0


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100)."""
    if not values:
        return float("nan")
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def ratio(a: float, b: float) -> float:
    return round(a / b, 4) if b else float("nan")


def load_results() -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(RESULTS_PATH.read_text())
        return data
    except (OSError, ValueError):
        return {}


def write_results(update: dict[str, Any]) -> None:
    """Merges ``update`` into bench-results.json (bench.run and bench.peers share the file)."""
    data = load_results()
    data.update(update)
    tmp = RESULTS_PATH.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    tmp.replace(RESULTS_PATH)


# --------------------------------------------------------------------------- figures (pure)


def median_paired_ratio(num: Sequence[float], den: Sequence[float]) -> float:
    """The median of the per-round ratios ``num[i] / den[i]`` of interleaved rounds: each round's
    two runs ran next to each other, so a slow phase of a noisy machine cancels out of its ratio.
    A round whose reference is 0 is left out; nan when no round is left."""
    if len(num) != len(den):
        raise ValueError(f"{len(num)} rounds against {len(den)}")
    ratios = [a / b for a, b in zip(num, den, strict=True) if b]
    return round(statistics.median(ratios), 4) if ratios else float("nan")


def interleaved_order(round_no: int, pair: tuple[T, T]) -> tuple[T, T]:
    """The order of a round's two runs: as given in even rounds, reversed in odd ones (neither
    side always runs first, on a cache or WAL segment the other one warmed)."""
    return pair if round_no % 2 == 0 else (pair[1], pair[0])


def meets(op: str, target: float, value: float) -> bool:
    """Whether ``value`` meets a target (``op`` one of >=, <=, <, >); nan never does."""
    if value != value:  # nan
        return False
    return {
        ">=": value >= target,
        "<=": value <= target,
        "<": value < target,
        ">": value > target,
    }[op]


def cpu_budget(
    chunks: int,
    db_cpu_s: float,
    worker_cpu_s: float,
    copy_cpu_s: float,
    copy_rows: int,
    worker_startup_cpu_s: float | None = None,
) -> dict[str, float]:
    """The e2e run's CPU per stored chunk against binary COPY's CPU per row of the same rows:
    ``db_cpu_us_per_chunk`` (every backend of the run's database while the worker drained),
    ``worker_cpu_us_per_chunk`` (the worker process), ``copy_cpu_us_per_row`` (the COPY's client
    and backend) and ``db_cpu_vs_copy_ratio`` (the first over the last).

    With ``worker_startup_cpu_s`` (the CPU of the same worker command draining nothing, in the same
    run: imports, connections, one empty pass, exit), also ``worker_cpu_us_per_chunk_steady``: the
    drain's CPU less that start-up, per chunk, what a long-running worker spends (it starts once)."""
    if chunks <= 0 or copy_rows <= 0:
        raise ValueError(f"no chunks ({chunks}) or no COPY rows ({copy_rows})")
    db_us = db_cpu_s / chunks * 1e6
    copy_us = copy_cpu_s / copy_rows * 1e6
    out = {
        "db_cpu_us_per_chunk": round(db_us, 2),
        "worker_cpu_us_per_chunk": round(worker_cpu_s / chunks * 1e6, 2),
        "copy_cpu_us_per_row": round(copy_us, 2),
        "db_cpu_vs_copy_ratio": round(db_us / copy_us, 4) if copy_us else float("nan"),
    }
    if worker_startup_cpu_s is not None:
        if not 0 <= worker_startup_cpu_s <= worker_cpu_s:
            raise ValueError(
                f"the worker's start-up CPU ({worker_startup_cpu_s} s) is not within its drain's"
                f" ({worker_cpu_s} s)"
            )
        out["worker_startup_cpu_s"] = round(worker_startup_cpu_s, 3)
        steady = (worker_cpu_s - worker_startup_cpu_s) / chunks * 1e6
        out["worker_cpu_us_per_chunk_steady"] = round(steady, 2)
    return out


def capture_ratios(runs: dict[str, dict[str, dict[str, list[dict[str, float]]]]]) -> dict[str, Any]:
    """The capture figures of one settings' pgbench rounds. ``runs[op][clients]`` is
    ``{"with": [run, ...], "without": [run, ...]}`` (``op`` insert or update, ``clients`` "1" or
    "8", rounds in order, each run ``{"latency_ms", "tps", ...}``).

    ``<op>_latency_ratio``: median of the paired latency ratios (with capture / without) at 1
    client; ``<op>_tps_ratio``: median of the paired throughput ratios at 8 clients.
    ``single_row_latency_ratio`` is the worse (larger) of the operations' latency ratios,
    ``concurrent_tps_ratio`` the worse (smaller) of their throughput ratios."""
    out: dict[str, Any] = {}
    latency: list[float] = []
    tps: list[float] = []
    for op, by_clients in sorted(runs.items()):
        if "1" in by_clients:
            pair = by_clients["1"]
            lat = median_paired_ratio(
                [r["latency_ms"] for r in pair["with"]], [r["latency_ms"] for r in pair["without"]]
            )
            out[f"{op}_latency_ratio"] = lat
            out[f"{op}_latency_ms_with"] = statistics.median(r["latency_ms"] for r in pair["with"])
            out[f"{op}_latency_ms_without"] = statistics.median(
                r["latency_ms"] for r in pair["without"]
            )
            latency.append(lat)
        if "8" in by_clients:
            pair = by_clients["8"]
            t = median_paired_ratio(
                [r["tps"] for r in pair["with"]], [r["tps"] for r in pair["without"]]
            )
            out[f"{op}_tps_ratio"] = t
            out[f"{op}_tps_with"] = round(statistics.median(r["tps"] for r in pair["with"]), 1)
            out[f"{op}_tps_without"] = round(
                statistics.median(r["tps"] for r in pair["without"]), 1
            )
            tps.append(t)
    nan = float("nan")
    # nan (a failed computation) must not hide behind max/min: it makes the headline nan too.
    out["single_row_latency_ratio"] = (
        nan if not latency or any(x != x for x in latency) else max(latency)
    )
    out["concurrent_tps_ratio"] = nan if not tps or any(x != x for x in tps) else min(tps)
    return out


_PGBENCH_FIGURES = {
    "transactions": r"number of transactions actually processed:\s*(\d+)",
    "failed": r"number of failed transactions:\s*(\d+)",
    "latency_ms": r"latency average\s*=\s*([0-9.]+)\s*ms",
    "tps": r"tps\s*=\s*([0-9.]+)\s*\(without initial connection time\)",
}


def parse_pgbench(output: str) -> dict[str, float]:
    """transactions, failed, latency_ms (average) and tps (without the initial connection time)
    from pgbench's summary. Raises BenchError when one is missing."""
    import re

    out: dict[str, float] = {}
    for key, pattern in _PGBENCH_FIGURES.items():
        m = re.search(pattern, output)
        if m is None:
            if key == "failed":  # pgbench before 15 does not print it
                out[key] = 0
                continue
            raise BenchError(f"pgbench printed no {key}:\n{output[-2000:]}")
        out[key] = float(m.group(1)) if "." in m.group(1) else int(m.group(1))
    return out


# --------------------------------------------------------------------------- pgbench, durability


def pgbench_path() -> str:
    """pgbench: on PATH, else in ``pg_config --bindir``, else the newest /usr/lib/postgresql/*."""
    import shutil

    found = shutil.which("pgbench")
    if found:
        return found
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        bindir = subprocess.run(
            ["pg_config", "--bindir"], capture_output=True, text=True, check=True
        ).stdout.strip()
        if (Path(bindir) / "pgbench").exists():
            return str(Path(bindir) / "pgbench")
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/pgbench"), key=lambda p: int(p.parts[-3])
    )
    if candidates:
        return str(candidates[-1])
    raise BenchError("pgbench not found (it ships with PostgreSQL: postgresql-client)")


def run_pgbench(
    dsn: str,
    script: Path,
    *,
    clients: int,
    seconds: int,
    pgoptions: str | None = None,
) -> dict[str, float]:
    """``pgbench -n -M prepared -T seconds -c clients -f script dsn``; its summary figures."""
    env = dict(os.environ)
    if pgoptions is not None:
        env["PGOPTIONS"] = pgoptions
    argv = [
        pgbench_path(),
        "-n",
        "-M",
        "prepared",
        "-T",
        str(seconds),
        "-c",
        str(clients),
        "-j",
        str(min(clients, os.cpu_count() or 1)),
        "-f",
        str(script),
        dsn,
    ]
    proc = subprocess.run(
        argv, capture_output=True, text=True, env=env, timeout=seconds + 120, check=False
    )
    text = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise BenchError(f"pgbench exited with {proc.returncode}:\n{text[-2000:]}")
    res = parse_pgbench(text)
    if res["failed"]:
        raise BenchError(f"pgbench: {res['failed']} failed transactions:\n{text[-2000:]}")
    return res


DURABLE_SETTINGS = ("fsync", "full_page_writes")
"""Server-level (sighup) settings that production runs with on; synchronous_commit is per
session (pgbench gets ``PGOPTIONS='-c synchronous_commit=on'``)."""


def _durability_marker(url: str) -> Path:
    import hashlib
    import tempfile

    info = psycopg.conninfo.conninfo_to_dict(url)
    key = f"{info.get('host', '')}:{info.get('port', '')}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"pgingest-bench-durability-{digest}.json"


def _restore_settings(url: str, saved: dict[str, str | None]) -> None:
    """ALTER SYSTEM back to what postgresql.auto.conf had (RESET where it had nothing), reload,
    and wait until new sessions see it."""
    with psycopg.connect(url, autocommit=True) as admin:
        for name, value in saved.items():
            if value is None:
                admin.execute(sql.SQL("ALTER SYSTEM RESET {}").format(sql.Identifier(name)))
            else:
                admin.execute(
                    sql.SQL("ALTER SYSTEM SET {} = {}").format(
                        sql.Identifier(name), sql.Literal(value)
                    )
                )
        admin.execute("SELECT pg_reload_conf()")
    _wait_for_settings(url, None)


def _wait_for_settings(url: str, want: dict[str, str] | None, timeout: float = 15.0) -> None:
    """Until a new session sees ``want`` (None: only that the reload was processed)."""
    deadline = time.monotonic() + timeout
    while True:
        with psycopg.connect(url, autocommit=True) as c:
            seen = {
                str(n): str(s)
                for n, s in c.execute(
                    "SELECT name, setting FROM pg_settings WHERE name = ANY (%s)",
                    (list(DURABLE_SETTINGS),),
                )
            }
        if want is None or all(seen.get(k) == v for k, v in want.items()):
            if want is None:
                time.sleep(0.5)  # the postmaster signals its children asynchronously
            return
        if time.monotonic() > deadline:
            raise BenchError(f"the server did not take {want} within {timeout:.0f} s: {seen}")
        time.sleep(0.2)


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, killed but not yet reaped, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def restore_stale_durability(url: str) -> bool:
    """Puts back the server settings a benchmark run that died left changed (its marker file
    names its pid and the settings it found). True when it restored something."""
    marker = _durability_marker(url)
    try:
        data = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    pid = int(data.get("pid", 0))
    if pid != os.getpid() and _alive(pid):
        return False  # that run is still going
    _restore_settings(url, data["saved"])
    marker.unlink(missing_ok=True)
    return True


@contextlib.contextmanager
def production_durability(url: str) -> Iterator[dict[str, Any]]:
    """fsync and full_page_writes on for the whole server while the block runs (ALTER SYSTEM +
    pg_reload_conf: both are sighup settings), put back as they were on exit, even on failure;
    a marker file lets the next run put them back if this process is killed. Yields
    ``{"changed": [names], "note": ...}``. A server that already runs with them on is left
    alone; without superuser nothing can be changed (the caller still sets synchronous_commit)."""
    with psycopg.connect(url, autocommit=True) as admin:
        current = {
            str(n): str(s)
            for n, s in admin.execute(
                "SELECT name, setting FROM pg_settings WHERE name = ANY (%s)",
                (list(DURABLE_SETTINGS),),
            )
        }
        off = [n for n in DURABLE_SETTINGS if current.get(n) != "on"]
        if not off:
            yield {"changed": [], "note": "the server already runs with them on"}
            return
        superuser = admin.execute("SELECT current_setting('is_superuser')").fetchone()
        if not superuser or superuser[0] != "on":
            yield {"changed": [], "note": f"not superuser: {', '.join(off)} left off"}
            return
        saved: dict[str, str | None] = {n: None for n in off}
        for name, value in admin.execute(
            "SELECT name, setting FROM pg_file_settings"
            " WHERE sourcefile LIKE '%%postgresql.auto.conf' AND name = ANY (%s) AND applied",
            (off,),
        ):
            saved[str(name)] = str(value)
    marker = _durability_marker(url)
    marker.write_text(json.dumps({"pid": os.getpid(), "saved": saved}))
    try:
        with psycopg.connect(url, autocommit=True) as admin:
            for name in off:
                admin.execute(sql.SQL("ALTER SYSTEM SET {} = on").format(sql.Identifier(name)))
            admin.execute("SELECT pg_reload_conf()")
        _wait_for_settings(url, {n: "on" for n in off})
        yield {"changed": off, "note": "ALTER SYSTEM + pg_reload_conf, restored afterwards"}
    finally:
        _restore_settings(url, saved)
        marker.unlink(missing_ok=True)
