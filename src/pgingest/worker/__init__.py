"""The worker: claims queued document versions, embeds them, writes their chunks back.

Where things live:

=============== ===============================================================================
``loop``        :class:`Worker`: connections, the main loop, backfill, probes, maintenance
``batch``       pure decisions about one batch: triage, chunking, validation, failures, the
                :class:`~pgingest.worker.batch.WritePlan`, batch sizing (AIMD)
``inputs``      pure: which text goes where (dedupe, cache hits, provider answers, scatter)
``embedding``   the HTTP fan-out of one batch over the provider; providers and breakers
``writer``      the write-back: one transaction per batch on its own connection and thread
``heartbeat``   the worker's row in ``pgingest.workers`` and the queue gauges
``process``     :func:`run` (``pgingest worker``) and :func:`run_processes`
=============== ===============================================================================
"""

from pgingest.settings import WorkerSettings
from pgingest.worker.batch import BatchStats, backoff_delay
from pgingest.worker.loop import Worker
from pgingest.worker.memory import release_free_memory, tune_gc, tune_malloc
from pgingest.worker.process import run, run_processes

__all__ = [
    "BatchStats",
    "Worker",
    "WorkerSettings",
    "backoff_delay",
    "release_free_memory",
    "run",
    "run_processes",
    "tune_gc",
    "tune_malloc",
]
