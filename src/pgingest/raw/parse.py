"""Parsing documents into structured text: a list of :class:`Block` (text, page number, heading
path), so that the chunker can prefer heading boundaries and a chunk can cite "page 12,
section 3.2".

Formats (docs/raw-documents.md has the measurements behind each default):

* PDF: pypdfium2 (default) or pypdf, page by page; headings from the document outline
  (bookmarks), matched to the lines of their page. A PDF without a text layer (a scan) is
  ``empty_text``; one that needs a password ``encrypted``; more pages than the cap ``too_large``.
* DOCX: python-docx (default; paragraphs styled ``Heading N`` make the heading path, tables
  as ``a | b`` rows) or mammoth (Word styles -> HTML headings -> Markdown).
* HTML: the main content with trafilatura (default) or BeautifulSoup + markdownify (navigation,
  header, footer, aside, scripts removed), as Markdown.
* Markdown and plain text: charset detection with charset-normalizer; Markdown headings (ATX and
  setext, outside code fences) make the heading path.

Isolation: :class:`ParsePool` parses each document in a child process (``spawn``) with a
wall-clock timeout, an address-space limit (``RLIMIT_AS`` set in the child) and a page cap. A
parser that hangs, crashes or exceeds memory costs that document only (``timeout``, ``oom``,
``parse_error``), and its child is replaced. The pool has its own size, apart from the embedding
concurrency; :meth:`ParsePool.submit` returns a future, so an asyncio loop awaits it with
``asyncio.wrap_future`` and is never blocked.
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing
import multiprocessing.util
import os
import queue
import re
import signal
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from pgingest.raw import detect
from pgingest.raw.errors import RawDocumentError


@dataclass(frozen=True)
class Block:
    """A run of text: ``kind`` is ``"heading"`` (its text is the heading, the last element of its
    own ``heading_path``) or ``"text"``. ``page`` is 1-based, ``None`` for formats without pages."""

    text: str
    kind: str = "text"
    page: int | None = None
    heading_path: tuple[str, ...] = ()


@dataclass(frozen=True)
class ParsedDocument:
    mime: str
    parser: str
    blocks: tuple[Block, ...]
    pages: int | None = None

    def text(self) -> str:
        return "\n\n".join(b.text for b in self.blocks)


@dataclass(frozen=True)
class ParseOptions:
    """What a parse may cost, and which backends. ``memory_bytes`` is the child's address-space
    limit (``RLIMIT_AS``; ``None``: no limit)."""

    timeout_s: float = 60.0
    memory_bytes: int | None = 1 << 30
    max_pages: int = 2000
    pdf_backend: str = "pypdfium2"
    html_backend: str = "trafilatura"
    docx_backend: str = "python-docx"


# --- text decoding ---------------------------------------------------------------------------


_PREFERRED_ON_TIE = ("cp1252", "latin_1", "iso8859_15")


def decode_text(data: bytes) -> str:
    """Bytes to str: a BOM, then strict UTF-8, then charset-normalizer's best guess."""
    if data.startswith(b"\xef\xbb\xbf"):
        return data[3:].decode("utf-8", errors="replace")
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16", errors="replace")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    from charset_normalizer import from_bytes

    matches = from_bytes(data)
    best = matches.best()
    if best is None:
        raise RawDocumentError("parse_error", "not text in any known encoding")
    # Short Western text often ties between cp1250, cp1252, cp1257...: prefer the legacy default
    # of the web and of Windows (cp1252, a superset of Latin-1's printable range) on a tie.
    for match in matches:
        tied = match.chaos == best.chaos and match.coherence == best.coherence
        if tied and match.encoding in _PREFERRED_ON_TIE:
            return str(match)
    return str(best)


# --- Markdown -> blocks ----------------------------------------------------------------------

_ATX = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")


class _Sections:
    """Collects blocks under a heading stack."""

    def __init__(self) -> None:
        self.stack: list[tuple[int, str]] = []
        self.blocks: list[Block] = []
        self.lines: list[str] = []
        self.page: int | None = None

    def path(self) -> tuple[str, ...]:
        return tuple(title for _, title in self.stack)

    def flush(self) -> None:
        text = "\n".join(self.lines).strip()
        self.lines = []
        if text:
            self.blocks.append(Block(text, "text", self.page, self.path()))

    def heading(self, level: int, title: str) -> None:
        self.flush()
        title = " ".join(title.split())
        if not title:
            return
        while self.stack and self.stack[-1][0] >= level:
            self.stack.pop()
        self.stack.append((level, title))
        self.blocks.append(Block(title, "heading", self.page, self.path()))


