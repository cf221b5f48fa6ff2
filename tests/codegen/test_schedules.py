"""Codegen properties of the default schedules (schedule.py) and the non-contraction
lowerings, read from the machine code: representative kernels of the benchmark
models must load and store contiguous vectors (no AVX-512 gathers or scatters,
which LLVM emits when a vector's indices are not affine, e.g. after TVM scalarizes
a loop) and must not call scalar libm math per element where kiln has a vector form
(fastmath.py; powers by a small constant exponent). Timing is bench/kernels.py's job.
"""
from __future__ import annotations

import re

import pytest
import tvm
from tvm import te

from kiln.codegen.tvm import cpu_target, lower_node
from kiln.ir import GraphBuilder, parse

GATHER_SCATTER = re.compile(r"\bv(p)?(gather|scatter)\w+")
LIBM = frozenset({"expf", "logf", "powf", "tanhf", "erff", "expm1f", "log1pf", "exp", "pow",
                  "tanh", "erf"})


def _node(text: str):
    """The kernel node of `text`: its one node, or its nodes as one fused group."""
    graph = parse(text)
    if len(graph.nodes) == 1:
        return graph.nodes[0]
    b = GraphBuilder("group")
    inputs = [b.input(v.name, v.type) for v in graph.inputs]
    return b.graph.add_node("fused", inputs, {"kind": "reduction"}, body=graph)


def asm(text: str) -> str:
    func = lower_node(_node(text), "k")
    return tvm.compile(tvm.IRModule({"k": func}), target=cpu_target()).mod.inspect_source("asm")


def libm_calls(code: str) -> set[str]:
    return {m for m in re.findall(r"\bcall[q]?\s+\*?([A-Za-z0-9_]+)", code) if m in LIBM}


KERNELS = {
    "elementwise_chain": """graph g(%x: f32[64, 768], %y: f32[64, 768]) {
  %a: f32[64, 768] = add(%x, %y)
  %b: f32[64, 768] = tanh(%a)
  %c: f32[64, 768] = mul(%b, %x)
  %d: f32[64, 768] = exp(%c)
  return %d
}""",
    "broadcast_add": """graph g(%x: f32[1, 128, 768], %b: f32[768]) {
  %a: f32[1, 128, 768] = add(%x, %b)
  return %a
}""",
    "broadcast_rows": """graph g(%x: f32[1, 8, 128, 64], %c: f32[1, 1, 128, 64]) {
  %a: f32[1, 8, 128, 64] = mul(%x, %c)
  return %a
}""",
    "relu": """graph g(%x: f32[128, 768]) {
  %a: f32[128, 768] = relu(%x)
  return %a
}""",
    "maximum": """graph g(%x: f32[128, 768], %y: f32[128, 768]) {
  %a: f32[128, 768] = maximum(%x, %y)
  return %a
}""",
    "softmax": """graph g(%x: f32[1, 12, 128, 128]) {
  %a: f32[1, 12, 128, 128] = softmax(%x) {axis=-1}
  return %a
}""",
    "layer_norm": """graph g(%x: f32[1, 128, 768], %w: f32[768], %b: f32[768]) {
  %a: f32[1, 128, 768] = layer_norm(%x, %w, %b) {axis=2, eps=1e-12}
  return %a
}""",
    "transpose": """graph g(%x: f32[1, 128, 12, 64]) {
  %a: f32[1, 12, 128, 64] = transpose(%x) {perm=[0, 2, 1, 3]}
  return %a
}""",
    "rms_norm_group": """graph g(%x: f32[1, 128, 512], %w: f32[512]) {
  %two: f32[] = full() {shape=[], value=2.0}
  %sq: f32[1, 128, 512] = pow(%x, %two)
  %ms: f32[1, 128, 1] = mean(%sq) {axes=[-1], keepdims=true}
  %eps: f32[] = full() {shape=[], value=1e-06}
  %a: f32[1, 128, 1] = add(%ms, %eps)
  %r: f32[1, 128, 1] = rsqrt(%a)
  %n: f32[1, 128, 512] = mul(%x, %r)
  %out: f32[1, 128, 512] = mul(%w, %n)
  return %out
}""",
    "gelu_tanh_group": """graph g(%x: f32[128, 3072]) {
  %three: f32[] = full() {shape=[], value=3.0}
  %cube: f32[128, 3072] = pow(%x, %three)
  %k: f32[] = full() {shape=[], value=0.044715}
  %a: f32[128, 3072] = mul(%cube, %k)
  %b: f32[128, 3072] = add(%x, %a)
  %t: f32[128, 3072] = tanh(%b)
  %out: f32[128, 3072] = mul(%x, %t)
  return %out
}""",
    "gelu": """graph g(%x: f32[128, 3072]) {
  %a: f32[128, 3072] = gelu(%x)
  return %a
}""",
    "max_pool": """graph g(%x: f32[1, 64, 112, 112]) {
  %a: f32[1, 64, 56, 56] = max_pool(%x) {kernel=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], dilations=[1, 1]}
  return %a
}""",
}


@pytest.fixture(scope="module")
def code():
    cache: dict[str, str] = {}

    def get(name: str) -> str:
        if name not in cache:
            cache[name] = asm(KERNELS[name])
        return cache[name]
    return get


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_kernel_vectors_are_contiguous(code, name):
    found = sorted(set(m.group(0) for m in GATHER_SCATTER.finditer(code(name))))
    assert not found, f"{name} compiles to gathers/scatters: {found}"


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_kernel_calls_no_scalar_libm(code, name):
    assert not libm_calls(code(name)), f"{name} calls libm per element: {libm_calls(code(name))}"


def test_the_checks_see_gathers_and_libm_calls():
    """The patterns catch what they look for: a float64 pow is a libm call, and a
    loop that LLVM vectorizes over clamped (non-affine) indices gathers."""
    pow64 = asm("""graph g(%x: f64[64, 64], %y: f64[64, 64]) {
  %a: f64[64, 64] = pow(%x, %y)
  return %a
}""")
    assert libm_calls(pow64) == {"pow"}
    x = te.placeholder((1024,), "float32", name="x")
    picked = te.compute((1024,), lambda i: x[tvm.tirx.min(i * 2, 1023)], name="picked")
    code = tvm.compile(te.create_prim_func([x, picked]), target=cpu_target()).mod.inspect_source(
        "asm")
    assert GATHER_SCATTER.search(code)


def test_norm_statistics_are_computed_per_row_under_a_unit_batch_axis():
    """rms-norm over [1, 128, 512]: the mean of each row is computed right before the
    row's output, inside the one parallel loop over the rows (a leading unit axis
    that the statistics' reads do not use must not send them to the root)."""
    script = lower_node(_node(KERNELS["rms_norm_group"]), "k").script()
    assert script.count("T.parallel") == 1
    mean_at = script.index('T.sblock("mean_sum_rf_init")')
    assert script.index("T.parallel") < mean_at < script.index('T.sblock("mul_1")')
