"""A ``%PDF-`` in the first KiB after text (a Markdown page about PDF files) does not beat an
explicit text label (pgingest.raw.detect): before, it was detected as a PDF whatever the labels,
and dead-lettered as parse_error. At offset 0, or after binary junk as PDF readers allow, the
signature still wins."""

from __future__ import annotations

import pytest

from pgingest.raw import detect

PDF_BYTES = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\n"

MENTION = b"# How to spot a PDF\n\nEvery PDF file begins with a header such as `%PDF-1.7`.\n"


@pytest.mark.parametrize(
    ("kw", "mime"),
    [
        ({"content_type": "text/markdown", "name": "https://h/notes.md"}, detect.MARKDOWN),
        ({"content_type": "text/plain"}, detect.TEXT),
        ({"content_type": "text/html; charset=utf-8"}, detect.HTML),
        ({"content_type": "application/octet-stream", "name": "notes.md"}, detect.MARKDOWN),
        ({"name": "s3://b/notes.txt"}, detect.TEXT),
        ({"name": "page.html"}, detect.HTML),
    ],
)
def test_a_text_that_mentions_the_pdf_signature_is_text(kw: dict[str, str], mime: str) -> None:
    assert detect.detect_type(MENTION, **kw) == mime


def test_an_html_page_that_mentions_the_pdf_signature_is_html() -> None:
    page = b"<!DOCTYPE html><html><body><p>Files start with %PDF-1.4</p></body></html>"
    assert detect.detect_type(page) == detect.HTML
    assert detect.detect_type(page, name="x.pdf") == detect.HTML


def test_the_pdf_signature_at_offset_0_or_after_junk_still_wins() -> None:
    # at offset 0: whatever the label (as before)
    assert detect.detect_type(PDF_BYTES, content_type="text/plain", name="a.txt") == detect.PDF
    # after binary junk (a MacBinary header, say): what PDF readers skip
    macbinary = b"\x00\x11report.pdf\x00\x00" + b"\x00" * 100
    assert detect.detect_type(macbinary + PDF_BYTES, content_type="text/plain") == detect.PDF
    # after text, with no text label (or a PDF label): still a PDF
    for kw in ({}, {"content_type": "application/pdf"}, {"name": "a.pdf"}, {"name": "a.bin"}):
        assert detect.detect_type(b"\r\n\r\n" + PDF_BYTES, **kw) == detect.PDF
        assert detect.detect_type(b"junk line\n" + PDF_BYTES, **kw) == detect.PDF
    # past the first KiB: not a signature
    late = b"x" * 1024 + PDF_BYTES
    assert detect.detect_type(late, name="a.txt") == detect.TEXT
