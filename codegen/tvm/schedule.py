"""CPU schedules for the PrimFuncs `lower_node` builds, and the table through which
op-specific schedules replace the generic ones.

    schedule(func, node)
      -> SCHEDULES[node.op], when registered (codegen/tvm/gemm.py registers matmul,
         linear, conv and scaled_dot_product_attention there)
      -> else BASIC[node.op]: a plain, correct schedule for the contractions
      -> else default_schedule:
           1. inline every pure elementwise block that is not an output
              (casts, padding, broadcasting, x - max, ...);
           2. each output block:
              - injective: split off the innermost axis an inner vector of up to one
                vector register (16 x f32 on AVX-512) that divides its static extent,
                else leave that axis whole (LLVM vectorizes it with a remainder); fuse
                the rest into a parallel loop;
              - fed by reductions over trailing axes (softmax, layer_norm, mean):
                compute those reductions per row under the output's outer loops
                (one pass per row, cache-resident), parallel over the rows,
                vectorize the row's elementwise part;
              - itself a reduction: parallel over the kept axes; when the last kept
                axis is contiguous in the inputs (sum over axis 0), reorder the
                reduction outside it and vectorize across it, else vectorize the
                innermost reduced axis with per-lane partial sums (rfactor);
           3. blocks left at the root (statistics no output computes per row,
              attention's probabilities): scheduled as in 2;
           4. every reduction's init hoisted out of its reduction loops.

The row reductions of 2 are vectorized by partial sums too (sum, mean, the
statistics of softmax and the norms).

A schedule function takes the `tvm.s_tir.Schedule` of a one-function module
("main") and the node, and edits the schedule in place. Loops of unknown (symbolic)
extent are parallelized but only split or vectorized by static factors that divide
them, so no tail predicate is needed. Parallel loops run on TVM's thread pool (one
thread per core unless TVM_NUM_THREADS says otherwise).
"""
from __future__ import annotations

import math
import re
from typing import Callable, Iterable

import tvm
from tvm import s_tir, tirx

from ...ir.graph import Node
from .common import dtype_of
from .target import cpu_target

ScheduleFn = Callable[[s_tir.Schedule, Node], None]

SCHEDULES: dict[str, ScheduleFn] = {}   # op -> schedule; the GEMM helper fills it
BASIC: dict[str, ScheduleFn] = {}       # op -> plain schedule of a contraction (this module)

PARALLEL_MIN_WORK = 1 << 15  # a static kernel doing less (elements x reduction) stays serial

DATA_PAR, COMM_REDUCE = 0, 2   # tirx.IterVar kinds
# intrinsics LLVM cannot emit for vectors (TVM lowers them to scalar libm calls)
_SCALAR_ONLY = frozenset({"sinh", "cosh", "fmod", "call_pure_extern", "call_extern",
                          "if_then_else"})


def schedule(func: tirx.PrimFunc, node: Node, fn: ScheduleFn | None = None) -> tirx.PrimFunc:
    """`func` scheduled for the CPU (attributes kept), by `fn` if given."""
    sch = s_tir.Schedule(func)
    fn = fn or SCHEDULES.get(node.op) or BASIC.get(node.op) or default_schedule
    fn(sch, node)
    return sch.mod["main"]


def default_schedule(sch: s_tir.Schedule, node: Node | None = None,
                     keep: Iterable[str] = ()) -> None:
    """The generic schedule described in the module docstring; blocks named in `keep`
    are not inlined."""
    inline_elementwise(sch, keep)
    placed: set[str] = set()
    for block in _blocks(sch):
        if _is_output(sch, block) and not _is_opaque(sch, block):
            placed |= schedule_block(sch, block)
    for block in _blocks(sch):  # intermediate blocks no output computes per row
        if sch.get(block).name_hint not in placed and not _is_output(sch, block) \
                and not _is_opaque(sch, block):
            placed |= schedule_block(sch, block)
    decompose_reductions(sch)


def decompose_reductions(sch: s_tir.Schedule) -> None:
    """Hoist each reduction's init out of its reduction loops. Left inside, TVM lowers
    it to `if k == 0: init`, which never runs when the reduced extent is 0 (the sum of
    an empty axis would read uninitialized memory)."""
    for block in _blocks(sch):
        blk = sch.get(block)
        if blk.init is None or _is_opaque(sch, block):
            continue
        loop = _first_reduce_loop(sch, block)
        if loop is not None:
            sch.decompose_reduction(block, loop)


def schedule_block(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV) -> set[str]:
    """Schedule one block at the root; returns the names of the blocks it moved under
    its loops."""
    if _is_reduction(sch, block):
        return schedule_reduction(sch, block)
    return schedule_injective(sch, block)


