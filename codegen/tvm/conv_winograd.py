"""The `conv_winograd` lowering and schedule of the TVM CPU backend: a 3 x 3, stride-1
convolution in blocked channels by Winograd's F(m x m, 3 x 3) (passes/winograd.py;
the matrices B^T, A^T and the transformed weight U = G W G^T are
`ir/ops/linalg.py`'s). With a = m + 2 and the output cut into T tiles of m x m (over
the batch too, t = (n, th, tw)):

    Xp[n, cB, h, w, ci]     = x[n, cB, h - pad_top, w - pad_left, ci] (0 outside x)
    V[i, j, cB, t, ci]      = sum_{r,s} B^T[i, r] Xp[n, cB, th*m + r, tw*m + s, ci] B^T[j, s]
    M[i, j, oB, t, oi]      = sum_{cB, ci} V[i, j, cB, t, ci] * U[i, j, oB, cB, ci, oi]
    out[n, oB, h, w, oi]    = epilogue(sum_{i,j} A^T[h%m, i] M[i, j, oB, t, oi] A^T[w%m, j]
                                       + bias[oB, oi])

The transforms are sums with constant coefficients, written out term by term at
lowering time (zeros dropped, +-1 as additions), one expression per (i, j) picked by
the unrolled loops. M is a^2 independent GEMMs, each like a 1 x 1 `conv_nchwc`:
its register tile is RW tiles x OT output-channel blocks (the tuning database's `rw`,
`ot` knobs, else `conv_nchwc.choose_tile`).

Schedule (`schedule_conv_winograd`), each stage a parallel loop at the root:

    Xp: parallel over (n, cB, h), a copy with zero borders
    V:  parallel over (cB, t):
          bd[a, a, cb] = B^T d                          # registers (local, unrolled)
          for i, j (unrolled): for ci (vector): V = (bd B)[i, j]
    M:  parallel over (i, j, oB / OT): for t / RW:
          acc[OT, RW, ob] = 0                           # registers
          for cB, ci: for OT, RW (unrolled): for ob (vector): acc += V (broadcast) * U
          M[tile] = acc
    out: parallel over (n, oB, h / m): for w / m:
          am[m, a, ob] = A^T M                          # registers (local, unrolled)
          for h % m, w % m (unrolled): for oi (vector): out = epilogue((am A)[..] + bias)

The epilogue (bias, activation, residual add of a fused group) is applied in the
output transform, as it stores.

Imports TVM, `kiln.ir` and the sibling `common`/`gemm`/`conv_nchwc`/`schedule` modules.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from tvm import s_tir, te, tirx

from ...errors import CodegenError
from ...ir.graph import Node
from ...ir.ops.linalg import winograd_matrices
from ...ir.registry import register_lowering
from .common import LowerContext, dtype_of, index
from .conv_nchwc import Tile, choose_tile, only_consumer, schedule_pad, zero_padded
from .gemm import (ROLE, accumulator_dtype, from_accumulator, gemm_blocks, inline_epilogue,
                   static, to_accumulator)
from .schedule import SCHEDULES
from .tuning import knobs_for


def combine(coefficients: Sequence[float], terms: Sequence[tirx.PrimExpr]) -> tirx.PrimExpr:
    """sum_k coefficients[k] * terms[k], written out: zero terms dropped, +-1 as an
    addition or a subtraction."""
    total = None
    for c, term in zip(coefficients, terms):
        if c == 0:
            continue
        if c == -1 and total is not None:
            total = total - term
            continue
        scaled = term if c == 1 else -term if c == -1 else \
            term * tirx.const(float(c), dtype_of(term))
        total = scaled if total is None else total + scaled
    if total is None:
        raise CodegenError("a Winograd transform row has no nonzero coefficient")
    return total


def pick(i: tirx.PrimExpr, choices: Sequence[tirx.PrimExpr]) -> tirx.PrimExpr:
    """choices[i] for a loop index i: a chain of selects that the unrolled loop folds."""
    chosen = choices[-1]
    for k in range(len(choices) - 2, -1, -1):
        chosen = tirx.Select(i == k, choices[k], chosen)
    return chosen


def transform_rows(matrix: np.ndarray, i: tirx.PrimExpr,
                   column: Sequence[tirx.PrimExpr]) -> tirx.PrimExpr:
    """(matrix column)[i]: row i of the matrix times a column of values."""
    return pick(i, [combine(row, column) for row in matrix])


@register_lowering("conv_winograd", backend="tvm")
def lower_conv_winograd(ctx: LowerContext, x: te.Tensor, u: te.Tensor,
                        bias: te.Tensor | None = None, *, tile, pads) -> te.Tensor:
    dims = [static(d) for d in list(x.shape[1:]) + list(u.shape)]
    if None in dims:
        raise ctx.fail(f"x's dims after the batch and the weight's must be static, got "
                       f"{list(x.shape)} and {list(u.shape)}")
    N = x.shape[0]
    c_blocks, cb = dims[0], dims[3]
    a, _, o_blocks, _, _, ob = dims[4:]
    m = tile
    bt, _, at = winograd_matrices(m)
    acc = accumulator_dtype(str(x.dtype))
    out_shape = ctx.out_shape()
    OH, OW = static(out_shape[2]), static(out_shape[3])
    TH, TW = -(-OH // m), -(-OW // m)
    top, left = pads[0], pads[1]

    xp = zero_padded(x, top, left, TH * m + 2, TW * m + 2, acc, "conv_winograd_pad")

    def input_rows(i, s, c, t, ci):        # (B^T d)[i, s]
        n, th, tw = t // (TH * TW), t // TW % TH, t % TW
        return transform_rows(bt, i, [xp[n, c, th * m + r, tw * m + s, ci] for r in range(a)])
    tiles = N * (TH * TW)
    v_shape = [index(a), index(a), index(c_blocks), tiles, index(cb)]
    rows = te.compute(v_shape, input_rows, name="conv_winograd_bd",
                      attrs={ROLE: "transform_rows"})
    v = te.compute(v_shape, lambda i, j, c, t, ci: transform_rows(
        bt, j, [rows[i, s, c, t, ci] for s in range(a)]),           # (B^T d B)[i, j]
        name="conv_winograd_v", attrs={ROLE: "transform", "tile": m})

    rc = te.reduce_axis((index(0), index(c_blocks)), name="cb")
    ri = te.reduce_axis((index(0), index(cb)), name="ci")
    knobs = knobs_for(ctx.node)
    reg = Tile(knobs.rw, knobs.ot) if knobs.rw and knobs.ot else \
        choose_tile(o_blocks, ob, static(tiles) or 1, acc)
    product = te.compute(
        [index(a), index(a), index(o_blocks), tiles, index(ob)],
        lambda i, j, o, t, oi: te.sum(v[i, j, rc, t, ri] * to_accumulator(u[i, j, o, rc, ri, oi],
                                                                          acc), axis=[rc, ri]),
        name="conv_winograd_m", attrs={ROLE: "acc", **reg.annotations()})

    out_rows = te.compute(                                          # (A^T M)[r, j]
        [index(m), index(a), index(o_blocks), tiles, index(ob)],
        lambda r, j, o, t, oi: transform_rows(at, r, [product[i, j, o, t, oi]
                                                      for i in range(a)]),
        name="conv_winograd_am", attrs={ROLE: "output_rows"})

    def output_transform(n, o, h, w, oi):                     # (A^T M A)[h % m, w % m]
        t = (n * TH + h // m) * TW + w // m
        y = transform_rows(at, w % m, [out_rows[h % m, j, o, t, oi] for j in range(a)])
        if bias is not None:
            y = y + to_accumulator(bias[o, oi], acc)
        return from_accumulator(y, ctx.out_dtype())
    return te.compute(out_shape, output_transform, name="conv_winograd")


def schedule_conv_winograd(sch: s_tir.Schedule, node: Node | None = None) -> None:
    """The schedule of the module docstring."""
    inline_epilogue(sch)
    blocks = gemm_blocks(sch)
    (product,) = blocks["acc"]
    (v,) = blocks["transform"]
    out_rows = only_consumer(sch, product, "conv_winograd's product")
    out = only_consumer(sch, out_rows, "conv_winograd's output transform")
    ann = sch.get(product).annotations
    _schedule_product(sch, product, int(ann["rw"]), int(ann["ot"]))
    _schedule_output_transform(sch, out, out_rows, int(sch.get(v).annotations["tile"]))
    i, j, c, t, ci = sch.get_loops(v)
    sch.reorder(c, t, i, j, ci)
    _unroll_vectorize(sch, [i, j, ci])
    tile_loop = sch.fuse(c, t)
    sch.parallel(tile_loop)
    (rows,) = blocks["transform_rows"]
    sch.compute_at(rows, tile_loop, preserve_unit_loops=True)
    sch.set_scope(rows, 0, "local")
    _unroll_vectorize(sch, sch.get_loops(rows)[-5:])
    for pad in blocks.get("pad", []):
        schedule_pad(sch, pad)


def _schedule_product(sch: s_tir.Schedule, product, rw: int, ot: int) -> None:
    """M: the register tile computed in a local buffer, stored by a vectorized copy."""
    store = sch.cache_write(product, 0, "local")
    i, j, o, t, oi = sch.get_loops(store)
    oo, oj = sch.split(o, [None, ot])
    to, tj = sch.split(t, [None, rw])
    sch.reorder(i, j, oo, to, oj, tj, oi)
    sch.compute_at(product, to, preserve_unit_loops=True)
    aj, atj, aoi, rc, ri = sch.get_loops(product)[-5:]
    sch.reorder(rc, ri, aj, atj, aoi)
    for loops in ([aj, atj, aoi], [oj, tj, oi]):
        sch.unroll(loops[0])
        sch.unroll(loops[1])
        sch.vectorize(loops[2])
    sch.parallel(sch.fuse(i, j, oo))
    sch.decompose_reduction(product, rc)


def _schedule_output_transform(sch: s_tir.Schedule, out, out_rows, m: int) -> None:
    """out per m x m output tile; the tile's A^T M rows computed first, in registers."""
    n, o, h, w, oi = sch.get_loops(out)
    ho, hi = sch.split(h, [None, m])
    wo, wi = sch.split(w, [None, m])
    sch.reorder(n, o, ho, wo, hi, wi, oi)
    _unroll_vectorize(sch, [hi, wi, oi])
    sch.parallel(sch.fuse(n, o, ho))
    sch.compute_at(out_rows, wo, preserve_unit_loops=True)
    sch.set_scope(out_rows, 0, "local")
    _unroll_vectorize(sch, sch.get_loops(out_rows)[-5:])


def _unroll_vectorize(sch: s_tir.Schedule, loops) -> None:
    """Unroll all of `loops` but the last, which is vectorized (a channel block)."""
    for loop in loops[:-1]:
        sch.unroll(loop)
    sch.vectorize(loops[-1])


SCHEDULES["conv_winograd"] = schedule_conv_winograd
