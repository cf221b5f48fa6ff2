"""Memory planning: liveness-based reuse of the buffers that hold intermediate values.

Given a `Plan` whose steps are in execution order, `plan_memory` assigns every
intermediate (a step output that is not a graph output; graph inputs are the caller's,
constants are the weights', and graph outputs get fresh arrays on every call because
they are returned) to a *slot*. Values whose lifetimes (`Plan.lifetimes`: defining step
to last reading step) do not overlap may share a slot; a slot is as large as its
largest value. Dims may be symbolic, so a slot's size is evaluated per binding at run
time (`Plan.slot_bytes`); the planner decides with a *representative* size, the bytes
under `representative` bindings (default: every symbol = `REPRESENTATIVE_DIM`).

The algorithm is greedy best-fit in execution order: at each step, release the slots
of values last read by an earlier step, then give each new output the smallest free
slot at least as large as it; if none is, grow the largest free slot; if no slot is
free, open a new one.

This is pure data work: it imports only the plan dataclasses (and `kiln.runtime.dims`
through them), never a backend. `memory_report` states what the plan saves.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Mapping

from ..runtime.plan import Plan

REPRESENTATIVE_DIM = 64


@dataclass(frozen=True)
class MemoryReport:
    """Bytes of intermediate storage under one binding of the symbols."""
    bindings: dict[str, int]
    intermediates: int       # values that live in slots
    slots: int
    planned_bytes: int       # sum of slot sizes: what the runtime allocates
    unplanned_bytes: int     # sum of every intermediate's size: one buffer each

    @property
    def saved_bytes(self) -> int:
        return self.unplanned_bytes - self.planned_bytes

    def __str__(self) -> str:
        ratio = self.planned_bytes / self.unplanned_bytes if self.unplanned_bytes else 1.0
        return (f"memory plan: {self.intermediates} intermediates in {self.slots} slots, "
                f"{self.planned_bytes} bytes instead of {self.unplanned_bytes} "
                f"({ratio:.0%}) at {self.bindings}")


def representative_bindings(plan: Plan, given: Mapping[str, int] | None = None) -> dict[str, int]:
    """`given`, plus `REPRESENTATIVE_DIM` for every other bindable symbol."""
    given = dict(given or {})
    return {s: given.get(s, REPRESENTATIVE_DIM) for s in plan.bindable_symbols()} | given


def assign_slots(plan: Plan, representative: Mapping[str, int] | None = None) -> dict[str, int]:
    """Intermediate value -> slot id, by greedy best-fit (see the module docstring)."""
    bindings = representative_bindings(plan, representative)
    live = plan.lifetimes()
    outputs = set(plan.output_names)
    size = {v: plan.values[v].nbytes(bindings) for v in plan.intermediates}
    slot_size: list[int] = []
    free: set[int] = set()
    release_at: dict[int, list[int]] = {}   # step -> slots that become free at its start
    memory: dict[str, int] = {}
    for i, step in enumerate(plan.steps):
        free.update(release_at.pop(i, ()))
        for v in step.outputs:
            if v in outputs:
                continue
            fits = [s for s in free if slot_size[s] >= size[v]]
            if fits:
                slot = min(fits, key=lambda s: (slot_size[s], s))
            elif free:
                slot = max(free, key=lambda s: (slot_size[s], -s))
                slot_size[slot] = size[v]
            else:
                slot = len(slot_size)
                slot_size.append(size[v])
            free.discard(slot)
            memory[v] = slot
            release_at.setdefault(live[v][1] + 1, []).append(slot)
    return memory


def plan_memory(plan: Plan, representative: Mapping[str, int] | None = None) -> Plan:
    """The plan with its `memory` filled by `assign_slots` (and validated)."""
    return dataclasses.replace(plan, memory=assign_slots(plan, representative)).validate()


def memory_report(plan: Plan, bindings: Mapping[str, int]) -> MemoryReport:
    """What `plan.memory` allocates under `bindings`, against one buffer per value."""
    bindings = dict(bindings)
    return MemoryReport(bindings, len(plan.memory), plan.num_slots,
                        sum(plan.slot_bytes(bindings)),
                        sum(plan.values[v].nbytes(bindings) for v in plan.memory))
