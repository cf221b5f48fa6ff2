"""Kernel workspace (codegen/tvm/workspace.py): the scratch a TVM kernel allocates is
read from the kernel as TVM lowers it — a conv's padded input copy at the root (shared,
its exact size), the register tile's accumulators inside the parallel loop (per
thread), a symbol-sized copy (counted, not summed), nothing for a kernel that needs
none — and reaches the plan's steps, the artifact and the memory report."""
from __future__ import annotations

import numpy as np
import pytest

from typer.testing import CliRunner

import kiln
from kiln.cli import app
from kiln.codegen.tvm import cpu_target, lower_node
from kiln.codegen.tvm.tuning import Knobs, forcing, workload_key
from kiln.codegen.tvm.workspace import compile_module
from kiln.ir import GraphBuilder, Node, tensor
from kiln.passes.memory import memory_report
from kiln.runtime.plan import Workspace

RNG = np.random.default_rng(0)
F32 = 4


def conv_nchwc(batch, c: int, hw: int, o: int, k: int, pad: int) -> Node:
    """A blocked conv node (16-channel blocks) with a constant weight and bias."""
    b = GraphBuilder("g")
    x = b.input("x", tensor("f32", batch, c // 16, hw, hw, 16))
    w = b.constant("w", RNG.standard_normal((o // 16, c // 16, k, k, 16, 16)).astype(np.float32))
    bias = b.constant("b", RNG.standard_normal((o // 16, 16)).astype(np.float32))
    y = b.op("conv_nchwc", x, w, bias, strides=[1, 1], pads=[pad] * 4, dilations=[1, 1])
    b.build(y)
    return y.producer


def workspace(node: Node, knobs: Knobs = Knobs()) -> Workspace:
    with forcing(workload_key(node), knobs):
        func = lower_node(node, "main")
    return compile_module(func, "main", cpu_target())[1]


def test_a_padded_conv_copies_its_input_at_the_root_and_tiles_per_thread():
    node = conv_nchwc(1, 32, 8, 32, 3, pad=1)
    got = workspace(node, Knobs(rw=4, ot=2))
    assert got.shared == 1 * 2 * 10 * 10 * 16 * F32       # the padded copy, 10 x 10
    assert got.per_thread == 4 * 2 * 16 * F32               # the accumulators: rw x ot blocks
    assert got.symbolic == 0
    # a larger register tile is a larger per-thread buffer; the padded copy is the same
    wider = workspace(node, Knobs(rw=8, ot=2))
    assert (wider.shared, wider.per_thread) == (got.shared, 8 * 2 * 16 * F32)


def test_an_unpadded_conv_has_no_shared_workspace():
    got = workspace(conv_nchwc(1, 32, 8, 32, 1, pad=0), Knobs(rw=4, ot=2))
    assert got == Workspace(0, 4 * 2 * 16 * F32, 0)


def test_a_symbol_sized_copy_is_counted_not_summed():
    got = workspace(conv_nchwc("n", 32, 8, 32, 3, pad=1), Knobs(rw=4, ot=2))
    assert got.symbolic == 1 and got.shared == 0


def test_an_elementwise_kernel_has_none():
    b = GraphBuilder("g")
    y = b.relu(b.input("x", tensor("f32", 64, 256)))
    b.build(y)
    assert workspace(y.producer) == Workspace()


@pytest.fixture(scope="module")
def padded_conv_model():
    """A conv + relu in NCHW, compiled with the default pipeline (blocked, fused)."""
    b = GraphBuilder("g")
    x = b.input("x", tensor("f32", 1, 32, 9, 9))
    w = b.constant("w", RNG.standard_normal((32, 32, 5, 5)).astype(np.float32))
    graph = b.build(b.relu(b.conv(x, w, strides=[1, 1], pads=[2, 2, 2, 2],
                                  dilations=[1, 1], groups=1)))
    return kiln.compile(graph, cache_dir="off")


def test_steps_carry_the_workspace_into_the_memory_report(padded_conv_model):
    compiled = padded_conv_model
    conv = [s for s in compiled.plan.steps if "conv_nchwc" in s.source]
    assert len(conv) == 1
    assert conv[0].workspace.shared == 1 * 2 * 13 * 13 * 16 * F32   # 9 + 2 * 2 pad
    per_thread = max(s.workspace.per_thread for s in compiled.plan.steps)
    report = memory_report(compiled.plan, {}, threads=3)
    assert report.workspace_bytes == conv[0].workspace.shared + 3 * per_thread
    assert report.peak_bytes == report.planned_bytes + report.workspace_bytes
    assert "kernel workspace" in str(report) and "on 3 thread(s)" in str(report)


def test_the_artifact_keeps_the_workspace(padded_conv_model, tmp_path):
    compiled = padded_conv_model
    artifact = compiled.save(tmp_path / "conv.kiln")
    loaded = kiln.load(artifact)
    assert [s.workspace for s in loaded.executor.plan.steps] == \
        [s.workspace for s in compiled.plan.steps]
    assert any(s.workspace.shared for s in loaded.executor.plan.steps)
    shown = CliRunner().invoke(app, ["inspect", str(artifact)])
    assert shown.exit_code == 0, shown.output
    assert "workspace 21,632 B + " in shown.output      # the conv's kernel line: 2*13*13*16*4
