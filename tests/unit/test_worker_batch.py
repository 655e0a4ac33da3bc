"""The worker's decisions about one batch (``pgingest.worker.batch`` and ``inputs``): no database,
no HTTP, no threads.

Each test asserts a concrete outcome, so that changing the decision fails it; the end-to-end
tests (``tests/test_worker.py``, ``test_bad_inputs.py``) keep the exactly-once invariant honest.
"""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pgingest import chunking, db, providers, vectors
from pgingest.worker import batch as core
from pgingest.worker.batch import (
    Batch,
    BatchSizer,
    DeadLetter,
    Failure,
    Job,
    check_chunks,
    classify,
    settle,
    triage,
    validate,
)
from pgingest.worker.inputs import Inputs, request_size

DIMS = 4
MAX_ATTEMPTS = 5

# --------------------------------------------------------------------------- builders


def message(
    msg_id: int,
    doc_id: int | None = 1,
    *,
    status: str = "current",
    attempts: int = 0,
    read_ct: int = 1,
    content_hash: str | None = "ab" * 32,
    body: str = "some text",
) -> db.Message:
    payload: dict[str, Any] = {"doc_id": doc_id, "attempts": attempts}
    if content_hash is not None:
        payload["hash"] = content_hash
    return db.Message(msg_id, read_ct, payload, doc_id, f"key-{doc_id}", "Title", body, status)


def chunk(text: str, ordinal: int = 0) -> chunking.Chunk:
    return chunking.Chunk(ordinal, text, 0, len(text), 3, text)


def job(doc_id: int, *texts: str, msg_ids: list[int] | None = None, attempts: int = 0) -> Job:
    j = Job(
        msg_ids=msg_ids or [doc_id * 10],
        doc_id=doc_id,
        doc_key=f"key-{doc_id}",
        content_hash=bytes([doc_id]) * 32,
        attempts_before=attempts,
        message={"doc_id": doc_id, "hash": (bytes([doc_id]) * 32).hex(), "attempts": attempts},
    )
    j.chunks = [chunk(t, i) for i, t in enumerate(texts)]
    return j


def model(storage: str = "vector", metric: str = "cosine", dimensions: int = DIMS) -> db.Model:
    return db.Model(
        name="m1",
        model_id="fake",
        base_url="http://127.0.0.1:1",
        api_key_env=None,
        dimensions=dimensions,
        storage=storage,
        metric=metric,
        max_input_tokens=512,
        request_dimensions=False,
        state="live",
        paused=False,
        paused_reason=None,
        store_name="store_m1",
        queue_name="pgingest_m1",
        index_method="hnsw",
        index_options={},
        backfill_done=True,
    )


