"""The pure parts of the heading-path evaluation (``python -m eval.headings.run``): the frozen
corpus parsed and rendered as the worker does, sections and their character spans, the heading
path in effect at a chunk's start, the model inputs of each variant, the section-level ranking
of a question and the paired comparison of two variants. No model, no database.

A *section* is the text under a heading up to the next heading of the same or a higher level
(its subsections included): in the rendered text, from the heading's offset to the next heading
whose path is not longer than its own (the Markdown parser's heading path has one element per
open level). A chunk answers a question when its start lies in one of the question's sections.
"""

from __future__ import annotations

import bisect
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pgingest import chunking
from pgingest.raw import detect, parse
from pgingest.worker import raw as worker_raw

HERE = Path(__file__).resolve().parent
CORPUS_DIR = HERE / "corpus"
QUESTIONS_PATH = HERE / "questions.jsonl"
K = 10
PATH_SEPARATOR = " > "


class LabelError(ValueError):
    """A question's label does not match the corpus (unknown document or heading path, an
    ambiguous path, or its answering phrase missing from the section)."""


@dataclass(frozen=True, slots=True)
class Section:
    doc: str
    path: tuple[str, ...]
    start: int  # offset of the heading in the rendered text
    end: int  # offset of the next heading of the same or a higher level (or the text's end)

    @property
    def key(self) -> str:
        return f"{self.doc}#{PATH_SEPARATOR.join(self.path)}"

    def holds(self, doc: str, offset: int) -> bool:
        return doc == self.doc and self.start <= offset < self.end


@dataclass(frozen=True, slots=True)
class Doc:
    name: str
    title: str
    text: str
    heading_starts: tuple[int, ...]
    # structure["headings"]: (offset, path) where the heading path changes
    headings: tuple[tuple[int, tuple[str, ...]], ...]


@dataclass(frozen=True, slots=True)
class EvalChunk:
    doc: str
    ordinal: int
    char_start: int
    char_end: int
    path: tuple[str, ...]  # the heading path in effect at char_start
    at_heading: bool  # the chunk starts with its own heading
    title: str
    embed_input: str  # as the pipeline sends it today (title, blank line, text)


@dataclass(frozen=True, slots=True)
class Label:
    doc: str
    path: tuple[str, ...]
    phrase: str  # words of the section that answer the question


@dataclass(frozen=True, slots=True)
class HeadingQuestion:
    id: str
    text: str
    labels: tuple[Label, ...]


# --------------------------------------------------------------------------- corpus


def load_doc(path: Path) -> Doc:
    """Parse a Markdown file with the raw parser and render it as the worker does. The title is
    the first heading (the file name when there is none)."""
    parsed = parse.parse_bytes(path.read_bytes(), detect.MARKDOWN)
    rendered = worker_raw.render(parsed)
    headings = tuple((int(off), tuple(p)) for off, p in rendered.structure["headings"])
    first = next((b.text for b in parsed.blocks if b.kind == "heading"), None)
    return Doc(
        name=path.name,
        title=first or path.name,
        text=rendered.text,
        heading_starts=tuple(rendered.heading_starts),
        headings=headings,
    )


def load_corpus(directory: Path = CORPUS_DIR) -> list[Doc]:
    return [load_doc(p) for p in sorted(directory.glob("*.md"))]


def path_at(headings: Sequence[tuple[int, tuple[str, ...]]], offset: int) -> tuple[str, ...]:
    """The heading path in effect at ``offset``: that of the last change at or before it (``()``
    before the first heading)."""
    i = bisect.bisect_right([off for off, _ in headings], offset) - 1
    return headings[i][1] if i >= 0 else ()


def sections(doc: Doc) -> list[Section]:
    """Every heading of ``doc`` as a section, in order."""
    out = []
    paths = [path_at(doc.headings, h) for h in doc.heading_starts]
    for i, (start, p) in enumerate(zip(doc.heading_starts, paths, strict=True)):
        end = len(doc.text)
        for later, q in zip(doc.heading_starts[i + 1 :], paths[i + 1 :], strict=True):
            if len(q) <= len(p):
                end = later
                break
        out.append(Section(doc.name, p, start, end))
    return out


def find_section(doc: Doc, path: Sequence[str]) -> Section:
    found = [s for s in sections(doc) if s.path == tuple(path)]
    if len(found) != 1:
        what = "no heading" if not found else f"{len(found)} headings"
        raise LabelError(f"{doc.name}: {what} with the path {list(path)}")
    return found[0]


def chunk_doc(doc: Doc, config: chunking.ChunkerConfig | None = None) -> list[EvalChunk]:
    """``chunk_structured`` as the worker calls it, each chunk with its heading path."""
    config = config or chunking.ChunkerConfig()
    starts = set(doc.heading_starts)
    out = []
    for c in chunking.chunk_structured(doc.title, doc.text, config, doc.heading_starts):
        out.append(
            EvalChunk(
                doc=doc.name,
                ordinal=c.ordinal,
                char_start=c.char_start,
                char_end=c.char_end,
                path=path_at(doc.headings, c.char_start),
                at_heading=c.char_start in starts,
                title=doc.title,
                embed_input=c.embed_input,
            )
        )
    return out


# --------------------------------------------------------------------------- the model's input


def _path_line(chunk: EvalChunk) -> str:
    return PATH_SEPARATOR.join(chunk.path)


def _section_line(chunk: EvalChunk) -> str:
    rest = chunk.path[1:] if chunk.path[:1] == (chunk.title,) else chunk.path
    return "Section: " + PATH_SEPARATOR.join(rest) if rest else ""


