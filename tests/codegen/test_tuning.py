"""The tuning database (codegen/tvm/tuning.py) and the tuner (tune.py):

- every candidate the tuner may choose computes what the interpreter does (convs on
  both GEMMs, linears, with each tile height, conv_nchwc with each register tile);
- the knobs reach the kernel: a conv's strategy picks the GEMM, `mr` the tile,
  conv_nchwc's `rw` x `ot` its register tile (tails included);
- lookups by workload (value names aside), the kernel cache key naming the knobs,
  the file's round trip and its errors (damaged, another CPU);
- `tune_graph` measures every candidate and records a winner; `kiln tune` writes
  the database; the checked-in database loads and names only valid knobs;
- `tune_in_model` swaps each candidate's kernels into a compiled model's steps, runs
  the whole sequence, times only those steps and records the fastest (a real model,
  and fake kernels whose speeds are known).
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from kiln.codegen.tvm import lower_node, tuning
from kiln.codegen.tvm.cache import kernel_key
from kiln.codegen.tvm import tune as tune_module
from kiln.codegen.tvm.tune import (Tuned, candidates, tune_graph, tune_in_model,
                                   tunable_workloads)
from kiln.codegen.tvm.tuning import Knobs, Record, TuningDatabase, forcing, workload_key
from kiln.errors import CodegenError
from kiln.ir import GraphBuilder, interpret, tensor
from kiln.passes.pack import PackWeights

from .test_conv_nchwc import conv_graph as nchwc_conv
from .test_gemm_packed import randn, run_last_node


def conv_graph(c=8, hw=10, o=24, k=3, stride=1, name="x"):
    b = GraphBuilder("g")
    x = b.input(name, tensor("f32", 1, c, hw, hw))
    y = b.conv(x, b.constant("w", randn(o, c, k, k)), b.constant("b", randn(o)),
               strides=[stride, stride], pads=[k // 2] * 4, dilations=[1, 1], groups=1)
    graph = b.build(y)
    PackWeights().run(graph)
    return graph


def linear_graph(m=13, k=40, n=72, name="x"):
    b = GraphBuilder("g")
    x = b.input(name, tensor("f32", m, k))
    graph = b.build(b.linear(x, b.constant("w", randn(n, k)), b.constant("b", randn(n))))
    PackWeights().run(graph)
    return graph


def nchwc_graph():
    """One 3x3 conv_nchwc, 32 -> 48 channels in blocks of 16, on a blocked 9x9 input."""
    b, y, _ = nchwc_conv((1, 32, 9, 9), 48, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 16, 16,
                         bias=True)
    return b.build(y)


@pytest.fixture
def empty_db(tmp_path, monkeypatch):
    path = tmp_path / "db.json"
    monkeypatch.setenv(tuning.DB_ENV, str(path))
    return path


@pytest.mark.parametrize("make, reduce", [
    (lambda: conv_graph(), 8 * 9),
    (lambda: conv_graph(c=6, hw=9, o=70, k=3, stride=2), 6 * 9),
    (lambda: conv_graph(c=16, hw=7, o=32, k=1), 16),
    (lambda: linear_graph(), 40),
    (lambda: nchwc_graph(), 32 * 9),        # width 9: tiles of 4, 6, 7 and 8 have tails
])
def test_every_candidate_computes_the_reference(make, reduce, empty_db):
    graph = make()
    x = randn(*graph.inputs[0].type.shape)
    want = interpret(graph, [x])[0]
    node = graph.nodes[-1]
    knobs = candidates(node)
    # conv_nchwc: 3 channel blocks, width 9: (4..8 columns) x (2, 3 blocks) and 8 x 1
    assert len(knobs) == {"conv_packed": 7, "conv_nchwc": 10}.get(node.op, 4)
    for k in knobs:
        with forcing(workload_key(node), k):
            got = run_last_node(graph, [x])
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * math.sqrt(reduce),
                                   err_msg=str(k))


def test_the_knobs_reach_the_kernel(empty_db):
    node = conv_graph(hw=10).nodes[-1]       # 100 positions: the heuristics take rows
    scripts = {}
    for k in [Knobs(), Knobs("rows", 4), Knobs("columns", 5)]:
        with forcing(workload_key(node), k):
            scripts[str(k)] = lower_node(node, "main").script()
    assert "conv_pack_x" not in scripts["heuristics"]            # the rows GEMM
    assert "conv_pack_x" not in scripts["strategy=rows, mr=4"]
    assert '"mr": 4' in scripts["strategy=rows, mr=4"]
    assert "conv_pack_x" in scripts["strategy=columns, mr=5"]    # the columns GEMM
    assert '"mr": 5' in scripts["strategy=columns, mr=5"]
    node = nchwc_graph().nodes[-1]
    with forcing(workload_key(node), Knobs(rw=7, ot=3)):
        script = lower_node(node, "main").script()
    assert '"rw": 7' in script and '"ot": 3' in script


def test_the_database_decides_and_the_cache_key_says_so(empty_db):
    a, b = linear_graph(name="x"), linear_graph(name="renamed")
    node_a, node_b = a.nodes[-1], b.nodes[-1]
    assert workload_key(node_a) == workload_key(node_b)        # value names aside
    plain = kernel_key(node_a)
    assert tuning.knobs_for(node_a) == Knobs() and "tuned" not in plain
    db = TuningDatabase(tuning.host_cpu(), {workload_key(node_a): Record(Knobs(mr=5))})
    db.save(empty_db)
    assert tuning.knobs_for(node_b) == Knobs(mr=5)
    assert kernel_key(node_b) != plain and "tuned[linear_packed: mr=5]" in kernel_key(node_b)
    assert '"mr": 5' in lower_node(node_b, "main").script()


def test_the_database_round_trips_and_refuses_bad_files(tmp_path):
    path = tmp_path / "db.json"
    db = TuningDatabase("somecpu", {"k1": Record(Knobs("rows", 6), {"heuristics": 1.5}),
                                    "k0": Record(Knobs())})
    db.save(path)
    back = TuningDatabase.load(path, "somecpu")
    assert back.records == db.records and list(json.loads(path.read_text())["workloads"]) == \
        ["k0", "k1"]
    with pytest.raises(CodegenError, match="measured on 'somecpu'"):
        TuningDatabase.load(path, "othercpu")
    path.write_text('{"format": 1, "cpu": "somecpu", "workloads": {"k": {"knobs": '
                    '{"strategy": "diagonal"}}}}')
    with pytest.raises(CodegenError, match="damaged.*strategy='diagonal'"):
        TuningDatabase.load(path, "somecpu")
    path.write_text("{not json")
    with pytest.raises(CodegenError, match="damaged"):
        TuningDatabase.load(path, "somecpu")
    assert TuningDatabase.load(tmp_path / "absent.json", "somecpu").records == {}
    with pytest.raises(CodegenError, match="mr=0"):
        Knobs(mr=0)
    with pytest.raises(CodegenError, match="give both or neither"):
        Knobs(rw=4)


def test_tune_graph_measures_every_candidate(empty_db):
    graph = conv_graph(c=8, hw=8, o=16)
    db = TuningDatabase(tuning.host_cpu())
    lines: list[str] = []
    results = tune_graph(graph, db, rounds=2, budget=0.002, log=lines.append)
    (node,) = tunable_workloads(graph).values()
    (tuned,) = results
    assert set(tuned.measured) == {str(k) for k in candidates(node)}
    assert all(v > 0 for v in tuned.measured.values())
    assert tuned.chosen in candidates(node) and tuned.gain >= 1.0
    assert db.records[workload_key(node)].knobs == tuned.chosen and len(lines) == 1
    assert tune_graph(graph, db, rounds=1, budget=0.001) == []   # already tuned: skipped


def compiled_steps(graph):
    """A graph compiled with kiln's pipeline, its steps as `tune_in_model` takes them."""
    import kiln
    x = randn(*graph.inputs[0].type.shape)
    compiled = kiln.compile(graph, cache_dir="off")
    executor = compiled._executor
    producer = {v.name: n for n in compiled.graph.nodes for v in n.outputs}
    steps = [(producer[step.outputs[0]], kernel, args)
             for step, kernel, args in executor.step_arguments(executor.prepare(x))]
    return compiled, x, steps


