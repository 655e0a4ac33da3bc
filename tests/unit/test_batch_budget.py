"""The write budget and batch halving (issue 18, item 5): pure decisions of ``worker/batch.py``.

A settled batch whose documents exceed the write budget (chunks, bytes of text + vectors) is
written as several plans, each acknowledging exactly its own documents' messages; a document
over the budget is written alone; a failed read or write-back halves the batch size.
"""

from __future__ import annotations

import numpy as np
import pytest

from pgingest.settings import WorkerSettings
from pgingest.worker import batch as core
from pgingest.worker.batch import (
    BatchSizer,
    BatchSizers,
    DeadLetter,
    Deferral,
    Failure,
    Job,
    WritePlan,
)
from tests.unit.test_worker_batch import DIMS, job


def done_job(
    doc_id: int, n_chunks: int, text: str = "abcd", msg_ids: list[int] | None = None
) -> Job:
    j = job(doc_id, *([text] * n_chunks), msg_ids=msg_ids)
    j.vectors = np.ones((n_chunks, DIMS), dtype=np.float32)
    return j


def cost_of(n_chunks: int, text: str = "abcd") -> int:
    """Bytes of a done_job: text + float32 vectors + the row overhead, per chunk."""
    return n_chunks * (len(text.encode("utf-8")) + DIMS * 4 + core.ROW_OVERHEAD_BYTES)


def plan_of(*jobs: Job) -> WritePlan:
    return WritePlan(list(jobs), [], [], None, None, list(jobs))


def msg_ids(plan: WritePlan) -> list[int]:
    ids = list(plan.ack) + [i for j in plan.done for i in j.msg_ids]
    ids += [d.msg_id for d in plan.dead]
    for d in (plan.rate_limited, plan.transient):
        if d is not None:
            ids += d.msg_ids
    return ids


def test_job_cost_counts_text_bytes_vectors_and_rows() -> None:
    j = done_job(1, 3, text="é" * 10)  # 20 bytes of UTF-8 per chunk, not 10 characters
    assert core.job_cost(j) == (3, 3 * (20 + DIMS * 4 + core.ROW_OVERHEAD_BYTES))
    assert core.plan_cost(plan_of(j, done_job(2, 2))) == (5, cost_of(3, "é" * 10) + cost_of(2))


def test_a_plan_within_the_budget_is_one_write() -> None:
    plan = plan_of(done_job(1, 3), done_job(2, 3))
    assert core.split(plan, max_chunks=6, max_bytes=cost_of(6)) == [plan]


def test_a_plan_over_the_chunk_budget_is_split_in_order() -> None:
    jobs = [done_job(i, n) for i, n in enumerate([3, 3, 3, 1, 5, 2], start=1)]
    parts = core.split(plan_of(*jobs), max_chunks=6, max_bytes=10**9)
    assert [[j.doc_id for j in p.done] for p in parts] == [[1, 2], [3, 4], [5], [6]]
    assert all(core.plan_cost(p)[0] <= 6 for p in parts)


def test_a_plan_over_the_byte_budget_is_split() -> None:
    jobs = [done_job(i, 2, text="x" * 1000) for i in range(1, 6)]
    budget = 2 * cost_of(2, "x" * 1000)  # two documents per write
    parts = core.split(plan_of(*jobs), max_chunks=10**6, max_bytes=budget)
    assert [[j.doc_id for j in p.done] for p in parts] == [[1, 2], [3, 4], [5]]
    assert all(core.plan_cost(p)[1] <= budget for p in parts)


def test_a_document_over_the_budget_is_written_alone() -> None:
    jobs = [done_job(1, 1), done_job(2, 50), done_job(3, 1), done_job(4, 1)]
    parts = core.split(plan_of(*jobs), max_chunks=10, max_bytes=10**9)
    assert [[j.doc_id for j in p.done] for p in parts] == [[1], [2], [3, 4]]
    # Bytes likewise; a budget of 0 or less writes every document alone.
    parts = core.split(plan_of(*jobs), max_chunks=10**6, max_bytes=cost_of(2))
    assert [[j.doc_id for j in p.done] for p in parts] == [[1], [2], [3, 4]]
    parts = core.split(plan_of(*jobs), max_chunks=0, max_bytes=0)
    assert [[j.doc_id for j in p.done] for p in parts] == [[1], [2], [3], [4]]


