"""Structured text: Markdown headings, PDF pages with their outline, charset detection."""

from __future__ import annotations

import pytest

from pgingest.raw import parse
from pgingest.raw.errors import RawDocumentError
from pgingest.raw.parse import Block, _OutlineEntry


def test_markdown_heading_paths_and_code_fences() -> None:
    text = "# A\n\nintro\n\n## B\n\nbody\n\n```\n# not a heading\n```\n\n# C\ntail\n"
    blocks = parse.markdown_blocks(text)
    assert [(b.kind, b.heading_path) for b in blocks] == [
        ("heading", ("A",)),
        ("text", ("A",)),
        ("heading", ("A", "B")),
        ("text", ("A", "B")),
        ("heading", ("C",)),
        ("text", ("C",)),
    ]
    assert "# not a heading" in blocks[3].text


def test_setext_headings_and_thematic_breaks() -> None:
    blocks = parse.markdown_blocks("Title\n=====\n\nPara one\nline two\n---\n\nSub\n---\nx\n")
    headings = [b.heading_path for b in blocks if b.kind == "heading"]
    # "line two" over --- is part of a two-line paragraph, not a heading
    assert headings == [("Title",), ("Title", "Sub")]


def test_a_closing_atx_sequence_is_dropped() -> None:
    assert parse.markdown_blocks("## Title ##\ntext")[0] == Block(
        "Title", "heading", None, ("Title",)
    )


def test_pdf_blocks_follow_the_outline_across_pages() -> None:
    pages = ["Intro\nfirst page text", "more text\nDetails\ndetail text", "last page"]
    outline = [_OutlineEntry(1, "Intro", 0), _OutlineEntry(2, "Details", 1)]
    blocks = parse.pdf_blocks(pages, outline)
    assert [(b.kind, b.page, b.heading_path, b.text) for b in blocks] == [
        ("heading", 1, ("Intro",), "Intro"),
        ("text", 1, ("Intro",), "first page text"),
        ("text", 2, ("Intro",), "more text"),
        ("heading", 2, ("Intro", "Details"), "Details"),
        ("text", 2, ("Intro", "Details"), "detail text"),
        ("text", 3, ("Intro", "Details"), "last page"),
    ]


def test_an_outline_title_not_on_its_page_starts_the_page() -> None:
    blocks = parse.pdf_blocks(["body"], [_OutlineEntry(1, "Chapter", 0)])
    assert blocks[0] == Block("Chapter", "heading", 1, ("Chapter",))
    assert blocks[1].heading_path == ("Chapter",)


def test_decode_text() -> None:
    western = (
        "Le café sert une crème brûlée très appréciée à côté de la rivière, où l'eau est fraîche."
    )
    assert parse.decode_text(western.encode("latin-1")) == western
    assert parse.decode_text(western.encode("utf-8")) == western
    assert parse.decode_text(b"\xef\xbb\xbfbom") == "bom"
    assert parse.decode_text("utf16".encode("utf-16")) == "utf16"


@pytest.mark.parametrize("data", [b"", b"  \n\t "])
def test_empty_input_is_empty_text(data: bytes) -> None:
    with pytest.raises(RawDocumentError) as err:
        parse.parse_bytes(data, "text/plain")
    assert err.value.error_class == "empty_text"


def test_unknown_mime_has_no_parser() -> None:
    with pytest.raises(RawDocumentError) as err:
        parse.parse_bytes(b"x", "image/png")
    assert err.value.error_class == "unsupported_type"
