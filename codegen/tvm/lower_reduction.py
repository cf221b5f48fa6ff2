"""TVM lowerings of the reductions (ir/ops/reduction.py): sum, prod, mean, max, min,
any, all, var, argmax/argmin, cumsum, and the normalizations built on them:
softmax, log_softmax, layer_norm, rms_norm, batch_norm, group_norm.

As the references: an empty `axes` reduces all axes; half types accumulate in
float32 and round once; integer sums and products wrap in their dtype; max/min
propagate NaN; argmax/argmin return the first extreme, a NaN counting as the
extreme; means and variances divide in the compute dtype (a mean of nothing is NaN).

Each statistic is its own reduction block and the final formula its own
elementwise block, so the default schedule computes the statistics of a row right
before the row's output (see schedule.py).
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import tvm
import tvm.sym
from tvm import te, tirx, topi

from ...ir.registry import register_lowering
from . import fastmath
from .common import (LowerContext, compute_dtype, const, dtype_of, highest, index, is_float, is_nan,
                     lowest, nan_max, nan_min, narrow, select, widen)

E = tirx.Expr

_prod = te.comm_reducer(lambda a, b: a * b, lambda t: tirx.const(1, t), name="prod")
_max = te.comm_reducer(lambda a, b: nan_max(a, b), lowest, name="max")
_min = te.comm_reducer(lambda a, b: nan_min(a, b), highest, name="min")
_or = te.comm_reducer(lambda a, b: tirx.bitwise_or(a, b), lambda t: tirx.const(0, t), name="any")
_and = te.comm_reducer(lambda a, b: tirx.bitwise_and(a, b), lambda t: tirx.const(1, t),
                       name="all")


def _axes(rank: int, axes: Sequence[int]) -> list[int]:
    return sorted(a % rank for a in axes) if axes else list(range(rank))


def reduce_over(x_shape: Sequence[E], axes: Sequence[int], keepdims: bool, name: str,
                fn: Callable[[Callable[[Sequence[E]], list[E]], list[te.IterVar]], E],
                dtype_name: str | None = None) -> te.Tensor:
    """A reduction of a tensor of `x_shape` over `axes`: `fn(source, raxes)` builds the
    reduce expression, where `source(out_idx)` is the x index of an output element
    (reduced axes replaced by their reduce variables)."""
    rank = len(x_shape)
    raxes = [te.reduce_axis((index(0), x_shape[a]), name=f"r{a}") for a in axes]
    out_shape = [index(1) if a in axes else d for a, d in enumerate(x_shape)] if keepdims \
        else [d for a, d in enumerate(x_shape) if a not in axes]

    def body(*out_idx):
        def source(idx):
            it, r = iter(idx), iter(raxes)
            src = []
            for a in range(rank):
                if a in axes:
                    src.append(next(r).var)
                    if keepdims:
                        next(it)
                else:
                    src.append(next(it))
            return src
        return fn(lambda: source(out_idx), raxes)
    return te.compute(out_shape, body, name=name)


def _count(x_shape: Sequence[E], axes: Sequence[int], dtype: str) -> E:
    n = index(1)
    for a in axes:
        n = n * x_shape[a]
    return n.astype(dtype)


def divide(v: E, n: E) -> E:
    """v / n for a float count n; TVM refuses to fold a division by a constant zero (the
    mean of nothing), so that one is spelled out: +-inf, or NaN for 0/0 and NaN/0."""
    n = tvm.sym.Analyzer().simplify(n)
    if isinstance(n, tirx.FloatImm) and n.value == 0:
        zero = const(0, dtype_of(v))
        return select(v > zero, const(np.inf, dtype_of(v)),
                      select(v < zero, const(-np.inf, dtype_of(v)), const(np.nan, dtype_of(v))))
    return v / n


def per_row_divide(v: E, d: E) -> E:
    """v / d for a divisor shared by a whole row (a norm's deviation, softmax's sum),
    as v * (1 / d): LLVM hoists the one division out of the row's vector loop, and a
    multiply per element is several times cheaper than a vector division (the result
    is within one rounding of v / d; 0, inf and NaN come out as from the division)."""
    return v * (const(1, dtype_of(d)) / d)


def _sum(x: te.Tensor, axes: list[int], keepdims: bool, name: str,
         value: Callable[[E], E] = lambda v: v) -> te.Tensor:
    """sum over `axes` of value(widen(x)), in the compute dtype."""
    return reduce_over(x.shape, axes, keepdims, name,
                       lambda src, r: te.sum(value(widen(x(*src()))), axis=r))


def _finish(ctx: LowerContext, t: te.Tensor, fn: Callable[[E], E] | None = None) -> te.Tensor:
    """The node's output: fn(t) (or t) in the output dtype, as its own elementwise block."""
    out = ctx.out_dtype()
    return te.compute(t.shape, lambda *i: narrow(fn(t(*i)) if fn else t(*i), out),
                      name=ctx.node.op)


