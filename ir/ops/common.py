"""Shared pieces of op declarations: type-rule helpers and reference helpers
used by more than one op module. Nothing here is an op."""
from __future__ import annotations

import contextlib
import warnings
from typing import Iterator, Sequence

import ml_dtypes
import numpy as np

from .. import symbolic
from ..dtypes import DType
from ..registry import type_error
from ..symbolic import Dim, Shape
from ..types import TensorType


def normalize_axis(axis: int, rank: int, what: str = "axis") -> int:
    """A possibly negative axis as a non-negative one; raises when out of range
    (a rank-0 tensor has no axes)."""
    if not -rank <= axis < rank:
        raise type_error(f"{what} {axis} is out of range for rank {rank}")
    return axis % rank


def normalize_axes(axes: Sequence[int], rank: int, what: str = "axes") -> tuple[int, ...]:
    out = tuple(normalize_axis(a, rank, what) for a in axes)
    if len(set(out)) != len(out):
        raise type_error(f"{what} {list(axes)} repeats an axis")
    return out


def broadcast_dims(a: Dim, b: Dim) -> Dim:
    if a == b or symbolic.equal(a, b):
        return a
    if a == 1:
        return b
    if b == 1:
        return a
    raise type_error(f"dims {a} and {b} do not broadcast")


def broadcast_shapes(*shapes: Shape) -> Shape:
    """NumPy broadcasting of (possibly symbolic) shapes."""
    rank = max((len(s) for s in shapes), default=0)
    out: list[Dim] = [1] * rank
    for shape in shapes:
        padded = (1,) * (rank - len(shape)) + tuple(shape)
        try:
            out = [broadcast_dims(x, y) for x, y in zip(out, padded)]
        except Exception:
            raise type_error(f"shapes {[list(s) for s in shapes]} do not broadcast") from None
    return tuple(out)


def same_dtype(types: Sequence[TensorType], what: str = "inputs") -> DType:
    """The common dtype of `types`; kiln ops never promote implicitly."""
    dtypes = {t.dtype for t in types}
    if len(dtypes) != 1:
        raise type_error(f"{what} must share one dtype, got {[t.dtype for t in types]} "
                         "(insert a cast)")
    return types[0].dtype


def same_as_first(x: TensorType, *rest: TensorType, **attrs) -> TensorType:
    return x


def as_dtype(array: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """`array` as `dtype` (0-d results of NumPy ufuncs come back as arrays)."""
    return np.asarray(array).astype(dtype, copy=False)


def reduced_shape(shape: Shape, axes: Sequence[int], keepdims: bool) -> Shape:
    if keepdims:
        return tuple(1 if i in axes else d for i, d in enumerate(shape))
    return tuple(d for i, d in enumerate(shape) if i not in axes)


def window_out_dim(size: Dim, kernel: int, stride: int, pad_lo: int, pad_hi: int,
                   dilation: int = 1, ceil_mode: bool = False) -> Dim:
    """Output length of a sliding window (conv/pool), torch's rule incl. ceil_mode."""
    span = dilation * (kernel - 1) + 1
    padded = symbolic.add(size, pad_lo + pad_hi)
    if isinstance(padded, int) and padded < span:
        raise type_error(f"window of span {span} does not fit input length {size} "
                         f"padded by ({pad_lo}, {pad_hi})")
    numerator = symbolic.sub(padded, span)
    if not ceil_mode:
        return symbolic.add(symbolic.floordiv(numerator, stride), 1)
    out = symbolic.add(symbolic.ceildiv(numerator, stride), 1)
    # the last window must start inside the input or the left padding
    if isinstance(out, int) and isinstance(size, int):
        return out - 1 if (out - 1) * stride >= size + pad_lo else out
    if pad_hi + stride <= span:  # then (out - 1) * stride < size + pad_lo always
        return out
    # symbolic: the same rule as a min (exact while pad_hi < span, which pools require)
    return symbolic.minimum(out, symbolic.ceildiv(symbolic.add(size, pad_lo), stride))


def is_float_array(x: np.ndarray) -> bool:
    """True for float16/32/64 and bfloat16 arrays (bfloat16's NumPy kind is 'V')."""
    return x.dtype.kind == "f" or x.dtype == _BF16


def widen(x: np.ndarray) -> np.ndarray:
    """Half-precision floats as float32 (how torch computes them on the CPU); others as is."""
    return x.astype(np.float32) if is_float_array(x) and x.dtype.itemsize < 4 else x


_BF16 = np.dtype(ml_dtypes.bfloat16)


@contextlib.contextmanager
def ieee() -> Iterator[None]:
    """NumPy math without warnings (also a decorator: `@ieee()`): NaN and inf results
    (0/0, log(0), the mean of nothing) are an op's semantics, not a problem to report."""
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield
