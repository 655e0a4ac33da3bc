"""The worker's decisions about one batch, as pure functions and small types.

Nothing here touches the database, the network, a thread or the clock: messages come in as
``db.Message`` values, provider answers as ``providers.EmbedResult`` values and errors, and what
comes out is a :class:`WritePlan` that ``writer.py`` executes in one transaction. The order of
use, in ``loop.Worker._process_batch``:

* :func:`isolate`: crash redeliveries (messages whose earlier deliveries were neither
  acknowledged nor released: the worker died or hung) are processed in shrinking groups, the
  rest of the read set aside, so that a poison document cannot take its batch with it;
* :func:`triage`: stale and done messages are acknowledged, invalid ones dead-lettered,
  duplicate messages of one version merged into one :class:`Job`, versions that used up their
  attempts failed (``attempts_exhausted``);
* :func:`chunk` and :func:`check_chunks`: chunking, with culprit isolation, and the limits;
* ``inputs.Inputs`` (its own module, as pure): which text goes where: identical texts sent
  once, cache hits not sent, provider answers checked input by input, vectors scattered back to
  every chunk that owns them;
* :func:`validate`: finite, non-zero, normalised, within halfvec range, in blocks with a
  per-document fallback;
* :func:`classify` and :meth:`Job.fail`: a provider error becomes a :class:`Failure` kind, the
  most serious failure of a job wins;
* :func:`settle`: done, deferred (rate limited: no attempt spent; transient: attempt spent, with
  backoff) or dead, and the deferred messages' new bodies;
* :func:`split`: a plan over the write budget (chunks, bytes of text and vectors) becomes
  several plans, each written and acknowledged in a transaction of its own;
* :class:`BatchSizer`: AIMD on the batch size from the commit time; halved after a failure; one
  per model (:class:`BatchSizers`).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from pgingest import chunking, providers, vectors

if TYPE_CHECKING:
    from pgingest import db

FailureKind = Literal["auth", "rejected", "transient", "rate_limited", "dead"]

# When one job's chunks hit several failures in one batch, the lowest number wins.
PRIORITY: dict[str, int] = {"auth": 0, "rejected": 1, "dead": 1, "transient": 2, "rate_limited": 3}

# Failures dead-lettered for what the document is (not for a provider that kept failing).
DEAD_KINDS = ("dead", "rejected")

# Vectors validated per numpy call (the float64 temporaries are 16 bytes per value).
VALIDATE_ROWS = 256


@dataclass(frozen=True)
class Failure:
    """Why a job gets no vectors in this batch; ``kind`` decides what happens to it."""

    kind: FailureKind
    error_class: str
    message: str
    retry_after: float = 0.0
    """Seconds the provider asked to wait (``Retry-After``, at most
    ``providers.MAX_RETRY_AFTER``): a ``rate_limited`` deferral lasts that long, a ``transient``
    one (a 5xx that said when to come back) at least that long; 0 when it said nothing."""


@dataclass(frozen=True)
class DeadLetter:
    """One row for ``dead_letter_v1``."""

    msg_id: int
    doc_id: int | None
    content_hash: bytes | None
    error_class: str
    message: str
    attempts: int
    payload: Any = None


@dataclass
class Job:
    """One document version to embed, and what became of it."""

    msg_ids: list[int]
    doc_id: int
    doc_key: str | None
    content_hash: bytes
    attempts_before: int
    message: dict[str, Any]
    chunks: list[chunking.Chunk] = field(default_factory=list)
    vectors: np.ndarray | None = None
    hashes: list[bytes] = field(default_factory=list)  # sha256 of each chunk's model input
    failure: Failure | None = None

    def fail(self, failure: Failure) -> None:
        """Records ``failure`` unless a failure at least as serious is already recorded."""
        if self.failure is not None and PRIORITY[self.failure.kind] <= PRIORITY[failure.kind]:
            return
        self.failure = failure


@dataclass
class BatchStats:
    read: int = 0
    written: int = 0
    stale: int = 0
    chunks: int = 0
    dead: int = 0
    deferred: int = 0
    released: int = 0


@dataclass
class Batch:
    """The messages of one read, triaged."""

    ack: list[int] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    jobs: dict[int, Job] = field(default_factory=dict)  # by doc_id, in the order read
    texts: dict[int, tuple[str | None, str]] = field(default_factory=dict)  # (title, body)

    def todo(self) -> list[Job]:
        """The jobs that have not failed (yet)."""
        return [j for j in self.jobs.values() if j.failure is None]

    def msg_ids(self) -> list[int]:
        """Every message of the batch (to release them all)."""
        return [i for j in self.jobs.values() for i in j.msg_ids] + self.ack


MAX_TEXT_BYTES = 10_485_760
"""The largest text pgingest embeds for one document (documents.body's CHECK; read_batch_v1
reports a longer row of an attached table as ``too_large`` without sending its text)."""


def backoff_delay(attempts: int, base: float = 2.0, cap: float = 300.0) -> int:
    """Seconds before a failed version is retried: exponential with full jitter, at least 1 s."""
    return max(1, int(random.uniform(0, min(cap, base * (2**attempts)))))


# -- crash redeliveries ------------------------------------------------------------------------
#
# A message read with read_ct > 1 was delivered before and neither acknowledged nor released: the
# worker that held it died (OOM, segfault in a tokenizer, SIGKILL) or hung. Its crash count c =
# read_ct - 1. A batch holding such suspects processes only the suspects of the highest crash
# count, at most group_size(c) of them; everything else read is released at once with the
# delivery given back (release_v2: read_ct - 1), so it charges nothing. A poison document that
# crashes every worker thus goes through groups of 256 (or the whole batch), 64, 16, 4 and then
# 1: its companions of each group leave it behind one level at a time, and only crashes it caused
# alone are charged as attempts.

ISOLATION_BATCH = 256
"""The batch size the group sizes start from (fixed: every worker charges crashes the same)."""
ISOLATION_FACTOR = 4
"""Each further crash divides the group by this much."""


def group_size(crashes: int) -> int:
    """How many suspects of crash count ``crashes`` (>= 1) are processed together:
    max(1, 256 // 4**crashes): 64, 16, 4, then 1."""
    return max(1, ISOLATION_BATCH // ISOLATION_FACTOR ** max(crashes, 0))


def _grouped_deliveries() -> int:
    c = 1
    while group_size(c) > 1:
        c += 1
    return c


GROUPED_DELIVERIES = _grouped_deliveries()
"""Deliveries of a message processed with companions before it is processed alone: the first
one (crash count 0, a whole batch) and every crash count whose group holds more than one (4:
crash counts 0, 1, 2 and 3). A crash in a group may be a companion's fault: not charged."""


def charged_crashes(crashes: int) -> int:
    """The crashes charged as failed attempts: only those of deliveries processed alone
    (``crashes - GROUPED_DELIVERIES``, never below 0). A poison document is dead-lettered
    (``attempts_exhausted``) after at most GROUPED_DELIVERIES + max_attempts crashes."""
    return max(0, crashes - GROUPED_DELIVERIES)


def attempts_before(msg: db.Message) -> int:
    """Failed attempts already spent on this message's version: those recorded in its body
    (transient failures) plus its charged crashes."""
    return msg.attempts_recorded + charged_crashes(msg.crashes)


def isolate(messages: Sequence[db.Message]) -> tuple[list[db.Message], list[db.Message]]:
    """(to process, to release) for one read. Without crash redeliveries: everything is
    processed. Otherwise only the suspects of the highest crash count c, the first
    ``group_size(c)`` of them in the order read; the other suspects and the fresh messages are
    released without charge (they come back at once, the fresh ones as fresh as they were).
    Fresh messages are not processed with suspects: a crash would make suspects of them too."""
    top = max((m.crashes for m in messages), default=0)
    if top == 0:
        return list(messages), []
    keep: list[db.Message] = []
    rest: list[db.Message] = []
    limit = group_size(top)
    for m in messages:
        if m.crashes == top and len(keep) < limit:
            keep.append(m)
        else:
            rest.append(m)
    return keep, rest


def triage(messages: Iterable[db.Message], max_attempts: int) -> Batch:
    batch = Batch()
    for msg in messages:
        if msg.status in ("stale", "done"):
            batch.ack.append(msg.msg_id)
            continue
        content_hash = msg.content_hash
        if msg.status == "invalid" or msg.doc_id is None or content_hash is None:
            batch.dead.append(
                DeadLetter(
                    msg.msg_id,
                    None,
                    None,
                    "invalid_message",
                    "queue message is not a pgingest job (expected doc_id and hash)",
                    msg.read_ct,
                    {"message": msg.message},
                )
            )
            continue
        existing = batch.jobs.get(msg.doc_id)
        if existing is not None:  # a duplicate message of the same version
            existing.msg_ids.append(msg.msg_id)
            continue
        job = batch.jobs[msg.doc_id] = Job(
            msg_ids=[msg.msg_id],
            doc_id=msg.doc_id,
            doc_key=msg.doc_key,
            content_hash=content_hash,
            attempts_before=attempts_before(msg),
            message=msg.message,
        )
        if msg.status == "too_large":
            job.failure = Failure(
                "dead",
                "document_too_large",
                f"the text to embed exceeds {MAX_TEXT_BYTES:,} bytes (a row of an attached "
                "table; pgingest.documents refuses such a body at INSERT)",
            )
        elif job.attempts_before >= max_attempts:
            job.failure = Failure(
                "dead",
                "attempts_exhausted",
                f"gave up after {job.attempts_before} attempts ({msg.crashes} deliveries ended "
                f"with the worker dead or stuck, {charged_crashes(msg.crashes)} of them with "
                "this document alone)",
            )
        else:
            batch.texts[msg.doc_id] = (msg.title, msg.body or "")
    return batch


def chunk(batch: Batch, config: chunking.ChunkerConfig) -> None:
    """Chunks every text of the batch in one call; when that fails, document by document, so
    that only the culprits fail (``chunking``)."""
    ids = list(batch.texts)
    try:
        results = chunking.chunk_documents([batch.texts[i] for i in ids], config)
    except ValueError:
        results = []
        for i in ids:
            try:
                results.append(chunking.chunk_document(*batch.texts[i], config))
            except ValueError as exc:
                batch.jobs[i].failure = Failure("dead", "chunking", str(exc))
                results.append([])
    for i, chunks in zip(ids, results, strict=True):
        batch.jobs[i].chunks = chunks


def check_chunks(batch: Batch, max_chunks: int) -> None:
    for job in batch.todo():
        if not job.chunks:
            job.failure = Failure("dead", "empty_document", "the document has no text to embed")
        elif len(job.chunks) > max_chunks:
            job.failure = Failure(
                "dead",
                "too_many_chunks",
                f"{len(job.chunks)} chunks exceed the limit of {max_chunks}",
            )


def classify(exc: providers.ProviderError) -> Failure:
    """What a provider error means for the jobs whose inputs it hit."""
    kind: FailureKind
    retry_after = 0.0
    if isinstance(exc, providers.ModelUnavailable):
        kind = "auth"
    elif isinstance(exc, providers.RateLimited | providers.CircuitOpen):
        kind = "rate_limited"
        if isinstance(exc, providers.RateLimited):
            retry_after = float(exc.retry_after or 1.0)
    elif isinstance(exc, providers.InputRejected):
        kind = "rejected"
    else:
        kind = "transient"
        # a 503 announcing its outage (Retry-After): not retried before the server said
        retry_after = float(exc.retry_after or 0.0)
    return Failure(kind, exc.error_class, str(exc), retry_after)


def validate(jobs: Sequence[Job], model: db.Model) -> list[Job]:
    """Checks and normalises the jobs' vectors (the model's dimensions, metric and storage),
    grouped into blocks of about ``VALIDATE_ROWS`` rows (few numpy calls, bounded temporary
    memory); a block with a bad vector is checked again job by job, so that only the culprits
    fail. Returns the culprits."""
    culprits: list[Job] = []
    block: list[Job] = []
    rows = 0
    for job in jobs:
        block.append(job)
        rows += len(job.chunks)
        if rows >= VALIDATE_ROWS:
            culprits += _validate_block(block, model)
            block, rows = [], 0
    if block:
        culprits += _validate_block(block, model)
    return culprits


def _validate_block(jobs: list[Job], model: db.Model) -> list[Job]:
    def check(matrix: np.ndarray) -> np.ndarray:
        return vectors.validate_and_normalize(
            matrix, dimensions=model.dimensions, metric=model.metric, storage=model.storage
        )

    try:
        every = check(np.concatenate([j.vectors for j in jobs if j.vectors is not None]))
    except vectors.VectorError:
        pass
    else:
        pos = 0
        for job in jobs:
            n = len(job.chunks)
            job.vectors = every[pos : pos + n]
            pos += n
        return []
    culprits = []
    for job in jobs:
        if job.vectors is None:
            continue
        try:
            job.vectors = check(job.vectors)
        except vectors.VectorError as exc:
            job.failure = Failure("dead", f"invalid_vector_{exc.reason}", str(exc))
            culprits.append(job)
    return culprits


@dataclass
class Deferral:
    """Messages put back in the queue with new bodies, visible again after ``delay`` s."""

    msg_ids: list[int]
    messages: list[dict[str, Any]]
    delay: int


@dataclass
class WritePlan:
    """Everything one write-back does, decided: ``writer.py`` executes it in one transaction."""

    done: list[Job]
    """Jobs with vectors: their chunks are written, their messages acknowledged."""
    ack: list[int]
    """Messages acknowledged with nothing to write (stale, done, duplicates of a dead letter)."""
    dead: list[DeadLetter]
    rate_limited: Deferral | None
    """No attempt spent; visible again after the provider's Retry-After."""
    transient: Deferral | None
    """One attempt spent; visible again after a backoff."""
    jobs: list[Job]

    def dead_jobs(self) -> list[Job]:
        """Jobs dead-lettered for what they are (not for a provider that kept failing)."""
        return [j for j in self.jobs if j.failure is not None and j.failure.kind in DEAD_KINDS]


def settle(
    batch: Batch, max_attempts: int, backoff: Callable[[int], int] = backoff_delay
) -> WritePlan:
    """Decides the fate of every job of ``batch``: done, deferred or dead."""
    ack = list(batch.ack)
    dead = list(batch.dead)
    done: list[Job] = []
    rate_limited: list[Job] = []
    transient: list[Job] = []
    for job in batch.jobs.values():
        if job.failure is None and job.vectors is not None:
            done.append(job)
            continue
        failure = job.failure or Failure("dead", "bad_response", "no vectors")
        attempts = job.attempts_before + 1
        if failure.kind == "rate_limited":
            rate_limited.append(job)
        elif failure.kind == "transient" and attempts < max_attempts:
            transient.append(job)
        else:
            message = failure.message
            if failure.kind == "transient":
                message = f"{message} (gave up after {attempts} attempts)"
            dead.extend(
                DeadLetter(i, job.doc_id, job.content_hash, failure.error_class, message, attempts)
                for i in job.msg_ids[:1]
            )
            ack.extend(job.msg_ids[1:])
    plan = WritePlan(done, ack, dead, None, None, list(batch.jobs.values()))
    if rate_limited:
        retry_after = max(j.failure.retry_after for j in rate_limited if j.failure is not None)
        plan.rate_limited = _defer(rate_limited, 0, int(retry_after) or 1)
    if transient:
        delay = backoff(max(j.attempts_before for j in transient))
        # the server's Retry-After, where it gave one, is the least wait (already capped)
        asked = max(j.failure.retry_after for j in transient if j.failure is not None)
        plan.transient = _defer(transient, 1, max(delay, math.ceil(asked)))
    return plan


def _defer(jobs: list[Job], spent: int, delay: int) -> Deferral:
    """New message bodies: ``spent`` added to the attempts already spent."""
    return Deferral(
        msg_ids=[i for j in jobs for i in j.msg_ids],
        messages=[
            {**j.message, "attempts": j.attempts_before + spent} for j in jobs for _ in j.msg_ids
        ],
        delay=delay,
    )


# -- the write budget ---------------------------------------------------------------------------
#
# complete_batch_v2 takes every chunk and vector of its call in one Bind message (PostgreSQL
# refuses a message over 1 GB) and one transaction (statement_timeout, memory, WAL). A settled
# batch whose done jobs exceed the budget is written as several plans, in the order read: a job
# is added to the current plan while the plan stays within both budgets, else it starts the next
# plan; a job over the budget on its own is written alone. Each plan acknowledges exactly the
# messages of its own jobs, in the transaction that writes their chunks; the acknowledgements
# with nothing to write, the dead letters and the deferrals go with the first plan.

ROW_OVERHEAD_BYTES = 64
"""Bytes counted per chunk row besides its text and vector (chunk hash, ordinal, token count,
span, doc_id and the arrays' per-element headers)."""


def job_cost(job: Job) -> tuple[int, int]:
    """(chunks, bytes) that writing ``job`` sends: its chunks' text (UTF-8), its vectors
    (float32) and a fixed overhead per row."""
    text = sum(len(c.text.encode("utf-8")) for c in job.chunks)
    vecs = int(job.vectors.nbytes) if job.vectors is not None else 0
    return len(job.chunks), text + vecs + ROW_OVERHEAD_BYTES * len(job.chunks)


def plan_cost(plan: WritePlan) -> tuple[int, int]:
    """(chunks, bytes) of the done jobs of ``plan``."""
    chunks = size = 0
    for job in plan.done:
        c, b = job_cost(job)
        chunks += c
        size += b
    return chunks, size


def split(plan: WritePlan, max_chunks: int, max_bytes: int) -> list[WritePlan]:
    """``plan`` as plans within ``max_chunks`` chunks and ``max_bytes`` bytes each (``job_cost``),
    or ``[plan]`` when it fits. Budgets below 1 count as 1: every job alone."""
    max_chunks = max(1, max_chunks)
    max_bytes = max(1, max_bytes)
    groups: list[list[Job]] = []
    chunks = size = 0
    for job in plan.done:
        c, b = job_cost(job)
        if groups and chunks + c <= max_chunks and size + b <= max_bytes:
            groups[-1].append(job)
            chunks += c
            size += b
        else:
            groups.append([job])
            chunks, size = c, b
    if len(groups) <= 1:
        return [plan]
    done = {id(j) for j in plan.done}
    first = WritePlan(
        groups[0],
        plan.ack,
        plan.dead,
        plan.rate_limited,
        plan.transient,
        [j for j in plan.jobs if id(j) not in done] + groups[0],
    )
    return [first] + [WritePlan(g, [], [], None, None, list(g)) for g in groups[1:]]


@dataclass
class BatchSizer:
    """AIMD on the batch size: grows while write-back stays under the target, halves above it
    and after a failed read or write-back; and never more messages than the provider embeds in
    ``embed_window`` seconds at the pace observed (:meth:`embedded`), so that a slow provider
    gets batches it finishes well inside the visibility timeout."""

    size: int
    min_size: int
    max_size: int
    target_seconds: float
    embed_window: float = math.inf
    seconds_per_message: float | None = None

    @property
    def cap(self) -> int:
        """The most messages the provider embeds in ``embed_window`` (``max_size`` before any
        was measured)."""
        if self.seconds_per_message is None or self.embed_window == math.inf:
            return self.max_size
        fits = int(self.embed_window / max(self.seconds_per_message, 1e-9))
        return max(self.min_size, min(self.max_size, fits))

    def observe(self, commit_seconds: float, n: int) -> int:
        """The size after a write-back of ``n`` messages that took ``commit_seconds``."""
        if commit_seconds > self.target_seconds:
            self.size = max(self.min_size, self.size // 2)
        elif n >= self.size and commit_seconds < self.target_seconds / 2:
            self.size = min(self.max_size, int(self.size * 1.25) + 1)
        self.size = min(self.size, self.cap)
        return self.size

    def embedded(self, seconds: float, n: int) -> int:
        """``n`` messages whose inputs were sent (not all cached) took ``seconds`` to embed:
        the pace (smoothed) caps the size."""
        if n > 0:
            pace = seconds / n
            prev = self.seconds_per_message
            self.seconds_per_message = pace if prev is None else 0.7 * prev + 0.3 * pace
            self.size = min(self.size, self.cap)
        return self.size

    def failed(self) -> int:
        """The size after a read or write-back that failed (a statement timeout, out of memory,
        a message too large): halved, not below the minimum. Successes grow it back
        (:meth:`observe`)."""
        self.size = max(self.min_size, self.size // 2)
        return self.size


@dataclass
class BatchSizers:
    """A :class:`BatchSizer` per model, each starting at ``initial``: a model whose write-backs
    fail or are slow gets smaller batches; the other models keep theirs."""

    initial: int
    min_size: int
    max_size: int
    target_seconds: float
    embed_window: float = math.inf
    by_model: dict[str, BatchSizer] = field(default_factory=dict)

    def for_model(self, model: str) -> BatchSizer:
        sizer = self.by_model.get(model)
        if sizer is None:
            sizer = self.by_model[model] = BatchSizer(
                self.initial, self.min_size, self.max_size, self.target_seconds, self.embed_window
            )
        return sizer

    @property
    def size(self) -> int:
        """The smallest batch size of the models seen (the initial size before any)."""
        return min((z.size for z in list(self.by_model.values())), default=self.initial)
