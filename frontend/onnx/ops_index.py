"""ONNX indexed reads and writes -> kiln: GatherND, ScatterND, ScatterElements (and
the deprecated Scatter), CumProd.

Indices stay runtime tensors. A scatter flattens the written dims of the data to M
rows and each update's target to one linear row index, compares those K indices with
every row (a [K, M] one-hot) and combines the selected updates with the reduction
(none: the last write wins, as ONNX's reference does); memory is O(K * M).
"""
from __future__ import annotations

import math

import numpy as np

from ...ir import Value
from .importer import NodeContext, Unsupported, converter
from .ops_tensor import _static_shape


def _wrap(ctx: NodeContext, index: Value, sizes: np.ndarray) -> Value:
    """Negative indices count from the end of their dim (`sizes` broadcasts)."""
    sizes = ctx.const(sizes.astype(index.type.dtype.numpy))
    negative = ctx.emit("lt", index, ctx.scalar(0, index))
    return ctx.emit("where", negative, ctx.emit("add", index, sizes), index)


def _linear_rows(ctx: NodeContext, index: Value, dims: tuple[int, ...]) -> Value:
    """index [..., k] into the first k dims `dims` -> row numbers [...] (int64)."""
    index = index if index.type.dtype.name == "i64" else ctx.emit("cast", index, dtype="i64")
    index = _wrap(ctx, index, np.asarray(dims))
    strides = np.asarray([math.prod(dims[j + 1:]) for j in range(len(dims))], np.int64)
    return ctx.emit("sum", ctx.emit("mul", index, ctx.const(strides)), axes=(index.type.rank - 1,),
                    keepdims=False)


# --- gather --------------------------------------------------------------------------------
@converter("GatherND", attrs=["batch_dims"])
def _gather_nd(ctx: NodeContext):
    data, index = ctx.input(0), ctx.input(1)
    shape = _static_shape(data, "GatherND")
    ishape = _static_shape(index, "GatherND indices")
    b = ctx.attr("batch_dims", 0)
    k = ishape[-1]
    batch = math.prod(shape[:b])
    rows = math.prod(shape[b:b + k])
    rest = shape[b + k:]
    lin = _linear_rows(ctx, index, shape[b:b + k])                 # [B..., I...]
    lin = ctx.emit("reshape", lin, shape=(batch, math.prod(ishape[b:-1])))
    offsets = ctx.const((np.arange(batch, dtype=np.int64) * rows).reshape(batch, 1))
    lin = ctx.emit("add", lin, offsets)
    flat = ctx.emit("reshape", data, shape=(batch * rows,) + rest)
    out = ctx.emit("gather", flat, lin, axis=0)                    # [B, I, rest...]
    return [ctx.emit("reshape", out, shape=tuple(ishape[:-1]) + rest)]


# --- scatter -------------------------------------------------------------------------------
_IDENTITY = {"add": 0, "mul": 1}


def _fill(dtype, reduction: str):
    if reduction in _IDENTITY:
        return _IDENTITY[reduction]
    if dtype.is_float:
        return -np.inf if reduction == "max" else np.inf
    info = np.iinfo(dtype.numpy)
    return info.min if reduction == "max" else info.max


def scatter_rows(ctx: NodeContext, data: Value, rows: Value, updates: Value,
                 reduction: str) -> Value:
    """data [M, rest...] with updates [K, rest...] written to rows [K] (int64)."""
    if reduction not in ("none", "add", "mul", "max", "min"):
        raise Unsupported(f"reduction {reduction!r}")
    if data.type.dtype.is_bool and reduction != "none":
        raise Unsupported(f"reduction {reduction!r} on bool")
    m, rest = data.type.shape[0], data.type.shape[1:]
    k = rows.type.shape[0]
    tail = (1,) * len(rest)
    hit = ctx.emit("eq", ctx.emit("reshape", rows, shape=(k, 1)),
                   ctx.const(np.arange(m, dtype=np.int64).reshape(1, m)))      # [K, M]
    if reduction == "none":   # only the last write to a row counts
        count = ctx.emit("cast", hit, dtype="i64")
        later = ctx.emit("flip", ctx.emit("cumsum", ctx.emit("flip", count, axes=(0,)), axis=0),
                         axes=(0,))
        hit = ctx.emit("logical_and", hit, ctx.emit("eq", later, ctx.const(np.asarray(1))))
    hit = ctx.emit("reshape", hit, shape=(k, m) + tail)
    upd = ctx.emit("unsqueeze", updates, axes=(1,))                            # [K, 1, rest]
    written = ctx.emit("any", hit, axes=(0,), keepdims=False)                  # [M, 1...]
    if reduction in ("none", "add"):
        picked = ctx.emit("sum", ctx.emit("where", hit, upd, ctx.scalar(0, upd)), axes=(0,),
                          keepdims=False) if not data.type.dtype.is_bool else \
            ctx.emit("any", ctx.emit("logical_and", hit, upd), axes=(0,), keepdims=False)
        if reduction == "add":
            return ctx.emit("add", data, picked)
        return ctx.emit("where", written, picked, data)
    op = {"mul": "prod", "max": "max", "min": "min"}[reduction]
    picked = ctx.emit(op, ctx.emit("where", hit, upd,
                                   ctx.scalar(_fill(data.type.dtype, reduction), upd)),
                      axes=(0,), keepdims=False)
    combine = {"mul": "mul", "max": "maximum", "min": "minimum"}[reduction]
    return ctx.emit("where", written, ctx.emit(combine, data, picked), data)


