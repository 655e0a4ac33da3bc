"""The worker's allocator and collector tuning (worker/memory.py: tune_malloc, tune_gc,
release_free_memory): each check runs in a fresh interpreter, since they change the whole
process."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
    reason="glibc's mallopt only",
)

# Allocates, touches and frees a 2 MiB buffer 40 times; prints the minor page faults that took.
_REUSE = """
import json, resource, sys
from pgingest.worker.memory import tune_malloc
applied = {} if sys.argv[1] == "default" else tune_malloc()
if sys.argv[1] == "before":  # the setting this tuning replaced: a fixed 1 MiB threshold
    import ctypes
    ctypes.CDLL(None).mallopt(-3, 1 << 20)
size = 2 << 20
b = bytearray(size); del b  # the first one may fault
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(40):
    b = bytearray(size)
    del b
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
print(json.dumps({"applied": applied, "faults": faults, "pages": 40 * size // 4096}))
"""


def _run(mode: str, **env: str) -> tuple[dict[str, int], int, int]:
    """(settings applied, page faults of the 40 buffers, pages they touched)."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    full.pop("GLIBC_TUNABLES", None)
    full.update(env)
    out = subprocess.run(
        [sys.executable, "-c", _REUSE, mode],
        capture_output=True,
        text=True,
        env=full,
        check=True,
        timeout=60,
    )
    result = json.loads(out.stdout)
    return result["applied"], int(result["faults"]), int(result["pages"])


def test_a_batch_sized_buffer_is_reused_without_page_faults() -> None:
    _, before, pages = _run("before")
    applied, tuned, _ = _run("tuned")
    assert applied == {"mmap_threshold": 8 << 20, "trim_threshold": 32 << 20, "arena_max": 2}
    # With a 1 MiB mmap threshold every 2 MiB buffer comes from the kernel again, page by page.
    assert before > pages // 2
    assert tuned < pages // 20


def test_a_setting_from_the_environment_is_left_as_it_is() -> None:
    applied, _, _ = _run(
        "tuned", MALLOC_ARENA_MAX="4", GLIBC_TUNABLES="glibc.malloc.trim_threshold=65536"
    )
    assert applied == {"mmap_threshold": 8 << 20}
    applied, faults, pages = _run("tuned", MALLOC_MMAP_THRESHOLD_="1048576")
    assert applied == {"trim_threshold": 32 << 20, "arena_max": 2}
    # the operator's 1 MiB threshold holds: the 2 MiB buffer is mmapped each time
    assert faults > pages // 2


_GC = """
import gc, json, sys
from pgingest.worker.memory import tune_gc
if sys.argv[1] == "off":
    gc.disable()
before = gc.get_threshold()
after = tune_gc()
print(json.dumps({"before": before, "after": after, "enabled": gc.isenabled()}))
"""


@pytest.mark.parametrize("mode", ["on", "off"])
def test_the_young_collections_are_spaced_unless_the_collector_is_off(mode: str) -> None:
    out = subprocess.run(
        [sys.executable, "-c", _GC, mode], capture_output=True, text=True, check=True, timeout=60
    )
    got = json.loads(out.stdout)
    if mode == "on":
        assert got["after"] == [10_000, *got["before"][1:]] and got["enabled"]
    else:
        assert got["after"] == got["before"] and not got["enabled"]


# 100 buffers of 2 MiB, each followed by a small block that stays: freed, they are kept by the
# heap (below a block in use); handed back by release_free_memory. Prints RSS in MiB.
_BURST = """
import json, os
from pgingest.worker.memory import release_free_memory, tune_malloc
tune_malloc()
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
start = rss()
big, small = [], []
for i in range(100):
    big.append(bytearray(2 << 20))
    small.append(bytearray(4096))  # from the same heap (pymalloc takes 512 bytes and less)
peak = rss()
del big
kept = rss()
released = release_free_memory()
print(json.dumps({"start": start, "peak": peak, "kept": kept, "after": rss(), "released": released}))
"""


def test_the_memory_of_a_burst_goes_back_when_idle() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _BURST], capture_output=True, text=True, check=True, timeout=60
    )
    got = json.loads(out.stdout)
    assert got["peak"] - got["start"] > 150  # the burst was resident
    assert got["released"] is True
    assert got["after"] < got["start"] + 50  # most of it handed back
