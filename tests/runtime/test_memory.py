"""The memory planner (kiln.passes.memory): intermediates share a slot exactly when
their lifetimes allow it, slots are sized per binding, and the plan saves memory; the
report adds the kernels' workspace as TVM's per-thread pools hold it."""
from __future__ import annotations

import dataclasses

from hypothesis import given
from hypothesis import strategies as st

from kiln.passes.memory import assign_slots, memory_report, plan_memory
from kiln.runtime.plan import Plan, Port, Signature, Step, TensorSpec, Workspace
from tests.runtime.kernels import chain_plan, f32


def make_plan(steps: list[tuple[list[str], list[str]]], outputs: list[str],
              specs: dict[str, TensorSpec] | None = None) -> Plan:
    """Steps over one input %x: f32[n, 8]; every value f32[n, 8] unless `specs` says."""
    specs = specs or {}
    values = {"x": f32("n", 8)}
    for _, outs in steps:
        for v in outs:
            values[v] = specs.get(v, f32("n", 8))
    return Plan(Signature([Port("x", "f32", ("n", 8))],
                          [Port(v, values[v].dtype, values[v].shape) for v in outputs]),
                values, {}, [Step(f"k{i}", ins, outs) for i, (ins, outs) in enumerate(steps)])


def test_the_report_adds_the_largest_workspaces_held_per_thread():
    plan = plan_memory(make_plan([(["x"], ["t0"]), (["t0"], ["t1"]), (["t1"], ["out"])],
                                 ["out"]))
    scratch = [Workspace(1000, 10), Workspace(500, 40), Workspace(0, 0, symbolic=1)]
    plan = dataclasses.replace(plan, steps=[dataclasses.replace(s, workspace=w)
                                            for s, w in zip(plan.steps, scratch)])
    report = memory_report(plan, {"n": 2}, threads=3)
    # the largest shared (step 0) plus three threads' largest per-thread (step 1)
    assert report.workspace_bytes == 1000 + 3 * 40
    assert report.peak_bytes == report.planned_bytes + 1120
    assert report.symbolic_workspaces == 1
    assert "1 kernel(s) with symbol-sized workspace not counted" in str(report)
    assert memory_report(plan, {"n": 2}, threads=1).workspace_bytes == 1040


def test_a_chain_reuses_two_slots():
    names = [f"t{i}" for i in range(6)]
    steps = [(["x"], ["t0"])] + [([a], [b]) for a, b in zip(names, names[1:])] + \
        [(["t5"], ["out"])]
    plan = plan_memory(make_plan(steps, ["out"]))
    assert plan.memory == {"t0": 0, "t1": 1, "t2": 0, "t3": 1, "t4": 0, "t5": 1}
    report = memory_report(plan, {"n": 10}, threads=2)
    assert (report.slots, report.intermediates) == (2, 6)
    assert report.planned_bytes == 2 * 10 * 8 * 4 < report.unplanned_bytes == 6 * 10 * 8 * 4
    assert report.live_peak_bytes == 2 * 10 * 8 * 4
    assert str(report) == ("memory plan: 6 intermediates in 2 slots (0 in place, 0 views), "
                           "640 bytes vs 1,920 one buffer each (33%; at least 640 live at "
                           "once); kernel workspace 0 bytes on 2 thread(s); peak 640 bytes at "
                           "{'n': 10}")


def test_values_live_at_once_never_share():
    # every t_i is read by the last step: all live together
    steps = [(["x"], [f"t{i}"]) for i in range(4)] + [([f"t{i}" for i in range(4)], ["out"])]
    assert sorted(assign_slots(make_plan(steps, ["out"]))[0].values()) == [0, 1, 2, 3]


def test_a_steps_inputs_and_outputs_do_not_share():
    # t0 dies at step 1, which defines t1: they are live together at step 1
    plan = plan_memory(make_plan([(["x"], ["t0"]), (["t0"], ["t1"]), (["t1"], ["out"])],
                                 ["out"]))
    assert plan.memory["t0"] != plan.memory["t1"]


def test_outputs_inputs_and_constants_get_no_slot():
    plan = chain_plan()
    assert set(plan.memory) == {"t0", "t2", "t3"}     # t1 and out are graph outputs


def test_an_unread_value_is_freed_after_its_step():
    steps = [(["x"], ["dead", "t0"]), (["t0"], ["t1"]), (["t1"], ["out"])]
    plan = plan_memory(make_plan(steps, ["out"]))
    assert plan.memory["t1"] == plan.memory["dead"]


def test_best_fit_takes_the_smallest_free_slot_that_fits():
    # big (n*64) and small (n*8) die together; mid (n*4) may join either: it joins the
    # smaller
    specs = {"big": f32("n", 64), "small": f32("n", 8), "mid": f32("n", 4)}
    steps = [(["x"], ["big", "small"]), (["big", "small"], ["t"]), (["t"], ["mid"]),
             (["mid"], ["out"])]
    plan = plan_memory(make_plan(steps, ["out"], specs))
    assert plan.memory["mid"] == plan.memory["small"] != plan.memory["big"]


