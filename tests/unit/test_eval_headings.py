"""The heading-path evaluation's pure parts (eval/headings/sections.py): sections and their spans,
the heading path at a chunk's start, the model inputs of the variants, the section-level
ranking, the paired statistics, and the question set against its frozen corpus. No model, no
database."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from eval.headings import sections as S

MD = """# Guide

Intro text of the guide.

## Install

How to install it.

### Offline

Without a network: copy the wheel.

## Upgrade

Run the same command again.
"""


def _doc(tmp_path: Path, text: str = MD, name: str = "guide.md") -> S.Doc:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return S.load_doc(path)


def test_a_section_runs_to_the_next_heading_of_its_level_or_higher(tmp_path: Path) -> None:
    doc = _doc(tmp_path)
    assert doc.title == "Guide"
    spans = {s.path: doc.text[s.start : s.end] for s in S.sections(doc)}
    assert list(spans) == [
        ("Guide",),
        ("Guide", "Install"),
        ("Guide", "Install", "Offline"),
        ("Guide", "Upgrade"),
    ]
    assert spans[("Guide",)] == doc.text  # the top heading holds everything
    install = spans[("Guide", "Install")]
    assert install.startswith("Install\n\nHow to install it.")
    assert "copy the wheel" in install  # its subsection is part of it
    assert "Upgrade" not in install  # a sibling ends it
    assert spans[("Guide", "Install", "Offline")].startswith("Offline")
    assert "Upgrade" not in spans[("Guide", "Install", "Offline")]  # a higher heading ends it
    assert spans[("Guide", "Upgrade")].endswith("Run the same command again.")


def test_path_at_is_the_last_change_at_or_before_the_offset() -> None:
    headings = ((0, ("A",)), (10, ("A", "B")), (20, ("A", "C")))
    assert S.path_at((), 5) == ()
    assert S.path_at(((4, ("A",)),), 3) == ()  # before the first heading
    assert S.path_at(headings, 0) == ("A",)
    assert S.path_at(headings, 9) == ("A",)
    assert S.path_at(headings, 10) == ("A", "B")
    assert S.path_at(headings, 19) == ("A", "B")
    assert S.path_at(headings, 10**6) == ("A", "C")


def _long_markdown() -> str:
    words = ["the", "worker", "reads", "a", "batch", "and", "writes", "vectors", "back"]
    parts = ["# Manual", " ".join(words * 4)]
    for i in range(4):
        parts.append(f"## Part {i}")
        parts.append("\n\n".join(f"{' '.join(words * 6)} ({i}.{j})." for j in range(6)))
        parts.append(f"### Part {i} detail")
        parts.append(" ".join(words * 7))
    return "\n\n".join(parts) + "\n"


def test_each_chunk_gets_the_heading_path_of_the_last_heading_before_its_start(
    tmp_path: Path,
) -> None:
    text = _long_markdown()
    doc = _doc(tmp_path, text, "manual.md")
    chunks = S.chunk_doc(doc)
    assert len(chunks) > 10
    # an independent reading: the heading lines of the rendered text, and their levels
    heads = [
        (m.start(), m.group(0)) for m in re.finditer(r"(?m)^(Manual|Part \d( detail)?)$", doc.text)
    ]
    assert len(heads) == 9
    for c in chunks:
        before = [h for h in heads if h[0] <= c.char_start]
        assert before, c
        last = before[-1][1]
        assert c.path[-1] == last
        want = ("Manual",) if last == "Manual" else ("Manual", last.replace(" detail", ""))
        if last.endswith("detail"):
            want = (*want, last)
        assert c.path == want
        assert c.at_heading == any(h[0] == c.char_start for h in heads)
        assert c.embed_input == f"Manual\n\n{doc.text[c.char_start : c.char_end]}"
    # most chunks after a heading start at it (chunk_structured); a heading may also fall inside
    # a chunk, whose path is then still the one at its start
    assert 3 <= sum(c.at_heading for c in chunks) < len(heads)
    assert any(not c.at_heading and len(c.path) == 2 for c in chunks)


def _chunk(path: tuple[str, ...], *, start: int = 0, at_heading: bool = False) -> S.EvalChunk:
    return S.EvalChunk(
        doc="d.md",
        ordinal=0,
        char_start=start,
        char_end=start + 4,
        path=path,
        at_heading=at_heading,
        title="Guide",
        embed_input="Guide\n\nbody",
    )


def test_the_variants_change_only_the_line_before_the_embed_input() -> None:
    c = _chunk(("Guide", "Install", "Offline"))
    assert S.model_input("plain", c) == "Guide\n\nbody"
    assert S.model_input("path", c) == "Guide > Install > Offline\n\nGuide\n\nbody"
    assert S.model_input("section", c) == "Section: Install > Offline\n\nGuide\n\nbody"
    assert S.model_input("path_unless_at_heading", c) == S.model_input("path", c)
    at = _chunk(("Guide", "Install"), at_heading=True)
    assert S.model_input("path_unless_at_heading", at) == "Guide\n\nbody"
    top = _chunk(("Guide",))
    assert S.model_input("section", top) == "Guide\n\nbody"  # nothing below the title
    other = _chunk(("Other", "Part"))  # a first element that is not the title stays
    assert S.model_input("section", other) == "Section: Other > Part\n\nGuide\n\nbody"
    assert set(S.VARIANTS) == {"plain", "path", "section", "path_unless_at_heading"}
    with pytest.raises(ValueError, match="unknown variant"):
        S.model_input("nope", c)


def test_sections_are_ranked_by_their_best_chunk_and_a_labelled_section_counts_once() -> None:
    install = S.Section("d.md", ("Guide", "Install"), 100, 300)
    chunks = [
        _chunk(("Guide",), start=0),
        _chunk(("Guide", "Install"), start=100),
        _chunk(("Guide", "Install", "Offline"), start=200),  # inside Install: counts for it
        _chunk(("Guide", "Upgrade"), start=300),
        _chunk(("Guide", "Upgrade"), start=350),
    ]
    scores = np.array([0.1, 0.5, 0.9, 0.8, 0.7])
    ranked = S.ranked_sections(scores, chunks, [install])
    assert ranked == ["d.md#Guide > Install", "d.md#Guide > Upgrade", "d.md#Guide"]
    assert S.reciprocal_rank(ranked, [install.key]) == 1.0
    # without the label the subsection is a section of its own
    assert S.ranked_sections(scores, chunks, [])[:2] == [
        "d.md#Guide > Install > Offline",
        "d.md#Guide > Upgrade",
    ]
    assert S.ranked_sections(scores, chunks, [install], k=1) == ["d.md#Guide > Install"]
    # a chunk that starts at the section's end is outside it; another document never counts
    assert not install.holds("d.md", 300) and install.holds("d.md", 299)
    assert not install.holds("e.md", 150)
    assert S.reciprocal_rank(["x", "y", install.key], [install.key]) == pytest.approx(1 / 3)
    assert S.reciprocal_rank(["x"] * 10 + [install.key], [install.key]) == 0.0


def test_paired_statistics() -> None:
    assert S.sign_test_p(0, 0) == 1.0
    assert S.sign_test_p(6, 0) == pytest.approx(2 / 64)
    assert S.sign_test_p(3, 3) == 1.0
    assert S.sign_test_p(1, 9) == pytest.approx(2 * 11 / 1024)
    same = S.paired([0.5, 1.0, 0.0], [0.5, 1.0, 0.0])
    assert (same["wins"], same["losses"], same["ties"]) == (0, 0, 3)
    assert same["p_sign"] == 1.0 and same["mean_diff"] == 0.0
    base = [0.0] * 20
    better = [1.0] * 15 + [0.0] * 5
    p = S.paired(base, better)
    assert (p["wins"], p["losses"], p["ties"]) == (15, 0, 5)
    assert p["mean_diff"] == 0.75
    assert p["ci95"][0] > 0.4 and p["ci95"][1] <= 1.0
    assert p["p_bootstrap"] < 0.01 and p["p_sign"] < 0.001
    worse = S.paired(better, base)
    assert (worse["wins"], worse["losses"]) == (0, 15) and worse["mean_diff"] == -0.75
    with pytest.raises(ValueError):
        S.paired([1.0], [1.0, 0.0])


def _write_questions(tmp_path: Path, rows: list[dict[str, object]]) -> Path:
    path = tmp_path / "q.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_a_label_that_does_not_match_the_corpus_fails_loudly(tmp_path: Path) -> None:
    doc = _doc(tmp_path)
    ok = {
        "id": "x1",
        "question": "install without network?",
        "relevant": [
            {"doc": "guide.md", "path": ["Guide", "Install"], "phrase": "COPY the  wheel"}
        ],
    }
    (q,) = S.load_questions([doc], _write_questions(tmp_path, [ok]))
    assert q.labels[0].path == ("Guide", "Install")
    assert [s.key for s in S.question_sections(q, [doc])] == ["guide.md#Guide > Install"]
    bad_rows = [
        {**ok, "relevant": [{"doc": "nope.md", "path": ["Guide"], "phrase": "x"}]},
        {**ok, "relevant": [{"doc": "guide.md", "path": ["Guide", "Offline"], "phrase": "x"}]},
        # the phrase is in the document, not in this section
        {**ok, "relevant": [{"doc": "guide.md", "path": ["Guide", "Upgrade"], "phrase": "wheel"}]},
        {**ok, "relevant": []},
    ]
    for row in bad_rows:
        with pytest.raises(S.LabelError):
            S.load_questions([doc], _write_questions(tmp_path, [row]))
    with pytest.raises(S.LabelError, match="duplicate"):
        S.load_questions([doc], _write_questions(tmp_path, [ok, ok]))
    twice = _doc(tmp_path, MD + "\n## Install\n\nAgain.\n", "twice.md")
    with pytest.raises(S.LabelError, match="2 headings"):
        S.find_section(twice, ["Guide", "Install"])


def test_the_question_set_matches_its_frozen_corpus() -> None:
    docs = S.load_corpus()
    assert 8 <= len(docs) <= 12
    size = sum(p.stat().st_size for p in S.CORPUS_DIR.glob("*.md"))
    assert 150_000 <= size <= 400_000
    # every label: its heading path exists once, its phrase is in the section
    questions = S.load_questions(docs)
    assert 40 <= len(questions) <= 60
    assert len({q.text for q in questions}) == len(questions)
    asked = {lab.doc for q in questions for lab in q.labels}
    assert asked == {d.name for d in docs}
