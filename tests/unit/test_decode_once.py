"""The worker decodes an answer's vectors once, into one array (issue 19): pure code, no HTTP.

``OpenAICompatibleProvider._decode`` joins the decoded base64 embeddings into one ``(n, dims)``
float32 block, ``embed_isolating`` hands that block on when one call answered every input, and
``Inputs.fill`` copies it into the batch's array in one assignment.
"""

from __future__ import annotations

import base64
import binascii
import json

import numpy as np
import pytest

from pgingest import providers
from pgingest.providers import BadResponse, EmbedResult, InputRejected, RaggedResponse
from pgingest.worker.inputs import Inputs
from tests.unit.test_worker_batch import job


def b64(*values: float) -> str:
    return base64.b64encode(np.asarray(values, dtype="<f4").tobytes()).decode()


def answer(*embeddings: object, order: list[int] | None = None) -> bytes:
    idx = order or list(range(len(embeddings)))
    data = [{"index": i, "embedding": embeddings[i]} for i in idx]
    return json.dumps({"data": data}).encode()


@pytest.fixture
def provider() -> providers.OpenAICompatibleProvider:
    return providers.OpenAICompatibleProvider(
        base_url="http://127.0.0.1:1", model="m", dimensions=3
    )


def test_base64_answers_become_one_writable_block_in_index_order(
    provider: providers.OpenAICompatibleProvider,
) -> None:
    got = provider._decode(answer(b64(1, 2, 3), b64(4, 5, 6), order=[1, 0]), 2)
    assert got.dtype == np.float32 and got.shape == (2, 3)
    assert got.flags.c_contiguous and got.flags.writeable
    np.testing.assert_array_equal(got, [[1, 2, 3], [4, 5, 6]])


def test_mixed_lists_and_base64_still_decode(
    provider: providers.OpenAICompatibleProvider,
) -> None:
    got = provider._decode(answer(b64(1, 2, 3), [4.0, 5.0, 6.0]), 2)
    np.testing.assert_array_equal(got, [[1, 2, 3], [4, 5, 6]])


def test_base64_vectors_of_different_lengths_are_ragged(
    provider: providers.OpenAICompatibleProvider,
) -> None:
    with pytest.raises(RaggedResponse) as info:
        provider._decode(answer(b64(1, 2, 3), b64(4, 5)), 2)
    assert [list(r) for r in info.value.rows] == [[1, 2, 3], [4, 5]]


@pytest.mark.parametrize(
    ("embedding", "message"),
    [
        ("AAAA!AAA", "embedding 1 is not valid base64"),
        ("AAA=AAAA", "embedding 1 is not valid base64"),
        ("AAA", "embedding 1 is not valid base64"),
        (base64.b64encode(b"\0" * 6).decode(), "embedding 1 has 6 bytes, not a float32 array"),
    ],
)
def test_bad_base64_is_refused_with_the_embedding_named(
    provider: providers.OpenAICompatibleProvider, embedding: str, message: str
) -> None:
    with pytest.raises(BadResponse, match=message):
        provider._decode(answer(b64(1, 2, 3), embedding), 2)


def test_the_fast_decoder_agrees_with_binascii_strict() -> None:
    rng = np.random.default_rng(7)
    for size in (0, 4, 12, 3072):
        raw = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        text = base64.b64encode(raw).decode()
        assert providers._b64decode(text, 0) == binascii.a2b_base64(text, strict_mode=True) == raw


class _Once:
    def __init__(self, reject: int | None = None) -> None:
        self.calls = 0
        self.reject = reject

    def embed(self, inputs: list[str]) -> np.ndarray:
        self.calls += 1
        if self.reject is not None and str(self.reject) in inputs:
            raise InputRejected("bad input", status=400)
        return np.asarray([[float(t), 0.0, 1.0] for t in inputs], dtype=np.float32)


def test_one_call_for_every_input_hands_its_block_on() -> None:
    result = providers.embed_isolating(_Once(), ["1", "2", "3"])
    assert result.block is not None and result.block.shape == (3, 3)
    assert all(v is not None and v.base is result.block for v in result.vectors)


def test_a_bisected_request_has_no_block() -> None:
    result = providers.embed_isolating(_Once(reject=2), ["1", "2", "3"])
    assert result.block is None and set(result.errors) == {1}
    np.testing.assert_array_equal(result.vectors[2], [3, 0, 1])


def test_fill_copies_the_block_into_the_rows_it_answers() -> None:
    a, b = job(1, "x", "y"), job(2, "z")
    inputs = Inputs([a, b], "m1", 4)
    block = np.arange(12, dtype=np.float32).reshape(3, 4)
    # vectors that disagree with the block: the block is what is copied
    inputs.fill(range(3), EmbedResult([np.zeros(4, np.float32)] * 3, block=block))
    inputs.scatter()
    assert a.vectors is not None and b.vectors is not None
    np.testing.assert_array_equal(a.vectors, block[:2])
    np.testing.assert_array_equal(b.vectors, block[2:])
    block[:] = -1  # the batch holds a copy
    assert float(a.vectors[0, 0]) == 0.0


def test_fill_ignores_a_block_of_the_wrong_shape() -> None:
    a = job(1, "x")
    inputs = Inputs([a], "m1", 4)
    inputs.fill(range(1), EmbedResult([np.ones(3, np.float32)], block=np.ones((1, 3), np.float32)))
    inputs.scatter()
    assert a.vectors is None and a.failure is not None
    assert a.failure.error_class == "invalid_vector_dimension"


def test_without_pybase64_binascii_decodes_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    """PL/Python runs the system Python, which may not have pybase64: the same answers and the
    same refusals from binascii."""
    text = b64(1, 2, 3)
    fast = providers._b64decode(text, 0)
    monkeypatch.setattr(providers, "_pybase64", None)
    assert providers._b64decode(text, 0) == fast
    with pytest.raises(BadResponse, match="embedding 4 is not valid base64"):
        providers._b64decode("AAA=AAAA", 4)
