"""TVM lowerings of the windowed reductions (max_pool, avg_pool, adaptive_avg_pool)
and basic lowerings of the contractions (matmul, linear, conv,
scaled_dot_product_attention), all from ir/ops/linalg.py.

The contractions' fast kernels are the GEMM module's (gemm.py and its siblings),
which `lower.py` imports first: `register_basic` registers a basic lowering here
only for a contraction that has no `tvm` lowering yet. `BASIC_LOWERINGS` keeps all
four, so they can be compiled and tested on their own (`lower_node(...,
lowering=..., schedule=...)`). They are plain TE reductions, accumulating in float32
for half types and wrapping in the dtype for integers; their schedule is the default
one (schedule.py), except attention's, which keeps its probabilities materialized.

Block names the schedules rely on: "<op>" is the output (or the accumulation when a
cast or bias follows, then "<op>_acc"); attention's are sdpa_scores, sdpa_max,
sdpa_sum, sdpa_p and sdpa_out.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

from tvm import s_tir, te, tirx

from ...ir.graph import Node
from ...ir.registry import get_op, register_lowering
from . import fastmath
from .common import (LowerContext, compute_dtype, const, dtype_of, index, load_broadcast,
                     lowest, nan_max, narrow, select, static, widen)
from .schedule import BASIC, SCHEDULES, _blocks as _root_blocks, _lanes, decompose_reductions, default_schedule

E = tirx.Expr

BASIC_LOWERINGS: dict[str, Callable] = {}


def register_basic(op: str) -> Callable[[Callable], Callable]:
    """Keep `fn` as the basic lowering of `op`; register it unless a faster one (the
    GEMM module's) already is."""
    def attach(fn: Callable) -> Callable:
        BASIC_LOWERINGS[op] = fn
        if "tvm" not in get_op(op).lowerings:
            register_lowering(op, backend="tvm")(fn)
        return fn
    return attach


_max = te.comm_reducer(lambda a, b: nan_max(a, b), lowest, name="max")


def _clamp(i: E, size: E) -> E:
    return tirx.max(tirx.min(i, size - index(1)), index(0))


def _acc_name(ctx: LowerContext, x: te.Tensor, epilogue: bool) -> str:
    """"<op>" when the accumulation is the output, else "<op>_acc"."""
    last = not epilogue and compute_dtype(dtype_of(x)) == ctx.out_dtype()
    return ctx.node.op if last else f"{ctx.node.op}_acc"


def _out(ctx: LowerContext, acc: te.Tensor, fn: Callable[[E, Sequence[E]], E] | None = None
         ) -> te.Tensor:
    """The output block: fn(acc, idx) (or acc) in the output dtype, or the accumulation
    itself when nothing is left to do."""
    out = ctx.out_dtype()
    if fn is None and dtype_of(acc) == out:
        return acc
    return te.compute(acc.shape, lambda *i: narrow(fn(acc(*i), i) if fn else acc(*i), out),
                      name=ctx.node.op)


# --- pooling ---------------------------------------------------------------------------
def _window(x: te.Tensor, idx: Sequence[E], rs: Sequence[te.IterVar], strides, pads,
            dilations) -> tuple[list[E], E]:
    """The (clamped) input index of window cell `rs` of output `idx`, and whether the
    cell lies inside the input."""
    sp = len(rs)
    src, inside = list(idx[:2]), None
    for d in range(sp):
        pos = idx[2 + d] * index(strides[d]) + rs[d].var * index(dilations[d]) - index(pads[d])
        size = x.shape[2 + d]
        src.append(_clamp(pos, size))
        ok = tirx.And(pos >= index(0), pos < size)
        inside = ok if inside is None else tirx.And(inside, ok)
    return src, inside


@register_lowering("max_pool", backend="tvm")
def _max_pool(ctx: LowerContext, x: te.Tensor, *, kernel, strides, pads, ceil_mode: bool,
              dilations) -> te.Tensor:
    """The window max over a padded copy of x ("max_pool_pad": -inf / the minimum
    around x, far enough for ceil mode's overhang, so padding never wins) whose last
    axis is split by its stride s into s phases (`[..., s, ceil(w / s)]`, column
    s*j + p at [p, j]): the windows of consecutive outputs then read consecutive
    elements at affine indices, without bounds checks (see _schedule_pool)."""
    sp = len(kernel)
    rs = [te.reduce_axis((index(0), index(k)), name=f"r{d}") for d, k in enumerate(kernel)]
    fill = lowest(compute_dtype(dtype_of(x)))   # half types: the max of the widened values
    out_shape = ctx.out_shape()
    sizes = [(out_shape[2 + d] - index(1)) * index(strides[d]) +
             index((kernel[d] - 1) * dilations[d] + 1) for d in range(sp)]
    s = strides[-1]
    phased = [*x.shape[:2], *sizes[:-1], index(s),
              tirx.floordiv(sizes[-1] + index(s - 1), index(s))]

    extents = [*sizes[:-1], phased[-1] * index(s)]      # of the padded copy, per dim

    def pad(*idx):
        cols = [*idx[2:2 + sp - 1], idx[-2] + idx[-1] * index(s)]
        src, inside = list(idx[:2]), None
        for d in range(sp):
            pos = cols[d] - index(pads[d])
            if not pads[d] and static(extents[d]) is not None and \
                    static(extents[d]) <= (static(x.shape[2 + d]) or 0):
                src.append(pos)     # never outside x (a blocked layout's block dim)
                continue
            src.append(_clamp(pos, x.shape[2 + d]))
            ok = tirx.And(pos >= index(0), pos < x.shape[2 + d])
            inside = ok if inside is None else tirx.And(inside, ok)
        return widen(x(*src)) if inside is None else select(inside, widen(x(*src)), fill)
    padded = te.compute(phased, pad, name="max_pool_pad")

    def body(*idx):
        pos = [idx[2 + d] * index(strides[d]) + rs[d].var * index(dilations[d])
               for d in range(sp)]
        last = rs[-1].var * index(dilations[-1])
        return _max(padded(*idx[:2], *pos[:-1], tirx.floormod(last, index(s)),
                           idx[-1] + tirx.floordiv(last, index(s))), axis=rs)
    return _out(ctx, te.compute(out_shape, body, name=_acc_name(ctx, x, False)))


_PAD_LANES = 16


def _schedule_pool(sch: s_tir.Schedule, node: Node) -> None:
    """Parallel over (batch, channel) planes; each plane's padded copy is made right
    before its windows (cache-resident); per output row the window loops are unrolled
    inside the loop over the row's outputs, which LLVM vectorizes (a strided window
    read becomes wide loads and shuffles). Anything else: the default schedule."""
    names = {sch.get(b).name_hint for b in _root_blocks(sch)}
    acc = "max_pool_acc" if "max_pool_acc" in names else "max_pool"   # half types: a cast
    if not {"max_pool_pad", "max_pool"} <= names:
        default_schedule(sch, node)
        return
    pool, pad = sch.get_sblock(acc), sch.get_sblock("max_pool_pad")
    loops = sch.get_loops(pool)
    sp = (len(loops) - 2) // 2
    plane = sch.fuse(loops[0], loops[1])
    out_loops, window = loops[2:2 + sp], loops[2 + sp:]
    lanes = _lanes(sch, pool, [sch.get(out_loops[-1]).extent])
    if lanes:
        row, vec = sch.split(out_loops[-1], [None, lanes])
        sch.reorder(*out_loops[:-1], row, *window, vec)
        sch.vectorize(vec)
    for w in window:
        sch.unroll(w)
    sch.compute_at(pad, out_loops[0], preserve_unit_loops=True)
    # the padded copy's rows: TVM's vectors with a masked tail (their clamped reads are
    # scalar loads; left to LLVM, the loop becomes gathers, slower)
    pad_loops = sch.get_loops(pad)[1:]
    extent = sch.get(pad_loops[-1]).extent if pad_loops else None
    if isinstance(extent, tirx.IntImm) and extent.value >= _PAD_LANES:
        _, vec = sch.split(pad_loops[-1], [None, _PAD_LANES])
        sch.vectorize(vec)
    if acc != "max_pool":   # the cast of each plane right after it
        sch.reverse_compute_at(sch.get_sblock("max_pool"), plane, preserve_unit_loops=True)
    sch.parallel(plane)
    decompose_reductions(sch)


SCHEDULES["max_pool"] = _schedule_pool


@register_lowering("avg_pool", backend="tvm")
def _avg_pool(ctx: LowerContext, x: te.Tensor, *, kernel, strides, pads, ceil_mode: bool,
              count_include_pad: bool) -> te.Tensor:
    """The window sum over the cells counted: those inside the input, plus the padding
    when count_include_pad (never ceil mode's overhang past the padding)."""
    sp = len(kernel)
    rs = [te.reduce_axis((index(0), index(k)), name=f"r{d}") for d, k in enumerate(kernel)]
    ones = (1,) * sp
    dtype = compute_dtype(dtype_of(x))

    def total(*idx):
        src, inside = _window(x, idx, rs, strides, pads, ones)
        return te.sum(select(inside, widen(x(*src)), const(0, dtype)), axis=rs)
    acc = te.compute(ctx.out_shape(), total, name=_acc_name(ctx, x, True))

    def average(v: E, idx: Sequence[E]) -> E:
        count = index(1)
        for d in range(sp):
            start = idx[2 + d] * index(strides[d]) - index(pads[d])
            size = x.shape[2 + d]
            lo, hi = (-index(pads[d]), size + index(pads[d + sp])) if count_include_pad \
                else (index(0), size)
            count = count * (tirx.min(start + index(kernel[d]), hi) - tirx.max(start, lo))
        return v / count.astype(dtype)
    return _out(ctx, acc, average)


@register_lowering("adaptive_avg_pool", backend="tvm")
def _adaptive_avg_pool(ctx: LowerContext, x: te.Tensor, *, output_size) -> te.Tensor:
    """Window j of an axis of n spans [floor(j n / o), ceil((j + 1) n / o))."""
    sp = len(output_size)
    dtype = compute_dtype(dtype_of(x))
    sizes = [x.shape[2 + d] for d in range(sp)]
    outs = [index(o) for o in output_size]
    # the longest window: ceil(n / o) + 1 cells, masked to each window's own length
    rs = [te.reduce_axis((index(0), tirx.floordiv(n + o - index(1), o) + index(1)), name=f"r{d}")
          for d, (n, o) in enumerate(zip(sizes, outs))]

    def bounds(d: int, j: E) -> tuple[E, E]:
        n, o = sizes[d], outs[d]
        return tirx.floordiv(j * n, o), tirx.floordiv((j + index(1)) * n + o - index(1), o)

    def total(*idx):
        src, inside = list(idx[:2]), None
        for d in range(sp):
            start, end = bounds(d, idx[2 + d])
            pos = start + rs[d].var
            src.append(_clamp(pos, sizes[d]))
            ok = pos < end
            inside = ok if inside is None else tirx.And(inside, ok)
        return te.sum(select(inside, widen(x(*src)), const(0, dtype)), axis=rs)
    acc = te.compute(ctx.out_shape(), total, name=_acc_name(ctx, x, True))

    def average(v: E, idx: Sequence[E]) -> E:
        count = index(1)
        for d in range(sp):
            start, end = bounds(d, idx[2 + d])
            count = count * (end - start)
        return v / count.astype(dtype)
    return _out(ctx, acc, average)


# --- contractions: basic lowerings -------------------------------------------------------
def _batch_index(t_batch: Sequence[E], out_batch: Sequence[E]) -> list[E]:
    """`t`'s batch index under broadcasting against the output's batch index."""
    n = len(t_batch)
    return [index(0) if isinstance(d, tirx.IntImm) and d.value == 1 else i
            for d, i in zip(t_batch, out_batch[len(out_batch) - n:])]


@register_basic("matmul")
def basic_matmul(ctx: LowerContext, a: te.Tensor, b: te.Tensor) -> te.Tensor:
    """np.matmul: batch dims broadcast; a rank-1 `a` is one row, a rank-1 `b` one column."""
    a_vec, b_vec = len(a.shape) == 1, len(b.shape) == 1
    out_shape = ctx.out_shape()
    nbatch = len(out_shape) - (0 if a_vec else 1) - (0 if b_vec else 1)
    k = te.reduce_axis((index(0), a.shape[-1]), name="k")

    def body(*idx):
        batch = idx[:nbatch]
        lhs = a(k.var) if a_vec else a(*_batch_index(a.shape[:-2], batch), idx[nbatch], k.var)
        rhs = b(k.var) if b_vec else b(*_batch_index(b.shape[:-2], batch), k.var, idx[-1])
        return te.sum(widen(lhs) * widen(rhs), axis=k)
    acc = te.compute(out_shape, body, name=_acc_name(ctx, a, False))
    return _out(ctx, acc)


@register_basic("linear")
def basic_linear(ctx: LowerContext, x: te.Tensor, weight: te.Tensor,
                 bias: te.Tensor | None = None) -> te.Tensor:
    """x @ weight.T + bias; weight is [out, in]."""
    k = te.reduce_axis((index(0), x.shape[-1]), name="k")
    acc = te.compute(ctx.out_shape(), lambda *idx: te.sum(
        widen(x(*idx[:-1], k.var)) * widen(weight(idx[-1], k.var)), axis=k),
        name=_acc_name(ctx, x, bias is not None))
    return _out(ctx, acc, None if bias is None else
                lambda v, idx: v + widen(bias(idx[-1])))


@register_basic("conv")
def basic_conv(ctx: LowerContext, x: te.Tensor, weight: te.Tensor,
               bias: te.Tensor | None = None, *, strides, pads, dilations, groups: int
               ) -> te.Tensor:
    """Cross-correlation; output channel o reads the input channels of its group."""
    sp = len(weight.shape) - 2
    per_group_in = weight.shape[1]
    per_group_out = tirx.floordiv(weight.shape[0], index(groups))
    rc = te.reduce_axis((index(0), per_group_in), name="rc")
    rs = [te.reduce_axis((index(0), weight.shape[2 + d]), name=f"r{d}") for d in range(sp)]

    def body(n, o, *pos):
        channel = tirx.floordiv(o, per_group_out) * per_group_in + rc.var
        src, inside = _window(x, (n, channel, *pos), rs, strides, pads, dilations)
        value = select(inside, widen(x(*src)), const(0, compute_dtype(dtype_of(x))))
        return te.sum(value * widen(weight(o, rc.var, *(r.var for r in rs))), axis=[rc, *rs])
    acc = te.compute(ctx.out_shape(), body, name=_acc_name(ctx, x, bias is not None))
    return _out(ctx, acc, None if bias is None else lambda v, idx: v + widen(bias(idx[1])))


@register_basic("scaled_dot_product_attention")
def basic_sdpa(ctx: LowerContext, q: te.Tensor, k: te.Tensor, v: te.Tensor,
               mask: te.Tensor | None = None, *, is_causal: bool, scale: float | None
               ) -> te.Tensor:
    """softmax(q k^T * scale + mask) v, as the reference: a bool mask keeps True, the
    row maximum is subtracted only when finite, and a row whose weights sum to 0
    (fully masked, or no keys) gives 0."""
    dtype = compute_dtype(dtype_of(q))
    out_shape = ctx.out_shape()
    nbatch = len(out_shape) - 2
    L, S = q.shape[-2], k.shape[-2]
    batch_shape = out_shape[:nbatch]
    s = scale if scale is not None else 1 / math.sqrt(ctx.in_types[0].shape[-1]) \
        if isinstance(ctx.in_types[0].shape[-1], int) else None
    scale_e = const(s, dtype) if s is not None else \
        const(1, dtype) / tirx.sqrt(q.shape[-1].astype(dtype))
    e = te.reduce_axis((index(0), q.shape[-1]), name="e")
    scores = te.compute([*batch_shape, L, S], lambda *i: te.sum(
        widen(q(*_batch_index(q.shape[:-2], i[:nbatch]), i[-2], e.var)) *
        widen(k(*_batch_index(k.shape[:-2], i[:nbatch]), i[-1], e.var)), axis=e),
        name="sdpa_scores")

    def masked(i: Sequence[E]) -> E:
        value = scores(*i) * scale_e
        if is_causal:
            return select(i[-1] <= i[-2], value, const(-math.inf, dtype))
        if mask is None:
            return value
        m = load_broadcast(mask, i)
        if dtype_of(mask) == "bool":
            return select(m, value, const(-math.inf, dtype))
        return value + widen(m)
    rs = te.reduce_axis((index(0), S), name="s")
    row_max = te.compute([*batch_shape, L], lambda *i: _max(masked([*i, rs.var]), axis=rs),
                         name="sdpa_max")

    def shift(i: Sequence[E]) -> E:
        m = row_max(*i[:-1])
        return select(tirx.isfinite(m), m, const(0, dtype))
    rs2 = te.reduce_axis((index(0), S), name="s")
    row_sum = te.compute([*batch_shape, L], lambda *i: te.sum(
        fastmath.exp(masked([*i, rs2.var]) - shift([*i, rs2.var])), axis=rs2), name="sdpa_sum")

    def weight(*i):
        d = row_sum(*i[:-1])
        return fastmath.exp(masked(i) - shift(i)) / select(tirx.EQ(d, const(0, dtype)),
                                                        const(1, dtype), d)
    p = te.compute([*batch_shape, L, S], weight, name="sdpa_p")
    rs3 = te.reduce_axis((index(0), S), name="s")
    out = te.compute(out_shape, lambda *i: te.sum(
        p(*i[:-1], rs3.var) * widen(v(*_batch_index(v.shape[:-2], i[:nbatch]), rs3.var, i[-1])),
        axis=rs3), name="sdpa_out")
    return _out(ctx, out)


def _schedule_sdpa(sch: s_tir.Schedule, node: Node) -> None:
    default_schedule(sch, node, keep=("sdpa_p",))   # p is read once per output column


BASIC["scaled_dot_product_attention"] = _schedule_sdpa
