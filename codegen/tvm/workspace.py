"""Kernel workspace: the scratch memory a TVM kernel allocates while it runs, read from
the kernel as TVM lowers it, so that memory reports count it.

A kernel's intermediate buffers (a conv's padded input, Winograd's transformed tiles,
a register tile's spill) are not graph values: the memory plan never sees them. TVM's
`LowerTVMBuiltin` pass turns each buffer too big for the stack into a
`TVMBackendAllocWorkspace(device, id, nbytes, ...)` call, served at run time from a
pool per thread that keeps its pages for the next call. `compile_module` compiles a
PrimFunc with a pass instrument (`WorkspaceProbe`) that reads the module right after
that pass and sums the calls:

    shared      the calls outside any parallel loop: made once per kernel call
    per_thread  the calls inside the parallel loop with the most: each thread running a
                task of that loop holds them at the same time
    symbolic    calls whose size is not a constant (symbolic dims): counted, not summed

Imports TVM; `kiln.runtime.plan.Workspace` is the result's type.
"""
from __future__ import annotations

from typing import Any

import tvm
from tvm import tirx

from ...errors import CodegenError
from ...runtime.plan import Workspace

LOWERING_PASS = "tirx.LowerTVMBuiltin"     # after it, every workspace is an explicit call
ALLOC_OP = "tirx.TVMBackendAllocWorkspace"


def compile_module(func: tirx.PrimFunc, name: str, target: Any) -> tuple[Any, Workspace]:
    """`tvm.compile` of `func` as the module's function `name`, and its workspace."""
    probe = WorkspaceProbe()
    with tvm.transform.PassContext(instruments=[probe]):
        module = tvm.compile(tvm.IRModule({name: func}), target=target).mod
    if probe.workspace is None:
        raise CodegenError(f"{LOWERING_PASS} did not run while compiling {name}: "
                           "TVM's build pipeline changed; kiln cannot read the workspace")
    return module, probe.workspace


@tvm.instrument.pass_instrument
class WorkspaceProbe:
    """Reads the workspace of every function in the module after `LOWERING_PASS` (the
    largest, when a module holds several: one kernel and its host wrapper)."""

    def __init__(self) -> None:
        self.workspace: Workspace | None = None

    def run_after_pass(self, mod: tvm.IRModule, info: tvm.transform.PassInfo) -> None:
        if info.name != LOWERING_PASS:
            return
        found = [workspace_of(f.body) for f in mod.functions.values()
                 if isinstance(f, tirx.PrimFunc)]
        self.workspace = max(found, key=lambda w: (w.nbytes(1), w.symbolic),
                             default=Workspace())


def workspace_of(body: tirx.Stmt) -> Workspace:
    """The workspace calls in `body` (a lowered PrimFunc's), by where they sit."""
    shared, symbolic = 0, 0
    per_loop: list[int] = []
    for call, parallel_loop in _allocations(body, None):
        size = call.args[2]
        if not isinstance(size, tirx.IntImm):
            symbolic += 1
        elif parallel_loop is None:
            shared += int(size.value)
        else:
            while len(per_loop) <= parallel_loop:
                per_loop.append(0)
            per_loop[parallel_loop] += int(size.value)
    return Workspace(shared, max(per_loop, default=0), symbolic)


def _allocations(stmt: Any, loop: int | None, counter: list[int] | None = None):
    """(workspace call, index of the parallel loop around it or None) for each call
    under `stmt`, in program order. Statements hold them in a `DeclBuffer`'s data or a
    `Bind`'s value; the walk follows every statement that has a body."""
    counter = [0] if counter is None else counter
    if isinstance(stmt, tirx.SeqStmt):
        for s in stmt.seq:
            yield from _allocations(s, loop, counter)
    elif isinstance(stmt, tirx.For):
        if stmt.kind == tirx.ForKind.PARALLEL and loop is None:
            loop = counter[0]
            counter[0] += 1
        yield from _allocations(stmt.body, loop, counter)
    elif isinstance(stmt, tirx.IfThenElse):
        yield from _allocations(stmt.then_case, loop, counter)
        if stmt.else_case is not None:
            yield from _allocations(stmt.else_case, loop, counter)
    elif isinstance(stmt, (tirx.DeclBuffer, tirx.Bind)):
        value = stmt.data if isinstance(stmt, tirx.DeclBuffer) else stmt.value
        if isinstance(value, tvm.ir.Call) and getattr(value.op, "name", "") == ALLOC_OP:
            yield value, loop
    elif hasattr(stmt, "body") and isinstance(stmt.body, tirx.Stmt):   # AttrStmt, While, ...
        yield from _allocations(stmt.body, loop, counter)
