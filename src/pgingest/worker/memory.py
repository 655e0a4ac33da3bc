"""The worker process's memory: glibc's allocator and CPython's collector tuned for a
long-running process that allocates and frees batch-sized buffers over and over
(:func:`tune_malloc`, :func:`tune_gc`, both called by ``pgingest worker`` at start), and the free
memory handed back when the worker goes idle (:func:`release_free_memory`)."""

from __future__ import annotations

import ctypes
import functools
import gc
import os
from typing import Any

# mallopt's parameters (malloc.h), the environment variable that sets each, and the worker's value.
_MALLOC_PARAMS: tuple[tuple[str, int, str, int], ...] = (
    ("mmap_threshold", -3, "MALLOC_MMAP_THRESHOLD_", 8 << 20),
    ("trim_threshold", -1, "MALLOC_TRIM_THRESHOLD_", 32 << 20),
    ("arena_max", -8, "MALLOC_ARENA_MAX", 2),
)


@functools.cache
def _libc() -> Any | None:
    """glibc, once (None elsewhere: musl, macOS)."""
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt  # noqa: B018 (glibc's, not musl's or macOS's)
        libc.malloc_trim  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


def tune_malloc() -> dict[str, int]:
    """Tunes glibc's allocator for a long-running worker (glibc only): the settings applied.

    A batch allocates and frees the same buffers over and over: request bodies and answers of
    about a megabyte, their decoded vectors, the float64 temporaries of validation, the packed
    write-back. With the fixed 1 MiB mmap threshold used before (and glibc's 128 KiB trim
    threshold) each of them came from the kernel again, page by page: page faults were 19% of the
    worker's CPU (``perf``), and its system time a quarter of it. Here blocks under 8 MiB come
    from the heap and each arena keeps up to 32 MiB free at its top between batches (the
    worker's CPU per chunk 51-53 -> 39-42 us in ``make bench``'s e2e case), and two arenas at
    most serve the threads (one arena a thread kept its own free memory: peak RSS +20 MB; with
    two, as before). Blocks of 8 MiB and more (a large batch's vectors) are still mmapped and
    returned when freed. Free memory the heap keeps below a block still in use is not returned
    while the worker is busy: :func:`release_free_memory` hands it back when the worker goes
    idle, so that a burst (a backfill, large documents) does not leave the worker at its peak.

    A setting given in the environment (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``,
    ``MALLOC_ARENA_MAX``, or the same name in ``GLIBC_TUNABLES``) is left as it is.
    """
    libc = _libc()
    if libc is None:  # not glibc (musl, macOS): nothing to tune
        return {}
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    applied: dict[str, int] = {}
    for name, param, env, value in _MALLOC_PARAMS:
        if env in os.environ or f"glibc.malloc.{name}" in tunables:
            continue
        if libc.mallopt(param, value):
            applied[name] = value
    return applied


def release_free_memory() -> bool:
    """Hands the allocator's free memory back to the system (``malloc_trim(0)``: every arena,
    whole free pages inside the heaps too, not only at their tops); True when some was. Called
    when the worker goes idle: cheap then, and no batch pays the page faults of memory given back
    under it (glibc only)."""
    libc = _libc()
    return bool(libc.malloc_trim(0)) if libc is not None else False


GC_THRESHOLD = 10_000
"""Net container allocations between two collections of the youngest generation (CPython 3.11
and 3.12: 700; 3.13: 2,000)."""


def tune_gc() -> tuple[int, int, int]:
    """Fewer collections of the youngest generation for a long-running worker; the thresholds.

    A batch holds thousands of live containers until it is written (chunks, jobs, messages, the
    answers' dicts), and with CPython 3.11's 700 net allocations each of them was scanned by
    several young collections before it died by reference counting: ~450 collections, 0.12 s
    (4%) of a 20,000-document drain's CPU (``gc.callbacks``). At 10,000 the same drain runs 2
    (0.003 s). Young cyclic garbage is collected after at most 10,000 net allocations; the older
    generations, counted in young collections, come as many times less often. A threshold already
    at least that high, or a collector turned off, is left as it is."""
    first, second, third = gc.get_threshold()
    if gc.isenabled() and 0 < first < GC_THRESHOLD:
        gc.set_threshold(GC_THRESHOLD, second, third)
    return gc.get_threshold()
