"""The execution plan (kiln.runtime.plan): exact JSON round-trip, field-by-field
refusal of malformed JSON, and the checks that make a plan runnable."""
from __future__ import annotations

import copy
import dataclasses
import json

import pytest

from kiln.errors import ArtifactError
from kiln.runtime.plan import (FORMAT_VERSION, Plan, Port, Signature, Step, TensorSpec,
                               Workspace)
from tests.runtime.kernels import chain_plan, f32


def test_json_round_trip_is_exact():
    plan = chain_plan()
    text = json.dumps(plan.to_json())
    back = Plan.from_json(json.loads(text))
    assert back == plan
    assert json.dumps(back.to_json()) == text
    assert back.signature.inputs[0] == Port("x", "f32", ("batch", 4))
    assert back.values["out"].shape == ("2*batch", 4)
    assert isinstance(back.steps, tuple) and isinstance(back.steps[0].inputs, tuple)


def test_round_trip_keeps_every_dtype_dim_kind_and_source():
    values = {"a": TensorSpec("bf16", ("n", "floor((n - 1)/2) + 1")), "k": TensorSpec("i64", ()),
              "b": TensorSpec("bool", ("n", 0)), "q": TensorSpec("i4", (3, 8))}
    plan = Plan(Signature([Port("a", "bf16", values["a"].shape)],
                          [Port("b", "bool", ("n", 0)), Port("q", "i4", (3, 8))]),
                values, {"k": "count", "q": "packed.weight"},
                [Step("k1", ["a", "k"], ["b"], 'loc("model.py:3") "quoted"',
                      Workspace(12_800, 512, 1))], name="odd")
    assert Plan.from_json(json.loads(json.dumps(plan.to_json()))) == plan


def test_signature_prints_with_symbolic_dims():
    assert str(chain_plan().signature).startswith("(x: f32[batch, 4], y: f32[batch, 4]) -> "
                                                  "(out: f32[2*batch, 4], ")


def _mutated(edit):
    data = copy.deepcopy(chain_plan().to_json())
    edit(data)
    return data


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.update(format_version=FORMAT_VERSION + 1),
     f"format version {FORMAT_VERSION + 1}, newer than this kiln reads"),
    (lambda d: d.update(format_version="1"), "plan.format_version: expected an integer"),
    (lambda d: d.pop("steps"), r"plan: missing field\(s\) \['steps'\]"),
    (lambda d: d.update(colour="red"), r"plan: unknown field\(s\) \['colour'\]"),
    (lambda d: d["steps"][2].update(kernel=7), r"plan.steps\[2\].kernel: expected a string"),
    (lambda d: d["steps"][1]["inputs"].__setitem__(0, None),
     r"plan.steps\[1\].inputs\[0\]: expected a string"),
    (lambda d: d["values"]["t0"]["shape"].append(1.5),
     r"plan.values\['t0'\].shape\[2\]: expected an int or a dim expression"),
    (lambda d: d["signature"]["inputs"][0].pop("dtype"),
     r"plan.signature.inputs\[0\]: missing field"),
    (lambda d: d["memory"].update(t0=True), r"plan.memory\['t0'\]: expected an integer"),
    (lambda d: d.update(steps={}), "plan.steps: expected a list"),
    (lambda d: d["steps"][0].pop("workspace"),
     r"plan.steps\[0\]: missing field\(s\) \['workspace'\]"),
    (lambda d: d["steps"][0]["workspace"].update(shared=-1),
     r"plan.steps\[0\].workspace.shared: expected a count"),
    (lambda d: d["steps"][1]["workspace"].update(per_thread=2.0),
     r"plan.steps\[1\].workspace.per_thread: expected an integer"),
])
def test_malformed_json_names_the_field(edit, message):
    with pytest.raises(ArtifactError, match=message):
        Plan.from_json(_mutated(edit))


def _replace_step(plan: Plan, i: int, **changes) -> Plan:
    steps = list(plan.steps)
    steps[i] = dataclasses.replace(steps[i], **changes)
    return dataclasses.replace(plan, steps=tuple(steps))


