"""Element types as stored in memory: kiln's short dtype names ("f32", "i64", "bf16", ...)
mapped to the NumPy dtype that holds them, the DLPack/TVM dtype name kernels see, and
their size in bytes. The compiler's `kiln.ir.dtypes` builds its `DType`s on this table;
the runtime reads it without importing the compiler.

`i4` is a storage type: two 4-bit values per byte along the last axis, held as uint8
with the last dim halved (rounded up).
"""
from __future__ import annotations

import math

import ml_dtypes
import numpy as np

NUMPY_DTYPES: dict[str, np.dtype] = {
    "f32": np.dtype(np.float32), "f16": np.dtype(np.float16),
    "bf16": np.dtype(ml_dtypes.bfloat16), "f64": np.dtype(np.float64),
    "i8": np.dtype(np.int8), "u8": np.dtype(np.uint8), "i16": np.dtype(np.int16),
    "i32": np.dtype(np.int32), "i64": np.dtype(np.int64), "bool": np.dtype(np.bool_),
    "i4": np.dtype(np.uint8),
}
TVM_DTYPES: dict[str, str] = {
    "f32": "float32", "f16": "float16", "bf16": "bfloat16", "f64": "float64",
    "i8": "int8", "u8": "uint8", "i16": "int16", "i32": "int32", "i64": "int64",
    "bool": "bool", "i4": "uint8",
}
PACKED: dict[str, int] = {"i4": 2}   # elements per storage byte


def known(name: str) -> bool:
    return name in NUMPY_DTYPES


def numpy_dtype(name: str) -> np.dtype:
    """The NumPy dtype holding values of kiln dtype `name` (KeyError if unknown)."""
    return NUMPY_DTYPES[name]


def storage_shape(name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape of the NumPy array that stores a `name`-typed tensor of `shape`."""
    per_byte = PACKED.get(name)
    if per_byte is None or not shape:
        return tuple(shape)
    return (*shape[:-1], -(-shape[-1] // per_byte))


def nbytes(name: str, shape: tuple[int, ...]) -> int:
    """Bytes needed to store a `name`-typed tensor of the concrete `shape`."""
    return math.prod(storage_shape(name, shape)) * NUMPY_DTYPES[name].itemsize
