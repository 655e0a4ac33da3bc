"""The figures ``make bench`` computes for issue 19 (pure: no database, no pgbench run): the
paired ratios of interleaved rounds, the single-row capture figures and their keys, the CPU
budget per chunk against binary COPY, pgbench's summary, and the verdicts."""

from __future__ import annotations

import math
import statistics
from typing import Any

import pytest
from bench import run
from bench.common import (
    BenchError,
    capture_ratios,
    cpu_budget,
    interleaved_order,
    median_paired_ratio,
    meets,
    parse_pgbench,
)

PGBENCH_15 = """\
pgbench (15.18 (Debian 15.18-1.pgdg120+1))
transaction type: /tmp/insert-pgingest.documents.sql
scaling factor: 1
query mode: prepared
number of clients: 8
number of threads: 2
maximum number of tries: 1
duration: 2 s
number of transactions actually processed: 8474
number of failed transactions: 0 (0.000%)
latency average = 1.887 ms
initial connection time = 21.370 ms
tps = 4238.734049 (without initial connection time)
"""


# --------------------------------------------------------------------------- paired ratios


def test_the_median_of_paired_ratios_is_not_the_ratio_of_medians() -> None:
    with_ = [10.0, 3.0, 8.0]
    without = [5.0, 1.0, 8.0]  # per round: 2, 3, 1
    assert median_paired_ratio(with_, without) == 2.0
    assert statistics.median(with_) / statistics.median(without) == 1.6  # not what it returns


def test_paired_ratios_pair_rounds_in_order() -> None:
    # the same values paired in another order give another median: rounds are not shuffled
    assert median_paired_ratio([1.0, 2.0, 4.0], [1.0, 1.0, 1.0]) == 2.0
    assert median_paired_ratio([1.0, 2.0, 4.0], [1.0, 2.0, 4.0]) == 1.0


def test_an_even_number_of_rounds_takes_the_mean_of_the_middle_two() -> None:
    assert median_paired_ratio([1.0, 2.0, 3.0, 4.0], [1.0, 1.0, 1.0, 1.0]) == 2.5


def test_a_round_without_reference_is_left_out_and_none_left_is_nan() -> None:
    assert median_paired_ratio([3.0, 100.0, 5.0], [1.0, 0.0, 1.0]) == 4.0
    assert math.isnan(median_paired_ratio([1.0], [0.0]))
    assert math.isnan(median_paired_ratio([], []))


def test_rounds_of_different_counts_are_refused() -> None:
    with pytest.raises(ValueError):
        median_paired_ratio([1.0, 2.0], [1.0])


def test_the_side_that_runs_first_alternates() -> None:
    orders = [interleaved_order(r, ("with", "without")) for r in range(6)]
    assert orders[0] == ("with", "without")
    assert orders[1] == ("without", "with")
    assert [o[0] for o in orders].count("with") == 3
    assert [o[0] for o in orders].count("without") == 3


# --------------------------------------------------------------------------- capture figures


def _runs(values: list[float], key: str) -> list[dict[str, float]]:
    other = "tps" if key == "latency_ms" else "latency_ms"
    return [{key: v, other: 1.0, "transactions": 100} for v in values]


def _single(
    insert_lat: tuple[list[float], list[float]],
    update_lat: tuple[list[float], list[float]],
    insert_tps: tuple[list[float], list[float]],
    update_tps: tuple[list[float], list[float]],
) -> dict[str, Any]:
    return {
        "insert": {
            "1": {
                "with": _runs(insert_lat[0], "latency_ms"),
                "without": _runs(insert_lat[1], "latency_ms"),
            },
            "8": {"with": _runs(insert_tps[0], "tps"), "without": _runs(insert_tps[1], "tps")},
        },
        "update": {
            "1": {
                "with": _runs(update_lat[0], "latency_ms"),
                "without": _runs(update_lat[1], "latency_ms"),
            },
            "8": {"with": _runs(update_tps[0], "tps"), "without": _runs(update_tps[1], "tps")},
        },
    }


RUNS = _single(
    insert_lat=([0.30, 0.50, 0.33], [0.20, 0.25, 0.30]),  # ratios 1.5, 2.0, 1.1 -> 1.5
    update_lat=([0.26, 0.40, 0.24], [0.20, 0.20, 0.20]),  # ratios 1.3, 2.0, 1.2 -> 1.3
    insert_tps=([8000, 4000, 6000], [10000, 10000, 10000]),  # 0.8, 0.4, 0.6 -> 0.6
    update_tps=([9000, 7000, 6000], [10000, 10000, 6000]),  # 0.9, 0.7, 1.0 -> 0.9
)


