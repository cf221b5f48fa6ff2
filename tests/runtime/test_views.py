"""Views and in-place steps in the runtime: a view (`Plan.aliases`) runs no kernel and
reads its root's storage; an in-place step writes over an input that dies there. The
results match NumPy, every returned array is the caller's own, and graph inputs and
constants are never written."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from kiln.errors import ArtifactError
from kiln.passes.memory import memory_report, plan_memory
from kiln.runtime.executor import Executor
from kiln.runtime.plan import Plan, Port, Signature, Step
from tests.runtime.kernels import f32

W = np.array([[1.0, -2.0], [3.0, -4.0]], np.float32)


def view_plan() -> Plan:
    """x, y: f32[n, 4]; w: f32[2, 2] (weights key "w").

        xf = view(x) [4n]          r = relu_flat(xf)        r2 = view(r) [n, 4]
        wv = view(w) [4]           t = add_bias(r2, wv)     tf = view(t) [4n]
        tf2 = view(tf) [2n, 2]     u = add(t, y)
        return tf2, u, xf, t, wv
    """
    values = {"x": f32("n", 4), "y": f32("n", 4), "w": f32(2, 2), "xf": f32("4*n"),
              "r": f32("4*n"), "r2": f32("n", 4), "wv": f32(4), "t": f32("n", 4),
              "tf": f32("4*n"), "tf2": f32("2*n", 2), "u": f32("n", 4)}
    aliases = {"xf": "x", "r2": "r", "wv": "w", "tf": "t", "tf2": "tf"}
    steps = [Step("relu_flat", ["xf"], ["r"]), Step("add_bias", ["r2", "wv"], ["t"]),
             Step("add", ["t", "y"], ["u"])]
    outputs = ["tf2", "u", "xf", "t", "wv"]
    sig = Signature([Port("x", "f32", ("n", 4)), Port("y", "f32", ("n", 4))],
                    [Port(v, "f32", values[v].shape) for v in outputs])
    return plan_memory(Plan(sig, values, {"w": "w"}, steps, name="views", aliases=aliases))


def test_views_run_no_kernel_and_read_their_roots(kernels_so):
    plan = view_plan()
    assert [s.kernel for s in plan.steps] == ["relu_flat", "add_bias", "add"]
    assert plan.memory == {"r": 0}                    # t is returned (through tf2): no slot
    assert plan.returned == ["t", "u"]
    ex = Executor(plan, kernels_so, {"w": W})
    for n in (1, 3, 6):
        x = np.random.default_rng(n).standard_normal((n, 4)).astype(np.float32)
        y = np.ones((n, 4), np.float32)
        x0, w0 = x.copy(), W.copy()
        tf2, u, xf, t, wv = ex(x, y)
        expect_t = np.maximum(x, 0) + W.ravel()
        np.testing.assert_array_equal(t, expect_t)
        np.testing.assert_array_equal(tf2, expect_t.reshape(2 * n, 2))
        np.testing.assert_array_equal(u, expect_t + y)
        np.testing.assert_array_equal(xf, x.ravel())
        np.testing.assert_array_equal(wv, W.ravel())
        # every output is the caller's own: no two share memory, nor with x or the weights
        outs = [tf2, u, xf, t, wv]
        for i, a in enumerate(outs):
            assert not np.shares_memory(a, x) and not np.shares_memory(a, ex._constants["w"])
            for b in outs[i + 1:]:
                assert not np.shares_memory(a, b)
        np.testing.assert_array_equal(x, x0)
        np.testing.assert_array_equal(ex._constants["w"], w0)


def test_a_returned_view_of_a_fresh_value_is_not_copied(kernels_so):
    ex = Executor(view_plan(), kernels_so, {"w": W})
    tf2, *_ = ex(np.ones((2, 4), np.float32), np.ones((2, 4), np.float32))
    assert tf2.base is not None and tf2.flags.c_contiguous   # a view of t's fresh array


def test_a_view_of_a_torch_input(kernels_so):
    torch = pytest.importorskip("torch")
    ex = Executor(view_plan(), kernels_so, {"w": W})
    x = torch.arange(8, dtype=torch.float32).reshape(2, 4) - 4
    _, _, xf, t, _ = ex(x, torch.zeros(2, 4))
    np.testing.assert_array_equal(xf, x.numpy().ravel())
    np.testing.assert_array_equal(t, np.maximum(x.numpy(), 0) + W.ravel())


def test_a_view_that_does_not_fit_its_storage_is_refused(kernels_so):
    plan = view_plan()
    bad = dataclasses.replace(plan, values={**plan.values, "r2": f32("n", 2)})
    with pytest.raises(ArtifactError, match=r"view %r2 \[3, 2\] does not fit its storage %r"):
        Executor(bad, kernels_so, {"w": W})(np.ones((3, 4), np.float32),
                                           np.ones((3, 4), np.float32))


# --- in place ---------------------------------------------------------------------------------
def inplace_plan() -> Plan:
    """x, y: f32[n, 4].

        t3 = relu(x); t0 = add(x, y); t1 = relu(t0); t2 = scale2(t1); out = add(t2, t3)
    The compiler's candidates: every same-typed input of an elementwise step."""
    values = {v: f32("n", 4) for v in ("x", "y", "t0", "t1", "t2", "t3", "out")}
    steps = [Step("relu", ["x"], ["t3"]), Step("add", ["x", "y"], ["t0"]),
             Step("relu", ["t0"], ["t1"]), Step("scale2", ["t1"], ["t2"]),
             Step("add", ["t2", "t3"], ["out"])]
    return Plan(Signature([Port("x", "f32", ("n", 4)), Port("y", "f32", ("n", 4))],
                          [Port("out", "f32", ("n", 4))]), values, {}, steps, name="inplace")


