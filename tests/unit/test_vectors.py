"""Tests of vector validation and normalization (pure numpy: no database)."""

from __future__ import annotations

import base64
import pickle

import numpy as np
import pytest

from pgingest.providers import BadResponse, decode_embedding
from pgingest.vectors import HALFVEC_MAX, REASONS, VectorError, validate_and_normalize

DIM = 8


def batch(n: int = 4, dim: int = DIM, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, dim))


def reason_of(vectors: object, **kwargs: object) -> VectorError:
    params: dict[str, object] = {"dimensions": DIM, "metric": "cosine"}
    params.update(kwargs)
    with pytest.raises(VectorError) as info:
        validate_and_normalize(vectors, **params)  # type: ignore[arg-type]
    assert info.value.reason in REASONS
    return info.value


# --------------------------------------------------------------------------- happy path


@pytest.mark.parametrize("metric", ["cosine", "ip"])
def test_normalizes_to_unit_norm(metric: str) -> None:
    vectors = batch(50, 384) * np.linspace(1e-3, 1e3, 50)[:, None]
    out = validate_and_normalize(vectors, dimensions=384, metric=metric)
    assert out.dtype == np.float32 and out.shape == (50, 384)
    assert out.flags.c_contiguous
    norms = np.linalg.norm(out.astype(np.float64), axis=1)
    assert np.all(np.abs(norms - 1.0) < 1e-6)
    # Same direction as the input.
    expected = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-6)


def test_float64_lists_are_accepted() -> None:
    rows = [[float(i + j) for j in range(DIM)] for i in range(3)]
    out = validate_and_normalize(rows, dimensions=DIM, metric="cosine")
    assert out.dtype == np.float32 and out.shape == (3, DIM)
    assert np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-6)


def test_integers_are_accepted() -> None:
    out = validate_and_normalize([[3, 4] + [0] * (DIM - 2)], dimensions=DIM, metric="cosine")
    assert out[0, :2].tolist() == pytest.approx([0.6, 0.8], abs=1e-7)


def test_l2_metric_keeps_values() -> None:
    vectors = batch(5) * 7.5
    out = validate_and_normalize(vectors, dimensions=DIM, metric="l2")
    assert out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, vectors.astype(np.float32))
    assert not np.allclose(np.linalg.norm(out, axis=1), 1.0)


def test_output_does_not_alias_the_input() -> None:
    vectors = batch(3).astype(np.float32)
    out = validate_and_normalize(vectors, dimensions=DIM, metric="l2")
    out[0, 0] = 12345.0
    assert vectors[0, 0] != 12345.0


def test_fortran_order_input_gives_c_contiguous_output() -> None:
    vectors = np.asfortranarray(batch(6).astype(np.float32))
    for metric in ("cosine", "l2"):
        assert validate_and_normalize(vectors, dimensions=DIM, metric=metric).flags.c_contiguous


def test_huge_but_finite_values_normalize_without_overflow() -> None:
    """Squares of 1e30 overflow float32: norms must be computed in float64."""
    out = validate_and_normalize([[1e30] * DIM], dimensions=DIM, metric="cosine")
    np.testing.assert_allclose(out, np.full((1, DIM), 1 / np.sqrt(DIM)), atol=1e-7)
    tiny = validate_and_normalize([[1e-10] * DIM], dimensions=DIM, metric="ip")
    np.testing.assert_allclose(tiny, np.full((1, DIM), 1 / np.sqrt(DIM)), atol=1e-7)


def test_empty_batch() -> None:
    out = validate_and_normalize([], dimensions=DIM, metric="cosine")
    assert out.shape == (0, DIM) and out.dtype == np.float32
    assert validate_and_normalize([], dimensions=DIM, metric="l2", count=0).shape == (0, DIM)


# --------------------------------------------------------------------------- errors


def test_dimension_of_one_vector() -> None:
    rows = [[0.1] * 384, [0.1] * 384, [0.1] * 384, [0.1] * 383]
    err = reason_of(rows, dimensions=384)
    assert err.reason == "dimension" and err.index == 3
    assert str(err) == "vector 3 has 383 dimensions, model expects 384"