def markdown_blocks(text: str) -> list[Block]:
    """Markdown to blocks: ATX (``## Title``) and setext (``Title`` over ``===``/``---``) headings
    outside fenced code make the heading path; the text between them is one block."""
    s = _Sections()
    fence: str | None = None
    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        m = _FENCE.match(line)
        if fence is not None:
            s.lines.append(line)
            if m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence):
                fence = None
            continue
        if m:
            fence = m.group(1)
            s.lines.append(line)
            continue
        atx = _ATX.match(line)
        if atx:
            s.heading(len(atx.group(1)), atx.group(2) or "")
            continue
        setext = _SETEXT.match(line)
        if (
            setext
            and s.lines
            and s.lines[-1].strip()
            and (len(s.lines) == 1 or not s.lines[-2].strip())
        ):
            title = s.lines.pop()
            s.heading(1 if setext.group(1)[0] == "=" else 2, title)
            continue
        s.lines.append(line)
    s.flush()
    return s.blocks


# --- PDF -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _OutlineEntry:
    level: int
    title: str
    page: int  # 0-based


def _norm(line: str) -> str:
    return " ".join(line.split()).casefold()


def pdf_blocks(pages: Iterable[str], outline: list[_OutlineEntry]) -> list[Block]:
    """Page texts and the outline to blocks: a line equal to an outline entry of its page starts
    that section there; an entry whose title is not found on its page starts at the page's top."""
    by_page: dict[int, list[_OutlineEntry]] = {}
    for entry in outline:
        by_page.setdefault(entry.page, []).append(entry)
    s = _Sections()
    for index, page_text in enumerate(pages):
        s.flush()
        s.page = index + 1
        pending = list(by_page.get(index, []))
        lines = page_text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
        titles = {_norm(line) for line in lines}
        for entry in [e for e in pending if _norm(e.title) not in titles]:
            s.heading(entry.level, entry.title)
            pending.remove(entry)
        for line in lines:
            if pending and _norm(line) == _norm(pending[0].title):
                entry = pending.pop(0)
                s.heading(entry.level, entry.title)
                continue
            s.lines.append(line.rstrip())
    s.flush()
    return s.blocks


def _pdf_pypdfium2(data: bytes, max_pages: int) -> tuple[list[str], list[_OutlineEntry]]:
    import pypdfium2 as pdfium

    try:
        doc = pdfium.PdfDocument(data)
    except pdfium.PdfiumError as exc:
        if "password" in str(exc).lower():
            raise RawDocumentError("encrypted", "the PDF needs a password") from None
        raise RawDocumentError("parse_error", f"pdfium: {exc}") from None
    try:
        count = len(doc)
        if count > max_pages:
            raise RawDocumentError("too_large", f"{count} pages over the cap of {max_pages}")
        outline = []
        for bm in doc.get_toc():
            dest = bm.get_dest()
            index = dest.get_index() if dest is not None else None
            if index is not None:
                outline.append(_OutlineEntry(bm.level + 1, bm.get_title(), index))
        texts = []
        for i in range(count):
            page = doc[i]
            textpage = page.get_textpage()
            texts.append(textpage.get_text_range())
            textpage.close()
            page.close()
        return texts, outline
    finally:
        doc.close()


def _pdf_pypdf(data: bytes, max_pages: int) -> tuple[list[str], list[_OutlineEntry]]:
    import pypdf
    from pypdf.errors import DependencyError, FileNotDecryptedError, PdfReadError

    try:
        reader = pypdf.PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            try:
                if not reader.decrypt(""):
                    raise RawDocumentError("encrypted", "the PDF needs a password")
            except (DependencyError, FileNotDecryptedError, NotImplementedError):
                raise RawDocumentError("encrypted", "the PDF needs a password") from None
        count = len(reader.pages)
        if count > max_pages:
            raise RawDocumentError("too_large", f"{count} pages over the cap of {max_pages}")
        outline: list[_OutlineEntry] = []

        def walk(items: list[Any], level: int) -> None:
            for item in items:
                if isinstance(item, list):
                    walk(item, level + 1)
                    continue
                page = reader.get_destination_page_number(item)
                if page is not None and page >= 0:
                    outline.append(_OutlineEntry(level, str(item.title), page))

        walk(reader.outline, 1)
        return [page.extract_text() or "" for page in reader.pages], outline
    except RawDocumentError:
        raise
    except FileNotDecryptedError:
        raise RawDocumentError("encrypted", "the PDF needs a password") from None
    except (PdfReadError, ValueError, KeyError, TypeError) as exc:
        raise RawDocumentError("parse_error", f"pypdf: {type(exc).__name__}: {exc}") from None


