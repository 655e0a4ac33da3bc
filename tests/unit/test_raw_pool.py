"""ParsePool's start and close (pgingest.raw.parse): every child started at once and ready, and
every child told to exit before any is waited for, each exiting cleanly."""

from __future__ import annotations

import subprocess
import sys
import time

import psutil
import pytest

from pgingest.raw import detect
from pgingest.raw.parse import ParsePool

pytestmark = pytest.mark.timeout(120)


def test_start_runs_every_child_before_any_document_and_close_ends_them() -> None:
    pool = ParsePool(2)
    try:
        assert pool.child_pids == []
        pool.start()
        pids = pool.child_pids
        assert len(pids) == 2
        procs = [psutil.Process(pid) for pid in pids]
        # ready: the first documents go to the children already started, none is replaced
        assert pool.parse(b"one document", detect.TEXT).text() == "one document"
        assert pool.parse(b"another", detect.TEXT).text() == "another"
        pool.start()  # nothing to start: the same children
        assert sorted(pool.child_pids) == sorted(pids)
    finally:
        pool.close()
    gone, alive = psutil.wait_procs(procs, timeout=10)
    assert alive == []
    assert pool.child_pids == []
    with pytest.raises(RuntimeError, match="closed"):
        pool.start()


def test_a_parse_process_exits_when_its_worker_is_killed() -> None:
    """A worker killed with SIGKILL (or by the OOM killer) leaves no parse process behind, not
    even one in the middle of a parse: each child checks that its parent is alive."""
    script = (
        "import sys, threading, time\n"
        "from pgingest.raw.parse import ParsePool\n"
        "pool = ParsePool(1)\n"
        "pool.start()\n"
        "threading.Thread(target=lambda: pool.parse(b'x', 'text/plain', test_hook='hang'),"
        " daemon=True).start()\n"
        "time.sleep(0.5)\n"
        "print(*pool.child_pids, flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        children = [int(p) for p in proc.stdout.readline().split()]
        assert children and all(_alive(p) for p in children)
    finally:
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
