"""Element types of kiln tensors and their NumPy equivalents.

A `DType` is a small frozen value; the module-level constants (`float32`, `int8`, …)
are the only instances. `int4` is a *storage* type: two signed 4-bit values packed
per byte (low nibble first); NumPy holds it as uint8 with the last dim halved.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..runtime.dtypes import NUMPY_DTYPES


@dataclass(frozen=True)
class DType:
    name: str        # the spelling in `.kir` text, e.g. "f32"
    long_name: str   # the spelling users type, e.g. "float32"
    bits: int
    kind: str        # "float" | "int" | "uint" | "bool"
    packed: bool = False  # sub-byte storage: several elements per byte

    @property
    def is_float(self) -> bool:
        return self.kind == "float"

    @property
    def is_integer(self) -> bool:
        return self.kind in ("int", "uint")

    @property
    def is_bool(self) -> bool:
        return self.kind == "bool"

    @property
    def numpy(self) -> np.dtype:
        """The NumPy dtype that holds values of this type (uint8 bytes for packed int4)."""
        return _TO_NUMPY[self.name]

    def __repr__(self) -> str:
        return self.long_name


float32 = DType("f32", "float32", 32, "float")
float16 = DType("f16", "float16", 16, "float")
bfloat16 = DType("bf16", "bfloat16", 16, "float")
float64 = DType("f64", "float64", 64, "float")
int8 = DType("i8", "int8", 8, "int")
uint8 = DType("u8", "uint8", 8, "uint")
int16 = DType("i16", "int16", 16, "int")
int32 = DType("i32", "int32", 32, "int")
int64 = DType("i64", "int64", 64, "int")
bool_ = DType("bool", "bool", 8, "bool")
int4 = DType("i4", "int4", 4, "int", packed=True)

ALL_DTYPES: tuple[DType, ...] = (
    float32, float16, bfloat16, float64, int8, uint8, int16, int32, int64, bool_, int4)
_BY_NAME = {d.name: d for d in ALL_DTYPES} | {d.long_name: d for d in ALL_DTYPES}
_TO_NUMPY = NUMPY_DTYPES  # one table, shared with the runtime (kiln.runtime.dtypes)


def dtype(name: str | DType | np.dtype | type) -> DType:
    """Look a dtype up by its short or long name, or by a NumPy dtype."""
    if isinstance(name, DType):
        return name
    if isinstance(name, str) and name in _BY_NAME:
        return _BY_NAME[name]
    try:
        np_dtype = np.dtype(name)
    except TypeError:
        np_dtype = None
    for d in ALL_DTYPES:
        if np_dtype is not None and not d.packed and d.numpy == np_dtype:
            return d
    known = ", ".join(d.long_name for d in ALL_DTYPES)
    raise KeyError(f"unknown dtype {name!r}; kiln knows: {known}")


def from_numpy(array: np.ndarray) -> DType:
    return dtype(array.dtype)


def promote(a: DType, b: DType) -> DType:
    """Result type of a binary arithmetic op on two tensors (torch's rules for tensors)."""
    if a == b:
        return a
    if a.is_float != b.is_float:
        return a if a.is_float else b
    if {a, b} == {float16, bfloat16}:
        return float32
    if a.is_bool or b.is_bool:
        return b if a.is_bool else a
    return dtype(np.promote_types(a.numpy, b.numpy))
