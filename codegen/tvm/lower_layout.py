"""TVM lowerings of the layout ops (ir/ops/layout.py): reshape, transpose, slice,
concat, split, expand, squeeze/unsqueeze, flip, tile, pad, gather, gather_elements,
index and triu/tril. Each output element is one load (or a constant), so they are
all injective and schedule as such.

Loads never go out of bounds: padding and concatenation read a clamped index and
select; gather, gather_elements and index check their indices first and refuse one
outside [-size, size), as the references do (`common.require_in_range`).
"""
from __future__ import annotations

from tvm import te, tirx

from ...ir.ops.layout import BIG
from ...ir.registry import register_lowering
from .common import (LowerContext, const, dtype_of, index, load_broadcast, normalize_index,
                     require_in_range, select)

E = tirx.Expr


def _clamp(i: E, size: E) -> E:
    return tirx.max(tirx.min(i, size - index(1)), index(0))


@register_lowering("reshape", backend="tvm")
def _reshape(ctx: LowerContext, x: te.Tensor, *, shape) -> te.Tensor:
    in_shape = list(x.shape)

    def body(*idx):
        flat = index(0)
        for i, d in zip(idx, ctx.out_shape()):
            flat = flat * d + i
        src = []
        for d in reversed(in_shape):
            src.append(tirx.floormod(flat, d))
            flat = tirx.floordiv(flat, d)
        return x(*reversed(src))
    return te.compute(ctx.out_shape(), body, name="reshape")


@register_lowering("transpose", backend="tvm")
def _transpose(ctx: LowerContext, x: te.Tensor, *, perm) -> te.Tensor:
    def body(*idx):
        src = [None] * len(perm)
        for d, p in enumerate(perm):
            src[p] = idx[d]
        return x(*src)
    return te.compute(ctx.out_shape(), body, name="transpose")


def slice_begin(ctx: LowerContext, size_dim, start) -> E:
    """The first index of x[start::step] along an axis of `size_dim` (Python slicing:
    negative starts count from the end; starts outside the axis clamp to it)."""
    if isinstance(start, int) and isinstance(size_dim, int):
        return index(slice(start, None).indices(size_dim)[0])
    size = ctx.dim(size_dim)
    if isinstance(start, int) and start >= BIG:
        return size
    if isinstance(start, int) and start < 0:
        return tirx.max(size + index(start), index(0))
    return tirx.min(ctx.dim(start), size)


@register_lowering("slice", backend="tvm")
def _slice(ctx: LowerContext, x: te.Tensor, *, axis: int, start, end, step: int) -> te.Tensor:
    a = axis % len(x.shape)
    begin = slice_begin(ctx, ctx.in_types[0].shape[a], start)

    def body(*idx):
        src = list(idx)
        src[a] = begin + idx[a] * index(step)
        return x(*src)
    return te.compute(ctx.out_shape(), body, name="slice")


@register_lowering("concat", backend="tvm")
def _concat(ctx: LowerContext, *xs: te.Tensor, axis: int) -> te.Tensor:
    a = axis % len(xs[0].shape)
    sizes = [t.shape[a] for t in ctx.in_types]
    parts = [(x, ctx.dim(s)) for x, s in zip(xs, sizes) if s != 0]  # empty inputs add nothing

    def body(*idx):
        # every part is read at a clamped index (in bounds), then the right one selected
        offset, value = index(0), None
        for k, (x, size) in enumerate(parts):
            src = list(idx)
            src[a] = _clamp(idx[a] - offset, size)
            load = x(*src)
            value = load if value is None else select(idx[a] < offset, value, load)
            offset = offset + size
        return value
    return te.compute(ctx.out_shape(), body, name="concat")


@register_lowering("split", backend="tvm")
def _split(ctx: LowerContext, x: te.Tensor, *, axis: int, sizes) -> tuple[te.Tensor, ...]:
    a = axis % len(x.shape)
    def part(offset: int):
        def body(*idx):
            src = list(idx)
            src[a] = idx[a] + index(offset)
            return x(*src)
        return body
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    return tuple(te.compute(ctx.out_shape(i), part(start), name=f"split{i}")
                 for i, start in enumerate(starts))


@register_lowering("expand", backend="tvm")
def _expand(ctx: LowerContext, x: te.Tensor, *, shape) -> te.Tensor:
    return te.compute(ctx.out_shape(), lambda *idx: load_broadcast(x, idx), name="expand")


@register_lowering("squeeze", backend="tvm")
def _squeeze(ctx: LowerContext, x: te.Tensor, *, axes) -> te.Tensor:
    rank = len(x.shape)
    dropped = {a % rank for a in axes}

    def body(*idx):
        it = iter(idx)
        return x(*(index(0) if k in dropped else next(it) for k in range(rank)))
    return te.compute(ctx.out_shape(), body, name="squeeze")


