"""Validation and normalization of embedding vectors (pure numpy).

The typed boundary between a provider's answer and the chunks table: a vector that leaves
``validate_and_normalize`` is float32, has the model's exact dimension, only finite values, and
unit L2 norm when the model's metric is cosine or inner product. Everything is vectorised over
the batch; Python loops run only on the error path, to name the offending vector.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final, Literal

import numpy as np
import numpy.typing as npt

__all__ = [
    "HALFVEC_MAX",
    "METRICS",
    "REASONS",
    "STORAGES",
    "ZERO_NORM_EPSILON",
    "VectorError",
    "validate_and_normalize",
]

Reason = Literal["dimension", "non_finite", "zero_vector", "count", "type"]
REASONS: Final[tuple[str, ...]] = ("dimension", "non_finite", "zero_vector", "count", "type")
METRICS: Final[tuple[str, ...]] = ("cosine", "ip", "l2")
NORMALIZED_METRICS: Final[tuple[str, ...]] = ("cosine", "ip")
STORAGES: Final[tuple[str, ...]] = ("vector", "halfvec")

ZERO_NORM_EPSILON: Final = 1e-12
"""A vector whose L2 norm is below this is rejected as a zero vector (it has no direction)."""

HALFVEC_MAX: Final = 65504.0
"""Largest finite half-precision value (pgvector ``halfvec``)."""

_FLOAT32_MAX: Final = float(np.finfo(np.float32).max)

Float32Array = npt.NDArray[np.float32]


class VectorError(ValueError):
    """A provider returned unusable vectors.

    ``reason`` is machine-readable (one of ``REASONS``), ``index`` the first offending vector
    (None when the batch as a whole is wrong).
    """

    def __init__(self, reason: Reason, message: str, *, index: int | None = None) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown VectorError reason {reason!r}")
        super().__init__(message)
        self.reason: Reason = reason
        self.index = index

    def __reduce__(self) -> tuple[Any, ...]:  # keep reason/index across pickling
        return (_rebuild_error, (self.reason, str(self), self.index))


def _rebuild_error(reason: Reason, message: str, index: int | None) -> VectorError:
    return VectorError(reason, message, index=index)


def validate_and_normalize(
    vectors: Sequence[Sequence[float]] | npt.ArrayLike,
    *,
    dimensions: int,
    metric: str,
    count: int | None = None,
    storage: str = "vector",
) -> Float32Array:
    """Check a batch of vectors and return them as a C-contiguous float32 array ``(n, dims)``.

    - ``count``: the number of vectors expected (the number of inputs sent), when known;
    - casts to float32: a value beyond float32's range would become infinite and is rejected;
    - exact dimension, finite values, no zero vector (norm below ``ZERO_NORM_EPSILON``);
    - L2-normalizes rows for ``metric`` ``"cosine"`` or ``"ip"``; ``"l2"`` keeps the values;
    - ``storage="halfvec"``: also rejects values that would overflow half precision.

    Raises ``VectorError`` (with ``reason``) for bad vectors, ``ValueError`` for bad arguments.
    """
    if isinstance(dimensions, bool) or not isinstance(dimensions, int) or dimensions <= 0:
        raise ValueError(f"dimensions must be a positive integer, got {dimensions!r}")
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; expected one of: {', '.join(METRICS)}")
    if storage not in STORAGES:
        raise ValueError(f"unknown storage {storage!r}; expected one of: {', '.join(STORAGES)}")

    arr = _as_2d(vectors, dimensions)
    n = arr.shape[0]
    if count is not None and n != count:
        raise VectorError("count", f"got {n} vectors for {count} inputs")
    if n == 0:
        return np.zeros((0, dimensions), dtype=np.float32)
    if arr.shape[1] != dimensions:
        every = f" (all {n} vectors have {arr.shape[1]})" if n > 1 else ""
        raise VectorError(
            "dimension",
            f"vector 0 has {arr.shape[1]} dimensions, model expects {dimensions}{every}",
            index=0,
        )

    if arr.dtype == np.float32:
        narrow = arr
        _check_finite(narrow, "")
    else:
        if arr.dtype.kind == "f":
            _check_finite(arr, "")  # NaN or infinity in the source
        with np.errstate(over="ignore", invalid="ignore"):
            narrow = arr.astype(np.float32)
        _check_finite(narrow, f", beyond float32's range (max {_FLOAT32_MAX:.4g})", source=arr)

    # Norms in float64 (no overflow, no underflow), accumulated from the float32 values in
    # einsum's buffers rather than from a float64 copy of the whole block: the same norms as
    # the copy's up to 8,192 dimensions (einsum's buffer); past it a norm may differ in its last
    # float64 bit, which rounding the quotient to float32 absorbs but for ~1 value in 10^9.
    norms = np.sqrt(np.einsum("ij,ij->i", narrow, narrow, dtype=np.float64))
    zero = norms < ZERO_NORM_EPSILON
    if zero.any():
        bad = np.flatnonzero(zero)
        raise VectorError(
            "zero_vector",
            f"vector {int(bad[0])} is a zero vector (L2 norm {float(norms[bad[0]]):.3g}"
            f" < {ZERO_NORM_EPSILON:g}){_more(bad)}",
            index=int(bad[0]),
        )

    if metric in NORMALIZED_METRICS:
        # divided in float64, rounded once to float32 (as float64 division then astype)
        out = np.empty(narrow.shape, dtype=np.float32)
        np.divide(narrow, norms[:, None], out=out, dtype=np.float64, casting="same_kind")
    else:
        out = np.array(narrow, dtype=np.float32, order="C", copy=True)

    if storage == "halfvec":
        over = np.abs(out) > HALFVEC_MAX
        if over.any():
            i, j = (int(x) for x in np.argwhere(over)[0])
            raise VectorError(
                "non_finite",
                f"vector {i} has value {float(out[i, j]):.6g} at position {j}, beyond halfvec's"
                f" range (max {HALFVEC_MAX:g}){_more(np.flatnonzero(over.any(axis=1)))}",
                index=i,
            )
    return out


# --------------------------------------------------------------------------- helpers


def _as_2d(vectors: object, dimensions: int) -> npt.NDArray[Any]:
    """A real-numeric 2-D array, or a VectorError naming what is wrong."""
    if isinstance(vectors, np.ndarray):
        arr = vectors
    else:
        if isinstance(vectors, str | bytes) or vectors is None:
            raise VectorError(
                "type", f"expected a sequence of vectors, got {type(vectors).__name__}"
            )
        try:
            arr = np.asarray(vectors)
        except ValueError:  # ragged: vectors of different lengths (or junk inside)
            _raise_ragged(vectors, dimensions)
            raise
    if arr.dtype.kind not in "fiu":
        i = _first_bad(vectors)
        where = "" if i is None else f" (first at vector {i})"
        raise VectorError(
            "type", f"vectors must be real numbers, got {_dtype_name(arr)}{where}", index=i
        )
    if arr.ndim == 1 and arr.shape[0] == 0:
        return arr.reshape(0, dimensions)
    if arr.ndim != 2:
        raise VectorError(
            "type", f"expected a 2-D batch (one row per vector), got {arr.ndim}-D {arr.shape}"
        )
    return arr


def _raise_ragged(vectors: object, dimensions: int) -> None:
    if not isinstance(vectors, Sequence):
        raise VectorError("type", f"expected a sequence of vectors, got {type(vectors).__name__}")
    for i, v in enumerate(vectors):
        try:
            row = np.asarray(v)
        except ValueError:
            raise VectorError(
                "type", f"vector {i} is not a flat list of numbers", index=i
            ) from None
        if row.ndim != 1:
            raise VectorError("type", f"vector {i} is not a flat list of numbers", index=i)
        if row.shape[0] != dimensions:
            raise VectorError(
                "dimension",
                f"vector {i} has {row.shape[0]} dimensions, model expects {dimensions}",
                index=i,
            )
    raise VectorError("type", "vectors are not a rectangular batch of numbers")


def _dtype_name(arr: npt.NDArray[Any]) -> str:
    return {"b": "booleans", "c": "complex numbers", "U": "strings", "S": "bytes"}.get(
        arr.dtype.kind, f"dtype {arr.dtype}"
    )


def _first_bad(vectors: object) -> int | None:
    """Index of the first vector that is not real numbers (list input only)."""
    if isinstance(vectors, np.ndarray) or not isinstance(vectors, Sequence):
        return None
    for i, v in enumerate(vectors):
        try:
            kind = np.asarray(v).dtype.kind
        except ValueError:
            return i
        if kind not in "fiu":
            return i
    return None


def _check_finite(arr: npt.NDArray[Any], why: str, source: npt.NDArray[Any] | None = None) -> None:
    finite = np.isfinite(arr)
    if finite.all():
        return
    rows = np.flatnonzero(~finite.all(axis=1))
    i = int(rows[0])
    j = int(np.flatnonzero(~finite[i])[0])
    if source is not None and np.isfinite(source[i, j]):
        what = f"value {float(source[i, j])!r} at position {j}{why}"
    else:
        what = f"a non-finite value {float(arr[i, j])!r} at position {j}"
    raise VectorError("non_finite", f"vector {i} has {what}{_more(rows)}", index=i)


def _more(rows: npt.NDArray[np.intp]) -> str:
    if rows.shape[0] <= 1:
        return ""
    shown = ", ".join(str(int(r)) for r in rows[:10])
    return f"; {rows.shape[0]} vectors affected: {shown}{', ...' if rows.shape[0] > 10 else ''}"