def test_dimension_of_the_whole_batch() -> None:
    err = reason_of(batch(3, DIM + 1))
    assert err.reason == "dimension" and err.index == 0
    assert f"vector 0 has {DIM + 1} dimensions, model expects {DIM}" in str(err)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite(bad: float) -> None:
    vectors = batch(5)
    vectors[2, 6] = bad
    vectors[4, 0] = bad
    err = reason_of(vectors)
    assert err.reason == "non_finite" and err.index == 2
    assert "vector 2 has a non-finite value" in str(err) and "position 6" in str(err)
    assert "2 vectors affected: 2, 4" in str(err)


def test_non_finite_in_float32_input() -> None:
    vectors = batch(2).astype(np.float32)
    vectors[1, 3] = np.nan
    err = reason_of(vectors, metric="l2")
    assert (err.reason, err.index) == ("non_finite", 1)


def test_overflow_of_float32_is_non_finite() -> None:
    rows = [[0.5] * DIM, [0.5] * (DIM - 1) + [1e39]]
    err = reason_of(rows, metric="l2")
    assert err.reason == "non_finite" and err.index == 1
    assert "1e+39" in str(err) and "float32" in str(err)


def test_zero_vector() -> None:
    vectors = batch(4)
    vectors[1] = 0.0
    for metric in ("cosine", "ip", "l2"):
        err = reason_of(vectors, metric=metric)
        assert (err.reason, err.index) == ("zero_vector", 1)
        assert "vector 1 is a zero vector" in str(err)


def test_almost_zero_vector() -> None:
    vectors = batch(2)
    vectors[0] = 1e-14
    err = reason_of(vectors)
    assert (err.reason, err.index) == ("zero_vector", 0)


def test_count() -> None:
    err = reason_of(batch(3), count=4)
    assert err.reason == "count" and err.index is None
    assert str(err) == "got 3 vectors for 4 inputs"
    assert validate_and_normalize(batch(4), dimensions=DIM, metric="cosine", count=4).shape[0] == 4


@pytest.mark.parametrize(
    ("vectors", "index"),
    [
        ([[0.1] * DIM, [None] * DIM], 1),
        ([[0.1] * DIM, ["0.1"] * DIM], 1),
        ([[True] * DIM], 0),
        ([[1 + 2j] * DIM], 0),
        (np.array([["a"] * DIM]), None),
    ],
)
def test_type_of_values(vectors: object, index: int | None) -> None:
    err = reason_of(vectors)
    assert err.reason == "type" and err.index == index
    assert "vectors must be real numbers" in str(err)


