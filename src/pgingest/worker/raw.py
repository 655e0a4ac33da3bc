"""Raw documents in the worker: fetch, detect, parse, and hand the text to the chunker.

A message of a raw source (``add_source(..., content => | uri =>)``, ``sql/016_raw.sql``) comes
from ``read_batch_v1`` as ``current`` with no text. :meth:`RawStage.prepare` reads the bytes of
those documents (``raw_documents_v1``: a bytea column, up to the fetch cap) or fetches their URI
(``pgingest.raw.fetch``: the allow-list of the worker's environment plus the admin-managed
``pgingest.raw_allowlist``, pinned addresses, size caps, retries with backoff), detects the type
and parses it in the :class:`~pgingest.raw.parse.ParsePool` (``--parse-processes`` child
processes with a wall-clock timeout, a memory limit and a page cap), on a pool of fetch threads:
the documents of a batch are fetched and parsed concurrently. The worker's loop goes on once
half of them are ready (at most ``raw_wait_seconds``, 10 s): the messages of documents still
fetching or parsing leave the batch, still claimed, and come into the model's next batch, which
takes their results (``prepare(carry=True)``), so the parse pool works on them while the ready
ones are embedded and written, and a slow parse never holds the others. Without carrying (a
provider batch's messages), the batch waits for all of them at most ``raw_wait_seconds``, and
those still in work are released without an attempt spent (``raw_pending``, back in 2 s) while
their work goes on; their next delivery takes the result. Every document of a batch is
submitted; of those that earlier batches left in work, at most ``4 x max(fetch threads, parse
processes)`` are held before new ones wait.

What becomes of each document:

* parsed: its text goes through the batch as any text (``chunking.chunk_structured``: heading
  boundaries preferred); the sha256 of its bytes, the store's ETag / Last-Modified and its
  structure (page and heading offsets, which ``pgingest.chunk_location()`` maps chunks onto) are
  recorded (``raw_record_v1``);
* a re-check (``refresh_source_rows``) that finds the same bytes (the store's validators say so,
  or the same sha256): the version before the refresh is restored (``raw_unchanged_v2``), and
  nothing is parsed or embedded;
* a permanent :class:`RawDocumentError` (``not_found``, ``forbidden``, ``unsupported_type``,
  ``too_large``, ``encrypted``, ``empty_text``, ``timeout``, ``oom``, ``parse_error``, ...):
  dead-lettered at once with its class;
* a transient one (``fetch_timeout``, ``throttled``, ``server_error``, ``connect_error``, after
  the fetch's own retries): deferred with backoff, one attempt spent;
* an error for the whole source (``scope == "source"``: a bucket the credentials cannot read):
  the source is paused with the reason (``source_status.paused_reason``) and its documents wait,
  no attempt spent; every ``probe_interval`` one of them is fetched as a probe, and a probe that
  gets past the source-wide error resumes the source (``raw_resume_source_v1``), as does
  ``pgingest.resume_source()``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg

from pgingest import chunking
from pgingest.raw import detect, fetch, queries
from pgingest.raw.errors import UNANSWERED_CLASSES, RawDocumentError
from pgingest.raw.parse import ParsedDocument, ParseOptions, ParsePool
from pgingest.worker import batch as core

if TYPE_CHECKING:
    from pgingest import db
    from pgingest.metrics import Metrics
    from pgingest.settings import WorkerSettings

log = logging.getLogger("pgingest.worker")

INFLIGHT_TTL = 600.0
"""Seconds a finished fetch and parse waits for its message to come back."""

SHARED_TTL = 300.0
"""Seconds a result waits for the batches of the worker's other models (``prepare(share=)``)."""

SHARED_BYTES = 64 * 1024 * 1024
"""Parsed text (and chunks) kept at most for those batches (the oldest results go first)."""

SHARED_FAILURES = frozenset(
    {"timeout", "oom", "encrypted", "empty_text", "parse_error", "unsupported_type"}
)
"""The failures a kept result may carry: the parse's, which another attempt would repeat (a
fetch's, such as a refusal or a vanished object, each model finds for itself)."""

ALLOWLIST_TTL = 60.0
"""Seconds the admin-managed allow-list is cached (a removed entry stops working within it)."""