def test_capture_ratios_per_operation() -> None:
    out = capture_ratios(RUNS)
    assert out["insert_latency_ratio"] == 1.5
    assert out["update_latency_ratio"] == 1.3
    assert out["insert_tps_ratio"] == 0.6
    assert out["update_tps_ratio"] == 0.9
    # the medians of each side, for the report
    assert out["insert_latency_ms_with"] == 0.33
    assert out["insert_latency_ms_without"] == 0.25
    assert out["update_tps_with"] == 7000
    assert out["update_tps_without"] == 10000


def test_the_headlines_are_the_worse_operation() -> None:
    out = capture_ratios(RUNS)
    assert out["single_row_latency_ratio"] == 1.5  # the larger latency ratio (insert)
    assert out["concurrent_tps_ratio"] == 0.6  # the smaller throughput ratio (insert)
    swapped = capture_ratios({"insert": RUNS["update"], "update": RUNS["insert"]})
    assert swapped["single_row_latency_ratio"] == 1.5
    assert swapped["concurrent_tps_ratio"] == 0.6


def test_latency_uses_one_client_and_throughput_eight() -> None:
    only_one = {"insert": {"1": RUNS["insert"]["1"]}}
    out = capture_ratios(only_one)
    assert out["single_row_latency_ratio"] == 1.5
    assert math.isnan(out["concurrent_tps_ratio"])  # no 8-client rounds: no figure, not 1.0


def test_a_nan_operation_makes_the_headline_nan() -> None:
    broken = _single(
        insert_lat=([0.3], [0.0]),  # no usable reference
        update_lat=([0.2], [0.2]),
        insert_tps=([1.0], [0.0]),
        update_tps=([1.0], [1.0]),
    )
    out = capture_ratios(broken)
    assert math.isnan(out["single_row_latency_ratio"])
    assert math.isnan(out["concurrent_tps_ratio"])
    assert not meets("<=", 1.3, out["single_row_latency_ratio"])
    assert not meets(">=", 0.7, out["concurrent_tps_ratio"])


def test_the_keys_of_both_settings() -> None:
    figures = capture_ratios(RUNS)
    durable = dict(figures, single_row_latency_ratio=1.1, concurrent_tps_ratio=0.8)
    keys = run.single_row_keys({"bench_settings": figures, "durable": durable})
    assert keys["single_row_latency_ratio"] == 1.5
    assert keys["concurrent_tps_ratio"] == 0.6
    assert keys["single_row_latency_ratio_durable"] == 1.1
    assert keys["concurrent_tps_ratio_durable"] == 0.8
    assert keys["single_row_insert_latency_ratio"] == 1.5
    assert keys["single_row_update_tps_ratio_durable"] == 0.9
    assert (
        run.single_row_keys({"bench_settings": figures})
        .keys()
        .isdisjoint({"single_row_latency_ratio_durable", "concurrent_tps_ratio_durable"})
    )


# --------------------------------------------------------------------------- CPU budget


def test_cpu_budget_per_chunk_against_copy_per_row() -> None:
    out = cpu_budget(
        chunks=70_740, db_cpu_s=3.7, worker_cpu_s=4.4, copy_cpu_s=1.0611, copy_rows=70_740
    )
    assert out["db_cpu_us_per_chunk"] == pytest.approx(52.30, abs=0.01)
    assert out["worker_cpu_us_per_chunk"] == pytest.approx(62.20, abs=0.01)
    assert out["copy_cpu_us_per_row"] == pytest.approx(15.0, abs=0.01)
    assert out["db_cpu_vs_copy_ratio"] == pytest.approx(3.7 / 1.0611, abs=1e-3)


def test_cpu_budget_divides_by_chunks_and_rows_separately() -> None:
    # twice the chunks for the same database CPU halves the ratio; COPY's rows count on their own
    out = cpu_budget(
        chunks=2_000, db_cpu_s=0.1, worker_cpu_s=0.05, copy_cpu_s=0.02, copy_rows=1_000
    )
    assert out["db_cpu_us_per_chunk"] == 50.0
    assert out["worker_cpu_us_per_chunk"] == 25.0
    assert out["copy_cpu_us_per_row"] == 20.0
    assert out["db_cpu_vs_copy_ratio"] == 2.5
    assert meets(*run.TARGETS["db_cpu_vs_copy_ratio"], out["db_cpu_vs_copy_ratio"])
    assert meets(*run.TARGETS["worker_cpu_us_per_chunk"], out["worker_cpu_us_per_chunk"])


