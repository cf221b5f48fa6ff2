"""Contraction kernels: kiln's TVM kernels vs PyTorch vs ONNX Runtime, interleaved.

    python -m bench.gemm [--cases mm1024,mm2048,bert_linear,resnet_conv,bert_attention]
                         [--rounds 9] [--threads 2] [--prepacked]

Each case is one kiln node compiled by the registered lowering and schedule (the code
path `kiln.compile` takes), called with preallocated TVM arrays. Every round calls the
engines one after another (kiln, torch, ORT), each for about 50 ms of back-to-back
calls after a 0.25 s pause (the previous engine's spinning worker threads, OpenMP,
ORT or TVM, go to sleep), so machine noise hits all alike; the table gives each
engine's median GFLOP/s over the rounds and the ratios. ORT gets the weight of `linear`/`conv` as an
initializer (as in a model: MLAS pre-packs it); `matmul` has two runtime inputs.

`--prepacked` adds a row per linear case for a kiln kernel that takes its weight
already in the GEMM's panel layout ([N/64, K, 64]), i.e. what compile-time weight
pre-packing would give (measured, not built into kiln).

TVM sizes its thread pool from TVM_NUM_THREADS (and otherwise uses half the cores on
x86), so this sets it to --threads before TVM is imported.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np


@dataclass
class Case:
    name: str
    op: str
    shapes: list[tuple[int, ...]]     # kiln node inputs
    flops: float
    attrs: dict = field(default_factory=dict)


CASES = {
    "mm1024": Case("matmul 1024^3", "matmul", [(1024, 1024), (1024, 1024)], 2 * 1024 ** 3),
    "mm2048": Case("matmul 2048^3", "matmul", [(2048, 2048), (2048, 2048)], 2 * 2048 ** 3),
    "bert_linear": Case("linear M128 K768 N3072 (BERT FFN)", "linear",
                        [(128, 768), (3072, 768), (3072,)], 2 * 128 * 768 * 3072),
    "bert_linear2": Case("linear M128 K3072 N768", "linear",
                         [(128, 3072), (768, 3072), (768,)], 2 * 128 * 768 * 3072),
    "decode_linear": Case("linear M1 K768 N3072 (decode step)", "linear",
                          [(1, 768), (3072, 768), (3072,)], 2 * 768 * 3072),
    "resnet_conv": Case("conv 1x64x56x56 3x3 64 (ResNet)", "conv",
                        [(1, 64, 56, 56), (64, 64, 3, 3)], 2 * 64 * 64 * 9 * 56 * 56,
                        dict(strides=[1, 1], pads=[1, 1, 1, 1], dilations=[1, 1], groups=1)),
    "resnet_1x1": Case("conv 1x256x56x56 1x1 64 (ResNet-50)", "conv",
                       [(1, 256, 56, 56), (64, 256, 1, 1)], 2 * 64 * 256 * 56 * 56,
                       dict(strides=[1, 1], pads=[0, 0, 0, 0], dilations=[1, 1], groups=1)),
    "bert_attention": Case("attention 1x12x128x64 (BERT)", "scaled_dot_product_attention",
                           [(1, 12, 128, 64)] * 3, 4 * 12 * 128 * 128 * 64,
                           dict(is_causal=False, scale=None)),
}
PAUSE_S = 0.25   # before each engine's turn: the last engine's thread pool stops spinning
DEFAULT = ("mm1024,mm2048,bert_linear,bert_linear2,decode_linear,resnet_conv,resnet_1x1,"
           "bert_attention")


# --- engines ---------------------------------------------------------------------------------
def kiln_engine(case: Case, arrays: list[np.ndarray]) -> Callable[[], None]:
    import tvm

    from kiln.codegen.tvm import cpu_target, lower_node
    from kiln.ir import GraphBuilder, tensor

    b = GraphBuilder(case.op)
    values = [b.input(f"x{i}", tensor("f32", *s)) for i, s in enumerate(case.shapes)]
    node = b.build(getattr(b, case.op)(*values, **case.attrs)).nodes[-1]
    lib = tvm.compile(tvm.IRModule({"main": lower_node(node, "main")}), target=cpu_target())
    fn = lib["main"]
    out = np.zeros(tuple(node.outputs[0].type.shape), np.float32)
    args = [tvm.runtime.tensor(a) for a in arrays] + [tvm.runtime.tensor(out)]
    return lambda: fn(*args)


def prepacked_linear_engine(case: Case, arrays: list[np.ndarray]) -> Callable[[], None]:
    """linear with its weight given pre-packed as [N/64, K, 64] (no pack in the kernel)."""
    import tvm
    from tvm import s_tir, te

    from kiln.codegen.tvm import cpu_target
    from kiln.codegen.tvm.gemm import (PANELS_SHARED, Operand, choose_tiling, machine,
                                       panel_gemm, schedule_gemm)
    x_np, w_np, bias_np = arrays
    (M, K), N = x_np.shape, w_np.shape[0]
    tiling = choose_tiling(M, N, "float32")
    nb = tiling.nb
    packed = np.zeros((-(-N // nb) * nb, K), np.float32)
    packed[:N] = w_np
    packed = np.ascontiguousarray(packed.reshape(-1, nb, K).transpose(0, 2, 1))
    x = te.placeholder((M, K), "float32", name="x")
    wp = te.placeholder(packed.shape, "float32", name="wp")
    bias = te.placeholder((N,), "float32", name="bias")
    lhs = Operand([], tvm.tirx.IntImm("int64", M), lambda bi, r, k: x[r, k])
    rhs = Operand([], tvm.tirx.IntImm("int64", N), lambda bi, c, k: wp[c // nb, k, c % nb])
    acc = panel_gemm("linear", [], lhs, rhs, tvm.tirx.IntImm("int64", K), "float32", tiling,
                     panel_parallel=PANELS_SHARED if N // nb >= 2 * machine().threads else 0)
    out = te.compute((M, N), lambda i, j: acc[i, j] + bias[j], name="linear")
    sch = s_tir.Schedule(te.create_prim_func([x, wp, bias, out]))
    schedule_gemm(sch)
    lib = tvm.compile(sch.mod, target=cpu_target())
    fn = lib["main"]
    res = np.zeros((M, N), np.float32)
    args = [tvm.runtime.tensor(a) for a in (x_np, packed, bias_np, res)]
    fn(*args)
    np.testing.assert_allclose(args[-1].numpy(), x_np @ w_np.T + bias_np, rtol=1e-4, atol=1e-3)
    return lambda: fn(*args)


def torch_engine(case: Case, arrays: list[np.ndarray]) -> Callable[[], None]:
    import torch
    import torch.nn.functional as F

    t = [torch.from_numpy(a) for a in arrays]
    with torch.no_grad():
        if case.op == "matmul":
            out = torch.empty(t[0].shape[0], t[1].shape[1])
            return lambda: torch.mm(t[0], t[1], out=out)
        if case.op == "linear":
            return lambda: F.linear(*t)
        if case.op == "conv":
            a = case.attrs
            return lambda: F.conv2d(t[0], t[1], stride=a["strides"], padding=a["pads"][:2])
        return lambda: F.scaled_dot_product_attention(*t)


def ort_engine(case: Case, arrays: list[np.ndarray], threads: int) -> Callable[[], None] | None:
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    def value(name, a):
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(a.shape))
    inits, feed = [], {}
    if case.op == "matmul":
        node = helper.make_node("MatMul", ["a", "b"], ["y"])
        ins, feed = [value("a", arrays[0]), value("b", arrays[1])], {"a": arrays[0],
                                                                     "b": arrays[1]}
    elif case.op == "linear":
        node = helper.make_node("Gemm", ["x", "w", "bias"], ["y"], transB=1)
        inits = [numpy_helper.from_array(arrays[1], "w"), numpy_helper.from_array(arrays[2],
                                                                                  "bias")]
        ins, feed = [value("x", arrays[0])], {"x": arrays[0]}
    elif case.op == "conv":
        a = case.attrs
        node = helper.make_node("Conv", ["x", "w"], ["y"], strides=a["strides"], pads=a["pads"],
                                dilations=a["dilations"], group=a["groups"])
        inits = [numpy_helper.from_array(arrays[1], "w")]
        ins, feed = [value("x", arrays[0])], {"x": arrays[0]}
    else:
        return None        # opset 17 has no attention op
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph([node], case.op, ins, [out], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    return lambda: session.run(None, feed)


# --- measuring ---------------------------------------------------------------------------
def calls_for(fn: Callable[[], None], budget_s: float = 0.05) -> int:
    start = time.perf_counter()
    fn()
    return max(1, int(budget_s / max(time.perf_counter() - start, 1e-6)))


def interleaved(engines: dict[str, Callable[[], None]], rounds: int) -> dict[str, float]:
    """Median seconds per call of each engine, the engines alternating round by round."""
    for fn in engines.values():
        fn()
        fn()
    reps = {k: calls_for(fn) for k, fn in engines.items()}
    times: dict[str, list[float]] = {k: [] for k in engines}
    for _ in range(rounds):
        for name, fn in engines.items():
            time.sleep(PAUSE_S)
            start = time.perf_counter()
            for _ in range(reps[name]):
                fn()
            times[name].append((time.perf_counter() - start) / reps[name])
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=DEFAULT)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prepacked", action="store_true")
    args = parser.parse_args()
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    if "tvm" in sys.modules:
        raise SystemExit("bench.gemm must set TVM_NUM_THREADS before TVM is imported")
    import torch
    torch.set_num_threads(args.threads)

    rng = np.random.default_rng(0)
    rows = []
    for key in args.cases.split(","):
        case = CASES[key]
        arrays = [rng.standard_normal(s).astype(np.float32) for s in case.shapes]
        engines = {"kiln": kiln_engine(case, arrays)}
        if args.prepacked and case.op == "linear":
            engines["kiln prepacked"] = prepacked_linear_engine(case, arrays)
        engines["torch"] = torch_engine(case, arrays)
        ort = ort_engine(case, arrays, args.threads)
        if ort is not None:
            engines["ORT"] = ort
        seconds = interleaved(engines, args.rounds)
        gflops = {k: case.flops / s / 1e9 for k, s in seconds.items()}
        rows.append((case.name, gflops))
        print(f"{case.name}: " + ", ".join(f"{k} {v:.1f}" for k, v in gflops.items())
              + " GFLOP/s", flush=True)
    print()
    print(f"threads {args.threads}, {args.rounds} interleaved rounds, median GFLOP/s")
    print("| case | kiln | kiln prepacked | torch | ORT | kiln/torch | kiln/ORT |")
    print("|---|---|---|---|---|---|---|")
    for name, g in rows:
        cell = lambda k: f"{g[k]:.1f}" if k in g else "-"  # noqa: E731
        ratio = lambda k: f"{g['kiln'] / g[k]:.2f}" if k in g else "-"  # noqa: E731
        print(f"| {name} | {cell('kiln')} | {cell('kiln prepacked')} | {cell('torch')} | "
              f"{cell('ORT')} | {ratio('torch')} | {ratio('ORT')} |")


if __name__ == "__main__":
    main()