TEST_HOOK_MIME = "application/x-pgingest-test-"
"""With ``PGINGEST_RAW_TEST_HOOKS=1`` only: a MIME override ``application/x-pgingest-test-hang``
(``alloc``, ``crash``, ``slow``: 2 s more) runs the parse pool's test hook on that document (tests and chaos)."""


def parse_options_from_env(env: dict[str, str] | None = None) -> ParseOptions:
    """``PGINGEST_RAW_PARSE_TIMEOUT`` (s), ``PGINGEST_RAW_PARSE_MEMORY`` (bytes, 0: no limit),
    ``PGINGEST_RAW_MAX_PAGES``, ``PGINGEST_RAW_PDF_BACKEND``, ``PGINGEST_RAW_HTML_BACKEND``,
    ``PGINGEST_RAW_DOCX_BACKEND``; defaults: :class:`ParseOptions`'."""
    env = dict(os.environ) if env is None else env
    d = ParseOptions()
    memory = int(env.get("PGINGEST_RAW_PARSE_MEMORY", d.memory_bytes or 0))
    return ParseOptions(
        timeout_s=float(env.get("PGINGEST_RAW_PARSE_TIMEOUT", d.timeout_s)),
        memory_bytes=memory or None,
        max_pages=int(env.get("PGINGEST_RAW_MAX_PAGES", d.max_pages)),
        pdf_backend=env.get("PGINGEST_RAW_PDF_BACKEND", d.pdf_backend),
        html_backend=env.get("PGINGEST_RAW_HTML_BACKEND", d.html_backend),
        docx_backend=env.get("PGINGEST_RAW_DOCX_BACKEND", d.docx_backend),
    )


def with_allowlist(policy: fetch.FetchPolicy, entries: list[tuple[str, str]]) -> fetch.FetchPolicy:
    """``policy`` widened by the admin-managed allow-list rows ``(kind, value)``."""
    import ipaddress

    if not entries:
        return policy
    roots = list(policy.allowed_roots)
    hosts, http_hosts = set(policy.allowed_hosts), set(policy.http_hosts)
    networks = list(policy.allowed_networks)
    buckets = set(policy.allowed_buckets)
    for kind, value in entries:
        if kind == "root":
            roots.append(Path(value))
        elif kind == "host":
            hosts.add(value.lower())
        elif kind == "http_host":
            hosts.add(value.lower())
            http_hosts.add(value.lower())
        elif kind == "network":
            networks.append(ipaddress.ip_network(value, strict=False))
        elif kind == "bucket":
            buckets.add(value)
    return dataclasses.replace(
        policy,
        allowed_roots=tuple(roots),
        allowed_hosts=frozenset(hosts),
        http_hosts=frozenset(http_hosts),
        allowed_networks=tuple(networks),
        allowed_buckets=frozenset(buckets),
    )


@dataclass(frozen=True)
class Rendered:
    """A parsed document as the text the chunker gets, with where its headings start and its
    structure (``source_rows.structure``)."""

    text: str
    heading_starts: tuple[int, ...]
    structure: dict[str, Any]


def render(doc: ParsedDocument) -> Rendered:
    """Blocks joined by blank lines; a heading is a paragraph of its own. ``structure``:
    ``pages`` ``[[offset, page], ...]`` where the page changes, ``headings`` ``[[offset,
    [heading, ...]], ...]`` where the heading path changes (offsets in characters of ``text``)."""
    parts: list[str] = []
    pos = 0
    pages: list[list[int]] = []
    headings: list[list[Any]] = []
    starts: list[int] = []
    last_page: int | None = None
    last_path: list[str] | None = None
    for block in doc.blocks:
        text = block.text.strip()
        if not text:
            continue
        if parts:
            pos += 2
        if block.page is not None and block.page != last_page:
            pages.append([pos, block.page])
            last_page = block.page
        path = list(block.heading_path)
        if path != last_path:
            headings.append([pos, path])
            last_path = path
        if block.kind == "heading":
            starts.append(pos)
        parts.append(text)
        pos += len(text)
    structure: dict[str, Any] = {
        "mime": doc.mime,
        "parser": doc.parser,
        "pages": pages,
        "headings": headings,
    }
    if doc.pages is not None:
        structure["page_count"] = doc.pages
    return Rendered("\n\n".join(parts), tuple(starts), structure)


