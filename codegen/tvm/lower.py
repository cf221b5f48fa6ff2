"""One kiln node -> one scheduled TIR PrimFunc, through the `tvm` lowerings that the
op-family modules attach to the registry.

    lower_node(node, name)
      -> the node's `tvm` lowering from the registry (or UnsupportedOpsError); for a
         fused node, each body member's lowering in turn, one TE computation
      -> one te.placeholder per input; symbolic dims become int64 tirx.Vars named
         after their symbol, expression dims ("batch*seq") their TIR expression
      -> lowering(ctx, *placeholders, **attrs) -> te.Tensor or a tuple of them
      -> check each output's dtype and shape against the node's declared types
      -> te.create_prim_func(inputs + outputs [+ symbol scalars]), global_symbol=name
      -> schedule.schedule(func, node): a fused group is scheduled by its anchor's
         schedule (`group_anchor`: GEMM, conv, attention), else by the default one

The parameters are one buffer per node input (in order), then one per output. A
symbol that no buffer shape holds as a dim of its own (the start of
`arange(past, past + seq)`) cannot be bound from the buffers: it follows them as an
int64 scalar parameter, and `symbol_args(func)` names those scalars in order.

The op families live in `lower_elementwise.py` (elementwise, creation),
`lower_layout.py`, `lower_reduction.py` and `lower_linalg.py`; importing this module
registers all of them. `constant` has no kernel: the runtime reads weights.
"""
from __future__ import annotations

import contextlib
from typing import Callable

import tvm
import tvm.sym
from tvm import s_tir, te, tirx
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T

from ...errors import CodegenError, UnsupportedOpsError
from ...ir.graph import Graph, Node
from ...ir.registry import CONTRACTION
# the GEMM module first: its contraction lowerings take precedence over the basic ones
from . import gemm  # noqa: F401  (matmul, linear, conv, attention + their SCHEDULES)
from . import lower_elementwise, lower_layout, lower_linalg, lower_reduction  # noqa: F401
from . import schedule as _schedule
from .common import INDEX, LowerContext, tvm_dtype

BACKEND = "tvm"
NO_KERNEL = frozenset({"constant"})   # ops the runtime handles without a kernel
SYMBOL_ARGS_ATTR = "kiln.symbol_args"
INDEX_ZERO = tirx.IntImm(INDEX, 0)


def _place(node: Node) -> str:
    return f"{node.format()}" + (f"  (from {node.source})" if node.source else "")


def missing_lowerings(graph: Graph) -> dict[str, list[str]]:
    """op -> the places (`.kir` line and source) of the graph's nodes whose op has no
    TVM lowering; empty when every node can be compiled."""
    missing: dict[str, list[str]] = {}
    for node in graph.nodes:
        if node.body is not None:
            for op, places in missing_lowerings(node.body).items():
                missing.setdefault(op, []).extend(places)
        elif node.op not in NO_KERNEL and BACKEND not in node.opdef.lowerings:
            missing.setdefault(node.op, []).append(_place(node))
    return missing


def lower_node(node: Node, name: str, *, lowering: Callable | None = None,
               schedule: _schedule.ScheduleFn | None = None) -> tirx.PrimFunc:
    """The scheduled PrimFunc computing `node` (a fused node: its whole body), exported
    as `name`.

    `lowering` and `schedule` replace the registered lowering and the schedule
    `schedule.schedule` would choose (to compile an alternative, e.g. a basic
    contraction lowering, side by side with the registered one)."""
    if node.op in NO_KERNEL:
        raise CodegenError(f"{node.format()}: a {node.op} node has no kernel (the runtime "
                           "reads it from the weights)")
    ctx = LowerContext(node)
    try:
        inputs = [te.placeholder(ctx.shape(t.shape), tvm_dtype(t.dtype), name=f"in{i}")
                  for i, t in enumerate(ctx.in_types)]
        if node.body is not None:
            outputs = _lower_body(ctx, inputs)
            schedule_node = group_anchor(node) or node
        else:
            outputs = _apply_lowering(ctx, inputs, lowering)
            schedule_node = node
        outputs = _check_outputs(ctx, outputs, inputs)
        scalars = _unbound_symbols(ctx, inputs + outputs)
        func = te.create_prim_func(inputs + outputs + [ctx.var(s) for s in scalars],
                                   index_dtype_override=INDEX)
        if scalars:
            func = func.with_attr(SYMBOL_ARGS_ATTR, scalars)
        # scheduling works on a module's "main"; the exported name is set afterwards
        func = _schedule.schedule(func, schedule_node, schedule)
        if ctx.checks:
            func = _with_checks(func, ctx, inputs)
    except UnsupportedOpsError:
        raise
    except CodegenError as e:
        if str(e).startswith("TVM lowering of"):   # already names the node
            raise
        raise ctx.fail(str(e)) from None
    except Exception as e:  # noqa: BLE001  a TVM or lowering bug: name the node, keep the cause
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ctx.fail(f"{type(e).__name__}: {first} (full error in the cause)") from e
    return func.with_attr("global_symbol", name)