_PDF_BACKENDS = {"pypdfium2": _pdf_pypdfium2, "pypdf": _pdf_pypdf}


# --- HTML and DOCX ---------------------------------------------------------------------------

_CHROME = ("nav", "header", "footer", "aside", "script", "style", "noscript", "form", "template")


def html_to_markdown(html: bytes | str, backend: str = "trafilatura") -> str:
    """The main content of an HTML page as Markdown (headings as ``#``)."""
    if backend == "trafilatura":
        import trafilatura

        out = trafilatura.extract(
            html,
            output_format="markdown",
            include_formatting=True,
            include_tables=True,
            include_comments=False,
            include_links=False,
            favor_recall=True,
        )
        return out or ""
    if backend == "bs4":
        from bs4 import BeautifulSoup
        from markdownify import markdownify

        soup = BeautifulSoup(html, "lxml")
        for tag in soup.find_all(_CHROME):
            tag.decompose()
        for role in ("navigation", "banner", "contentinfo"):
            for tag in soup.find_all(True, attrs={"role": role}):
                tag.decompose()
        root = soup.find("main") or soup.find("article") or soup.body or soup
        return str(markdownify(str(root), heading_style="ATX"))
    raise ValueError(f"unknown HTML backend {backend!r}")


_HEADING_STYLE = re.compile(r"^Heading ([1-9])$")


