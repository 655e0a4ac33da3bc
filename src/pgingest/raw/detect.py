"""Type detection: magic bytes first, then the Content-Type (or a MIME column's override), then
the extension of the URI's path (query string and fragment removed). A file that matches none
but decodes as text is plain text (a text file without an extension is not an error); anything
else is ``unsupported_type``, a permanent error (dead-lettered once, never retried)."""

from __future__ import annotations

import io
import posixpath
import zipfile
from urllib.parse import unquote, urlsplit

from pgingest.raw.errors import RawDocumentError

PDF = "application/pdf"
DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
HTML = "text/html"
MARKDOWN = "text/markdown"
TEXT = "text/plain"

SUPPORTED = frozenset({PDF, DOCX, HTML, MARKDOWN, TEXT})

_MIME_ALIASES = {
    "application/pdf": PDF,
    "application/x-pdf": PDF,
    DOCX: DOCX,
    "text/html": HTML,
    "application/xhtml+xml": HTML,
    "text/markdown": MARKDOWN,
    "text/x-markdown": MARKDOWN,
    "text/plain": TEXT,
}
# Content-Types that say nothing about the content: fall through to the extension.
_UNINFORMATIVE = frozenset(
    {"", "application/octet-stream", "binary/octet-stream", "application/binary"}
)
_EXTENSIONS = {
    ".pdf": PDF,
    ".docx": DOCX,
    ".html": HTML,
    ".htm": HTML,
    ".xhtml": HTML,
    ".md": MARKDOWN,
    ".markdown": MARKDOWN,
    ".txt": TEXT,
    ".text": TEXT,
}
# Magic numbers of formats known and not supported: refused at once, whatever the extension says.
_UNSUPPORTED_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF8", "image/gif"),
    (b"\x1f\x8b", "application/gzip"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "application/x-ole-storage"),
    (b"7z\xbc\xaf\x27\x1c", "application/x-7z-compressed"),
)
_HTML_STARTS = (b"<!doctype html", b"<html", b"<head", b"<body")


def normalize_mime(value: str | None) -> str:
    """``"Text/HTML; charset=utf-8"`` -> ``"text/html"``."""
    return (value or "").split(";", 1)[0].strip().lower()


def extension_of(name: str | None) -> str:
    """The extension of a URI's (or a file name's) last path segment, lower-case, query string
    and fragment removed: ``https://h/a/report.PDF?X-Amz=1#p2`` -> ``".pdf"``."""
    if not name:
        return ""
    path = unquote(urlsplit(name).path) if "://" in name else name.split("?", 1)[0].split("#")[0]
    return posixpath.splitext(posixpath.basename(path))[1].lower()


def _sniff(data: bytes) -> str | None:
    head = data[:1024]
    if b"%PDF-" in head:
        return PDF
    if data.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as zf:
                names = set(zf.namelist())
        except (zipfile.BadZipFile, ValueError, OSError):
            raise RawDocumentError("parse_error", "a damaged ZIP container") from None
        if "word/document.xml" in names:
            return DOCX
        raise RawDocumentError("unsupported_type", "a ZIP container that is not a DOCX")
    for magic, mime in _UNSUPPORTED_MAGIC:
        if data.startswith(magic):
            raise RawDocumentError("unsupported_type", f"magic bytes of {mime}")
    lowered = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if lowered.startswith(_HTML_STARTS):
        return HTML
    return None


def looks_like_text(data: bytes) -> bool:
    """No NUL byte in the first 8 KiB and charset-normalizer finds an encoding."""
    sample = data[:8192]
    if b"\x00" in sample:
        return False
    if not sample:
        return True
    from charset_normalizer import from_bytes

    return from_bytes(sample).best() is not None


def _unsigned(mime: str, data: bytes, label: str) -> str:
    """Labelled PDF/DOCX without the format's signature: 0 bytes go on to the parser (which says
    ``empty_text``); anything else is damaged or mislabelled."""
    if not data:
        return mime
    raise RawDocumentError("parse_error", f"{label} but not the format's signature")


def detect_type(
    data: bytes,
    *,
    content_type: str | None = None,
    name: str | None = None,
    override: str | None = None,
) -> str:
    """The canonical MIME type of ``data`` (one of :data:`SUPPORTED`), or
    ``RawDocumentError("unsupported_type")``.

    ``override`` (a source's MIME column) wins over everything; then magic bytes, then
    ``content_type`` (unless it is ``application/octet-stream`` or the like), then the extension
    of ``name`` (a URI or a file name). An unlabelled file that decodes as text is plain text."""
    if override:
        mime = _MIME_ALIASES.get(normalize_mime(override))
        if mime is None:
            raise RawDocumentError("unsupported_type", f"MIME override {override!r}")
        return mime
    sniffed = _sniff(data)
    if sniffed:
        return sniffed
    declared = normalize_mime(content_type)
    if declared not in _UNINFORMATIVE:
        mime = _MIME_ALIASES.get(declared)
        if mime is None:
            raise RawDocumentError("unsupported_type", f"Content-Type {declared!r}")
        if mime in (PDF, DOCX):  # a PDF or DOCX would have been sniffed: damaged or mislabelled
            return _unsigned(mime, data, f"Content-Type {declared!r}")
        return mime
    ext = extension_of(name)
    if ext:
        mime = _EXTENSIONS.get(ext)
        if mime in (PDF, DOCX):
            return _unsigned(mime, data, f"extension {ext!r}")
        if mime is not None:
            return mime
        if not looks_like_text(data):
            raise RawDocumentError("unsupported_type", f"extension {ext!r}")
    if looks_like_text(data):
        return TEXT
    raise RawDocumentError("unsupported_type", "no signature, label or extension, and not text")