@register_lowering("sum", backend="tvm")
def _sum_op(ctx: LowerContext, x: te.Tensor, *, axes, keepdims: bool) -> te.Tensor:
    s = _sum(x, _axes(len(x.shape), axes), keepdims, "sum")
    return s if dtype_of(s) == ctx.out_dtype() else _finish(ctx, s)


@register_lowering("prod", backend="tvm")
def _prod_op(ctx: LowerContext, x: te.Tensor, *, axes, keepdims: bool) -> te.Tensor:
    p = reduce_over(x.shape, _axes(len(x.shape), axes), keepdims, "prod",
                    lambda src, r: _prod(widen(x(*src())), axis=r))
    return p if dtype_of(p) == ctx.out_dtype() else _finish(ctx, p)


@register_lowering("mean", backend="tvm")
def _mean(ctx: LowerContext, x: te.Tensor, *, axes, keepdims: bool) -> te.Tensor:
    ax = _axes(len(x.shape), axes)
    s = _sum(x, ax, keepdims, "mean_sum")
    n = _count(x.shape, ax, dtype_of(s))
    return _finish(ctx, s, lambda v: divide(v, n))


def _extreme(reducer: te.CommReducer, name: str):
    """max/min; half types select among widened values (exact) and narrow back."""
    def lower(ctx: LowerContext, x: te.Tensor, *, axes, keepdims: bool) -> te.Tensor:
        r = reduce_over(x.shape, _axes(len(x.shape), axes), keepdims, name,
                        lambda src, r: reducer(widen(x(*src())), axis=r))
        return r if dtype_of(r) == ctx.out_dtype() else _finish(ctx, r)
    return lower


register_lowering("max", backend="tvm")(_extreme(_max, "max"))
register_lowering("min", backend="tvm")(_extreme(_min, "min"))


def _logical(reducer: te.CommReducer, name: str):
    def lower(ctx: LowerContext, x: te.Tensor, *, axes, keepdims: bool) -> te.Tensor:
        r = reduce_over(x.shape, _axes(len(x.shape), axes), keepdims, name + "_int8",
                        lambda src, r: reducer(x(*src()).astype("int8"), axis=r))
        return te.compute(r.shape, lambda *i: tirx.NE(r(*i), tirx.const(0, "int8")), name=name)
    return lower


register_lowering("any", backend="tvm")(_logical(_or, "any"))
register_lowering("all", backend="tvm")(_logical(_and, "all"))


@register_lowering("var", backend="tvm")
def _var(ctx: LowerContext, x: te.Tensor, *, axes, keepdims: bool, correction: int
         ) -> te.Tensor:
    """np.var: the mean first, then the mean square deviation over max(n - correction, 0)."""
    ax = _axes(len(x.shape), axes)
    s = _sum(x, ax, True, "var_sum")
    dtype = dtype_of(s)
    n = _count(x.shape, ax, dtype)

    def deviation(src, r):
        idx = src()
        mean = divide(s(*[index(0) if a in ax else i for a, i in enumerate(idx)]), n)
        d = widen(x(*idx)) - mean
        return te.sum(d * d, axis=r)
    ss = reduce_over(x.shape, ax, keepdims, "var_sq", deviation)
    denom = tirx.max(n - const(correction, dtype), const(0, dtype))
    return _finish(ctx, ss, lambda v: divide(v, denom))