def docx_blocks(data: bytes) -> list[Block]:
    """DOCX with python-docx: paragraphs and tables in document order; paragraphs styled
    ``Heading N`` (or ``Title``) make the heading path; a table's rows become ``a | b`` lines."""
    import zipfile

    import docx
    from docx.text.paragraph import Paragraph

    try:
        document = docx.Document(io.BytesIO(data))
    except (zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise RawDocumentError("parse_error", f"DOCX: {type(exc).__name__}: {exc}") from None
    s = _Sections()
    for item in document.iter_inner_content():
        if isinstance(item, Paragraph):
            style = item.style.name if item.style is not None else ""
            text = item.text.strip()
            m = _HEADING_STYLE.match(style or "")
            if text and (m or style == "Title"):
                s.heading(int(m.group(1)) if m else 1, text)
            else:
                s.lines.append(item.text)
        else:
            s.lines.append("")
            for row in item.rows:
                s.lines.append(" | ".join(" ".join(c.text.split()) for c in row.cells))
            s.lines.append("")
    s.flush()
    return s.blocks


def docx_to_markdown(data: bytes) -> str:
    """Word's heading styles become HTML headings (mammoth), then Markdown."""
    import zipfile

    import mammoth
    from markdownify import markdownify

    try:
        result = mammoth.convert_to_html(io.BytesIO(data))
    except (zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise RawDocumentError("parse_error", f"DOCX: {type(exc).__name__}: {exc}") from None
    return str(markdownify(result.value, heading_style="ATX"))


# --- one document, in the current process ----------------------------------------------------


def parse_bytes(data: bytes, mime: str, options: ParseOptions | None = None) -> ParsedDocument:
    """Parse ``data`` of type ``mime`` (see :mod:`pgingest.raw.detect`) in this process, with the
    page cap but no timeout or memory limit (:class:`ParsePool` adds those)."""
    options = options or ParseOptions()
    if not data.strip():
        raise RawDocumentError("empty_text", "0 bytes" if not data else "only whitespace")
    pages: int | None = None
    if mime == detect.PDF:
        backend = options.pdf_backend
        page_texts, outline = _PDF_BACKENDS[backend](data, options.max_pages)
        pages = len(page_texts)
        blocks = pdf_blocks(page_texts, outline)
        parser = backend
    elif mime == detect.DOCX:
        if options.docx_backend == "python-docx":
            blocks, parser = docx_blocks(data), "python-docx"
        elif options.docx_backend == "mammoth":
            blocks, parser = markdown_blocks(docx_to_markdown(data)), "mammoth"
        else:
            raise ValueError(f"unknown DOCX backend {options.docx_backend!r}")
    elif mime == detect.HTML:
        backend = options.html_backend
        blocks, parser = markdown_blocks(html_to_markdown(data, backend)), backend
    elif mime == detect.MARKDOWN:
        blocks, parser = markdown_blocks(decode_text(data)), "markdown"
    elif mime == detect.TEXT:
        text = decode_text(data).replace("\r\n", "\n").strip()
        blocks, parser = ([Block(text)] if text else []), "text"
    else:
        raise RawDocumentError("unsupported_type", f"no parser for {mime!r}")
    if not any(b.kind == "text" and b.text.strip() for b in blocks):
        what = "no text layer (a scan? OCR is off)" if mime == detect.PDF else "no text"
        raise RawDocumentError("empty_text", what)
    return ParsedDocument(mime=mime, parser=parser, blocks=tuple(blocks), pages=pages)


# --- isolation: one child process per slot ---------------------------------------------------

# Test hooks, only reachable through ParsePool.parse(test_hook=...) (never from document bytes).
# "slow": the parse takes SLOW_HOOK_S more, then goes on as usual (a big PDF, say).
_TEST_HOOKS = frozenset({"hang", "alloc", "crash", "slow"})
SLOW_HOOK_S = 2.0


# The default backends, imported by a child before it says it is ready: their import time (a
# second or more on a loaded machine) is not counted in the first document's parse timeout.
_WARM_MODULES = ("charset_normalizer", "pypdfium2", "docx", "trafilatura")


def _warm_up(options: ParseOptions) -> None:
    import importlib

    modules = list(_WARM_MODULES)
    if options.pdf_backend == "pypdf":
        modules.append("pypdf")
    for name in modules:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)


ORPHAN_CHECK_S = 1.0
"""How often a parse process checks that the worker that started it is alive."""


def _exit_when_orphaned(parent: int) -> None:
    """A daemon thread of the child: once the worker is gone (a SIGKILL, the OOM killer; the
    child is then re-parented), the child exits, even in the middle of a parse, instead of
    parsing on for nobody and writing a broken pipe's traceback into the worker's log."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(ORPHAN_CHECK_S)
        os._exit(0)

    threading.Thread(target=watch, name="pgingest-orphan-check", daemon=True).start()


def _child_main(
    conn: Connection, memory_bytes: int | None, options: ParseOptions | None = None
) -> None:
    """The child's loop: import the parsers and say ("ready",), then receive (data, mime,
    options, hook), answer ("ok", doc) or ("err", class, detail). Runs under ``RLIMIT_AS``;
    exits after a MemoryError, or when the worker that started it is gone.

    SIGINT and SIGTERM are ignored: a Ctrl-C in a terminal, and a ``systemctl stop``
    (KillMode=control-group sends SIGTERM to every process of the service), reach the children
    too, and a child killed in the middle of a parse would cost its document. The worker stops
    them itself once its batch is done (:meth:`ParsePool.close`: told to exit, SIGKILL after
    5 s), and at the interpreter's exit (:func:`_kill_children_at_exit`)."""
    _exit_when_orphaned(os.getppid())
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if memory_bytes:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    try:
        _warm_up(options or ParseOptions())
        conn.send(("ready",))
    except (EOFError, OSError):
        return
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):
            return
        if request is None:
            # Nothing to flush or clean up: the interpreter's teardown of the parsers' modules
            # (lxml, pdfium, trafilatura) took 1-2 s of a loaded machine at every pool close.
            os._exit(0)
        data, mime, options, hook = request
        hog: list[bytearray] = []
        try:
            if hook == "hang":
                while True:
                    time.sleep(1)
            if hook == "alloc":
                while True:
                    hog.append(bytearray(32 << 20))
            if hook == "crash":
                os.kill(os.getpid(), signal.SIGSEGV)
            if hook == "slow":
                time.sleep(SLOW_HOOK_S)
            answer: tuple[Any, ...] = ("ok", parse_bytes(data, mime, options))
        except MemoryError:
            hog.clear()
            conn.send(("err", "oom", f"over the memory limit of {memory_bytes} bytes"))
            return  # a child that ran out of memory is not reused
        except RawDocumentError as exc:
            answer = ("err", exc.error_class, exc.detail)
        except RecursionError:
            answer = ("err", "parse_error", "recursion too deep")
        except Exception as exc:
            answer = ("err", "parse_error", f"{type(exc).__name__}: {exc}")
        conn.send(answer)


@dataclass
class _Slot:
    process: Any = None
    conn: Connection | None = None
    served: int = 0
    pids: list[int] = field(default_factory=list)


