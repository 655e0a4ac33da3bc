"""Starting workers: one in this process, or several processes.

:func:`run` is what ``pgingest worker`` calls: the glibc allocator and the garbage collector tuned
for a long-running process (``worker/memory.py``), the metrics exporter started,
then :class:`~pgingest.worker.loop.Worker` until it stops.
:func:`run_processes` (``--processes N``) spawns N such processes and forwards SIGTERM/SIGINT.
"""

from __future__ import annotations

import os
import signal
from typing import Any

from pgingest.metrics import Metrics
from pgingest.settings import WorkerSettings
from pgingest.worker.loop import Worker
from pgingest.worker.memory import tune_gc, tune_malloc


def run(settings: WorkerSettings) -> int:
    tune_malloc()
    tune_gc()
    metrics = Metrics.start(settings.metrics_port)
    return Worker(settings, metrics=metrics).run()


def run_processes(settings: WorkerSettings, processes: int) -> int:
    """Runs N worker processes (spawned) and waits; SIGTERM/SIGINT are forwarded."""
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