@converter("ScatterND", attrs=["reduction"])
def _scatter_nd(ctx: NodeContext):
    data, index, updates = ctx.input(0), ctx.input(1), ctx.input(2)
    shape = _static_shape(data, "ScatterND")
    ishape = _static_shape(index, "ScatterND indices")
    k = ishape[-1]
    rows = _linear_rows(ctx, index, shape[:k])
    n = math.prod(ishape[:-1])
    out = scatter_rows(ctx, ctx.emit("reshape", data, shape=(math.prod(shape[:k]),) + shape[k:]),
                       ctx.emit("reshape", rows, shape=(n,)),
                       ctx.emit("reshape", updates, shape=(n,) + shape[k:]),
                       ctx.attr("reduction", "none"))
    return [ctx.emit("reshape", out, shape=shape)]


@converter("ScatterElements", "Scatter", attrs=["axis", "reduction"])
def _scatter_elements(ctx: NodeContext):
    data, index, updates = ctx.input(0), ctx.input(1), ctx.input(2)
    shape = _static_shape(data, "ScatterElements")
    ushape = _static_shape(updates, "ScatterElements updates")
    axis = ctx.attr("axis", 0) % len(shape)
    index = index if index.type.dtype.name == "i64" else ctx.emit("cast", index, dtype="i64")
    index = _wrap(ctx, index, np.asarray(shape[axis]))
    strides = [math.prod(shape[j + 1:]) for j in range(len(shape))]
    # each update's row: its own coordinates on the other axes, the index on `axis`
    grid = np.indices(ushape).astype(np.int64)
    base = sum(grid[j] * strides[j] for j in range(len(shape)) if j != axis)
    rows = ctx.emit("add", ctx.emit("mul", index, ctx.const(np.asarray(strides[axis]))),
                    ctx.const(np.asarray(base, np.int64)))
    n = math.prod(ushape)
    out = scatter_rows(ctx, ctx.emit("reshape", data, shape=(math.prod(shape),)),
                       ctx.emit("reshape", rows, shape=(n,)),
                       ctx.emit("reshape", updates, shape=(n,)), ctx.attr("reduction", "none"))
    return [ctx.emit("reshape", out, shape=shape)]


# --- cumulative product --------------------------------------------------------------------
@converter("CumProd", attrs=["exclusive", "reverse"])
def _cumprod(ctx: NodeContext):
    """prod over j of where(j before-or-at i, x[j], 1): an [n, n] mask along the axis."""
    x = ctx.input(0)
    axis = int(np.asarray(ctx.static(1, "axis")).reshape(-1)[0]) % x.type.rank
    n = x.type.shape[axis]
    if not isinstance(n, int):
        raise Unsupported(f"CumProd along the symbolic dim {n}")
    i, j = np.arange(n)[:, None], np.arange(n)[None, :]
    reverse, exclusive = ctx.attr("reverse", 0), ctx.attr("exclusive", 0)
    keep = (j >= i if reverse else j <= i) & ((j != i) if exclusive else True)
    keep = keep.reshape((n, n) + (1,) * (x.type.rank - axis - 1))
    spread = ctx.emit("unsqueeze", x, axes=(axis,))                    # [..., 1, n, ...]
    masked = ctx.emit("where", ctx.const(keep), spread, ctx.scalar(1, x))
    return [ctx.emit("prod", masked, axes=(axis + 1,), keepdims=False)]