STARTUP_TIMEOUT = 60.0
"""Seconds a new parse process may take to import its parsers."""

# Signals that come from outside (an operator, a service manager stopping the service), not
# from the parser: a child that dies of one is retried (a transient error), not dead-lettered.
_STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP})

# The children started and not yet stopped, of every pool, with the pid of the process that
# started each: killed at the interpreter's exit (:func:`_kill_children_at_exit`).
_LIVE: dict[Any, int] = {}
_LIVE_LOCK = threading.Lock()
_EXIT_HOOK_PID: int | None = None


def _kill_children_at_exit() -> None:
    """multiprocessing's exit handler (``util._exit_function``: at the exit of the main process,
    and at the end of a ``multiprocessing`` child such as a worker of ``--processes N``) stops
    daemonic children with SIGTERM, then waits for each: a parse child ignores SIGTERM, so a pool
    left open would hang the exit. That handler runs its finalizers first, this one among them:
    SIGKILL to the children this process started, then a short wait."""
    me = os.getpid()
    with _LIVE_LOCK:
        processes = [p for p, owner in _LIVE.items() if owner == me]
        _LIVE.clear()
    for process in processes:
        with contextlib.suppress(Exception):
            process.kill()
    for process in processes:
        with contextlib.suppress(Exception):
            process.join(5)


def _track(process: Any) -> None:
    """Remembers a started child; registers the exit hook once per process (a forked process
    starts with no finalizers)."""
    global _EXIT_HOOK_PID
    me = os.getpid()
    with _LIVE_LOCK:
        _LIVE[process] = me
        if me != _EXIT_HOOK_PID:
            _EXIT_HOOK_PID = me
            multiprocessing.util.Finalize(None, _kill_children_at_exit, exitpriority=100)


