"""Backfills through the provider's Batch API (issue 25, point 4; sql/075_provider_batches.sql).

A model with ``batch_api`` on (``set_model_batch_api``) gets its backfill messages hidden for a
day and marked ``{"backfill": "bulk"}``; live writes stay on the online path. For such a model
:class:`Bulk` moves one provider batch a step further at each pass of the worker loop:

* **open**: ``provider_batch_open_v1`` records a batch (state ``preparing``, leased to this
  worker) holding up to ``batch_api_documents`` of those messages;
* **submit**: their documents are read and chunked as online; a message with nothing to send
  (stale, already embedded, every input cached, a chunking failure) goes back to the online
  path at once; the inputs' sha256 are recorded *before* the input file (one request per input,
  so that a rejected input fails alone) is uploaded, then the batch is created with the row's
  submission id in its metadata and the provider's ids are recorded (``submitted``). A worker
  that died anywhere in between leaves the row ``preparing``: its successor first looks for a
  batch with that submission id at the provider, so nothing is paid for twice;
* **poll**: every ``batch_api_poll_interval`` seconds until the provider says it ended;
* **collect**: the output and error files are read into :class:`Results` (vectors by input
  sha256; inputs the provider rejected, with its reason), then the batch's messages are taken
  back in slices and go through ``Worker.process_known``: the same chunking, validation,
  write-back and acknowledgement as an online batch, the batch's vectors in place of requests,
  a rejected input's documents dead-lettered with the provider's reason, and the inputs of
  expired, cancelled or failed requests embedded online.

A provider without the Batch API (no ``/files``: 404, or a test double) gets the messages back
on the online path, with the error recorded on the batch.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from pgingest import db, providers

if TYPE_CHECKING:
    from pgingest.worker.loop import Worker

log = logging.getLogger("pgingest.worker")

ENDED = ("completed", "expired", "cancelled", "failed")
"""Statuses after which a provider batch runs no more requests."""

MAX_INPUTS = 50_000
"""Requests in one provider batch (OpenAI's limit): one input each."""


OUTPUT_BYTES_PER_INPUT = 64 * 1024
"""The most bytes of result file read per input (a float vector of 3,072 dimensions as JSON is
about 60 KiB)."""


@dataclass
class Results:
    """What a provider batch gave: vectors by input sha256, and inputs it rejected."""

    vectors: dict[bytes, np.ndarray] = field(default_factory=dict)
    rejected: dict[bytes, providers.ProviderError] = field(default_factory=dict)

    def counts(self, hashes: Sequence[bytes]) -> tuple[int, int, int]:
        """(embedded, rejected, left to the online path) of ``hashes``."""
        embedded = sum(1 for h in hashes if h in self.vectors)
        rejected = sum(1 for h in hashes if h in self.rejected)
        return embedded, rejected, len(hashes) - embedded - rejected


def custom_id(input_hash: bytes) -> str:
    """A request line's custom_id: its input's sha256 (160 bits of it), so that the results of a
    batch map to inputs by what each line holds, whatever order a file was written in (a
    successor may find a batch built from another file than the one it recorded)."""
    return "h" + input_hash.hex()[:40]


def parse_results(
    provider: providers.OpenAICompatibleProvider, files: Sequence[bytes], hashes: Sequence[bytes]
) -> Results:
    """The lines of a batch's output and error files whose custom_id (:func:`custom_id`) is one
    of ``hashes``. An input without a line, or whose line failed other than by a rejection (a
    5xx, ``batch_expired``, cancelled), is in neither map: it is embedded online."""
    by_id = {custom_id(h): h for h in hashes}
    results = Results()
    for data in files:
        for raw in data.splitlines():
            if not raw.strip():
                continue
            try:
                # providers' parser: a line nested too deeply is invalid JSON (ValueError), not
                # a RecursionError that failed the whole collection
                line = providers._json_loads(raw)
            except (ValueError, UnicodeDecodeError):
                continue
            cid = line.get("custom_id") if isinstance(line, dict) else None
            h = by_id.get(cid) if isinstance(cid, str) else None
            if h is None:
                continue
            got = provider.batch_line_result(line, 1)
            if isinstance(got, providers.RaggedResponse):
                got = got.rows[0][None, :] if got.rows else got
            if isinstance(got, np.ndarray):
                if got.shape[0] == 1:
                    results.vectors[h] = got[0]
            elif isinstance(got, providers.InputRejected):
                results.rejected[h] = got
    return results


class Bulk:
    """The Batch API side of one worker (see the module's docstring)."""

    def __init__(self, worker: Worker, name: str) -> None:
        self.w = worker
        self.name = name  # the lease holder: unique per worker process
        # How long this worker holds a provider batch between two steps: four polls (a
        # successor of a worker that died takes its batches over after that).
        self.lease = int(max(10.0, 4 * worker.s.batch_api_poll_interval))
        self._next: dict[str, float] = {}  # model -> monotonic time of its next step
        self._results: dict[int, Results] = {}  # provider batch id -> results being collected
        self.leased = False

    def close(self, conn: Any) -> None:
        """On the way out: the leases this worker holds go, so another worker takes over now."""
        if self.leased:
            db.provider_batch_unlease(conn, self.name)
            self.leased = False

    def step(self, m: db.Model) -> bool:
        """One step of the model's oldest provider batch this worker may work on (or a new
        one). True while any backfill of the model waits for or sits in a provider batch."""
        now = time.monotonic()
        if now < self._next.get(m.name, 0.0):
            return True
        conn = self.w._connection()
        pb = db.provider_batch_lease(conn, m.name, self.name, self.lease)
        if pb is None:
            opened = db.provider_batch_open(
                conn, m.name, max(1, self.w.s.batch_api_documents), self.name, self.lease
            )
            if opened is None:
                self._next[m.name] = now + min(5.0, self.w.s.batch_api_poll_interval)
                return False
            log.info("provider batch opened", extra={"model": m.name, "batch": opened})
            pb = db.provider_batch_lease(conn, m.name, self.name, self.lease)
            if pb is None:
                return True
        self.leased = True
        provider = self.w.embedder.provider(m)
        try:
            if not isinstance(provider, providers.OpenAICompatibleProvider):
                self._give_up(conn, pb, "the model's provider has no Batch API")
            elif pb.state == "preparing":
                self._submit(m, conn, pb, provider)
            elif pb.state == "submitted":
                self._poll(m, conn, pb, provider)
            else:
                self._collect(m, conn, pb, provider)
        except (providers.ModelUnavailable, providers.InputRejected) as exc:
            # No Batch API here (404), or it refuses our requests: the online path takes over.
            self._give_up(conn, pb, f"{exc.error_class}: {exc}")
        except providers.ProviderError as exc:
            log.warning(
                "provider batch: the provider failed, trying again later",
                extra={"model": m.name, "batch": pb.id, "error": str(exc)[:300]},
            )
            self._next[m.name] = time.monotonic() + self.w.s.batch_api_poll_interval
        return True

    # -- the steps -----------------------------------------------------------------------------

    def _update(self, conn: Any, pb: db.ProviderBatch, **fields: Any) -> bool:
        return db.provider_batch_update(conn, pb.id, self.name, self.lease, **fields)

    def _lost(self, m: db.Model, pb: db.ProviderBatch, when: str) -> None:
        log.warning(
            "provider batch: the lease ran out while it was being prepared; another worker has it",
            extra={"model": m.name, "batch": pb.id, "when": when},
        )

    def _give_up(self, conn: Any, pb: db.ProviderBatch, why: str) -> None:
        """Every message of the batch back to the online path; the batch closed with ``why``."""
        msgs = db.provider_batch_messages(conn, pb.id, self.name, self.w.s.visibility_timeout)
        db.provider_batch_release(conn, pb.id, self.name, [m.msg_id for m in msgs])
        self._update(conn, pb, state="collected", error=why)
        log.warning(
            "provider batch given up: its documents are embedded online",
            extra={"batch": pb.id, "documents": len(msgs), "error": why[:300]},
        )

    def _submit(
        self,
        m: db.Model,
        conn: Any,
        pb: db.ProviderBatch,
        provider: providers.OpenAICompatibleProvider,
    ) -> None:
        if pb.input_hashes is not None:
            # Recorded before an upload: this batch may exist at the provider already.
            found = provider.find_batch("pgingest_submission", pb.submission)
            if found is not None and found.get("status") not in ("cancelling", "cancelled"):
                self._update(
                    conn,
                    pb,
                    state="submitted",
                    provider_batch_id=found["id"],
                    input_file_id=found.get("input_file_id"),
                    provider_status=found.get("status"),
                )
                log.info(
                    "provider batch found at the provider (submitted before a restart)",
                    extra={"model": m.name, "batch": pb.id, "provider_batch": found["id"]},
                )
                return
        msgs = db.provider_batch_messages(conn, pb.id, self.name, self.w.s.visibility_timeout)
        p = self.w.prepare(m, conn, msgs)
        batch, inputs = p.batch, p.inputs
        send = {inputs.hashes[i] for i in inputs.unseen()}
        keep: set[int] = set()
        texts: list[str] = []
        hashes: list[bytes] = []
        tokens = 0
        seen: set[bytes] = set()
        for job in batch.todo():
            mine = [(h, c) for h, c in zip(job.hashes, job.chunks, strict=True) if h in send]
            new = [(h, c) for h, c in mine if h not in seen]
            if not mine or len(hashes) + len(new) > MAX_INPUTS:
                continue  # nothing to send (cached), or past the limit: online
            keep.update(job.msg_ids)
            for h, c in new:
                seen.add(h)
                hashes.append(h)
                texts.append(c.embed_input)
                tokens += c.token_count
        back = [msg.msg_id for msg in msgs if msg.msg_id not in keep]
        if back:
            db.provider_batch_release(conn, pb.id, self.name, back)
        if not hashes:
            self._update(conn, pb, state="collected", error="nothing to send: all online")
            return
        # Each step renews the lease, and one that finds it lost stops there: chunking and
        # uploading a large batch can outlast the lease, and its successor, which took the batch
        # over meanwhile, submits it (a second submission would be paid for twice).
        if not self._update(conn, pb, input_hashes=hashes, tokens=tokens):
            self._lost(m, pb, "before its inputs were recorded")
            return
        data = "".join(
            json.dumps(provider.batch_request(custom_id(h), [t]), ensure_ascii=False) + "\n"
            for h, t in zip(hashes, texts, strict=True)
        ).encode("utf-8", "surrogatepass")
        file_id = provider.upload_batch_file(data)
        if not self._update(conn, pb, input_file_id=file_id):
            self._lost(m, pb, "after its file was uploaded (not submitted)")
            return
        created = provider.create_batch(
            file_id, {"pgingest_submission": pb.submission, "pgingest_model": m.name}
        )
        if not self._update(
            conn,
            pb,
            state="submitted",
            provider_batch_id=created["id"],
            provider_status=created.get("status"),
        ):
            # The lease ran out between the last renewal and the provider's answer: the
            # successor that holds the batch now may submit it again. This one is cancelled at
            # once, so that the documents are paid for once (if the successor adopted it instead,
            # found by its metadata, its poll sees it cancelled and the online path takes over).
            self._lost(m, pb, "while its provider batch was being created (cancelled)")
            try:
                provider.cancel_batch(created["id"])
            except providers.ProviderError as exc:
                log.warning(
                    "provider batch: cancelling the orphan failed",
                    extra={
                        "batch": pb.id,
                        "provider_batch": created["id"],
                        "error": str(exc)[:300],
                    },
                )
            return
        self._next[m.name] = time.monotonic() + self.w.s.batch_api_poll_interval
        log.info(
            "provider batch submitted",
            extra={
                "model": m.name,
                "batch": pb.id,
                "provider_batch": created["id"],
                "documents": len(keep),
                "inputs": len(hashes),
                "tokens": tokens,
                "online": len(back),
            },
        )

    def _poll(
        self,
        m: db.Model,
        conn: Any,
        pb: db.ProviderBatch,
        provider: providers.OpenAICompatibleProvider,
    ) -> None:
        assert pb.provider_batch_id is not None
        b = provider.get_batch(pb.provider_batch_id)
        counts = b.get("request_counts") or {}
        status = str(b.get("status"))
        self._update(
            conn,
            pb,
            provider_status=status,
            requests_completed=int(counts.get("completed") or 0),
            requests_failed=int(counts.get("failed") or 0),
        )
        if status not in ENDED:
            self._next[m.name] = time.monotonic() + self.w.s.batch_api_poll_interval
            return
        results = self._download(provider, b, pb)
        embedded, rejected, online = results.counts(pb.input_hashes or [])
        self._update(
            conn,
            pb,
            state="collecting",
            inputs_embedded=embedded,
            inputs_rejected=rejected,
            inputs_online=online,
            error=None if status == "completed" else f"the provider's batch {status}",
        )
        log.info(
            "provider batch ended",
            extra={
                "model": m.name,
                "batch": pb.id,
                "status": status,
                "embedded": embedded,
                "rejected": rejected,
                "online": online,
            },
        )

    def _download(
        self,
        provider: providers.OpenAICompatibleProvider,
        b: dict[str, Any],
        pb: db.ProviderBatch,
    ) -> Results:
        hashes = pb.input_hashes or []
        limit = max(1 << 20, len(hashes) * OUTPUT_BYTES_PER_INPUT)
        files = [
            provider.file_content(fid, limit)
            for fid in (b.get("output_file_id"), b.get("error_file_id"))
            if isinstance(fid, str) and fid
        ]
        results = parse_results(provider, files, hashes)
        self._results[pb.id] = results
        return results

    def _collect(
        self,
        m: db.Model,
        conn: Any,
        pb: db.ProviderBatch,
        provider: providers.OpenAICompatibleProvider,
    ) -> None:
        results = self._results.get(pb.id)
        if results is None:  # a successor, or a restart: the files again
            assert pb.provider_batch_id is not None
            results = self._download(provider, provider.get_batch(pb.provider_batch_id), pb)
        size = self.w.sizers.for_model(m.name).size
        msgs = db.provider_batch_messages(
            conn, pb.id, self.name, self.w.s.visibility_timeout, take=max(1, size)
        )
        if msgs:
            self.w.process_known(m, msgs, results)
        if len(msgs) < size:
            self._results.pop(pb.id, None)
            log.info("provider batch collected", extra={"model": m.name, "batch": pb.id})