def test_cpu_budget_without_chunks_is_an_error() -> None:
    with pytest.raises(ValueError):
        cpu_budget(chunks=0, db_cpu_s=1.0, worker_cpu_s=1.0, copy_cpu_s=1.0, copy_rows=10)
    with pytest.raises(ValueError):
        cpu_budget(chunks=10, db_cpu_s=1.0, worker_cpu_s=1.0, copy_cpu_s=1.0, copy_rows=0)


# --------------------------------------------------------------------------- pgbench output


def test_parse_pgbench_summary() -> None:
    out = parse_pgbench(PGBENCH_15)
    assert out == {"transactions": 8474, "failed": 0, "latency_ms": 1.887, "tps": 4238.734049}


def test_parse_pgbench_counts_failures_and_older_versions() -> None:
    failed = PGBENCH_15.replace(
        "failed transactions: 0 (0.000%)", "failed transactions: 3 (0.035%)"
    )
    assert parse_pgbench(failed)["failed"] == 3
    older = "\n".join(line for line in PGBENCH_15.splitlines() if "failed" not in line)
    assert parse_pgbench(older)["failed"] == 0


def test_parse_pgbench_without_tps_is_an_error() -> None:
    # tps *including* connections is not the figure: only "without initial connection time"
    text = PGBENCH_15.replace(
        "(without initial connection time)", "(including connections establishing)"
    )
    with pytest.raises(BenchError):
        parse_pgbench(text)
    with pytest.raises(BenchError):
        parse_pgbench("pgbench: error: connection to server failed")


# --------------------------------------------------------------------------- verdicts


@pytest.mark.parametrize(
    ("key", "value", "ok"),
    [
        ("single_row_latency_ratio", 1.3, True),
        ("single_row_latency_ratio", 1.31, False),
        ("single_row_latency_ratio_durable", 1.29, True),
        ("concurrent_tps_ratio", 0.7, True),
        ("concurrent_tps_ratio", 0.69, False),
        ("concurrent_tps_ratio_durable", 0.71, True),
        ("db_cpu_vs_copy_ratio", 2.5, True),
        ("db_cpu_vs_copy_ratio", 2.51, False),
        ("worker_cpu_us_per_chunk", 40.0, True),
        ("worker_cpu_us_per_chunk", 62.0, False),
        ("freshness_p95_ms", 250.0, False),  # strictly below
        ("freshness_p95_ms", 249.9, True),
    ],
)
def test_verdicts(key: str, value: float, ok: bool) -> None:
    verdict = run._verdict(key, value)
    assert verdict.startswith("met" if ok else "MISSED"), verdict
    op, target = run.TARGETS[key]
    assert f"target {op} {target:g}" in verdict


def test_nan_never_meets_a_target() -> None:
    assert run._verdict("concurrent_tps_ratio", float("nan")).startswith("MISSED")
    assert run._verdict("single_row_latency_ratio", float("nan")).startswith("MISSED")


def test_throughput_vs_copy_has_no_target_any_more() -> None:
    assert "throughput_vs_copy" not in run.TARGETS
    with pytest.raises(KeyError):
        run._verdict("throughput_vs_copy", 0.1)


def test_the_report_prints_both_settings_verdicts(capsys: pytest.CaptureFixture[str]) -> None:
    figures = capture_ratios(RUNS)
    settings = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
    durable = dict(
        figures,
        single_row_latency_ratio=1.2,
        concurrent_tps_ratio=0.75,
        settings={"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"},
    )
    capture = {
        "rows": 1000,
        "rows_per_statement": 100,
        "rounds": 3,
        "with_trigger_us_per_row": 20.0,
        "without_trigger_us_per_row": 16.0,
        "capture_overhead_us_per_row": 4.0,
        "capture_overhead_us_per_row_of_minimums": 4.1,
        "single_row": {
            "bench_settings": dict(figures, settings=settings, rounds=3, seconds_per_run=2),
            "durable": dict(durable, rounds=3, seconds_per_run=2),
        },
    }
    run.report({"capture": capture})
    text = capsys.readouterr().out
    assert "single_row_latency_ratio = 1.500  MISSED (target <= 1.3)" in text
    assert "concurrent_tps_ratio = 0.600  MISSED (target >= 0.7)" in text
    assert "single_row_latency_ratio_durable = 1.200  met (target <= 1.3)" in text
    assert "concurrent_tps_ratio_durable = 0.750  met (target >= 0.7)" in text
    assert "fsync=on synchronous_commit=on full_page_writes=on" in text
    flat = run.flatten({"capture": capture})
    assert flat["single_row_latency_ratio"] == 1.5
    assert flat["concurrent_tps_ratio_durable"] == 0.75
