"""The `conv_nchwc` lowering and schedule of the TVM CPU backend: a direct 2-d
convolution in blocked channels (x [N, C/cb, H, W, cb], weight [O/ob, C/cb, KH, KW,
cb, ob], out [N, O/ob, OH, OW, ob]), the classic x86 NCHWc kernel (TVM topi's
conv2d_NCHWc, ONNX Runtime's MLAS NCHWc convolutions):

    Xp[n, cB, h, w, ci]     = x[n, cB, h - pad_top, w - pad_left, ci] (0 outside x);
                              only when the windows reach outside x (else x is read)
    Acc[n, oB, oh, ow, oi]  = sum_{cB, kh, kw, ci} Xp[n, cB, oh*sh + kh*dh, ow*sw + kw*dw, ci]
                                                   * W[oB, cB, kh, kw, ci, oi]
    out                     = epilogue(Acc + bias[oB, oi])   # a fused group's chain too

The register tile is RW output columns x OT output-channel blocks (each ob lanes, one
AVX-512 vector of f32 for ob = 16): per step of the reduction it loads OT weight
vectors and broadcasts RW input scalars for RW x OT multiply-adds: the tuning
database's `rw`, `ot` knobs where the workload was tuned (`kiln tune`; a width RW
need not divide the output's, the last tile is then partial), else `choose_tile`.

Schedule (`schedule_conv_nchwc`), the output block's loops (the epilogue, inlined
into the group's last block) drive it:

    Xp: parallel over (n, cB, h) at the root, a copy with zero borders
    parallel for (n, oB / OT, oh):          # a thread's weight blocks stay in its L2
      for ow / RW:
        acc[OT, RW, ob] = 0                 # registers (a local buffer, unrolled)
        for cB, kh, kw, ci: for OT (unrolled): for RW (unrolled): for ob (vector):
          acc += Xp (broadcast) * W (vector)
        for OT, RW (unrolled): out[.., ob (vector)] = epilogue(acc + bias)

So the epilogue (bias, activation, residual add, in the same blocked layout) is
applied as the accumulators are stored: no extra pass over the output.

Imports TVM, `kiln.ir` and the sibling `common`/`gemm`/`schedule` modules.
"""
from __future__ import annotations

from dataclasses import dataclass

from tvm import s_tir, te, tirx

from ...errors import CodegenError
from ...ir.graph import Node
from ...ir.registry import register_lowering
from .common import LowerContext, index
from .gemm import (ROLE, accumulator_dtype, from_accumulator, gemm_blocks, inline_epilogue,
                   machine, static, to_accumulator)
from .schedule import SCHEDULES
from .tuning import knobs_for

MAX_OC_TILE = 4         # output-channel blocks per tile


@dataclass(frozen=True)
class Tile:
    """The register tile: `rw` output columns x `ot` output-channel blocks."""
    rw: int
    ot: int

    def annotations(self) -> dict[str, int]:
        return {"rw": self.rw, "ot": self.ot}


