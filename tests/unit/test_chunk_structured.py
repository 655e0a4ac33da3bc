"""chunk_structured: a parsed document's headings are the preferred chunk boundaries."""

from __future__ import annotations

import pytest

from pgingest import chunking


def _doc() -> tuple[str, list[int]]:
    parts: list[str] = []
    starts: list[int] = []
    pos = 0
    for s in range(4):
        heading = f"Section {s} heading"
        # 2 or 3 short paragraphs: a section fits a chunk, two do not
        paragraphs = [
            " ".join(f"Sentence {s}.{p}.{w} about the topic of section {s}." for w in range(4))
            for p in range(2 + s % 2)
        ]
        block = "\n\n".join([heading, *paragraphs])
        if parts:
            pos += 2  # the "\n\n" between sections
        starts.append(pos)
        parts.append(block)
        pos += len(block)
    return "\n\n".join(parts), starts


@pytest.mark.parametrize("tokenizer", chunking.TOKENIZER_NAMES)
def test_chunks_start_at_headings_without_overlap(tokenizer: str) -> None:
    body, starts = _doc()
    config = chunking.ChunkerConfig(tokenizer=tokenizer, max_tokens=160, overlap_tokens=20)
    plain = chunking.chunk_document(None, body, config)
    structured = chunking.chunk_structured(None, body, config, starts)
    assert all(body[c.char_start : c.char_end] == c.text for c in structured)
    # every heading begins a chunk, and no chunk crosses into the next section
    chunk_starts = {c.char_start for c in structured}
    assert set(starts) <= chunk_starts, (starts, sorted(chunk_starts))
    for c in structured:
        inside = [h for h in starts if c.char_start < h < c.char_end]
        assert not inside, (c.char_start, c.char_end, inside)
    # the plain chunker, with overlap and paragraph preference, does cut elsewhere here
    assert {c.char_start for c in plain} != chunk_starts
    assert all(c.token_count <= config.max_tokens for c in structured)


def test_without_headings_it_is_chunk_document() -> None:
    body, _ = _doc()
    config = chunking.ChunkerConfig(max_tokens=64, overlap_tokens=8)
    assert chunking.chunk_structured("T", body, config, []) == chunking.chunk_document(
        "T", body, config
    )
    # offsets that are not at a line start change nothing either
    assert chunking.chunk_structured("T", body, config, [3, 7]) == chunking.chunk_document(
        "T", body, config
    )
