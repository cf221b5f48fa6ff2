"""Memory planning: liveness-based reuse of the buffers that hold intermediate values,
views instead of copies for reshape-like ops, and in-place elementwise steps.

Given a `Plan` whose steps are in execution order, `plan_memory` assigns every
intermediate (a step output that is not returned: graph inputs are the caller's,
constants are the weights', and the values graph outputs are, directly or through a
view, get fresh arrays on every call) to a *slot*. Values whose lifetimes
(`Plan.lifetimes`: defining step to the last step reading it or a view of it) do not
overlap may share a slot; a slot is as large as its largest value. Dims may be
symbolic, so a slot's size is evaluated per binding at run time (`Plan.slot_bytes`);
the planner decides with a *representative* size, the bytes under `representative`
bindings (default: every symbol = `REPRESENTATIVE_DIM`).

The algorithm (`assign_slots`) has two greedy rounds:

1. In place, in execution order: an output overwrites an input it may (a *candidate*:
   the compiler names them, see `inplace_candidates`) if that input's storage is an
   intermediate whose last read is this step, and the step reads that storage only
   with the output's dtype and shape (`Plan.inplace`). The values so linked form a
   *chain* that lives in one slot, from its first value's step to its last one's
   last read; every other value is a chain of its own.
2. By size: chains largest first (ties: earliest first) each take the smallest slot
   holding no chain whose span meets theirs, else a new slot (the greedy-by-size
   order of TFLite's arena planner). A slot's first chain is its largest at the
   representative size, so small values fill the gaps between big ones.

On the graph, the `plan` pass (`PlanMemory`) does this over the nodes that become
kernels, in order: constants are weights, views (`kiln.ir.registry.is_view`: reshape,
squeeze, unsqueeze) become `Plan.aliases`, and the values inside a fused group's body
never get buffers (the group is one kernel). Candidates are the inputs of an
elementwise node (or of a fused group whose body is all elementwise) with the output's
type. The pass stores its result as `graph.memory_plan` (a `MemoryPlan`), which
`kiln.compiler.make_plan` applies to the plan of the built kernels; a pass that edits
the graph after `plan` makes it stale, and `make_plan` says so.

`memory_report` states the peak intermediate memory a plan allocates under given
bindings, against one buffer per value, and adds the kernels' workspace (the scratch
each kernel allocates inside, `Step.workspace`: known once the kernels are built). This module imports kiln.ir, the pass manager
and the plan dataclasses, never a backend.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar, Mapping, Sequence

from ..errors import KilnError
from ..ir import Graph, Node
from ..ir.registry import ELEMENTWISE, get_op, is_view
from ..runtime.plan import Plan, Port, Signature, Step, TensorSpec, kernel_threads
from .manager import Pass, PassReport, register_pass

REPRESENTATIVE_DIM = 64


# --- planning a Plan ----------------------------------------------------------------------
def representative_bindings(plan: Plan, given: Mapping[str, int] | None = None) -> dict[str, int]:
    """`given`, plus `REPRESENTATIVE_DIM` for every other bindable symbol."""
    given = dict(given or {})
    return {s: given.get(s, REPRESENTATIVE_DIM) for s in plan.bindable_symbols()} | given


def assign_slots(plan: Plan, representative: Mapping[str, int] | None = None,
                 candidates: Mapping[str, Sequence[str]] | None = None
                 ) -> tuple[dict[str, int], dict[str, str]]:
    """(intermediate value -> slot id, in-place output -> the input it overwrites), by
    in-place chains then greedy-by-size (see the module docstring). `candidates` maps a
    step output to the inputs its op may overwrite, in order of preference."""
    bindings = representative_bindings(plan, representative)
    live = plan.lifetimes()
    inplace, chains = _inplace_chains(plan, live, candidates or {})
    # A chain occupies one slot from its first value's step to its last value's last read.
    span = {head: (live[chain[0]][0], live[chain[-1]][1]) for head, chain in chains.items()}
    size = {head: max(plan.values[v].nbytes(bindings) for v in chain)
            for head, chain in chains.items()}
    slots: list[list[str]] = []                # slot -> the chains in it (largest first)
    memory: dict[str, int] = {}
    for head in sorted(chains, key=lambda h: (-size[h], span[h][0])):
        s, e = span[head]
        free = [k for k, held in enumerate(slots)
                if all(span[h][1] < s or e < span[h][0] for h in held)]
        # every slot is at least this large (largest first): take the smallest free one
        slot = min(free, key=lambda k: (size[slots[k][0]], k)) if free else len(slots)
        if not free:
            slots.append([])
        slots[slot].append(head)
        memory.update((v, slot) for v in chains[head])
    return {v: memory[v] for v in plan.intermediates}, inplace


def _inplace_chains(plan: Plan, live: Mapping[str, tuple[int, int]],
                    candidates: Mapping[str, Sequence[str]]
                    ) -> tuple[dict[str, str], dict[str, list[str]]]:
    """In execution order, each output that overwrites a candidate input (`_inplace_source`)
    joins that input's chain; returns the in-place map and each chain (by its first
    value), whose values then share one slot."""
    slotted = set(plan.intermediates)
    inplace: dict[str, str] = {}
    chains: dict[str, list[str]] = {}
    head_of: dict[str, str] = {}
    for i, step in enumerate(plan.steps):
        for v in step.outputs:
            if v not in slotted:
                continue
            source = _inplace_source(plan, i, v, candidates.get(v, ()), head_of, chains, live)
            if source is None:
                head_of[v] = v
                chains[v] = [v]
            else:
                inplace[v] = source
                head_of[v] = head_of[plan.root(source)]
                chains[head_of[v]].append(v)
    return inplace, chains


def _inplace_source(plan: Plan, i: int, out: str, sources: Sequence[str],
                    head_of: Mapping[str, str], chains: Mapping[str, list[str]],
                    live: Mapping[str, tuple[int, int]]) -> str | None:
    """The first candidate input step `i` may overwrite with `out`, or None: its storage
    is an intermediate, the last of its chain (no other output took it over), last read
    here, and read here only with `out`'s type."""
    step = plan.steps[i]
    for source in sources:
        root = plan.root(source)
        if (source in step.inputs and root in head_of and chains[head_of[root]][-1] == root
                and live[root][1] == i
                and all(plan.values[v] == plan.values[out]
                        for v in step.inputs if plan.root(v) == root)):
            return source
    return None