def test_tune_in_model_records_each_workload_of_a_compiled_model(empty_db):
    compiled, x, steps = compiled_steps(conv_graph(c=16, hw=8, o=32))
    expected = compiled(x)[0]
    db = TuningDatabase(tuning.host_cpu())
    db.records["stale"] = Record(Knobs(rw=4, ot=1))
    lines: list[str] = []
    results = tune_in_model(compiled.graph, steps, db, rounds=2, log=lines.append)
    keys = set(tunable_workloads(compiled.graph))
    assert keys and {t.key for t in results} == keys and len(lines) == len(keys)
    for tuned in results:
        node = tunable_workloads(compiled.graph)[tuned.key]
        assert set(tuned.measured) == {str(k) for k in candidates(node)}
        assert db.records[tuned.key].knobs == tuned.chosen
    assert "stale" in db.records
    np.testing.assert_array_equal(compiled(x)[0], expected)   # the model's kernels stay


def conv_softmax_graph():
    """A 1x1 conv (blocked: conv_nchwc), then a softmax: several kernels."""
    b = GraphBuilder("g")
    x = b.input("x", tensor("f32", 1, 16, 8, 8))
    y = b.conv(x, b.constant("w", randn(32, 16, 1, 1)), strides=[1, 1], pads=[0] * 4,
               dilations=[1, 1], groups=1)
    return b.build(b.softmax(y, axis=-1))


