"""``make eval``'s question set and scores (eval/): no database needed.

The set is checked against the corpus it is asked of (every answering phrase in its document,
deep questions answered only past the demo's cut), split the same way every time, and scored
so that a question without results counts as a miss rather than vanishing."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from eval import dataset, scoring

from pgingest.demo import corpus


@pytest.fixture(scope="module")
def docs() -> list[corpus.CorpusDoc]:
    return dataset.eval_documents()


def test_the_question_set_matches_the_corpus_and_splits_in_halves(
    docs: list[corpus.CorpusDoc],
) -> None:
    questions = dataset.load_questions(docs)
    assert len(questions) >= 100
    demo = {d.key: d.body for d in corpus.iter_corpus()}
    assert [d.key for d in docs] == list(demo)  # the same documents as the demo, longer bodies
    assert sum(len(d.body) > len(demo[d.key]) for d in docs) > 50
    kinds = Counter((q.split, q.kind) for q in questions)
    for kind in dataset.KINDS:
        assert abs(kinds["tuning", kind] - kinds["heldout", kind]) <= 1, kinds
        assert kinds["heldout", kind] >= 10, kinds
    again = {q.id: q.split for q in dataset.load_questions(docs)}
    assert again == {q.id: q.split for q in questions}


def _write(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_phrase_missing_from_its_document_or_a_shallow_deep_question_is_refused(
    docs: list[corpus.CorpusDoc], tmp_path: Path
) -> None:
    good = {
        "id": "q1",
        "kind": "deep",
        "question": "flush a shelf's cache without closing it",
        "relevant": {"pydoc:shelve": "You can call d.sync() to write back all the entries"},
    }
    assert len(dataset.load_questions(docs, _write(tmp_path / "ok.jsonl", [good]))) == 1

    wrong = good | {"relevant": {"pydoc:shelve": "d.flush_everything()"}}
    with pytest.raises(dataset.QuestionSetError, match="does not contain"):
        dataset.load_questions(docs, _write(tmp_path / "wrong.jsonl", [wrong]))
    unknown = good | {"relevant": {"pydoc:no.such.module": "x"}}
    with pytest.raises(dataset.QuestionSetError, match="no document"):
        dataset.load_questions(docs, _write(tmp_path / "unknown.jsonl", [unknown]))
    # Its first sentence is in the demo's cut body too: not a deep question.
    shallow = good | {"relevant": {"pydoc:shelve": "Manage shelves of pickled objects"}}
    with pytest.raises(dataset.QuestionSetError, match="deep, but"):
        dataset.load_questions(docs, _write(tmp_path / "shallow.jsonl", [shallow]))


def test_scores_count_a_question_without_results_as_a_miss() -> None:
    qs = [
        dataset.Question("a", "paraphrase", "x", {"d1": "p"}, "tuning"),
        dataset.Question("b", "paraphrase", "y", {"d2": "p", "d3": "p"}, "tuning"),
    ]
    # a: its document second; b: nothing returned.
    s = scoring.mean_scores({"a": ["d0", "d1"], "b": []}, qs)
    assert s["recall@1"] == 0.0 and s["recall@5"] == 0.5 and s["mrr@10"] == 0.25
    assert s["hit@5"] == 0.5
    assert s["ndcg@10"] == pytest.approx(0.6309 / 2, abs=1e-4)
    # b: one of its two documents first, the other second.
    s = scoring.mean_scores({"a": ["d1"], "b": ["d3", "d2"]}, qs)
    assert s["recall@1"] == 0.75 and s["recall@5"] == 1.0 and s["mrr@10"] == 1.0