def plan_memory(plan: Plan, representative: Mapping[str, int] | None = None,
                candidates: Mapping[str, Sequence[str]] | None = None) -> Plan:
    """The plan with its `memory` and `inplace` filled by `assign_slots` (validated)."""
    memory, inplace = assign_slots(plan, representative, candidates)
    return dataclasses.replace(plan, memory=memory, inplace=inplace).validate()


# --- the graph side -----------------------------------------------------------------------
@dataclass(frozen=True)
class MemoryPlan:
    """What the `plan` pass leaves on `graph.memory_plan` for `compiler.make_plan`:
    the slots, in-place outputs and views of the graph's values, and the outputs of
    each kernel step it planned (to tell a stale plan from a current one)."""
    memory: dict[str, int]
    inplace: dict[str, str]
    aliases: dict[str, str]
    steps: tuple[tuple[str, ...], ...]

    def apply(self, plan: Plan) -> Plan:
        """`plan` (built from the same graph) with this memory plan, validated."""
        if (tuple(s.outputs for s in plan.steps) != self.steps
                or dict(plan.aliases) != self.aliases):
            raise KilnError(f"graph {plan.name}: its memory plan (graph.memory_plan, from the "
                            "`plan` pass) no longer matches its nodes; a pass changed the "
                            "graph after `plan` — put `plan` last in the pipeline")
        return dataclasses.replace(plan, memory=self.memory, inplace=self.inplace).validate()


