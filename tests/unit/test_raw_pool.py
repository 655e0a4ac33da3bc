"""ParsePool's start and close (pgingest.raw.parse): every child started at once and ready, and
every child told to exit before any is waited for, each exiting cleanly."""

from __future__ import annotations

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
