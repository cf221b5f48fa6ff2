"""The `scaled_dot_product_attention` lowering and schedule of the TVM CPU backend: one
fused kernel for softmax(q k^T * scale + mask) v, with no scores tensor in memory.

Per (batch, block of MR query rows), all on one thread, everything tile-sized:

    kt[bk, e, s]   = k[bk, s, e]                      # packed once per call (root)
    qk[l, s]       = sum_e q[l, e] * kt[e, s]        # MR x 64 register tiles
    logit(l, s)    = qk * scale, masked (-inf), or + float mask; -inf past S
    m[l]           = max_s logit                      # 16-lane partial maxima
    p[l, s]        = exp(logit - m)                   # vector exp (below)
    den[l]         = sum_s p
    o[l, j]        = sum_s p[l, s] * v[s, j]          # MR x Ev register tile
    out[l, j]      = o / den                          # (a fully masked row: 0, as torch)

The (batch, query block) loop is the parallel one. Half-precision inputs compute in
float32 and round once at the end. `exp` is evaluated by `exp_nonpositive`, a
Cephes-style polynomial (about 1 ulp in float32) that vectorizes, instead of TVM's
exp, which LLVM turns into one libm call per lane.
"""
from __future__ import annotations

import math

import tvm
from tvm import s_tir, te, tirx

from ...ir.graph import Node
from ...ir.registry import register_lowering
from .common import LowerContext, compute_dtype, const, dtype_of, index, is_nan, narrow, widen
from .gemm import (ROLE, broadcast_index, ceil_to, choose_tiling, machine, static,
                   vectorize_epilogue)
from .schedule import SCHEDULES

NEG_INF = float("-inf")


def exp_nonpositive(x: tirx.PrimExpr) -> tirx.PrimExpr:
    """exp(x) for float32 x <= 0 (or -inf, or NaN), by range reduction to
    [-ln2/2, ln2/2] and a degree-5 polynomial (Cephes expf). Results below 2^-126 flush
    to 0; NaN stays NaN."""
    f32 = "float32"
    c = lambda v: tirx.const(v, f32)  # noqa: E731
    xc = tirx.max(x, c(-87.33654475))       # exp(-87.3365) = 2^-126, the smallest normal
    n = tirx.floor(xc * c(1.44269504088896341) + c(0.5))
    r = xc - n * c(0.693359375) - n * c(-2.12194440e-4)
    z = r * r
    y = ((((c(1.9875691500e-4) * r + c(1.3981999507e-3)) * r + c(8.3334519073e-3)) * r
          + c(4.1665795894e-2)) * r + c(1.6666665459e-1)) * r + c(5.0000001201e-1)
    y = y * z + r + c(1.0)
    bits = tirx.shift_left(n.astype("int32") + tirx.const(127, "int32"),
                           tirx.const(23, "int32"))
    scaled = tirx.Select(x >= c(-87.33654475), y * tirx.reinterpret(f32, bits), c(0.0))
    return tirx.Select(is_nan(x), x, scaled)    # NaN in, NaN out


