"""Type detection: magic bytes first, then the Content-Type (or a MIME column's override), then
the extension of the URI's path (query string and fragment removed). A file that matches none
but decodes as text is plain text (a text file without an extension is not an error); anything
else is ``unsupported_type``, a permanent error (dead-lettered once, never retried).

PDF: ``%PDF-`` at offset 0, or after non-text junk in the first KiB (as PDF readers allow);
after text (a Markdown page that mentions the signature), an explicit text label wins. DOCX: a
ZIP whose central directory names ``word/document.xml``, read within bounds (the worker runs
this, outside the parse sandbox)."""

from __future__ import annotations

import posixpath
import struct
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


_PDF_MAGIC = b"%PDF-"
_LOOSE_PDF = "pdf?"  # _sniff's answer for a PDF signature after text: the labels decide
_TEXT_MIMES = frozenset({HTML, MARKDOWN, TEXT})
_TEXT_BYTES = b"\t\n\r\x0b\x0c" + bytes(range(0x20, 0x7F)) + bytes(range(0x80, 0x100))


def _is_text_prefix(prefix: bytes) -> bool:
    """No control byte but whitespace: what precedes a ``%PDF-`` is text (a document that
    mentions the signature), not the junk a PDF reader skips (a MacBinary or mail header)."""
    return not prefix.translate(None, _TEXT_BYTES)


# A DOCX is a ZIP with a ``word/document.xml``. The ZIP's central directory is read here, in
# the worker, by hand and within bounds (zipfile indexes every entry: a 100 MB ZIP of 2,000,000
# entries took 11 s and ~1 GB): a DOCX has tens of entries, a few hundred with many images.
ZIP_MAX_ENTRIES = 10_000
ZIP_MAX_DIRECTORY_BYTES = 4 << 20
_DOCX_PART = b"word/document.xml"
_EOCD = struct.Struct("<4s4H2LH")  # end of central directory, 22 bytes
_ZIP64_LOCATOR = struct.Struct("<4sLQL")  # 20 bytes
_ZIP64_EOCD = struct.Struct("<4sQ2H2L4Q")  # 56 bytes
_CENTRAL = struct.Struct("<4s6H3L5H2L")  # a central directory record, 46 bytes


def _damaged(what: str) -> RawDocumentError:
    return RawDocumentError("parse_error", f"a damaged ZIP container ({what})")


def _zip_has_docx_part(data: bytes) -> bool:
    """Whether ``word/document.xml`` is among the first :data:`ZIP_MAX_ENTRIES` entries of the
    ZIP's central directory (found as zipfile finds it: the end record, zip64 if there is one, a
    ZIP appended to other bytes); a ZIP whose directory cannot be read is ``parse_error``."""
    size = len(data)
    location = size - _EOCD.size
    if location < 0:
        raise _damaged("too short")
    if data[location : location + 4] != b"PK\x05\x06" or data[-2:] != b"\x00\x00":
        # an archive comment (up to 64 KiB): the last end record there, as zipfile takes it
        location = data.rfind(b"PK\x05\x06", max(0, size - _EOCD.size - 0xFFFF))
        if location < 0 or location + _EOCD.size > size:
            raise _damaged("no end of central directory")
    _, _, _, _, _, cd_size, cd_offset, _ = _EOCD.unpack_from(data, location)
    zip64 = False
    locator = location - _ZIP64_LOCATOR.size
    if locator >= 0 and data[locator : locator + 4] == b"PK\x06\x07":
        _, disk, _, disks = _ZIP64_LOCATOR.unpack_from(data, locator)
        if disk != 0 or disks > 1:
            raise _damaged("spans several disks")
        end64 = locator - _ZIP64_EOCD.size
        if end64 >= 0 and data[end64 : end64 + 4] == b"PK\x06\x06":
            cd_size, cd_offset = _ZIP64_EOCD.unpack_from(data, end64)[8:10]
            zip64 = True
    # "concat": the bytes before the archive, if it was appended to another file
    start = location - cd_size - cd_offset
    if zip64:
        start -= _ZIP64_EOCD.size + _ZIP64_LOCATOR.size
    pos = start + cd_offset
    if pos < 0:
        raise _damaged("bad central directory offset")
    directory_end = min(size, pos + cd_size)  # a field's length past it: read up to it
    end = min(directory_end, pos + ZIP_MAX_DIRECTORY_BYTES)
    for _ in range(ZIP_MAX_ENTRIES):
        if pos >= end:
            break
        if pos + _CENTRAL.size > directory_end:
            raise _damaged("truncated central directory")
        record = _CENTRAL.unpack_from(data, pos)
        if record[0] != b"PK\x01\x02":
            raise _damaged("bad central directory record")
        flags, name_len, extra_len, comment_len = record[3], record[10], record[11], record[12]
        name = data[pos + _CENTRAL.size : min(pos + _CENTRAL.size + name_len, directory_end)]
        if flags & 0x800:  # a UTF-8 name
            try:
                name.decode("utf-8")
            except UnicodeDecodeError:
                raise _damaged("a file name that is not UTF-8") from None
        if name.split(b"\x00", 1)[0] == _DOCX_PART:
            return True
        pos += _CENTRAL.size + name_len + extra_len + comment_len
    return False


def _sniff(data: bytes) -> str | None:
    head = data[:1024]
    at = head.find(_PDF_MAGIC)
    if at == 0 or (at > 0 and not _is_text_prefix(head[:at])):
        return PDF
    if data.startswith(b"PK\x03\x04"):
        if _zip_has_docx_part(data):
            return DOCX
        raise RawDocumentError("unsupported_type", "a ZIP container that is not a DOCX")
    for magic, mime in _UNSUPPORTED_MAGIC:
        if data.startswith(magic):
            raise RawDocumentError("unsupported_type", f"magic bytes of {mime}")
    lowered = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if lowered.startswith(_HTML_STARTS):
        return HTML
    if at > 0:
        return _LOOSE_PDF
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
    of ``name`` (a URI or a file name). An unlabelled file that decodes as text is plain text.
    A ``%PDF-`` after text in the first KiB loses to a text label (Content-Type, else the
    extension), and wins otherwise."""
    if override:
        mime = _MIME_ALIASES.get(normalize_mime(override))
        if mime is None:
            raise RawDocumentError("unsupported_type", f"MIME override {override!r}")
        return mime
    sniffed = _sniff(data)
    if sniffed and sniffed != _LOOSE_PDF:
        return sniffed
    declared = normalize_mime(content_type)
    if sniffed == _LOOSE_PDF:
        # "%PDF-" after text: a PDF with junk in front, or a text that mentions the signature.
        # An explicit text label (Content-Type, else the extension) says which; else a PDF.
        if declared in _UNINFORMATIVE:
            labelled = _EXTENSIONS.get(extension_of(name))
        else:
            labelled = _MIME_ALIASES.get(declared)
        return labelled if labelled in _TEXT_MIMES else PDF
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