@dataclass
class Outcome:
    """What fetching and parsing one document gave."""

    row: queries.RawRow
    rendered: Rendered | None = None
    error: RawDocumentError | None = None
    unchanged: bool = False
    sha256: bytes | None = None
    etag: str | None = None
    last_modified: str | None = None
    seconds: float = 0.0
    fetched_bytes: int | None = None  # None: nothing fetched or read
    fetch_seconds: float = 0.0
    mime: str | None = None  # parsed with this type
    parse_seconds: float = 0.0
    pages: int | None = None
    # chunked on the fetch thread, while other documents parse: (config, title, chunks)
    chunked: tuple[chunking.ChunkerConfig, str | None, list[chunking.Chunk]] | None = None


@dataclass
class RawBatch:
    """The raw documents of one batch: their text (by doc_id) and their failures."""

    rendered: dict[int, Rendered] = field(default_factory=dict)
    failures: dict[int, core.Failure] = field(default_factory=dict)
    chunked: dict[int, tuple[chunking.ChunkerConfig, str | None, list[chunking.Chunk]]] = field(
        default_factory=dict
    )
    # prepare(carry=True): the messages of documents still fetching or parsing, taken out of
    # the batch and still claimed: the caller brings them into its next batch
    carried: list[db.Message] = field(default_factory=list)


def _store_answered(probe: Outcome) -> bool:
    """Whether a probe of a paused source got past its source-wide refusal: its bytes came (a
    parse may still fail), or the store answered about that object. A refusal before any
    request (``not_allowed``, ``bad_uri``) or a transient failure proves nothing: the source
    stays paused and is probed again (``UNANSWERED_CLASSES``, the list ``raw_refused_alone_v2``
    decides with too)."""
    return probe.error is None or probe.error.error_class not in UNANSWERED_CLASSES


def _text_bytes(o: Outcome) -> int:
    """About the memory a kept result holds: its text and the text of its chunks."""
    n = len(o.rendered.text) if o.rendered is not None else 0
    if o.chunked is not None:
        n += sum(len(c.embed_input) for c in o.chunked[2])
    return n