CANDIDATES = {"t0": ("x", "y"), "t1": ("t0",), "t2": ("t1",), "t3": ("x",),
              "out": ("t2", "t3")}


def test_the_planner_records_in_place_steps(kernels_so):
    plan = plan_memory(inplace_plan(), candidates=CANDIDATES)
    # t0 cannot overwrite an input; t1 and t2 overwrite their dying inputs; t3 reads x
    # (an input) and out is returned
    assert plan.inplace == {"t1": "t0", "t2": "t1"}
    assert plan.memory["t0"] == plan.memory["t1"] == plan.memory["t2"] != plan.memory["t3"]
    assert plan.num_slots == 2
    without = plan_memory(inplace_plan())
    assert without.inplace == {} and without.num_slots == 3
    assert memory_report(plan, {"n": 8}).planned_bytes == 2 * 8 * 4 * 4
    assert memory_report(without, {"n": 8}).planned_bytes == 3 * 8 * 4 * 4
    ex = Executor(plan, kernels_so, {})
    for n in (1, 5):
        x = np.linspace(-1, 1, 4 * n, dtype=np.float32).reshape(n, 4)
        y = np.full((n, 4), 0.25, np.float32)
        x0, y0 = x.copy(), y.copy()
        (out,) = ex(x, y)
        np.testing.assert_allclose(out, 2 * np.maximum(x + y, 0) + np.maximum(x, 0), rtol=1e-6)
        np.testing.assert_array_equal(x, x0)
        np.testing.assert_array_equal(y, y0)


def test_never_in_place_into_a_constant_or_a_view_of_one():
    values = {"x": f32(2, 4), "c": f32(2, 4), "cv": f32(8), "t": f32(2, 4), "r": f32(8),
              "o": f32(2, 4)}
    plan = Plan(Signature([Port("x", "f32", (2, 4))], [Port("o", "f32", (2, 4))]), values,
                {"c": "c"}, [Step("add", ["x", "c"], ["t"]), Step("relu_flat", ["cv"], ["r"]),
                             Step("add", ["t", "t"], ["o"])], aliases={"cv": "c"})
    planned = plan_memory(plan, candidates={"t": ("x", "c"), "r": ("cv",)})
    assert planned.inplace == {}


def test_in_place_is_refused_when_the_input_lives_on():
    # t0 is read again by the last step: t1 may not overwrite it
    plan = dataclasses.replace(inplace_plan(), steps=(
        Step("add", ["x", "y"], ["t0"]), Step("relu", ["t0"], ["t1"]),
        Step("add", ["t1", "t0"], ["out"])),
        values={v: f32("n", 4) for v in ("x", "y", "t0", "t1", "out")})
    assert plan_memory(plan, candidates={"t1": ("t0",)}).inplace == {}


def test_in_place_through_a_view_of_a_dying_intermediate(kernels_so):
    # r = relu_flat(view(t0)): r may overwrite t0's slot, through the view
    values = {"x": f32("n", 4), "y": f32("n", 4), "t0": f32("n", 4), "t0f": f32("4*n"),
              "r": f32("4*n"), "rv": f32("n", 4), "out": f32("n", 4)}
    plan = Plan(Signature([Port("x", "f32", ("n", 4)), Port("y", "f32", ("n", 4))],
                          [Port("out", "f32", ("n", 4))]), values, {},
                [Step("add", ["x", "y"], ["t0"]), Step("relu_flat", ["t0f"], ["r"]),
                 Step("add", ["rv", "x"], ["out"])], aliases={"t0f": "t0", "rv": "r"})
    plan = plan_memory(plan, candidates={"r": ("t0f",)})
    assert plan.inplace == {"r": "t0f"} and plan.num_slots == 1
    x = np.arange(-4, 4, dtype=np.float32).reshape(2, 4)
    (out,) = Executor(plan, kernels_so, {})(x, x)
    np.testing.assert_array_equal(out, np.maximum(2 * x, 0) + x)