def _apply_lowering(ctx: LowerContext, inputs: list[te.Tensor],
                    lowering: Callable | None = None) -> list[te.Tensor]:
    """The TE tensors of `ctx.node`'s outputs: its lowering applied to `inputs`."""
    node = ctx.node
    lowering = lowering or node.opdef.lowerings.get(BACKEND)
    if lowering is None:
        raise UnsupportedOpsError("no TVM lowering", {node.op: [_place(node)]})
    for t in ctx.out_types:
        tvm_dtype(t.dtype)  # refuses packed types before the lowering sees them
    result = lowering(ctx, *inputs, **node.attrs)
    return list(result) if isinstance(result, (tuple, list)) else [result]


def _lower_body(kernel: LowerContext, inputs: list[te.Tensor]) -> list[te.Tensor]:
    """A fused node's body as one TE computation: each member's lowering applied to
    the tensors of its inputs, in order. Members share the kernel's variables."""
    body = kernel.node.body
    assert body is not None
    env = {id(v): t for v, t in zip(body.inputs, inputs)}
    for member in body.nodes:
        ctx = LowerContext(member, kernel)
        outs = _check_outputs(ctx, _apply_lowering(ctx, [env[id(v)] for v in member.inputs]), [])
        env.update((id(v), t) for v, t in zip(member.outputs, outs))
    return [env[id(v)] for v in body.outputs]


def group_anchor(node: Node) -> Node | None:
    """The member of a fused group whose op-specific schedule (`SCHEDULES`) schedules
    the whole kernel: its contraction, if it has one and that has a schedule."""
    assert node.body is not None
    for member in node.body.nodes:
        if CONTRACTION in member.opdef.traits and (
                member.op in _schedule.SCHEDULES or member.op in _schedule.BASIC):
            return member
    return None


def symbol_args(func: tirx.PrimFunc) -> list[str]:
    """The symbols a kernel takes as int64 scalars after its buffers (usually none)."""
    attrs = func.attrs
    if attrs is None or SYMBOL_ARGS_ATTR not in attrs:
        return []
    return [str(s) for s in attrs[SYMBOL_ARGS_ATTR]]


def _with_checks(func: tirx.PrimFunc, ctx: LowerContext, inputs: list[te.Tensor]
                 ) -> tirx.PrimFunc:
    """`func` with the lowering's input checks first in its body: one serial pass per
    checked input, asserting each element (the kernel returns the error to its caller)."""
    stmts = []
    for check in ctx.checks:
        k = next(i for i, t in enumerate(inputs) if t.same_as(check.tensor))
        buf = func.params[k]
        with IRBuilder() as ib:
            data = T.buffer_proxy(buf)
            with contextlib.ExitStack() as loops:
                idx = [loops.enter_context(T.serial(INDEX_ZERO, d)) for d in buf.ty.shape]
                with T.Assert(check.holds(data[tuple(idx)] if idx else data[()]),
                              check.message, error_kind=check.kind):
                    T.evaluate(0)
        stmts.append(ib.get())
    root = func.body.block
    body = s_tir.SBlock(root.iter_vars, root.reads, root.writes, root.name_hint,
                        tirx.SeqStmt([*stmts, root.body]), root.init, root.alloc_buffers,
                        root.match_buffers, root.annotations)
    return func.with_body(s_tir.SBlockRealize([], tirx.const(True, "bool"), body))


def _check_outputs(ctx: LowerContext, outputs: list[te.Tensor], inputs: list[te.Tensor]
                   ) -> list[te.Tensor]:
    """The lowering's results, checked against the declared output types; an input or a
    result returned twice gets a copy, so every output is its own buffer."""
    if len(outputs) != len(ctx.out_types):
        raise ctx.fail(f"the lowering returned {len(outputs)} tensors for "
                       f"{len(ctx.out_types)} outputs")
    analyzer = tvm.sym.Analyzer()
    checked: list[te.Tensor] = []
    for i, (t, declared) in enumerate(zip(outputs, ctx.out_types)):
        want_dtype = tvm_dtype(declared.dtype)
        if t.dtype != want_dtype:
            raise ctx.fail(f"output {i} is {t.dtype}, declared {want_dtype}")
        want = ctx.shape(declared.shape)
        if len(t.shape) != len(want) or not all(
                analyzer.can_prove_equal(a, b) for a, b in zip(t.shape, want)):
            raise ctx.fail(f"output {i} has shape {list(t.shape)}, declared {declared}")
        if any(t.same_as(x) for x in inputs + checked):
            t = te.compute(t.shape, lambda *idx, t=t: t(*idx), name=f"{ctx.node.op}_copy")
        checked.append(t)
    return checked


def _unbound_symbols(ctx: LowerContext, tensors: list[te.Tensor]) -> list[str]:
    """Symbols of the node that no buffer holds as a dim of its own, sorted by name."""
    bound = {d.name for t in tensors for d in t.shape if isinstance(d, tirx.Var)}
    return sorted(set(ctx.vars) - bound)
