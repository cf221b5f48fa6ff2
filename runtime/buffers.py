"""Host memory the kernels may touch: NumPy arrays whose data starts on a 64-byte
boundary and is C-contiguous. TVM's CPU kernels assume this alignment (they use
aligned vector loads) and crash on anything less, so every array the runtime hands a
kernel — inputs, constants, scratch slots, outputs — passes through here.
"""
from __future__ import annotations

import math

import numpy as np

ALIGNMENT = 64


def address(array: np.ndarray) -> int:
    """The address of the array's first element (through the array interface, which
    costs less than building `array.ctypes`)."""
    return array.__array_interface__["data"][0]


def is_aligned(array: np.ndarray) -> bool:
    """True when `array` can go to a kernel as it is: aligned start, C-contiguous.
    An empty array qualifies whatever its pointer: no kernel reads it."""
    return array.flags.c_contiguous and (array.size == 0 or address(array) % ALIGNMENT == 0)


def aligned_empty(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """An uninitialised C-contiguous array of `shape` whose data is 64-byte aligned."""
    size = math.prod(shape) * np.dtype(dtype).itemsize
    return aligned_view(np.empty(size + ALIGNMENT, np.uint8), shape, dtype)


def aligned_view(raw: np.ndarray, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """The 64-byte aligned array of `shape` and `dtype` inside `raw`, a byte buffer at
    least ALIGNMENT bytes larger."""
    dtype = np.dtype(dtype)
    size = math.prod(shape) * dtype.itemsize
    start = -address(raw) % ALIGNMENT
    return raw[start:start + size].view(dtype).reshape(shape)


def aligned_copy(array: np.ndarray) -> np.ndarray:
    """A 64-byte aligned C-contiguous copy of `array` (same dtype and shape)."""
    out = aligned_empty(array.shape, array.dtype)
    np.copyto(out, array, casting="no")
    return out


def ensure_aligned(array: np.ndarray) -> np.ndarray:
    """`array` itself when a kernel can use it as is, else an aligned copy."""
    return array if is_aligned(array) else aligned_copy(array)