def test_each_part_acknowledges_exactly_its_own_messages() -> None:
    """Every message of a document is acknowledged in the part that writes its chunks; the
    acknowledgements with nothing to write, dead letters and deferrals go with the first."""
    a = done_job(1, 4, msg_ids=[11, 12])  # a duplicate message of the same version
    b = done_job(2, 4, msg_ids=[21])
    c = done_job(3, 4, msg_ids=[31, 32, 33])
    dead = job(4, "d", msg_ids=[41])
    dead.failure = Failure("dead", "chunking", "x")
    later = job(5, "t", msg_ids=[51])
    later.failure = Failure("transient", "server_error", "x")
    plan = WritePlan(
        [a, b, c],
        [99, 42],
        [DeadLetter(41, 4, dead.content_hash, "chunking", "x", 1)],
        None,
        Deferral([51], [{"doc_id": 5}], 3),
        [a, b, dead, c, later],
    )
    parts = core.split(plan, max_chunks=5, max_bytes=10**9)
    assert [[j.doc_id for j in p.done] for p in parts] == [[1], [2], [3]]
    assert [sorted(msg_ids(p)) for p in parts] == [[11, 12, 41, 42, 51, 99], [21], [31, 32, 33]]
    # Nothing lost, nothing twice.
    every = [i for p in parts for i in msg_ids(p)]
    assert sorted(every) == sorted(msg_ids(plan)) and len(set(every)) == len(every)
    first, *rest = parts
    assert first.dead == plan.dead and first.transient is plan.transient and first.ack == [99, 42]
    assert all(not p.ack and not p.dead and p.transient is None for p in rest)
    # The dead-lettered job is reported once, with the first part.
    assert [j.doc_id for j in first.dead_jobs()] == [4]
    assert all(p.dead_jobs() == [] for p in rest)


def test_a_plan_with_nothing_to_write_is_one_write() -> None:
    plan = WritePlan([], [1, 2], [], None, None, [])
    assert core.split(plan, max_chunks=1, max_bytes=1) == [plan]


@pytest.mark.parametrize(
    ("sizes", "max_chunks", "max_bytes"),
    [
        ([1] * 40, 7, 10**9),
        ([5, 1, 9, 2, 2, 2, 30, 1, 1], 8, 10**9),
        ([3] * 20, 10**6, 4 * cost_of(3) - 1),
        ([2, 40, 2, 40, 2], 10, 5 * cost_of(2)),
    ],
)
def test_no_part_is_over_the_budget_unless_it_holds_one_document(
    sizes: list[int], max_chunks: int, max_bytes: int
) -> None:
    jobs = [done_job(i, n) for i, n in enumerate(sizes, start=1)]
    parts = core.split(plan_of(*jobs), max_chunks, max_bytes)
    assert [j.doc_id for p in parts for j in p.done] == [j.doc_id for j in jobs]  # in order
    for p in parts:
        chunks, size = core.plan_cost(p)
        assert len(p.done) == 1 or (chunks <= max_chunks and size <= max_bytes)
    # Greedy: no two neighbouring parts would have fitted in one.
    for p, q in zip(parts, parts[1:], strict=False):
        c1, b1 = core.plan_cost(p)
        c2, b2 = core.job_cost(q.done[0])
        assert c1 + c2 > max_chunks or b1 + b2 > max_bytes


def test_the_default_budget_keeps_an_ordinary_batch_in_one_write() -> None:
    """256 documents of 5 chunks of 1 KB with 1,536-dimension vectors: one transaction."""
    s = WorkerSettings()
    jobs = [done_job(i, 5, text="w" * 1000) for i in range(256)]
    for j in jobs:
        j.vectors = np.ones((5, 1536), dtype=np.float32)
    assert len(core.split(plan_of(*jobs), s.write_max_chunks, s.write_max_bytes)) == 1
    assert s.write_max_bytes < 1 << 30  # far below PostgreSQL's 1 GB message limit


def test_a_failure_halves_the_batch_size_and_successes_grow_it_back() -> None:
    s = BatchSizer(size=256, min_size=4, max_size=256, target_seconds=0.5)
    assert s.failed() == 128
    assert s.failed() == 64
    assert s.observe(0.1, 64) == 81  # grows back as before: x1.25 + 1
    assert s.observe(0.1, 81) == 102
    s.size = 5
    assert s.failed() == 4  # not below the minimum
    assert s.failed() == 4


def test_the_worker_cli_passes_the_write_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    from pgingest import cli, worker

    seen: list[WorkerSettings] = []
    monkeypatch.setattr(worker, "run", lambda s: seen.append(s) or 0)
    argv = ["worker", "--database-url", "postgresql:///x"]
    assert cli.main([*argv, "--write-max-chunks", "500", "--write-max-bytes", "1000000"]) == 0
    assert (seen[-1].write_max_chunks, seen[-1].write_max_bytes) == (500, 1_000_000)
    assert cli.main(argv) == 0  # the defaults are WorkerSettings'
    d = WorkerSettings()
    assert (seen[-1].write_max_chunks, seen[-1].write_max_bytes) == (
        d.write_max_chunks,
        d.write_max_bytes,
    )


def test_each_model_has_its_own_batch_size() -> None:
    sizers = BatchSizers(initial=64, min_size=4, max_size=64, target_seconds=0.5)
    assert sizers.size == 64  # no model seen yet
    assert sizers.for_model("v2").failed() == 32
    assert sizers.for_model("v1").size == 64  # untouched by v2's failure
    assert sizers.for_model("v2") is sizers.for_model("v2")
    assert sizers.size == 32  # the smallest
