"""RawStage._wait_for_half: back once half of a batch's documents are ready, or at its timeout."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from types import SimpleNamespace
from typing import Any

from pgingest.worker.raw import RawStage


def _wait(futures: list[Future[Any]], seconds: float) -> float:
    stage = SimpleNamespace(wait_seconds=seconds)
    t = time.monotonic()
    RawStage._wait_for_half(stage, futures)  # type: ignore[arg-type]
    return time.monotonic() - t


def _futures(n: int, done: int) -> list[Future[Any]]:
    out: list[Future[Any]] = [Future() for _ in range(n)]
    for f in out[:done]:
        f.set_result(None)
    return out


def test_returns_at_once_when_half_are_done() -> None:
    assert _wait(_futures(9, 5), 5.0) < 0.5
    assert _wait([], 5.0) < 0.5


def test_waits_until_half_are_done() -> None:
    futures = _futures(10, 2)

    def finish() -> None:
        for f in futures[2:5]:  # 5 of 10 done at 0.3 s
            time.sleep(0.1)
            f.set_result(None)

    t = threading.Thread(target=finish)
    t.start()
    took = _wait(futures, 5.0)
    t.join()
    assert 0.25 < took < 2.0
    assert sum(f.done() for f in futures) == 5


def test_gives_up_at_the_timeout() -> None:
    futures = _futures(10, 4)  # one short of half, and none finishes
    took = _wait(futures, 0.3)
    assert 0.25 < took < 2.0


def test_at_least_a_tenth_of_a_second_with_none_ready() -> None:
    took = _wait(_futures(4, 0), 0.0)
    assert 0.09 < took < 1.0


def test_a_future_finishing_late_after_the_return_is_harmless() -> None:
    futures = _futures(4, 0)
    assert _wait(futures, 0.1) < 1.0
    for f in futures:
        f.set_result(None)  # the callbacks left behind run without error
    assert all(f.done() for f in futures)
