"""The `conv` and `conv_packed` lowerings and schedule of the TVM CPU backend: N-d
convolution (NCHW-style layouts, any strides, asymmetric pads, dilations, groups) as
an implicit GEMM on the template of `gemm.py`, with no im2col in memory. Two GEMMs:

- rows GEMM (`lower_conv_rows`; one group, at most ROWS_GEMM_MAX_POSITIONS static
  output positions: ResNet's 14x14 and 7x7 stages): rows = output positions, columns
  = output channels (the vector axis), reduction = (input channel, taps). The weight
  is the column panels: read as packed at compile time (`conv_packed`, from the
  `pack_weights` pass) or packed per call; the row panels gather the input tile by
  tile (padding as zeros). The write-back to NCHW (+ bias, + a fused epilogue) is one
  parallel pass at the root.
- columns GEMM (`lower_conv_columns`; everything else), below.

Per image n and group g the output is a GEMM: rows = the group's output channels,
columns = output positions (the vector axis), reduction = (input channel, tap...).
The input is packed into *phase planes*, so that every tap reads a contiguous run,
then into column panels, so that one tile's reads are one contiguous block:

    padded coordinate of output o, tap t:  o*s + t*d = (o + (t*d)//s) * s + (t*d) % s
    Xph[n, c, ph.., f]       = x at padded coordinate q_i*s_i + ph_i (0 outside x),
                               f = sum_i q_i * P_i (P_i the row pitches, Q_i the extents)
    Xpan[n, co, c, ph.., j]  = Xph[n, c, ph.., co*NB + j]      (NB positions + halo)
    Acc[n, g, r, f]          = sum_{ci, t} Lp[g, r//MR, ci, t.., r%MR]
                                 * Xpan[n, f//NB, g*cg + ci, (t*d)%s.., f%NB + off(t)]
      with off(t) = sum_i ((t_i*d_i)//s_i) * P_i
    out[n, o, o_0..]         = Acc[n, o//og, o%og, sum_i o_i P_i] (+ bias[o])

The inner spatial dims are computed over their whole pitch Q_i = out_i + reach_i (the
extra columns are garbage, never stored): a 3x3 stride-1 conv on 56x56 computes 58
columns per row for 56 (3.6 % extra). Stride 1 has one phase per dim; stride s has s
planes each 1/s of the input, so packing is O(input) whatever the stride (the panels
repeat each tile's halo: (NB + halo) / NB times the input).

Schedule: the template's register tile (6 output channels x 64 positions, accumulated
in a local cache, then stored to Acc whole), the inner tap loops unrolled up to 16
taps inside the input-channel loop. One parallel loop runs over (n, g, column tile),
packing that tile's Xpan inside it while hot, when there are enough tiles for the
threads; otherwise over (n, g, column tile, channel tile) with Xpan packed at the
root. Xph, Lp and the epilogue (the NCHW write-back, + bias, cast) are parallel loop
nests at the root. Depthwise convs (one channel per group) get 1-row tiles.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from tvm import s_tir, te, tirx

from ...ir.graph import Node
from ...ir.registry import register_lowering
from .common import LowerContext, index
from .gemm import (PANELS_PER_BATCH, ROLE, Operand, accumulator_dtype, ceil_div, ceil_to,
                   choose_tiling, from_accumulator, gemm_blocks, inline_epilogue, machine,
                   packed_tiling,
                   panel_gemm, schedule_accumulator, schedule_pack, static, to_accumulator)
from .schedule import SCHEDULES
from .tuning import knobs_for

UNROLL_TAPS = 16    # inner tap loops unroll while they make at most this many taps
ROWS_GEMM_MAX_POSITIONS = 256   # convs with at most this many output positions: rows GEMM


def ceil_div_expr(a: tirx.PrimExpr, b: tirx.PrimExpr) -> tirx.PrimExpr:
    if static(a) is not None and static(b) is not None:
        return index(-(-static(a) // static(b)))
    return tirx.floordiv(a + b - index(1), b)


@register_lowering("conv", backend="tvm")
def lower_conv(ctx: LowerContext, x: te.Tensor, w: te.Tensor, bias: te.Tensor | None = None,
               *, strides, pads, dilations, groups) -> te.Tensor:
    if None in [static(k) for k in w.shape[2:]]:
        raise ctx.fail(f"the kernel's spatial size {list(w.shape[2:])} must be static")
    weight = Weight(w.shape[0], w.shape[1], [static(k) for k in w.shape[2:]],
                    lambda o, c, taps: w[(o, c, *taps)])
    if groups == 1 and rows_gemm(ctx):
        return lower_conv_rows(ctx, x, weight, None, bias, strides=strides, pads=pads,
                               dilations=dilations)
    return lower_conv_columns(ctx, x, weight, bias, strides=strides, pads=pads,
                              dilations=dilations, groups=groups)


@register_lowering("conv_packed", backend="tvm")
def lower_conv_packed(ctx: LowerContext, x: te.Tensor, w: te.Tensor,
                      bias: te.Tensor | None = None, *, out_channels, kernel, strides, pads,
                      dilations) -> te.Tensor:
    """conv with its weight packed at compile time as the GEMM's column panels
    (`conv_packed`): read as is by the rows GEMM, gathered per call by the columns one."""
    nb, taps = static(w.shape[-1]), math.prod(kernel)

    def at(o, c, t):
        k = c * index(taps) + sum((t[i] * math.prod(kernel[i + 1:]) for i in range(len(t) - 1)),
                                  t[-1])
        return w[o // nb, k, o % nb]
    weight = Weight(index(out_channels), x.shape[1], list(kernel), at)
    if rows_gemm(ctx):
        return lower_conv_rows(ctx, x, weight, w, bias, strides=strides, pads=pads,
                               dilations=dilations)
    return lower_conv_columns(ctx, x, weight, bias, strides=strides, pads=pads,
                              dilations=dilations, groups=1)


@dataclass(frozen=True)
class Weight:
    """A conv weight [out, in/groups, *kernel] as its sizes and an accessor."""
    out: tirx.PrimExpr
    per_group: tirx.PrimExpr
    kernel: list[int]
    at: Callable[[tirx.PrimExpr, tirx.PrimExpr, list], tirx.PrimExpr]


def rows_gemm(ctx: LowerContext) -> bool:
    """Whether a one-group conv runs as the rows GEMM (`lower_conv_rows`), which needs
    static output positions: as the tuning database says for this workload, else
    when the positions are few (ResNet's 14x14 and 7x7 stages), where the columns GEMM
    would pad its 64-position tiles most and the weight, the bigger operand, is best
    read as packed column panels. (Measured per ResNet-50 layer: 28x28 and larger
    mostly run faster as the columns GEMM, 14x14 and smaller as rows.)"""
    positions = [static(d) for d in ctx.out_shape()[2:]]
    if None in positions:
        return False
    strategy = knobs_for(ctx.node).strategy
    if strategy is not None:
        return strategy == "rows"
    return math.prod(positions) <= ROWS_GEMM_MAX_POSITIONS


def lower_conv_columns(ctx: LowerContext, x: te.Tensor, weight: Weight,
                       bias: te.Tensor | None, *, strides, pads, dilations, groups
                       ) -> te.Tensor:
    """Output positions as the vector axis, phase planes and column panels (the module
    docstring): any groups, symbolic image sizes."""
    sp = len(strides)
    dtype, acc = ctx.out_dtype(), accumulator_dtype(str(x.dtype))
    N, C = x.shape[0], x.shape[1]
    size = list(x.shape[2:])
    O, cg, ks = weight.out, weight.per_group, weight.kernel
    out_shape = ctx.out_shape()
    outs = out_shape[2:]
    og = static(O) // groups if static(O) is not None else tirx.floordiv(O, index(groups))
    og = index(og) if isinstance(og, int) else og

    # phase planes: extent Q_i per dim (outputs + the taps' reach in whole strides)
    reach = [(ks[i] - 1) * dilations[i] // strides[i] for i in range(sp)]
    Q = [outs[i] + index(reach[i]) for i in range(sp)]
    pitch = [index(1)] * sp
    for i in range(sp - 2, -1, -1):
        pitch[i] = pitch[i + 1] * Q[i + 1]
    cols = outs[0] * pitch[0]                       # flat positions computed
    tiling = choose_tiling(og, cols, acc, knobs_for(ctx.node).mr)
    mr, nb = tiling.mr, tiling.nb
    cols_p = ceil_to(cols, nb)
    max_offset = sum((pitch[i] * reach[i] for i in range(1, sp)), pitch[0] * reach[0])
    width = ceil_to(index(nb) + max_offset, tiling.lanes)   # a panel: its tile + halo
    rows = ceil_div_expr(cols_p - index(nb) + width, pitch[0])
    plane = rows * pitch[0]                         # whole rows; every read stays inside

    def pack_x(n, c, *rest):
        phases, f = rest[:sp], rest[sp]
        q = [tirx.floordiv(f, pitch[0])] + [tirx.floormod(tirx.floordiv(f, pitch[i]), Q[i])
                                           for i in range(1, sp)]
        coords = [q[i] * strides[i] + phases[i] - pads[i] for i in range(sp)]
        valid = [q[0] < Q[0]] + [tirx.all(h >= 0, h < size[i]) for i, h in enumerate(coords)]
        safe = [tirx.max(tirx.min(h, size[i] - index(1)), index(0)) for i, h in enumerate(coords)]
        return tirx.if_then_else(tirx.all(*valid), to_accumulator(x[(n, c, *safe)], acc),
                                 tirx.const(0, acc))

    phase_dims = [index(s) for s in strides]
    xph = te.compute([N, C, *phase_dims, plane], pack_x, name="conv_pack_x",
                     attrs={ROLE: "pack_x", "extents": [rows, *Q[1:]]})
    # column panels: per tile of positions, every channel's run (tile + halo) contiguous
    panel = te.compute([N, ceil_div(cols, nb), C, *phase_dims, width],
                       lambda n, co, c, *rest: xph[(n, c, *rest[:-1], co * nb + rest[-1])],
                       name="conv_pack_r", attrs={ROLE: "pack_r"})
    lp = te.compute(
        [index(groups), ceil_div(og, mr), cg, *[index(k) for k in ks], index(mr)],
        lambda g, ro, ci, *rest: to_accumulator(
            weight.at(g * og + tirx.min(ro * mr + rest[-1], og - index(1)), ci, list(rest[:-1])),
            acc),
        name="conv_pack_l", attrs={ROLE: "pack_l"})

    rci = te.reduce_axis((index(0), cg), name="ci")
    rts = [te.reduce_axis((index(0), index(k)), name=f"t{i}") for i, k in enumerate(ks)]

    def body(n, g, r, f):
        phase = [(rts[i] * dilations[i]) % strides[i] for i in range(sp)]
        offset = f % nb
        for i in range(sp):
            offset = offset + (rts[i] * dilations[i]) // strides[i] * pitch[i]
        return te.sum(lp[(g, r // mr, rci, *rts, r % mr)] *
                      panel[(n, f // nb, g * cg + rci, *phase, offset)], axis=[rci, *rts])

    unrolled, taps = 0, 1
    for k in reversed(ks):
        if taps * k > UNROLL_TAPS:
            break
        taps, unrolled = taps * k, unrolled + 1
    tiles = [static(d) for d in (N, cols_p)]
    panel_parallel = None in tiles or \
        tiles[0] * groups * tiles[1] // nb >= 2 * machine().threads
    attrs = {ROLE: "acc", **tiling.annotations(), "nbatch": 2,
             "panel_parallel": PANELS_PER_BATCH if panel_parallel else 0,
             "epilogue_in_tile": 0, "vector_epilogue": 0, "unroll_reduction": unrolled, "serial": 0}
    accumulated = te.compute([N, index(groups), ceil_to(og, mr), cols_p], body,
                             name="conv_acc", attrs=attrs)

    def out(n, o, *pos):
        g, r = (index(0), o) if groups == 1 else (o // og, o % og)
        f = sum((pos[i] * pitch[i] for i in range(1, sp)), pos[0] * pitch[0])
        v = accumulated[n, g, r, f]
        if bias is not None:
            v = v + to_accumulator(bias[o], acc)
        return from_accumulator(v, dtype)
    return te.compute(out_shape, out, name="conv")


def lower_conv_rows(ctx: LowerContext, x: te.Tensor, weight: Weight, packed: te.Tensor | None,
                    bias: te.Tensor | None, *, strides, pads, dilations) -> te.Tensor:
    """A conv with one group as the GEMM `out[n, p, o] = sum_k X[n, p, k] * W[k, o]`:
    rows p the output positions (broadcast), columns o the output channels (the
    vector axis, the weight's column panels: packed at compile time when `packed`
    is given, else gathered per call from `weight.at`), k = (c, taps) in the weight's order.
    The row panels gather X (im2col, padding as zeros) tile by tile."""
    sp = len(strides)
    dtype, acc = ctx.out_dtype(), accumulator_dtype(str(x.dtype))
    N, C = x.shape[0], x.shape[1]
    size = list(x.shape[2:])
    O, ks = weight.out, weight.kernel
    out_shape = ctx.out_shape()
    outs = [static(d) for d in out_shape[2:]]
    taps = math.prod(ks)
    P, K = index(math.prod(outs)), C * index(taps)
    pointwise = all(k == 1 for k in ks) and not any(pads) and all(s == 1 for s in strides)

    def unravel(i: tirx.PrimExpr, extents: list[int]) -> list[tirx.PrimExpr]:
        coords = []
        for e in reversed(extents):
            coords.append(tirx.floormod(i, index(e)) if e > 1 else index(0))
            i = tirx.floordiv(i, index(e))
        return coords[::-1]

    def x_at(bi, r, k):
        if pointwise:
            return x[(bi[0], k, *unravel(r, outs))]
        c, t = tirx.floordiv(k, index(taps)), unravel(tirx.floormod(k, index(taps)), ks)
        pos = unravel(r, outs)
        coords = [pos[i] * strides[i] + t[i] * dilations[i] - pads[i] for i in range(sp)]
        valid = tirx.all(*[tirx.all(h >= 0, h < size[i]) for i, h in enumerate(coords)])
        safe = [tirx.max(tirx.min(h, size[i] - index(1)), index(0))
                for i, h in enumerate(coords)]
        return tirx.Select(valid, to_accumulator(x[(bi[0], c, *safe)], acc), tirx.const(0, acc))

    def w_at(bi, o, k):
        c, t = tirx.floordiv(k, index(taps)), unravel(tirx.floormod(k, index(taps)), ks)
        return weight.at(o, c, t)

    tiling = choose_tiling(P, O, acc, knobs_for(ctx.node).mr)
    if packed is not None:
        tiling = packed_tiling(tiling, static(packed.shape[-1]))
    panels = static(ceil_div(O, tiling.nb))
    accumulated = panel_gemm("conv", [N], Operand([N], P, x_at), Operand([], O, w_at), K, acc,
                             tiling, columns_last=False, packed_rhs=packed,
                             extra={"epilogue_in_tile": 0, "pack_l_in_tile": int(panels == 1)},
                             k_split=[static(C), *ks] if static(C) is not None else None)

    def out(n, o, *pos):
        f = sum((pos[i] * math.prod(outs[i + 1:]) for i in range(1, sp)),
                pos[0] * math.prod(outs[1:]))
        v = accumulated[n, f, o]
        if bias is not None:
            v = v + to_accumulator(bias[o], acc)
        return from_accumulator(v, dtype)
    return te.compute(out_shape, out, name="conv")


def schedule_conv(sch: s_tir.Schedule, node: Node | None = None) -> None:
    """The packs, the register-tiled accumulator and the write-back, each parallel."""
    inline_epilogue(sch)
    blocks = gemm_blocks(sch)
    (acc,) = blocks["acc"]
    out = sch.get_consumers(acc)
    placed = schedule_accumulator(sch, acc)
    for pack in blocks.get("pack_l", []) + blocks.get("pack_r", []):
        if sch.get(pack).name_hint not in placed:
            schedule_pack(sch, pack)
    for pack in blocks.get("pack_x", []):
        schedule_pack_x(sch, pack)
    for block in out:
        schedule_rows(sch, block)


def schedule_pack_x(sch: s_tir.Schedule, pack) -> None:
    """Parallel over (image, channel, phase); the flat plane split back into its rows
    and columns (static pitches), so the index arithmetic folds away."""
    loops = sch.get_loops(pack)
    extents = list(sch.get(pack).annotations["extents"])
    if all(static(e) is not None for e in extents):
        inner = sch.split(loops[-1], [static(e) for e in extents])[-1]
        sch.vectorize(inner)
    sch.parallel(sch.fuse(*loops[:-1]))


def schedule_rows(sch: s_tir.Schedule, block) -> None:
    """An injective block at the root: parallel over all loops but the last, which is
    vectorized by the widest power of two (4 to 16 lanes) that divides it."""
    loops = sch.get_loops(block)
    lanes = _dividing_lanes(static(sch.get(loops[-1]).extent))
    if lanes:
        _, vec = sch.split(loops[-1], [None, lanes])
        sch.vectorize(vec)
    if len(loops) > 1:
        sch.parallel(sch.fuse(*loops[:-1]))


def _dividing_lanes(extent: int | None) -> int:
    """The widest vector (4 to 16 f32 lanes) that divides `extent`; 0 if none does."""
    lanes = machine().lanes("float32")
    while lanes >= 4 and (extent is None or extent % lanes):
        lanes //= 2
    return lanes if lanes >= 4 else 0


SCHEDULES["conv"] = schedule_conv
SCHEDULES["conv_packed"] = schedule_conv