class ParsePool:
    """``size`` child processes, each parsing one document at a time under ``options``' limits.

    :meth:`parse` blocks the calling thread; :meth:`submit` runs it on the pool's own threads and
    returns a :class:`~concurrent.futures.Future`. A child is replaced after a timeout, a crash,
    an out-of-memory, or ``recycle_after`` documents."""

    def __init__(
        self, size: int = 2, options: ParseOptions | None = None, *, recycle_after: int = 200
    ) -> None:
        if size < 1:
            raise ValueError("a parse pool needs at least one process")
        self.size = size
        self.options = options or ParseOptions()
        self.recycle_after = recycle_after
        self._ctx = multiprocessing.get_context("spawn")
        self._idle: queue.SimpleQueue[_Slot] = queue.SimpleQueue()
        self._slots = [_Slot() for _ in range(size)]
        for slot in self._slots:
            self._idle.put(slot)
        self._executor = ThreadPoolExecutor(max_workers=size, thread_name_prefix="pgingest-parse")
        self._lock = threading.Lock()
        self._closed = False

    def __enter__(self) -> ParsePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def child_pids(self) -> list[int]:
        """The pids of the children alive now (for measurements)."""
        return [
            s.process.pid for s in self._slots if s.process is not None and s.process.is_alive()
        ]

    def start(self) -> None:
        """Starts every child that is not running, in parallel, and returns once each has
        imported its parsers (otherwise children start at their first document): a worker that
        expects documents, or a measurement of the pool in its steady state."""
        if self._closed:
            raise RuntimeError("the parse pool is closed")
        slots = [self._idle.get() for _ in self._slots]
        try:
            todo = [s for s in slots if s.process is None or not s.process.is_alive()]
            for slot in todo:
                if slot.process is not None:
                    self._stop(slot, kill=True)
            for f in [self._executor.submit(self._start, slot) for slot in todo]:
                f.result()
        finally:
            for slot in slots:
                self._idle.put(slot)

    def _start(self, slot: _Slot) -> None:
        parent, child = self._ctx.Pipe()
        process = self._ctx.Process(
            target=_child_main,
            args=(child, self.options.memory_bytes, self.options),
            name="pgingest-parse",
            daemon=True,
        )
        process.start()
        _track(process)
        child.close()
        slot.process, slot.conn, slot.served = process, parent, 0
        # Started when it has imported the parsers (not counted in a document's timeout).
        try:
            ready = parent.poll(STARTUP_TIMEOUT) and parent.recv() == ("ready",)
        except (EOFError, OSError):
            ready = False
        if not ready:
            code = self._stop(slot, kill=True)
            raise RawDocumentError(
                "parse_error",
                f"the parser process did not start within {STARTUP_TIMEOUT:g} s ({code})",
                permanent=False,
            )

    def _stop(self, slot: _Slot, *, kill: bool) -> int | None:
        process, conn = slot.process, slot.conn
        slot.process, slot.conn = None, None
        if process is None:
            return None
        # never process.terminate(): the child ignores SIGTERM
        if kill:
            process.kill()
        elif conn is not None:
            with contextlib.suppress(OSError):
                conn.send(None)
        process.join(5)
        if process.is_alive():
            process.kill()
            process.join()
        if conn is not None:
            conn.close()
        code: int | None = process.exitcode
        with _LIVE_LOCK:
            _LIVE.pop(process, None)
        process.close()
        return code

    def parse(self, data: bytes, mime: str, *, test_hook: str | None = None) -> ParsedDocument:
        """Parse one document in a child; raises :class:`RawDocumentError` with its class."""
        if test_hook is not None and test_hook not in _TEST_HOOKS:
            raise ValueError(f"unknown test hook {test_hook!r}")
        if self._closed:
            raise RuntimeError("the parse pool is closed")
        slot = self._idle.get()
        try:
            return self._parse_in(slot, data, mime, test_hook)
        finally:
            self._idle.put(slot)

    def _parse_in(
        self, slot: _Slot, data: bytes, mime: str, test_hook: str | None
    ) -> ParsedDocument:
        if slot.process is None or not slot.process.is_alive():
            if slot.process is not None:
                self._stop(slot, kill=True)
            self._start(slot)
        assert slot.conn is not None
        conn = slot.conn
        try:
            conn.send((data, mime, self.options, test_hook))
            if not conn.poll(self.options.timeout_s):
                self._stop(slot, kill=True)
                raise RawDocumentError(
                    "timeout", f"parsing took over {self.options.timeout_s:g} s (killed)"
                )
            answer = conn.recv()
        except (EOFError, OSError, BrokenPipeError):
            code = self._stop(slot, kill=True)
            raise self._death(code) from None
        slot.served += 1
        if answer[0] == "ok":
            if slot.served >= self.recycle_after:
                self._stop(slot, kill=False)
            doc: ParsedDocument = answer[1]
            return doc
        _, error_class, detail = answer
        if error_class == "oom":
            self._stop(slot, kill=False)
        raise RawDocumentError(error_class, detail)

    def _death(self, code: int | None) -> RawDocumentError:
        if code == -signal.SIGKILL:
            # the kernel's OOM killer (or an operator): count it as memory
            return RawDocumentError("oom", "the parser was killed (SIGKILL)")
        if code is not None and code < 0 and -code in _STOP_SIGNALS:
            # an operator or a service manager stopping things (the child ignores SIGTERM and
            # SIGINT, but not before its first lines run): nothing wrong with the document
            name = signal.Signals(-code).name
            return RawDocumentError(
                "parse_error", f"the parser was stopped from outside ({name})", permanent=False
            )
        if code is not None and code < 0:
            name = signal.Signals(-code).name
            return RawDocumentError("parse_error", f"the parser crashed ({name})")
        return RawDocumentError("parse_error", f"the parser exited ({code})")

    def submit(
        self, data: bytes, mime: str, *, test_hook: str | None = None
    ) -> Future[ParsedDocument]:
        return self._executor.submit(self.parse, data, mime, test_hook=test_hook)

    def map(
        self, items: Iterable[tuple[bytes, str]]
    ) -> Iterator[ParsedDocument | RawDocumentError]:
        """Parse many documents; yields each result or its error, in order."""
        futures = [self.submit(data, mime) for data, mime in items]
        for fut in futures:
            try:
                yield fut.result()
            except RawDocumentError as exc:
                yield exc

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._executor.shutdown(wait=True)
        # Every child told to exit first, then each waited for: they wind down together
        # (one after the other, a worker's shutdown took ~1 s per parse process).
        for slot in self._slots:
            if slot.conn is not None and slot.process is not None:
                with contextlib.suppress(OSError):
                    slot.conn.send(None)
        for slot in self._slots:
            self._stop(slot, kill=False)


def parse_document(
    data: bytes,
    *,
    content_type: str | None = None,
    name: str | None = None,
    override: str | None = None,
    pool: ParsePool,
) -> ParsedDocument:
    """Detect the type (:func:`pgingest.raw.detect.detect_type`), then parse in ``pool``."""
    mime = detect.detect_type(data, content_type=content_type, name=name, override=override)
    return pool.parse(data, mime)
