"""The evaluation's documents and questions.

Documents: the demo corpus (:mod:`pgingest.demo.corpus`, the Python standard library's
docstrings read with :mod:`ast`, offline and deterministic) read by the same functions, but with
every body whole: the demo cuts bodies below ``corpus.MAX_BODY_CHARS`` (1,600) characters, which
leaves the end of the 79 longest docstrings out, and the evaluation asks questions answered only
there. ``corpus.py`` takes no parameter for the cut, so the constant is raised while its reader
runs (:func:`eval_documents`).

Questions: ``questions.jsonl``, one JSON object a line: ``id``, ``kind`` (``deep``: answered
only past the demo's cut; ``exact_term``: names a rare identifier such as an exception class;
``paraphrase``: in other words than the document's), ``question`` and ``relevant``: each
answering document's key with the phrase of that document that answers the question.
:func:`load_questions` checks every phrase against the documents (a question whose answer is not
where it says is an error, not a miss) and that a ``deep`` question's phrases are indeed missing
from the demo's cut bodies.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pgingest.demo import corpus

QUESTIONS_PATH = Path(__file__).resolve().parent / "questions.jsonl"
KINDS = ("deep", "exact_term", "paraphrase")
SPLITS = ("tuning", "heldout")
FULL_BODY_CHARS = 1_000_000  # no cut: the longest docstring read is about 6,300 characters


class QuestionSetError(ValueError):
    """The question set does not match the corpus (a phrase is missing, a key is unknown)."""


@dataclass(frozen=True, slots=True)
class Question:
    id: str
    kind: str
    text: str
    relevant: dict[str, str]  # document key -> the phrase of it that answers the question
    split: str


def eval_documents() -> list[corpus.CorpusDoc]:
    """The demo corpus with whole bodies, in the demo's order (same keys, same titles)."""
    return list(corpus.iter_corpus(max_body_chars=FULL_BODY_CHARS))


def _norm(text: str) -> str:
    return " ".join(text.split()).lower()


def assign_splits(rows: Iterable[dict[str, object]]) -> dict[str, str]:
    """id -> "tuning" | "heldout": within each kind, in id order, alternately (deterministic,
    and each half gets the same mix of kinds)."""
    by_kind: dict[str, list[str]] = {}
    for row in rows:
        by_kind.setdefault(str(row["kind"]), []).append(str(row["id"]))
    out: dict[str, str] = {}
    for ids in by_kind.values():
        for i, qid in enumerate(sorted(ids)):
            out[qid] = SPLITS[i % 2]
    return out


def load_questions(docs: Iterable[corpus.CorpusDoc], path: Path = QUESTIONS_PATH) -> list[Question]:
    """The question set, checked against ``docs`` (raises :class:`QuestionSetError`)."""
    bodies = {d.key: _norm(f"{d.title}\n\n{d.body}") for d in docs}
    demo_bodies = {d.key: _norm(f"{d.title}\n\n{d.body}") for d in corpus.iter_corpus()}
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    splits = assign_splits(rows)
    problems: list[str] = []
    seen: set[str] = set()
    questions: list[Question] = []
    for row in rows:
        qid, kind = str(row["id"]), str(row["kind"])
        if qid in seen:
            problems.append(f"{qid}: duplicate id")
        seen.add(qid)
        if kind not in KINDS:
            problems.append(f"{qid}: unknown kind {kind!r}")
        relevant = {str(k): str(v) for k, v in dict(row["relevant"]).items()}
        if not relevant:
            problems.append(f"{qid}: no relevant document")
        for key, phrase in relevant.items():
            if key not in bodies:
                problems.append(f"{qid}: no document {key}")
            elif _norm(phrase) not in bodies[key]:
                problems.append(f"{qid}: {key} does not contain {phrase!r}")
            elif kind == "deep" and _norm(phrase) in demo_bodies.get(key, ""):
                problems.append(f"{qid}: deep, but {key}'s demo body already holds {phrase!r}")
        questions.append(Question(qid, kind, str(row["question"]), relevant, splits[qid]))
    if problems:
        raise QuestionSetError(
            "the question set does not match the corpus:\n" + "\n".join(problems)
        )
    return questions
