"""Stopping the service does not cost the documents being parsed (pgingest.raw.parse).

``systemctl stop`` (KillMode=control-group) sends SIGTERM to every process of the service, the
parse children included, and a Ctrl-C sends SIGINT to the whole foreground group. The children
ignore both (the worker finishes its batch, then stops them itself); a child that dies of a
stop signal anyway is a transient error (retried), never a dead letter at once. The pool still
ends its children at close (SIGKILL when one does not answer) and at the interpreter's exit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from pgingest.raw import detect
from pgingest.raw.errors import RawDocumentError
from pgingest.raw.parse import SLOW_HOOK_S, ParseOptions, ParsePool

pytestmark = pytest.mark.timeout(120)


def test_sigterm_and_sigint_neither_kill_a_child_nor_fail_its_document() -> None:
    with ParsePool(1, ParseOptions(timeout_s=30)) as pool:
        pool.start()
        (pid,) = pool.child_pids
        # idle
        os.kill(pid, signal.SIGTERM)
        os.kill(pid, signal.SIGINT)
        time.sleep(0.3)
        assert pool.parse(b"one document", detect.TEXT).text() == "one document"
        assert pool.child_pids == [pid]
        # in the middle of a parse (a slow one: SLOW_HOOK_S more)
        started = time.monotonic()
        future = pool.submit(b"a slow document", detect.TEXT, test_hook="slow")
        time.sleep(0.5)
        os.kill(pid, signal.SIGTERM)
        os.kill(pid, signal.SIGINT)
        assert future.result(timeout=30).text() == "a slow document"
        assert time.monotonic() - started >= SLOW_HOOK_S
        assert pool.child_pids == [pid]


def test_a_child_dead_of_a_stop_signal_is_a_transient_error() -> None:
    # SIGHUP (a closed terminal) is not ignored: a real death by a stop signal, end to end. (Under
    # nohup the test process ignores SIGHUP, and the children inherit it: the default for them.)
    hup = signal.signal(signal.SIGHUP, signal.SIG_DFL)
    try:
        _a_child_dead_of_sighup()
    finally:
        signal.signal(signal.SIGHUP, hup)


def _a_child_dead_of_sighup() -> None:
    with ParsePool(1, ParseOptions(timeout_s=30)) as pool:
        pool.start()
        (pid,) = pool.child_pids
        future = pool.submit(b"x", detect.TEXT, test_hook="slow")
        time.sleep(0.5)
        os.kill(pid, signal.SIGHUP)
        with pytest.raises(RawDocumentError) as err:
            future.result(timeout=30)
        assert err.value.error_class == "parse_error" and "SIGHUP" in str(err.value)
        assert err.value.permanent is False  # retried by the worker, not dead-lettered
        assert pool.parse(b"next", detect.TEXT).text() == "next"  # a fresh child
        assert pool.child_pids != [pid]
    # how the death of a child is classed, signal by signal
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        exc = pool._death(-sig)
        assert (exc.error_class, exc.permanent) == ("parse_error", False), sig
    crash = pool._death(-signal.SIGSEGV)
    assert (crash.error_class, crash.permanent) == ("parse_error", True)
    killed = pool._death(-signal.SIGKILL)
    assert (killed.error_class, killed.permanent) == ("oom", True)
    assert pool._death(1).permanent


def test_close_kills_a_child_that_does_not_answer() -> None:
    pool = ParsePool(2)
    pool.start()
    procs = [psutil.Process(pid) for pid in pool.child_pids]
    os.kill(procs[0].pid, signal.SIGSTOP)  # told to exit, it cannot: SIGKILL after 5 s
    started = time.monotonic()
    pool.close()
    assert time.monotonic() - started < 15
    gone, alive = psutil.wait_procs(procs, timeout=10)
    assert alive == []


_LEAVE_POOLS_OPEN = (
    "import threading, time\n"
    "from pgingest.raw.parse import ParsePool, ParseOptions\n"
    "def leave_pools_open():\n"
    "    busy = ParsePool(1, ParseOptions(timeout_s=300))\n"
    "    idle = ParsePool(1)\n"
    "    busy.start(); idle.start()\n"
    "    threading.Thread(target=lambda: busy.parse(b'x', 'text/plain', test_hook='hang'),"
    " daemon=True).start()\n"
    "    time.sleep(0.5)\n"
    "    print(*busy.child_pids, *idle.child_pids, flush=True)\n"
    "    globals()['pools'] = (busy, idle)\n"
)


@pytest.mark.parametrize(
    "how",
    [
        "leave_pools_open()\n",
        # a worker of `worker --processes N` is a multiprocessing child: its exit runs
        # multiprocessing's exit handler directly, not atexit
        "import multiprocessing as mp, sys\n"
        "p = mp.get_context('fork').Process(target=leave_pools_open)\n"
        "p.start(); p.join(20)\n"
        "if p.exitcode is None: p.kill(); p.join(); sys.exit(1)  # (it hung)\n"
        "sys.exit(p.exitcode)\n",
    ],
    ids=["main-process", "multiprocessing-child"],
)
def test_an_exit_without_close_does_not_hang_on_the_children(how: str) -> None:
    """multiprocessing's exit handler stops daemonic children with SIGTERM and waits for each:
    the children ignore SIGTERM, so the pool kills its own first."""
    script = _LEAVE_POOLS_OPEN + how
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        children = [int(p) for p in proc.stdout.readline().split()]
        assert len(children) == 2
        assert proc.wait(timeout=40) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(p) for p in children):
        time.sleep(0.1)
    assert not any(_alive(p) for p in children), "a parse process outlived its worker"


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for a reaper counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
