#!/usr/bin/env python3
"""Chaos run: the whole pipeline under faults, then a check that nothing was lost.

    .venv/bin/python scripts/chaos.py                 # make chaos: 20,000 documents
    .venv/bin/python scripts/chaos.py --small         # 1,500 documents (make test runs this)
    .venv/bin/python scripts/chaos.py --docs 5000 --keep --seed 7

What it does, against a fresh database it creates on the server of ``$DATABASE_URL`` (else the
private cluster of ``scripts/pgcluster.sh``), dropped at the end unless ``--keep``:

* installs pgingest, starts the fake embedding server as a subprocess and registers a model;
* the fake server answers 10% of the calls with a 429 (``Retry-After: 1``), 10% with a 503 and
  hangs on 5% past the worker's HTTP timeout (``--http-timeout 2``, ``hang_s`` 3);
* several writer threads insert the documents (multi-row INSERTs, row-by-row transactions and
  COPY), paced over a few tens of seconds, while 2 worker processes
  (``python -m pgingest.cli worker --visibility-timeout 5``) drain the queue;
* a mutator updates documents (once, in bursts of quick successive updates, several rows in one
  statement, metadata-only no-op updates), deletes some and re-creates a few deleted keys;
* 50 planted bad documents: the fake server's poison markers ``__NAN__``, ``__DIM__``,
  ``__ZERO__``, ``__REJECT__``, and bodies of zero-width characters only;
* a worker is killed with SIGKILL at random moments (at least 5 times) and restarted at once;
* PostgreSQL itself is restarted once (fast shutdown: ``scripts/pgcluster.sh stop`` then
  ``start``) mid-run, and the running workers must reconnect by themselves. Only when the
  database is the private cluster (same port as ``scripts/pgcluster.sh url``, which honours
  ``PGINGEST_PGPORT``/``PGINGEST_PGDATA``); otherwise, or with ``--no-pg-restart``, skipped
  with a notice. Every client of that cluster sees the restart: do not run it while tests run.

Then faults off, the workers stopped, one final ``worker --drain``, and the checks (each printed
PASS or FAIL; the exit status is 1 when any fails): every live document has exactly the chunks
``pgingest.chunking.chunk_documents`` predicts for its latest version, with unit-norm vectors
of the model's dimension; no duplicate chunk; no chunk, state or dead letter of a deleted
document; exactly the planted bad documents are dead-lettered, each with the reason its poison
calls for; the queue is empty.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

import psycopg
from psycopg import sql

from pgingest import chunking, db, install
from pgingest.testing import texts
from pgingest.testing.fake_provider import control

ROOT = Path(__file__).resolve().parent.parent
PGCLUSTER = ROOT / "scripts" / "pgcluster.sh"
MODEL = "v1"
DIMENSIONS = 384
QUEUE_TABLE = sql.Identifier("pgmq", f"q_pgingest_{MODEL}")
FAULT_RATES = {"rate_limit": 0.10, "unavailable": 0.10, "timeout": 0.05}
HTTP_TIMEOUT_S = 2
HANG_S = 3
VISIBILITY_TIMEOUT_S = 5

# Planted bad documents: (kind, body template, expected error_class, a word its message holds).
POISONS: tuple[tuple[str, str, str, str], ...] = (
    (
        "nan",
        "A note about {i} that turns into __NAN__ on the way.",
        "invalid_vector_non_finite",
        "non-finite",
    ),
    ("dim", "A note about {i} with one __DIM__ too few.", "invalid_vector_dimension", "dimensions"),
    (
        "zero",
        "A note about {i} that is all __ZERO__ inside.",
        "invalid_vector_zero_vector",
        "zero vector",
    ),
    (
        "reject",
        "A note about {i} the content filter will __REJECT__ at once.",
        "rejected_input",
        "rejected",
    ),
    ("blank", "\u200b\u200c\u200d\ufeff\u2060", "empty_document", "no text"),
)


T = TypeVar("T")


# -------------------------------------------------------------------------------- sizes


@dataclass(frozen=True)
class Plan:
    docs: int
    bad: int
    writers: int
    workers: int
    min_kills: int
    write_seconds: float
    kill_every: tuple[float, float]
    settle_seconds: float
    drain_seconds: float
    deadline_seconds: float


def make_plan(args: argparse.Namespace) -> Plan:
    small = args.small
    docs = args.docs if args.docs is not None else (1_500 if small else 20_000)
    write_seconds = args.write_seconds
    if write_seconds is None:
        write_seconds = 14.0 if small else max(20.0, min(60.0, docs / 400))
    return Plan(
        docs=docs,
        bad=args.bad,
        writers=args.writers,
        workers=args.workers,
        min_kills=args.kills,
        write_seconds=write_seconds,
        kill_every=(1.5, 3.5) if small else (3.0, 8.0),
        settle_seconds=60.0 if small else 180.0,
        drain_seconds=90.0 if small else 240.0,
        deadline_seconds=args.deadline,
    )


# -------------------------------------------------------------------------------- output

_T0 = time.monotonic()
_print_lock = threading.Lock()


def say(msg: str) -> None:
    with _print_lock:
        print(f"[{time.monotonic() - _T0:6.1f}s] {msg}", flush=True)


# -------------------------------------------------------------------------------- documents


@dataclass
class Doc:
    key: str
    title: str | None
    body: str
    metadata: dict[str, Any]


def make_documents(plan: Plan, rng: random.Random) -> tuple[list[Doc], dict[str, tuple[str, str]]]:
    """The good documents and the planted bad ones, shuffled; bad key -> (error_class, word)."""
    docs = [
        Doc(
            f"doc-{i:06d}",
            None if rng.random() < 0.1 else f"Title of document {i}",
            texts.mixed_body(rng, str(i)),
            {"n": i, "lang": rng.choice(["en", "fr", "de"])},
        )
        for i in range(plan.docs)
    ]
    bad: dict[str, tuple[str, str]] = {}
    for i in range(plan.bad):
        kind, template, error_class, word = POISONS[i % len(POISONS)]
        key = f"bad-{kind}-{i:03d}"
        title = None if kind == "blank" else f"Planted bad document {i}"
        docs.append(Doc(key, title, template.format(i=i), {"bad": kind}))
        bad[key] = (error_class, word)
    rng.shuffle(docs)
    return docs, bad


# -------------------------------------------------------------------------------- database


def server_url(cli_url: str | None) -> str:
    url = cli_url or os.environ.get("DATABASE_URL")
    if url:
        return url
    out = subprocess.run([str(PGCLUSTER), "url"], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def with_dbname(conninfo: str, dbname: str) -> str:
    return psycopg.conninfo.make_conninfo(conninfo, dbname=dbname)


def is_private_cluster(conninfo: str) -> tuple[bool, str]:
    """Is ``conninfo`` the private cluster of scripts/pgcluster.sh (same host and port)?"""
    params = psycopg.conninfo.conninfo_to_dict(conninfo)
    try:
        out = subprocess.run([str(PGCLUSTER), "url"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        return False, f"scripts/pgcluster.sh url failed: {exc}"
    private = psycopg.conninfo.conninfo_to_dict(out.stdout.strip())
    host = str(params.get("host") or "")
    port = str(params.get("port") or "5432")
    if host not in ("127.0.0.1", "localhost", "::1"):
        return False, f"host {host or '(socket)'} is not 127.0.0.1"
    if port != str(private.get("port")):
        return False, f"port {port} is not the private cluster's ({private.get('port')})"
    return True, f"private cluster on port {port}"


class Client:
    """One autocommit connection that reconnects and retries on connection-level errors.

    Every write it retries is idempotent (``ON CONFLICT (key) DO NOTHING``, ``SET body = x``,
    ``DELETE``), so a statement whose commit was lost with the connection may run twice.
    """

    def __init__(self, dsn: str, name: str, deadline: float) -> None:
        self.dsn = dsn
        self.name = name
        self.deadline = deadline
        self.conn: psycopg.Connection[Any] | None = None
        self.retries = 0

    def run(self, fn: Callable[[psycopg.Connection[Any]], T]) -> T:
        delay = 0.2
        while True:
            try:
                if self.conn is None or self.conn.closed:
                    self.conn = psycopg.connect(
                        self.dsn, autocommit=True, application_name=f"chaos-{self.name}"
                    )
                return fn(self.conn)
            except (psycopg.OperationalError, psycopg.InterfaceError):
                # Connection lost (restart), or deadlock / serialization: both retried.
                self.retries += 1
                self.close()
                if time.monotonic() > self.deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    def close(self) -> None:
        if self.conn is not None:
            with suppress(psycopg.Error):
                self.conn.close()
        self.conn = None


# -------------------------------------------------------------------------------- processes


class WorkerSlot:
    """A worker process that can be killed and restarted; each generation logs to its own file."""

    def __init__(self, index: int, cmd: list[str], env: dict[str, str], logdir: Path) -> None:
        self.index = index
        self.cmd = cmd
        self.env = env
        self.logdir = logdir
        self.generation = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log: IO[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.logdir / f"worker-{self.index}-{self.generation}.log"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self) -> None:
        self.generation += 1
        self.log = open(self.log_path, "wb")  # noqa: SIM115 (closed in _reap)
        self.proc = subprocess.Popen(
            self.cmd, stdout=self.log, stderr=subprocess.STDOUT, env=self.env
        )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self._reap(10)

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after 30 s; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGKILL)
        return self._reap(10)

    def _reap(self, timeout: float) -> int | None:
        code = None
        if self.proc is not None:
            code = self.proc.wait(timeout)
        if self.log is not None:
            self.log.close()
            self.log = None
        return code

    def log_text(self, offset: int = 0) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0


def start_fake_server(
    env: dict[str, str], seed: int, log: IO[bytes]
) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pgingest.testing.fake_provider",
            "--port",
            "0",
            "--seed",
            str(seed),
        ],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    if not url.startswith("http://"):
        proc.kill()
        raise RuntimeError(f"the fake server did not start (printed {url!r})")
    return proc, url


def restart_postgres(env: dict[str, str]) -> float:
    """Fast shutdown then start of the private cluster; returns the seconds it was down."""
    t = time.monotonic()
    for cmd in ("stop", "start"):
        out = subprocess.run(
            [str(PGCLUSTER), cmd], capture_output=True, text=True, env=env, timeout=120
        )
        if out.returncode != 0:
            raise RuntimeError(f"pgcluster.sh {cmd} failed: {out.stderr.strip()[-500:]}")
    return time.monotonic() - t


# -------------------------------------------------------------------------------- the run


@dataclass
class State:
    """What the actors did, shared between threads (guarded by ``lock``)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    inserted: list[str] = field(default_factory=list)
    inserted_set: set[str] = field(default_factory=set)
    deleted_keys: set[str] = field(default_factory=set)
    deleted_ids: set[int] = field(default_factory=set)
    ops: Counter[str] = field(default_factory=Counter)
    kills: int = 0
    restarts: int = 0
    errors: list[str] = field(default_factory=list)
    writer_retries: int = 0