def _arg(better_value: Callable[[E, E], E], name: str):
    """argmax/argmin: a (index, value) reduction; on a tie the lower index wins and a
    NaN beats every number (the first NaN wins), as np.argmax/np.argmin."""
    def combine(acc, new):
        (i0, v0), (i1, v1) = acc, new
        w0, w1 = widen(v0), widen(v1)
        take = tirx.Or(better_value(w1, w0), tirx.And(tirx.EQ(w1, w0), i1 < i0))
        if is_float(dtype_of(v0)):
            n0, n1 = is_nan(w0), is_nan(w1)
            take = tirx.Or(tirx.And(n1, tirx.Or(tirx.Not(n0), i1 < i0)),
                           tirx.And(tirx.Not(n0), tirx.And(tirx.Not(n1), take)))
        return select(take, i1, i0), select(take, v1, v0)

    reducer = te.comm_reducer(
        combine, lambda ti, tv: (tirx.max_value(ti), lowest(tv) if name == "argmax"
                                 else highest(tv)), name=name)

    def lower(ctx: LowerContext, x: te.Tensor, *, axis: int, keepdims: bool) -> te.Tensor:
        a = axis % len(x.shape)
        idx, _ = reduce_over(x.shape, [a], keepdims, name, lambda src, r: reducer(
            (r[0].var, widen(x(*src()))), axis=r))
        return idx
    return lower


register_lowering("argmax", backend="tvm")(_arg(lambda a, b: a > b, "argmax"))
register_lowering("argmin", backend="tvm")(_arg(lambda a, b: a < b, "argmin"))


@register_lowering("cumsum", backend="tvm")
def _cumsum(ctx: LowerContext, x: te.Tensor, *, axis: int) -> te.Tensor:
    """A scan: parallel over the other axes, serial along `axis` (TOPI's extern kernel),
    accumulating in float32 for half types."""
    acc = compute_dtype(dtype_of(x))
    c = topi.cumsum(x, axis=axis % len(x.shape), dtype=acc)
    return c if acc == ctx.out_dtype() else _finish(ctx, c)


# --- normalizations ----------------------------------------------------------------------
def _row(idx: Sequence[E], axes: Sequence[int]) -> list[E]:
    """The index of a keepdims statistic for element `idx`."""
    return [index(0) if a in axes else i for a, i in enumerate(idx)]


def _softmax_parts(x: te.Tensor, axis: int):
    """(max over axis, sum of exp(x - max), shifted(idx)) with keepdims statistics."""
    # TVM's own max (vectorizable; NaN-blind, but a NaN in the row still makes the
    # row's sum, and so every output, NaN, as the reference)
    m = reduce_over(x.shape, [axis], True, "softmax_max",
                    lambda src, r: te.max(widen(x(*src())), axis=r))

    def shifted(idx):
        return widen(x(*idx)) - m(*_row(idx, [axis]))
    s = reduce_over(x.shape, [axis], True, "softmax_sum",
                    lambda src, r: te.sum(fastmath.exp(shifted(src())), axis=r))
    return m, s, shifted


@register_lowering("softmax", backend="tvm")
def _softmax(ctx: LowerContext, x: te.Tensor, *, axis: int) -> te.Tensor:
    a = axis % len(x.shape)
    _, s, shifted = _softmax_parts(x, a)
    out = ctx.out_dtype()
    return te.compute(x.shape, lambda *i: narrow(per_row_divide(fastmath.exp(shifted(i)), s(*_row(i, [a]))),
                                             out),
                      name="softmax")


@register_lowering("log_softmax", backend="tvm")
def _log_softmax(ctx: LowerContext, x: te.Tensor, *, axis: int) -> te.Tensor:
    a = axis % len(x.shape)
    _, s, shifted = _softmax_parts(x, a)
    out = ctx.out_dtype()
    return te.compute(x.shape, lambda *i: narrow(shifted(i) - tirx.log(s(*_row(i, [a]))), out),
                      name="log_softmax")


def _affine(y: E, idx: Sequence[E], params: Sequence[te.Tensor | None],
            param_index: Callable[[Sequence[E]], list[E]]) -> E:
    """y * weight + bias (each optional), the parameters widened to y's dtype."""
    weight, bias = (list(params) + [None, None])[:2]
    if weight is not None:
        y = y * widen(weight(*param_index(idx)))
    if bias is not None:
        y = y + widen(bias(*param_index(idx)))
    return y