def graph_plan(graph: Graph, steps: Sequence[Step] | None = None) -> Plan:
    """The plan of `graph` without memory: signature, every value's spec, constants,
    views as aliases, and `steps` (default: one per kernel node, named by its op)."""
    def spec(v) -> TensorSpec:
        return TensorSpec(v.type.dtype.name, v.type.shape)

    def port(v) -> Port:
        return Port(v.name, v.type.dtype.name, v.type.shape)

    if steps is None:
        steps = [Step(n.op, [v.name for v in n.inputs], [v.name for v in n.outputs],
                      n.format()) for n in kernel_nodes(graph)]
    return Plan(
        signature=Signature(tuple(port(v) for v in graph.inputs),
                            tuple(port(v) for v in graph.outputs)),
        values={v.name: spec(v) for v in graph.values()},
        constants={n.outputs[0].name: n.attrs["ref"] for n in graph.nodes if n.op == "constant"},
        steps=tuple(steps), name=graph.name,
        aliases={n.output.name: n.inputs[0].name for n in graph.nodes if is_view(n)})


def kernel_nodes(graph: Graph) -> list[Node]:
    """The nodes that run a kernel, in order: all but constants and views."""
    return [n for n in graph.nodes if n.op != "constant" and not is_view(n)]


def _elementwise(node: Node) -> bool:
    """An elementwise op, or a fused group whose body is all elementwise (scalars
    made by `full` inside it aside)."""
    if node.body is not None:
        return all(_elementwise(n) for n in node.body.nodes if n.inputs)
    return ELEMENTWISE in get_op(node.op).traits


IN_PLACE_ANCHORS = frozenset({"conv", "conv_packed", "conv_nchwc", "conv_winograd"})


def _epilogue_inputs(node: Node) -> set[int]:
    """Positions of a fused conv group's inputs that only its elementwise epilogue
    reads (a residual): the kernel reads each element of such an input once, at the
    index it then writes, so the output may take its storage. Conv groups only: that
    takes ResNet-50's peak from 8.0 to 5.6 MB at no cost in speed, while a GEMM whose
    epilogue overwrites what it reads ran up to 2x slower (Llama's silu(x W1) * up
    writing over `up`: 1.9 ms against 1.0 ms into a buffer of its own; the whole
    model 25 ms against 28 ms)."""
    if node.body is None or node.attrs.get("kind") != "contraction" or \
            not any(m.op in IN_PLACE_ANCHORS for m in node.body.nodes):
        return set()
    return {i for i, v in enumerate(node.body.inputs)
            if v.users and all(_elementwise(u) for u in v.users)}


def inplace_candidates(graph: Graph) -> dict[str, tuple[str, ...]]:
    """Output -> the inputs it may overwrite: the inputs of the same type (no
    broadcasting, same dtype) of a one-output elementwise kernel node, or the
    residual inputs of a conv group's epilogue (`_epilogue_inputs`)."""
    found = {}
    for node in kernel_nodes(graph):
        if len(node.outputs) != 1:
            continue
        allowed = (set(range(len(node.inputs))) if _elementwise(node)
                   else _epilogue_inputs(node))
        same = tuple(dict.fromkeys(v.name for i, v in enumerate(node.inputs)
                                   if i in allowed and v.type == node.output.type))
        if same:
            found[node.output.name] = same
    return found


def plan_graph_memory(graph: Graph, representative: Mapping[str, int] | None = None
                      ) -> tuple[MemoryPlan, Plan]:
    """Plan the memory of `graph`'s kernel nodes; returns the `MemoryPlan` and the
    planned (kernel-less) plan it came from."""
    plan = plan_memory(graph_plan(graph), representative, inplace_candidates(graph))
    return MemoryPlan(dict(plan.memory), dict(plan.inplace), dict(plan.aliases),
                      tuple(s.outputs for s in plan.steps)), plan


@register_pass
@dataclass(frozen=True)
class PlanMemory(Pass):
    """Plan intermediate memory: slots by liveness, views, in-place elementwise steps.

    Leaves the graph's nodes as they are and stores the result as `graph.memory_plan`
    (a `MemoryPlan`) for `kiln.compiler.make_plan`; run it last. `dim` is the size every
    symbolic dim takes when sizes are compared; the report gives the peak intermediate
    bytes at that size."""
    name: ClassVar[str] = "plan"
    dim: int = REPRESENTATIVE_DIM

    def run(self, graph: Graph) -> PassReport:
        dims = {s: self.dim for s in graph.symbols}
        memory_plan, plan = plan_graph_memory(graph, dims)
        graph.memory_plan = memory_plan   # type: ignore[attr-defined]
        report = memory_report(plan, representative_bindings(plan, dims))
        bindings = ", ".join(f"{k}={v}" for k, v in report.bindings.items())
        return PassReport(changed=False, counts={
            "kernels": len(plan.steps), "intermediates": report.intermediates,
            "slots": report.slots, "inplace": report.inplace, "views": report.views,
            "peak_bytes": report.planned_bytes, "unplanned_bytes": report.unplanned_bytes},
            notes=(f"bytes at {bindings}",) if bindings else ())


