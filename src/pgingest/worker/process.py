"""Starting workers: one in this process, or several processes.

:func:`run` is what ``pgingest worker`` calls: the glibc allocator and the garbage collector tuned
for a long-running process (:func:`tune_malloc`, :func:`tune_gc`), the metrics exporter started,
then :class:`~pgingest.worker.loop.Worker` until it stops.
:func:`run_processes` (``--processes N``) spawns N such processes and forwards SIGTERM/SIGINT.
"""

from __future__ import annotations

import ctypes
import gc
import os
import signal
from typing import Any

from pgingest.metrics import Metrics
from pgingest.settings import WorkerSettings
from pgingest.worker.loop import Worker

# mallopt's parameters (malloc.h), the environment variable that sets each, and the worker's value.
_MALLOC_PARAMS: tuple[tuple[str, int, str, int], ...] = (
    ("mmap_threshold", -3, "MALLOC_MMAP_THRESHOLD_", 8 << 20),
    ("trim_threshold", -1, "MALLOC_TRIM_THRESHOLD_", 32 << 20),
    ("arena_max", -8, "MALLOC_ARENA_MAX", 2),
)


def tune_malloc() -> dict[str, int]:
    """Tunes glibc's allocator for a long-running worker (glibc only): the settings applied.

    A batch allocates and frees the same buffers over and over: request bodies and answers of
    about a megabyte, their decoded vectors, the float64 temporaries of validation, the packed
    write-back. With glibc's defaults for a fixed threshold (blocks from 1 MiB mmapped; the top of
    the heap given back past 128 KiB free) each of them came from the kernel again, page by page:
    page faults were 19% of the worker's CPU (``perf``), and its system time a quarter of it.
    Here blocks under 8 MiB come from the heap and up to 32 MiB of free heap is kept for the next
    batch (the worker's CPU per chunk 51-53 -> 44-45 us in ``make bench``'s e2e case), and two
    arenas at most serve the threads (each thread's own arena would keep its own free memory: peak
    RSS +20 MB; with two, as before). Blocks of 8 MiB and more (a whole large batch's vectors) are
    still mmapped and returned when freed: the RSS stays flat (``rss_growth_ratio``).

    A setting given in the environment (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``,
    ``MALLOC_ARENA_MAX``, or the same name in ``GLIBC_TUNABLES``) is left as it is.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to tune
        return {}
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    applied: dict[str, int] = {}
    for name, param, env, value in _MALLOC_PARAMS:
        if env in os.environ or f"glibc.malloc.{name}" in tunables:
            continue
        if mallopt(param, value):
            applied[name] = value
    return applied


GC_THRESHOLD = 10_000
"""Net container allocations between two young collections (CPython's default: 700)."""


def tune_gc() -> tuple[int, int, int]:
    """Fewer collections of the young generations for a long-running worker; the thresholds set.

    A batch holds thousands of live containers until it is written (chunks, jobs, messages, the
    answers' dicts), and with CPython's default of 700 net allocations each of them was scanned
    by several young collections before it died by reference counting: ~450 collections, 0.12 s
    (4%) of a 20,000-document drain's CPU (``gc.callbacks``). At 10,000 the same drain runs 2
    (0.003 s). Cyclic garbage is still collected, after at most 10,000 net allocations; a process
    that turned the collector off keeps it off."""
    if gc.isenabled():
        _, second, third = gc.get_threshold()
        gc.set_threshold(GC_THRESHOLD, second, third)
    return gc.get_threshold()


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