def test_the_largest_value_places_first_and_sizes_its_slot():
    # huge (n*100) takes slot 0 first; t (n*8) meets it; b (n*4) joins huge's slot (they
    # never meet); a (n*2) meets both b and t: a third slot
    specs = {"a": f32("n", 2), "b": f32("n", 4), "huge": f32("n", 100)}
    steps = [(["x"], ["a"]), (["x"], ["b"]), (["a", "b"], ["t"]), (["t"], ["huge"]),
             (["huge"], ["out"])]
    plan = plan_memory(make_plan(steps, ["out"], specs))
    assert plan.memory["huge"] == plan.memory["b"] and plan.num_slots == 3
    assert plan.slot_bytes({"n": 2})[plan.memory["b"]] == 2 * 100 * 4


def test_slot_sizes_follow_the_binding():
    specs = {"a": f32("n", 8), "b": f32(100, 8), "c": f32("n*n", 8)}
    steps = [(["x"], ["a"]), (["a"], ["b"]), (["b"], ["c"]), (["c"], ["out"])]
    plan = plan_memory(make_plan(steps, ["out"], specs))
    assert plan.memory["a"] == plan.memory["c"]
    # one slot holds a and c: its size is the larger of them under each binding
    slot = plan.memory["a"]
    assert plan.slot_bytes({"n": 5})[slot] == 25 * 8 * 4
    assert plan.slot_bytes({"n": 1})[slot] == 8 * 4


# --- by construction: random DAGs ---------------------------------------------------------
@st.composite
def random_dags(draw):
    """Steps reading any earlier values; a random subset of values are graph outputs."""
    steps, available = [], ["x"]
    for i in range(draw(st.integers(1, 12))):
        ins = draw(st.lists(st.sampled_from(available), min_size=1, max_size=3, unique=True))
        outs = [f"v{i}_{j}" for j in range(draw(st.integers(1, 2)))]
        steps.append((ins, outs))
        available += outs
    made = available[1:]
    outputs = draw(st.lists(st.sampled_from(made), min_size=1, max_size=3, unique=True))
    rows = {v: draw(st.sampled_from([1, 3, "n", "2*n"])) for v in made}
    return make_plan(steps, outputs, {v: f32(r, 8) for v, r in rows.items()})


def _live_steps(plan: Plan) -> dict[str, set[int]]:
    """Independent of Plan.lifetimes: the set of steps during which a value exists."""
    defined = {v: i for i, s in enumerate(plan.steps) for v in s.outputs}
    last = dict(defined)
    for i, s in enumerate(plan.steps):
        for v in s.inputs:
            if v in last:
                last[v] = i
    return {v: set(range(defined[v], last[v] + 1)) for v in defined}


@given(random_dags())
def test_no_two_live_values_share_a_slot(plan):
    memory, _ = assign_slots(plan)
    live = _live_steps(plan)
    made = [v for s in plan.steps for v in s.outputs]
    assert set(memory) == {v for v in made if v not in plan.output_names}
    for a in memory:
        for b in memory:
            if a < b and memory[a] == memory[b]:
                assert not live[a] & live[b], (a, b)
    plan_memory(plan)  # and the runtime's own check accepts it


@given(random_dags())
def test_a_value_opens_a_new_slot_only_when_every_slot_is_busy(plan):
    memory, _ = assign_slots(plan)
    live = _live_steps(plan)
    members: dict[int, list[str]] = {}
    for v, slot in memory.items():
        members.setdefault(slot, []).append(v)
    # the value that opened slot k met a value in every older slot (largest first, so
    # it is one of slot k's largest values, with those of k > 0 no larger than slot 0's)
    bindings = {"n": 64}
    size = {v: plan.values[v].nbytes(bindings) for v in memory}
    for slot in sorted(members)[1:]:
        largest = max(size[v] for v in members[slot])
        assert largest <= max(size[v] for v in members[slot - 1])
        assert any(all(any(live[v] & live[w] for w in members[older]) for older in range(slot))
                   for v in members[slot] if size[v] == largest), slot


@st.composite
def random_dags_with_candidates(draw):
    """A random DAG, and for each output a random subset of its step's inputs that its
    op could overwrite."""
    plan = draw(random_dags())
    candidates = {v: tuple(draw(st.lists(st.sampled_from(step.inputs), unique=True)))
                  for step in plan.steps for v in step.outputs}
    return plan, candidates


@given(random_dags_with_candidates())
def test_in_place_values_share_only_at_the_overwriting_step(case):
    plan, candidates = case
    memory, inplace = assign_slots(plan, candidates=candidates)
    live = _live_steps(plan)
    for out, source in inplace.items():
        assert source in candidates[out] and source in memory
        assert max(live[source]) == min(live[out])            # the source dies where out is made
        assert plan.values[source] == plan.values[out]
    for a in memory:
        for b in memory:
            if a < b and memory[a] == memory[b] and live[a] & live[b]:
                first, second = sorted((a, b), key=lambda v: min(live[v]))
                assert inplace.get(second) == first, (a, b)
                assert live[a] & live[b] == {min(live[second])}
    planned = plan_memory(plan, candidates=candidates)       # the validator accepts it
    assert planned.num_slots <= plan_memory(plan).num_slots