# --- inlining --------------------------------------------------------------------------
def inline_elementwise(sch: s_tir.Schedule, keep: Iterable[str] = ()) -> None:
    """compute_inline every non-output block without reduction axes (until none is left)."""
    keep = set(keep)
    changed = True
    while changed:
        changed = False
        for block in _blocks(sch):
            blk = sch.get(block)
            if blk.name_hint in keep or _is_output(sch, block) or _is_opaque(sch, block) \
                    or not all(iv.iter_type == DATA_PAR for iv in blk.iter_vars):
                continue
            try:
                sch.compute_inline(block)
            except s_tir.ScheduleError:  # e.g. read by a consumer that needs it whole
                continue
            changed = True


# --- injective blocks ------------------------------------------------------------------
def schedule_injective(sch: s_tir.Schedule, block) -> set[str]:
    """Parallel outer loops, vectorized inner loops; reductions feeding the block over
    its trailing axes are computed per row under the outer loops. Returns the names of
    the blocks moved."""
    loops = sch.get_loops(block)
    if not loops or _empty(sch, loops):
        return set()
    upstream = _upstream(sch, block)
    depth, moved = 0, set()
    if upstream:
        depth = _row_depth(sch, block, upstream)
        if depth:
            partials = [rf for rf in (rfactor_inner(sch, b) for b in upstream) if rf is not None]
            upstream = _upstream(sch, block)   # now with the partial-sum blocks
            for producer in reversed(upstream):  # consumers first
                sch.compute_at(producer, loops[depth - 1], preserve_unit_loops=False)
            for rf in partials:
                vectorize_partials(sch, rf, loops[depth - 1])
            moved = {sch.get(b).name_hint for b in upstream}
    reduce_work = _reduce_work(sch, upstream) if depth else 1
    extents = [sch.get(lp).extent for lp in loops]
    outer, inner = loops[:depth], loops[depth:]
    # vectorize the innermost axis alone, by a width dividing its extent: its index
    # stays affine, so the vectors load and store contiguously. (Vectors across fused
    # axes index by div/mod: TVM scalarizes them or LLVM gathers.) Otherwise the
    # innermost loop stays whole and serial, which LLVM vectorizes contiguously with
    # a remainder; the other inner axes are fused for the parallel loop.
    lanes = _lanes(sch, block, extents[-1:]) if inner else 0
    if inner:
        if lanes:
            rest, vec = sch.split(inner[-1], [None, lanes])
            sch.vectorize(vec)
            rest = sch.fuse(*inner[:-1], rest) if len(inner) > 1 else rest
        elif len(inner) > 1:
            rest = sch.fuse(*inner[:-1])
        else:
            rest = inner[0]
        if not outer:
            outer = [rest]
    elif not outer:
        return moved
    if _worth_parallel(extents, reduce_work):
        par = sch.fuse(*outer) if len(outer) > 1 else outer[0]
        sch.parallel(par)
    return moved


def _upstream(sch: s_tir.Schedule, block) -> list:
    """The blocks `block` depends on (transitively), in topological order; [] when one
    of them is opaque (an extern kernel), which stays where it is."""
    order: list = []
    seen: set[str] = set()

    def visit(b) -> bool:
        for producer in sch.get_producers(b):
            name = sch.get(producer).name_hint
            if name in seen:
                continue
            seen.add(name)
            if _is_opaque(sch, producer) or not visit(producer):
                return False
            order.append(producer)
        return True
    return order if visit(block) else []


def _row_depth(sch: s_tir.Schedule, block, upstream: list) -> int:
    """How many outer loops of `block` select the rows the upstream blocks reduce: the
    loops its reads of upstream buffers depend on, when they are a prefix of its loops
    and each upstream block has exactly that many non-unit spatial axes (so computing
    them per iteration recomputes nothing). 0 when the pattern does not hold."""
    blk = sch.get(block)
    produced = [w.source for b in upstream for w in sch.get(b).writes]
    ivars = [iv.var for iv in blk.iter_vars]
    used: set[int] = set()
    for region in blk.reads:
        if not any(region.source.same_as(p) for p in produced):
            continue
        for rng in region.region:
            for v in tvm.tirx.analysis.undefined_vars(rng.min):
                used |= {k for k, iv in enumerate(ivars) if iv.same_as(v)}
    if not used:
        return 0
    # unit-extent axes ([1, 128, 512]'s batch) select nothing: they may sit among the rows
    units = {k for k, iv in enumerate(blk.iter_vars) if _is_one(iv.dom.extent)}
    depth = max(used) + 1
    if not set(range(depth)) <= used | units:
        return 0
    rows = depth - len(units & set(range(depth)))
    for b in upstream:
        spatial = [iv for iv in sch.get(b).iter_vars
                   if iv.iter_type == DATA_PAR and not _is_one(iv.dom.extent)]
        if len(spatial) != rows:
            return 0
    return depth


