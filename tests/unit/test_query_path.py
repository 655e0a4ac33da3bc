"""The one path to a model's endpoint: ``providers.for_model`` builds the client of a model,
``search.embed_queries`` embeds and validates query texts as the model stores vectors. No
database and no HTTP: a fake provider answers in-process."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from pgingest import db, providers, search
from pgingest.vectors import HALFVEC_MAX, VectorError

KEY_ENV = "PGINGEST_TEST_QUERY_PATH_KEY"


def make_model(**changes: Any) -> db.Model:
    model = db.Model(
        name="v1",
        model_id="text-embed-1",
        base_url="https://models.example/v1",
        api_key_env=KEY_ENV,
        dimensions=4,
        storage="vector",
        metric="cosine",
        max_input_tokens=256,
        request_dimensions=True,
        state="active",
        paused=False,
        paused_reason=None,
        store_name="store_v1",
        queue_name="pgingest_v1",
        index_method="hnsw",
        index_options={},
        backfill_done=True,
    )
    return replace(model, **changes)


def as_row(model: db.Model) -> dict[str, Any]:
    """The model as PL/Python hands over a ``pgingest.models`` row: a plain dict."""
    return dict(vars(model), created_at=None, activated_at=None, retired_at=None)


class FakeProvider:
    """Answers ``embed`` with ``answer(texts)`` and records every request."""

    def __init__(self, answer: Callable[[list[str]], np.ndarray], dimensions: int = 4) -> None:
        self.answer = answer
        self.calls: list[list[str]] = []
        self.name = "fake"
        self.dimensions = dimensions

    def embed(self, inputs: Sequence[str]) -> np.ndarray:
        self.calls.append(list(inputs))
        return self.answer(list(inputs))

    def embed_detailed(self, inputs: Sequence[str]) -> providers.EmbedResult:
        return providers.embed_isolating(self, inputs)


def by_number(texts: list[str]) -> np.ndarray:
    """Text ``"q{i}"`` gets the vector ``[i + 1, 1, 0, 0]``: rows can be traced to their text."""
    return np.array([[int(t[1:]) + 1, 1.0, 0.0, 0.0] for t in texts], dtype=np.float32)


def constant(row: list[float]) -> Callable[[list[str]], np.ndarray]:
    return lambda texts: np.array([row] * len(texts), dtype=np.float32)


# -------------------------------------------------------------------------- for_model


def test_for_model_carries_the_model_over(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-own")
    p = providers.for_model(make_model())
    assert p.url == "https://models.example/v1/embeddings"
    assert (p.model, p.dimensions, p.name) == ("text-embed-1", 4, "v1")
    assert p.request_dimensions is True
    assert p._headers()["Authorization"] == "Bearer sk-own"


def test_for_model_works_with_a_plpython_row(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-own")
    row = as_row(make_model(name="v2", model_id="other", dimensions=8, request_dimensions=False))
    p = providers.for_model(row)
    assert p.url == "https://models.example/v1/embeddings"
    assert (p.model, p.dimensions, p.name) == ("other", 8, "v2")
    assert p.request_dimensions is False
    assert p._headers()["Authorization"] == "Bearer sk-own"


@pytest.mark.parametrize("as_dict", [False, True])
def test_for_model_withholds_the_key_from_another_endpoint(
    monkeypatch: pytest.MonkeyPatch, as_dict: bool
) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-own")
    model = make_model()
    p = providers.for_model(as_row(model) if as_dict else model, base_url="http://127.0.0.1:9/v1")
    assert p.url == "http://127.0.0.1:9/v1/embeddings"
    assert "Authorization" not in p._headers()
    assert "api_key=<none>" in repr(p)


@pytest.mark.parametrize(
    "same", ["https://models.example/v1/", "https://models.example/v1/embeddings"]
)
def test_for_model_keeps_the_key_for_the_same_endpoint(
    monkeypatch: pytest.MonkeyPatch, same: str
) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-own")
    p = providers.for_model(make_model(), base_url=same)
    assert p.url == "https://models.example/v1/embeddings"
    assert p._headers()["Authorization"] == "Bearer sk-own"


def test_for_model_applies_overrides() -> None:
    seen: list[str] = []
    p = providers.for_model(
        make_model(),
        timeout=2.0,
        connect_timeout=1.5,
        max_retries=1,
        max_retry_after=5.0,
        max_rate_limit_retries=2,
        on_retry=seen.append,
        name="renamed",
        request_dimensions=False,
    )
    assert (p.timeout, p.connect_timeout) == (2.0, 1.5)
    assert (p.max_retries, p.max_retry_after, p.max_rate_limit_retries) == (1, 5.0, 2)
    assert p.on_retry is not None
    p.on_retry("timeout")
    assert seen == ["timeout"]
    assert (p.name, p.request_dimensions) == ("renamed", False)


# -------------------------------------------------------------------------- embed_queries


def test_halfvec_storage_is_honoured() -> None:
    big = [HALFVEC_MAX * 1.5, 1.0, 0.0, 0.0]
    halfvec = make_model(storage="halfvec", metric="l2")
    with pytest.raises(VectorError, match="beyond halfvec's range") as info:
        search.embed_query(halfvec, FakeProvider(constant(big)), "q0")
    assert info.value.reason == "non_finite"
    with pytest.raises(VectorError, match="beyond halfvec's range"):
        search.embed_queries(as_row(halfvec), FakeProvider(constant(big)), ["q0", "q1"])
    # The same value fits a vector column, and a unit vector fits halfvec.
    vector = make_model(storage="vector", metric="l2")
    assert search.embed_query(vector, FakeProvider(constant(big)), "q0")[0] == big[0]
    cosine = make_model(storage="halfvec", metric="cosine")
    assert np.isclose(
        np.linalg.norm(search.embed_query(cosine, FakeProvider(constant(big)), "q")), 1
    )


def test_dimensions_are_checked() -> None:
    three = FakeProvider(constant([1.0, 2.0, 3.0]), dimensions=3)
    with pytest.raises(VectorError, match="model expects 4") as info:
        search.embed_queries(make_model(), three, ["q0", "q1"])
    assert info.value.reason == "dimension"


def test_vectors_are_validated_as_the_model_stores_them() -> None:
    out = search.embed_queries(make_model(metric="cosine"), FakeProvider(by_number), ["q2"])
    assert out.dtype == np.float32 and out.shape == (1, 4)
    np.testing.assert_allclose(out[0], np.array([3.0, 1.0, 0.0, 0.0]) / np.sqrt(10), rtol=1e-6)
    l2 = search.embed_query(make_model(metric="l2"), FakeProvider(by_number), "q2")
    assert l2.tolist() == [3.0, 1.0, 0.0, 0.0]
    with pytest.raises(VectorError) as info:
        search.embed_query(make_model(), FakeProvider(constant([0.0] * 4)), "q0")
    assert info.value.reason == "zero_vector"


def test_requests_carry_at_most_64_texts_in_order() -> None:
    texts = [f"q{i}" for i in range(130)]
    fake = FakeProvider(by_number)
    out = search.embed_queries(make_model(metric="l2"), fake, texts)
    assert search.QUERY_BATCH == 64
    assert [len(c) for c in fake.calls] == [64, 64, 2]
    assert [t for c in fake.calls for t in c] == texts
    assert out.shape == (130, 4)
    assert out[:, 0].tolist() == [float(i + 1) for i in range(130)]


def test_each_answer_must_have_one_vector_per_text() -> None:
    def one_short_in_the_second_request(texts: list[str]) -> np.ndarray:
        rows = by_number(texts)
        return rows[:-1] if texts[0] == "q64" else rows

    texts = [f"q{i}" for i in range(100)]
    with pytest.raises(VectorError, match="got 35 vectors for 36 inputs") as info:
        search.embed_queries(make_model(), FakeProvider(one_short_in_the_second_request), texts)
    assert info.value.reason == "count"


def test_no_text_no_request() -> None:
    fake = FakeProvider(by_number)
    out = search.embed_queries(make_model(), fake, [])
    assert out.shape == (0, 4) and out.dtype == np.float32
    assert fake.calls == []


def test_one_query_is_one_vector_and_not_its_characters() -> None:
    fake = FakeProvider(by_number)
    vec = search.embed_query(make_model(metric="l2"), fake, "q7")
    assert vec.tolist() == [8.0, 1.0, 0.0, 0.0]
    assert fake.calls == [["q7"]]
    with pytest.raises(TypeError, match="not one string"):
        search.embed_queries(make_model(), fake, "q7")


def test_provider_errors_pass_through() -> None:
    def down(texts: list[str]) -> np.ndarray:
        raise providers.TransientProviderError("refused", error_class="connection")

    with pytest.raises(providers.TransientProviderError, match="refused"):
        search.embed_query(make_model(), FakeProvider(down), "q0")


@pytest.mark.parametrize("text", ["", " ", "\n\t ", "\u2003"])
def test_an_empty_query_is_refused_before_any_request(text: str) -> None:
    fake = FakeProvider(by_number)
    with pytest.raises(search.EmptyQuery, match="query text 1 is empty"):
        search.embed_queries(make_model(), fake, ["q1", text])
    with pytest.raises(ValueError, match="nothing to embed"):
        search.embed_query(make_model(), fake, text)
    assert fake.calls == []


# -------------------------------------------------------------------------- PL/Python's settings


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(None, 10.0), ("2.5", 2.5), ("1e9", 60.0), ("600", 60.0), ("0.0001", 0.1), ("1e-300", 0.1)],
)
def test_the_query_timeout_is_clamped(value: str | None, seconds: float) -> None:
    from pgingest import plpy_support

    assert plpy_support.query_timeout(value) == seconds


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "abc", "-1", "0", "1e999"])
def test_a_query_timeout_that_is_not_a_positive_number_is_refused(value: str) -> None:
    from pgingest import plpy_support

    with pytest.raises(ValueError, match="embedding_timeout"):
        plpy_support.query_timeout(value)


@pytest.mark.parametrize(
    ("error", "said"),
    [
        (
            providers.TransientProviderError("SECRET", status=502),
            "answered HTTP 502 (server_error)",
        ),
        (providers.InputRejected("SECRET", status=400), "answered HTTP 400 (rejected_input)"),
        (providers.BadResponse("SECRET", status=200), "not a valid embeddings answer"),
        (providers.TransientProviderError("SECRET", error_class="timeout"), "(timeout)"),
        (providers.TransientProviderError("SECRET", error_class="connection"), "(connection)"),
        (providers.CircuitOpen("SECRET"), "(circuit_open)"),
    ],
)
def test_a_readers_error_never_carries_the_endpoints_text(
    error: providers.ProviderError, said: str
) -> None:
    from pgingest import plpy_support

    reason = plpy_support.public_reason(error)
    assert said in reason and "SECRET" not in reason
