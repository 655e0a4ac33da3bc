"""Which text goes where: the model inputs of one batch (pure, like ``batch.py``).

One row per chunk of the jobs to embed, in job order. Rows with the same text (sha256 of the
model input) share one request input and a text whose vector is cached is not sent at all;
``embedding.py`` sends the rest in requests addressed by ranges over :meth:`Inputs.unseen`, and
hands each answer (or error) back here. A rejected input or a vector of the wrong dimension fails
the jobs that own that input, and only those.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

import numpy as np

from pgingest import providers
from pgingest.worker.batch import Failure, Job


def request_size(unseen: int, max_inputs: int, in_flight: int) -> int:
    """Inputs per request: large requests (less overhead per input on both sides), but at least
    ``in_flight`` of them when the batch allows requests of 16 inputs or more (latency is hidden
    in parallel)."""
    return min(max_inputs, max(16, -(-unseen // max(1, in_flight))))


def hash_inputs(job: Job) -> list[bytes]:
    """The sha256 of each of the job's model inputs (``job.hashes``, computed once)."""
    if len(job.hashes) != len(job.chunks):
        job.hashes = [hashlib.sha256(c.embed_input.encode("utf-8")).digest() for c in job.chunks]
    return job.hashes


class Inputs:
    """The model inputs of a batch's jobs: one row per chunk, in job order.

    Rows with the same text (sha256 of the model input) share one request input; a text whose
    vector is cached is not sent at all. ``unseen()`` lists the rows to send (the first row of
    each text), a request is addressed by a range over that list, and :meth:`scatter` hands the
    vectors to the jobs once every request has answered.
    """

    def __init__(self, jobs: Sequence[Job], model: str, dimensions: int) -> None:
        self.jobs = list(jobs)
        self.model = model
        self.dimensions = dimensions
        self.texts: list[str] = []
        self.owners: list[Job] = []
        self.token_counts: list[int] = []
        for job in self.jobs:
            hash_inputs(job)
            for c in job.chunks:
                self.texts.append(c.embed_input)
                self.owners.append(job)
                self.token_counts.append(c.token_count)
        self.hashes = [h for job in self.jobs for h in job.hashes]
        self.out = np.zeros((len(self.texts), dimensions), dtype=np.float32)
        self.ok = np.zeros(len(self.texts), dtype=bool)
        self.positions: dict[bytes, list[int]] = {}  # text -> its rows, while not filled
        for i, h in enumerate(self.hashes):
            self.positions.setdefault(h, []).append(i)
        self._send = [rows[0] for rows in self.positions.values()]

    def distinct(self) -> list[bytes]:
        """The distinct texts (their sha256), to look up in the cache."""
        return list(self.positions)

    def fill_cached(self, cached: Mapping[bytes, np.ndarray]) -> None:
        """Fills the rows of every text with a cached vector of the model's dimension."""
        for h, vec in cached.items():
            if vec.shape == (self.dimensions,):
                for i in self.positions.pop(h, []):
                    self.out[i] = vec
                    self.ok[i] = True
        self._send = [rows[0] for rows in self.positions.values()]

    def unseen(self) -> list[int]:
        """The rows to send: one per text with no vector yet."""
        return self._send

    @property
    def hits(self) -> int:
        """Rows that need no request input (cached, or a duplicate of another row's text)."""
        return len(self.texts) - len(self._send)

    def request(self, r: range) -> list[str]:
        return [self.texts[self._send[j]] for j in r]

    def request_tokens(self) -> list[int]:
        return [self.token_counts[i] for i in self._send]

    def _rows(self, j: int) -> list[int]:
        return self.positions[self.hashes[self._send[j]]]

    def fail(self, r: range, failure: Failure) -> None:
        """The request ``r`` failed as a whole: every owner of its inputs fails."""
        for j in r:
            for i in self._rows(j):
                self.owners[i].fail(failure)

    def fill(self, r: range, result: providers.EmbedResult) -> None:
        """Stores the answer to request ``r``; a rejected input or a vector of the wrong
        dimension fails the owners of that input only."""
        firsts = self._send[r.start : r.stop]
        block = result.block
        if not result.errors and block is not None and block.shape == (len(r), self.dimensions):
            # the common case: the answer's array, copied once, in one numpy assignment
            self.out[firsts] = block
            self.ok[firsts] = True
            return
        if not result.errors and all(
            getattr(v, "shape", None) == (self.dimensions,) for v in result.vectors
        ):
            self.out[firsts] = np.stack(result.vectors)  # type: ignore[arg-type]
            self.ok[firsts] = True
            return
        for offset, j in enumerate(r):
            rows = self._rows(j)
            err = result.errors.get(offset)
            if err is not None:
                for i in rows:
                    self.owners[i].fail(Failure("rejected", err.error_class, str(err)))
                continue
            vec = result.vectors[offset]
            arr = np.asarray(vec) if vec is not None else None
            if arr is None or arr.ndim != 1 or arr.shape[0] != self.dimensions:
                got = "no vector" if arr is None else f"a vector of {arr.size} dimensions"
                failure = Failure(
                    "dead",
                    "invalid_vector_dimension",
                    f"the provider returned {got} for a chunk; model {self.model} expects "
                    f"{self.dimensions}",
                )
                for i in rows:
                    self.owners[i].fail(failure)
                continue
            for i in rows:
                self.out[i] = arr
                self.ok[i] = True

    def scatter(self) -> None:
        """Copies each text's vector to its other rows, then gives every job with no failure
        and a vector in each row its ``vectors``."""
        for rows in self.positions.values():
            if len(rows) > 1 and self.ok[rows[0]]:
                self.out[rows[1:]] = self.out[rows[0]]
                self.ok[rows[1:]] = True
        pos = 0
        for job in self.jobs:
            n = len(job.chunks)
            if job.failure is None and bool(self.ok[pos : pos + n].all()):
                job.vectors = self.out[pos : pos + n]
            pos += n