@register_lowering("unsqueeze", backend="tvm")
def _unsqueeze(ctx: LowerContext, x: te.Tensor, *, axes) -> te.Tensor:
    rank = len(x.shape) + len(axes)
    added = {a % rank for a in axes}
    return te.compute(ctx.out_shape(),
                      lambda *idx: x(*(i for k, i in enumerate(idx) if k not in added)),
                      name="unsqueeze")


@register_lowering("flip", backend="tvm")
def _flip(ctx: LowerContext, x: te.Tensor, *, axes) -> te.Tensor:
    rank = len(x.shape)
    flipped = {a % rank for a in axes}
    return te.compute(ctx.out_shape(), lambda *idx: x(*(
        x.shape[k] - index(1) - i if k in flipped else i for k, i in enumerate(idx))),
        name="flip")


@register_lowering("tile", backend="tvm")
def _tile(ctx: LowerContext, x: te.Tensor, *, repeats) -> te.Tensor:
    return te.compute(ctx.out_shape(), lambda *idx: x(*(
        tirx.floormod(i, d) for i, d in zip(idx, x.shape))), name="tile")


@register_lowering("pad", backend="tvm")
def _pad(ctx: LowerContext, x: te.Tensor, *, pads, mode: str, value: float) -> te.Tensor:
    rank = len(x.shape)
    dims = ctx.in_types[0].shape
    fill = const(value, dtype_of(x))
    if mode == "constant" and 0 in dims:   # nothing to read: all padding
        return te.compute(ctx.out_shape(), lambda *idx: fill, name="pad")

    def source(j: E, d: E) -> E:
        """The input index an output at input-relative position j reads."""
        if mode == "edge":
            return _clamp(j, d)
        if mode == "reflect":   # period 2(d - 1); a one-element axis reflects onto itself
            period = tirx.max(index(2) * (d - index(1)), index(1))
            m = tirx.floormod(j, period)
            return select(m < d, m, period - m)
        return _clamp(j, d)

    def body(*idx):
        src, inside = [], None
        for k in range(rank):
            d = x.shape[k]
            j = idx[k] - index(pads[k])
            src.append(source(j, d))
            if mode == "constant" and (pads[k] or pads[k + rank]):
                ok = tirx.And(j >= index(0), j < d)
                inside = ok if inside is None else tirx.And(inside, ok)
        load = x(*src)
        return load if inside is None else select(inside, load, fill)
    return te.compute(ctx.out_shape(), body, name="pad")


@register_lowering("gather", backend="tvm")
def _gather(ctx: LowerContext, x: te.Tensor, indices: te.Tensor, *, axis: int) -> te.Tensor:
    a = axis % len(x.shape)
    k = len(indices.shape)
    require_in_range(ctx, indices, x.shape[a], a)

    def body(*idx):
        i = normalize_index(indices(*idx[a:a + k]), x.shape[a])
        return x(*idx[:a], i, *idx[a + k:])
    return te.compute(ctx.out_shape(), body, name="gather")


@register_lowering("gather_elements", backend="tvm")
def _gather_elements(ctx: LowerContext, x: te.Tensor, indices: te.Tensor, *, axis: int
                     ) -> te.Tensor:
    a = axis % len(x.shape)
    require_in_range(ctx, indices, x.shape[a], a)

    def body(*idx):
        src = list(idx)
        src[a] = normalize_index(indices(*idx), x.shape[a])
        return x(*src)
    return te.compute(ctx.out_shape(), body, name="gather_elements")


@register_lowering("index", backend="tvm")
def _index(ctx: LowerContext, x: te.Tensor, *indices: te.Tensor, axis: int) -> te.Tensor:
    n = len(indices)
    b = len(ctx.out_types[0].shape) - len(x.shape) + n   # rank of the broadcast indices
    for k, t in enumerate(indices):
        require_in_range(ctx, t, x.shape[axis + k], axis + k)

    def body(*idx):
        where = idx[axis:axis + b]
        picked = [normalize_index(load_broadcast(t, where), x.shape[axis + k])
                  for k, t in enumerate(indices)]
        return x(*idx[:axis], *picked, *idx[axis + b:])
    return te.compute(ctx.out_shape(), body, name="index")


def _triangle(ctx: LowerContext, x: te.Tensor, diagonal: int, upper: bool) -> te.Tensor:
    zero = const(0, dtype_of(x))

    def body(*idx):
        offset = idx[-1] - idx[-2]
        keep = offset >= index(diagonal) if upper else offset <= index(diagonal)
        return select(keep, x(*idx), zero)
    return te.compute(ctx.out_shape(), body, name="triu" if upper else "tril")


register_lowering("triu", backend="tvm")(
    lambda ctx, x, *, diagonal: _triangle(ctx, x, diagonal, upper=True))
register_lowering("tril", backend="tvm")(
    lambda ctx, x, *, diagonal: _triangle(ctx, x, diagonal, upper=False))