class RawStage:
    """Fetching and parsing for the worker (one per worker process; its pools start lazily, at
    the first raw document)."""

    def __init__(
        self,
        settings: WorkerSettings,
        *,
        policy: fetch.FetchPolicy | None = None,
        options: ParseOptions | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.processes = max(1, int(getattr(settings, "parse_processes", 2)))
        self.fetch_threads = max(1, int(getattr(settings, "raw_fetch_threads", 8)))
        self.pause_delay = max(1, int(settings.probe_interval))
        self.probe_interval = float(settings.probe_interval)
        self._last_probe: dict[str, float] = {}  # by paused source
        # A source-wide error (the store refuses the credentials) pauses the source; a probe of
        # one of its documents that gets through resumes it. A document that paused its source
        # and is refused again after another document of it got through (by any worker: its
        # row records the refusal, raw_refused_alone_v1) has a refusal of its own (a URI naming
        # a bucket the credentials cannot read): it is dead-lettered rather than pausing the
        # source again and again. The probe of a paused source is a document that did not pause
        # it (this process's memory of them, by doc_id) where the batch has one.
        self._paused_by: set[int] = set()
        self.env_policy = policy if policy is not None else fetch.FetchPolicy.from_env()
        self.options = options if options is not None else parse_options_from_env()
        self.test_hooks = os.environ.get("PGINGEST_RAW_TEST_HOOKS") == "1"
        self.metrics = metrics
        self.wait_seconds = max(0.0, float(getattr(settings, "raw_wait_seconds", 10.0)))
        self.batch_bytes = max(1, int(getattr(settings, "raw_batch_bytes", 256 * 1024 * 1024)))
        self.retry_delay = 2
        self.max_inflight = 4 * max(self.fetch_threads, self.processes)
        self._inflight: dict[tuple[int, bytes], tuple[float, Future[Outcome]]] = {}
        # Results kept for the worker's other models: (done at, the result, models still to
        # take it), oldest first; their parsed text is at most SHARED_BYTES in all.
        self._shared: OrderedDict[tuple[int, bytes], tuple[float, Outcome, int]] = OrderedDict()
        self._shared_bytes = 0
        self._pool: ParsePool | None = None
        self._fetchers: ThreadPoolExecutor | None = None
        self._policy: fetch.FetchPolicy | None = None
        self._policy_at = 0.0
        self._lock = threading.Lock()
        self.parsed = 0
        self.failed: dict[str, int] = {}

    # -- resources -----------------------------------------------------------------------------

    def pool(self) -> ParsePool:
        with self._lock:
            if self._pool is None:
                self._pool = ParsePool(self.processes, self.options)
            return self._pool

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._fetchers is None:
                self._fetchers = ThreadPoolExecutor(
                    max_workers=self.fetch_threads, thread_name_prefix="pgingest-fetch"
                )
            return self._fetchers

    def close(self) -> None:
        with self._lock:
            fetchers, pool = self._fetchers, self._pool
            self._fetchers = self._pool = None
        if fetchers is not None:
            fetchers.shutdown(wait=True, cancel_futures=True)
        if pool is not None:
            pool.close()

    def policy(self, conn: psycopg.Connection[Any]) -> fetch.FetchPolicy:
        now = time.monotonic()
        if self._policy is None or now - self._policy_at > ALLOWLIST_TTL:
            self._policy = with_allowlist(self.env_policy, queries.allowlist(conn))
            self._policy_at = now
        return self._policy

    # -- one batch -----------------------------------------------------------------------------

    def prepare(
        self,
        conn: psycopg.Connection[Any],
        msgs: list[db.Message],
        chunker: chunking.ChunkerConfig | None = None,
        *,
        carry: bool = False,
        share: int = 1,
    ) -> tuple[list[db.Message], RawBatch | None]:
        """The messages with the parsed text of their raw documents in place (an unchanged
        re-check's message marked stale: acknowledged), and the failures to apply after triage.
        Messages of other documents are returned as they were; no query when none may be raw.
        With ``chunker``, each document is also chunked on its fetch thread as soon as it is
        parsed, while the others still parse (:meth:`chunk` takes those chunks).

        Without ``carry`` the batch waits for all of its documents, at most ``raw_wait_seconds``;
        those still in work then are released (``raw_pending``). With ``carry`` (the worker's
        online loop) it goes on as soon as half of them are ready (or all, or after
        ``raw_wait_seconds``): the messages of the others leave the batch, still claimed, in
        ``RawBatch.carried``, and the caller brings them into its next batch (which reads that
        many fewer new messages), which takes their results. So the parse pool works on them
        while the ready half is embedded and written, instead of idling until the slowest
        document of the batch is parsed.

        ``share``: how many models this worker serves (each has its own message for a
        document): a document parsed (or its parse failed) for one of them is kept, up to
        ``SHARED_BYTES`` of text and ``SHARED_TTL`` s, for the batches of the ``share - 1``
        others, which take it without fetching or parsing it again (a model migration parses
        each document once, not once per model)."""
        ids = [
            m.doc_id
            for m in msgs
            if m.status == "current" and m.body is None and m.doc_id is not None
        ]
        if not ids:
            return msgs, None
        policy = self.policy(conn)
        self._prune()  # first: _read counts a document held here as read already
        rows, over = self._read(conn, ids, policy.max_bytes)
        if not rows:
            return msgs, None
        # A message of another version than the row's is stale (a change queued its own),
        # decided message by message: a carried message was read earlier than the others, and
        # its status is as old as that read.
        versions = {d: row.version for d, row in rows.items()}

        def raw_current(m: db.Message) -> bool:
            return m.status == "current" and m.body is None and m.doc_id in versions

        def behind(m: db.Message) -> bool:
            return raw_current(m) and m.content_hash != versions.get(m.doc_id or 0)

        wanted = {m.doc_id for m in msgs if raw_current(m) and not behind(m)}
        rows = {d: row for d, row in rows.items() if d in wanted}
        out = RawBatch()
        for doc_id in over:
            out.failures[doc_id] = self._later("over the batch's budget of bytes read at once")
        futures: dict[int, Future[Outcome]] = {}
        shared: dict[int, Outcome] = {}
        probes: dict[int, str] = {}  # doc_id -> its paused source, fetched as a probe
        titles = {m.doc_id: m.title for m in msgs if m.doc_id in rows}
        # The whole batch goes in (its bytes are read already; releasing the documents over a
        # fixed cap cost a 2 s round trip each time: a 256-message batch of small files took 5
        # deliveries). The cap bounds only what earlier batches left in work: a document is
        # refused while more than max_inflight of those are still held.
        limit = self.max_inflight + len(rows)
        now = time.monotonic()
        candidates: dict[str, int] = {}  # paused source -> its probe in this batch
        for doc_id, row in rows.items():
            if row.paused_reason is None:
                continue
            chosen = candidates.get(row.source)
            if chosen is None or (chosen in self._paused_by and doc_id not in self._paused_by):
                candidates[row.source] = doc_id
        for doc_id, row in rows.items():
            if (
                row.paused_reason is not None
                and candidates.get(row.source) == doc_id
                and now - self._last_probe.get(row.source, 0.0) >= self.probe_interval
            ):
                self._last_probe[row.source] = now
                probes[doc_id] = row.source
            elif row.paused_reason is not None:
                out.failures[doc_id] = core.Failure(
                    "rate_limited",
                    "source_paused",
                    f"source {row.source} is paused: {row.paused_reason}",
                    retry_after=self.pause_delay,
                )
                continue
            key = (doc_id, row.version)
            kept = self._take_shared(key) if doc_id not in probes else None
            if kept is not None:  # parsed for another model's batch
                shared[doc_id] = kept
                continue
            held = self._inflight.get(key)
            if held is None:
                if len(self._inflight) >= limit:
                    out.failures[doc_id] = self._later("the fetch and parse pools are full")
                    continue
                title = titles.get(doc_id)
                held = (
                    time.monotonic(),
                    self._executor().submit(self._one, row, policy, title, chunker),
                )
                self._inflight[key] = held
            futures[doc_id] = held[1]
        # The batch waits for its documents at most raw_wait_seconds (with carry: until half
        # are ready): the others are carried into the next batch or released (no attempt
        # spent) and go on parsing; their next delivery takes the result.
        if carry:
            self._wait_for_half(list(futures.values()))
        else:
            wait(list(futures.values()), timeout=self.wait_seconds)
        outcomes: dict[int, Outcome] = dict(shared)
        carried: set[int] = set()
        for doc_id, f in futures.items():
            if f.done():
                self._inflight.pop((doc_id, rows[doc_id].version), None)
                outcomes[doc_id] = o = f.result()
                self._observe(o)
                if share > 1:
                    self._keep_shared((doc_id, rows[doc_id].version), o, share - 1)
            elif carry:
                carried.add(doc_id)
            else:
                out.failures[doc_id] = self._later("still fetching or parsing")

        for doc_id, source in probes.items():
            probe = outcomes.get(doc_id)
            if probe is not None and _store_answered(probe):
                queries.resume_source(conn, source)
                log.warning("source resumed after a successful probe", extra={"source": source})
        records: list[queries.Record] = []
        unchanged: list[Outcome] = []
        own = queries.refused_alone(
            conn,
            [
                (d, o.row.version, o.error.error_class)
                for d, o in outcomes.items()
                if o.error is not None and o.error.scope == "source"
            ],
        )
        for doc_id, o in outcomes.items():
            if o.unchanged:
                unchanged.append(o)
            elif o.error is not None:
                out.failures[doc_id] = self._failure(conn, o, own=doc_id in own)
                if o.error.scope == "object" or doc_id not in own:
                    # with the bytes' sha256 and validators when they were fetched (a parse's
                    # failure): source sync then tells an unchanged broken object from a fixed
                    # one; a source-wide refusal: its row remembers it paused the source
                    records.append(
                        queries.Record(
                            doc_id,
                            o.row.version,
                            o.sha256,
                            o.etag if o.sha256 is not None else None,
                            o.last_modified if o.sha256 is not None else None,
                            error_class=o.error.error_class,
                        )
                    )
            else:
                assert o.rendered is not None
                self._paused_by.discard(doc_id)
                out.rendered[doc_id] = o.rendered
                if o.chunked is not None:
                    out.chunked[doc_id] = o.chunked
                records.append(
                    queries.Record(
                        doc_id,
                        o.row.version,
                        o.sha256,
                        o.etag,
                        o.last_modified,
                        None,
                        o.rendered.structure,
                    )
                )
        queries.record(conn, records)
        restored = queries.unchanged(
            conn,
            [o.row.doc_id for o in unchanged],
            [o.row.version for o in unchanged],
            [o.etag for o in unchanged],
            [o.last_modified for o in unchanged],
        )
        if unchanged:
            log.info(
                "raw documents unchanged: neither parsed nor embedded",
                extra={"documents": len(unchanged), "restored": restored},
            )
        unchanged_docs = {o.row.doc_id for o in unchanged}
        result: list[db.Message] = []
        for m in msgs:
            if behind(m):
                m = dataclasses.replace(m, status="stale")
            elif m.doc_id in carried and raw_current(m):
                out.carried.append(m)
                continue
            elif m.doc_id in unchanged_docs and raw_current(m):
                m = dataclasses.replace(m, status="stale")
            elif m.doc_id in out.rendered and m.status == "current":
                m = dataclasses.replace(m, body=out.rendered[m.doc_id].text)
            result.append(m)
        return result, out

    def _wait_for_half(self, futures: list[Future[Outcome]]) -> None:
        """Returns once half of ``futures`` (rounded up) are done, or after ``wait_seconds``."""
        # at least 0.1 s: with nothing ready, a pass must not come straight back (the loop does
        # not sleep while it carries documents)
        timeout = max(self.wait_seconds, 0.1)
        pending = [f for f in futures if not f.done()]
        short = (len(futures) + 1) // 2 - (len(futures) - len(pending))
        if not pending or short <= 0:
            return
        # One callback a future, counting down: concurrent.futures.wait(FIRST_COMPLETED) in a
        # loop installs and removes a waiter on every pending future at each completion, which
        # cost ~10% of the worker's CPU on a batch of a hundred small documents.
        ready = threading.Event()
        lock = threading.Lock()
        left = [short]

        def one_done(_: Future[Outcome]) -> None:
            with lock:
                left[0] -= 1
                if left[0] == 0:
                    ready.set()

        for f in pending:
            f.add_done_callback(one_done)
        ready.wait(timeout)

    def _observe(self, o: Outcome) -> None:
        if self.metrics is None:
            return
        if o.fetched_bytes is not None:
            self.metrics.raw_fetched(o.row.source, o.fetched_bytes, o.fetch_seconds)
        if o.mime is not None:
            self.metrics.raw_parsed(o.mime, o.parse_seconds, o.pages)
        if o.error is not None:
            self.metrics.raw_failed(o.row.source, o.error.error_class)

    def _read(
        self, conn: psycopg.Connection[Any], ids: list[int], max_bytes: int
    ) -> tuple[dict[int, queries.RawRow], list[int]]:
        """The raw rows among ``ids`` with their bytes, at most ``batch_bytes`` of bytea content
        in all (in message order, the first always), and the documents left for a later
        delivery. Sizes come first, without the bytes; a document already in work from an
        earlier batch costs nothing."""
        rows = queries.raw_documents(conn, ids, 0)
        want: list[int] = []
        read: list[int] = []  # the documents whose bytes are read now
        over: list[int] = []
        total = 0
        for doc_id in ids:
            row = rows.get(doc_id)
            if row is None:
                continue
            size = row.content_bytes or 0
            key = (doc_id, row.version)
            if (
                row.uri is None
                and size > 0
                and key not in self._inflight
                and key not in self._shared
            ):
                if total and total + min(size, max_bytes) > self.batch_bytes:
                    over.append(doc_id)
                    continue
                total += min(size, max_bytes)
                read.append(doc_id)
            want.append(doc_id)
        # The bytes of these only: a document in work from an earlier batch (its bytes read
        # then) is not read again with every batch that brings it (raw_batch_bytes would not hold).
        fresh = queries.raw_documents(conn, read, max_bytes) if read else {}
        counted = set(read)
        out: dict[int, queries.RawRow] = {}
        for doc_id in want:  # message order; a row gone since the first read is left out
            row = fresh.get(doc_id) if doc_id in counted else rows[doc_id]
            if row is not None:
                out[doc_id] = row
        return out, over

    def _later(self, why: str) -> core.Failure:
        """Released without an attempt spent, back in ``retry_delay`` s."""
        return core.Failure("rate_limited", "raw_pending", why, retry_after=self.retry_delay)

    def _prune(self) -> None:
        """Forgets results nobody came back for (the message went to another worker, or its
        document changed) after ``INFLIGHT_TTL`` s, and kept ones after ``SHARED_TTL`` s."""
        now = time.monotonic()
        for key, (since, f) in list(self._inflight.items()):
            if f.done() and now - since > INFLIGHT_TTL:
                del self._inflight[key]
        while self._shared:
            key, (since, _, _) = next(iter(self._shared.items()))
            if now - since <= SHARED_TTL:
                break
            self._drop_shared(key)

    def _keep_shared(self, key: tuple[int, bytes], o: Outcome, takers: int) -> None:
        """Keeps a parse's result (or its failure) for ``takers`` more batches."""
        if o.rendered is None and (o.error is None or o.error.error_class not in SHARED_FAILURES):
            return  # an unchanged re-check, a fetch's failure: each model looks again
        self._drop_shared(key)
        self._shared[key] = (time.monotonic(), o, takers)
        self._shared_bytes += _text_bytes(o)
        while self._shared_bytes > SHARED_BYTES and self._shared:
            self._drop_shared(next(iter(self._shared)))

    def _take_shared(self, key: tuple[int, bytes]) -> Outcome | None:
        kept = self._shared.get(key)
        if kept is None:
            return None
        since, o, takers = kept
        if takers <= 1:
            self._drop_shared(key)
        else:
            self._shared[key] = (since, o, takers - 1)
        return o

    def _drop_shared(self, key: tuple[int, bytes]) -> None:
        kept = self._shared.pop(key, None)
        if kept is not None:
            self._shared_bytes -= _text_bytes(kept[1])

    def chunk(
        self, batch: core.Batch, raw: RawBatch | None, config: chunking.ChunkerConfig
    ) -> None:
        """After ``core.triage``: fails the raw documents that failed, and chunks those parsed
        (their texts leave ``batch.texts``: ``core.chunk`` does the others)."""
        if raw is None:
            return
        for doc_id, failure in raw.failures.items():
            job = batch.jobs.get(doc_id)
            if job is not None:
                batch.texts.pop(doc_id, None)
                job.fail(failure)
        for doc_id, rendered in raw.rendered.items():
            job = batch.jobs.get(doc_id)
            texts = batch.texts.pop(doc_id, None)
            if job is None or texts is None:
                continue
            title, body = texts
            if len(body.encode("utf-8")) > core.MAX_TEXT_BYTES:
                job.fail(
                    core.Failure(
                        "dead",
                        "too_large",
                        f"the parsed text exceeds {core.MAX_TEXT_BYTES:,} bytes",
                    )
                )
                continue
            pre = raw.chunked.get(doc_id)
            if pre is not None and pre[0] == config and pre[1] == title:
                job.chunks = pre[2]  # chunked on the fetch thread
                continue
            try:
                job.chunks = chunking.chunk_structured(title, body, config, rendered.heading_starts)
            except ValueError as exc:
                job.fail(core.Failure("dead", "chunking", str(exc)))

    def _failure(
        self, conn: psycopg.Connection[Any], o: Outcome, *, own: bool = False
    ) -> core.Failure:
        """The failure of a document for the batch (``own``: a source-wide refusal found to be
        this document's own, raw_refused_alone_v1)."""
        exc = o.error
        assert exc is not None
        self.failed[exc.error_class] = self.failed.get(exc.error_class, 0) + 1
        log.warning(
            "raw document failed",
            extra={
                "doc_id": o.row.doc_id,
                "source": o.row.source,
                "error_class": exc.error_class,
                "permanent": exc.permanent,
                "scope": exc.scope,
                "error": exc.detail[:300],
            },
        )
        if exc.scope == "source":
            if own:
                self._paused_by.discard(o.row.doc_id)
                if o.row.paused_reason is not None:
                    # Paused by this document's earlier refusal, now found to be its own (others
                    # of the source got through since, with the same credentials): nothing is
                    # left to probe it with when it was the last document, and the source
                    # stayed paused. A genuine source-wide refusal pauses it again at once.
                    queries.resume_source(conn, o.row.source)
                    log.warning(
                        "source resumed: its pause came from one document's own refusal",
                        extra={"source": o.row.source, "doc_id": o.row.doc_id},
                    )
                return core.Failure(
                    "dead",
                    exc.error_class,
                    f"{exc} (this document only: other documents of the source were read after"
                    " it paused the source; or this worker's credentials differ from the others')",
                )
            if len(self._paused_by) >= 10_000:
                self._paused_by.clear()
            self._paused_by.add(o.row.doc_id)
            queries.pause_source(conn, o.row.source, str(exc))
            log.error(
                "source paused: its store refuses access",
                extra={"source": o.row.source, "error_class": exc.error_class},
            )
            return core.Failure("rate_limited", exc.error_class, str(exc), self.pause_delay)
        if exc.permanent:
            return core.Failure("dead", exc.error_class, str(exc))
        return core.Failure("transient", exc.error_class, str(exc))

    def _one(
        self,
        row: queries.RawRow,
        policy: fetch.FetchPolicy,
        title: str | None = None,
        chunker: chunking.ChunkerConfig | None = None,
    ) -> Outcome:
        """Fetch (or read), check for a change, detect and parse one document (a fetch thread);
        with ``chunker``, chunk it there too (a failure to chunk is left to :meth:`chunk`)."""
        t0 = time.perf_counter()
        o = Outcome(row)
        try:
            self._fetch_and_parse(o, policy)
            r = o.rendered
            fits = r is not None and len(r.text.encode("utf-8")) <= core.MAX_TEXT_BYTES
            if chunker is not None and r is not None and fits:
                with contextlib.suppress(ValueError):
                    chunks = chunking.chunk_structured(title, r.text, chunker, r.heading_starts)
                    o.chunked = (chunker, title, chunks)
        except RawDocumentError as exc:
            o.error = exc
        except Exception as exc:  # a parser's or library's bug costs this document only
            log.exception("raw document: unexpected error", extra={"doc_id": row.doc_id})
            o.error = RawDocumentError("parse_error", f"{type(exc).__name__}: {exc}")
        o.seconds = time.perf_counter() - t0
        if row.content is not None:  # a result may wait for its message: not with the bytes
            o.row = dataclasses.replace(row, content=None)
        return o

    def _fetch_and_parse(self, o: Outcome, policy: fetch.FetchPolicy) -> None:
        """Fills ``o`` (its row given): unchanged, or fetched and parsed; raises the failure."""
        row = o.row
        t0 = time.perf_counter()
        content_type: str | None = None
        recheck = row.refreshed_from is not None and row.parsed_version == row.refreshed_from
        if row.uri is None:
            if row.content is None:
                if row.content_bytes is not None:
                    raise RawDocumentError(
                        "too_large",
                        f"{row.content_bytes} bytes over the cap of {policy.max_bytes} bytes",
                    )
                raise RawDocumentError("empty_text", "no content (NULL)")
            data = row.content
        else:
            uri = row.uri
            if recheck and (row.etag or row.last_modified):
                known = fetch.Validators(row.etag, row.last_modified)
                got = fetch.retrying(lambda: fetch.fetch_if_changed(uri, policy, known))
                if got is None:
                    o.unchanged = True
                    return
            else:
                got = fetch.retrying(lambda: fetch.fetch(uri, policy))
            data, content_type = got.data, got.content_type
            o.etag, o.last_modified = got.etag, got.last_modified
        o.fetched_bytes, o.fetch_seconds = len(data), time.perf_counter() - t0
        o.sha256 = hashlib.sha256(data).digest()
        if recheck and row.sha256 == o.sha256:
            o.unchanged = True
            return
        hook: str | None = None
        override = row.mime
        if self.test_hooks and override and override.startswith(TEST_HOOK_MIME):
            hook, override = override[len(TEST_HOOK_MIME) :], "text/plain"
        mime = detect.detect_type(data, content_type=content_type, name=row.uri, override=override)
        t1 = time.perf_counter()
        try:
            parsed = self.pool().parse(data, mime, test_hook=hook)
        finally:
            o.mime, o.parse_seconds = mime, time.perf_counter() - t1
        o.pages = parsed.pages
        rendered = render(parsed)
        if not rendered.text.strip():
            raise RawDocumentError("empty_text", "no text")
        self.parsed += 1
        o.rendered = rendered
