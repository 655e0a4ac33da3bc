"""Crash redeliveries (``pgingest.worker.batch``: ``isolate``, ``group_size``,
``charged_crashes``, ``attempts_before``): which messages of a read are processed, which are set
aside, and which crashes are charged as attempts. No database: the queue is simulated below; the
same rules against PostgreSQL are in ``tests/test_worker_resilience.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from pgingest import db
from pgingest.worker import batch as core

MAX_ATTEMPTS = 5


def message(
    msg_id: int, read_ct: int = 1, *, doc_id: int | None = None, attempts: int = 0
) -> db.Message:
    doc = msg_id if doc_id is None else doc_id
    payload: dict[str, Any] = {"doc_id": doc, "hash": "ab" * 32, "attempts": attempts}
    return db.Message(msg_id, read_ct, payload, doc, f"key-{doc}", "Title", "text", "current")


def ids(messages: list[db.Message]) -> list[int]:
    return [m.msg_id for m in messages]


# --------------------------------------------------------------------------- the rules


def test_group_sizes_shrink_by_four_down_to_one() -> None:
    assert [core.group_size(c) for c in range(1, 7)] == [64, 16, 4, 1, 1, 1]
    # The first delivery (a whole batch) and crash counts 1-3 are processed with companions.
    assert core.GROUPED_DELIVERIES == 4


def test_only_crashes_of_deliveries_processed_alone_are_charged() -> None:
    assert [core.charged_crashes(c) for c in range(0, 10)] == [0, 0, 0, 0, 0, 1, 2, 3, 4, 5]


def test_message_counts_crashes_and_recorded_attempts_apart() -> None:
    m = message(1, read_ct=7, attempts=2)
    assert (m.crashes, m.attempts_recorded) == (6, 2)
    assert core.attempts_before(m) == 2 + 2  # 6 crashes, 4 of them in groups
    assert message(1, read_ct=0).crashes == 0  # never below 0
    assert (
        db.Message(1, 1, ["not", "a", "dict"], 1, "k", None, "x", "current").attempts_recorded == 0
    )


def test_a_read_without_crash_redeliveries_is_processed_whole() -> None:
    msgs = [message(i) for i in range(1, 300)]
    keep, aside = core.isolate(msgs)
    assert keep == msgs and aside == []


def test_suspects_of_the_highest_crash_count_only_at_most_a_group() -> None:
    msgs = (
        [message(i, read_ct=2) for i in range(1, 101)]  # 100 suspects, crash count 1
        + [message(i, read_ct=3) for i in range(101, 121)]  # 20 suspects, crash count 2
        + [message(i) for i in range(121, 200)]  # fresh
    )
    keep, aside = core.isolate(msgs)
    assert ids(keep) == list(range(101, 117))  # the first 16 of crash count 2, in read order
    assert ids(aside) == [i for i in range(1, 200) if not 101 <= i < 117]


@pytest.mark.parametrize(("read_ct", "group"), [(2, 64), (3, 16), (4, 4), (5, 1), (9, 1)])
def test_group_size_by_crash_count(read_ct: int, group: int) -> None:
    keep, aside = core.isolate([message(i, read_ct=read_ct) for i in range(1, 201)])
    assert len(keep) == group and len(aside) == 200 - group


def test_fresh_messages_are_not_processed_with_a_suspect() -> None:
    keep, aside = core.isolate([message(1), message(2, read_ct=6), message(3)])
    assert ids(keep) == [2] and ids(aside) == [1, 3]


def test_triage_charges_only_the_charged_crashes() -> None:
    grouped = core.GROUPED_DELIVERIES
    b = core.triage(
        [
            message(1, read_ct=grouped + 1),  # 4 crashes, all in groups: nothing charged
            message(2, read_ct=grouped + MAX_ATTEMPTS),  # 4 charged: one attempt left
            message(3, read_ct=grouped + MAX_ATTEMPTS + 1),  # 5 charged: exhausted
            message(4, read_ct=grouped + 1, attempts=MAX_ATTEMPTS),  # recorded attempts still count
        ],
        MAX_ATTEMPTS,
    )
    assert [b.jobs[i].attempts_before for i in (1, 2, 3, 4)] == [0, 4, 5, 5]
    assert b.jobs[1].failure is None and b.jobs[2].failure is None
    for i in (3, 4):
        failure = b.jobs[i].failure
        assert failure is not None and failure.error_class == "attempts_exhausted"
    assert "9 deliveries ended with the worker dead or stuck, 5 of them" in str(b.jobs[3].failure)


def test_a_transient_failure_carries_the_charged_crashes_only() -> None:
    b = core.triage([message(1, read_ct=core.GROUPED_DELIVERIES + 3, attempts=1)], MAX_ATTEMPTS)
    b.jobs[1].failure = core.Failure("transient", "server_error", "503")
    plan = core.settle(b, MAX_ATTEMPTS, backoff=lambda _: 1)
    assert plan.transient is not None
    # recorded 1 + charged 2 + this failure: the redelivered message starts at read_ct 0
    assert plan.transient.messages == [{**b.jobs[1].message, "attempts": 4}]


# --------------------------------------------------------------------------- a simulated queue


@dataclass
class Queue:
    """pgmq, reduced: read takes the visible messages in msg_id order and counts the delivery;
    a release (release_v2) gives it back; a crash leaves the count."""

    read_ct: dict[int, int] = field(default_factory=dict)
    embedded: list[int] = field(default_factory=list)
    dead: dict[int, str] = field(default_factory=dict)
    crashes: int = 0
    reads: int = 0

    def run(self, poison: set[int], batch: int, max_reads: int = 10_000) -> None:
        while self.read_ct and self.reads < max_reads:
            self.reads += 1
            taken = sorted(self.read_ct)[:batch]
            for i in taken:
                self.read_ct[i] += 1
            msgs = [message(i, read_ct=self.read_ct[i]) for i in taken]
            keep, aside = core.isolate(msgs)
            for m in aside:
                self.read_ct[m.msg_id] -= 1
            b = core.triage(keep, MAX_ATTEMPTS)
            if any(j.failure is None and j.doc_id in poison for j in b.jobs.values()):
                self.crashes += 1  # the worker dies: its claims expire, read_ct stays
                continue
            for j in b.jobs.values():
                del self.read_ct[j.doc_id]
                if j.failure is not None:
                    self.dead[j.doc_id] = j.failure.error_class
                else:
                    self.embedded.append(j.doc_id)


@pytest.mark.parametrize("poison_at", [1, 100, 256, 300])
def test_a_poison_document_is_dead_lettered_alone_after_a_bounded_number_of_crashes(
    poison_at: int,
) -> None:
    q = Queue({i: 0 for i in range(1, 513)})
    q.run({poison_at}, batch=256)
    assert q.dead == {poison_at: "attempts_exhausted"}
    assert sorted(q.embedded) == [i for i in range(1, 513) if i != poison_at]
    assert q.crashes == core.GROUPED_DELIVERIES + MAX_ATTEMPTS


def test_two_poison_documents_take_no_companion_with_them() -> None:
    q = Queue({i: 0 for i in range(1, 301)})
    q.run({7, 8}, batch=256)  # side by side: they share every group down to size 4
    assert q.dead == {7: "attempts_exhausted", 8: "attempts_exhausted"}
    assert len(q.embedded) == 298
    assert q.crashes <= 2 * (core.GROUPED_DELIVERIES + MAX_ATTEMPTS)


def test_without_isolation_the_companions_would_be_dead_lettered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The failure this guards against: every crash charged, the whole batch reprocessed."""
    monkeypatch.setattr(core, "isolate", lambda msgs: (list(msgs), []))
    monkeypatch.setattr(core, "charged_crashes", lambda c: c)
    q = Queue({i: 0 for i in range(1, 11)})
    q.run({3}, batch=256)
    assert len(q.dead) == 10 and q.embedded == []
