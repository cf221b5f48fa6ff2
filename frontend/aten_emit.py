"""What the ATen converters of the torch frontend share (`frontend/aten.py`): the
`Emitter` a handler emits kiln nodes through, `Unsupported` (raised for an argument
kiln does not implement), the torch -> kiln dtype map, and small argument helpers.
Imports torch and kiln.ir only.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from ..ir import Graph, Value, dtype as kiln_dtype, symbolic
from ..ir.dtypes import DType
from ..ir.symbolic import Dim

aten = torch.ops.aten
_TORCH_DTYPES = {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16",
                 torch.float64: "f64", torch.int8: "i8", torch.uint8: "u8", torch.int16: "i16",
                 torch.int32: "i32", torch.int64: "i64", torch.bool: "bool"}


class Unsupported(Exception):
    """A known op used with an argument (or dtype) kiln does not implement."""


def to_kiln_dtype(dt: torch.dtype) -> DType:
    if dt not in _TORCH_DTYPES:
        raise Unsupported(f"dtype {dt}")
    return kiln_dtype(_TORCH_DTYPES[dt])


class Emitter:
    """What a handler sees of the import: the fx node being converted, its torch
    output (`meta`), and helpers that turn torch arguments into kiln values and dims."""

    def __init__(self, graph: Graph, node: torch.fx.Node, values: dict, dim_of: Callable,
                 source: str | None):
        self.graph, self.node, self.values = graph, node, values
        self.dim_of, self.source = dim_of, source
        self.meta = node.meta.get("val")

    # --- the torch output -------------------------------------------------------------
    @property
    def out_dtype(self) -> DType:
        meta = self.meta[0] if isinstance(self.meta, (tuple, list)) else self.meta
        return to_kiln_dtype(meta.dtype)

    def out_shape(self, meta: Any = None) -> tuple[Dim, ...]:
        return tuple(self.dim_of(d) for d in (self.meta if meta is None else meta).shape)

    # --- arguments ----------------------------------------------------------------------
    def dim(self, arg: Any) -> Dim:
        """An int or SymInt argument (a literal or a sym node) as a kiln dim."""
        if isinstance(arg, torch.fx.Node):
            arg = arg.meta["val"]
        return self.dim_of(arg)

    def number(self, arg: Any) -> float | int | bool:
        """A scalar argument that must be known when importing."""
        if isinstance(arg, torch.fx.Node):
            arg = arg.meta["val"]
        if isinstance(arg, (torch.SymInt, torch.SymFloat, torch.SymBool)):
            value = arg.node.maybe_as_int() if isinstance(arg, torch.SymInt) else None
            if value is None:
                raise Unsupported(f"symbolic scalar {arg}")
            return value
        return arg

    def value(self, arg: Any, dtype: DType | None = None) -> Value:
        """A tensor argument as a kiln value (cast to `dtype` if given); a scalar argument
        as a 0-d `full` (a symbolic int as a 0-d `arange`) of `dtype`."""
        if isinstance(arg, torch.fx.Node) and isinstance(arg.meta.get("val"), torch.Tensor):
            v = self.values[arg]
            return v if dtype is None else self.cast(v, dtype)
        if dtype is None:
            raise Unsupported(f"scalar {arg!r} where a tensor is expected")
        if isinstance(arg, torch.fx.Node) and isinstance(arg.meta.get("val"), torch.SymInt):
            d = self.dim(arg)
            if not isinstance(d, int):  # a runtime tensor holding a symbolic size
                r = self.emit("arange", [], name=self.aux("arange"), start=d,
                              end=symbolic.add(d, 1), dtype=dtype)
                return self.emit("reshape", [r], name=self.aux("reshape"), shape=())
        return self.scalar(self.number(arg), dtype)

    def scalar(self, number: float | int | bool, dtype: DType) -> Value:
        value = float(number)
        if dtype.is_integer and value != number:
            raise Unsupported(f"integer {number} is not exact as a float attribute")
        return self.emit("full", [], name=self.aux("full"), shape=(), value=value, dtype=dtype)

    def cast(self, v: Value, dtype: DType, name: str | None = None) -> Value:
        if v.type.dtype == dtype:
            return v
        return self.emit("cast", [v], name=name or self.aux("cast"), dtype=dtype)

    def result_dtype(self, a: Any, b: Any) -> DType:
        """torch's type promotion of two tensor or scalar arguments (`torch.result_type`)."""
        def standin(x: Any) -> Any:   # a tensor of the same dtype and "dimensionality"
            x = x.meta["val"] if isinstance(x, torch.fx.Node) else x
            if isinstance(x, torch.Tensor):
                return torch.empty((1,) * min(x.dim(), 1), dtype=x.dtype)
            return {torch.SymInt: 1, torch.SymFloat: 1.0, torch.SymBool: True}.get(type(x), x)
        return to_kiln_dtype(torch.result_type(standin(a), standin(b)))

    # --- emitting -----------------------------------------------------------------------
    def aux(self, op: str) -> str:
        """The name of a helper node: `<fx name>_<op>`."""
        return f"{self.node.name}_{op}"

    def emit(self, op: str, inputs: Sequence[Value], name: str | None = None, **attrs: Any
             ) -> Value | tuple[Value, ...]:
        node = self.graph.add_node(op, inputs, attrs, name=name or self.node.name,
                                   source=self.source)
        return node.outputs[0] if len(node.outputs) == 1 else node.outputs


def require(condition: bool, reason: str) -> None:
    if not condition:
        raise Unsupported(reason)


def normalize_axis(dim: int, rank: int) -> int:
    return dim % rank if rank else 0


def rank_of(arg: Any) -> int:
    return arg.meta["val"].dim()


def require_strided(kw: dict) -> None:
    require(kw.get("layout") in (None, torch.strided), f"layout={kw.get('layout')}")