def test_tune_in_model_times_the_swapped_steps_and_picks_the_fastest(empty_db, monkeypatch):
    compiled, x, steps = compiled_steps(conv_softmax_graph())
    (key, node), = tunable_workloads(compiled.graph).items()
    (where,) = [i for i, (n, _, _) in enumerate(steps) if key in tune_module._workloads(n)]
    knobs = candidates(node)
    assert node.op == "conv_nchwc" and len(knobs) > 3
    cost = {str(k): 2.0 for k in knobs}     # seconds on a fake clock that only kernels move
    cost[str(knobs[0])] = 1.5               # the heuristics
    cost[str(knobs[-1])] = 0.5              # the fastest candidate
    cost[str(knobs[1])] = 1.45              # faster than the heuristics by under MIN_GAIN
    clock = {"now": 0.0, "model": 0}

    class FakeTime:
        @staticmethod
        def perf_counter() -> float:
            return clock["now"]

    def fake_kernel(n, k, kn):
        return lambda *args: clock.__setitem__("now", clock["now"] + cost[str(kn)])

    def model_kernel(*args):
        clock["model"] += 1
    monkeypatch.setattr(tune_module, "_kernel", fake_kernel)
    monkeypatch.setattr(tune_module, "time", FakeTime)
    def other_step(kernel):     # the steps around it take time too, never counted
        return lambda *args: (kernel(*args), clock.__setitem__("now", clock["now"] + 100.0))
    counted = [(n, model_kernel if i == where else other_step(kernel), args)
               for i, (n, kernel, args) in enumerate(steps)]
    assert len(counted) > 1
    db = TuningDatabase(tuning.host_cpu())
    (tuned,) = tune_in_model(compiled.graph, counted, db, rounds=3)
    assert clock["model"] == 0                      # the swapped step never runs its own
    assert tuned.seconds == pytest.approx(cost)     # only the swapped steps were timed
    assert tuned.chosen == knobs[-1] and tuned.gain == pytest.approx(3.0)
    assert db.records[key].knobs == knobs[-1]

    cost[str(knobs[-1])] = 1.45                     # nothing beats it by MIN_GAIN
    (tuned,) = tune_in_model(compiled.graph, counted, db, rounds=3)
    assert tuned.chosen == Knobs() and db.records[key].knobs == Knobs()


def test_tuned_figures_of_a_slow_call_stay_positive():
    # CI once timed a 0.15 MFLOP conv at >3 ms per call (a busy machine): rounded to
    # 0.1 GFLOP/s its figure was 0.0 and the gain divided by zero
    tuned = Tuned("k", flops=147456.0, chosen=Knobs("columns", 6),
                  seconds={str(Knobs()): 4e-3, str(Knobs("columns", 6)): 2e-3})
    assert tuned.gain == pytest.approx(2.0)
    assert tuned.measured == {str(Knobs()): 0.0369, str(Knobs("columns", 6)): 0.0737}


def test_kiln_tune_writes_the_database(tmp_path):
    model = tmp_path / "model.py"
    model.write_text(textwrap.dedent("""
        import torch
        def make_model():
            torch.manual_seed(0)
            return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU()).eval(), \\
                (torch.randn(8, 16),)
    """))
    db = tmp_path / "tuned.json"
    result = subprocess.run([sys.executable, "-m", "kiln.cli", "tune", str(model), "--db",
                             str(db), "--rounds", "1"], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    data = json.loads(db.read_text())
    (key,) = data["workloads"]
    assert key.startswith("linear_packed(f32[8, 16]") and "wrote" in result.stdout


def test_the_checked_in_database_is_valid():
    files = sorted(tuning.DB_DIR.glob("*.json"))
    assert files, "no tuning database is checked in"
    for path in files:
        cpu = json.loads(path.read_text())["cpu"]
        assert path.stem == cpu
        db = TuningDatabase.load(path, cpu)
        assert db.records and all(str(r.knobs) in r.measured for r in db.records.values())


def test_a_build_looks_up_its_targets_cpu(tmp_path, monkeypatch):
    monkeypatch.delenv(tuning.DB_ENV, raising=False)
    monkeypatch.setattr(tuning, "DB_DIR", tmp_path)
    node = linear_graph().nodes[-1]
    TuningDatabase(tuning.host_cpu(), {workload_key(node): Record(Knobs(mr=5))}).save(
        tmp_path / f"{tuning.host_cpu()}.json")
    assert tuning.knobs_for(node) == Knobs(mr=5)
    with tuning.building_for('{"kind": "llvm", "mcpu": "someothercpu"}'):
        assert tuning.database().cpu == "someothercpu" and tuning.knobs_for(node) == Knobs()
    with tuning.building_for(f'{{"kind": "llvm", "mcpu": "{tuning.host_cpu()}"}}'):
        assert tuning.knobs_for(node) == Knobs(mr=5)