# --- reporting ----------------------------------------------------------------------------
@dataclass(frozen=True)
class MemoryReport:
    """Bytes of intermediate storage under one binding of the symbols."""
    bindings: dict[str, int]
    intermediates: int       # values that live in slots
    slots: int
    views: int               # values that are views (no storage of their own)
    inplace: int             # steps that write over an input
    planned_bytes: int       # sum of slot sizes: the peak intermediate memory allocated
    unplanned_bytes: int     # sum of every intermediate's size: one buffer each
    live_peak_bytes: int     # the most intermediate bytes live at one step: a lower bound
    threads: int = 1         # the kernels' threads, for the workspace
    workspace_bytes: int = 0     # kernel scratch held at once (see `workspace_held`)
    symbolic_workspaces: int = 0  # kernels with symbol-sized scratch, not in the bytes

    @property
    def saved_bytes(self) -> int:
        return self.unplanned_bytes - self.planned_bytes

    @property
    def peak_bytes(self) -> int:
        """Intermediates plus kernel workspace: the memory a call needs beyond its
        inputs, outputs and the weights."""
        return self.planned_bytes + self.workspace_bytes

    def __str__(self) -> str:
        ratio = self.planned_bytes / self.unplanned_bytes if self.unplanned_bytes else 1.0
        symbolic = (f", {self.symbolic_workspaces} kernel(s) with symbol-sized workspace not "
                    "counted" if self.symbolic_workspaces else "")
        return (f"memory plan: {self.intermediates} intermediates in {self.slots} slots "
                f"({self.inplace} in place, {self.views} views), {self.planned_bytes:,} bytes "
                f"vs {self.unplanned_bytes:,} one buffer each ({ratio:.0%}; at least "
                f"{self.live_peak_bytes:,} live at once); kernel workspace "
                f"{self.workspace_bytes:,} bytes on {self.threads} thread(s){symbolic}; peak "
                f"{self.peak_bytes:,} bytes at {self.bindings}")


def workspace_held(plan: Plan, threads: int) -> int:
    """The kernel scratch a call holds at its peak. TVM serves it from a pool per thread
    that keeps its pages for the next kernel, so what stays allocated is the largest
    shared workspace (the calling thread's) plus, in each of `threads` threads, the
    largest per-thread one."""
    shared = max((s.workspace.shared for s in plan.steps), default=0)
    per_thread = max((s.workspace.per_thread for s in plan.steps), default=0)
    return shared + threads * per_thread


def memory_report(plan: Plan, bindings: Mapping[str, int], threads: int | None = None
                  ) -> MemoryReport:
    """What `plan.memory` allocates under `bindings`, against one buffer per value, and
    the kernels' workspace on `threads` threads (default: those the runtime uses)."""
    threads = kernel_threads() if threads is None else threads
    bindings = dict(bindings)
    size = {v: plan.values[v].nbytes(bindings) for v in plan.memory}
    live = plan.lifetimes()
    at_step: list[dict[int, int]] = [{} for _ in plan.steps]   # step -> slot -> bytes live
    for v, slot in plan.memory.items():
        start, end = live[v]
        for i in range(start, end + 1):
            at_step[i][slot] = max(at_step[i].get(slot, 0), size[v])
    return MemoryReport(bindings, len(plan.memory), plan.num_slots, len(plan.aliases),
                        len(plan.inplace), sum(plan.slot_bytes(bindings)), sum(size.values()),
                        max((sum(s.values()) for s in at_step), default=0), threads,
                        workspace_held(plan, threads),
                        sum(1 for s in plan.steps if s.workspace.symbolic))