@register_lowering("scaled_dot_product_attention", backend="tvm")
def lower_sdpa(ctx: LowerContext, q: te.Tensor, k: te.Tensor, v: te.Tensor,
               mask: te.Tensor | None = None, *, is_causal: bool, scale) -> te.Tensor:
    dtype = ctx.out_dtype()
    out_shape = ctx.out_shape()
    batch = out_shape[:-2]
    L, E = q.shape[-2], q.shape[-1]
    S, Ev = k.shape[-2], v.shape[-1]
    bq, bk, bv = list(q.shape[:-2]), list(k.shape[:-2]), list(v.shape[:-2])
    cd = compute_dtype(dtype)     # the compute dtype: float64 stays, halves in float32

    def load(e: tirx.PrimExpr) -> tirx.PrimExpr:
        e = widen(e)
        return e if dtype_of(e) == cd else e.astype(cd)

    if scale is None:
        if static(E) is None:
            raise ctx.fail("the default scale 1/sqrt(head_dim) needs a static head dim")
        scale = 1 / math.sqrt(static(E))
    tiling = choose_tiling(L, Ev, cd)
    mr, lanes = tiling.mr, tiling.lanes
    nb_s = lanes * 4                           # key columns per QK^T tile
    S_p = ceil_to(S, nb_s)
    L_p = ceil_to(L, mr)
    Ev_p = ceil_to(Ev, tiling.nb)
    last = lambda i, n: tirx.min(i, n - index(1))  # noqa: E731

    kt = te.compute([*bk, E, S_p], lambda *i: load(k[(*i[:-2], last(i[-1], S), i[-2])]),
                    name="sdpa_pack_k", attrs={ROLE: "pack_k"})
    e = te.reduce_axis((index(0), E), name="e")
    nbatch = len(batch)

    def qk_body(*i):
        b, l, s = list(i[:nbatch]), i[nbatch], i[nbatch + 1]
        return te.sum(load(q[(*broadcast_index(bq, b), last(l, L), e)]) *
                      kt[(*broadcast_index(bk, b), e, s)], axis=e)
    qk = te.compute([*batch, L_p, S_p], qk_body, name="sdpa_qk",
                    attrs={ROLE: "qk", "mr": mr, "nb": nb_s, "lanes": lanes})

    def logit(b, l, s):
        x = qk[(*b, l, s)] * const(scale, cd)
        if mask is not None:
            mi = broadcast_index(list(mask.shape), [*b, last(l, L), last(s, S)])
            if str(mask.dtype) == "bool":
                x = tirx.Select(mask[tuple(mi)], x, tirx.const(NEG_INF, cd))
            else:
                x = x + load(mask[tuple(mi)])
        if is_causal:
            x = tirx.Select(s <= l, x, tirx.const(NEG_INF, cd))
        if static(S) is None or static(S) != static(S_p):
            x = tirx.Select(s < S, x, tirx.const(NEG_INF, cd))
        return x

    # the vector exp is float32's; float64 keeps full precision with TVM's exp
    exp_ = exp_nonpositive if cd == "float32" else tirx.exp
    rs = te.reduce_axis((index(0), S_p), name="s")
    mx = te.compute([*batch, L_p], lambda *i: te.max(logit(list(i[:-1]), i[-1], rs), axis=rs),
                    name="sdpa_max", attrs={ROLE: "row"})

    def shifted(b, l, s):
        m = mx[(*b, l)]
        return logit(b, l, s) - tirx.Select(tirx.isfinite(m), m, tirx.const(0.0, cd))
    p = te.compute([*batch, L_p, S_p],
                   lambda *i: exp_(shifted(list(i[:-2]), i[-2], i[-1])),
                   name="sdpa_exp", attrs={ROLE: "exp"})
    rd = te.reduce_axis((index(0), S_p), name="s")
    den = te.compute([*batch, L_p], lambda *i: te.sum(p[(*i, rd)], axis=rd), name="sdpa_sum",
                     attrs={ROLE: "row"})
    ro = te.reduce_axis((index(0), S), name="s")

    def o_body(*i):
        b, l, j = list(i[:nbatch]), i[nbatch], i[nbatch + 1]
        jj = j if static(Ev) == static(Ev_p) else last(j, Ev)
        return te.sum(p[(*b, l, ro)] * load(v[(*broadcast_index(bv, b), ro, jj)]), axis=ro)
    o = te.compute([*batch, L_p, Ev_p], o_body, name="sdpa_pv",
                   attrs={ROLE: "pv", "mr": mr, "nb": tiling.nb, "lanes": lanes})

    def out(*i):
        d = den[(*i[:-1],)]
        return narrow(o[i] / tirx.Select(d == tirx.const(0.0, cd), tirx.const(1.0, cd), d),
                      dtype)
    return te.compute(out_shape, out, name="scaled_dot_product_attention",
                      attrs={ROLE: "out", "nbatch": nbatch, "mr": mr, "lanes": lanes,
                             "vector": int(static(Ev) is not None and static(Ev) % lanes == 0)})