def vec(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


def answer(*vectors: np.ndarray | None, errors: dict[int, Any] | None = None) -> Any:
    return providers.EmbedResult(list(vectors), errors or {})


def sha(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()


def embedded(*jobs: Job) -> Batch:
    """A batch whose jobs all have vectors (one row per chunk)."""
    b = Batch()
    for j in jobs:
        b.jobs[j.doc_id] = j
        j.vectors = np.ones((len(j.chunks), DIMS), dtype=np.float32)
    return b


def failed(j: Job, failure: Failure) -> Batch:
    j.failure = failure
    return Batch(jobs={j.doc_id: j})


def no_backoff(attempts: int) -> int:
    raise AssertionError("no transient deferral expected")


# --------------------------------------------------------------------------- purity


@pytest.mark.parametrize("module", ["batch.py", "inputs.py"])
def test_the_batch_core_imports_no_io(module: str) -> None:
    """No psycopg (nor ``db``, but for type hints), requests, threads or clock."""
    tree = ast.parse(Path(core.__file__).with_name(module).read_text())
    imported: set[str] = set()
    for stmt in tree.body:
        if isinstance(stmt, ast.If) and ast.unparse(stmt.test) == "TYPE_CHECKING":
            continue
        for node in ast.walk(stmt):
            if isinstance(node, ast.Import):
                imported |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    assert "numpy" in imported  # the walk sees the imports
    forbidden = {"psycopg", "pgingest.db", "requests", "threading", "time", "concurrent.futures"}
    assert imported & forbidden == set()


# --------------------------------------------------------------------------- triage


def test_stale_and_done_messages_are_acknowledged() -> None:
    b = triage([message(1, 1, status="stale"), message(2, 2, status="done")], MAX_ATTEMPTS)
    assert b.ack == [1, 2]
    assert b.jobs == {} and b.dead == [] and b.texts == {}


@pytest.mark.parametrize(
    "msg",
    [
        message(7, 3, status="invalid"),
        message(7, None),
        message(7, 3, content_hash=None),
        message(7, 3, content_hash="not hex"),
    ],
)
def test_an_invalid_message_becomes_an_invalid_message_dead_letter(msg: db.Message) -> None:
    b = triage([msg], MAX_ATTEMPTS)
    assert b.dead == [
        DeadLetter(
            7,
            None,
            None,
            "invalid_message",
            "queue message is not a pgingest job (expected doc_id and hash)",
            1,
            {"message": msg.message},
        )
    ]
    assert b.jobs == {} and b.ack == []


def test_duplicate_messages_of_one_version_become_one_job() -> None:
    b = triage([message(1, 5), message(2, 6), message(3, 5)], MAX_ATTEMPTS)
    assert list(b.jobs) == [5, 6]
    assert b.jobs[5].msg_ids == [1, 3]
    assert b.jobs[6].msg_ids == [2]
    assert b.texts == {5: ("Title", "some text"), 6: ("Title", "some text")}
    assert b.msg_ids() == [1, 3, 2]


def test_a_version_that_used_its_attempts_is_exhausted_and_not_chunked() -> None:
    # attempts_before = attempts in the body + the charged crashes (crash redeliveries beyond
    # the ones processed in groups: tests/unit/test_crash_isolation.py)
    read_ct = core.GROUPED_DELIVERIES + 2  # one charged crash
    b = triage(
        [message(1, 1, attempts=4, read_ct=read_ct), message(2, 2, attempts=3, read_ct=read_ct)],
        MAX_ATTEMPTS,
    )
    exhausted = b.jobs[1].failure
    assert exhausted is not None
    assert (exhausted.kind, exhausted.error_class) == ("dead", "attempts_exhausted")
    assert exhausted.message.startswith("gave up after 5 attempts")
    assert b.jobs[2].failure is None
    assert list(b.texts) == [2]
    assert b.todo() == [b.jobs[2]]


# --------------------------------------------------------------------------- chunks


def test_chunking_gives_each_job_its_chunks() -> None:
    b = triage([message(1, 1, body="Alpha beta."), message(2, 2, body="Gamma.")], MAX_ATTEMPTS)
    core.chunk(b, chunking.ChunkerConfig())
    assert [c.text for c in b.jobs[1].chunks] == ["Alpha beta."]
    assert [c.text for c in b.jobs[2].chunks] == ["Gamma."]


def test_chunking_errors_fail_only_their_document(monkeypatch: pytest.MonkeyPatch) -> None:
    def batch_fails(*_: Any) -> Any:
        raise ValueError("batch")

    def one(title: str | None, body: str, config: Any) -> list[chunking.Chunk]:
        if body == "bad":
            raise ValueError("cannot chunk this")
        return [chunk(body)]

    monkeypatch.setattr(chunking, "chunk_documents", batch_fails)
    monkeypatch.setattr(chunking, "chunk_document", one)
    b = triage([message(1, 1, body="bad"), message(2, 2, body="good")], MAX_ATTEMPTS)
    core.chunk(b, chunking.ChunkerConfig())
    assert b.jobs[1].failure == Failure("dead", "chunking", "cannot chunk this")
    assert b.jobs[1].chunks == []
    assert [c.text for c in b.jobs[2].chunks] == ["good"]
    assert b.jobs[2].failure is None


def test_empty_documents_and_too_many_chunks_are_dead() -> None:
    b = Batch(jobs={1: job(1), 2: job(2, "a", "b", "c"), 3: job(3, "a", "b")})
    check_chunks(b, max_chunks=2)
    assert b.jobs[1].failure == Failure(
        "dead", "empty_document", "the document has no text to embed"
    )
    assert b.jobs[2].failure == Failure("dead", "too_many_chunks", "3 chunks exceed the limit of 2")
    assert b.jobs[3].failure is None


# --------------------------------------------------------------------------- failures


@pytest.mark.parametrize(
    ("exc", "kind", "retry_after"),
    [
        (providers.AuthError("no key"), "auth", 0.0),
        (providers.ModelNotFound("gone"), "auth", 0.0),
        (providers.QuotaExceeded("billing"), "auth", 0.0),
        (providers.InvalidRequest("dimensions"), "auth", 0.0),
        (providers.InputRejected("too long"), "rejected", 0.0),
        (providers.TransientProviderError("502"), "transient", 0.0),
        (providers.BadResponse("html"), "transient", 0.0),
        (providers.RateLimited("429", retry_after=7.5), "rate_limited", 7.5),
        (providers.RateLimited("429"), "rate_limited", 1.0),
        (providers.CircuitOpen("open", retry_after=30), "rate_limited", 0.0),
    ],
)
def test_classify(exc: providers.ProviderError, kind: str, retry_after: float) -> None:
    assert classify(exc) == Failure(kind, exc.error_class, str(exc), retry_after)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("first", "second", "winner"),
    [
        ("rate_limited", "transient", "transient"),
        ("transient", "rate_limited", "transient"),
        ("transient", "rejected", "rejected"),
        ("rejected", "transient", "rejected"),
        ("rejected", "auth", "auth"),
        ("auth", "rejected", "auth"),
        ("rate_limited", "auth", "auth"),
        ("dead", "transient", "dead"),
    ],
)
def test_the_most_serious_failure_wins(first: str, second: str, winner: str) -> None:
    j = job(1, "x")
    j.fail(Failure(first, f"{first}_class", "1"))  # type: ignore[arg-type]
    j.fail(Failure(second, f"{second}_class", "2"))  # type: ignore[arg-type]
    assert j.failure is not None and j.failure.kind == winner


def test_the_first_failure_of_equal_priority_is_kept() -> None:
    j = job(1, "x")
    j.fail(Failure("rate_limited", "rate_limited", "first", 5.0))
    j.fail(Failure("rate_limited", "circuit_open", "second", 0.0))
    assert j.failure == Failure("rate_limited", "rate_limited", "first", 5.0)


# --------------------------------------------------------------------------- settle


def test_done_jobs_are_written_and_stale_messages_acknowledged() -> None:
    b = embedded(job(1, "a"), job(2, "b", "c", msg_ids=[20, 21]))
    b.ack = [99]
    plan = settle(b, MAX_ATTEMPTS, no_backoff)
    assert [j.doc_id for j in plan.done] == [1, 2]
    assert plan.ack == [99]
    assert plan.dead == [] and plan.rate_limited is None and plan.transient is None


def test_a_rate_limited_job_is_deferred_without_spending_an_attempt() -> None:
    b = Batch(jobs={1: job(1, "a", msg_ids=[10, 11], attempts=2), 2: job(2, "b", attempts=0)})
    b.jobs[1].fail(classify(providers.RateLimited("slow down", retry_after=7.9)))
    b.jobs[2].fail(classify(providers.RateLimited("slow down", retry_after=3)))
    plan = settle(b, MAX_ATTEMPTS, no_backoff)
    assert plan.rate_limited is not None
    assert plan.rate_limited.msg_ids == [10, 11, 20]
    assert [m["attempts"] for m in plan.rate_limited.messages] == [2, 2, 0]
    assert plan.rate_limited.messages[0]["doc_id"] == 1
    assert plan.rate_limited.delay == 7  # the longest Retry-After of the batch
    assert plan.done == [] and plan.dead == [] and plan.ack == [] and plan.transient is None


def test_a_circuit_open_deferral_waits_at_least_a_second() -> None:
    plan = settle(
        failed(job(1, "a"), classify(providers.CircuitOpen("open"))), MAX_ATTEMPTS, no_backoff
    )
    assert plan.rate_limited is not None and plan.rate_limited.delay == 1


def test_a_transient_failure_spends_an_attempt_and_backs_off() -> None:
    b = Batch(jobs={1: job(1, "a", attempts=1), 2: job(2, "b", msg_ids=[20, 21], attempts=3)})
    for j in b.jobs.values():
        j.fail(classify(providers.TransientProviderError("502")))
    asked: list[int] = []

    def backoff(attempts: int) -> int:
        asked.append(attempts)
        return 42

    plan = settle(b, MAX_ATTEMPTS, backoff)
    assert asked == [3]  # the most attempts spent in the batch
    assert plan.transient is not None
    assert plan.transient.delay == 42
    assert plan.transient.msg_ids == [10, 20, 21]
    assert [m["attempts"] for m in plan.transient.messages] == [2, 4, 4]
    assert plan.dead == [] and plan.rate_limited is None


def test_a_transient_failure_at_the_limit_is_dead() -> None:
    j = job(1, "a", msg_ids=[10, 11], attempts=MAX_ATTEMPTS - 1)
    plan = settle(failed(j, classify(providers.TransientProviderError("502"))), MAX_ATTEMPTS)
    assert plan.transient is None
    assert plan.dead == [
        DeadLetter(
            10,
            1,
            j.content_hash,
            "server_error",
            f"server_error: 502 (gave up after {MAX_ATTEMPTS} attempts)",
            MAX_ATTEMPTS,
        )
    ]
    assert plan.ack == [11]  # the duplicate message is acknowledged with the dead letter
    assert plan.dead_jobs() == []  # logged as deferred until now, not as a bad document


def test_backoff_delay_grows_and_is_capped() -> None:
    assert all(core.backoff_delay(0) in (1, 2) for _ in range(50))
    assert all(1 <= core.backoff_delay(20) <= 300 for _ in range(50))
    assert max(core.backoff_delay(6) for _ in range(200)) > 64


def test_rejected_input_dead_letters_only_its_job() -> None:
    bad, good = job(1, "bad text"), job(2, "good text")
    inputs = Inputs([bad, good], "m1", DIMS)
    r = range(len(inputs.unseen()))
    inputs.fill(r, answer(None, vec(1, 0, 0, 0), errors={0: providers.InputRejected("too long")}))
    inputs.scatter()
    b = Batch(jobs={1: bad, 2: good})
    plan = settle(b, MAX_ATTEMPTS, no_backoff)
    assert [j.doc_id for j in plan.done] == [2]
    assert plan.dead == [
        DeadLetter(10, 1, bad.content_hash, "rejected_input", "rejected_input: too long", 1)
    ]
    assert plan.dead_jobs() == [bad]


def test_a_job_with_neither_vectors_nor_failure_is_dead() -> None:
    plan = settle(Batch(jobs={1: job(1, "a")}), MAX_ATTEMPTS, no_backoff)
    assert [(d.error_class, d.message) for d in plan.dead] == [("bad_response", "no vectors")]


def test_invalid_messages_and_exhausted_attempts_are_dead_letters() -> None:
    b = triage([message(1, None), message(2, 2, attempts=MAX_ATTEMPTS)], MAX_ATTEMPTS)
    plan = settle(b, MAX_ATTEMPTS, no_backoff)
    assert [(d.msg_id, d.error_class, d.attempts) for d in plan.dead] == [
        (1, "invalid_message", 1),
        (2, "attempts_exhausted", MAX_ATTEMPTS + 1),
    ]


# --------------------------------------------------------------------------- inputs


def test_identical_texts_are_sent_once_and_scattered_to_every_owner() -> None:
    a, b = job(1, "same", "other"), job(2, "same")
    inputs = Inputs([a, b], "m1", DIMS)
    assert [inputs.texts[i] for i in inputs.unseen()] == ["same", "other"]
    assert inputs.request(range(2)) == ["same", "other"]
    assert inputs.hits == 1
    inputs.fill(range(2), answer(vec(1, 0, 0, 0), vec(0, 1, 0, 0)))
    inputs.scatter()
    assert a.vectors is not None and b.vectors is not None
    np.testing.assert_array_equal(a.vectors, [[1, 0, 0, 0], [0, 1, 0, 0]])
    np.testing.assert_array_equal(b.vectors, [[1, 0, 0, 0]])
    assert a.hashes == [sha("same"), sha("other")] and b.hashes == [sha("same")]


def test_identical_texts_are_scattered_on_the_per_input_path_too() -> None:
    a, b, c = job(1, "same"), job(2, "same"), job(3, "odd")
    inputs = Inputs([a, b, c], "m1", DIMS)
    inputs.fill(range(2), answer(vec(1, 0, 0, 0), vec(1, 2, 3)))  # "odd" answered wrongly
    inputs.scatter()
    assert a.vectors is not None and b.vectors is not None
    np.testing.assert_array_equal(b.vectors, [[1, 0, 0, 0]])
    assert c.vectors is None


def test_cache_hits_are_not_sent() -> None:
    a, b = job(1, "cached", "new"), job(2, "cached")
    inputs = Inputs([a, b], "m1", DIMS)
    assert set(inputs.distinct()) == {sha("cached"), sha("new")}
    inputs.fill_cached({sha("cached"): vec(0, 0, 1, 0)})
    assert [inputs.texts[i] for i in inputs.unseen()] == ["new"]
    assert inputs.hits == 2
    inputs.fill(range(1), answer(vec(0, 0, 0, 1)))
    inputs.scatter()
    assert a.vectors is not None and b.vectors is not None
    np.testing.assert_array_equal(a.vectors, [[0, 0, 1, 0], [0, 0, 0, 1]])
    np.testing.assert_array_equal(b.vectors, [[0, 0, 1, 0]])


def test_a_cached_vector_of_another_dimension_is_sent_again() -> None:
    inputs = Inputs([job(1, "cached")], "m1", DIMS)
    inputs.fill_cached({sha("cached"): vec(1, 2)})
    assert [inputs.texts[i] for i in inputs.unseen()] == ["cached"]


def test_nothing_to_send_when_every_text_is_cached() -> None:
    a = job(1, "x", "x")
    inputs = Inputs([a], "m1", DIMS)
    inputs.fill_cached({sha("x"): vec(1, 1, 1, 1)})
    assert inputs.unseen() == [] and inputs.hits == 2
    inputs.scatter()
    assert a.vectors is not None
    np.testing.assert_array_equal(a.vectors, np.ones((2, DIMS)))


@pytest.mark.parametrize("wrong", [vec(1, 2, 3), None, np.ones((2, 2), dtype=np.float32)])
def test_a_wrong_dimension_vector_fails_only_its_document(wrong: np.ndarray | None) -> None:
    a, b = job(1, "a"), job(2, "b", "a")
    inputs = Inputs([a, b], "m1", DIMS)
    inputs.fill(range(2), answer(vec(1, 0, 0, 0), wrong))
    inputs.scatter()
    assert b.failure is not None
    assert (b.failure.kind, b.failure.error_class) == ("dead", "invalid_vector_dimension")
    assert "model m1 expects 4" in b.failure.message
    assert b.vectors is None
    assert a.failure is None and a.vectors is not None


def test_a_failed_request_fails_every_owner_of_its_inputs_only() -> None:
    a, b, c = job(1, "one"), job(2, "two"), job(3, "one")
    inputs = Inputs([a, b, c], "m1", DIMS)
    assert inputs.request(range(0, 1)) == ["one"]
    inputs.fail(range(0, 1), classify(providers.TransientProviderError("502")))
    inputs.fill(range(1, 2), answer(vec(0, 1, 0, 0)))
    inputs.scatter()
    assert a.failure is not None and a.failure.kind == "transient"
    assert c.failure is not None and c.failure.kind == "transient"
    assert b.failure is None and b.vectors is not None


def test_request_tokens_follow_the_unseen_inputs() -> None:
    inputs = Inputs([job(1, "a", "b"), job(2, "a")], "m1", DIMS)
    inputs.fill_cached({sha("a"): vec(1, 1, 1, 1)})
    assert inputs.request_tokens() == [3]


# --------------------------------------------------------------------------- validation


def test_validation_normalises_every_job_of_a_block() -> None:
    a, b = job(1, "a"), job(2, "b")
    a.vectors, b.vectors = (
        np.array([[3, 4, 0, 0]], np.float32),
        np.array([[0, 0, 0, 2]], np.float32),
    )
    assert validate([a, b], model()) == []
    np.testing.assert_allclose(a.vectors, [[0.6, 0.8, 0, 0]])
    np.testing.assert_allclose(b.vectors, [[0, 0, 0, 1]])


def test_validation_falls_back_to_per_document_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = vectors.validate_and_normalize

    def counting(matrix: Any, **kw: Any) -> Any:
        calls.append(len(matrix))
        return real(matrix, **kw)

    monkeypatch.setattr(vectors, "validate_and_normalize", counting)
    jobs = [job(i, "a", "b") for i in range(1, 4)]
    for j in jobs:
        j.vectors = np.full((2, DIMS), 2.0, np.float32)
    jobs[1].vectors[1, 2] = np.nan  # type: ignore[index]
    culprits = validate(jobs, model())
    assert calls == [6, 2, 2, 2]  # the block, then document by document
    assert culprits == [jobs[1]]
    assert jobs[1].failure is not None
    assert (jobs[1].failure.kind, jobs[1].failure.error_class) == (
        "dead",
        "invalid_vector_non_finite",
    )
    for j in (jobs[0], jobs[2]):
        assert j.failure is None
        np.testing.assert_allclose(j.vectors, np.full((2, DIMS), 0.5))  # type: ignore[arg-type]


def test_validation_runs_in_blocks_of_bounded_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = vectors.validate_and_normalize
    monkeypatch.setattr(
        vectors,
        "validate_and_normalize",
        lambda matrix, **kw: calls.append(len(matrix)) or real(matrix, **kw),
    )
    jobs = [job(i, *(["t"] * 100)) for i in range(1, 6)]
    for j in jobs:
        j.vectors = np.ones((100, DIMS), np.float32)
    assert validate(jobs, model()) == []
    assert calls == [300, 200]  # a block closes once it holds VALIDATE_ROWS (256) rows or more


@pytest.mark.parametrize(("storage", "fails"), [("halfvec", True), ("vector", False)])
def test_a_value_beyond_halfvec_range_fails_its_document_only(storage: str, fails: bool) -> None:
    big, fine = job(1, "big"), job(2, "fine")
    big.vectors = np.array([[70000.0, 1, 1, 1]], np.float32)
    fine.vectors = np.array([[1.0, 2, 3, 4]], np.float32)
    culprits = validate([big, fine], model(storage=storage, metric="l2"))
    assert culprits == ([big] if fails else [])
    assert fine.failure is None
    np.testing.assert_array_equal(fine.vectors, [[1, 2, 3, 4]])  # l2: kept as is
    if fails:
        assert big.failure is not None
        assert (big.failure.kind, big.failure.error_class) == ("dead", "invalid_vector_non_finite")
        assert "beyond halfvec's range" in big.failure.message
    else:
        assert big.failure is None


# --------------------------------------------------------------------------- sizing


def test_the_batch_size_halves_above_the_commit_target() -> None:
    s = BatchSizer(size=256, min_size=4, max_size=512, target_seconds=0.5)
    assert s.observe(0.6, 256) == 128
    assert s.observe(0.6, 128) == 64
    s.size = 6
    assert s.observe(9.0, 6) == 4  # not below the minimum
    assert s.observe(9.0, 4) == 4


def test_the_batch_size_grows_below_half_the_target_when_batches_are_full() -> None:
    s = BatchSizer(size=100, min_size=4, max_size=200, target_seconds=0.5)
    assert s.observe(0.2, 100) == 126  # x1.25 + 1
    assert s.observe(0.2, 50) == 126  # a batch that was not full says nothing
    assert s.observe(0.3, 126) == 126  # between half the target and the target: steady
    assert s.observe(0.5, 126) == 126  # at the target: steady
    assert s.observe(0.1, 126) == 158
    assert s.observe(0.1, 158) == 198
    assert s.observe(0.1, 198) == 200  # not above the maximum


@pytest.mark.parametrize(
    ("unseen", "max_inputs", "in_flight", "size"),
    [
        (1000, 256, 4, 250),  # at least in_flight requests
        (4000, 256, 4, 256),  # but none over max_inputs
        (40, 256, 4, 16),  # no request under 16 inputs to make more of them
        (10, 256, 4, 16),
        (1001, 256, 4, 251),  # rounded up
        (100, 256, 0, 100),  # in_flight 0 counts as 1
        (100, 8, 4, 8),
    ],
)
def test_request_size(unseen: int, max_inputs: int, in_flight: int, size: int) -> None:
    assert request_size(unseen, max_inputs, in_flight) == size


def test_triage_dead_letters_a_too_large_row_without_chunking_it() -> None:
    """read_batch_v1 reports a row of an attached table whose text exceeds 10 MiB as too_large
    (its text is not sent): a dead letter naming the limit, never an empty-document one."""
    batch = core.triage([message(1, 1, status="too_large", body=""), message(2, 2)], max_attempts=5)
    failure = batch.jobs[1].failure
    assert failure is not None and failure.error_class == "document_too_large"
    assert f"{core.MAX_TEXT_BYTES:,}" in failure.message
    assert 1 not in batch.texts and 2 in batch.texts