@register_lowering("layer_norm", backend="tvm")
def _layer_norm(ctx: LowerContext, x: te.Tensor, weight: te.Tensor | None = None,
                bias: te.Tensor | None = None, *, axis: int, eps: float) -> te.Tensor:
    rank = len(x.shape)
    a = axis % rank
    ax = list(range(a, rank))
    s = _sum(x, ax, True, "layer_norm_sum")
    dtype = dtype_of(s)
    n = _count(x.shape, ax, dtype)

    def centered(idx):
        return widen(x(*idx)) - divide(s(*_row(idx, ax)), n)
    ss = reduce_over(x.shape, ax, True, "layer_norm_sq",
                     lambda src, r: te.sum(centered(src()) * centered(src()), axis=r))
    out = ctx.out_dtype()

    def body(*idx):
        y = per_row_divide(centered(idx), tirx.sqrt(divide(ss(*_row(idx, ax)), n) +
                                                     const(eps, dtype)))
        return narrow(_affine(y, idx, [weight, bias], lambda i: list(i[a:])), out)
    return te.compute(x.shape, body, name="layer_norm")


@register_lowering("rms_norm", backend="tvm")
def _rms_norm(ctx: LowerContext, x: te.Tensor, weight: te.Tensor | None = None, *, axis: int,
              eps: float) -> te.Tensor:
    rank = len(x.shape)
    a = axis % rank
    ax = list(range(a, rank))
    sq = _sum(x, ax, True, "rms_norm_sq", lambda v: v * v)
    dtype = dtype_of(sq)
    n = _count(x.shape, ax, dtype)
    out = ctx.out_dtype()

    def body(*idx):
        y = per_row_divide(widen(x(*idx)), tirx.sqrt(divide(sq(*_row(idx, ax)), n) +
                                                      const(eps, dtype)))
        return narrow(_affine(y, idx, [weight], lambda i: list(i[a:])), out)
    return te.compute(x.shape, body, name="rms_norm")


@register_lowering("batch_norm", backend="tvm")
def _batch_norm(ctx: LowerContext, x: te.Tensor, mean: te.Tensor, var: te.Tensor,
                weight: te.Tensor | None = None, bias: te.Tensor | None = None, *,
                eps: float) -> te.Tensor:
    out = ctx.out_dtype()
    dtype = compute_dtype(dtype_of(x))

    def body(*idx):
        c = idx[1]
        y = per_row_divide(widen(x(*idx)) - widen(mean(c)),
                           tirx.sqrt(widen(var(c)) + const(eps, dtype)))
        return narrow(_affine(y, idx, [weight, bias], lambda i: [i[1]]), out)
    return te.compute(x.shape, body, name="batch_norm")


@register_lowering("group_norm", backend="tvm")
def _group_norm(ctx: LowerContext, x: te.Tensor, weight: te.Tensor | None = None,
                bias: te.Tensor | None = None, *, num_groups: int, eps: float) -> te.Tensor:
    """Statistics per (sample, group) over the group's channels and all spatial axes."""
    rank = len(x.shape)
    per_group = tirx.floordiv(x.shape[1], index(num_groups))
    rc = te.reduce_axis((index(0), per_group), name="rc")
    rs = [te.reduce_axis((index(0), x.shape[a]), name=f"r{a}") for a in range(2, rank)]
    dtype = compute_dtype(dtype_of(x))
    n = per_group
    for a in range(2, rank):
        n = n * x.shape[a]
    n = n.astype(dtype)
    stat_shape = [x.shape[0], index(num_groups)]

    def element(b, g):
        return widen(x(b, g * per_group + rc.var, *(r.var for r in rs)))
    s = te.compute(stat_shape, lambda b, g: te.sum(element(b, g), axis=[rc, *rs]),
                   name="group_norm_sum")

    def centered_at(b, g, value):
        return value - divide(s(b, g), n)
    ss = te.compute(stat_shape, lambda b, g: te.sum(
        centered_at(b, g, element(b, g)) * centered_at(b, g, element(b, g)), axis=[rc, *rs]),
        name="group_norm_sq")
    out = ctx.out_dtype()

    def body(*idx):
        b, g = idx[0], tirx.floordiv(idx[1], per_group)
        y = per_row_divide(centered_at(b, g, widen(x(*idx))),
                           tirx.sqrt(divide(ss(b, g), n) + const(eps, dtype)))
        return narrow(_affine(y, idx, [weight, bias], lambda i: [i[1]]), out)
    return te.compute(x.shape, body, name="group_norm")
