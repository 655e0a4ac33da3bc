"""The demo corpus: the running interpreter's standard library documentation."""

from __future__ import annotations

import json

import pytest

from pgingest.demo import corpus


@pytest.fixture(scope="module")
def docs() -> list[corpus.CorpusDoc]:
    return list(corpus.iter_corpus())


def test_corpus_has_at_least_1000_documents(docs: list[corpus.CorpusDoc]) -> None:
    assert 1000 <= len(docs) <= 2000


def test_keys_are_unique_and_stable_looking(docs: list[corpus.CorpusDoc]) -> None:
    keys = [d.key for d in docs]
    assert len(keys) == len(set(keys))
    for d in docs:
        assert d.key == corpus.KEY_PREFIX + d.metadata["qualname"]
        assert d.title == d.metadata["qualname"]


def test_bodies_are_clean_plain_text(docs: list[corpus.CorpusDoc]) -> None:
    for d in docs:
        assert d.title.strip()
        assert d.body.strip() == d.body and d.body
        assert len(d.body) <= corpus.MAX_BODY_CHARS
        assert "\t" not in d.body and "\r" not in d.body and "\n\n\n" not in d.body
        assert all(ch == "\n" or ch.isprintable() for ch in d.body), d.key


def test_metadata_is_a_json_object(docs: list[corpus.CorpusDoc]) -> None:
    kinds = set()
    for d in docs:
        meta = json.loads(json.dumps(d.metadata))
        assert meta == d.metadata
        assert meta["source"] == "python-stdlib"
        assert d.key.startswith(f"{corpus.KEY_PREFIX}{meta['module']}")
        kinds.add(meta["kind"])
    assert {"module", "class", "function"} <= kinds


def test_order_and_content_are_deterministic(docs: list[corpus.CorpusDoc]) -> None:
    corpus._load_corpus.cache_clear()  # a fresh extraction, not the cached tuple
    again = list(corpus.iter_corpus())
    assert again == docs
    modules = [d.metadata["module"] for d in docs]
    # modules appear in sorted order, each as one contiguous run
    runs = [m for i, m in enumerate(modules) if i == 0 or modules[i - 1] != m]
    assert runs == sorted(runs) and len(runs) == len(set(runs))


def test_limit(docs: list[corpus.CorpusDoc]) -> None:
    assert list(corpus.iter_corpus(10)) == docs[:10]
    assert list(corpus.iter_corpus(0)) == []
    with pytest.raises(ValueError):
        list(corpus.iter_corpus(-1))


def test_demo_queries_point_at_corpus_documents(docs: list[corpus.CorpusDoc]) -> None:
    keys = {d.key for d in docs}
    assert len(corpus.DEMO_QUERIES) == 5
    for q in corpus.DEMO_QUERIES:
        assert q.query.strip()
        assert q.expected_key in keys


def test_stats_fit_the_demo_budget() -> None:
    if corpus.tokenizer_path() is None:
        pytest.skip("no all-MiniLM-L6-v2 tokenizer.json on this machine")
    stats = corpus.corpus_stats()
    assert stats["documents"] >= 1000
    assert 50_000 <= stats["tokens"] <= 250_000
    assert sum(stats["kinds"].values()) == stats["documents"]


def test_cleaning_and_truncation_helpers() -> None:
    text = corpus._clean("Use :func:`os.path.join` or ``x``.\r\n\n\n\n\tEnd  ")
    assert text == "Use os.path.join or x.\n\n    End"
    cut, truncated = corpus._truncate("para one.\n\npara two is longer", 20)
    assert (cut, truncated) == ("para one.", True)
    assert corpus._truncate("short", 20) == ("short", False)