# --- the validator accepts exactly the recorded overlaps ------------------------------------------
def test_a_shared_slot_without_an_in_place_record_is_refused():
    plan = plan_memory(inplace_plan(), candidates=CANDIDATES)
    with pytest.raises(ArtifactError, match=r"%t0 \(live until step 2\) and %t1 \(steps 2..3\) "
                                            r"share slot 1"):
        dataclasses.replace(plan, inplace={"t2": "t1"}).validate()


@pytest.mark.parametrize("inplace, message", [
    ({"t1": "t0", "t2": "t0"}, r"step 3 \(kernel 'scale2'\) writes %t2 in place of %t0, "
                               "which it does not read"),
    ({"t1": "t0", "t2": "t1", "t3": "x"}, r"in place of %x, whose storage %x is a graph input"),
    ({"t1": "t0", "t2": "t1", "out": "t2"}, "in-place output %out is not an intermediate"),
])
def test_a_bad_in_place_record_is_refused(inplace, message):
    plan = plan_memory(inplace_plan(), candidates=CANDIDATES)
    with pytest.raises(ArtifactError, match=message):
        dataclasses.replace(plan, inplace=inplace).validate()


def test_in_place_needs_the_same_shape():
    values = {"x": f32(2, 4), "t": f32(2, 4), "o2": f32(1, 4), "o": f32(1, 4)}
    plan = Plan(Signature([Port("x", "f32", (2, 4))], [Port("o", "f32", (1, 4))]), values, {},
                [Step("k", ["x"], ["t"]), Step("k", ["t"], ["o2"]), Step("k", ["o2"], ["o"])],
                {"t": 0, "o2": 0}, inplace={"o2": "t"})
    with pytest.raises(ArtifactError, match=r"writes %o2 \(f32\[1, 4\]\) in place of %t, but "
                                            r"reads %t \(f32\[2, 4\]\)"):
        plan.validate()


# --- JSON ---------------------------------------------------------------------------------------
def test_json_round_trip_keeps_aliases_and_in_place():
    for plan in (view_plan(), plan_memory(inplace_plan(), candidates=CANDIDATES)):
        text = json.dumps(plan.to_json())
        back = Plan.from_json(json.loads(text))
        assert back == plan and json.dumps(back.to_json()) == text
    assert Plan.from_json(view_plan().to_json()).aliases["tf2"] == "tf"


def test_an_older_format_is_refused():
    data = view_plan().to_json()
    data["format_version"] = 1
    del data["aliases"], data["inplace"]
    with pytest.raises(ArtifactError, match=r"format version 1, older than this kiln reads \(3, "
                                            r".*compile the model again"):
        Plan.from_json(data)


@pytest.mark.parametrize("aliases, message", [
    ({"xf": "ghost"}, "alias %xf views %ghost, which nothing defines"),
    ({"xf": "tf", "tf": "xf"}, "the aliases of %xf form a cycle"),
    ({"xf": "x", "r": "x"}, "%r is an alias of %x but is also an input, constant or step output"),
    ({"xf": "x", "u": "y"}, "%u is an alias of %y but is also"),
    ({"xf": "x", "wv": "w", "r2": "r", "tf": "t", "tf2": "tf", "bad": "w"},
     r"alias %bad \(f32\[3\]\) and its storage %w \(f32\[2, 2\]\) differ in size"),
])
def test_bad_aliases_are_refused(aliases, message):
    plan = view_plan()
    values = {**plan.values, "bad": f32(3)} if "bad" in aliases else plan.values
    with pytest.raises(ArtifactError, match=message):
        dataclasses.replace(plan, aliases=aliases, values=values).validate()


# --- end to end -----------------------------------------------------------------------------
def test_compiled_views_and_in_place_match_the_interpreter():
    import kiln
    from kiln.ir import interpret
    from tests.passes.test_memory_plan import views_graph
    graph = views_graph()
    cm = kiln.compile(graph, passes="plan")     # no canonicalize: it would fold the views
    plan = cm.plan
    assert [s.outputs for s in plan.steps] == [("h",), ("a",), ("s",), ("m",)]
    assert plan.aliases == {"r": "a", "xv": "x", "wv": "w", "wu": "wv", "u": "m", "out": "u"}
    assert plan.inplace == {"a": "h"}
    assert cm.report.kernel_calls == 4
    for batch in (1, 5):
        x = np.random.default_rng(batch).standard_normal((batch, 8)).astype(np.float32)
        x0 = x.copy()
        got = cm(x)
        for g, r in zip(got, interpret(graph, [x])):
            np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(x, x0)
    assert "1 in place, 6 views" in str(cm.memory({"batch": 2}))
