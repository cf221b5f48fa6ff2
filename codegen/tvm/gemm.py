"""Contraction kernels of the TVM CPU backend: the GEMM template (TE compute plus a
hand-written s_tir schedule) and the `matmul`, `linear` and `linear_packed` lowerings
built on it. `conv.py` (conv, conv_packed), `conv_nchwc.py`, `conv_winograd.py` and
`attention.py` (scaled_dot_product_attention) reuse the template; importing this module
registers all eight lowerings and their schedules (`SCHEDULES`).

The template, for out[b, r, c] = epilogue(sum_k L[b, r, k] * R[b, k, c]):

    Lp[bL, ro, k, mi] = L[bL, min(ro*MR + mi, rows-1), k]   # row panels, clamped rows
    Rp[bR, co, k, ni] = R[bR, k, min(co*NB + ni, cols-1)]   # column panels, clamped
    Acc[b, r, c]      = sum_k Lp[.., r//MR, k, r%MR] * Rp[.., c//NB, k, c%NB]
    out[...]          = epilogue(Acc[b, r, c])               # bias, cast; real rows/cols

- r is broadcast from Lp (MR scalars per k), c is the vector axis loaded from Rp
  (NB = 4 registers per k): MR x NB = 6 x 64 f32 is 24 zmm accumulators on AVX-512;
- the packs are stages inside the kernel: its parameters keep the IR's row-major
  layout, and packing costs O(K * (rows + cols)) against O(rows * cols * K) compute;
  a constant weight is packed at compile time instead (`linear_packed`, by the
  `pack_weights` pass): the kernel reads Rp from its parameter, no pack stage;
- a `linear` reads L in place (the Lp stage inlined into the tile: rows are x's
  rows, K contiguous), so its kernel is one parallel loop with no pack pass; MR is
  chosen to pad the rows least (`least_padding`: 32 rows as 8 x 4, not 6 x 6);
- a linear of 32 rows whose weight `pack_weights` packed 8 wide runs transposed
  (`_linear_transposed`): outT = W xT, the weight's panels as Lp read in place, xT
  as the one column panel;
- a conv's row pack walks K as its (channel, taps) loops ("k_split"), so its
  gathered indices are affine, with no division per element;
- a fused group's elementwise blocks after `out` (activation, residual add, casts)
  are inlined with `out` into the last of them (`inline_epilogue`): one epilogue,
  computed in the output tile;
- padded rows and columns are computed (from clamped, finite reads) and never stored,
  so any (symbolic) size runs unguarded inner loops;
- accumulation is in float32 for f16/bf16 (widened in the packs, rounded once in the
  epilogue), f32/f64 for themselves, and uint32/uint64 for integers (wrapping
  arithmetic, equal to the reference's int64 sum cast back to the input dtype).

Schedule (`schedule_gemm`):

    parallel for co:               # Rp[co]: K x NB, packed here while hot in L2
      for b: for ro:                # Lp[b, ro]: K x MR, contiguous
        acc[MR, NB] = 0             # registers
        for k: for mi (unrolled): for ni (4 x 16-lane vectors): acc += Lp * Rp
        out[tile] = epilogue(acc)   # vectorized over the columns

That is for an Rp shared by all batch indices (a weight); an Rp with batch dims of
its own is packed per (b, co), the parallel loop; when the panels are too few to feed
the threads, Rp is packed once at the root and the row tiles join the parallel loop.
The lowering records the tiling as block annotations ("kiln.gemm"), which the
schedule reads.

Imports TVM, `kiln.ir` and the sibling `common`/`schedule` modules.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Callable, Sequence

import tvm
from tvm import s_tir, te, tirx

from ...ir.graph import Node
from ...ir.registry import register_lowering
from .common import HALF, LowerContext, dtype_of, index, is_float, narrow, static, widen
from .schedule import SCHEDULES, inline_elementwise
from .target import cpu_target
from .tuning import knobs_for

ROLE = "kiln.gemm"              # block annotation: "pack_l", "pack_r", "acc"
PARALLEL_MIN_WORK = 1 << 16     # multiply-adds below which a kernel stays serial


# --- the machine -------------------------------------------------------------------------
@dataclass(frozen=True)
class Machine:
    vector_bits: int    # 512 with AVX-512
    registers: int      # vector registers: 32 with AVX-512, 16 with AVX2
    threads: int

    def lanes(self, dtype: str) -> int:
        return max(1, self.vector_bits // tvm.DataType(dtype).bits)


_MACHINE: Machine | None = None


def machine() -> Machine:
    """The CPU the kernels are compiled for (the host, as `cpu_target()`)."""
    global _MACHINE
    if _MACHINE is None:
        target = cpu_target()
        bits = int(tvm.target.codegen.llvm_get_vector_width(target))
        avx512 = bool(tvm.target.codegen.target_has_features("avx512f", target))
        threads = int(os.environ.get("TVM_NUM_THREADS", 0)) or os.cpu_count() or 1
        _MACHINE = Machine(max(bits, 128), 32 if avx512 else 16, threads)
    return _MACHINE


# --- dtypes ------------------------------------------------------------------------------
def accumulator_dtype(dtype: str) -> str:
    """The dtype a contraction of `dtype` inputs accumulates in (see the module doc)."""
    if dtype in HALF:
        return "float32"
    if is_float(dtype):
        return dtype
    return "uint64" if tvm.DataType(dtype).bits == 64 else "uint32"


def to_accumulator(e: tirx.PrimExpr, acc: str) -> tirx.PrimExpr:
    """`e` converted for accumulation: half floats widen, signed integers sign-extend
    before their bits are reinterpreted as unsigned (the sum then wraps, no UB)."""
    dtype = dtype_of(e)
    if dtype == acc:
        return e
    if dtype in HALF:   # by hand: TVM's bfloat16 -> float32 cast is unreliable
        return widen(e).astype(acc) if acc != "float32" else widen(e)
    if acc.startswith("uint") and dtype.startswith("int"):
        e = e.astype(acc.replace("uint", "int"))
    return e.astype(acc)


def from_accumulator(e: tirx.PrimExpr, dtype: str) -> tirx.PrimExpr:
    """The accumulator's value as the output dtype (integers: the low bits, as NumPy's
    wrapping cast; floats: rounded to nearest even)."""
    return narrow(e, dtype)


# --- tiling --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Tiling:
    mr: int       # rows per tile (broadcast scalars per k)
    nb: int       # columns per tile (a multiple of lanes)
    lanes: int    # vector lanes of the accumulator dtype

    def annotations(self) -> dict[str, int]:
        return {"mr": self.mr, "nb": self.nb, "lanes": self.lanes}


def choose_tiling(rows: tirx.PrimExpr, cols: tirx.PrimExpr, acc_dtype: str,
                  mr: int | None = None) -> Tiling:
    """MR x NB accumulators filling the vector registers but for NB's loads and one
    broadcast: 6 x 4 vectors on AVX-512 (24 of 32 registers), 4 x 3 on AVX2; narrow
    matrices take fewer vectors and more rows (up to 12), short ones fewer rows.
    (Narrower tiles chosen to pad less, e.g. 12 x 32 for a 14 x 14 conv output,
    measured no faster: their extra broadcasts cost what the padding saved.)
    `mr`: the rows per tile measured best for this workload (the tuning database),
    kept within the registers."""
    m = machine()
    lanes = m.lanes(acc_dtype)
    nvec = 4 if m.registers >= 32 else 3
    if static(cols) is not None:
        nvec = max(1, min(nvec, -(-static(cols) // lanes)))
    most = max(1, min(12, (m.registers - nvec - 1) // nvec))
    if mr is not None:
        return Tiling(max(1, min(mr, most)), nvec * lanes, lanes)
    mr = most
    if static(rows) is not None:
        mr = max(1, min(mr, static(rows)))
        mr = least_padding(static(rows), mr)
    return Tiling(mr, nvec * lanes, lanes)


PADDING_WORTH = 0.05   # fewer rows per tile when that saves more than this share of rows


def least_padding(rows: int, mr: int) -> int:
    """`mr`, or down to two rows fewer when that pads `rows` by PADDING_WORTH less of
    them (32 rows: 4-row tiles, not 36 rows in 6-row tiles; 49: 5-row tiles). Fewer
    rows reuse each loaded vector less, but stay FMA-bound on AVX-512 down to 4."""
    padded = lambda m: -(-rows // m) * m  # noqa: E731
    best = min(range(max(1, mr - 2), mr + 1), key=lambda m: (padded(m), -m))
    return best if padded(mr) - padded(best) > PADDING_WORTH * rows else mr


def packed_tiling(tiling: Tiling, nb: int) -> Tiling:
    """`tiling` for column panels of a given width `nb` (a weight packed at compile
    time): vectors of the widest lanes dividing it, rows filling the registers."""
    lanes = math.gcd(nb, tiling.lanes)
    nvec = nb // lanes
    mr = max(1, min(tiling.mr, (machine().registers - nvec - 1) // nvec))
    return Tiling(mr, nb, lanes)


# --- expression helpers --------------------------------------------------------------------
def ceil_to(e: tirx.PrimExpr, m: int) -> tirx.PrimExpr:
    """`e` rounded up to a multiple of `m`, folded when static."""
    s = static(e)
    if s is not None:
        return index(-(-s // m) * m)
    return tirx.floordiv(e + index(m - 1), index(m)) * index(m)


def ceil_div(e: tirx.PrimExpr, m: int) -> tirx.PrimExpr:
    s = static(e)
    if s is not None:
        return index(-(-s // m))
    return tirx.floordiv(e + index(m - 1), index(m))


def clamp_last(i: tirx.PrimExpr, size: tirx.PrimExpr, padded: tirx.PrimExpr) -> tirx.PrimExpr:
    """min(i, size - 1), left out when the padded extent equals the size."""
    if static(size) is not None and static(size) == static(padded):
        return i
    return tirx.min(i, size - index(1))


def broadcast_index(own: Sequence[tirx.PrimExpr], out: Sequence[tirx.PrimExpr]
                    ) -> list[tirx.PrimExpr]:
    """An operand's batch index for output batch index `out` (right-aligned, NumPy
    broadcasting of static size-1 dims)."""
    lead = len(out) - len(own)
    return [index(0) if static(d) == 1 else out[lead + k] for k, d in enumerate(own)]


# --- the template ------------------------------------------------------------------------------
@dataclass
class Operand:
    """One side of the template: its own batch dims (right-aligned against the
    output's) and an accessor `at(batch_idx, i, k)` (i is the row for L, the column
    for R), valid for in-range indices."""
    batch: list[tirx.PrimExpr]
    extent: tirx.PrimExpr
    at: Callable[[list[tirx.PrimExpr], tirx.PrimExpr, tirx.PrimExpr], tirx.PrimExpr]


def panel_gemm(name: str, batch: list[tirx.PrimExpr], lhs: Operand, rhs: Operand,
               k_extent: tirx.PrimExpr, acc_dtype: str, tiling: Tiling, *,
               columns_last: bool = True, panel_parallel: int | None = None,
               packed_rhs: te.Tensor | None = None, extra: dict | None = None,
               k_split: list[int] | None = None) -> te.Tensor:
    """The accumulator `Acc[*batch, rows_p, cols_p]` of the template (rows and columns
    padded to whole tiles), with its packs; the caller adds the epilogue that reads
    it for the real rows and columns (`columns_last`: the epilogue's output has the
    columns as its last axis, so it may be vectorized along them).

    `packed_rhs`: Rp given already packed (a weight packed at compile time, see
    `linear_packed`), `[ceil(cols/NB), K, NB]` in the accumulator dtype: the kernel
    reads it as is, with no pack stage. `extra`: more accumulator annotations
    ("direct_l": Lp inlined, L read in place). `k_split`: factors of K for the row
    pack's loops (`split_pack_reduction`)."""
    mr, nb = tiling.mr, tiling.nb
    rows, cols, K = lhs.extent, rhs.extent, k_extent
    rows_p, cols_p = ceil_to(rows, mr), ceil_to(cols, nb)

    lp = te.compute(
        [*lhs.batch, ceil_div(rows, mr), K, index(mr)],
        lambda *i: to_accumulator(lhs.at(list(i[:-3]), clamp_last(i[-3] * mr + i[-1], rows,
                                                                   rows_p), i[-2]), acc_dtype),
        name=f"{name}_pack_l", attrs={ROLE: "pack_l",
                                      **({"k_split": k_split} if k_split else {})})
    rp = packed_rhs if packed_rhs is not None else te.compute(
        [*rhs.batch, ceil_div(cols, nb), K, index(nb)],
        lambda *i: to_accumulator(rhs.at(list(i[:-3]), clamp_last(i[-3] * nb + i[-1], cols,
                                                                   cols_p), i[-2]), acc_dtype),
        name=f"{name}_pack_r", attrs={ROLE: "pack_r"})
    k = te.reduce_axis((index(0), K), name="k")
    nbatch = len(batch)

    def body(*i):
        b, r, c = list(i[:nbatch]), i[nbatch], i[nbatch + 1]
        bl, br = broadcast_index(lhs.batch, b), broadcast_index(rhs.batch, b)
        return te.sum(lp[(*bl, r // mr, k, r % mr)] *
                      to_accumulator(rp[(*br, c // nb, k, c % nb)], acc_dtype), axis=k)

    if panel_parallel is None:
        panel_parallel = _panel_parallel(batch, rhs.batch, cols_p, nb)
    attrs = {ROLE: "acc", **tiling.annotations(), "nbatch": nbatch,
             "panel_parallel": int(panel_parallel), "serial": int(_serial(batch, rows, cols, K)),
             "vector_epilogue": int(columns_last and static(cols) is not None
                                    and static(cols) % nb == 0), **(extra or {})}
    return te.compute([*batch, rows_p, cols_p], body, name=f"{name}_acc", attrs=attrs)


PANELS_SHARED, PANELS_PER_BATCH = 2, 1   # "panel_parallel" modes (0: tiles in parallel)


def _panel_parallel(batch, rhs_batch, cols_p, nb) -> int:
    """How Rp is packed and the threads split the work:

    - PANELS_SHARED: Rp is the same for every batch index (a weight): parallel over
      the column panels, each packed once and reused by all batches and row tiles;
    - PANELS_PER_BATCH: Rp varies with every batch index: parallel over (batch, panel);
    - 0: too few panels for the threads (or a partly broadcast Rp): Rp is packed at
      the root and the (batch, panel, row tile) tiles run in parallel."""
    def count(dims) -> int | None:
        n = 1
        for d in dims:
            if static(d) is None:
                return None
            n *= static(d)
        return n // nb
    enough = lambda n: n is None or n >= 2 * machine().threads  # noqa: E731
    if all(static(d) == 1 for d in rhs_batch):
        return PANELS_SHARED if enough(count([cols_p])) else 0
    lead = len(batch) - len(rhs_batch)
    for i, d in enumerate(batch):
        own = rhs_batch[i - lead] if i >= lead else None
        if static(d) != 1 and (own is None or static(own) == 1):
            return 0
    return PANELS_PER_BATCH if enough(count([*batch, cols_p])) else 0


def _serial(batch, rows, cols, K) -> bool:
    work = 1
    for d in [*batch, rows, cols, K]:
        s = static(d)
        if s is None:
            return False
        work *= s
    return work < PARALLEL_MIN_WORK


# --- the schedule --------------------------------------------------------------------------------
def _role(sch: s_tir.Schedule, block) -> str | None:
    ann = sch.get(block).annotations
    return str(ann[ROLE]) if ROLE in ann else None


def gemm_blocks(sch: s_tir.Schedule) -> dict[str, list]:
    """The template's blocks by role ("acc", "pack_l", "pack_r", ...), in program order."""
    found: dict[str, list] = {}
    for block in sch.get_child_blocks(sch.get_sblock("root")):
        role = _role(sch, block)
        if role is not None:
            found.setdefault(role, []).append(block)
    return found


def inline_epilogue(sch: s_tir.Schedule) -> None:
    """Fold the epilogue into one block: the lowering's own (`out`: bias, cast) and the
    elementwise blocks a fused group stacks after it (activation, residual add,
    casts) are inlined into the last, the function's output, which then reads the
    accumulator directly and is placed in the output tile like any epilogue."""
    keep = [sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))
            if _role(sch, b) is not None]
    inline_elementwise(sch, keep)


def schedule_gemm(sch: s_tir.Schedule, node: Node | None = None) -> None:
    """The schedule of the module docstring, for every accumulator block in `sch`."""
    inline_epilogue(sch)
    blocks = gemm_blocks(sch)
    placed: set[str] = set()
    for acc in blocks.get("acc", []):
        placed |= schedule_accumulator(sch, acc)
    blocks = gemm_blocks(sch)   # the packs left at the root (not placed or inlined)
    for pack in blocks.get("pack_l", []) + blocks.get("pack_r", []):
        if sch.get(pack).name_hint not in placed:
            schedule_pack(sch, pack)


def schedule_accumulator(sch: s_tir.Schedule, acc) -> set[str]:
    """Tile, vectorize and parallelize one accumulator block. Its loops are
    [*batch, rows, cols, *reductions]; annotations give the tiling, whether the
    epilogue (the block's consumer) runs per tile, whether the inner reduction loops
    (a conv's taps) unroll, and whether Rp is packed per column panel. Returns the
    names of the packs it placed inside its loops (the others stay at the root)."""
    ann = sch.get(acc).annotations
    mr, nb, lanes, nbatch = (int(ann[key]) for key in ("mr", "nb", "lanes", "nbatch"))
    loops = sch.get_loops(acc)
    b, r, c, ks = loops[:nbatch], loops[nbatch], loops[nbatch + 1], loops[nbatch + 2:]
    ro, mi = sch.split(r, [None, mr])
    co, nv, lane = sch.split(c, [None, nb // lanes, lanes])
    mode = int(ann.get("panel_parallel", 0))
    if mode == PANELS_SHARED:
        sch.reorder(co, *b, ro, *ks, mi, nv, lane)
    else:
        sch.reorder(*b, co, ro, *ks, mi, nv, lane)
    if int(ann.get("epilogue_in_tile", 1)):
        for out in sch.get_consumers(acc):
            sch.reverse_compute_at(out, ro, preserve_unit_loops=True)
            if int(ann["vector_epilogue"]):
                vectorize_epilogue(sch, out, lanes)
    else:   # accumulate in a tile-sized local buffer, then store the tile whole
        store = sch.cache_write(acc, 0, "local")
        sch.reverse_compute_at(store, ro, preserve_unit_loops=True)
        vectorize_epilogue(sch, store, lanes)
    pack_r = [p for p in sch.get_producers(acc) if _role(sch, p) == "pack_r"]
    placed: set[str] = set()
    if int(ann.get("direct_l", 0)):   # L read in place: no pack, no parallel pass for it
        for pack in sch.get_producers(acc):
            if _role(sch, pack) == "pack_l":
                placed.add(sch.get(pack).name_hint)
                sch.compute_inline(pack)
    if mode:
        outer = co if mode == PANELS_SHARED or not b else sch.fuse(*b, co)
        if pack_r:
            sch.compute_at(pack_r[0], outer, preserve_unit_loops=True)
            schedule_panel_pack(sch, pack_r[0])
            placed.add(sch.get(pack_r[0]).name_hint)
    else:
        outer = sch.fuse(*b, co, ro)
        pack_l = [p for p in sch.get_producers(acc) if _role(sch, p) == "pack_l"]
        if pack_l and int(ann.get("pack_l_in_tile", 0)):   # one column panel: Lp used once
            sch.compute_at(pack_l[0], outer, preserve_unit_loops=True)
            split_pack_reduction(sch, pack_l[0])
            placed.add(sch.get(pack_l[0]).name_hint)
    if not int(ann.get("serial", 0)):
        sch.parallel(outer)
    unrolled = int(ann.get("unroll_reduction", 0))
    for k in ks[len(ks) - unrolled:] if unrolled else []:
        sch.unroll(k)
    sch.unroll(mi)
    sch.unroll(nv)
    sch.vectorize(lane)
    sch.decompose_reduction(acc, ks[0])
    return placed


def vectorize_epilogue(sch: s_tir.Schedule, out, lanes: int) -> None:
    """Vectorize the innermost loop of an epilogue placed in a tile (the lowering
    marked it safe: the output's last axis is the columns, a multiple of the tile)."""
    inner = sch.get_loops(out)[-1]
    extent = static(sch.get(inner).extent)
    if extent is not None and extent % lanes == 0:
        _, vec = sch.split(inner, [None, lanes])
        sch.vectorize(vec)


def schedule_panel_pack(sch: s_tir.Schedule, pack) -> None:
    """A column panel packed inside the (batch, panel) loop: vectorize its columns."""
    loops = sch.get_loops(pack)
    inner = loops[-1]
    lanes = _pack_lanes(sch, pack)
    extent = static(sch.get(inner).extent)
    if extent and extent % lanes == 0:
        _, vec = sch.split(inner, [None, lanes])
        sch.vectorize(vec)


def schedule_pack(sch: s_tir.Schedule, pack) -> None:
    """A pack at the root: parallel over its leading loops, the panel's last axis
    vectorized for column panels (unrolled for row panels)."""
    loops = sch.get_loops(pack)
    role = _role(sch, pack)
    small = _small(sch, loops)
    extent = static(sch.get(loops[-1]).extent) or 0
    if role == "pack_r":
        lanes = _pack_lanes(sch, pack)
        if extent % lanes == 0:
            _, vec = sch.split(loops[-1], [None, lanes])
            sch.vectorize(vec)
    elif extent <= 16:
        sch.unroll(loops[-1])
    if len(loops) > 2 and not small:
        sch.parallel(sch.fuse(*loops[:-2]) if len(loops) > 3 else loops[0])
    if role == "pack_l":
        split_pack_reduction(sch, pack)


def split_pack_reduction(sch: s_tir.Schedule, pack) -> None:
    """Split a row pack's reduction loop by its "k_split" factors (a conv's channel
    and taps), so the gathered indices are affine in the loops, not divided per
    element."""
    split = sch.get(pack).annotations.get("k_split")
    if split is not None:
        sch.split(sch.get_loops(pack)[-2], [int(f) for f in split])


def _small(sch: s_tir.Schedule, loops) -> bool:
    n = 1
    for lp in loops:
        s = static(sch.get(lp).extent)
        if s is None:
            return False
        n *= s
    return n < PARALLEL_MIN_WORK // 4


def _pack_lanes(sch: s_tir.Schedule, pack) -> int:
    return machine().lanes(str(sch.get(pack).writes[0].source.dtype))


# --- matmul --------------------------------------------------------------------------------------
@register_lowering("matmul", backend="tvm")
def lower_matmul(ctx: LowerContext, a: te.Tensor, b: te.Tensor) -> te.Tensor:
    """np.matmul: batch dims broadcast; a rank-1 `a` is one row, a rank-1 `b` one column."""
    dtype, acc = ctx.out_dtype(), accumulator_dtype(str(a.dtype))
    a_shape, b_shape = list(a.shape), list(b.shape)
    a_vec, b_vec = len(a_shape) == 1, len(b_shape) == 1
    M = index(1) if a_vec else a_shape[-2]
    N = index(1) if b_vec else b_shape[-1]
    K = a_shape[-1]
    a_batch = [] if a_vec else a_shape[:-2]
    b_batch = [] if b_vec else b_shape[:-2]
    out_shape = ctx.out_shape()
    batch = out_shape[:len(out_shape) - (0 if a_vec else 1) - (0 if b_vec else 1)]
    lhs = Operand(a_batch, M, (lambda bi, r, k: a[k]) if a_vec else
                  (lambda bi, r, k: a[(*bi, r, k)]))
    rhs = Operand(b_batch, N, (lambda bi, c, k: b[k]) if b_vec else
                  (lambda bi, c, k: b[(*bi, k, c)]))
    tiling = choose_tiling(M, N, acc, knobs_for(ctx.node).mr)
    accumulated = panel_gemm("matmul", batch, lhs, rhs, K, acc, tiling, columns_last=not b_vec)
    nbatch = len(batch)

    def out(*i):
        bi = list(i[:nbatch])
        r = index(0) if a_vec else i[nbatch]
        c = index(0) if b_vec else i[-1]
        return from_accumulator(accumulated[(*bi, r, c)], dtype)
    return te.compute(out_shape, out, name="matmul")


@register_lowering("linear", backend="tvm")
def lower_linear(ctx: LowerContext, x: te.Tensor, weight: te.Tensor,
                 bias: te.Tensor | None = None) -> te.Tensor:
    """x @ weight.T + bias; weight is [N, K] as stored. x's dims before the last two
    are batch dims (the weight panel is packed once for all of them)."""
    N = weight.shape[0]
    return _linear(ctx, x, Operand([], N, lambda bi, c, k: weight[c, k]), None, bias)


@register_lowering("linear_packed", backend="tvm")
def lower_linear_packed(ctx: LowerContext, x: te.Tensor, weight: te.Tensor,
                        bias: te.Tensor | None = None, *, out_features: int) -> te.Tensor:
    """linear with the weight's column panels packed at compile time: the kernel reads
    them as its Rp, with no pack stage; or, for a few rows in panels narrower than a
    vector, computes the transpose (`_linear_transposed`)."""
    nb = static(weight.shape[-1])
    if transposed_linear(x, nb):
        return _linear_transposed(ctx, x, weight, bias, out_features)
    rhs = Operand([], index(out_features), lambda bi, c, k: weight[c // nb, k, c % nb])
    return _linear(ctx, x, rhs, weight, bias)


TRANSPOSED_ROWS_VECTORS = 2   # x's rows, in vectors, that the transposed linear takes


def transposed_linear(x: te.Tensor, nb: int) -> bool:
    """Whether a `linear_packed` of `x` with panels `nb` wide runs transposed: x is a
    static matrix of two vectors of rows (32 f32 rows: the MLP's batch) and the panels are
    narrower than a vector (`pack_weights` packs such a weight so). Measured: 16 rows
    (8 accumulators) and 48 rows (24) ran slower transposed than as column panels."""
    lanes = machine().lanes(accumulator_dtype(str(x.dtype)))
    rows = static(x.shape[0]) if len(x.shape) == 2 else None
    return rows == TRANSPOSED_ROWS_VECTORS * lanes and nb < lanes


def _linear_transposed(ctx: LowerContext, x: te.Tensor, weight: te.Tensor,
                       bias: te.Tensor | None, out_features: int) -> te.Tensor:
    """x @ W.T for a few rows, as outT = W @ xT on the template: L is the weight,
    whose compile-time panels [N/nb, K, nb] are exactly the template's row panels
    (read in place, broadcast nb features per k), and R is xT, all of x's rows in
    the vector axis (packed per call: a small transpose of x). Each weight element is
    then read once per call, evenly through the k loop, where the column-panel tile
    reads a panel once per row tile, the first time from memory in one burst:
    measured on the MLP's 32 x 1024 x 1024 layers, 10% faster with the weights in
    cache and 15% right after a pause. The epilogue stores the tile transposed."""
    dtype, acc = ctx.out_dtype(), accumulator_dtype(str(x.dtype))
    rows, K = x.shape
    nb = static(weight.shape[-1])
    lhs = Operand([], index(out_features), lambda bi, r, k: weight[r // nb, k, r % nb])
    rhs = Operand([], rows, lambda bi, c, k: x[c, k])
    lanes = machine().lanes(acc)
    tiling = Tiling(nb, static(rows), lanes)
    accumulated = panel_gemm("linear_t", [], lhs, rhs, K, acc, tiling, columns_last=False,
                             extra={"direct_l": 1})

    def out(r, c):
        v = accumulated[c, r]
        if bias is not None:
            v = v + to_accumulator(bias[c], acc)
        return from_accumulator(v, dtype)
    return te.compute(ctx.out_shape(), out, name="linear")


def _linear(ctx: LowerContext, x: te.Tensor, rhs: Operand, packed: te.Tensor | None,
            bias: te.Tensor | None) -> te.Tensor:
    dtype, acc = ctx.out_dtype(), accumulator_dtype(str(x.dtype))
    x_shape = list(x.shape)
    x_vec = len(x_shape) == 1
    M = index(1) if x_vec else x_shape[-2]
    K = x_shape[-1]
    batch = [] if x_vec else x_shape[:-2]
    lhs = Operand(batch, M, (lambda bi, r, k: x[k]) if x_vec else
                  (lambda bi, r, k: x[(*bi, r, k)]))
    tiling = choose_tiling(M, rhs.extent, acc, knobs_for(ctx.node).mr)
    if packed is not None:
        tiling = packed_tiling(tiling, static(packed.shape[-1]))
    accumulated = panel_gemm("linear", batch, lhs, rhs, K, acc, tiling, packed_rhs=packed,
                             extra={"direct_l": int(str(x.dtype) == acc)})
    nbatch = len(batch)

    def out(*i):
        bi = list(i[:nbatch])
        r = index(0) if x_vec else i[nbatch]
        c = i[-1]
        v = accumulated[(*bi, r, c)]
        if bias is not None:
            v = v + to_accumulator(bias[c], acc)
        return from_accumulator(v, dtype)
    return te.compute(ctx.out_shape(), out, name="linear")


SCHEDULES["matmul"] = schedule_gemm
SCHEDULES["linear"] = schedule_gemm
SCHEDULES["linear_packed"] = schedule_gemm

# register their lowerings and schedules
from . import attention, conv, conv_nchwc, conv_winograd  # noqa: E402,F401