@pytest.mark.parametrize("make, message", [
    (lambda p: _replace_step(p, 1, inputs=("t2", "bias")),
     r"step 1 \(kernel 'add_bias'\) reads %t2 before anything defines it"),
    (lambda p: _replace_step(p, 2, outputs=("t0",)), r"step 2 \(kernel 'relu'\) redefines %t0"),
    (lambda p: _replace_step(p, 0, kernel=""), "step 0 names no kernel"),
    (lambda p: dataclasses.replace(p, values={**p.values, "t0": TensorSpec("f8", ("batch",))}),
     "%t0 has unknown dtype 'f8'"),
    (lambda p: dataclasses.replace(p, values={**p.values, "t0": f32("batch", "x[0]")}),
     "%t0 has a bad dim: not a dim expression"),
    (lambda p: dataclasses.replace(p, values={**p.values, "t0": f32("batch", "k")}),
     "symbol 'k' in the shape of %t0 is not the whole dim of any input"),
    (lambda p: dataclasses.replace(p, values={**p.values, "x": f32("batch", 5)}),
     r"signature input x: f32\[batch, 4\] disagrees with values"),
    (lambda p: dataclasses.replace(p, values={**p.values, "ghost": f32(1)}),
     "values lists %ghost, which no input, constant, step or alias defines"),
    (lambda p: dataclasses.replace(p, constants={"x": "w"}),
     "%x is both a graph input and a constant"),
    (lambda p: dataclasses.replace(p, values={**p.values, "bias": f32("batch")},
                                   signature=Signature(p.signature.inputs,
                                                       p.signature.outputs[:3])),
     r"constant %bias has a symbolic shape f32\[batch\]"),
    (lambda p: dataclasses.replace(p, memory={k: v for k, v in p.memory.items() if k != "t2"}),
     "intermediate %t2 has no memory slot"),
    (lambda p: dataclasses.replace(p, memory={**p.memory, "out": 0}),
     r"gives a slot to \['out'\], which are not intermediates"),
    (lambda p: dataclasses.replace(p, memory={**p.memory, "t3": -1}), "has slot -1"),
    (lambda p: dataclasses.replace(p, memory={"t0": 0, "t2": 1, "t3": 1}),
     r"%t2 \(live until step 3\) and %t3 \(steps 3..4\) share slot 1"),
])
def test_validate_names_the_fault(make, message):
    with pytest.raises(ArtifactError, match=message) as info:
        make(chain_plan()).validate()
    assert "invalid plan 'chain'" in str(info.value)


def test_shared_slot_with_a_long_lived_value_is_refused():
    # t0 lives over steps 0..3 (read by the last step); t1 and t2 are short-lived.
    # The first and the third value overlap although the middle one does not overlap either.
    values = {"x": f32(2), "t0": f32(2), "t1": f32(2), "t2": f32(2), "o": f32(2)}
    plan = Plan(Signature([Port("x", "f32", (2,))], [Port("o", "f32", (2,))]), values, {},
                [Step("k", ["x"], ["t0"]), Step("k", ["x"], ["t1"]), Step("k", ["t1"], ["t2"]),
                 Step("k", ["t0", "t2"], ["o"])], {"t0": 0, "t1": 1, "t2": 0})
    with pytest.raises(ArtifactError, match=r"%t0 \(live until step 3\) and %t2"):
        plan.validate()


def test_lifetimes():
    assert chain_plan().lifetimes() == {"t0": (0, 1), "t1": (1, 2), "t2": (2, 3),
                                        "t3": (3, 4), "out": (4, 4)}


def test_a_packed_last_axis_does_not_bind_its_symbol():
    plan = Plan(Signature([Port("w", "i4", ("k",))], [Port("w", "i4", ("k",))]),
                {"w": TensorSpec("i4", ("k",))}, {}, [])
    with pytest.raises(ArtifactError, match="symbol 'k' in the shape of %w"):
        plan.validate()