def _prefixed(line: str, chunk: EvalChunk) -> str:
    return f"{line}\n\n{chunk.embed_input}" if line else chunk.embed_input


VARIANTS: dict[str, str] = {
    "plain": "the chunk's embed_input as the pipeline sends it today (title, blank line, text)",
    "path": 'the whole heading path ("A > B > C", the title first) on a line before it',
    "section": 'a "Section: B > C" line before it (the path without its first element when '
    "that is the title)",
    "path_unless_at_heading": '"path" only for chunks that do not start with their own heading',
}


def model_input(variant: str, chunk: EvalChunk) -> str:
    """What the model sees for ``chunk`` under ``variant`` (:data:`VARIANTS`)."""
    if variant == "plain":
        return chunk.embed_input
    if variant == "path":
        return _prefixed(_path_line(chunk), chunk)
    if variant == "section":
        return _prefixed(_section_line(chunk), chunk)
    if variant == "path_unless_at_heading":
        return chunk.embed_input if chunk.at_heading else _prefixed(_path_line(chunk), chunk)
    raise ValueError(f"unknown variant {variant!r}")


# --------------------------------------------------------------------------- questions


def _norm(text: str) -> str:
    return " ".join(text.split()).casefold()


def load_questions(docs: Iterable[Doc], path: Path = QUESTIONS_PATH) -> list[HeadingQuestion]:
    """The questions, each label checked: its document and heading path exist (once), and its
    phrase is in the section's text (whitespace and case folded)."""
    by_name = {d.name: d for d in docs}
    out: list[HeadingQuestion] = []
    seen: set[str] = set()
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        qid = str(row["id"])
        if qid in seen:
            raise LabelError(f"line {n}: duplicate id {qid}")
        seen.add(qid)
        labels = []
        for r in row["relevant"]:
            doc = by_name.get(r["doc"])
            if doc is None:
                raise LabelError(f"{qid}: unknown document {r['doc']!r}")
            sec = find_section(doc, r["path"])
            if _norm(r["phrase"]) not in _norm(doc.text[sec.start : sec.end]):
                raise LabelError(f"{qid}: phrase {r['phrase']!r} not in {sec.key}")
            labels.append(Label(doc.name, tuple(r["path"]), r["phrase"]))
        if not labels:
            raise LabelError(f"{qid}: no relevant section")
        out.append(HeadingQuestion(qid, str(row["question"]), tuple(labels)))
    return out


def question_sections(q: HeadingQuestion, docs: Iterable[Doc]) -> list[Section]:
    by_name = {d.name: d for d in docs}
    return [find_section(by_name[lab.doc], lab.path) for lab in q.labels]


# --------------------------------------------------------------------------- ranking and scores


def section_key(chunk: EvalChunk, relevant: Sequence[Section]) -> str:
    """The ranking unit of a chunk for a question: the labelled section its start lies in, else
    its own leaf section (document and heading path at its start)."""
    for s in relevant:
        if s.holds(chunk.doc, chunk.char_start):
            return s.key
    return f"{chunk.doc}#{PATH_SEPARATOR.join(chunk.path)}"


def ranked_sections(
    scores: np.ndarray, chunks: Sequence[EvalChunk], relevant: Sequence[Section], k: int = K
) -> list[str]:
    """Sections by their best chunk's score, best first, the first ``k`` (ties: chunk order)."""
    order = np.argsort(-scores, kind="stable")
    out: list[str] = []
    seen: set[str] = set()
    for i in order:
        key = section_key(chunks[int(i)], relevant)
        if key not in seen:
            seen.add(key)
            out.append(key)
            if len(out) == k:
                break
    return out


def reciprocal_rank(ranked: Sequence[str], relevant_keys: Iterable[str], k: int = K) -> float:
    keys = set(relevant_keys)
    for rank, key in enumerate(ranked[:k], 1):
        if key in keys:
            return 1.0 / rank
    return 0.0


def sign_test_p(wins: int, losses: int) -> float:
    """Two-sided exact sign test (ties left out): the chance of a split at least this uneven."""
    n = wins + losses
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(wins, losses) + 1)) / 2**n
    return min(1.0, 2 * tail)


def paired(
    base: Sequence[float], other: Sequence[float], *, resamples: int = 10_000, seed: int = 0
) -> dict[str, Any]:
    """``other`` against ``base``, question by question: wins, losses, ties, the mean difference,
    its 95% paired-bootstrap interval and two-sided bootstrap p, and the sign test's p."""
    a = np.asarray(base, dtype=np.float64)
    b = np.asarray(other, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError("paired scores need two non-empty sequences of the same length")
    d = b - a
    wins, losses = int((d > 1e-12).sum()), int((d < -1e-12).sum())
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, size=(resamples, d.size))].mean(axis=1)
    p_boot = min(1.0, 2 * min(float((means <= 0).mean()), float((means >= 0).mean())))
    return {
        "n": int(d.size),
        "wins": wins,
        "losses": losses,
        "ties": int(d.size) - wins - losses,
        "mean_diff": round(float(d.mean()), 4),
        "ci95": [
            round(float(np.quantile(means, 0.025)), 4),
            round(float(np.quantile(means, 0.975)), 4),
        ],
        "p_bootstrap": round(p_boot, 4),
        "p_sign": round(sign_test_p(wins, losses), 4),
    }


def relevance(
    questions: Sequence[HeadingQuestion], docs: Sequence[Doc]
) -> Mapping[str, list[Section]]:
    return {q.id: question_sections(q, docs) for q in questions}