def _reduce_work(sch: s_tir.Schedule, blocks: list) -> int:
    work = 1
    for b in blocks:
        for iv in sch.get(b).iter_vars:
            if iv.iter_type == COMM_REDUCE:
                work *= _static(iv.dom.extent) or 1024
    return work


# --- reductions ------------------------------------------------------------------------
def schedule_reduction(sch: s_tir.Schedule, block) -> set[str]:
    """Parallel over the kept axes; when the last kept axis is the contiguous axis of
    the block's main input, the reduction loops move outside it and it is vectorized,
    else the innermost reduced axis is (see rfactor_inner). Returns the names of the
    blocks it added."""
    blk = sch.get(block)
    loops = sch.get_loops(block)
    if _empty(sch, loops):
        return set()
    kinds = [iv.iter_type for iv in blk.iter_vars]
    if len(loops) != len(kinds) or kinds != sorted(kinds):  # not spatial-then-reduce
        return set()
    ns = kinds.count(DATA_PAR)
    spatial, reduce = loops[:ns], loops[ns:]
    extents = [sch.get(lp).extent for lp in loops]
    reduce_work = math.prod(_static(e) or 1024 for e in extents[ns:])
    if not spatial:
        return set()
    outer, rf = list(spatial), None
    lanes = _lanes(sch, block, extents[ns - 1:ns]) if reduce else 0
    if lanes and _contiguous_axis(blk, blk.iter_vars[ns - 1].var):
        # across the kept axis: for k: out[i:i+lanes] += x[k, i:i+lanes]
        so, si = sch.split(spatial[-1], [None, lanes])
        sch.reorder(*reduce, si)
        sch.vectorize(si)   # (the init is decomposed last: see decompose_reductions)
        outer = spatial[:-1] + [so]
    else:
        # along the reduced axis: lane partial sums, then one add across the lanes
        rf = rfactor_inner(sch, block)
    par = sch.fuse(*outer) if len(outer) > 1 else outer[0]
    if rf is not None:
        sch.compute_at(rf, par, preserve_unit_loops=False)
        vectorize_partials(sch, rf, par)
    if _worth_parallel(extents[:ns], reduce_work):
        sch.parallel(par)
    return set() if rf is None else {sch.get(rf).name_hint}


def rfactor_inner(sch: s_tir.Schedule, block):
    """Split the innermost reduced loop of a reduction still at the root by the vector
    width and rfactor the lanes: a partial-sum block (returned) accumulates one lane
    per vector element, and `block` then adds the lanes up. None (and no change) when
    that loop is not static and divisible, or TVM does not know the reducer
    (NaN-propagating max, argmax: those stay serial)."""
    loops = sch.get_loops(block)
    if not loops or not _is_reduce_loop(sch, block, loops[-1]):
        return None
    extent = _static(sch.get(loops[-1]).extent) or 0
    lanes = _lanes(sch, block, [sch.get(loops[-1]).extent])
    if not lanes or extent < 2 * lanes:
        return None
    _, lane = sch.split(loops[-1], [None, lanes])
    try:
        return sch.rfactor(lane, factor_axis=0)
    except (s_tir.ScheduleError, tvm.error.InternalError):
        # an unknown reducer, or TVM's rfactor failing its own check (seen on a
        # non-output reduction whose kept axes all have extent 1); both raise before
        # the schedule changes. The split alone changes nothing: same loops, same order.
        return None


def vectorize_partials(sch: s_tir.Schedule, rf, at) -> None:
    """After `rf` was computed under loop `at`: its lane loop innermost, vectorized."""
    rf_loops = sch.get_loops(rf)
    at_stmt = sch.get(at)
    depth = next(i for i, lp in enumerate(rf_loops) if sch.get(lp).same_as(at_stmt))
    own = rf_loops[depth + 1:]
    lane = [lp for lp in own if not _is_reduce_loop(sch, rf, lp)]
    if len(lane) != 1:
        return
    rest = [lp for lp in own if not sch.get(lp).same_as(sch.get(lane[0]))]
    if rest:
        sch.reorder(*rest, lane[0])
    sch.vectorize(lane[0])


def _is_reduce_loop(sch: s_tir.Schedule, block, loop) -> bool:
    """True when `loop` is bound to a reduction axis of `block`."""
    loops = sch.get_loops(block)
    realize = _find_realize(sch.get(loops[-1]).body, sch.get(block).name_hint)
    var = sch.get(loop).loop_var
    return any(iv.iter_type == COMM_REDUCE and any(
        v.same_as(var) for v in tvm.tirx.analysis.undefined_vars(value))
        for iv, value in zip(realize.block.iter_vars, realize.iter_values))


