"""Type detection: magic bytes, then Content-Type, then the extension (query string removed)."""

from __future__ import annotations

import io
import zipfile

import pytest

from pgingest.raw import detect
from pgingest.raw.errors import RawDocumentError

PDF_BYTES = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n"


def _zip(names: list[str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name in names:
            zf.writestr(name, "<x/>")
    return buf.getvalue()


def test_magic_bytes_win_over_a_lying_label() -> None:
    assert detect.detect_type(PDF_BYTES, content_type="text/html", name="a.txt") == detect.PDF
    docx = _zip(["[Content_Types].xml", "word/document.xml"])
    assert detect.detect_type(docx, content_type="application/octet-stream") == detect.DOCX
    html = b"\xef\xbb\xbf  <!DOCTYPE html><html><body>x</body></html>"
    assert detect.detect_type(html, name="page.txt") == detect.HTML


def test_content_type_then_extension() -> None:
    md = b"# Title\n\ntext\n"
    assert detect.detect_type(md, content_type="text/markdown; charset=utf-8") == detect.MARKDOWN
    assert detect.detect_type(md, content_type="application/octet-stream", name="x.md") == (
        detect.MARKDOWN
    )
    assert detect.detect_type(md, name="https://h/notes.MD?X-Amz-Signature=1#top") == (
        detect.MARKDOWN
    )
    # the query string is not the extension
    assert detect.detect_type(b"plain", name="https://h/file?name=evil.pdf") == detect.TEXT


def test_override_wins_and_an_unknown_override_is_unsupported() -> None:
    assert detect.detect_type(PDF_BYTES, override="text/plain") == detect.TEXT
    with pytest.raises(RawDocumentError) as err:
        detect.detect_type(b"x", override="application/vnd.ms-excel")
    assert err.value.error_class == "unsupported_type" and err.value.permanent


def test_text_without_extension_is_plain_text() -> None:
    assert detect.detect_type(b"just some words\n", name="file:///data/README") == detect.TEXT
    assert detect.detect_type("caf\xe9".encode("latin-1"), name="NOTES") == detect.TEXT


@pytest.mark.parametrize(
    ("data", "kw"),
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00", {"name": "scan.pdf"}),
        (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1\x00", {"name": "old.doc"}),
        (_zip(["xl/workbook.xml"]), {"name": "sheet.xlsx"}),
        (b"\x00\x01\x02\x03binary", {}),
        (b"x", {"content_type": "image/svg+xml"}),
        (b"\x00\x01\x02binary", {"name": "blob.bin"}),
    ],
)
def test_unknown_types_are_unsupported(data: bytes, kw: dict[str, str]) -> None:
    with pytest.raises(RawDocumentError) as err:
        detect.detect_type(data, **kw)
    assert err.value.error_class == "unsupported_type"
    assert err.value.permanent


def test_a_labelled_pdf_without_its_signature() -> None:
    # 0 bytes go on to the parser (empty_text); other bytes are damaged or mislabelled
    assert detect.detect_type(b"", name="empty.pdf") == detect.PDF
    with pytest.raises(RawDocumentError) as err:
        detect.detect_type(b"hello", content_type="application/pdf")
    assert err.value.error_class == "parse_error"


def test_extension_of() -> None:
    assert detect.extension_of("s3://bucket/a/b/Report.PDF") == ".pdf"
    assert detect.extension_of("https://h/a.b/file?x=1.md") == ""
    assert detect.extension_of("name.tar.gz") == ".gz"
    assert detect.extension_of(None) == ""
