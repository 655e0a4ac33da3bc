"""bench.common.cpu_budget's steady-state worker figure (issue 19): the drain's CPU less the same
command's start-up, measured in the same run."""

from __future__ import annotations

import pytest
from bench import run
from bench.common import cpu_budget


def test_the_steady_figure_takes_the_start_up_off_the_drain() -> None:
    out = cpu_budget(
        chunks=70_000,
        db_cpu_s=7.0,
        worker_cpu_s=8.4,
        copy_cpu_s=2.1,
        copy_rows=70_000,
        worker_startup_cpu_s=1.4,
    )
    assert out["worker_cpu_us_per_chunk"] == 120.0  # the key as before: start-up included
    assert out["worker_cpu_us_per_chunk_steady"] == 100.0
    assert out["worker_startup_cpu_s"] == 1.4
    assert "worker_cpu_us_per_chunk_steady" in run.TARGETS


def test_without_a_start_up_figure_there_is_no_steady_key() -> None:
    out = cpu_budget(chunks=10, db_cpu_s=1.0, worker_cpu_s=1.0, copy_cpu_s=1.0, copy_rows=10)
    assert "worker_cpu_us_per_chunk_steady" not in out


@pytest.mark.parametrize("startup", [-0.1, 2.0])
def test_a_start_up_outside_the_drain_is_an_error(startup: float) -> None:
    with pytest.raises(ValueError, match="start-up"):
        cpu_budget(
            chunks=10,
            db_cpu_s=1.0,
            worker_cpu_s=1.0,
            copy_cpu_s=1.0,
            copy_rows=10,
            worker_startup_cpu_s=startup,
        )