def choose_tile(o_blocks: int, ob: int, out_w: int, acc_dtype: str) -> Tile:
    """The register tile for `o_blocks` output-channel blocks of `ob` channels and an
    output `out_w` columns wide: RW dividing the width, OT dividing the blocks (up to
    MAX_OC_TILE), the RW x OT x vectors accumulators plus OT weight vectors and two
    broadcasts fitting in the vector registers without spilling; among those, the
    most FMA-bound (per reduction step: RW x OT x vectors multiply-adds against OT x
    vectors + RW loads, two of each per cycle), then the most multiply-adds per step.
    (On ResNet-50's 56x56 3x3 layer, 14 x 2 blocks = 28 accumulators spilled
    across the kh/kw loops and ran slowest; 4 x 4, 8 x 2 and 7 x 2 ran alike.)"""
    m = machine()
    vectors = -(-ob // m.lanes(acc_dtype))             # vectors per output-channel block
    best, best_key = Tile(1, 1), None
    for ot in range(1, min(MAX_OC_TILE, o_blocks) + 1):
        for rw in range(1, out_w + 1):
            fmas, weights = ot * rw * vectors, ot * vectors
            if o_blocks % ot or out_w % rw or fmas + weights + 2 >= m.registers:
                continue
            loads = weights + rw
            key = (fmas / max(fmas, loads), fmas, -loads)
            if best_key is None or key > best_key:
                best, best_key = Tile(rw, ot), key
    return best


def zero_padded(x: te.Tensor, top: int, left: int, height: int, width: int, acc: str,
                name: str) -> te.Tensor:
    """Blocked x [N, C/cb, H, W, cb] in the accumulator dtype, shifted down by `top` rows
    and right by `left` columns into `height` x `width` with zeros around (the "pad"
    stage of the conv kernels: `schedule_pad`)."""
    N, c_blocks, H, W, cb = x.shape
    H, W = static(H), static(W)

    def padded(n, c, h, w, i):
        inside = tirx.all(h >= top, h < top + H, w >= left, w < left + W)
        hs = tirx.max(tirx.min(h - top, index(H - 1)), index(0))
        ws = tirx.max(tirx.min(w - left, index(W - 1)), index(0))
        return tirx.if_then_else(inside, to_accumulator(x[n, c, hs, ws, i], acc),
                                 tirx.const(0, acc))
    return te.compute([N, c_blocks, index(height), index(width), cb], padded, name=name,
                      attrs={ROLE: "pad"})


@register_lowering("conv_nchwc", backend="tvm")
def lower_conv_nchwc(ctx: LowerContext, x: te.Tensor, w: te.Tensor,
                     bias: te.Tensor | None = None, *, strides, pads, dilations) -> te.Tensor:
    if len(strides) != 2:
        raise ctx.fail(f"the TVM kernel handles 2 spatial dims, got {len(strides)}")
    dims = {"x": [static(d) for d in x.shape[1:]], "weight": [static(d) for d in w.shape]}
    for what, sizes in dims.items():
        if None in sizes:
            raise ctx.fail(f"{what}'s dims after the batch must be static, got {sizes}")
    N = x.shape[0]
    _, H, W, _ = dims["x"]
    o_blocks, c_blocks, KH, KW, cb, ob = dims["weight"]
    dtype, acc = ctx.out_dtype(), accumulator_dtype(str(x.dtype))
    out_shape = ctx.out_shape()
    OH, OW = static(out_shape[2]), static(out_shape[3])
    (sh, sw), (dh, dw) = strides, dilations
    top, left = pads[0], pads[1]
    # the extent the windows read, from the top-left corner of the padding
    HP, WP = (OH - 1) * sh + (KH - 1) * dh + 1, (OW - 1) * sw + (KW - 1) * dw + 1
    if top or left or HP > H or WP > W:
        pad = zero_padded(x, top, left, HP, WP, acc, "conv_nchwc_pad")
        xp = lambda *i: pad(*i)  # noqa: E731
    else:
        xp = lambda *i: to_accumulator(x(*i), acc)  # noqa: E731

    rc = te.reduce_axis((index(0), index(c_blocks)), name="cb")
    rh = te.reduce_axis((index(0), index(KH)), name="kh")
    rw = te.reduce_axis((index(0), index(KW)), name="kw")
    ri = te.reduce_axis((index(0), index(cb)), name="ci")
    knobs = knobs_for(ctx.node)
    tile = Tile(knobs.rw, knobs.ot) if knobs.rw and knobs.ot else \
        choose_tile(o_blocks, ob, OW, acc)

    def body(n, o, oh, ow, oi):
        return te.sum(xp(n, rc, oh * sh + rh * dh, ow * sw + rw * dw, ri)
                      * to_accumulator(w[o, rc, rh, rw, ri, oi], acc), axis=[rc, rh, rw, ri])
    accumulated = te.compute(out_shape, body, name="conv_nchwc_acc",
                             attrs={ROLE: "acc", **tile.annotations()})

    def out(n, o, oh, ow, oi):
        v = accumulated[n, o, oh, ow, oi]
        if bias is not None:
            v = v + to_accumulator(bias[o, oi], acc)
        return from_accumulator(v, dtype)
    return te.compute(out_shape, out, name="conv_nchwc")


def only_consumer(sch: s_tir.Schedule, block, what: str):
    """The one block reading `block` (the epilogue a conv kernel stores through)."""
    consumers = sch.get_consumers(block)
    if len(consumers) != 1:
        names = [sch.get(b).name_hint for b in consumers]
        raise CodegenError(f"{what} feeds {names}: its schedule needs the epilogue as one "
                           "block (one output of the fused group)")
    return consumers[0]


def schedule_conv_nchwc(sch: s_tir.Schedule, node: Node | None = None) -> None:
    """The schedule of the module docstring."""
    inline_epilogue(sch)
    blocks = gemm_blocks(sch)
    (acc,) = blocks["acc"]
    ann = sch.get(acc).annotations
    rw, ot = int(ann["rw"]), int(ann["ot"])
    out = only_consumer(sch, acc, "conv_nchwc's accumulator")
    n, o, oh, ow, oi = sch.get_loops(out)
    oo, oj = sch.split(o, [None, ot])
    wo, wj = sch.split(ow, [None, rw])
    sch.reorder(n, oo, oh, wo, oj, wj, oi)
    sch.compute_at(acc, wo, preserve_unit_loops=True)
    sch.set_scope(acc, 0, "local")
    an, aj, ah, awj, aoi, rc, rh, rwk, ri = sch.get_loops(acc)[-9:]
    sch.reorder(rc, rh, rwk, ri, an, aj, ah, awj, aoi)
    for loops in ([aj, awj, aoi], [oj, wj, oi]):
        sch.unroll(loops[0])
        sch.unroll(loops[1])
        sch.vectorize(loops[2])
    sch.parallel(sch.fuse(n, oo, oh))
    sch.decompose_reduction(acc, rc)
    for pad in blocks.get("pad", []):
        schedule_pad(sch, pad)


def schedule_pad(sch: s_tir.Schedule, pad) -> None:
    """The padded copy at the root: parallel over (n, cB, h); each row's (w, ci) run
    is contiguous and vectorized by the channel block."""
    n, c, h, w, i = sch.get_loops(pad)
    sch.vectorize(i)
    sch.parallel(sch.fuse(n, c, h))


SCHEDULES["conv_nchwc"] = schedule_conv_nchwc