class Chaos:
    def __init__(self, args: argparse.Namespace, plan: Plan) -> None:
        self.args = args
        self.plan = plan
        self.rng = random.Random(args.seed)
        self.state = State()
        self.stop = threading.Event()
        self.writers_done = threading.Event()
        self.killer_pause = threading.Lock()
        self.t_deadline = time.monotonic() + plan.deadline_seconds
        self.base_url = server_url(args.database_url)
        self.dbname = f"pgingest_chaos_{os.getpid()}"
        self.dsn = with_dbname(self.base_url, self.dbname)
        self.env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
        self.logdir = Path(tempfile.mkdtemp(prefix="pgingest-chaos-"))
        self.slots: list[WorkerSlot] = []
        self.fake: subprocess.Popen[str] | None = None
        self.fake_url = ""
        self.fake_log: IO[bytes] | None = None
        self.checks: list[tuple[str, str, str]] = []  # (PASS|FAIL|SKIP, name, detail)
        self.bad: dict[str, tuple[str, str]] = {}
        self.restart_note = ""

    # -- set-up and tear-down ----------------------------------------------------------------

    def create_database(self) -> None:
        with psycopg.connect(self.base_url, autocommit=True) as c:
            c.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(self.dbname)
                )
            )
            c.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.dbname)))
        install.install(self.dsn)

    def drop_database(self) -> None:
        try:
            with psycopg.connect(self.base_url, autocommit=True, connect_timeout=10) as c:
                c.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                        sql.Identifier(self.dbname)
                    )
                )
        except psycopg.Error as exc:
            say(f"could not drop database {self.dbname}: {exc}")

    def worker_cmd(self, *extra: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "pgingest.cli",
            "--log-level",
            "INFO",
            "worker",
            "--database-url",
            self.dsn,
            "--visibility-timeout",
            str(VISIBILITY_TIMEOUT_S),
            "--http-timeout",
            str(HTTP_TIMEOUT_S),
            "--poll-interval",
            "1",
            *extra,
        ]

    def cleanup(self, passed: bool) -> None:
        self.stop.set()
        for s in self.slots:
            if s.alive():
                s.kill()
        if self.fake is not None:
            self.fake.terminate()
            try:
                self.fake.wait(10)
            except subprocess.TimeoutExpired:
                self.fake.kill()
        if self.fake_log is not None:
            self.fake_log.close()
        if self.args.keep:
            say(f"kept database {self.dbname} ({self.dsn}) and logs in {self.logdir}")
        else:
            self.drop_database()
            if passed:
                shutil.rmtree(self.logdir, ignore_errors=True)
            else:
                say(f"logs kept in {self.logdir}")

    # -- actors ------------------------------------------------------------------------------

    def writer(self, idx: int, docs: list[Doc]) -> None:
        rng = random.Random(self.args.seed * 1000 + idx)
        client = Client(self.dsn, f"writer-{idx}", self.t_deadline)
        rate = max(len(docs) / self.plan.write_seconds, 1.0)
        t0 = time.monotonic()
        pos = 0
        try:
            while pos < len(docs) and not self.stop.is_set():
                due = t0 + pos / rate
                if (wait := due - time.monotonic()) > 0 and self.stop.wait(wait):
                    return
                batch = docs[pos : pos + rng.randint(5, 60)]
                style = rng.choice(("multi", "multi", "rows", "copy"))
                client.run(lambda c, b=batch, s=style: insert_docs(c, b, s))  # type: ignore[misc]
                with self.state.lock:
                    for d in batch:
                        self.state.inserted.append(d.key)
                        self.state.inserted_set.add(d.key)
                    self.state.ops[f"insert_{style}"] += 1
                pos += len(batch)
        except Exception as exc:  # reported as a failed check, never silently
            with self.state.lock:
                self.state.errors.append(f"writer {idx}: {type(exc).__name__}: {exc}")
        finally:
            with self.state.lock:
                self.state.writer_retries += client.retries
            client.close()

    def mutator(self) -> None:
        """Updates, bursts of updates, multi-row updates, no-op updates, deletes, re-creations."""
        rng = random.Random(self.args.seed + 17)
        client = Client(self.dsn, "mutator", self.t_deadline)
        n = self.plan.docs
        budget = Counter(
            update=max(10, n // 20),
            burst=max(5, n // 500),
            update_many=max(3, n // 1000),
            noop=max(5, n // 500),
            delete=max(10, n // 50),
            delete_many=max(2, n // 2000),
            recreate=max(3, n // 400),
        )
        total = sum(budget.values())
        interval = self.plan.write_seconds * 1.1 / total
        ops = list(budget.elements())
        rng.shuffle(ops)
        try:
            for op in ops:
                if self.stop.wait(interval * rng.uniform(0.5, 1.5)):
                    return
                with self.state.lock:
                    live = [
                        k
                        for k in self.state.inserted[-5000:]
                        if k.startswith("doc-") and k not in self.state.deleted_keys
                    ]
                    deleted = sorted(self.state.deleted_keys)
                if len(live) < 20:
                    continue
                self.mutate(client, rng, op, live, deleted)
                with self.state.lock:
                    self.state.ops[op] += 1
        except Exception as exc:
            with self.state.lock:
                self.state.errors.append(f"mutator: {type(exc).__name__}: {exc}")
        finally:
            client.close()

    def mutate(
        self, client: Client, rng: random.Random, op: str, live: list[str], deleted: list[str]
    ) -> None:
        def new_body(key: str) -> str:
            return texts.mixed_body(rng, f"{key} revised {rng.randrange(10**9)}")

        if op == "update":
            key = rng.choice(live)
            body = new_body(key)
            client.run(lambda c: c.execute(UPDATE_BODY, (body, key)))
        elif op == "burst":  # quick successive versions: only the last one may stay embedded
            key = rng.choice(live)
            for _ in range(rng.randint(3, 10)):
                body = new_body(key)
                client.run(lambda c, b=body: c.execute(UPDATE_BODY, (b, key)))  # type: ignore[misc]
        elif op == "update_many":  # one statement, many rows, in no particular order
            keys = rng.sample(live, min(len(live), rng.randint(5, 30)))
            bodies = [new_body(k) for k in keys]
            client.run(
                lambda c: c.execute(
                    "UPDATE pgingest.documents AS d SET body = u.body"
                    " FROM unnest(%s::text[], %s::text[]) AS u (key, body) WHERE d.key = u.key",
                    (keys, bodies),
                )
            )
        elif op == "noop":  # metadata only: same content hash, nothing queued
            key = rng.choice(live)
            client.run(
                lambda c: c.execute(
                    "UPDATE pgingest.documents SET metadata = metadata || '{\"touched\": true}'"
                    " WHERE key = %s",
                    (key,),
                )
            )
        elif op in ("delete", "delete_many"):
            keys = [rng.choice(live)] if op == "delete" else rng.sample(live, min(len(live), 10))
            with self.state.lock:  # before the statement: a lost ack still counts as deleted
                self.state.deleted_keys.update(keys)
            rows = client.run(
                lambda c: c.execute(
                    "DELETE FROM pgingest.documents WHERE key = ANY (%s) RETURNING id", (keys,)
                ).fetchall()
            )
            with self.state.lock:
                self.state.deleted_ids.update(int(r[0]) for r in rows)
        elif op == "recreate" and deleted:  # a deleted key comes back as a new document
            key = rng.choice(deleted)
            doc = Doc(key, f"Re-created {key}", new_body(key), {"recreated": True})
            client.run(lambda c: insert_docs(c, [doc], "multi"))
            with self.state.lock:
                self.state.deleted_keys.discard(key)

    def killer(self) -> None:
        rng = random.Random(self.args.seed + 99)
        lo, hi = self.plan.kill_every
        while time.monotonic() < self.t_deadline:
            enough = self.state.kills >= self.plan.min_kills
            if enough and (self.writers_done.is_set() or self.stop.is_set()):
                return
            if self.stop.wait(rng.uniform(lo, hi)):
                return
            with self.killer_pause:  # never during the PostgreSQL restart and its check
                slot = rng.choice(self.slots)
                pid = slot.pid
                slot.kill()
                slot.start()
                with self.state.lock:
                    self.state.kills += 1
                    k = self.state.kills
            say(f"SIGKILL worker {slot.index} (pid {pid}), kill #{k}; restarted as pid {slot.pid}")

    # -- monitoring --------------------------------------------------------------------------

    def progress(self, client: Client, last: dict[str, Any]) -> dict[str, Any]:
        row = client.run(
            lambda c: c.execute(
                sql.SQL(
                    "SELECT clock_timestamp(), (SELECT count(*) FROM pgingest.documents),"
                    " (SELECT count(*) FROM pgingest.embedding_state),"
                    " (SELECT count(*) FROM pgingest.embedding_state WHERE embedded_at >= %s),"
                    " (SELECT count(*) FROM {}), (SELECT count(*) FROM pgingest.dead_letters)"
                ).format(QUEUE_TABLE),
                (last.get("at") or "-infinity",),
            ).fetchone()
        )
        assert row is not None
        now, ndocs, embedded, recent, queue, dead = row
        dt = (now - last["at"]).total_seconds() if last.get("at") else None
        rate = f"{recent / dt:7.0f}/s" if dt else "      -  "
        with self.state.lock:
            inserted, kills = len(self.state.inserted), self.state.kills
        total = self.plan.docs + self.plan.bad
        say(
            f"inserted {inserted:>6,}/{total:,}  documents {ndocs:>6,}  embedded {embedded:>6,}"
            f" ({rate})  queue {queue:>6,}  dead {dead:>3}  kills {kills}"
        )
        return {"at": now, "queue": int(queue)}

    # -- PostgreSQL restart --------------------------------------------------------------------

    def restart_and_verify(self) -> None:
        with self.killer_pause:
            # A worker restarted a moment ago may not be connected yet: it would not see the
            # restart. Wait until every worker has written a batch since its (re)start.
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not all(
                "pgingest.worker: batch " in s.log_text() for s in self.slots
            ):
                time.sleep(0.2)
            offsets = [s.log_size() for s in self.slots]
            pids = [s.pid for s in self.slots]
            say("restarting PostgreSQL (fast shutdown) ...")
            down = restart_postgres(self.env)
            with self.state.lock:
                self.state.restarts += 1
            say(f"PostgreSQL back after {down:.1f}s; waiting for the workers to reconnect")
            deadline = time.monotonic() + 60
            missing: list[int] = list(range(len(self.slots)))
            while missing and time.monotonic() < deadline:
                missing = [
                    i
                    for i, s in enumerate(self.slots)
                    if not (s.alive() and s.pid == pids[i] and reconnected(s.log_text(offsets[i])))
                ]
                if missing:
                    time.sleep(0.5)
        if missing:
            self.restart_note = (
                f"worker(s) {missing} did not reconnect and process a batch within 60 s"
            )
        else:
            self.restart_note = (
                f"both workers (pids {', '.join(map(str, pids))}) logged the lost connection,"
                " reconnected by themselves and wrote batches again"
            )
        say(self.restart_note)

    # -- main ----------------------------------------------------------------------------------

    def run(self) -> bool:
        plan = self.plan
        say(
            f"chaos run: {plan.docs:,} documents + {plan.bad} planted bad ones, {plan.writers}"
            f" writers, {plan.workers} workers, >= {plan.min_kills} SIGKILLs, database {self.dbname}"
        )
        private, why = is_private_cluster(self.base_url)
        do_restart = not self.args.no_pg_restart and private
        if self.args.no_pg_restart:
            say("NOTICE: --no-pg-restart: PostgreSQL will not be restarted")
        elif not private:
            say(
                f"NOTICE: not restarting PostgreSQL: DATABASE_URL is not the private cluster ({why})"
            )
        self.create_database()
        self.fake_log = open(self.logdir / "fake-server.log", "wb")  # noqa: SIM115
        self.fake, self.fake_url = start_fake_server(self.env, self.args.seed, self.fake_log)
        with db.connect(self.dsn) as c:
            c.execute(
                "SELECT pgingest.register_model(%s, 'fake-384', %s, %s, index_method => 'none')",
                (MODEL, DIMENSIONS, self.fake_url),
            )
        control(
            self.fake_url,
            {"rates": FAULT_RATES, "retry_after": 1, "hang_s": HANG_S, "seed": self.args.seed},
        )
        say(
            f"fake server {self.fake_url}: faults {FAULT_RATES}, hang {HANG_S}s; logs {self.logdir}"
        )

        docs, self.bad = make_documents(plan, self.rng)
        for i in range(plan.workers):
            slot = WorkerSlot(i, self.worker_cmd(), self.env, self.logdir)
            slot.start()
            self.slots.append(slot)

        shares = [docs[i :: plan.writers] for i in range(plan.writers)]
        threads = [
            threading.Thread(target=self.writer, args=(i, share), name=f"writer-{i}")
            for i, share in enumerate(shares)
        ]
        threads.append(threading.Thread(target=self.mutator, name="mutator"))
        killer = threading.Thread(target=self.killer, name="killer")
        for t in threads:
            t.start()
        killer.start()

        monitor = Client(self.dsn, "monitor", self.t_deadline)
        last: dict[str, Any] = {}
        restarted = not do_restart
        total = plan.docs + plan.bad
        t_phase = time.monotonic()
        settled_at: float | None = None
        try:
            while time.monotonic() < self.t_deadline:
                time.sleep(2.5 if plan.docs > 5000 else 1.5)
                last = self.progress(monitor, last)
                with self.state.lock:
                    inserted = len(self.state.inserted)
                if not restarted and inserted >= 0.4 * total:
                    restarted = True
                    monitor.close()
                    self.restart_and_verify()
                writing = any(t.is_alive() for t in threads)
                if not writing:
                    self.writers_done.set()
                if writing or killer.is_alive() or not restarted:
                    continue
                if (
                    last["queue"] == 0
                    or time.monotonic() - t_phase > plan.write_seconds + plan.settle_seconds
                ):
                    settled_at = time.monotonic()
                    break
        finally:
            self.writers_done.set()
            if settled_at is None:
                self.stop.set()
            for t in threads:
                t.join()
            killer.join()
            monitor.close()
        if settled_at is None:
            with self.state.lock:
                self.state.errors.append("the chaos phase ran past the deadline")

        # Faults off, workers stopped, one final drain.
        stats = control(self.fake_url, {"rates": {}})["stats"]
        codes = [s.stop() for s in self.slots]
        say(f"chaos phase over; workers stopped (exit codes {codes}); faults off; final drain ...")
        t_drain = time.monotonic()
        drain_log = self.logdir / "worker-drain.log"
        with open(drain_log, "wb") as f:
            try:
                rc = subprocess.run(
                    self.worker_cmd("--drain"),
                    stdout=f,
                    stderr=subprocess.STDOUT,
                    env=self.env,
                    timeout=max(10.0, min(plan.drain_seconds, self.t_deadline - time.monotonic())),
                ).returncode
            except subprocess.TimeoutExpired:
                rc = -1
        say(f"final drain exited with {rc} after {time.monotonic() - t_drain:.1f}s")
        monitor = Client(self.dsn, "monitor", time.monotonic() + 30)
        self.progress(monitor, last)
        monitor.close()
        return self.check(stats, rc, do_restart, why)

    # -- checks --------------------------------------------------------------------------------

    def record(self, ok: bool | None, name: str, detail: str) -> None:
        status = "SKIP" if ok is None else "PASS" if ok else "FAIL"
        self.checks.append((status, name, detail))
        print(f"{status}  {name}: {detail}", flush=True)

    def check(self, stats: dict[str, Any], drain_rc: int, do_restart: bool, why: str) -> bool:
        print("\n== checks ==", flush=True)
        st = self.state
        by_mode = stats.get("by_mode", {})
        injected = {m: int(by_mode.get(m, 0)) for m in FAULT_RATES}
        self.record(
            all(v > 0 for v in injected.values()),
            "faults injected",
            f"{stats.get('requests', 0):,} embedding requests: "
            + ", ".join(f"{m} {v}" for m, v in injected.items()),
        )
        self.record(
            st.kills >= self.plan.min_kills,
            "workers killed",
            f"{st.kills} SIGKILLs (at least {self.plan.min_kills}), each restarted",
        )
        if do_restart:
            self.record(
                st.restarts == 1 and self.restart_note.startswith("both"),
                "PostgreSQL restart",
                self.restart_note or "not done",
            )
        else:
            reason = "--no-pg-restart" if self.args.no_pg_restart else why
            self.record(None, "PostgreSQL restart", f"skipped ({reason})")
        self.record(
            not st.errors,
            "actors",
            "; ".join(st.errors)
            or (f"writes {dict(sorted(st.ops.items()))}; {st.writer_retries} writer retries"),
        )
        self.record(drain_rc == 0, "final drain", f"worker --drain exit code {drain_rc}")

        with db.connect(self.dsn) as conn, conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            self.check_documents(conn)
            self.check_chunks(conn)
            self.check_deleted(conn)
            self.check_dead_letters(conn)
            queue = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(QUEUE_TABLE)).fetchone()
            assert queue is not None
            self.record(
                queue[0] == 0, "queue empty", f"{queue[0]} messages left in pgingest_{MODEL}"
            )

        failed = [c for c in self.checks if c[0] == "FAIL"]
        print(
            f"\n{'PASS' if not failed else 'FAIL'}: {len(self.checks) - len(failed)} of"
            f" {len(self.checks)} checks passed or skipped in {time.monotonic() - _T0:.1f}s",
            flush=True,
        )
        if failed:
            self.print_log_tails()
        return not failed

    def check_documents(self, conn: psycopg.Connection[Any]) -> None:
        keys = {r[0] for r in conn.execute("SELECT key FROM pgingest.documents")}
        expected = self.state.inserted_set - self.state.deleted_keys
        missing = sorted(expected - keys)
        extra = sorted(keys - expected)
        self.record(
            not missing and not extra,
            "documents",
            f"{len(keys):,} live documents = inserted {len(self.state.inserted_set):,} -"
            f" deleted {len(self.state.deleted_keys)}"
            + (f"; missing {missing[:5]}" if missing else "")
            + (f"; unexpected {extra[:5]}" if extra else ""),
        )

    def check_chunks(self, conn: psycopg.Connection[Any]) -> None:
        cfg_rows = dict(conn.execute("SELECT key, value FROM pgingest.config").fetchall())
        cfg = chunking.ChunkerConfig.from_settings(cfg_rows)
        docs = [
            r
            for r in conn.execute(
                "SELECT id, key, title, body, content_hash FROM pgingest.documents ORDER BY id"
            )
            if r[1] not in self.bad
        ]
        t = time.monotonic()
        predicted = chunking.chunk_documents([(r[2], r[3]) for r in docs], cfg)
        say(f"predicted the chunks of {len(docs):,} documents in {time.monotonic() - t:.1f}s")
        got: dict[int, list[tuple[Any, ...]]] = {}
        # The chunks of the model's profile with the model's vector of that exact text (its
        # store row joined on chunk_hash): NULL dims where the vector is missing or stale.
        query = sql.SQL(
            "SELECT c.doc_id, c.ordinal, c.content, c.char_start, c.char_end, c.token_count,"
            " c.chunk_hash, c.chunker, vector_dims(s.embedding), vector_norm(s.embedding)"
            " FROM pgingest.chunks AS c"
            " JOIN pgingest.models AS m ON m.name = {model} AND m.profile_id = c.profile_id"
            " LEFT JOIN pgingest.{store} AS s ON s.doc_id = c.doc_id AND s.ordinal = c.ordinal"
            " AND s.chunk_hash = c.chunk_hash"
            " ORDER BY c.doc_id, c.ordinal"
        ).format(model=sql.Literal(MODEL), store=sql.Identifier(f"store_{MODEL}"))
        for r in conn.execute(query):
            got.setdefault(int(r[0]), []).append(r)
        state = {
            int(r[0]): (bytes(r[1]), int(r[2]))
            for r in conn.execute(
                "SELECT doc_id, content_hash, chunk_count FROM pgingest.embedding_state"
                " WHERE model = %s",
                (MODEL,),
            )
        }
        wrong: list[str] = []
        bad_vectors: list[str] = []
        n_chunks = 0
        for (doc_id, key, _title, _body, content_hash), chunks in zip(docs, predicted, strict=True):
            rows = got.get(doc_id, [])
            n_chunks += len(chunks)
            want = [(c.ordinal, c.text, c.char_start, c.char_end, c.token_count) for c in chunks]
            have = [(r[1], r[2], r[3], r[4], r[5]) for r in rows]
            if want != have:
                wrong.append(f"{key} ({len(have)} chunks, {len(want)} predicted)")
                continue
            for c, r in zip(chunks, rows, strict=True):
                if (
                    bytes(r[6]) != hashlib.sha256(c.embed_input.encode()).digest()
                    or r[7] != cfg.version
                ):
                    wrong.append(f"{key} chunk {c.ordinal}: hash or chunker differs")
                if r[8] != DIMENSIONS or r[9] is None or abs(float(r[9]) - 1.0) > 1e-3:
                    bad_vectors.append(f"{key} chunk {c.ordinal}: dims {r[8]}, norm {r[9]}")
            if state.get(doc_id) != (bytes(content_hash), len(chunks)):
                wrong.append(
                    f"{key}: embedding_state {state.get(doc_id)!r} is not its latest version"
                )
        self.record(
            not wrong,
            "chunks as predicted",
            f"{len(docs):,} live good documents, {n_chunks:,} chunks, each exactly as"
            " chunk_documents predicts for the latest version, embedding_state current"
            + (f"; {len(wrong)} wrong: {wrong[:5]}" if wrong else ""),
        )
        self.record(
            not bad_vectors,
            "vectors",
            f"every chunk has a {DIMENSIONS}-dim vector of norm 1 (+-1e-3)"
            + (f"; {len(bad_vectors)} bad: {bad_vectors[:5]}" if bad_vectors else ""),
        )
        dup = conn.execute(
            "SELECT count(*) FROM (SELECT doc_id, ordinal FROM pgingest.chunks"
            " GROUP BY 1, 2 HAVING count(*) > 1) AS s"
        ).fetchone()
        gaps = conn.execute(
            "SELECT count(*) FROM (SELECT doc_id FROM pgingest.chunks GROUP BY doc_id"
            " HAVING max(ordinal) + 1 <> count(*)) AS s"
        ).fetchone()
        assert dup is not None and gaps is not None
        self.record(
            dup[0] == 0 and gaps[0] == 0,
            "no duplicate chunk",
            f"{dup[0]} duplicated (doc_id, ordinal), {gaps[0]} documents with gaps in ordinals",
        )

    def check_deleted(self, conn: psycopg.Connection[Any]) -> None:
        ids = sorted(self.state.deleted_ids)
        row = conn.execute(
            sql.SQL(
                "SELECT"
                " (SELECT count(*) FROM pgingest.chunks c WHERE NOT EXISTS"
                "   (SELECT 1 FROM pgingest.documents d WHERE d.id = c.doc_id))"
                " + (SELECT count(*) FROM pgingest.{store} c WHERE NOT EXISTS"
                "   (SELECT 1 FROM pgingest.documents d WHERE d.id = c.doc_id)),"
                " (SELECT count(*) FROM pgingest.embedding_state s WHERE NOT EXISTS"
                "   (SELECT 1 FROM pgingest.documents d WHERE d.id = s.doc_id)),"
                " (SELECT count(*) FROM pgingest.dead_letters l WHERE l.doc_id IS NOT NULL AND NOT EXISTS"
                "   (SELECT 1 FROM pgingest.documents d WHERE d.id = l.doc_id)),"
                " (SELECT count(*) FROM pgingest.documents WHERE id = ANY (%s))"
            ).format(store=sql.Identifier(f"store_{MODEL}")),
            (ids,),
        ).fetchone()
        assert row is not None
        self.record(
            all(v == 0 for v in row) and len(ids) > 0,
            "deleted documents leave nothing",
            f"{len(ids)} deleted documents: {row[0]} orphan chunks and vectors, {row[1]} orphan"
            f" states,"
            f" {row[2]} orphan dead letters, {row[3]} deleted ids still present",
        )

    def check_dead_letters(self, conn: psycopg.Connection[Any]) -> None:
        rows = conn.execute(
            "SELECT l.doc_key, l.error_class, l.error_message, l.content_hash = d.content_hash,"
            " EXISTS (SELECT 1 FROM pgingest.embedding_state s WHERE s.doc_id = l.doc_id)"
            " FROM pgingest.dead_letters l LEFT JOIN pgingest.documents d ON d.id = l.doc_id"
        ).fetchall()
        letters = {r[0]: r for r in rows}
        unexpected = sorted(k for k in letters if k not in self.bad)
        missing = sorted(k for k in self.bad if k not in letters)
        wrong = []
        for key, (error_class, word) in sorted(self.bad.items()):
            r = letters.get(key)
            if r is None:
                continue
            if r[1] != error_class or word not in r[2] or not r[3] or r[4]:
                wrong.append(f"{key}: {r[1]}: {r[2][:120]}")
        details = [
            f"{len(rows)} dead letters for {len(self.bad)} planted bad documents",
            ", ".join(f"{c} {n}" for c, n in sorted(Counter(r[1] for r in rows).items())),
        ]
        if unexpected:
            details.append(
                "unexpected: "
                + "; ".join(f"{k}: {letters[k][1]}: {letters[k][2][:100]}" for k in unexpected[:5])
            )
        if missing:
            details.append(f"missing: {missing[:5]}")
        if wrong:
            details.append(f"wrong reason: {wrong[:5]}")
        self.record(
            not unexpected and not missing and not wrong, "dead letters", "; ".join(details)
        )
        if rows:
            sample: dict[str, str] = {}
            for r in rows:
                sample.setdefault(r[1], r[2])
            for error_class, message in sorted(sample.items()):
                print(f"      e.g. {error_class}: {message[:110]}", flush=True)

    def print_log_tails(self) -> None:
        for path in sorted(self.logdir.glob("*.log")):
            text = path.read_text("utf-8", "replace").splitlines()
            interesting = [
                line
                for line in text
                if " WARNING " in line or " ERROR " in line or "Traceback" in line
            ]
            print(
                f"--- {path.name}: {len(text)} lines, {len(interesting)} warnings/errors",
                flush=True,
            )
            for line in interesting[-8:]:
                print("    " + line[:300], flush=True)


UPDATE_BODY = "UPDATE pgingest.documents SET body = %s WHERE key = %s"


def insert_docs(conn: psycopg.Connection[Any], docs: list[Doc], style: str) -> None:
    """Idempotent inserts (a retried batch inserts nothing twice), in three styles."""
    import json

    if style == "copy":
        rows: list[Any] = [(d.key, d.title, d.body, d.metadata) for d in docs]  # title may be None
        db.upsert_documents(conn, rows)
    elif style == "rows":
        with conn.transaction(), conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO pgingest.documents (key, title, body, metadata)"
                " VALUES (%s, %s, %s, %s::jsonb) ON CONFLICT (key) DO NOTHING",
                [(d.key, d.title, d.body, json.dumps(d.metadata)) for d in docs],
            )
    else:
        conn.execute(
            "INSERT INTO pgingest.documents (key, title, body, metadata)"
            " SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::jsonb[])"
            " ON CONFLICT (key) DO NOTHING",
            (
                [d.key for d in docs],
                [d.title for d in docs],
                [d.body for d in docs],
                [json.dumps(d.metadata) for d in docs],
            ),
        )


def reconnected(log: str) -> bool:
    """The log shows a lost connection, then a batch written after it."""
    lost = log.find("reconnecting")
    return lost >= 0 and log.find("pgingest.worker: batch ", lost) >= 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    old = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--docs", type=int, default=None, help="good documents (default 20,000; --small 1,500)"
    )
    p.add_argument("--small", action="store_true", help="the size make test runs (1,500 documents)")
    p.add_argument("--bad", type=int, default=50, help="planted bad documents (default 50)")
    p.add_argument("--writers", type=int, default=4)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--kills", type=int, default=5, help="at least this many SIGKILLs (default 5)")
    p.add_argument(
        "--write-seconds", type=float, default=None, help="spread the inserts over this long"
    )
    p.add_argument("--deadline", type=float, default=540.0, help="give up after this many seconds")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--database-url", default=None, help="default: $DATABASE_URL, else the private cluster"
    )
    p.add_argument("--no-pg-restart", action="store_true", help="do not restart PostgreSQL")
    p.add_argument("--keep", action="store_true", help="keep the database and the logs")
    args = p.parse_args(argv)
    if args.docs is not None and args.docs < 100:
        p.error("--docs must be at least 100")
    chaos = Chaos(args, make_plan(args))
    passed = False
    try:
        with _sigterm_as_interrupt():
            passed = chaos.run()
    except KeyboardInterrupt:
        say("interrupted")
    finally:
        chaos.cleanup(passed)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
