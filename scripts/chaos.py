#!/usr/bin/env python3
"""Chaos run: the whole pipeline under faults, then a check that nothing was lost.

    .venv/bin/python scripts/chaos.py                 # make chaos: 20,000 documents
    .venv/bin/python scripts/chaos.py --small         # 1,500 documents (make test runs this)
    .venv/bin/python scripts/chaos.py --managed       # as on a managed service (issue 23)
    .venv/bin/python scripts/chaos.py --docs 5000 --keep --seed 7

What it does, against a fresh database it creates on the server of ``$DATABASE_URL`` (else the
private cluster of ``scripts/pgcluster.sh``), dropped at the end unless ``--keep``:

* installs pgingest, starts the fake embedding server as a subprocess and registers a model;
* the fake server answers 10% of the calls with a 429 (``Retry-After: 1``), 10% with a 503 and
  hangs on 5% past the worker's HTTP timeout (``--http-timeout 4``, ``hang_s`` 5);
* hostile answers (issue 18): the message of every injected error body is hostile text (NUL,
  lone surrogates, a forged log line, an escape sequence): the 429s and 503s, 2% 200s with an
  error body, 0.5% 403s; 0.5% binary 403 pages (UTF-16, NUL bytes, invalid UTF-8); 3% answers
  over the client's size cap (24 MiB, sized, unsized, gzip bombs); at least one of each. A 403
  pauses the model with the provider's text as the reason; a probe resumes it
  (``--probe-interval 2``). The worker must never exit on its own (a watchdog restarts and
  records any exit that is not a planted SIGKILL) and exit 0 on SIGTERM;
* answers slower than the visibility timeout: in a few windows (no SIGKILL meanwhile), 4
  requests are answered valid after 3.2 s, past the claims' ``--visibility-timeout 2``: the
  worker's ClaimKeeper must keep them claimed; the fake server counts any of their inputs that
  arrives again while they are held (the same work claimed twice);
* a reader: a login role that is a member of ``pgingest_reader`` only keeps trying to point
  ``pgingest.embed_query`` at a TCP listener of the run (``SET`` / ``set_config`` / ``SET
  LOCAL pgingest.embedding_url``, URL forms a careless comparison would take for a registered
  endpoint): every try must be refused, and the listener get no connection. Skipped, with the
  reason, where embed_query is absent (PL/Python not installed);
* several writer threads insert the documents (multi-row INSERTs, row-by-row transactions and
  COPY), paced over a few tens of seconds, while 2 worker processes
  (``python -m pgingest.cli worker --visibility-timeout 2``) drain the queue;
* a mutator updates documents (once, in bursts of quick successive updates, several rows in one
  statement, metadata-only no-op updates), deletes some and re-creates a few deleted keys;
* 50 planted bad documents: the fake server's poison markers ``__NAN__``, ``__DIM__``,
  ``__ZERO__``, ``__REJECT__``, and bodies of zero-width characters only;
* a second source: the application table ``public.chaos_articles`` (key ``(tenant_id uuid, id
  bigint)``, ``title``, ``body``, ``tags text[]``; one row per 5 documents) holds 40% of its rows
  before it is attached mid-run with ``pgingest.add_source(template => '{title}\\n\\n{body}
  \\n\\nTags: {tags}', title => 'title')``, so that the workers backfill it during the chaos; a
  writer inserts the rest (multi-row, row by row, COPY through a staging table) while a mutator
  adds an unmapped column ``views``, then changes text, title, tags (probed: one message per
  live model), ``views`` only (probed: no message), in bursts and many rows per statement,
  moves primary keys, deletes and re-creates rows: a fifth of it back to back on the rows the
  backfill is registering; 12 planted bad rows: the four poison markers, rows whose mapped columns
  are all NULL (no text) and rows emptied that way once their first version is embedded;
* a third source, of raw documents (issue 22): the application table ``public.chaos_files``
  (``id``, ``name``, ``data bytea``, ``mime``) holds the fixtures of
  ``tests/fixtures/raw/generate.py`` (PDFs with an outline and with a table, DOCX, HTML, Markdown,
  Latin-1 text, a file without an extension), 40% of them before it is attached mid-run with
  ``add_source(content => 'data', mime => 'mime', title => 'name')``; a file actor inserts the
  rest, updates bytes (bursts too, and the same bytes again), deletes and re-creates rows; 8
  planted poisoned files: the scan without a text layer, the encrypted PDF, the truncated PDF, a
  0-byte file, a NULL content, bytes of no known type, the parse pool's hang hook (the workers
  run with ``PGINGEST_RAW_TEST_HOOKS=1``, ``PGINGEST_RAW_PARSE_TIMEOUT=3``) and a good PDF
  overwritten with the encrypted one once embedded; the audit parses every file's current bytes
  with the same parser to predict its chunks or its dead letter's class ("document source");
* a model migration: model v2 (``fake-768``, 768 dimensions) is registered halfway through the
  writing, while the kills go on; the workers backfill it from both sources, within a
  tokens-per-minute quota the fake server enforces for ``fake-768`` (about twice the corpus a
  minute): the workers learn it from the ``x-ratelimit-*`` headers and pace themselves (issue
  25; the ``quota`` check: learned, and at most 10% of v2's requests refused by it); v2's
  backfill goes through the fake's Batch API (``set_model_batch_api``: provider batches of a
  sixth of the corpus, done after 4 s, 3% of their lines failing with a 500 and embedded
  online; the ``batch api`` check: every provider batch collected, each created once at the
  provider though the kills interrupt them);
* a worker is killed with SIGKILL at random moments (at least 5 times) and restarted at once;
* PostgreSQL itself is restarted once (fast shutdown: ``scripts/pgcluster.sh stop`` then
  ``start``) mid-run, and the running workers must reconnect by themselves. Only when the
  database is the private cluster (same port as ``scripts/pgcluster.sh url``, which honours
  ``PGINGEST_PGPORT``/``PGINGEST_PGDATA``); otherwise, or with ``--no-pg-restart``, skipped
  with a notice. Every client of that cluster sees the restart: do not run it while tests run.

Then faults off, the workers stopped, one final ``worker --drain``, ``swap_model('v2')`` (it
refuses unless v2's backfill is complete; v1 stays live as standby), and the checks, each for
both sources and both models (each printed PASS or FAIL; the exit status is 1 when any fails):
every row of the table is registered once in ``pgingest.source_rows`` with the content hash of
its current text (no row missed, no row of a deleted key); every live document has exactly the
chunks ``pgingest.chunking.chunk_documents`` predicts for its latest version (for a row: the
template's text, as ``pgingest._source_expr`` builds it), with unit-norm vectors of each model's
dimension; no duplicate chunk; no chunk, vector, state or dead letter of a deleted document or
row; exactly the planted bad documents and rows are dead-lettered, per model, each with the
reason its poison calls for, and none keeps a chunk of an older version; the queues are empty.
And: every kind of hostile answer came, no worker exited but by the planted SIGKILLs, a hostile
pause reason was written and no model is left paused ("hostile answers"); the slow answers
came and none of their inputs was sent again while they were held ("slow answers"); every
redirect of embed_query was refused with no connection to the listener ("embed_query
redirect"). The run creates the role ``pgingest_chaos_reader_<pid>`` and drops it with the
database.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

import psycopg
from psycopg import sql

from pgingest import chunking, db, install, providers
from pgingest.raw import detect as raw_detect
from pgingest.raw import parse as raw_parse
from pgingest.raw.errors import RawDocumentError
from pgingest.settings import WorkerSettings
from pgingest.testing import managed, texts
from pgingest.testing.fake_provider import control
from pgingest.worker import raw as raw_worker

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from tests.fixtures.raw.generate import GOOD, build_fixtures  # noqa: E402

PGCLUSTER = ROOT / "scripts" / "pgcluster.sh"
MODEL = "v1"
DIMENSIONS = 384
# The model migrated to mid-run: registered (shadow) while writers, workers and kills go on,
# backfilled from every source by the workers, swapped to after the final drain.
MODEL2 = "v2"
MODEL2_ID = "fake-768"
DIMENSIONS2 = 768
MODELS: dict[str, int] = {MODEL: DIMENSIONS, MODEL2: DIMENSIONS2}
# The second source: an application table with a composite key, attached mid-run with a template.
SOURCE = "articles"
ARTICLES = "public.chaos_articles"
TEMPLATE = "{title}\n\n{body}\n\nTags: {tags}"
TAGS = ("postgres", "vectors", "chaos", "queue", "release", "ops", "news", "l'été", "数据")
FAULT_RATES = {"rate_limit": 0.10, "unavailable": 0.10, "timeout": 0.05}
# Hostile answers (issue 18, item 2 and 11), on top: every injected error body's message is
# HOSTILE (NUL, lone surrogates, a forged log line, an escape sequence: 429s, 503s, 200s with an
# error body, 403s), binary 403 pages (UTF-16, NUL bytes, invalid UTF-8), and 200s larger than the
# client's size cap (with a Content-Length, without one, gzip bombs). A 403 pauses the model: its
# hostile reason is written to pgingest.models, and a probe resumes it (--probe-interval).
HOSTILE_RATES = {
    "error_body": 0.02,
    "forbidden": 0.005,
    "binary": 0.005,
    "huge": 0.01,
    "huge_unsized": 0.01,
    "gzip_bomb": 0.01,
}
HOSTILE = "bad\x00news \ud800 lone \udfff\nforged log line 2026-01-01 ERROR\x1b[31m caf\xe9 \u65e5"
HOSTILE_ERRORS = ("rate_limit", "unavailable", "error_body", "forbidden")
OVERSIZE = ("huge", "huge_unsized", "gzip_bomb")
HUGE_BODY_BYTES = 24 * 1024 * 1024
# The visibility timeout is small, and a few requests (fail_next "slow", in windows) are answered
# valid after SLOW_S, longer than it but within the HTTP timeout: the worker's ClaimKeeper must keep
# their messages claimed (worker/claims.py). HANG_S (the "timeout" fault) exceeds the HTTP timeout.
VISIBILITY_TIMEOUT_S = 2
SLOW_S = 3.2
HTTP_TIMEOUT_S = 4
HANG_S = 5
SLOW_PER_WINDOW = 4
PROBE_INTERVAL_S = 2
# v2's backfill through the fake's Batch API: polled every second (a dead worker's lease runs
# out after 10 s), each batch done after BATCH_COMPLETION_S, a share of its lines failing (500).
BATCH_POLL_S = 1
BATCH_COMPLETION_S = 4.0
BATCH_FAIL_SHARE = 0.03
PROBE_TEXT = "pgingest probe"  # what the worker sends to probe a paused model (loop._maybe_probe)
# How the chunks of pgingest.documents' rows begin (the title, else the body's first words:
# "Document 12." or "Document doc-000012 revised ..."): make_documents, Chaos.mutate.
DOCUMENT_CHUNK = re.compile(
    r"Title of document \d|Planted bad document \d|Re-created doc-|Document (doc-)?\d"
)

# Planted bad documents: (kind, body template, expected error_class, a word its message holds).
POISONS: tuple[tuple[str, str, str, str], ...] = (
    (
        "nan",
        "A note about {i} that turns into __NAN__ on the way.",
        "invalid_vector_non_finite",
        "non-finite",
    ),
    ("dim", "A note about {i} with one __DIM__ too few.", "invalid_vector_dimension", "dimensions"),
    (
        "zero",
        "A note about {i} that is all __ZERO__ inside.",
        "invalid_vector_zero_vector",
        "zero vector",
    ),
    (
        "reject",
        "A note about {i} the content filter will __REJECT__ at once.",
        "rejected_input",
        "rejected",
    ),
    ("blank", "\u200b\u200c\u200d\ufeff\u2060", "empty_document", "no text"),
)
# Planted bad rows of the articles table: the poison markers in the body, a row whose mapped
# columns are all NULL (the template gives no text), and good rows the mutator empties that way.
ARTICLE_POISONS: tuple[tuple[str, str | None], ...] = (
    ("nan", "An article about {i} that turns into __NAN__ on the way."),
    ("dim", "An article about {i} with one __DIM__ too few."),
    ("zero", "An article about {i} that is all __ZERO__ inside."),
    ("reject", "An article about {i} the content filter will __REJECT__ at once."),
    ("null", None),
    ("emptied", None),
)
MARKERS = {
    "__NAN__": POISONS[0][2:],
    "__DIM__": POISONS[1][2:],
    "__ZERO__": POISONS[2][2:],
    "__REJECT__": POISONS[3][2:],
}
EMPTY = POISONS[4][2:]
# The third source, a document source (issue 22): an application table of files in a bytea column
# with an optional MIME column, attached mid-run with add_source(content => 'data', mime =>
# 'mime', title => 'name'); the worker reads, detects and parses the bytes in its parse pool.
FILES_SOURCE = "files"
FILES = "public.chaos_files"
# The good fixtures of tests/fixtures/raw/generate.py (every type the default parsers read).
GOOD_FILES = GOOD
HANG_MIME = "application/x-pgingest-test-hang"  # with PGINGEST_RAW_TEST_HOOKS=1 only
PARSE_TIMEOUT_S = 3  # the workers' PGINGEST_RAW_PARSE_TIMEOUT: the hanging parse is killed then
# Planted poisoned files: kind -> (fixture, MIME override, the class it must be dead-lettered
# with). None: a NULL content; "<binary>": bytes of no known type; "spoiled": a good PDF that the
# file actor overwrites late in the run with the encrypted PDF's bytes.
FILE_POISONS: dict[str, tuple[str | None, str | None, str]] = {
    "scan": ("scan.pdf", None, "empty_text"),
    "encrypted": ("encrypted.pdf", None, "encrypted"),
    "truncated": ("truncated.pdf", None, "parse_error"),
    "zero-bytes": ("empty.pdf", None, "empty_text"),
    "null": (None, None, "empty_text"),
    "binary": ("<binary>", None, "unsupported_type"),
    "hang": ("README", HANG_MIME, "timeout"),
    "spoiled": ("multipage.pdf", None, "encrypted"),
}


T = TypeVar("T")


# -------------------------------------------------------------------------------- sizes


@dataclass(frozen=True)
class Plan:
    docs: int
    bad: int
    articles: int
    preload: int
    bad_articles: int
    files: int
    writers: int
    workers: int
    min_kills: int
    write_seconds: float
    kill_every: tuple[float, float]
    settle_seconds: float
    drain_seconds: float
    deadline_seconds: float
    slow_windows: int


def make_plan(args: argparse.Namespace) -> Plan:
    small = args.small
    docs = args.docs if args.docs is not None else (1_500 if small else 20_000)
    write_seconds = args.write_seconds
    if write_seconds is None:
        write_seconds = 14.0 if small else max(20.0, min(60.0, docs / 400))
    articles = args.articles if args.articles is not None else max(100, docs // 5)
    return Plan(
        docs=docs,
        bad=args.bad,
        articles=articles,
        preload=int(articles * 0.4),
        bad_articles=2 * len(ARTICLE_POISONS),
        files=args.files if args.files is not None else max(42, docs // 40),
        writers=args.writers,
        workers=args.workers,
        min_kills=args.kills,
        write_seconds=write_seconds,
        kill_every=(1.5, 3.5) if small else (3.0, 8.0),
        # Two models to embed (v2's backfill of every source comes on top): room for both.
        settle_seconds=90.0 if small else 480.0,
        drain_seconds=90.0 if small else 300.0,
        deadline_seconds=args.deadline
        if args.deadline is not None
        else (540.0 if small else 1200.0),
        slow_windows=3 if small else max(3, int(write_seconds / 6)),
    )


# -------------------------------------------------------------------------------- output

_T0 = time.monotonic()
_print_lock = threading.Lock()


def say(msg: str) -> None:
    with _print_lock:
        print(f"[{time.monotonic() - _T0:6.1f}s] {msg}", flush=True)


# -------------------------------------------------------------------------------- documents


@dataclass
class Doc:
    key: str
    title: str | None
    body: str
    metadata: dict[str, Any]


def make_documents(plan: Plan, rng: random.Random) -> tuple[list[Doc], dict[str, tuple[str, str]]]:
    """The good documents and the planted bad ones, shuffled; bad key -> (error_class, word)."""
    docs = [
        Doc(
            f"doc-{i:06d}",
            None if rng.random() < 0.1 else f"Title of document {i}",
            texts.mixed_body(rng, str(i)),
            {"n": i, "lang": rng.choice(["en", "fr", "de"])},
        )
        for i in range(plan.docs)
    ]
    bad: dict[str, tuple[str, str]] = {}
    for i in range(plan.bad):
        kind, template, error_class, word = POISONS[i % len(POISONS)]
        key = f"bad-{kind}-{i:03d}"
        title = None if kind == "blank" else f"Planted bad document {i}"
        docs.append(Doc(key, title, template.format(i=i), {"bad": kind}))
        bad[key] = (error_class, word)
    rng.shuffle(docs)
    return docs, bad


@dataclass
class Article:
    tenant: str
    id: int
    title: str | None
    body: str | None
    tags: list[str | None] | None

    @property
    def key(self) -> tuple[str, int]:
        return (self.tenant, self.id)

    def row(self) -> dict[str, Any]:
        return {
            "tenant_id": self.tenant,
            "id": self.id,
            "title": self.title,
            "body": self.body,
            "tags": self.tags,
        }


def same_tags(a: list[str | None] | None, b: list[str | None] | None) -> bool:
    """Whether two tag arrays render the same text (array_to_string skips NULL elements):
    ['a', NULL] and ['a'] do, so changing one into the other queues nothing."""
    return [t for t in a or [] if t is not None] == [t for t in b or [] if t is not None]


def random_tags(rng: random.Random) -> list[str | None] | None:
    r = rng.random()
    if r < 0.1:
        return None
    if r < 0.15:
        return []
    tags: list[str | None] = list(rng.sample(TAGS, rng.randint(1, 4)))
    if r < 0.2:
        tags.insert(rng.randrange(len(tags) + 1), None)  # array_to_string skips NULL elements
    return tags


def make_articles(
    plan: Plan, rng: random.Random
) -> tuple[list[Article], list[Article], dict[tuple[str, int], str]]:
    """Rows of public.chaos_articles: (preloaded before the attach, inserted during the run,
    planted key -> kind). A tenth of the good rows have no title, some no body or no tags."""
    tenants = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(4)]
    rows = []
    for i in range(plan.articles):
        body = None if rng.random() < 0.03 else texts.mixed_body(rng, f"article {i}")
        title = None if rng.random() < 0.1 else f"Article {i} of tenant {i % len(tenants)}"
        rows.append(Article(tenants[i % len(tenants)], 1 + i, title, body, random_tags(rng)))
    planted: dict[tuple[str, int], str] = {}
    for i in range(plan.bad_articles):
        kind, template = ARTICLE_POISONS[i % len(ARTICLE_POISONS)]
        tenant = tenants[i % len(tenants)]
        if kind == "null":
            a = Article(tenant, 900_000 + i, None, None, None)
        elif kind == "emptied":  # good now; the mutator sets title, body and tags to NULL
            a = Article(tenant, 900_000 + i, f"To be emptied {i}", f"Emptied later {i}.", ["x"])
        else:
            assert template is not None
            a = Article(
                tenant, 900_000 + i, f"Planted bad article {i}", template.format(i=i), ["bad"]
            )
        rows.append(a)
        planted[a.key] = kind
    rng.shuffle(rows)
    return rows[: plan.preload], rows[plan.preload :], planted


def article_text(title: str | None, body: str | None, tags: list[str | None] | None) -> str | None:
    """The text the source's template gives (pgingest._source_expr 'body'): concat of the parts,
    a NULL column empty, an array joined with ', ' (NULL elements skipped); all NULL: no text."""
    if title is None and body is None and tags is None:
        return None
    joined = "" if tags is None else ", ".join(t for t in tags if t is not None)
    return f"{title or ''}\n\n{body or ''}\n\nTags: {joined}"


def content_hash(title: str | None, body: str | None) -> bytes:
    """pgingest._source_hash(title, body): the title's length in bytes (or null), ':', the title
    and the text (an attached table's row)."""
    prefix = "null" if title is None else str(len(title.encode()))
    return hashlib.sha256(f"{prefix}:{title or ''}{body or ''}".encode()).digest()


def expected_failure(text: str | None) -> tuple[str, str] | None:
    """(error_class, word) a row of this text must be dead-lettered with; None: embedded."""
    if text is None:
        return EMPTY
    for marker, failure in MARKERS.items():
        if marker in text:
            return failure
    return None


@dataclass
class FileRow:
    id: int
    name: str
    data: bytes | None
    mime: str | None


def load_fixtures(folder: Path) -> dict[str, bytes]:
    """The raw-document fixture set of the tests (tests/fixtures/raw/generate.py), by name."""
    build_fixtures(folder)
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def fixture_variant(fx: dict[str, bytes], name: str, n: int) -> bytes:
    """A good fixture's bytes; the text ones made unique per row (a line of their own added)."""
    data = fx[name]
    if name == "guide.md":
        return data + f"\n\nCopy number {n} of the guide.\n".encode()
    if name == "README":
        return data + f"\nThis is copy {n} of the read-me.\n".encode()
    if name == "latin1.txt":
        return data + f"\nCopie numéro {n}, été.\n".encode("latin-1")
    return data


def make_files(
    plan: Plan, rng: random.Random, fx: dict[str, bytes]
) -> tuple[list[FileRow], list[FileRow], dict[int, str]]:
    """Rows of public.chaos_files: (preloaded before the attach, inserted during the run,
    planted id -> kind). Good rows cycle through every good fixture type; a few carry the
    right MIME type in the MIME column, the others are detected from their bytes."""
    rows = []
    for i in range(plan.files):
        name = GOOD_FILES[i % len(GOOD_FILES)]
        mime = "text/markdown" if name == "guide.md" and rng.random() < 0.5 else None
        rows.append(FileRow(1 + i, f"{i:04d}-{name}", fixture_variant(fx, name, i), mime))
    planted: dict[int, str] = {}
    for j, (kind, (fixture, mime, _)) in enumerate(FILE_POISONS.items()):
        if fixture is None:
            data = None
        elif fixture == "<binary>":
            data = bytes(range(256)) * 8
        else:
            data = fx[fixture]
        rows.append(FileRow(900_000 + j, f"planted-{kind}", data, mime))
        planted[900_000 + j] = kind
    rng.shuffle(rows)
    preload = int(len(rows) * 0.4)
    return rows[:preload], rows[preload:], planted


def file_version_text(data: bytes | None, mime: str | None) -> str | None:
    """The text a raw row's version hash covers (pgingest._source_expr 'body' of a content
    column): 'content:' and the bytes' sha256 in hex, a line 'mime:' and the MIME column's value
    when it is set; NULL content: none."""
    if data is None:
        return None
    text = "content:" + hashlib.sha256(data).hexdigest()
    return text if mime is None else f"{text}\nmime:{mime}"


def predict_file(
    data: bytes | None, mime: str | None, options: raw_parse.ParseOptions
) -> tuple[raw_worker.Rendered | None, str | None]:
    """What the worker makes of these bytes, predicted in this process with the same detection,
    parser and rendering (worker/raw.py's _fetch_and_parse): (rendered text, None), or (None,
    the class of its failure)."""
    if data is None:
        return None, "empty_text"
    if mime == HANG_MIME:
        return None, "timeout"
    try:
        detected = raw_detect.detect_type(data, content_type=None, name=None, override=mime)
        rendered = raw_worker.render(raw_parse.parse_bytes(data, detected, options))
        if not rendered.text.strip():
            raise RawDocumentError("empty_text", "no text")
    except RawDocumentError as exc:
        return None, exc.error_class
    return rendered, None


def descendants(pid: int) -> list[int]:
    """The processes below ``pid`` (its parse pool's children), from /proc."""
    out: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        for children in Path(f"/proc/{p}/task").glob("*/children"):
            with suppress(OSError):
                for c in children.read_text().split():
                    out.append(int(c))
                    todo.append(int(c))
    return out


# -------------------------------------------------------------------------------- database


def server_url(cli_url: str | None) -> str:
    url = cli_url or os.environ.get("DATABASE_URL")
    if url:
        return url
    out = subprocess.run([str(PGCLUSTER), "url"], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def with_dbname(conninfo: str, dbname: str) -> str:
    return psycopg.conninfo.make_conninfo(conninfo, dbname=dbname)


def is_private_cluster(conninfo: str) -> tuple[bool, str]:
    """Is ``conninfo`` the private cluster of scripts/pgcluster.sh (same host and port)?"""
    params = psycopg.conninfo.conninfo_to_dict(conninfo)
    try:
        out = subprocess.run([str(PGCLUSTER), "url"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        return False, f"scripts/pgcluster.sh url failed: {exc}"
    private = psycopg.conninfo.conninfo_to_dict(out.stdout.strip())
    host = str(params.get("host") or "")
    port = str(params.get("port") or "5432")
    if host not in ("127.0.0.1", "localhost", "::1"):
        return False, f"host {host or '(socket)'} is not 127.0.0.1"
    if port != str(private.get("port")):
        return False, f"port {port} is not the private cluster's ({private.get('port')})"
    return True, f"private cluster on port {port}"


class Client:
    """One autocommit connection that reconnects and retries on connection-level errors.

    Every write it retries is idempotent (``ON CONFLICT (key) DO NOTHING``, ``SET body = x``,
    ``DELETE``), so a statement whose commit was lost with the connection may run twice.
    """

    def __init__(self, dsn: str, name: str, deadline: float) -> None:
        self.dsn = dsn
        self.name = name
        self.deadline = deadline
        self.conn: psycopg.Connection[Any] | None = None
        self.retries = 0

    def run(self, fn: Callable[[psycopg.Connection[Any]], T]) -> T:
        delay = 0.2
        while True:
            try:
                if self.conn is None or self.conn.closed:
                    self.conn = psycopg.connect(
                        self.dsn, autocommit=True, application_name=f"chaos-{self.name}"
                    )
                return fn(self.conn)
            except (psycopg.OperationalError, psycopg.InterfaceError):
                # Connection lost (restart), or deadlock / serialization: both retried.
                self.retries += 1
                self.close()
                if time.monotonic() > self.deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    def close(self) -> None:
        if self.conn is not None:
            with suppress(psycopg.Error):
                self.conn.close()
        self.conn = None


# -------------------------------------------------------------------------------- processes


class WorkerSlot:
    """A worker process that can be killed and restarted; each generation logs to its own file."""

    def __init__(self, index: int, cmd: list[str], env: dict[str, str], logdir: Path) -> None:
        self.index = index
        self.cmd = cmd
        self.env = env
        self.logdir = logdir
        self.generation = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log: IO[bytes] | None = None
        # Exits nobody asked for (not a planted SIGKILL, not the final SIGTERM):
        # (generation, exit code, the last lines of its log).
        self.exits: list[tuple[int, int | None, str]] = []

    @property
    def log_path(self) -> Path:
        return self.logdir / f"worker-{self.index}-{self.generation}.log"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self) -> None:
        self.generation += 1
        self.log = open(self.log_path, "wb")  # noqa: SIM115 (closed in _reap)
        self.proc = subprocess.Popen(
            self.cmd, stdout=self.log, stderr=subprocess.STDOUT, env=self.env
        )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> int:
        """SIGKILL; returns how many of its parse processes outlived it (then ended here)."""
        below: list[int] = []
        if self.proc is not None and self.proc.poll() is None:
            below = descendants(self.proc.pid)
            self.proc.send_signal(signal.SIGKILL)
        else:
            self._exited()
        self._reap(10)
        # An idle parse child sees its pipe close and exits; one busy in a parse (the hanging
        # file's) does not notice its parent is gone: count it, and end it by its pid.
        orphans = 0
        if below:
            time.sleep(1.0)
            for pid in below:
                with suppress(OSError):
                    if b"multiprocessing" in Path(f"/proc/{pid}/cmdline").read_bytes():
                        os.kill(pid, signal.SIGKILL)
                        orphans += 1
        return orphans

    def revive(self) -> bool:
        """Restarts the worker if it exited on its own (recorded); True when it had."""
        if self.proc is None or self.proc.poll() is None:
            return False
        self._exited()
        self._reap(10)
        self.start()
        return True

    def _exited(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            tail = self.log_text()[-600:]
            self.exits.append((self.generation, self.proc.returncode, tail))

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after 30 s; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            # A worker restarted a moment ago may still be importing: a SIGTERM before it installs
            # its handlers (it logs "worker started" after) ends it with -15, which says nothing
            # about its shutdown. Let it get there first.
            ready_by = time.monotonic() + 20
            while (
                self.proc.poll() is None
                and "worker started" not in self.log_text()
                and time.monotonic() < ready_by
            ):
                time.sleep(0.1)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGKILL)
        return self._reap(10)

    def _reap(self, timeout: float) -> int | None:
        code = None
        if self.proc is not None:
            code = self.proc.wait(timeout)
        if self.log is not None:
            self.log.close()
            self.log = None
        return code

    def log_text(self, offset: int = 0) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0


def start_fake_server(
    env: dict[str, str], seed: int, log: IO[bytes]
) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pgingest.testing.fake_provider",
            "--port",
            "0",
            "--seed",
            str(seed),
        ],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    if not url.startswith("http://"):
        proc.kill()
        raise RuntimeError(f"the fake server did not start (printed {url!r})")
    return proc, url


class Listener:
    """A TCP listener on 127.0.0.1 that counts the connections it gets (and closes them): the
    endpoint a reader tries to point embed_query at."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = int(self.sock.getsockname()[1])
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="listener", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


def restart_postgres(env: dict[str, str]) -> float:
    """Fast shutdown then start of the private cluster; returns the seconds it was down."""
    t = time.monotonic()
    for cmd in ("stop", "start"):
        out = subprocess.run(
            [str(PGCLUSTER), cmd], capture_output=True, text=True, env=env, timeout=120
        )
        if out.returncode != 0:
            raise RuntimeError(f"pgcluster.sh {cmd} failed: {out.stderr.strip()[-500:]}")
    return time.monotonic() - t


# -------------------------------------------------------------------------------- the run


@dataclass
class State:
    """What the actors did, shared between threads (guarded by ``lock``)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    inserted: list[str] = field(default_factory=list)
    inserted_set: set[str] = field(default_factory=set)
    deleted_keys: set[str] = field(default_factory=set)
    deleted_ids: set[int] = field(default_factory=set)
    ops: Counter[str] = field(default_factory=Counter)
    kills: int = 0
    restarts: int = 0
    errors: list[str] = field(default_factory=list)
    writer_retries: int = 0
    # The articles table: keys written, keys deleted (or moved away from), the doc_ids those had.
    art_inserted: list[tuple[str, int]] = field(default_factory=list)
    art_inserted_set: set[tuple[str, int]] = field(default_factory=set)
    art_deleted: set[tuple[str, int]] = field(default_factory=set)
    art_deleted_ids: set[int] = field(default_factory=set)
    attached_at: float | None = None
    # The files table (the document source): ids written, ids deleted, the doc_ids those had.
    file_inserted: list[int] = field(default_factory=list)
    file_inserted_set: set[int] = field(default_factory=set)
    file_deleted: set[int] = field(default_factory=set)
    file_deleted_ids: set[int] = field(default_factory=set)
    files_attached_at: float | None = None
    spoiled_after_embedding: int = 0
    # Parse processes a SIGKILLed worker left behind (busy in a parse), ended by the killer.
    parse_orphans: int = 0
    # Capture probes: (kind, key, messages queued by the statement, live models then).
    probes: list[tuple[str, tuple[str, int], int, int]] = field(default_factory=list)
    migration: str = ""
    emptied_after_embedding: int = 0
    migrated_at: float | None = None
    # Slow windows: (slow requests queued, held to the end meanwhile, seconds the window took).
    slow_windows: list[tuple[int, int, float]] = field(default_factory=list)
    # The reader pointing embed_query elsewhere: refusals by SQLSTATE class name, answers.
    refused: Counter[str] = field(default_factory=Counter)
    accepted: int = 0
    reader_unexpected: list[str] = field(default_factory=list)
    # Pause reasons seen in pgingest.models while a model was paused (by a hostile 403).
    pause_reasons: list[str] = field(default_factory=list)


class Chaos:
    def __init__(self, args: argparse.Namespace, plan: Plan) -> None:
        self.args = args
        self.plan = plan
        self.rng = random.Random(args.seed)
        self.state = State()
        self.stop = threading.Event()
        self.writers_done = threading.Event()
        self.killer_pause = threading.Lock()
        self.t_deadline = time.monotonic() + plan.deadline_seconds
        self.base_url = server_url(args.database_url)
        self.dbname = f"pgingest_chaos_{os.getpid()}"
        self.dsn = with_dbname(self.base_url, self.dbname)
        # --managed: everything runs as this owner (not a superuser), as on a managed service
        self.owner = f"pgingest_chaos_owner_{os.getpid()}" if args.managed else None
        # The document source's hanging file needs the parse pool's test hook, killed after
        # PARSE_TIMEOUT_S; the checks parse the same bytes with the same options.
        self.env = {
            **os.environ,
            "PYTHONPATH": str(ROOT / "src"),
            "PGINGEST_RAW_TEST_HOOKS": "1",
            "PGINGEST_RAW_PARSE_TIMEOUT": str(PARSE_TIMEOUT_S),
        }
        self.logdir = Path(tempfile.mkdtemp(prefix="pgingest-chaos-"))
        self.slots: list[WorkerSlot] = []
        self.fake: subprocess.Popen[str] | None = None
        self.fake_url = ""
        self.fake_log: IO[bytes] | None = None
        self.checks: list[tuple[str, str, str]] = []  # (PASS|FAIL|SKIP, name, detail)
        self.bad: dict[str, tuple[str, str]] = {}
        self.planted: dict[tuple[str, int], str] = {}
        self.planted_files: dict[int, str] = {}
        self.files: dict[int, tuple[int, str | None, bytes | None, str | None, bytes]] = {}
        self.fixtures: dict[str, bytes] = {}
        # doc_id -> heading offsets of a parsed file's text (chunk_structured), for the checks
        self.raw_starts: dict[int, tuple[int, ...]] = {}
        self.file_outcomes: dict[int, tuple[int, str, str | None]] = {}  # id -> doc, kind, class
        self.restart_note = ""
        self.reader_role = f"pgingest_chaos_reader_{os.getpid()}"
        self.reader_dsn: str | None = None  # None: embed_query is absent (reader_skip says why)
        self.reader_via = ""
        self.reader_skip = ""
        self.listener: Listener | None = None
        self.stop_codes: list[int | None] = []
        self.quota_tpm = 0

    # -- set-up and tear-down ----------------------------------------------------------------

    def create_database(self) -> None:
        with psycopg.connect(self.base_url, autocommit=True) as c:
            c.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(self.dbname)
                )
            )
            if self.owner is None:
                c.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.dbname)))
            else:
                self.create_managed(c)
        if self.owner is None:
            install.install(self.dsn)
        else:
            # pgmq as plain SQL owned by the owner (the extension is refused here)
            install.install(self.dsn, pgmq="sql")
            with psycopg.connect(self.dsn, autocommit=True) as c:
                row = c.execute(
                    "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname IN ('pgmq',"
                    " 'plpython3u')), (SELECT rolsuper FROM pg_roles WHERE rolname = current_user),"
                    " (SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 'pgmq')"
                ).fetchone()
            assert row == (False, False, self.owner), f"not managed-like: {row}"
            say(
                f"managed-like: {self.owner} (CREATEDB, CREATEROLE, not a superuser) owns the"
                " database and installed pgingest with pgmq as plain SQL; CREATE EXTENSION refused"
            )
        with psycopg.connect(self.dsn, autocommit=True) as c:
            c.execute(
                "CREATE TABLE public.chaos_articles (tenant_id uuid, id bigint, title text, body text,"
                " tags text[], PRIMARY KEY (tenant_id, id))"
            )
            c.execute(
                "CREATE TABLE public.chaos_files (id bigint PRIMARY KEY, name text, data bytea,"
                " mime text)"
            )
            self.setup_reader(c)
            if self.args.trace:
                c.execute(TRACE_SQL)
                for table in TRACED:
                    trace_table(c, table)

    def create_managed(self, c: psycopg.Connection[Any]) -> None:
        """The owner role and its database, set up like a managed service's (issue 23)."""
        assert self.owner is not None
        owner = sql.Identifier(self.owner)
        password = secrets.token_urlsafe(18)
        c.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(owner))
        c.execute(
            sql.SQL("CREATE ROLE {} LOGIN CREATEDB CREATEROLE NOSUPERUSER PASSWORD {}").format(
                owner, sql.Literal(password)
            )
        )
        c.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(self.dbname), owner))
        with psycopg.connect(self.dsn, autocommit=True) as su:
            su.execute("CREATE EXTENSION vector")  # the service's allow list has it
            su.execute(managed.ALLOW_LIST.format(code="P0001").encode())
        self.dsn = psycopg.conninfo.make_conninfo(self.dsn, user=self.owner, password=password)

    def setup_reader(self, c: psycopg.Connection[Any]) -> None:
        """A login role that is a member of pgingest_reader only, and a listener on 127.0.0.1
        that it will try to point pgingest.embed_query at (when embed_query exists: it is
        PL/Python, installed only where plpython3u is)."""
        row = c.execute(
            "SELECT to_regprocedure('pgingest.embed_query(text, text)') IS NOT NULL,"
            " EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'plpython3u'),"
            " EXISTS (SELECT 1 FROM pg_catalog.pg_available_extensions"
            "         WHERE name = 'plpython3u')"
        ).fetchone()
        assert row is not None
        if not row[0]:
            self.reader_skip = "pgingest.embed_query is absent: " + (
                "plpython3u is installed but the PL/Python functions were not"
                if row[1]
                else "plpython3u is available but not installed"
                if row[2]
                else "plpython3u is not available on this server"
            )
            return
        role = sql.Identifier(self.reader_role)
        c.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(role))
        c.execute(sql.SQL("CREATE ROLE {} LOGIN IN ROLE pgingest_reader").format(role))
        login = psycopg.conninfo.make_conninfo(self.dsn, user=self.reader_role)
        try:
            with psycopg.connect(login, connect_timeout=10) as probe:
                probe.execute("SELECT 1")
            self.reader_dsn, self.reader_via = login, "logged in as it"
        except psycopg.OperationalError:  # no password: the server wants one; SET ROLE then
            self.reader_dsn, self.reader_via = self.dsn, "SET ROLE to it"
        self.listener = Listener()

    def preload_articles(self, rows: list[Article]) -> None:
        """Rows the table holds before it is attached: the source's backfill registers them."""
        with psycopg.connect(self.dsn, autocommit=True) as c:
            insert_articles(c, rows, "multi")
        with self.state.lock:
            for a in rows:
                self.state.art_inserted.append(a.key)
                self.state.art_inserted_set.add(a.key)

    def drop_database(self) -> None:
        try:
            with psycopg.connect(self.base_url, autocommit=True, connect_timeout=10) as c:
                c.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                        sql.Identifier(self.dbname)
                    )
                )
                c.execute(
                    sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(self.reader_role))
                )
                if self.owner is not None:
                    c.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(self.owner)))
        except psycopg.Error as exc:
            say(f"could not drop database {self.dbname} or role {self.reader_role}: {exc}")

    def worker_cmd(self, *extra: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "pgingest.cli",
            "--log-level",
            "INFO",
            "worker",
            "--database-url",
            self.dsn,
            "--visibility-timeout",
            str(VISIBILITY_TIMEOUT_S),
            "--http-timeout",
            str(HTTP_TIMEOUT_S),
            "--poll-interval",
            "1",
            "--probe-interval",
            str(PROBE_INTERVAL_S),
            "--batch-api-poll-interval",
            str(BATCH_POLL_S),
            "--batch-api-documents",
            # about six provider batches (--small), at most 1,000 documents each: the fake
            # builds a batch's output file in one go, holding its other answers meanwhile
            str(max(200, min(1000, self.plan.docs // 6))),
            *extra,
        ]

    def cleanup(self, passed: bool) -> None:
        self.stop.set()
        for s in self.slots:
            if s.alive():
                s.kill()
        if self.fake is not None:
            self.fake.terminate()
            try:
                self.fake.wait(10)
            except subprocess.TimeoutExpired:
                self.fake.kill()
        if self.fake_log is not None:
            self.fake_log.close()
        if self.listener is not None:
            self.listener.close()
        if self.args.keep or (self.args.trace and not passed):
            say(
                f"kept database {self.dbname} ({self.dsn}), role {self.reader_role} and logs in"
                f" {self.logdir}"
            )
        else:
            self.drop_database()
            if passed:
                shutil.rmtree(self.logdir, ignore_errors=True)
            else:
                say(f"logs kept in {self.logdir}")

    # -- actors ------------------------------------------------------------------------------

    def writer(self, idx: int, docs: list[Doc]) -> None:
        rng = random.Random(self.args.seed * 1000 + idx)
        client = Client(self.dsn, f"writer-{idx}", self.t_deadline)
        rate = max(len(docs) / self.plan.write_seconds, 1.0)
        t0 = time.monotonic()
        pos = 0
        try:
            while pos < len(docs) and not self.stop.is_set():
                due = t0 + pos / rate
                if (wait := due - time.monotonic()) > 0 and self.stop.wait(wait):
                    return
                batch = docs[pos : pos + rng.randint(5, 60)]
                style = rng.choice(("multi", "multi", "rows", "copy"))
                client.run(lambda c, b=batch, s=style: insert_docs(c, b, s))  # type: ignore[misc]
                with self.state.lock:
                    for d in batch:
                        self.state.inserted.append(d.key)
                        self.state.inserted_set.add(d.key)
                    self.state.ops[f"insert_{style}"] += 1
                pos += len(batch)
        except Exception as exc:  # reported as a failed check, never silently
            with self.state.lock:
                self.state.errors.append(f"writer {idx}: {type(exc).__name__}: {exc}")
        finally:
            with self.state.lock:
                self.state.writer_retries += client.retries
            client.close()

    def mutator(self) -> None:
        """Updates, bursts of updates, multi-row updates, no-op updates, deletes, re-creations."""
        rng = random.Random(self.args.seed + 17)
        client = Client(self.dsn, "mutator", self.t_deadline)
        n = self.plan.docs
        budget = Counter(
            update=max(10, n // 20),
            burst=max(5, n // 500),
            update_many=max(3, n // 1000),
            noop=max(5, n // 500),
            delete=max(10, n // 50),
            delete_many=max(2, n // 2000),
            recreate=max(3, n // 400),
        )
        total = sum(budget.values())
        interval = self.plan.write_seconds * 1.1 / total
        ops = list(budget.elements())
        rng.shuffle(ops)
        try:
            for op in ops:
                if self.stop.wait(interval * rng.uniform(0.5, 1.5)):
                    return
                with self.state.lock:
                    live = [
                        k
                        for k in self.state.inserted[-5000:]
                        if k.startswith("doc-") and k not in self.state.deleted_keys
                    ]
                    deleted = sorted(self.state.deleted_keys)
                if len(live) < 20:
                    continue
                self.mutate(client, rng, op, live, deleted)
                with self.state.lock:
                    self.state.ops[op] += 1
        except Exception as exc:
            with self.state.lock:
                self.state.errors.append(f"mutator: {type(exc).__name__}: {exc}")
        finally:
            client.close()

    def mutate(
        self, client: Client, rng: random.Random, op: str, live: list[str], deleted: list[str]
    ) -> None:
        def new_body(key: str) -> str:
            return texts.mixed_body(rng, f"{key} revised {rng.randrange(10**9)}")

        if op == "update":
            key = rng.choice(live)
            body = new_body(key)
            client.run(lambda c: c.execute(UPDATE_BODY, (body, key)))
        elif op == "burst":  # quick successive versions: only the last one may stay embedded
            key = rng.choice(live)
            for _ in range(rng.randint(3, 10)):
                body = new_body(key)
                client.run(lambda c, b=body: c.execute(UPDATE_BODY, (b, key)))  # type: ignore[misc]
        elif op == "update_many":  # one statement, many rows, in no particular order
            keys = rng.sample(live, min(len(live), rng.randint(5, 30)))
            bodies = [new_body(k) for k in keys]
            client.run(
                lambda c: c.execute(
                    "UPDATE pgingest.documents AS d SET body = u.body"
                    " FROM unnest(%s::text[], %s::text[]) AS u (key, body) WHERE d.key = u.key",
                    (keys, bodies),
                )
            )
        elif op == "noop":  # metadata only: same content hash, nothing queued
            key = rng.choice(live)
            client.run(
                lambda c: c.execute(
                    "UPDATE pgingest.documents SET metadata = metadata || '{\"touched\": true}'"
                    " WHERE key = %s",
                    (key,),
                )
            )
        elif op in ("delete", "delete_many"):
            keys = [rng.choice(live)] if op == "delete" else rng.sample(live, min(len(live), 10))
            with self.state.lock:  # before the statement: a lost ack still counts as deleted
                self.state.deleted_keys.update(keys)
            rows = client.run(
                lambda c: c.execute(
                    "DELETE FROM pgingest.documents WHERE key = ANY (%s) RETURNING id", (keys,)
                ).fetchall()
            )
            with self.state.lock:
                self.state.deleted_ids.update(int(r[0]) for r in rows)
        elif op == "recreate" and deleted:  # a deleted key comes back as a new document
            key = rng.choice(deleted)
            doc = Doc(key, f"Re-created {key}", new_body(key), {"recreated": True})
            client.run(lambda c: insert_docs(c, [doc], "multi"))
            with self.state.lock:
                self.state.deleted_keys.discard(key)

    def killer(self) -> None:
        rng = random.Random(self.args.seed + 99)
        lo, hi = self.plan.kill_every
        while time.monotonic() < self.t_deadline:
            enough = self.state.kills >= self.plan.min_kills
            if enough and (self.writers_done.is_set() or self.stop.is_set()):
                return
            if self.stop.wait(rng.uniform(lo, hi)):
                return
            with self.killer_pause:  # never during the PostgreSQL restart and its check
                slot = rng.choice(self.slots)
                pid = slot.pid
                orphans = slot.kill()
                slot.start()
                with self.state.lock:
                    self.state.kills += 1
                    self.state.parse_orphans += orphans
                    k = self.state.kills
            say(f"SIGKILL worker {slot.index} (pid {pid}), kill #{k}; restarted as pid {slot.pid}")

    def article_writer(self, rows: list[Article]) -> None:
        """Inserts the articles table's rows over the writing phase, before and after the attach."""
        rng = random.Random(self.args.seed * 1000 + 777)
        client = Client(self.dsn, "article-writer", self.t_deadline)
        rate = max(len(rows) / self.plan.write_seconds, 1.0)
        t0 = time.monotonic()
        pos = 0
        try:
            while pos < len(rows) and not self.stop.is_set():
                due = t0 + pos / rate
                if (wait := due - time.monotonic()) > 0 and self.stop.wait(wait):
                    return
                batch = rows[pos : pos + rng.randint(2, 20)]
                style = rng.choice(("multi", "multi", "rows", "copy"))
                client.run(lambda c, b=batch, s=style: insert_articles(c, b, s))  # type: ignore[misc]
                with self.state.lock:
                    for a in batch:
                        self.state.art_inserted.append(a.key)
                        self.state.art_inserted_set.add(a.key)
                    self.state.ops[f"articles_insert_{style}"] += 1
                pos += len(batch)
        except Exception as exc:
            with self.state.lock:
                self.state.errors.append(f"article writer: {type(exc).__name__}: {exc}")
        finally:
            with self.state.lock:
                self.state.writer_retries += client.retries
            client.close()

    def article_mutator(self) -> None:
        """Attaches the table mid-run (a template over title, body and tags), adds an unmapped
        column, then updates (text, tags only, the unmapped column only, bursts, many rows in one
        statement, a moved primary key), deletes, re-creates and empties planted rows."""
        rng = random.Random(self.args.seed + 23)
        client = Client(self.dsn, "article-mutator", self.t_deadline)
        n = self.plan.articles
        emptied = sorted(k for k, kind in self.planted.items() if kind == "emptied")
        budget = Counter(
            update=max(5, n // 10),
            tags=max(3, n // 50),
            views=max(5, n // 40),
            burst=max(2, n // 100),
            update_many=max(2, n // 200),
            delete=max(5, n // 25),
            delete_many=max(1, n // 400),
            recreate=max(2, n // 100),
            move=max(2, n // 100),
        )
        ops = list(budget.elements())
        rng.shuffle(ops)
        # Right after the attach, a fifth of the changes back to back on the rows the table held
        # before it, while a worker's backfill registers them; the rest paced over the run.
        storm = len(ops) // 5
        interval = self.plan.write_seconds * 0.8 / (len(ops) - storm + 2)
        try:
            if self.stop.wait(self.plan.write_seconds * 0.15):
                return

            def attach(c: psycopg.Connection[Any]) -> int:
                if c.execute(
                    "SELECT 1 FROM pgingest.sources WHERE name = %s", (SOURCE,)
                ).fetchone():
                    return -1  # a retry of an attach whose commit was acknowledged too late
                row = c.execute(
                    "SELECT pgingest.add_source(%s, %s::regclass, template => %s, title => 'title',"
                    " metadata => ARRAY['tenant_id'])",
                    (SOURCE, ARTICLES, TEMPLATE),
                ).fetchone()
                assert row is not None
                return int(row[0])

            t = time.monotonic()
            client.run(attach)
            with self.state.lock:
                self.state.attached_at = time.monotonic() - _T0
                held = len(self.state.art_inserted_set)
            say(
                f"attached {ARTICLES} as source {SOURCE!r} ({held} rows written so far) in"
                f" {time.monotonic() - t:.1f}s; its backfill runs in the workers"
            )
            client.run(
                lambda c: c.execute(
                    "ALTER TABLE public.chaos_articles ADD COLUMN IF NOT EXISTS views integer NOT NULL DEFAULT 0"
                )
            )
            preloaded = self.plan.preload
            for i, op in enumerate(ops):
                if i >= storm and self.stop.wait(interval * rng.uniform(0.5, 1.5)):
                    return
                with self.state.lock:
                    recent = (
                        self.state.art_inserted[:preloaded]
                        if i < storm
                        else self.state.art_inserted[-3000:]
                    )
                    live = [
                        k
                        for k in recent
                        if k not in self.planted and k not in self.state.art_deleted
                    ]
                    deleted = sorted(self.state.art_deleted)
                if len(live) < 10:
                    continue
                self.mutate_article(client, rng, op, live, deleted)
                with self.state.lock:
                    self.state.ops[f"articles_{op}"] += 1
            # Planted rows emptied (title, body and tags NULL: no text) once their first version
            # is embedded: the dead-lettered new version must leave nothing of the old one.
            for key in emptied:
                until = time.monotonic() + self.plan.write_seconds + self.plan.settle_seconds / 2
                while not client.run(lambda c, k=key: embedded_row(c, k)):  # type: ignore[misc]
                    if time.monotonic() > until or self.stop.wait(0.5):
                        break
                else:
                    with self.state.lock:
                        self.state.emptied_after_embedding += 1
                client.run(
                    lambda c, k=key: c.execute(  # type: ignore[misc]
                        "UPDATE public.chaos_articles SET title = NULL, body = NULL, tags = NULL"
                        " WHERE tenant_id = %s AND id = %s",
                        k,
                    )
                )
                with self.state.lock:
                    self.state.ops["articles_empty"] += 1
        except Exception as exc:
            with self.state.lock:
                self.state.errors.append(f"article mutator: {type(exc).__name__}: {exc}")
        finally:
            client.close()

    def mutate_article(
        self,
        client: Client,
        rng: random.Random,
        op: str,
        live: list[tuple[str, int]],
        deleted: list[tuple[str, int]],
    ) -> None:
        def new_body(key: tuple[str, int]) -> str:
            return texts.mixed_body(rng, f"article {key[1]} revised {rng.randrange(10**9)}")

        if op == "update":  # the body, the title, both, or a body set to NULL (title and tags stay)
            key = rng.choice(live)
            r = rng.random()
            if r < 0.1:
                client.run(
                    lambda c: c.execute(
                        "UPDATE public.chaos_articles SET body = NULL WHERE tenant_id = %s AND id = %s",
                        key,
                    )
                )
            elif r < 0.3:
                title = f"Retitled {key[1]} {rng.randrange(10**6)}"
                client.run(
                    lambda c: c.execute(
                        "UPDATE public.chaos_articles SET title = %s WHERE tenant_id = %s AND id = %s",
                        (title, *key),
                    )
                )
            else:
                body = new_body(key)
                revised = None if rng.random() < 0.1 else f"Revised article {key[1]}"
                client.run(
                    lambda c: c.execute(
                        "UPDATE public.chaos_articles SET title = %s, body = %s WHERE tenant_id = %s AND id = %s",
                        (revised, body, *key),
                    )
                )
        elif op == "burst":  # quick successive versions: only the last one may stay embedded
            key = rng.choice(live)
            for _ in range(rng.randint(3, 8)):
                body = new_body(key)
                client.run(
                    lambda c, b=body: c.execute(  # type: ignore[misc]
                        "UPDATE public.chaos_articles SET body = %s WHERE tenant_id = %s AND id = %s",
                        (b, *key),
                    )
                )
        elif op == "update_many":  # one statement, many rows of several tenants
            keys = rng.sample(live, min(len(live), rng.randint(5, 25)))
            payload = json.dumps(
                [{"tenant_id": k[0], "id": k[1], "body": new_body(k)} for k in keys]
            )
            client.run(
                lambda c: c.execute(
                    "UPDATE public.chaos_articles AS a SET body = u.body FROM jsonb_to_recordset(%s::jsonb)"
                    " AS u (tenant_id uuid, id bigint, body text)"
                    " WHERE a.tenant_id = u.tenant_id AND a.id = u.id",
                    (payload,),
                )
            )
        elif op in ("tags", "views"):
            # Probed: in one REPEATABLE READ transaction, the messages this statement queued (its
            # own inserts are the only ones its snapshot sees). A tags change queues one message
            # per live model; a change of the unmapped column views queues nothing.
            key = rng.choice(live)
            if op == "tags":
                change = "UPDATE public.chaos_articles SET tags = %s::text[] WHERE tenant_id = %s AND id = %s"
                value: Any = random_tags(rng) or ["retagged"]
            else:
                change = "UPDATE public.chaos_articles SET views = views + %s WHERE tenant_id = %s AND id = %s"
                value = rng.randint(1, 5)

            def probe(c: psycopg.Connection[Any]) -> tuple[int, int] | None:
                with c.transaction():
                    c.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                    before, models = queued_messages(c)
                    old = c.execute(
                        "SELECT tags FROM public.chaos_articles WHERE tenant_id = %s AND id = %s",
                        key,
                    ).fetchone()
                    if old is None or (op == "tags" and same_tags(old[0], value)):
                        return None  # gone meanwhile, or the same text: no change to probe
                    cur = c.execute(change, (value, *key))
                    if cur.rowcount != 1:
                        return None
                    after, _ = queued_messages(c)
                return after - before, models

            res = client.run(probe)
            if res is not None:
                with self.state.lock:
                    self.state.probes.append((op, key, res[0], res[1]))
        elif op in ("delete", "delete_many", "move"):
            keys = (
                [rng.choice(live)] if op != "delete_many" else rng.sample(live, min(len(live), 8))
            )
            with self.state.lock:  # before the statement: a lost ack still counts as deleted
                self.state.art_deleted.update(keys)
            payload = json.dumps([{"tenant_id": k[0], "id": k[1]} for k in keys])
            # With the doc_ids those keys had: the statement's own snapshot of source_rows,
            # taken before its triggers ran.
            if op == "move":  # a changed primary key: the old key is forgotten, the new one queued
                new_id = 2_000_000 + rng.randrange(10**9)
                stmt = (
                    "WITH w AS (UPDATE public.chaos_articles AS a SET id = %s"
                    " FROM jsonb_to_recordset(%s::jsonb) AS u (tenant_id uuid, id bigint)"
                    " WHERE a.tenant_id = u.tenant_id AND a.id = u.id RETURNING u.tenant_id, u.id)"
                    " SELECT r.doc_id FROM w JOIN pgingest.sources AS s ON s.name = %s"
                    " JOIN pgingest.source_rows AS r ON r.source_id = s.id"
                    " AND r.row_key = jsonb_build_object('tenant_id', w.tenant_id, 'id', w.id)"
                )
                params: tuple[Any, ...] = (new_id, payload)
            else:
                stmt = (
                    "WITH w AS (DELETE FROM public.chaos_articles AS a"
                    " USING jsonb_to_recordset(%s::jsonb) AS u (tenant_id uuid, id bigint)"
                    " WHERE a.tenant_id = u.tenant_id AND a.id = u.id RETURNING u.tenant_id, u.id)"
                    " SELECT r.doc_id FROM w JOIN pgingest.sources AS s ON s.name = %s"
                    " JOIN pgingest.source_rows AS r ON r.source_id = s.id"
                    " AND r.row_key = jsonb_build_object('tenant_id', w.tenant_id, 'id', w.id)"
                )
                params = (payload,)
            ids = client.run(lambda c: c.execute(stmt, (*params, SOURCE)).fetchall())
            with self.state.lock:
                self.state.art_deleted_ids.update(int(r[0]) for r in ids)
                if op == "move":
                    moved = (keys[0][0], new_id)
                    self.state.art_inserted.append(moved)
                    self.state.art_inserted_set.add(moved)
        elif op == "recreate" and deleted:  # a deleted key comes back as a new row (new doc_id)
            key = rng.choice(deleted)
            a = Article(key[0], key[1], f"Re-created {key[1]}", new_body(key), random_tags(rng))
            client.run(lambda c: insert_articles(c, [a], "multi"))
            with self.state.lock:
                self.state.art_deleted.discard(key)

    def file_actor(self, rest: list[FileRow]) -> None:
        """The document source: attaches public.chaos_files mid-run (a bytea column, a MIME
        column, the name as title), then inserts the rest of its rows, updates (other bytes,
        bursts, the same bytes written again), deletes and re-creates rows over the writing
        phase, and at the end overwrites a planted good PDF with an encrypted one once it is
        embedded."""
        rng = random.Random(self.args.seed + 31)
        client = Client(self.dsn, "file-actor", self.t_deadline)
        n = self.plan.files
        budget = Counter(
            update=max(4, n // 6),
            burst=max(2, n // 40),
            touch=max(2, n // 40),
            delete=max(3, n // 15),
            delete_many=1,
            recreate=max(2, n // 40),
        )
        ops: list[tuple[str, list[FileRow]]] = [
            ("insert", rest[i : i + 3]) for i in range(0, len(rest), 3)
        ]
        ops += [(op, []) for op in budget.elements()]
        rng.shuffle(ops)
        interval = self.plan.write_seconds * 0.6 / (len(ops) + 1)
        try:
            if self.stop.wait(self.plan.write_seconds * 0.25):
                return

            def attach(c: psycopg.Connection[Any]) -> int:
                if c.execute(
                    "SELECT 1 FROM pgingest.sources WHERE name = %s", (FILES_SOURCE,)
                ).fetchone():
                    return -1  # a retry of an attach whose commit was acknowledged too late
                row = c.execute(
                    "SELECT pgingest.add_source(%s, %s::regclass, content => 'data',"
                    " mime => 'mime', title => 'name')",
                    (FILES_SOURCE, FILES),
                ).fetchone()
                assert row is not None
                return int(row[0])

            client.run(attach)
            with self.state.lock:
                self.state.files_attached_at = time.monotonic() - _T0
                held = len(self.state.file_inserted_set)
            say(
                f"attached {FILES} as document source {FILES_SOURCE!r} ({held} rows written so far)"
            )
            for op, batch in ops:
                if self.stop.wait(interval * rng.uniform(0.5, 1.5)):
                    return
                if op == "insert":
                    style = rng.choice(("multi", "rows"))
                    client.run(lambda c, b=batch, st=style: insert_files(c, b, st))  # type: ignore[misc]
                    with self.state.lock:
                        for f in batch:
                            self.state.file_inserted.append(f.id)
                            self.state.file_inserted_set.add(f.id)
                else:
                    with self.state.lock:
                        live = [
                            i
                            for i in self.state.file_inserted
                            if i not in self.planted_files and i not in self.state.file_deleted
                        ]
                        deleted = sorted(self.state.file_deleted)
                    if len(live) < 5:
                        continue
                    self.mutate_file(client, rng, op, live, deleted)
                with self.state.lock:
                    self.state.ops[f"files_{op}"] += 1
            # The planted "spoiled" PDF gets the encrypted PDF's bytes once its first version is
            # embedded: the dead-lettered new version must leave nothing of the old one.
            for fid in sorted(k for k, kind in self.planted_files.items() if kind == "spoiled"):
                until = time.monotonic() + self.plan.write_seconds + self.plan.settle_seconds / 2
                while not client.run(lambda c, i=fid: embedded_file(c, i)):  # type: ignore[misc]
                    if time.monotonic() > until or self.stop.wait(0.5):
                        break
                else:
                    with self.state.lock:
                        self.state.spoiled_after_embedding += 1
                data = self.fixtures["encrypted.pdf"]
                client.run(
                    lambda c, i=fid, d=data: c.execute(  # type: ignore[misc]
                        "UPDATE public.chaos_files SET data = %s WHERE id = %s", (d, i)
                    )
                )
                with self.state.lock:
                    self.state.ops["files_spoil"] += 1
        except Exception as exc:
            with self.state.lock:
                self.state.errors.append(f"file actor: {type(exc).__name__}: {exc}")
        finally:
            with self.state.lock:
                self.state.writer_retries += client.retries
            client.close()

    def mutate_file(
        self, client: Client, rng: random.Random, op: str, live: list[int], deleted: list[int]
    ) -> None:
        def new_version(fid: int) -> tuple[str, bytes]:
            name = rng.choice(GOOD_FILES)
            return f"{fid:04d}-{name}", fixture_variant(self.fixtures, name, rng.randrange(10**6))

        update = "UPDATE public.chaos_files SET name = %s, data = %s, mime = NULL WHERE id = %s"
        if op == "update":
            fid = rng.choice(live)
            name, data = new_version(fid)
            client.run(lambda c: c.execute(update, (name, data, fid)))
        elif op == "burst":  # quick successive versions: only the last one may stay embedded
            fid = rng.choice(live)
            for _ in range(rng.randint(3, 6)):
                name, data = new_version(fid)
                client.run(lambda c, nm=name, d=data: c.execute(update, (nm, d, fid)))  # type: ignore[misc]
        elif op == "touch":  # the same bytes written again: the same version, nothing queued
            fid = rng.choice(live)
            client.run(
                lambda c: c.execute(
                    "UPDATE public.chaos_files SET data = data WHERE id = %s", (fid,)
                )
            )
        elif op in ("delete", "delete_many"):
            ids = [rng.choice(live)] if op == "delete" else rng.sample(live, min(len(live), 4))
            with self.state.lock:  # before the statement: a lost ack still counts as deleted
                self.state.file_deleted.update(ids)
            rows = client.run(
                lambda c: c.execute(
                    "WITH w AS (DELETE FROM public.chaos_files WHERE id = ANY (%s) RETURNING id)"
                    " SELECT r.doc_id FROM w JOIN pgingest.sources AS s ON s.name = %s"
                    " JOIN pgingest.source_rows AS r ON r.source_id = s.id"
                    " AND r.row_key = jsonb_build_object('id', w.id)",
                    (ids, FILES_SOURCE),
                ).fetchall()
            )
            with self.state.lock:
                self.state.file_deleted_ids.update(int(r[0]) for r in rows)
        elif op == "recreate" and deleted:  # a deleted id comes back as a new row (new doc_id)
            fid = rng.choice(deleted)
            name, data = new_version(fid)
            client.run(lambda c: insert_files(c, [FileRow(fid, name, data, None)], "rows"))
            with self.state.lock:
                self.state.file_deleted.discard(fid)

    def migrator(self) -> None:
        """Registers model v2 mid-run (shadow): the workers backfill it from every source."""
        client = Client(self.dsn, "migrator", self.t_deadline)

        def register(c: psycopg.Connection[Any]) -> str:
            if c.execute("SELECT 1 FROM pgingest.models WHERE name = %s", (MODEL2,)).fetchone():
                return "already registered"  # a retry of a register whose ack was lost
            with c.transaction():
                row = c.execute(
                    "SELECT pgingest.register_model(%s, %s, %s, %s, index_method => 'none')",
                    (MODEL2, MODEL2_ID, DIMENSIONS2, self.fake_url),
                ).fetchone()
                # Its backfill goes through the provider's Batch API (issue 25): provider
                # batches that the kills interrupt, partly failed lines embedded online.
                c.execute("SELECT pgingest.set_model_batch_api(%s)", (MODEL2,))
            assert row is not None
            return str(row[0])

        try:
            if self.stop.wait(self.plan.write_seconds * 0.5):
                return
            t = time.monotonic()
            # v2's provider enforces a tokens-per-minute quota (token buckets, 429s, headers):
            # the workers learn it from the headers and pace the backfill within it.
            control(self.fake_url, {"quota": {"models": {MODEL2_ID: {"tpm": self.quota_tpm}}}})
            state = client.run(register)
            if self.args.trace:
                client.run(lambda c: trace_queue(c, MODEL2))
            with self.state.lock:
                self.state.migrated_at = time.monotonic() - _T0
                inserted, kills = len(self.state.inserted), self.state.kills
                self.state.migration = (
                    f"{MODEL2} ({MODEL2_ID}, {DIMENSIONS2} dims) registered {state} at"
                    f" {self.state.migrated_at:.0f}s, with {inserted:,} documents written and"
                    f" {kills} kills so far"
                )
            say(f"model {self.state.migration} (in {time.monotonic() - t:.1f}s)")
        except Exception as exc:
            with self.state.lock:
                self.state.errors.append(f"migrator: {type(exc).__name__}: {exc}")
        finally:
            client.close()

    def slower(self) -> None:
        """Windows in which the provider answers SLOW_PER_WINDOW requests after SLOW_S, longer
        than the visibility timeout. No SIGKILL (nor PostgreSQL restart) meanwhile: the worker
        that sent each of them lives until its answer, so the fake server seeing one of their
        inputs again while they are held means the same work was claimed twice."""
        n = self.plan.slow_windows
        t0 = time.monotonic()
        try:
            for i in range(n):
                due = t0 + self.plan.write_seconds * (i + 1) / (n + 1)
                if self.stop.wait(max(0.0, due - time.monotonic())):
                    return
                with self.killer_pause:
                    t = time.monotonic()
                    before = int(control(self.fake_url)["stats"]["slow_held"])
                    control(self.fake_url, {"fail_next": {"mode": "slow", "n": SLOW_PER_WINDOW}})
                    held = 0
                    if self.stop.wait(SLOW_S):
                        return
                    until = time.monotonic() + 30
                    while time.monotonic() < until and not self.stop.is_set():
                        held = int(control(self.fake_url)["stats"]["slow_held"]) - before
                        if held >= SLOW_PER_WINDOW:
                            break
                        self.stop.wait(0.5)
                    with self.state.lock:
                        self.state.slow_windows.append(
                            (SLOW_PER_WINDOW, held, time.monotonic() - t)
                        )
                say(
                    f"slow window {i + 1}/{n}: {held} of {SLOW_PER_WINDOW} requests answered after"
                    f" {SLOW_S}s (visibility timeout {VISIBILITY_TIMEOUT_S}s), no kill meanwhile"
                )
        except Exception as exc:
            with self.state.lock:
                self.state.errors.append(f"slower: {type(exc).__name__}: {exc}")

    def reader(self) -> None:
        """A role that is a member of pgingest_reader only keeps trying to point
        pgingest.embed_query at the listener (SET, set_config, SET LOCAL; URL forms that a
        careless comparison would take for a registered endpoint): each try must be refused
        before any connection is made."""
        assert self.reader_dsn is not None and self.listener is not None
        rng = random.Random(self.args.seed + 31)
        port = self.listener.port
        forms = [
            f"http://127.0.0.1:{port}/",
            f"http://127.0.0.1:{port}/v1",
            f"http://127.0.0.1:{port}/v1?",
            f"http://localhost:{port}/v1/embeddings",
            f"http://127.0.0.1:{port}/v1#",
            f"http://127.0.0.1:{port}/v1/../v1",
            f"http://user:pw@127.0.0.1:{port}/v1",
            f"http://127.0.0.1:{port}/v1?api-key=x",
            f"{self.fake_url}@127.0.0.1:{port}/v1",
            f"http://127.0.0.1:{port}/v1?{self.fake_url}",
        ]
        client = Client(self.reader_dsn, "reader", self.t_deadline)
        i = 0
        try:
            while not self.stop.wait(rng.uniform(0.2, 0.6)) and not self.writers_done.is_set():
                url = forms[i % len(forms)]
                how = ("SET", "set_config", "SET LOCAL")[(i // len(forms)) % 3]
                i += 1

                def attempt(c: psycopg.Connection[Any], url: str = url, how: str = how) -> str:
                    if self.reader_via.startswith("SET ROLE"):
                        c.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(self.reader_role)))
                    try:
                        with c.transaction():
                            if how == "set_config":
                                c.execute(
                                    "SELECT set_config('pgingest.embedding_url', %s, false),"
                                    " set_config('pgingest.embedding_timeout', '1e9', false)",
                                    (url,),
                                )
                            else:
                                c.execute(
                                    sql.SQL("SET {} pgingest.embedding_url = {}").format(
                                        sql.SQL("LOCAL" if how == "SET LOCAL" else ""),
                                        sql.Literal(url),
                                    )
                                )
                            c.execute("SELECT pgingest.embed_query('where is my data?')")
                        return "accepted"
                    except (
                        psycopg.errors.InsufficientPrivilege,
                        psycopg.errors.InvalidParameterValue,
                    ) as exc:
                        return type(exc).__name__
                    except (psycopg.OperationalError, psycopg.InterfaceError):
                        raise  # the connection: retried by Client.run
                    except psycopg.Error as exc:
                        return f"unexpected {type(exc).__name__}: {str(exc).strip()[:160]}"

                outcome = client.run(attempt)
                with self.state.lock:
                    if outcome == "accepted":
                        self.state.accepted += 1
                    elif outcome.startswith("unexpected"):
                        self.state.reader_unexpected.append(f"{url} ({how}): {outcome}")
                    else:
                        self.state.refused[outcome] += 1
        except Exception as exc:
            with self.state.lock:
                self.state.errors.append(f"reader: {type(exc).__name__}: {exc}")
        finally:
            client.close()

    # -- monitoring --------------------------------------------------------------------------

    def progress(self, client: Client, last: dict[str, Any]) -> dict[str, Any]:
        def read(c: psycopg.Connection[Any]) -> tuple[Any, ...]:
            row = c.execute(
                "SELECT clock_timestamp(), (SELECT count(*) FROM pgingest.documents),"
                " (SELECT count(*) FROM pgingest.source_rows),"
                " (SELECT count(*) FROM pgingest.embedding_state WHERE model = %s),"
                " (SELECT count(*) FROM pgingest.embedding_state WHERE model = %s),"
                " (SELECT count(*) FROM pgingest.embedding_state WHERE embedded_at >= %s),"
                " (SELECT count(*) FROM pgingest.dead_letters),"
                " (SELECT count(*) FROM pgingest.sources WHERE backfill_completed_at IS NULL)"
                " + (SELECT count(*) FROM pgingest.models"
                "    WHERE state <> 'retired' AND backfill_completed_at IS NULL),"
                " (SELECT array_agg(name || ': ' || coalesce(paused_reason, '(none)'))"
                "  FROM pgingest.models WHERE paused)",
                (MODEL, MODEL2, last.get("at") or "-infinity"),
            ).fetchone()
            assert row is not None
            return (*row, queued_messages(c)[0])

        now, ndocs, nrows, embedded, embedded2, recent, dead, backfills, paused, queue = client.run(
            read
        )
        with self.state.lock:
            for reason in paused or ():
                if reason not in self.state.pause_reasons:
                    self.state.pause_reasons.append(reason)
        dt = (now - last["at"]).total_seconds() if last.get("at") else None
        rate = f"{recent / dt:6.0f}/s" if dt else "     -  "
        with self.state.lock:
            inserted, kills = len(self.state.inserted), self.state.kills
            arts = len(self.state.art_inserted_set)
        total = self.plan.docs + self.plan.bad
        say(
            f"inserted {inserted:>6,}/{total:,} + {arts:>5,} rows  documents {ndocs:>6,} + {nrows:>5,}"
            f"  embedded {embedded:>6,} + {embedded2:>6,} ({rate})  queue {queue:>6,}"
            f"  backfills {backfills}  dead {dead:>3}  kills {kills}"
        )
        return {"at": now, "queue": int(queue), "backfills": int(backfills)}

    def watchdog(self) -> None:
        """A worker that exited on its own (no planted SIGKILL) is recorded and restarted."""
        if not self.killer_pause.acquire(blocking=False):
            return  # a kill, a slow window or the PostgreSQL restart: next time
        try:
            for slot in self.slots:
                if slot.revive():
                    gen, code, _ = slot.exits[-1]
                    say(f"worker {slot.index} (generation {gen}) EXITED ON ITS OWN with {code}")
        finally:
            self.killer_pause.release()

    # -- PostgreSQL restart --------------------------------------------------------------------

    def restart_and_verify(self) -> None:
        with self.killer_pause:
            # A worker restarted a moment ago may not be connected yet: it would not see the
            # restart. Wait until every worker has written a batch since its (re)start.
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not all(
                "pgingest.worker: batch " in s.log_text() for s in self.slots
            ):
                time.sleep(0.2)
            offsets = [s.log_size() for s in self.slots]
            pids = [s.pid for s in self.slots]
            say("restarting PostgreSQL (fast shutdown) ...")
            down = restart_postgres(self.env)
            with self.state.lock:
                self.state.restarts += 1
            say(f"PostgreSQL back after {down:.1f}s; waiting for the workers to reconnect")
            deadline = time.monotonic() + 60
            missing: list[int] = list(range(len(self.slots)))
            while missing and time.monotonic() < deadline:
                missing = [
                    i
                    for i, s in enumerate(self.slots)
                    if not (s.alive() and s.pid == pids[i] and reconnected(s.log_text(offsets[i])))
                ]
                if missing:
                    time.sleep(0.5)
        if missing:
            self.restart_note = (
                f"worker(s) {missing} did not reconnect and process a batch within 60 s"
            )
        else:
            self.restart_note = (
                f"both workers (pids {', '.join(map(str, pids))}) logged the lost connection,"
                " reconnected by themselves and wrote batches again"
            )
        say(self.restart_note)

    # -- main ----------------------------------------------------------------------------------

    def run(self) -> bool:
        plan = self.plan
        say(
            f"chaos run: {plan.docs:,} documents + {plan.bad} planted bad ones, {plan.writers}"
            f" writers, {plan.workers} workers, >= {plan.min_kills} SIGKILLs, database {self.dbname}"
        )
        private, why = is_private_cluster(self.base_url)
        do_restart = not self.args.no_pg_restart and private
        if self.args.no_pg_restart:
            say("NOTICE: --no-pg-restart: PostgreSQL will not be restarted")
        elif not private:
            say(
                f"NOTICE: not restarting PostgreSQL: DATABASE_URL is not the private cluster ({why})"
            )
        self.create_database()
        self.fake_log = open(self.logdir / "fake-server.log", "wb")  # noqa: SIM115
        self.fake, self.fake_url = start_fake_server(self.env, self.args.seed, self.fake_log)
        with db.connect(self.dsn) as c:
            c.execute(
                "SELECT pgingest.register_model(%s, 'fake-384', %s, %s, index_method => 'none')",
                (MODEL, DIMENSIONS, self.fake_url),
            )
            if self.args.trace:
                trace_queue(c, MODEL)
        assert max_response_cap() < HUGE_BODY_BYTES
        control(
            self.fake_url,
            {
                "rates": {**FAULT_RATES, **HOSTILE_RATES},
                "retry_after": 1,
                "hang_s": HANG_S,
                "seed": self.args.seed,
                "error_message": HOSTILE,
                "binary_status": 403,
                "huge_body_bytes": HUGE_BODY_BYTES,
                "slow_s": SLOW_S,
                # At least one of each hostile answer, whatever the draws.
                "fail_next": list(HOSTILE_RATES),
                # v2's backfill through the Batch API: batches that take a while, a few of
                # their lines failing (500: those inputs are embedded online).
                "batch_completion_s": BATCH_COMPLETION_S,
                "batch_fail_share": BATCH_FAIL_SHARE,
            },
        )
        say(
            f"fake server {self.fake_url}: faults {FAULT_RATES}, hang {HANG_S}s; hostile answers"
            f" {HOSTILE_RATES} (error text {HOSTILE!r}, binary 403, oversize"
            f" {HUGE_BODY_BYTES >> 20} MiB > the client's cap of at most"
            f" {max_response_cap() >> 20} MiB); {plan.slow_windows} windows of"
            f" {SLOW_PER_WINDOW} answers after {SLOW_S}s (visibility timeout"
            f" {VISIBILITY_TIMEOUT_S}s); logs {self.logdir}"
        )

        docs, self.bad = make_documents(plan, self.rng)
        # v2's quota (issue 25): about twice the corpus's tokens a minute (~4 characters a
        # token). v2 sends ~1.7x the corpus (overlapping chunks, updates, articles, retries),
        # and the fake's random 429s lower the learned pace too: its bursts meet the quota, but
        # the whole of v2's work fits in about a minute of it, so that the final drain is not
        # bound by the quota (at chars / 4, --small's drain took 84 s of its 90 here and ran
        # out on a slower CI machine)
        chars = sum(len(d.body or "") + len(d.title or "") for d in docs)
        self.quota_tpm = max(20_000, int(chars / 2))
        preload, articles, self.planted = make_articles(plan, self.rng)
        self.preload_articles(preload)
        say(
            f"{ARTICLES}: {len(preload)} rows before the attach, {len(articles)} more during the"
            f" run ({len(self.planted)} planted bad ones)"
        )
        self.fixtures = load_fixtures(self.logdir / "fixtures")
        file_preload, files, self.planted_files = make_files(plan, self.rng, self.fixtures)
        with psycopg.connect(self.dsn, autocommit=True) as c:
            insert_files(c, file_preload, "multi")
        with self.state.lock:
            self.state.file_inserted += [f.id for f in file_preload]
            self.state.file_inserted_set.update(f.id for f in file_preload)
        say(
            f"{FILES}: {len(file_preload)} files before the attach, {len(files)} more during the"
            f" run ({len(self.planted_files)} planted poisoned ones:"
            f" {', '.join(self.planted_files.values())})"
        )
        for i in range(plan.workers):
            slot = WorkerSlot(i, self.worker_cmd(), self.env, self.logdir)
            slot.start()
            self.slots.append(slot)

        shares = [docs[i :: plan.writers] for i in range(plan.writers)]
        threads = [
            threading.Thread(target=self.writer, args=(i, share), name=f"writer-{i}")
            for i, share in enumerate(shares)
        ]
        threads.append(threading.Thread(target=self.mutator, name="mutator"))
        threads.append(
            threading.Thread(target=self.article_writer, args=(articles,), name="article-writer")
        )
        threads.append(threading.Thread(target=self.article_mutator, name="article-mutator"))
        threads.append(threading.Thread(target=self.file_actor, args=(files,), name="file-actor"))
        threads.append(threading.Thread(target=self.migrator, name="migrator"))
        killer = threading.Thread(target=self.killer, name="killer")
        # Not among the writing threads (the chaos phase does not wait for them): the reader
        # stops when the writing does, the slow windows fall within it.
        extras = [threading.Thread(target=self.slower, name="slower")]
        if self.reader_dsn is not None:
            extras.append(threading.Thread(target=self.reader, name="reader"))
        for t in threads:
            t.start()
        killer.start()
        for t in extras:
            t.start()

        monitor = Client(self.dsn, "monitor", self.t_deadline)
        last: dict[str, Any] = {}
        restarted = not do_restart
        total = plan.docs + plan.bad
        t_phase = time.monotonic()
        settled_at: float | None = None
        try:
            while time.monotonic() < self.t_deadline:
                time.sleep(2.5 if plan.docs > 5000 else 1.5)
                self.watchdog()
                last = self.progress(monitor, last)
                with self.state.lock:
                    inserted = len(self.state.inserted)
                if not restarted and inserted >= 0.4 * total:
                    restarted = True
                    monitor.close()
                    self.restart_and_verify()
                writing = any(t.is_alive() for t in threads)
                if not writing:
                    self.writers_done.set()
                if writing or killer.is_alive() or not restarted:
                    continue
                if (
                    last["queue"] == 0
                    and last["backfills"] == 0
                    or time.monotonic() - t_phase > plan.write_seconds + plan.settle_seconds
                ):
                    settled_at = time.monotonic()
                    break
        finally:
            self.writers_done.set()
            if settled_at is None:
                self.stop.set()
            for t in threads:
                t.join()
            killer.join()
            for t in extras:
                t.join()
            monitor.close()
        self.watchdog()
        if settled_at is None:
            with self.state.lock:
                self.state.errors.append("the chaos phase ran past the deadline")

        # Faults off, workers stopped, one final drain.
        stats = control(self.fake_url, {"rates": {}})["stats"]
        self.watchdog()
        codes = [s.stop() for s in self.slots]
        self.stop_codes = codes
        say(f"chaos phase over; workers stopped (exit codes {codes}); faults off; final drain ...")
        t_drain = time.monotonic()
        drain_log = self.logdir / "worker-drain.log"
        with open(drain_log, "wb") as f:
            try:
                rc = subprocess.run(
                    self.worker_cmd("--drain"),
                    stdout=f,
                    stderr=subprocess.STDOUT,
                    env=self.env,
                    timeout=max(10.0, min(plan.drain_seconds, self.t_deadline - time.monotonic())),
                ).returncode
            except subprocess.TimeoutExpired:
                rc = -1
        say(f"final drain exited with {rc} after {time.monotonic() - t_drain:.1f}s")
        monitor = Client(self.dsn, "monitor", time.monotonic() + 30)
        self.progress(monitor, last)
        monitor.close()
        return self.check(stats, rc, do_restart, why)

    # -- checks --------------------------------------------------------------------------------

    def record(self, ok: bool | None, name: str, detail: str) -> None:
        status = "SKIP" if ok is None else "PASS" if ok else "FAIL"
        self.checks.append((status, name, detail))
        print(f"{status}  {name}: {detail}", flush=True)

    def check(self, stats: dict[str, Any], drain_rc: int, do_restart: bool, why: str) -> bool:
        print("\n== checks ==", flush=True)
        st = self.state
        by_mode = stats.get("by_mode", {})
        injected = {m: int(by_mode.get(m, 0)) for m in FAULT_RATES}
        self.record(
            all(v > 0 for v in injected.values()),
            "faults injected",
            f"{stats.get('requests', 0):,} embedding requests: "
            + ", ".join(f"{m} {v}" for m, v in injected.items()),
        )
        self.record(
            st.kills >= self.plan.min_kills,
            "workers killed",
            f"{st.kills} SIGKILLs (at least {self.plan.min_kills}), each restarted",
        )
        if do_restart:
            self.record(
                st.restarts == 1 and self.restart_note.startswith("both"),
                "PostgreSQL restart",
                self.restart_note or "not done",
            )
        else:
            reason = "--no-pg-restart" if self.args.no_pg_restart else why
            self.record(None, "PostgreSQL restart", f"skipped ({reason})")
        self.record(
            not st.errors,
            "actors",
            "; ".join(st.errors)
            or (f"writes {dict(sorted(st.ops.items()))}; {st.writer_retries} writer retries"),
        )
        self.record(drain_rc == 0, "final drain", f"worker --drain exit code {drain_rc}")
        self.check_hostile(by_mode)
        self.check_slow(stats)
        self.check_reader()

        self.check_migration()
        self.check_quota(stats)
        # The fake's counters as they are now: the final drain may create a provider batch too
        # (a backfill's tail that the chaos phase left), after the snapshot taken for the faults.
        self.check_batch_api(control(self.fake_url)["stats"])
        with db.connect(self.dsn) as conn, conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            self.check_documents(conn)
            rows = self.check_source_rows(conn)
            self.check_captures()
            live = self.live_documents(conn, rows)
            self.check_chunks(conn, live)
            self.check_deleted(conn)
            self.check_dead_letters(conn, live)
            self.check_files(conn)
            queues = live_queues(conn)
            left = {q: count_rows(conn, queue_table(q)) for _, q in queues}
            self.record(
                len(queues) == len(MODELS) and not any(left.values()),
                "queue empty",
                ", ".join(f"{n} messages left in {q}" for q, n in left.items()),
            )

        failed = [c for c in self.checks if c[0] == "FAIL"]
        print(
            f"\n{'PASS' if not failed else 'FAIL'}: {len(self.checks) - len(failed)} of"
            f" {len(self.checks)} checks passed or skipped in {time.monotonic() - _T0:.1f}s",
            flush=True,
        )
        if failed:
            self.print_log_tails()
        return not failed

    def worker_log_count(self, needle: str) -> int:
        """Lines holding ``needle`` in the logs of every worker generation and the drain."""
        n = 0
        for path in self.logdir.glob("worker-*.log"):
            n += sum(
                1 for line in path.read_text("utf-8", "replace").splitlines() if needle in line
            )
        return n

    def check_hostile(self, by_mode: dict[str, Any]) -> None:
        """Every kind of hostile answer came, and the workers lived through them: no exit but the
        planted SIGKILLs, exit code 0 on SIGTERM, no log line lost to the text, a 403's hostile
        reason written as a pause reason and the model resumed by a probe."""
        n = {m: int(by_mode.get(m, 0)) for m in (*HOSTILE_ERRORS, *HOSTILE_RATES)}
        problems = [f"no {m} answer" for m, v in n.items() if v == 0]
        exits = [
            f"worker {s.index} generation {gen} exited with {code}: ...{tail[-300:]!r}"
            for s in self.slots
            for gen, code, tail in s.exits
        ]
        problems += exits
        restarts = sum(s.generation for s in self.slots) - len(self.slots)
        if restarts != self.state.kills + len(exits):
            problems.append(f"{restarts} restarts for {self.state.kills} SIGKILLs")
        if any(code != 0 for code in self.stop_codes):
            problems.append(f"exit codes on SIGTERM {self.stop_codes}")
        pauses = self.worker_log_count("model paused")
        resumes = self.worker_log_count("model resumed after a successful probe")
        lost = self.worker_log_count("--- Logging error ---")
        failed = self.worker_log_count("batch failed")
        if pauses == 0:
            problems.append("no pause reason written")
        if lost:
            problems.append(f"{lost} log records lost (logging errors)")
        with db.connect(self.dsn) as c:
            still = [r[0] for r in c.execute("SELECT name FROM pgingest.models WHERE paused")]
        if still:
            problems.append(f"models still paused after the drain: {still}")
        reason = self.state.pause_reasons[0] if self.state.pause_reasons else "-"
        errors = sum(n[m] for m in HOSTILE_ERRORS)
        self.record(
            not problems,
            "hostile answers",
            f"{sum(n.values())} injected: {errors} error bodies with NUL, lone surrogates, a"
            f" forged log line (429 {n['rate_limit']}, 503 {n['unavailable']}, 200 with an error"
            f" {n['error_body']}, 403 {n['forbidden']}), {n['binary']} binary 403 pages,"
            f" {sum(n[m] for m in OVERSIZE)} answers over the client's size cap (sized"
            f" {n['huge']}, unsized {n['huge_unsized']}, gzip bombs {n['gzip_bomb']});"
            f" {pauses} pauses with the provider's text written as the reason (e.g. {reason[:90]!r}),"
            f" {resumes} resumed by a probe; {failed} batches failed; the worker never exited on"
            f" its own (its {restarts} restarts are only the planted SIGKILLs; exit codes on"
            f" SIGTERM {self.stop_codes})" + ("; " + "; ".join(problems) if problems else ""),
        )

    def check_slow(self, stats: dict[str, Any]) -> None:
        """The answers slower than the visibility timeout: none of their inputs came again while
        they were held (the ClaimKeeper kept their messages claimed; the worker that sent them
        lived: no SIGKILL during a window)."""
        windows = self.state.slow_windows
        held = int(stats.get("slow_held", 0))
        total = int(stats.get("slow_overlaps", 0))
        seen = [str(x).split(": ", 1)[-1] for x in stats.get("slow_overlapped", [])]
        # Inputs that may legitimately be in flight twice: the probe of a paused model (both
        # workers may probe), and a chunk shared by two versions or keys of one article (a tags
        # change keeps every chunk but the last; a moved key keeps them all). A chunk of a
        # document of pgingest.documents is its alone: each version is a new random body, under
        # the title of its key. A real double claim re-sends whole batches, mostly documents.
        docs = [x for x in seen if DOCUMENT_CHUNK.match(x)]
        explained = len(seen) - len(docs)
        expected = SLOW_PER_WINDOW * len(windows)
        unextended = self.worker_log_count("could not extend the claims")
        problems = []
        if len(windows) != self.plan.slow_windows:
            problems.append(f"{len(windows)} of {self.plan.slow_windows} windows held")
        if held < expected:
            problems.append(f"{held} of {expected} slow requests answered")
        if docs or total > len(seen):
            problems.append(
                f"{total} inputs re-sent while held ({len(docs)} chunks of documents):"
                f" {[x[:60] for x in (docs or seen)[-3:]]}"
            )
        self.record(
            not problems,
            "slow answers",
            f"{held} slower than the VT (answered after {SLOW_S}s, visibility timeout"
            f" {VISIBILITY_TIMEOUT_S}s, HTTP timeout {HTTP_TIMEOUT_S}s) in {len(windows)} windows"
            f" without kills ({', '.join(f'{w[2]:.1f}s' for w in windows)}); no message claimed"
            f" twice while its worker lived: {len(docs)} chunks of documents sent again while"
            f" held ({explained} other inputs: probes, or chunks another version or key of an"
            f" article shares); {unextended} failed claim extensions logged"
            + ("; " + "; ".join(problems) if problems else ""),
        )

    def check_reader(self) -> None:
        if self.reader_dsn is None or self.listener is None:
            self.record(None, "embed_query redirect", f"skipped ({self.reader_skip})")
            return
        st = self.state
        tries = sum(st.refused.values())
        connections = self.listener.connections
        self.record(
            tries > 0 and st.accepted == 0 and not st.reader_unexpected and connections == 0,
            "embed_query redirect",
            f"{tries} tries refused ({', '.join(f'{k} {v}' for k, v in sorted(st.refused.items()))})"
            f" of {self.reader_role} (a member of pgingest_reader only, {self.reader_via}) to"
            f" point pgingest.embed_query at a listener on 127.0.0.1:{self.listener.port} (10 URL"
            f" forms; SET, set_config, SET LOCAL), {st.accepted} accepted, {connections}"
            " connections to the listener"
            + (
                f"; {len(st.reader_unexpected)} unexpected errors: {st.reader_unexpected[:3]}"
                if st.reader_unexpected
                else ""
            ),
        )

    def check_migration(self) -> None:
        """v2 must be fully backfilled (every current version of every source embedded or
        dead-lettered): swap_model() refuses otherwise. Both models stay live (v1 as standby)
        and every later check covers both."""
        detail = [self.state.migration or f"{MODEL2} was never registered"]
        ok = bool(self.state.migration)
        try:
            with db.connect(self.dsn) as c:
                prog = c.execute(
                    "SELECT documents, embedded, dead_lettered, pending, backfill_queued_all,"
                    " backfill_queued FROM pgingest.backfill_progress WHERE model = %s",
                    (MODEL2,),
                ).fetchone()
                if prog is None:
                    ok = False
                else:
                    detail.append(
                        f"backfill: {prog[5]:,} queued, {prog[1]:,} of {prog[0]:,} documents"
                        f" embedded, {prog[2]} dead-lettered, {prog[3]} pending"
                    )
                    ok = ok and prog[3] == 0 and bool(prog[4])
                    row = c.execute("SELECT pgingest.swap_model(%s)", (MODEL2,)).fetchone()
                    assert row is not None
                    detail.append(f"swap_model({MODEL2!r}): {row[0]}")
                    states = dict(c.execute("SELECT name, state FROM pgingest.models").fetchall())
                    ok = ok and states == {MODEL: "standby", MODEL2: "active"}
        except psycopg.Error as exc:
            ok = False
            detail.append(f"{type(exc).__name__}: {str(exc).strip()[:300]}")
        self.record(ok, "model migration", "; ".join(detail))

    def check_quota(self, stats: dict[str, Any]) -> None:
        """v2's provider enforced a tokens-per-minute quota: the workers learned it from the
        x-ratelimit-* headers (pgingest.provider_quota) and paced within it; few of its requests
        met the quota's 429 (the fake's random 429s are another fault, counted apart). Nothing
        lost or duplicated is checked with everything else."""
        by_key = stats.get("quota_by_key_model", {})
        mine = [v for k, v in by_key.items() if k.endswith(" " + MODEL2_ID)]
        accepted = sum(int(v.get("accepted_requests", 0)) for v in mine)
        rejected = sum(
            int(v.get("rejected_requests", 0)) + int(v.get("rejected_tokens", 0)) for v in mine
        )
        detail = [
            f"{MODEL2_ID}: {self.quota_tpm:,} tokens/min; {accepted} requests accepted, {rejected} refused"
        ]
        ok = accepted > 0
        try:
            with db.connect(self.dsn) as c:
                row = c.execute(
                    "SELECT source, tokens_per_minute, pace, rejections, taken_tokens, waited_seconds"
                    " FROM pgingest.provider_quota WHERE model = %s",
                    (MODEL2,),
                ).fetchone()
        except psycopg.Error as exc:
            row = None
            detail.append(f"{type(exc).__name__}: {str(exc).strip()[:200]}")
        if row is None:
            ok = False
            detail.append("no quota learned")
        else:
            detail.append(
                f"learned from {row[0]}: {row[1]:,.0f} tokens/min, pace {row[2]:.2f},"
                f" {row[3]} 429s seen, {row[4]:,} tokens taken, {row[5]:.0f} s waited"
            )
            ok = ok and row[0] == "headers" and row[1] == self.quota_tpm
        share = rejected / max(1, accepted + rejected)
        ok = ok and share <= 0.1
        self.record(ok, "quota", "; ".join(detail) + f"; refused share {share:.3f} (at most 0.1)")

    def check_batch_api(self, stats: dict[str, Any]) -> None:
        """v2's backfill went through the provider's Batch API: every provider batch collected,
        each submitted once (the fake counts the batches created; a worker killed between the
        creation and its record leaves a successor that finds the batch by its submission id),
        most inputs embedded by the batches. Nothing lost or duplicated is checked with
        everything else."""
        try:
            with db.connect(self.dsn) as c:
                rows = c.execute(
                    "SELECT state, provider_batch_id, inputs, inputs_embedded, inputs_rejected,"
                    " inputs_online, error FROM pgingest.provider_batches WHERE model = %s",
                    (MODEL2,),
                ).fetchall()
        except psycopg.Error as exc:
            self.record(False, "batch api", f"{type(exc).__name__}: {str(exc).strip()[:200]}")
            return
        submitted = {r[1] for r in rows if r[1] is not None}
        created = int(stats.get("batch_submissions", 0))
        open_ = [r for r in rows if r[0] != "collected"]
        inputs = sum(r[2] for r in rows)
        embedded, rejected, online = (sum(r[i] for r in rows) for i in (3, 4, 5))
        ok = bool(submitted) and created == len(submitted) and not open_ and embedded > 0
        self.record(
            ok,
            "batch api",
            f"{len(rows)} provider batches for {MODEL2} ({len(open_)} not collected),"
            f" {len(submitted)} submitted, {created} created at the provider (once each),"
            f" {stats.get('files_uploaded', 0)} files uploaded; {inputs:,} inputs:"
            f" {embedded:,} embedded by the batches, {rejected} rejected (dead-lettered),"
            f" {online:,} embedded online (failed lines)",
        )

    def check_documents(self, conn: psycopg.Connection[Any]) -> None:
        keys = {r[0] for r in conn.execute("SELECT key FROM pgingest.documents")}
        expected = self.state.inserted_set - self.state.deleted_keys
        missing = sorted(expected - keys)
        extra = sorted(keys - expected)
        self.record(
            not missing and not extra,
            "documents",
            f"{len(keys):,} live documents = inserted {len(self.state.inserted_set):,} -"
            f" deleted {len(self.state.deleted_keys)}"
            + (f"; missing {missing[:5]}" if missing else "")
            + (f"; unexpected {extra[:5]}" if extra else ""),
        )

    def check_source_rows(self, conn: psycopg.Connection[Any]) -> dict[tuple[str, int], Any]:
        """The articles table holds what the actors wrote, and pgingest.source_rows registers
        each of its rows exactly once with the content hash of its current mapped text: the
        backfill and the capture triggers missed nothing and left no row of a deleted key.
        Returns key -> (doc_id, title, text, content_hash) of every row."""
        table = {
            (str(r[0]), int(r[1])): (r[2], article_text(r[2], r[3], r[4]))
            for r in conn.execute(
                "SELECT tenant_id, id, title, body, tags FROM public.chaos_articles"
            )
        }
        expected = self.state.art_inserted_set - self.state.art_deleted
        src = conn.execute(
            "SELECT backfill_completed_at IS NOT NULL, backfill_rows FROM pgingest.sources"
            " WHERE name = %s",
            (SOURCE,),
        ).fetchone()
        registered: dict[tuple[str, int], list[Any]] = {}
        for doc_id, key, h, title in conn.execute(
            "SELECT r.doc_id, r.row_key, r.content_hash, r.title FROM pgingest.source_rows AS r"
            " JOIN pgingest.sources AS s ON s.id = r.source_id AND s.name = %s",
            (SOURCE,),
        ):
            registered.setdefault((str(key["tenant_id"]), int(key["id"])), []).append(
                (int(doc_id), bytes(h), title)
            )
        others = conn.execute(
            "SELECT count(*) FROM pgingest.source_rows AS r JOIN pgingest.sources AS s"
            " ON s.id = r.source_id WHERE s.name NOT IN (%s, %s)",
            (SOURCE, FILES_SOURCE),
        ).fetchone()
        assert others is not None
        problems = []
        if src is None or not src[0]:
            problems.append(f"source backfill not done ({src})")
        if missing := sorted(expected - table.keys()):
            problems.append(f"{len(missing)} rows missing from the table: {missing[:3]}")
        if extra := sorted(table.keys() - expected):
            problems.append(f"{len(extra)} unexpected rows in the table: {extra[:3]}")
        if unregistered := sorted(table.keys() - registered.keys()):
            problems.append(f"{len(unregistered)} rows not registered: {unregistered[:3]}")
        if ghosts := sorted(registered.keys() - table.keys()):
            problems.append(
                f"{len(ghosts)} registered rows the table does not hold:"
                f" {[(k, registered[k][0][0]) for k in ghosts[:3]]}"
            )
        if twice := sorted(k for k, v in registered.items() if len(v) > 1):
            problems.append(f"{len(twice)} keys registered twice: {twice[:3]}")
        stale = []
        rows: dict[tuple[str, int], Any] = {}
        for key, (title, text) in table.items():
            if key not in registered:
                continue
            doc_id, h, reg_title = registered[key][0]
            rows[key] = (doc_id, title, text, h)
            if h != content_hash(title, text) or reg_title != (
                None if title is None else title[:1024]
            ):
                stale.append(f"{key} doc {doc_id}")
        if stale:
            problems.append(
                f"{len(stale)} registered with a content hash or title that is not the row's"
                f" current one: {stale[:3]}"
            )
        if others[0]:
            problems.append(f"{others[0]} rows registered for another source")
        self.files, file_detail = self.file_rows(conn, problems)
        self.record(
            not problems,
            "source rows",
            f"{len(table):,} rows in {ARTICLES} = written {len(self.state.art_inserted_set):,} -"
            f" deleted or moved {len(self.state.art_deleted)}; each registered once with its"
            f" current content hash (backfill: {src[1] if src else '-'} rows, attached at"
            f" {self.state.attached_at or 0:.0f}s); {file_detail}"
            + ("; " + "; ".join(problems) if problems else ""),
        )
        return rows

    def file_rows(
        self, conn: psycopg.Connection[Any], problems: list[str]
    ) -> tuple[dict[int, tuple[int, str | None, bytes | None, str | None, bytes]], str]:
        """The document source's part of "source rows": the files table holds what the file
        actor wrote, each row registered once with the version hash of its current bytes and
        MIME column. Returns id -> (doc_id, name, data, mime, content_hash), and a summary."""
        table = {
            int(r[0]): (r[1], None if r[2] is None else bytes(r[2]), r[3])
            for r in conn.execute("SELECT id, name, data, mime FROM public.chaos_files")
        }
        expected = self.state.file_inserted_set - self.state.file_deleted
        src = conn.execute(
            "SELECT backfill_completed_at IS NOT NULL, backfill_rows FROM pgingest.sources"
            " WHERE name = %s",
            (FILES_SOURCE,),
        ).fetchone()
        registered: dict[int, list[tuple[int, bytes, str | None]]] = {}
        for doc_id, key, h, title in conn.execute(
            "SELECT r.doc_id, r.row_key, r.content_hash, r.title FROM pgingest.source_rows AS r"
            " JOIN pgingest.sources AS s ON s.id = r.source_id AND s.name = %s",
            (FILES_SOURCE,),
        ):
            registered.setdefault(int(key["id"]), []).append((int(doc_id), bytes(h), title))
        if src is None or not src[0]:
            problems.append(f"{FILES} source backfill not done ({src})")
        if missing := sorted(expected - table.keys()):
            problems.append(f"{len(missing)} files missing from the table: {missing[:3]}")
        if extra := sorted(table.keys() - expected):
            problems.append(f"{len(extra)} unexpected files in the table: {extra[:3]}")
        if unregistered := sorted(table.keys() - registered.keys()):
            problems.append(f"{len(unregistered)} files not registered: {unregistered[:3]}")
        if ghosts := sorted(registered.keys() - table.keys()):
            problems.append(f"{len(ghosts)} registered files the table does not hold: {ghosts[:3]}")
        if twice := sorted(k for k, v in registered.items() if len(v) > 1):
            problems.append(f"{len(twice)} files registered twice: {twice[:3]}")
        stale = []
        rows: dict[int, tuple[int, str | None, bytes | None, str | None, bytes]] = {}
        for fid, (name, data, mime) in table.items():
            if fid not in registered:
                continue
            doc_id, h, reg_title = registered[fid][0]
            rows[fid] = (doc_id, name, data, mime, h)
            if h != content_hash(name, file_version_text(data, mime)) or reg_title != name:
                stale.append(f"file {fid} doc {doc_id}")
        if stale:
            problems.append(
                f"{len(stale)} files registered with a version hash or title that is not the"
                f" row's current one: {stale[:3]}"
            )
        return rows, (
            f"{len(table):,} rows in {FILES} = written {len(self.state.file_inserted_set):,} -"
            f" deleted {len(self.state.file_deleted)}, each registered once with the hash of its"
            f" current bytes (backfill: {src[1] if src else '-'} rows, attached at"
            f" {self.state.files_attached_at or 0:.0f}s)"
        )

    def check_captures(self) -> None:
        probes = self.state.probes
        wrong = [
            f"{kind} of {key}: {n} messages, {models} live models"
            for kind, key, n, models in probes
            if n != (models if kind == "tags" else 0)
        ]
        n_views = sum(1 for p in probes if p[0] == "views")
        self.record(
            not wrong and n_views > 0,
            "captures",
            f"{n_views} updates of the unmapped column views queued nothing;"
            f" {len(probes) - n_views} tag changes queued one message per live model"
            + (f"; {len(wrong)} wrong: {wrong[:5]}" if wrong else ""),
        )

    def live_documents(
        self, conn: psycopg.Connection[Any], rows: dict[tuple[str, int], Any]
    ) -> list[tuple[int, str, str | None, str, bytes, tuple[str, str] | None]]:
        """Every live document of both sources: (doc_id, label, title, text, content hash,
        (error_class, word) when it must be dead-lettered, else None)."""
        live: list[tuple[int, str, str | None, str, bytes, tuple[str, str] | None]] = [
            (int(r[0]), r[1], r[2], r[3], bytes(r[4]), self.bad.get(r[1]))
            for r in conn.execute(
                "SELECT id, key, title, body, content_hash FROM pgingest.documents ORDER BY id"
            )
        ]
        for key, (doc_id, title, text, h) in sorted(rows.items(), key=lambda kv: kv[1][0]):
            label = f"article {key[0][:8]}/{key[1]}"
            if key in self.planted:
                label += f" ({self.planted[key]})"
            live.append((doc_id, label, title, text or "", h, expected_failure(text)))
        # The files: their bytes parsed here as the worker parses them; a good one's text and
        # heading offsets are what it must have chunked, a failing one's class its dead letter's.
        options = raw_worker.parse_options_from_env(self.env)
        t = time.monotonic()
        for fid, (doc_id, name, data, mime, h) in sorted(self.files.items()):
            rendered, error_class = predict_file(data, mime, options)
            kind = self.planted_files.get(fid)
            self.file_outcomes[fid] = (doc_id, kind or "good", error_class)
            label = f"file {fid} {name}" + (f" ({kind})" if kind else "")
            if rendered is None:
                assert error_class is not None
                live.append((doc_id, label, name, "", h, (error_class, "")))
            else:
                self.raw_starts[doc_id] = rendered.heading_starts
                live.append((doc_id, label, name, rendered.text, h, None))
        say(f"parsed the {len(self.files)} files of {FILES} in {time.monotonic() - t:.1f}s")
        return live

    def check_chunks(
        self,
        conn: psycopg.Connection[Any],
        live: list[tuple[int, str, str | None, str, bytes, tuple[str, str] | None]],
    ) -> None:
        cfg_rows = dict(conn.execute("SELECT key, value FROM pgingest.config").fetchall())
        cfg = chunking.ChunkerConfig.from_settings(cfg_rows)
        good = [d for d in live if d[5] is None]
        bad = [d for d in live if d[5] is not None]
        t = time.monotonic()
        # Texts as chunk_documents cuts them; a parsed file's with its heading offsets
        # (chunk_structured, as worker/raw.py does).
        plain = iter(
            chunking.chunk_documents(
                [(d[2], d[3]) for d in good if d[0] not in self.raw_starts], cfg
            )
        )
        predicted = [
            chunking.chunk_structured(d[2], d[3], cfg, self.raw_starts[d[0]])
            if d[0] in self.raw_starts
            else next(plain)
            for d in good
        ]
        say(f"predicted the chunks of {len(good):,} documents in {time.monotonic() - t:.1f}s")
        wrong: list[str] = []
        bad_vectors: list[str] = []
        leftovers: set[str] = set()
        n_chunks = sum(len(c) for c in predicted)
        for model, dims in MODELS.items():
            got: dict[int, list[tuple[Any, ...]]] = {}
            # The chunks of the model's profile with the model's vector of that exact text (its
            # store row joined on chunk_hash): NULL dims where the vector is missing or stale.
            query = sql.SQL(
                "SELECT c.doc_id, c.ordinal, c.content, c.char_start, c.char_end, c.token_count,"
                " c.chunk_hash, c.chunker, vector_dims(s.embedding), vector_norm(s.embedding)"
                " FROM pgingest.chunks AS c"
                " JOIN pgingest.models AS m ON m.name = {model} AND m.profile_id = c.profile_id"
                " LEFT JOIN pgingest.{store} AS s ON s.doc_id = c.doc_id AND s.ordinal = c.ordinal"
                " AND s.chunk_hash = c.chunk_hash"
                " ORDER BY c.doc_id, c.ordinal"
            ).format(model=sql.Literal(model), store=sql.Identifier(f"store_{model}"))
            for r in conn.execute(query):
                got.setdefault(int(r[0]), []).append(r)
            stored = Counter(
                int(r[0])
                for r in conn.execute(
                    sql.SQL("SELECT doc_id FROM pgingest.{}").format(
                        sql.Identifier(f"store_{model}")
                    )
                )
            )
            state = {
                int(r[0]): (bytes(r[1]), int(r[2]))
                for r in conn.execute(
                    "SELECT doc_id, content_hash, chunk_count FROM pgingest.embedding_state"
                    " WHERE model = %s",
                    (model,),
                )
            }
            for (doc_id, key, _title, _text, h, _), chunks in zip(good, predicted, strict=True):
                rows = got.get(doc_id, [])
                want = [
                    (c.ordinal, c.text, c.char_start, c.char_end, c.token_count) for c in chunks
                ]
                have = [(r[1], r[2], r[3], r[4], r[5]) for r in rows]
                if want != have:
                    wrong.append(f"{model} {key} ({len(have)} chunks, {len(want)} predicted)")
                    continue
                if stored[doc_id] != len(chunks):
                    wrong.append(f"{model} {key}: {stored[doc_id]} vectors, {len(chunks)} chunks")
                for c, r in zip(chunks, rows, strict=True):
                    if (
                        bytes(r[6]) != hashlib.sha256(c.embed_input.encode()).digest()
                        or r[7] != cfg.version
                    ):
                        wrong.append(f"{model} {key} chunk {c.ordinal}: hash or chunker differs")
                    if r[8] != dims or r[9] is None or abs(float(r[9]) - 1.0) > 1e-3:
                        bad_vectors.append(
                            f"{model} {key} chunk {c.ordinal}: dims {r[8]}, norm {r[9]}"
                        )
                if state.get(doc_id) != (h, len(chunks)):
                    wrong.append(
                        f"{model} {key}: embedding_state {state.get(doc_id)!r} is not its"
                        " latest version"
                    )
            # A dead-lettered version keeps nothing of an older one: no vector or state (and no
            # chunk: checked apart below).
            for doc_id, key, *_ in bad:
                if stored[doc_id] or doc_id in state:
                    wrong.append(
                        f"{model} {key} (dead-lettered): {stored[doc_id]} vectors,"
                        f" state {state.get(doc_id)!r} left"
                    )
                if got.get(doc_id):
                    leftovers.add(f"{key}: {got[doc_id][0][2][:40]!r}")
        n_art = sum(1 for d in good if d[1].startswith("article "))
        n_files = sum(1 for d in good if d[0] in self.raw_starts)
        self.record(
            not wrong,
            "chunks as predicted",
            f"{len(good):,} live good documents ({n_art:,} of them rows of {ARTICLES}, {n_files}"
            f" parsed files of {FILES}),"
            f" {n_chunks:,} chunks, each exactly as chunk_documents predicts for the latest"
            f" version, embedding_state current, for {' and '.join(MODELS)}; the"
            f" {len(bad)} dead-lettered ones hold no vector or state"
            + (f"; {len(wrong)} wrong: {wrong[:6]}" if wrong else ""),
        )
        # A row whose current version is dead-lettered (the articles emptied mid-run) must not
        # keep the chunks of its previous, embedded version: hybrid search reads chunks.tsv
        # without the store, and would still find the text the application removed.
        self.record(
            not leftovers,
            "no chunk of an older version",
            f"{len(bad)} dead-lettered documents ({self.state.emptied_after_embedding} of them"
            f" rows emptied, {self.state.spoiled_after_embedding} a file spoiled, after their"
            " first version was embedded) hold no chunk"
            + (
                f"; {len(leftovers)} still hold their older version's: {sorted(leftovers)[:4]}"
                if leftovers
                else ""
            ),
        )
        self.record(
            not bad_vectors,
            "vectors",
            "every chunk has a vector of norm 1 (+-1e-3) in each model's store: "
            + ", ".join(f"{m} {d} dims" for m, d in MODELS.items())
            + (f"; {len(bad_vectors)} bad: {bad_vectors[:5]}" if bad_vectors else ""),
        )
        dup = conn.execute(
            "SELECT count(*) FROM (SELECT doc_id, ordinal, profile_id FROM pgingest.chunks"
            " GROUP BY 1, 2, 3 HAVING count(*) > 1) AS s"
        ).fetchone()
        gaps = conn.execute(
            "SELECT count(*) FROM (SELECT doc_id FROM pgingest.chunks GROUP BY doc_id, profile_id"
            " HAVING max(ordinal) + 1 <> count(*)) AS s"
        ).fetchone()
        twice = conn.execute(
            "SELECT count(*) FROM (SELECT doc_id, source FROM pgingest.source_documents"
            " GROUP BY 1, 2 HAVING count(*) > 1) AS s"
        ).fetchone()
        assert dup is not None and gaps is not None and twice is not None
        self.record(
            dup[0] == 0 and gaps[0] == 0 and twice[0] == 0,
            "no duplicate chunk",
            f"{dup[0]} duplicated (doc_id, ordinal), {gaps[0]} documents with gaps in ordinals,"
            f" {twice[0]} doc_ids listed twice in source_documents",
        )

    def check_deleted(self, conn: psycopg.Connection[Any]) -> None:
        ids = sorted(self.state.deleted_ids)
        art_ids = sorted(self.state.art_deleted_ids)
        file_ids = sorted(self.state.file_deleted_ids)

        def gone(table: str, alias: str) -> sql.Composable:
            return sql.SQL(
                "(SELECT count(*) FROM pgingest.{t} AS {a} WHERE NOT EXISTS"
                " (SELECT 1 FROM pgingest.source_documents AS d WHERE d.doc_id = {a}.doc_id))"
            ).format(t=sql.Identifier(table), a=sql.Identifier(alias))

        vectors = sql.SQL(" + ").join(
            [gone("chunks", "c"), *(gone(f"store_{m}", "c") for m in MODELS)]
        )
        row = conn.execute(
            sql.SQL(
                "SELECT {vectors}, {state},"
                " (SELECT count(*) FROM pgingest.dead_letters AS l WHERE l.doc_id IS NOT NULL"
                "   AND NOT EXISTS (SELECT 1 FROM pgingest.source_documents AS d"
                "                   WHERE d.doc_id = l.doc_id)),"
                " (SELECT count(*) FROM pgingest.documents WHERE id = ANY (%s)),"
                " (SELECT count(*) FROM pgingest.source_rows WHERE doc_id = ANY (%s))"
            ).format(vectors=vectors, state=gone("embedding_state", "s")),
            (ids, art_ids + file_ids),
        ).fetchone()
        assert row is not None
        self.record(
            all(v == 0 for v in row) and len(ids) > 0 and len(art_ids) > 0 and len(file_ids) > 0,
            "deleted documents leave nothing",
            f"{len(ids)} deleted documents, {len(art_ids)} deleted (or moved) rows of"
            f" {ARTICLES} and {len(file_ids)} deleted files of {FILES}: {row[0]} orphan chunks and vectors ({', '.join(MODELS)}), {row[1]}"
            f" orphan states, {row[2]} orphan dead letters, {row[3]} deleted ids still present,"
            f" {row[4]} deleted rows still registered",
        )

    def check_dead_letters(
        self,
        conn: psycopg.Connection[Any],
        live: list[tuple[int, str, str | None, str, bytes, tuple[str, str] | None]],
    ) -> None:
        """Per model: exactly the planted bad documents (and rows of the articles table whose
        current text is poisoned or none) are dead-lettered, each for its current version with
        the reason its poison calls for; nothing else (no capture_failed, no letter without a
        document)."""
        expect = {d[0]: (d[1], d[5]) for d in live if d[5] is not None}
        rows = conn.execute(
            "SELECT l.model, l.doc_id, l.doc_key, l.error_class, l.error_message,"
            " l.content_hash = d.content_hash,"
            " EXISTS (SELECT 1 FROM pgingest.embedding_state s"
            "         WHERE s.doc_id = l.doc_id AND s.model = l.model)"
            " FROM pgingest.dead_letters l LEFT JOIN pgingest.source_documents d ON d.doc_id = l.doc_id"
        ).fetchall()
        details = [
            f"{len(rows)} dead letters for {len(expect)} planted bad documents"
            f" ({sum(1 for v in expect.values() if v[0].startswith('article '))} of them rows of"
            f" {ARTICLES}) x {len(MODELS)} models",
            ", ".join(f"{c} {n}" for c, n in sorted(Counter(r[3] for r in rows).items())),
        ]
        ok = True
        for model in MODELS:
            letters = {r[1]: r for r in rows if r[0] == model}
            unexpected = [r for r in rows if r[0] == model and r[1] not in expect]
            missing = sorted(expect[i][0] for i in expect if i not in letters)
            wrong = []
            for doc_id, (label, failure) in sorted(expect.items()):
                r = letters.get(doc_id)
                if r is None or failure is None:
                    continue
                error_class, word = failure
                if r[3] != error_class or word not in r[4] or not r[5] or r[6]:
                    wrong.append(f"{label}: {r[3]}: {r[4][:120]}")
            if unexpected:
                ok = False
                details.append(
                    f"{model} unexpected: "
                    + "; ".join(f"{r[1]} {r[2]}: {r[3]}: {r[4][:100]}" for r in unexpected[:5])
                )
            if missing:
                ok = False
                details.append(f"{model} missing: {missing[:5]}")
            if wrong:
                ok = False
                details.append(f"{model} wrong reason: {wrong[:5]}")
        others = [r for r in rows if r[0] not in MODELS]
        if others:
            ok = False
            details.append(f"{len(others)} letters of other models")
        self.record(ok, "dead letters", "; ".join(details))
        if rows:
            sample: dict[str, str] = {}
            for r in rows:
                sample.setdefault(r[3], r[4])
            for error_class, message in sorted(sample.items()):
                print(f"      e.g. {error_class}: {message[:110]}", flush=True)

    def check_files(self, conn: psycopg.Connection[Any]) -> None:
        """The document source in one line: each planted poisoned file is dead-lettered, for
        every model, with the class it was planted for (and the parse here agrees); every other
        file is embedded for every model with its current version."""
        letters = {
            (r[0], int(r[1])): r[2]
            for r in conn.execute(
                "SELECT l.model, l.doc_id, l.error_class FROM pgingest.dead_letters AS l"
                " JOIN pgingest.source_documents AS d ON d.doc_id = l.doc_id"
                " AND d.content_hash = l.content_hash"
            )
        }
        states = {
            (r[0], int(r[1]))
            for r in conn.execute(
                "SELECT e.model, e.doc_id FROM pgingest.embedding_state AS e"
                " JOIN pgingest.source_documents AS d ON d.doc_id = e.doc_id"
                " AND d.content_hash = e.content_hash"
            )
        }
        problems = []
        planted_seen = []
        for fid, kind in sorted(self.planted_files.items(), key=lambda kv: kv[1]):
            want = FILE_POISONS[kind][2]
            if fid not in self.file_outcomes:
                problems.append(f"planted {kind} (file {fid}) is not in the table")
                continue
            doc_id, _, predicted = self.file_outcomes[fid]
            got = {
                m: letters.get((m, doc_id), "embedded" if (m, doc_id) in states else "nowhere")
                for m in MODELS
            }
            planted_seen.append(f"{kind} {'/'.join(sorted(set(got.values())))}")
            if predicted != want:
                problems.append(f"planted {kind}: parsed here as {predicted}, planted as {want}")
            if any(v != want for v in got.values()):
                problems.append(f"planted {kind}: {got}, want {want}")
        good = [(fid, o) for fid, o in self.file_outcomes.items() if o[1] == "good"]
        embedded = Counter[str]()
        for fid, (doc_id, _, predicted) in good:
            for m in MODELS:
                if (m, doc_id) in states and predicted is None:
                    embedded[m] += 1
                else:
                    where = letters.get((m, doc_id), "nowhere")
                    problems.append(f"good file {fid} ({predicted or 'parsed'}): {m} {where}")
        types = Counter(
            self.files[fid][1].split("-", 1)[1] for fid, _ in good if self.files[fid][1]
        )
        self.record(
            not problems and len(planted_seen) == len(FILE_POISONS),
            "document source",
            f"planted {len(FILE_POISONS)} poisoned files, each dead-lettered with its class for"
            f" {' and '.join(MODELS)}: {', '.join(planted_seen)}; {len(good)} good files"
            f" ({', '.join(f'{t} {n}' for t, n in sorted(types.items()))}) embedded for "
            + ", ".join(f"{m} {embedded[m]}" for m in MODELS)
            + f"; {self.state.parse_orphans} parse processes outlived a SIGKILLed worker"
            + (f"; {len(problems)} wrong: {problems[:6]}" if problems else ""),
        )

    def print_log_tails(self) -> None:
        for path in sorted(self.logdir.glob("*.log")):
            text = path.read_text("utf-8", "replace").splitlines()
            interesting = [
                line
                for line in text
                if " WARNING " in line or " ERROR " in line or "Traceback" in line
            ]
            print(
                f"--- {path.name}: {len(text)} lines, {len(interesting)} warnings/errors",
                flush=True,
            )
            for line in interesting[-8:]:
                print("    " + line[:300], flush=True)


UPDATE_BODY = "UPDATE pgingest.documents SET body = %s WHERE key = %s"


TRACE_SQL = """
CREATE SCHEMA IF NOT EXISTS chaos_trace;
CREATE TABLE IF NOT EXISTS chaos_trace.ops (
    id bigserial PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT clock_timestamp(),
    tbl text NOT NULL,
    op text NOT NULL,
    doc_id bigint,
    old jsonb,
    new jsonb,
    pid integer NOT NULL DEFAULT pg_backend_pid(),
    app text DEFAULT current_setting('application_name'),
    xid bigint DEFAULT txid_current()
);
CREATE INDEX IF NOT EXISTS ops_doc ON chaos_trace.ops (doc_id);
CREATE OR REPLACE FUNCTION chaos_trace.log() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog AS $t$
DECLARE
    o jsonb := CASE WHEN TG_OP <> 'INSERT' THEN to_jsonb(OLD) END;
    n jsonb := CASE WHEN TG_OP <> 'DELETE' THEN to_jsonb(NEW) END;
    r jsonb := coalesce(n, o);
BEGIN
    INSERT INTO chaos_trace.ops (tbl, op, doc_id, old, new)
    VALUES (TG_TABLE_NAME, TG_OP,
        coalesce(r ->> 'doc_id', r -> 'message' ->> 'doc_id')::bigint, o, n);
    RETURN NULL;
END $t$;
"""
"""--trace: an audit of every row change of the tables that decide a document's fate."""

TRACED = (
    "pgingest.source_rows",
    "pgingest.embedding_state",
    "pgingest.dead_letters",
    "pgingest.provider_batches",
)


def trace_table(conn: psycopg.Connection[Any], table: str) -> None:
    schema, name = table.split(".")
    conn.execute(
        sql.SQL(
            "CREATE TRIGGER chaos_trace AFTER INSERT OR UPDATE OR DELETE ON {}"
            " FOR EACH ROW EXECUTE FUNCTION chaos_trace.log()"
        ).format(sql.Identifier(schema, name))
    )


def trace_queue(conn: psycopg.Connection[Any], model: str) -> None:
    row = conn.execute(
        "SELECT queue_name FROM pgingest.models WHERE name = %s", (model,)
    ).fetchone()
    assert row is not None
    trace_table(conn, f"pgmq.q_{row[0]}")


def insert_articles(conn: psycopg.Connection[Any], rows: list[Article], style: str) -> None:
    """Idempotent inserts into the articles table: one multi-row statement, a statement per row
    in one transaction (a trigger run each), or COPY into a staging table then one INSERT."""
    if style == "copy":
        with conn.transaction():
            conn.execute(
                "CREATE TEMP TABLE IF NOT EXISTS chaos_stage (tenant_id uuid, id bigint,"
                " title text, body text, tags text[]) ON COMMIT DELETE ROWS"
            )
            with conn.cursor().copy(
                "COPY chaos_stage (tenant_id, id, title, body, tags) FROM STDIN"
            ) as cp:
                for a in rows:
                    cp.write_row((a.tenant, a.id, a.title, a.body, a.tags))
            conn.execute(
                "INSERT INTO public.chaos_articles (tenant_id, id, title, body, tags)"
                " SELECT tenant_id, id, title, body, tags FROM chaos_stage ON CONFLICT DO NOTHING"
            )
    elif style == "rows":
        with conn.transaction(), conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO public.chaos_articles (tenant_id, id, title, body, tags)"
                " VALUES (%s, %s, %s, %s, %s::text[]) ON CONFLICT DO NOTHING",
                [(a.tenant, a.id, a.title, a.body, a.tags) for a in rows],
            )
    else:
        conn.execute(
            "INSERT INTO public.chaos_articles (tenant_id, id, title, body, tags)"
            " SELECT * FROM jsonb_to_recordset(%s::jsonb)"
            " AS x (tenant_id uuid, id bigint, title text, body text, tags text[])"
            " ON CONFLICT DO NOTHING",
            (json.dumps([a.row() for a in rows]),),
        )


def insert_files(conn: psycopg.Connection[Any], rows: list[FileRow], style: str) -> None:
    """Idempotent inserts into the files table: one statement over arrays, or a statement per
    row in one transaction."""
    if style == "rows":
        with conn.transaction(), conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO public.chaos_files (id, name, data, mime) VALUES (%s, %s, %s, %s)"
                " ON CONFLICT DO NOTHING",
                [(f.id, f.name, f.data, f.mime) for f in rows],
            )
    else:
        conn.execute(
            "INSERT INTO public.chaos_files (id, name, data, mime)"
            " SELECT * FROM unnest(%s::bigint[], %s::text[], %s::bytea[], %s::text[])"
            " ON CONFLICT DO NOTHING",
            (
                [f.id for f in rows],
                [f.name for f in rows],
                [f.data for f in rows],
                [f.mime for f in rows],
            ),
        )


def embedded_file(conn: psycopg.Connection[Any], fid: int) -> bool:
    """Has this row of the files table a version embedded for model v1?"""
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pgingest.source_rows AS r"
        " JOIN pgingest.sources AS s ON s.id = r.source_id AND s.name = %s"
        " JOIN pgingest.embedding_state AS e ON e.doc_id = r.doc_id AND e.model = %s"
        " WHERE r.row_key = jsonb_build_object('id', %s::bigint))",
        (FILES_SOURCE, MODEL, fid),
    ).fetchone()
    return bool(row and row[0])


def embedded_row(conn: psycopg.Connection[Any], key: tuple[str, int]) -> bool:
    """Has this row of the articles table a version embedded for model v1?"""
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pgingest.source_rows AS r"
        " JOIN pgingest.sources AS s ON s.id = r.source_id AND s.name = %s"
        " JOIN pgingest.embedding_state AS e ON e.doc_id = r.doc_id AND e.model = %s"
        " WHERE r.row_key = jsonb_build_object('tenant_id', %s::uuid, 'id', %s::bigint))",
        (SOURCE, MODEL, *key),
    ).fetchone()
    return bool(row and row[0])


def max_response_cap() -> int:
    """The largest answer the worker's client reads for one request of this run (the biggest
    model, a full request): providers.OpenAICompatibleProvider.response_limit."""
    per_input = (
        max(MODELS.values()) * providers.RESPONSE_BYTES_PER_DIMENSION
        + providers.RESPONSE_BYTES_PER_INPUT
    )
    return max(providers.MIN_RESPONSE_BYTES, WorkerSettings().request_max_inputs * per_input)


def queue_table(queue_name: str) -> sql.Composable:
    return sql.Identifier("pgmq", f"q_{queue_name}")


def live_queues(conn: psycopg.Connection[Any]) -> list[tuple[str, str]]:
    """(model, queue name) of every live model."""
    return [
        (str(r[0]), str(r[1]))
        for r in conn.execute(
            "SELECT name, queue_name FROM pgingest.models WHERE state <> 'retired' ORDER BY name"
        )
    ]


def count_rows(conn: psycopg.Connection[Any], table: sql.Composable) -> int:
    row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(table)).fetchone()
    assert row is not None
    return int(row[0])


def queued_messages(conn: psycopg.Connection[Any]) -> tuple[int, int]:
    """(messages in every live model's queue, live models), as the current snapshot sees them."""
    queues = live_queues(conn)
    return sum(count_rows(conn, queue_table(q)) for _, q in queues), len(queues)


def insert_docs(conn: psycopg.Connection[Any], docs: list[Doc], style: str) -> None:
    """Idempotent inserts (a retried batch inserts nothing twice), in three styles."""
    if style == "copy":
        rows: list[Any] = [(d.key, d.title, d.body, d.metadata) for d in docs]  # title may be None
        db.upsert_documents(conn, rows)
    elif style == "rows":
        with conn.transaction(), conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO pgingest.documents (key, title, body, metadata)"
                " VALUES (%s, %s, %s, %s::jsonb) ON CONFLICT (key) DO NOTHING",
                [(d.key, d.title, d.body, json.dumps(d.metadata)) for d in docs],
            )
    else:
        conn.execute(
            "INSERT INTO pgingest.documents (key, title, body, metadata)"
            " SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::jsonb[])"
            " ON CONFLICT (key) DO NOTHING",
            (
                [d.key for d in docs],
                [d.title for d in docs],
                [d.body for d in docs],
                [json.dumps(d.metadata) for d in docs],
            ),
        )


def reconnected(log: str) -> bool:
    """The log shows a lost connection, then a batch written after it."""
    lost = log.find("reconnecting")
    return lost >= 0 and log.find("pgingest.worker: batch ", lost) >= 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    old = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--docs", type=int, default=None, help="good documents (default 20,000; --small 1,500)"
    )
    p.add_argument("--small", action="store_true", help="the size make test runs (1,500 documents)")
    p.add_argument("--bad", type=int, default=50, help="planted bad documents (default 50)")
    p.add_argument(
        "--articles",
        type=int,
        default=None,
        help="rows of the attached table public.chaos_articles (default: documents / 5, at least 100)",
    )
    p.add_argument(
        "--files",
        type=int,
        default=None,
        help="good rows of the document source public.chaos_files (default: documents / 40,"
        " at least 42)",
    )
    p.add_argument("--writers", type=int, default=4)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--kills", type=int, default=5, help="at least this many SIGKILLs (default 5)")
    p.add_argument(
        "--write-seconds", type=float, default=None, help="spread the inserts over this long"
    )
    p.add_argument(
        "--deadline",
        type=float,
        default=None,
        help="give up after this many seconds (default 540; 1,200 for the full run)",
    )
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--database-url", default=None, help="default: $DATABASE_URL, else the private cluster"
    )
    p.add_argument("--no-pg-restart", action="store_true", help="do not restart PostgreSQL")
    p.add_argument(
        "--managed",
        action="store_true",
        help="run as on a managed service (issue 23): a non-superuser owner with CREATEDB and"
        " CREATEROLE installs pgingest with pgmq as plain SQL; no plpython3u; CREATE EXTENSION"
        " refused in the database",
    )
    p.add_argument("--keep", action="store_true", help="keep the database and the logs")
    p.add_argument(
        "--trace",
        action="store_true",
        help="record every change to the queues, source_rows and embedding_state in"
        " chaos_trace.ops (row triggers; the database is kept when a check fails)",
    )
    args = p.parse_args(argv)
    if args.docs is not None and args.docs < 100:
        p.error("--docs must be at least 100")
    chaos = Chaos(args, make_plan(args))
    passed = False
    try:
        with _sigterm_as_interrupt():
            passed = chaos.run()
    except KeyboardInterrupt:
        say("interrupted")
    finally:
        chaos.cleanup(passed)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
