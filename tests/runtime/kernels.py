"""A tiny hand-compiled TVM kernel library and hand-written plans for the runtime tests;
nothing here is a test. Import as `from tests.runtime.kernels import ...`.

Kernels (n is a symbolic dim; everything f32 unless said):
    add(A[n,4], B[n,4]) -> C[n,4]           add_bias(A[n,4], B[4]) -> C[n,4]
    relu(A[n,4]) -> R[n,4]                  concat(A[n,4], B[n,4]) -> C[2n,4]
    scale2(A[n,4]) -> B[n,4]  (a parallel loop: needs TVM's runtime library)
    bf16_to_f32(H: bf16[n]) -> F[n]          relu_flat(A[m]) -> R[m]
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from kiln.passes.memory import plan_memory
from kiln.runtime.plan import Plan, Port, Signature, Step, TensorSpec


def build_kernels(path: Path) -> Path:
    """Compile the kernels above for the host CPU into the shared library `path`."""
    import tvm
    import tvm.s_tir as s_tir
    from tvm import te

    n = te.var("n")
    m = te.var("m")
    flat = te.placeholder((m,), name="A", dtype="float32")
    a = te.placeholder((n, 4), name="A", dtype="float32")
    b = te.placeholder((n, 4), name="B", dtype="float32")
    bias = te.placeholder((4,), name="B", dtype="float32")
    h = te.placeholder((n,), name="H", dtype="bfloat16")
    funcs = {
        "add": [a, b, te.compute((n, 4), lambda i, j: a[i, j] + b[i, j], name="C")],
        "add_bias": [a, bias, te.compute((n, 4), lambda i, j: a[i, j] + bias[j], name="C")],
        "relu": [a, te.compute((n, 4), lambda i, j: te.max(a[i, j], te.const(0.0, "float32")),
                               name="R")],
        "concat": [a, b, te.compute((2 * n, 4), lambda i, j: te.if_then_else(
            i < n, a[i, j], b[te.max(i - n, 0), j]), name="C")],
        "scale2": [a, te.compute((n, 4), lambda i, j: a[i, j] * 2.0, name="S")],
        "bf16_to_f32": [h, te.compute((n,), lambda i: h[i].astype("float32"), name="F")],
        "relu_flat": [flat, te.compute((m,), lambda i: te.max(flat[i], te.const(0.0, "float32")),
                                       name="R")],
    }
    mod = tvm.IRModule({k: te.create_prim_func(v).with_attr("global_symbol", k)
                        for k, v in funcs.items()})
    sch = s_tir.Schedule(mod)
    (i, _j) = sch.get_loops(sch.get_sblock("S", func_name="scale2"))
    sch.parallel(i)
    lib = tvm.compile(sch.mod, target="llvm")
    lib.export_library(str(path))
    return path


def f32(*shape) -> TensorSpec:
    return TensorSpec("f32", shape)


def chain_plan(*, memory: bool = True) -> Plan:
    """x, y: f32[batch, 4]; bias: f32[4] (weights key "fc.bias").

        t0 = add(x, y); t1 = add_bias(t0, bias); t2 = relu(t1); t3 = scale2(t2)
        out = concat(t3, x)                        -> f32[2*batch, 4]
        return out, t1, x, bias
    """
    values = {"x": f32("batch", 4), "y": f32("batch", 4), "bias": f32(4),
              "t0": f32("batch", 4), "t1": f32("batch", 4), "t2": f32("batch", 4),
              "t3": f32("batch", 4), "out": f32("2*batch", 4)}
    steps = [Step("add", ["x", "y"], ["t0"], "%t0 = add(%x, %y)"),
             Step("add_bias", ["t0", "bias"], ["t1"], "%t1 = add(%t0, %bias)"),
             Step("relu", ["t1"], ["t2"], "%t2 = relu(%t1)"),
             Step("scale2", ["t2"], ["t3"], "%t3 = mul(%t2, 2.0)"),
             Step("concat", ["t3", "x"], ["out"], "%out = concat(%t3, %x) {axis=0}")]
    sig = Signature([Port("x", "f32", ("batch", 4)), Port("y", "f32", ("batch", 4))],
                    [Port(n, "f32", values[n].shape) for n in ("out", "t1", "x", "bias")])
    plan = Plan(sig, values, {"bias": "fc.bias"}, steps, name="chain")
    return plan_memory(plan) if memory else plan


BIAS = np.array([0.5, -1.0, 2.0, -3.0], np.float32)
WEIGHTS = {"fc.bias": BIAS}


def chain_reference(x: np.ndarray, y: np.ndarray) -> list[np.ndarray]:
    t1 = x + y + BIAS
    return [np.concatenate([2 * np.maximum(t1, 0), x]), t1, x, BIAS]
