"""Type detection runs in the worker, outside the parse sandbox, on any bytes a source holds
(pgingest.raw.detect): a ZIP is told apart from a DOCX within bounds, its central directory read
by hand, never indexed whole (zipfile.ZipFile), with the same answers as zipfile's names."""

from __future__ import annotations

import io
import struct
import tracemalloc
import zipfile

import pytest

from pgingest.raw import detect
from pgingest.raw.errors import RawDocumentError


def _zip(names: list[str], **kw: object) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in names:
            with zf.open(name, "w", **kw) as f:  # type: ignore[arg-type]
                f.write(b"<x/>")
    return buf.getvalue()


def _many_entries(count: int, last: bytes | None = None) -> bytes:
    """A ZIP of ``count`` empty entries (then ``last``, if given), its central directory written
    by hand: zip64 end records, as /tmp/rev2/mkzip.py of the review (a 100 MB ZIP of 2,000,000
    entries cost the worker 11 s and +954 MiB in zipfile.ZipFile(...).namelist())."""
    local = struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, 0, 0, 0, 0, 0, 0, 0, 1, 0) + b"a"
    names = [b"%x" % i for i in range(count)] + ([last] if last else [])
    header = struct.Struct("<4sHHHHHHIIIHHHHHII")
    cd = b"".join(
        header.pack(b"PK\x01\x02", 20, 20, 0, 0, 0, 0, 0, 0, 0, len(n), 0, 0, 0, 0, 0, 0) + n
        for n in names
    )
    n = len(names)
    end64 = struct.pack("<4sQHHIIQQQQ", b"PK\x06\x06", 44, 45, 45, 0, 0, n, n, len(cd), len(local))
    locator = struct.pack("<4sIQI", b"PK\x06\x07", 0, len(local) + len(cd), 1)
    eocd = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    return local + cd + end64 + locator + eocd


def test_a_zip_of_many_entries_is_refused_without_indexing_it() -> None:
    data = _many_entries(400_000)  # ~20 MB
    assert zipfile.ZipFile(io.BytesIO(data)).namelist()[:2] == ["0", "1"]  # a valid ZIP
    tracemalloc.start()
    try:
        with pytest.raises(RawDocumentError) as err:
            detect.detect_type(data, name="x.docx")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert err.value.error_class == "unsupported_type" and err.value.permanent
    # zipfile's index of 400,000 entries: ~190 MiB here before
    assert peak < 4 << 20, f"detection allocated {peak >> 20} MiB"


def test_detection_never_builds_zipfiles_index(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_: object, **__: object) -> None:
        raise AssertionError("zipfile.ZipFile called in the worker")

    docx = _zip(["[Content_Types].xml", "word/document.xml"])
    monkeypatch.setattr(zipfile, "ZipFile", refuse)
    assert detect.detect_type(docx, name="a.docx") == detect.DOCX
    with pytest.raises(RawDocumentError):
        detect.detect_type(_many_entries(10), name="a.docx")


def test_only_the_first_entries_are_looked_at() -> None:
    within = _many_entries(detect.ZIP_MAX_ENTRIES - 1, last=b"word/document.xml")
    assert detect.detect_type(within) == detect.DOCX
    beyond = _many_entries(detect.ZIP_MAX_ENTRIES, last=b"word/document.xml")
    with pytest.raises(RawDocumentError) as err:
        detect.detect_type(beyond)
    assert err.value.error_class == "unsupported_type"


def _streamed(names: list[str]) -> bytes:
    """A ZIP written to a pipe: sizes in data descriptors after each entry, not in the local
    headers (the central directory has them)."""

    class Pipe(io.RawIOBase):
        def __init__(self) -> None:
            self.data = bytearray()

        def writable(self) -> bool:
            return True

        def write(self, b: object) -> int:
            chunk = bytes(b)  # type: ignore[call-overload]
            self.data += chunk
            return len(chunk)

    pipe = Pipe()
    with zipfile.ZipFile(pipe, "w") as zf:
        for name in names:
            with zf.open(name, "w") as f:
                f.write(b"<x/>")
    return bytes(pipe.data)


def _commented(data: bytes) -> bytes:
    buf = io.BytesIO(data)
    with zipfile.ZipFile(buf, "a") as zf:
        zf.comment = b"an archive comment"
    return buf.getvalue()


@pytest.mark.parametrize(
    ("data", "docx"),
    [
        (_zip(["[Content_Types].xml", "word/document.xml"]), True),
        (_zip([f"word/media/image{i}.png" for i in range(500)] + ["word/document.xml"]), True),
        (_zip(["a.txt", "word/document.xml"], force_zip64=True), True),
        (_streamed(["[Content_Types].xml", "word/document.xml"]), True),
        (_commented(_zip(["word/document.xml"])), True),
        (_zip(["xl/workbook.xml"]), False),
        (_zip(["word/document.xml.bak", "document.xml"]), False),
        (_commented(_zip(["xl/workbook.xml"])), False),
    ],
    ids=[
        "docx",
        "docx-entry-501",
        "docx-zip64",
        "docx-data-descriptors",
        "docx-comment",
        "xlsx",
        "near-names",
        "xlsx-comment",
    ],
)
def test_docx_or_another_zip_as_zipfile_says(data: bytes, docx: bool) -> None:
    names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    assert ("word/document.xml" in names) is docx
    if docx:
        assert detect.detect_type(data, name="a.bin") == detect.DOCX
    else:
        with pytest.raises(RawDocumentError) as err:
            detect.detect_type(data, name="a.docx")
        assert err.value.error_class == "unsupported_type"


def test_a_damaged_zip_is_a_parse_error() -> None:
    docx = _zip(["[Content_Types].xml", "word/document.xml"])
    cd = docx.rfind(b"PK\x01\x02")
    for damaged in (
        docx[:-30],  # no end record
        docx[:cd] + b"XX" + docx[cd + 2 :],  # a central directory record's signature
        b"PK\x03\x04" + b"\x00" * 10,  # too short
    ):
        with pytest.raises(zipfile.BadZipFile):
            zipfile.ZipFile(io.BytesIO(damaged))
        with pytest.raises(RawDocumentError) as err:
            detect.detect_type(damaged, name="a.docx")
        assert err.value.error_class == "parse_error"


def test_only_the_first_megabytes_of_the_directory_are_looked_at() -> None:
    # entries of 60 KiB names: the byte bound comes before the entry bound
    long_names = [f"{i:05d}" + "x" * (60_000) for i in range(100)]
    data = _zip([*long_names, "word/document.xml"])
    with pytest.raises(RawDocumentError) as err:
        detect.detect_type(data)
    assert err.value.error_class == "unsupported_type"
    assert detect.detect_type(_zip([*long_names[:10], "word/document.xml"])) == detect.DOCX