def _contiguous_axis(blk, var) -> bool:
    """True when `var` indexes the last axis of every input the block reads."""
    written = [w.source for w in blk.writes]
    reads = [r for r in blk.reads if not any(r.source.same_as(w) for w in written)]
    if not reads:
        return False
    for r in reads:
        if not r.region:
            return False
        last = r.region[-1].min
        if not any(v.same_as(var) for v in tvm.tirx.analysis.undefined_vars(last)):
            return False
    return True


def _first_reduce_loop(sch: s_tir.Schedule, block):
    """The outermost loop that a reduction axis of `block` is bound to (None if the
    reduction axes have no loops left: extent 1)."""
    loops = sch.get_loops(block)
    if not loops:
        return None
    realize = _find_realize(sch.get(loops[-1]).body, sch.get(block).name_hint)
    bound = [v for iv, value in zip(realize.block.iter_vars, realize.iter_values)
             if iv.iter_type == COMM_REDUCE
             for v in tvm.tirx.analysis.undefined_vars(value)]
    for lp in loops:
        if any(sch.get(lp).loop_var.same_as(v) for v in bound):
            return lp
    return None


def _find_realize(stmt, name: str):
    if isinstance(stmt, s_tir.SBlockRealize):
        return stmt if stmt.block.name_hint == name else None
    children = list(stmt.seq) if isinstance(stmt, tirx.SeqStmt) else \
        [stmt.body] if isinstance(stmt, tirx.For) else []
    for child in children:
        found = _find_realize(child, name)
        if found is not None:
            return found
    return None


# --- helpers ---------------------------------------------------------------------------
def _blocks(sch: s_tir.Schedule) -> list:
    """The blocks under the function's root block ([] when the root is itself the only
    block, as for a lone extern kernel)."""
    root = sch.mod["main"].body.block
    if root.name_hint != "root":
        return []
    return list(sch.get_child_blocks(sch.get_sblock("root")))


def _params(sch: s_tir.Schedule) -> list:
    return list(sch.mod["main"].params)


def _is_output(sch: s_tir.Schedule, block) -> bool:
    params = _params(sch)
    return any(w.source.same_as(p) for w in sch.get(block).writes for p in params)


def _is_reduction(sch: s_tir.Schedule, block) -> bool:
    return any(iv.iter_type == COMM_REDUCE for iv in sch.get(block).iter_vars)


def _is_opaque(sch: s_tir.Schedule, block) -> bool:
    """An extern kernel (e.g. cumsum's scan): no iteration domain of its own."""
    blk = sch.get(block)
    return not blk.iter_vars or not isinstance(blk.body, tirx.BufferStore)


def _empty(sch: s_tir.Schedule, loops) -> bool:
    """True when some loop runs zero times: nothing to schedule."""
    return any(_static(sch.get(lp).extent) == 0 for lp in loops)


def _is_one(e) -> bool:
    return isinstance(e, tirx.IntImm) and e.value == 1


def _static(e) -> int | None:
    return e.value if isinstance(e, tirx.IntImm) else None


def _worth_parallel(extents: list, reduce_work: int = 1) -> bool:
    sizes = [_static(e) for e in extents]
    if any(s is None for s in sizes):
        return True  # unknown until run time: assume large
    return math.prod(sizes) * max(1, reduce_work) >= PARALLEL_MIN_WORK  # type: ignore[arg-type]


def vector_bytes() -> int:
    """The width of one vector register of the target CPU (64 with AVX-512)."""
    global _VECTOR_BYTES
    if _VECTOR_BYTES is None:
        bits = int(tvm.target.codegen.llvm_get_vector_width(cpu_target()))
        _VECTOR_BYTES = max(16, bits // 8)
    return _VECTOR_BYTES


_VECTOR_BYTES: int | None = None


def _lanes(sch: s_tir.Schedule, block, extents: list) -> int:
    """The vector width for the fused loops of `extents` (0: do not vectorize): the
    largest power of two up to one register that divides their static innermost part."""
    blk = sch.get(block)
    if not isinstance(blk.body, tirx.BufferStore) or _calls(blk.body.value) & _SCALAR_ONLY:
        return 0
    static = 1
    for e in reversed(extents):
        if _static(e) is None:
            break
        static *= _static(e)
    dtype = dtype_of(blk.body.value)
    size = 4 if dtype in ("float16", "bfloat16") else max(1, tvm.DataType(dtype).bits // 8)
    width = vector_bytes() // size   # half types compute in float32
    lanes = 1
    while lanes * 2 <= width and static % (lanes * 2) == 0:
        lanes *= 2
    return lanes if lanes >= 4 else 0


def _calls(expr) -> set[str]:
    """The `T.<name>(` calls in `expr`'s TVMScript (TVM's Python visitors do not
    accept every expression kind, e.g. Let)."""
    return set(_CALL.findall(expr.script()))


_CALL = re.compile(r"\bT\.([a-z_0-9]+)\(")