def schedule_sdpa(sch: s_tir.Schedule, node: Node | None = None) -> None:
    """The loop nest of the module docstring."""
    blocks = {}
    for block in sch.get_child_blocks(sch.get_sblock("root")):
        ann = sch.get(block).annotations
        if ROLE in ann:
            blocks.setdefault(str(ann[ROLE]), []).append(block)
    (out,) = blocks["out"]
    (pv,), (qk,), (p,) = blocks["pv"], blocks["qk"], blocks["exp"]
    row_max, row_sum = blocks["row"]
    partial_max, partial_sum = (_lane_partials(sch, block) for block in (row_max, row_sum))
    ann = sch.get(out).annotations
    nbatch, mr = int(ann["nbatch"]), int(ann["mr"])
    loops = sch.get_loops(out)
    b, l, j = loops[:nbatch], loops[nbatch], loops[nbatch + 1]
    lo, _ = sch.split(l, [None, mr])
    tile = sch.fuse(*b, lo) if b else lo
    sch.parallel(tile)
    lanes = int(ann["lanes"])
    if int(ann["vector"]):
        sch.vectorize(sch.split(j, [None, lanes])[-1])
    for producer in (pv, row_sum, partial_sum, p, row_max, partial_max, qk):
        if producer is not None:
            sch.compute_at(producer, tile, preserve_unit_loops=True)
    _register_tile(sch, pv)
    _register_tile(sch, qk)
    for rf in (partial_max, partial_sum):
        if rf is not None:
            lane, rows, outer = sch.get_loops(rf)[-3:]
            sch.reorder(rows, outer, lane)
            sch.vectorize(lane)
    inner = sch.get_loops(p)[-1]
    if divisible(sch, inner, lanes):
        sch.vectorize(sch.split(inner, [None, lanes])[-1])
    for pack in blocks.get("pack_k", []):
        pl = sch.get_loops(pack)
        if divisible(sch, pl[-1], lanes):
            sch.vectorize(sch.split(pl[-1], [None, lanes])[-1])
        if len(pl) > 1:
            sch.parallel(sch.fuse(*pl[:-1]))


def _register_tile(sch: s_tir.Schedule, block) -> None:
    """A (rows x columns, reduction) block placed in the query tile: accumulate each
    MR x NB sub-tile in registers (a local cache), vectorized over the columns."""
    ann = sch.get(block).annotations
    nb, lanes = int(ann["nb"]), int(ann["lanes"])
    loops = sch.get_loops(block)
    rows, cols, red = loops[-3], loops[-2], loops[-1]
    if not divisible(sch, cols, nb):
        return
    co, nv, lane = sch.split(cols, [None, nb // lanes, lanes])
    sch.reorder(co, red, rows, nv, lane)
    local = sch.cache_write(block, 0, "local")
    sch.reverse_compute_at(local, co, preserve_unit_loops=True)
    vectorize_epilogue(sch, local, lanes)
    sch.unroll(rows)
    sch.unroll(nv)
    sch.vectorize(lane)
    sch.decompose_reduction(block, red)


def _lane_partials(sch: s_tir.Schedule, block):
    """Split a row reduction (max or sum over s) into 16 lane-wise partial results
    (rfactor; vectorized once placed) and a 16 -> 1 reduction; returns the partial
    block, or None when the row length is not a whole number of vectors."""
    red = sch.get_loops(block)[-1]
    lanes = machine().lanes("float32")
    if not divisible(sch, red, lanes):
        return None
    _, lane = sch.split(red, [None, lanes])
    return sch.rfactor(lane, factor_axis=0)


def divisible(sch: s_tir.Schedule, loop, n: int) -> bool:
    """The loop's extent is provably a multiple of n (static or symbolic)."""
    extent = sch.get(loop).extent
    if static(extent) is not None:
        return static(extent) % n == 0
    return bool(_ANALYZER.can_prove_equal(tirx.floormod(extent, n), 0))


_ANALYZER = tvm.sym.Analyzer()


SCHEDULES["scaled_dot_product_attention"] = schedule_sdpa
