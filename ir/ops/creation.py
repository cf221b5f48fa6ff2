"""Ops with no tensor inputs: `constant` (a weight from the graph's constant
table), `full` and `arange` (whose sizes may be symbolic dims)."""
from __future__ import annotations

import numpy as np

from .. import symbolic
from ..dtypes import float32, int64
from ..registry import CREATION, Attr, OpDef, register, type_error
from ..types import TensorType


def _constant_infer(**_) -> TensorType:
    raise type_error("a constant's type comes from the graph's constant table "
                     "(build it with Graph.add_constant)")


def _constant_ref(**_) -> np.ndarray:
    raise type_error("constants are read from the graph's constant table by the interpreter")


register(OpDef("constant", (), _constant_infer, _constant_ref, (Attr("ref", "str"),), {CREATION},
               doc="the array stored under `ref` in Graph.constants"))


def _full_infer(*, shape, value, dtype) -> TensorType:
    if any(isinstance(d, int) and d < 0 for d in shape):
        raise type_error(f"shape {list(shape)} has a negative dim")
    if dtype.packed:
        raise type_error("full cannot make packed int4")
    if dtype.is_integer and not np.iinfo(dtype.numpy).min <= value <= np.iinfo(dtype.numpy).max:
        raise type_error(f"value {value:g} does not fit {dtype!r}")
    return TensorType(tuple(shape), dtype)


def _full_ref(*, shape, value, dtype) -> np.ndarray:
    return np.full(shape, value, dtype=np.float64).astype(dtype.numpy) if dtype.is_float else \
        np.full(shape, value).astype(dtype.numpy)


register(OpDef("full", (), _full_infer, _full_ref,
               (Attr("shape", "dims"), Attr("value", "float"), Attr("dtype", "dtype", float32)),
               {CREATION}))


def _arange_infer(*, start, end, step, dtype) -> TensorType:
    if step == 0:
        raise type_error("step must not be 0")
    if dtype.is_bool or dtype.packed:
        raise type_error(f"arange cannot make {dtype!r}")
    if isinstance(start, int) and isinstance(end, int):
        length: symbolic.Dim = len(range(start, end, step))
    else:
        length = symbolic.ceildiv(symbolic.sub(end, start), step)
    return TensorType((length,), dtype)


register(OpDef("arange", (), _arange_infer,
               lambda *, start, end, step, dtype: np.arange(start, end, step).astype(dtype.numpy),
               (Attr("start", "dim", 0), Attr("end", "dim"), Attr("step", "int", 1),
                Attr("dtype", "dtype", int64)), {CREATION},
               doc="[start, start+step, ...) below end; start/end may be symbolic dims"))
