"""`TensorType`: the static type of every kiln value — a shape of (possibly
symbolic) dims and an element dtype.

    >>> TensorType(("batch", 784), float32)
    f32[batch, 784]
"""
from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Mapping

from . import symbolic
from .dtypes import DType, dtype as to_dtype
from .symbolic import Dim, Shape


@dataclass(frozen=True)
class TensorType:
    shape: Shape
    dtype: DType

    def __post_init__(self) -> None:
        shape = tuple(_dim(d) for d in self.shape)
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "dtype", to_dtype(self.dtype))

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def is_static(self) -> bool:
        return all(isinstance(d, int) for d in self.shape)

    @property
    def symbols(self) -> set[str]:
        return set().union(*(symbolic.symbols(d) for d in self.shape)) if self.shape else set()

    def with_shape(self, shape: Shape) -> "TensorType":
        return self if tuple(shape) == self.shape else TensorType(tuple(shape), self.dtype)

    def with_dtype(self, dtype: DType) -> "TensorType":
        return self if dtype == self.dtype else TensorType(self.shape, dtype)

    def concrete_shape(self, bindings: Mapping[str, int]) -> tuple[int, ...]:
        return symbolic.evaluate_shape(self.shape, bindings)

    def __str__(self) -> str:
        return f"{self.dtype.name}[{', '.join(str(d) for d in self.shape)}]"

    __repr__ = __str__


def _dim(d: object) -> Dim:
    """A dim in canonical form; static dims must be non-negative integers."""
    if isinstance(d, str):
        return symbolic.canonical(d)
    if isinstance(d, bool) or not hasattr(d, "__index__"):
        raise ValueError(f"not a dim: {d!r} (expected a non-negative int or a symbol expression)")
    if operator.index(d) < 0:
        raise ValueError(f"dim {d} is negative")
    return operator.index(d)


def tensor(dtype: DType | str, *shape: Dim) -> TensorType:
    """Shorthand used by tests and the builder: `tensor("f32", "batch", 784)`."""
    return TensorType(tuple(shape), to_dtype(dtype))