@pytest.mark.parametrize(
    "vectors", ["not vectors", None, [0.1] * DIM, np.zeros((2, 2, DIM)), [[0.1] * DIM, [[0.1]]]]
)
def test_type_of_shape(vectors: object) -> None:
    assert reason_of(vectors).reason == "type"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dimensions": 0, "metric": "cosine"}, "dimensions must be a positive integer"),
        ({"dimensions": DIM, "metric": "dot"}, "unknown metric 'dot'"),
        ({"dimensions": DIM, "metric": "l2", "storage": "bit"}, "unknown storage 'bit'"),
    ],
)
def test_bad_arguments_are_not_vector_errors(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        validate_and_normalize(batch(), **kwargs)  # type: ignore[arg-type]
    assert not isinstance(info.value, VectorError)


def test_halfvec_range() -> None:
    vectors = batch(3)
    vectors[2, 1] = 70000.0
    err = reason_of(vectors, metric="l2", storage="halfvec")
    assert (err.reason, err.index) == ("non_finite", 2)
    assert "halfvec" in str(err)
    # Normalized vectors always fit; plain vector storage has no such limit.
    validate_and_normalize(vectors, dimensions=DIM, metric="cosine", storage="halfvec")
    validate_and_normalize(vectors, dimensions=DIM, metric="l2", storage="vector")
    assert float(np.finfo(np.float16).max) == HALFVEC_MAX


def test_vector_error_pickles() -> None:
    err = reason_of(batch(3), count=1)
    again = pickle.loads(pickle.dumps(err))
    assert isinstance(again, VectorError)
    assert (again.reason, again.index, str(again)) == (err.reason, err.index, str(err))
    with pytest.raises(ValueError, match="unknown VectorError reason"):
        VectorError("bogus", "x")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- base64
# The provider decodes an answer's embeddings (providers.decode_embedding); the length and the
# values are checked here, by validate_and_normalize.


def encode(values: np.ndarray) -> str:
    return base64.b64encode(np.asarray(values, dtype="<f4").tobytes()).decode("ascii")


def test_decode_base64_roundtrip() -> None:
    values = np.random.default_rng(1).normal(size=DIM).astype(np.float32)
    out = decode_embedding(encode(values), 0)
    assert out.dtype == np.float32 and out.dtype.isnative and out.shape == (DIM,)
    np.testing.assert_array_equal(out, values)


def test_decode_base64_is_little_endian() -> None:
    payload = base64.b64encode(np.array([1.0, -2.5], dtype=">f4").tobytes()).decode()
    assert decode_embedding(payload, 0).tolist() != [1.0, -2.5]
    assert decode_embedding(encode(np.array([1.0, -2.5])), 0).tolist() == [1.0, -2.5]


def test_decode_base64_wrong_length() -> None:
    # A whole number of float32 values: decoded, then refused by validation.
    short = decode_embedding(encode(np.ones(DIM - 1)), 5)
    with pytest.raises(VectorError) as info:
        validate_and_normalize([short], dimensions=DIM, metric="cosine")
    assert (info.value.reason, info.value.index) == ("dimension", 0)
    assert str(info.value) == f"vector 0 has {DIM - 1} dimensions, model expects {DIM}"
    # Not a float32 array at all: refused by the decoder.
    with pytest.raises(BadResponse) as bad:
        decode_embedding(base64.b64encode(b"12345").decode(), 5)
    assert bad.value.message == "embedding 5 has 5 bytes, not a float32 array"
    assert str(bad.value).startswith("bad_response (HTTP 200): ")


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ("not base64!", "embedding 3 is not valid base64"),
        ("AA=A", "embedding 3 is not valid base64"),
        ("AAAAA", "embedding 3 is not valid base64"),
        ("ÄÄÄÄ", "embedding 3 is not valid base64"),
        (12, "embedding 3 is missing or of type int"),
        (None, "embedding 3 is missing or of type NoneType"),
        ([[1.0], [2.0]], "embedding 3 is not a list of numbers"),
    ],
)
def test_decode_invalid(payload: object, message: str) -> None:
    with pytest.raises(BadResponse) as info:
        decode_embedding(payload, 3)
    assert str(info.value) == f"bad_response (HTTP 200): {message}"


def test_decoded_vectors_validate() -> None:
    rows = [decode_embedding(encode(v), i) for i, v in enumerate(batch(3))]
    out = validate_and_normalize(rows, dimensions=DIM, metric="cosine", count=3)
    assert np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-6)
    nan_row = decode_embedding(encode(np.full(DIM, np.nan)), 1)
    with pytest.raises(VectorError) as info:
        validate_and_normalize([rows[0], nan_row], dimensions=DIM, metric="cosine")
    assert (info.value.reason, info.value.index) == ("non_finite", 1)


@pytest.mark.parametrize("metric", ["cosine", "ip"])
def test_normalised_as_a_float64_division_rounded_once(metric: str) -> None:
    """Each value is the float64 quotient by the float64 norm, rounded once to float32, at any
    scale float32 holds above the zero-vector floor (no overflow in the squares, no
    underflow), bit for bit."""
    rng = np.random.default_rng(11)
    for _ in range(60):
        dims = int(rng.choice([3, 384, 768]))
        scale = 10.0 ** rng.uniform(-10, 18)
        a = (rng.standard_normal((int(rng.integers(1, 80)), dims)) * scale).astype(np.float32)
        wide = a.astype(np.float64)
        norms = np.sqrt(np.einsum("ij,ij->i", wide, wide))  # the formula before, on a copy
        expected = (wide / norms[:, None]).astype(np.float32)
        got = validate_and_normalize(a, dimensions=dims, metric=metric)
        assert got.dtype == np.float32 and got.flags.c_contiguous
        np.testing.assert_array_max_ulp(got, expected, maxulp=0)
