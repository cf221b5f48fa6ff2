"""Contraction kernels: kiln's TVM kernels vs PyTorch vs ONNX Runtime, interleaved.

    python -m bench.gemm [--cases mm2048,bert_linear,resnet50,bert_attention,...]
                         [--rounds 9] [--threads 2] [--blocked]

Cases: GEMMs (matmul 1024^3 / 2048^3, batched QK^T and PV), linears (BERT's FFN, a
decode step, the benchmark MLP's layer), every distinct ResNet-50 conv layer (`resnet50` selects all 23, with a
total weighted by how often each occurs: 53 convs), and attention at BERT, GPT-2
(causal) and Llama (causal) shapes.

Each case is one kiln node compiled by the registered lowering and schedule (the code
path `kiln.compile` takes), with a linear/conv weight as a constant packed at compile
time by the `pack_weights` pass, called with preallocated TVM arrays. Every round
calls the engines one after another (kiln, torch, ORT), each for about 50 ms of
back-to-back calls after a 0.25 s pause (the previous engine's spinning worker
threads, OpenMP, ORT or TVM, go to sleep), so machine noise hits all alike; the table
gives each engine's median GFLOP/s over the rounds and the ratios. ORT gets the
weight of `linear`/`conv` as an initializer (as in a model: MLAS pre-packs it);
`matmul` has two runtime inputs; attention is given to ORT as exported models give
it (Transpose, MatMul, Mul, causal Add, Softmax, MatMul), to torch as
F.scaled_dot_product_attention.

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
    count: int = 1                    # how often the layer occurs in its model (totals)


def conv_case(name: str, c: int, hw: int, o: int, k: int, s: int = 1, count: int = 1) -> Case:
    """A square conv layer with bias (batch norm folded in), batch 1, pad k // 2."""
    out = (hw + 2 * (k // 2) - k) // s + 1
    return Case(f"{name} conv {c}x{hw}^2 {k}x{k}/{s} -> {o}", "conv",
                [(1, c, hw, hw), (o, c, k, k), (o,)], 2 * o * c * k * k * out * out,
                dict(strides=[s, s], pads=[k // 2] * 4, dilations=[1, 1], groups=1), count)


def attention_case(name: str, heads: int, seq: int, dim: int, causal: bool) -> Case:
    return Case(f"{name} attention {heads}x{seq}x{dim}" + (" causal" if causal else ""),
                "scaled_dot_product_attention", [(1, heads, seq, dim)] * 3,
                4 * heads * seq * seq * dim // (2 if causal else 1),
                dict(is_causal=causal, scale=None))


# ResNet-50 (torchvision v1.5 / HF ResNetModel: the stride in the 3x3), batch 1, 224^2:
# every distinct conv layer and how many times it occurs (53 convs in all)
RESNET50 = {
    "r50_stem": conv_case("stem", 3, 224, 64, 7, 2),
    "r50_l1_in64": conv_case("l1", 64, 56, 64, 1),
    "r50_l1_3x3": conv_case("l1", 64, 56, 64, 3, count=3),
    "r50_l1_out": conv_case("l1", 64, 56, 256, 1, count=4),
    "r50_l1_in256": conv_case("l1", 256, 56, 64, 1, count=2),
    "r50_l2_in256": conv_case("l2", 256, 56, 128, 1),
    "r50_l2_3x3s2": conv_case("l2", 128, 56, 128, 3, 2),
    "r50_l2_out": conv_case("l2", 128, 28, 512, 1, count=4),
    "r50_l2_ds": conv_case("l2 ds", 256, 56, 512, 1, 2),
    "r50_l2_in512": conv_case("l2", 512, 28, 128, 1, count=3),
    "r50_l2_3x3": conv_case("l2", 128, 28, 128, 3, count=3),
    "r50_l3_in512": conv_case("l3", 512, 28, 256, 1),
    "r50_l3_3x3s2": conv_case("l3", 256, 28, 256, 3, 2),
    "r50_l3_out": conv_case("l3", 256, 14, 1024, 1, count=6),
    "r50_l3_ds": conv_case("l3 ds", 512, 28, 1024, 1, 2),
    "r50_l3_in1024": conv_case("l3", 1024, 14, 256, 1, count=5),
    "r50_l3_3x3": conv_case("l3", 256, 14, 256, 3, count=5),
    "r50_l4_in1024": conv_case("l4", 1024, 14, 512, 1),
    "r50_l4_3x3s2": conv_case("l4", 512, 14, 512, 3, 2),
    "r50_l4_out": conv_case("l4", 512, 7, 2048, 1, count=3),
    "r50_l4_ds": conv_case("l4 ds", 1024, 14, 2048, 1, 2),
    "r50_l4_in2048": conv_case("l4", 2048, 7, 512, 1, count=2),
    "r50_l4_3x3": conv_case("l4", 512, 7, 512, 3, count=2),
}
CASES = {
    "mm1024": Case("matmul 1024^3", "matmul", [(1024, 1024), (1024, 1024)], 2 * 1024 ** 3),
    "mm2048": Case("matmul 2048^3", "matmul", [(2048, 2048), (2048, 2048)], 2 * 2048 ** 3),
    "bmm_qk": Case("batched matmul 12x128x64 @ 12x64x128 (QK^T)", "matmul",
                   [(12, 128, 64), (12, 64, 128)], 2 * 12 * 128 * 128 * 64),
    "bmm_pv": Case("batched matmul 12x128x128 @ 12x128x64 (PV)", "matmul",
                   [(12, 128, 128), (12, 128, 64)], 2 * 12 * 128 * 128 * 64),
    "bert_linear": Case("linear M128 K768 N3072 (BERT FFN)", "linear",
                        [(128, 768), (3072, 768), (3072,)], 2 * 128 * 768 * 3072),
    "bert_linear2": Case("linear M128 K3072 N768", "linear",
                         [(128, 3072), (768, 3072), (768,)], 2 * 128 * 768 * 3072),
    "decode_linear": Case("linear M1 K768 N3072 (decode step)", "linear",
                          [(1, 768), (3072, 768), (3072,)], 2 * 768 * 3072),
    "mlp_linear": Case("linear M32 K1024 N1024 (MLP layer)", "linear",
                       [(32, 1024), (1024, 1024), (1024,)], 2 * 32 * 1024 * 1024),
    **RESNET50,
    "bert_attention": attention_case("BERT", 12, 128, 64, False),
    "gpt2_attention": attention_case("GPT-2", 12, 128, 64, True),
    "llama_attention": attention_case("Llama", 8, 128, 64, True),
}
GROUPS = {"resnet50": ",".join(RESNET50)}   # --cases shorthands
PAUSE_S = 0.25   # before each engine's turn: the last engine's thread pool stops spinning
DEFAULT = ("mm1024,mm2048,bmm_qk,bmm_pv,bert_linear,bert_linear2,decode_linear,mlp_linear,"
           "resnet50,"
           "bert_attention,gpt2_attention,llama_attention")


# --- engines ---------------------------------------------------------------------------------
def kiln_engine(case: Case, arrays: list[np.ndarray], blocked: bool = False
                ) -> Callable[[], None]:
    """The case as `kiln.compile` builds it: a linear/conv weight (and bias) is a
    constant, packed at compile time by the `pack_weights` pass. `blocked`: a conv as
    the `block_layout` pass makes it, `conv_nchwc` on input already in blocked channels
    (the layout changes at a chain's ends are not timed)."""
    import tvm

    from kiln.codegen.tvm import cpu_target, lower_node
    from kiln.ir import GraphBuilder, tensor
    from kiln.passes.layout import BlockLayout
    from kiln.passes.pack import PackWeights

    b = GraphBuilder(case.op)
    weights = case.op in ("linear", "conv")
    values = [b.constant(f"w{i}", a) if weights and i else b.input(f"x{i}", tensor("f32", *a.shape))
              for i, a in enumerate(arrays)]
    graph = b.build(getattr(b, case.op)(*values, **case.attrs))
    (BlockLayout() if blocked else PackWeights()).run(graph)
    node = next(n for n in graph.nodes if n.op == "conv_nchwc") if blocked else graph.nodes[-1]
    given = dict(zip(graph.inputs, arrays))
    rng = np.random.default_rng(1)
    inputs = [given[v] if v in given else graph.constant_array(v.producer)
              if v.producer.op == "constant" else
              rng.standard_normal(v.type.shape).astype(np.float32) for v in node.inputs]
    lib = tvm.compile(tvm.IRModule({"main": lower_node(node, "main")}), target=cpu_target())
    fn = lib["main"]
    out = np.zeros(tuple(node.outputs[0].type.shape), np.float32)
    args = [tvm.runtime.tensor(a) for a in inputs] + [tvm.runtime.tensor(out)]
    return lambda: fn(*args)


def torch_engine(case: Case, arrays: list[np.ndarray]) -> Callable[[], None]:
    import torch
    import torch.nn.functional as F

    t = [torch.from_numpy(a) for a in arrays]
    a = case.attrs
    with torch.no_grad():
        if case.op == "matmul":
            out = torch.empty(*t[0].shape[:-1], t[1].shape[-1])
            return lambda: torch.matmul(t[0], t[1], out=out)
        if case.op == "linear":
            return lambda: F.linear(*t)
        if case.op == "conv":
            return lambda: F.conv2d(*t, stride=a["strides"], padding=a["pads"][:2])
        return lambda: F.scaled_dot_product_attention(*t, is_causal=a["is_causal"])


def ort_engine(case: Case, arrays: list[np.ndarray], threads: int) -> Callable[[], None]:
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
        names = ["x", "w", "b"][:len(arrays)]
        node = helper.make_node("Conv", names, ["y"], strides=a["strides"], pads=a["pads"],
                                dilations=a["dilations"], group=a["groups"])
        inits = [numpy_helper.from_array(arr, n) for n, arr in zip(names[1:], arrays[1:])]
        ins, feed = [value("x", arrays[0])], {"x": arrays[0]}
    else:   # attention as exported models give it to ORT: MatMul, scale, mask, Softmax
        q, k, v = arrays[:3]
        scale = 1 / np.sqrt(q.shape[-1])
        nodes = [helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
                 helper.make_node("MatMul", ["q", "kt"], ["qk"]),
                 helper.make_node("Mul", ["qk", "scale"], ["logits"])]
        inits = [numpy_helper.from_array(np.array(scale, np.float32), "scale")]
        if case.attrs["is_causal"]:
            L, S = q.shape[-2], k.shape[-2]
            causal = np.where(np.tril(np.ones((L, S), bool)), 0, -np.inf).astype(np.float32)
            inits.append(numpy_helper.from_array(causal, "causal"))
            nodes.append(helper.make_node("Add", ["logits", "causal"], ["masked"]))
        nodes += [helper.make_node("Softmax", [nodes[-1].output[0]], ["p"], axis=-1),
                  helper.make_node("MatMul", ["p", "v"], ["y"])]
        ins = [value(n, a) for n, a in zip("qkv", (q, k, v))]
        feed = dict(zip("qkv", (q, k, v)))
        node = None
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph([node] if node is not None else nodes, case.op, ins, [out],
                              initializer=inits)
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


def expand(cases: str) -> list[str]:
    keys = []
    for key in cases.split(","):
        keys += GROUPS[key].split(",") if key in GROUPS else [key]
    unknown = [k for k in keys if k not in CASES]
    if unknown:
        raise SystemExit(f"unknown case(s) {unknown}; known: {sorted(CASES)} and {sorted(GROUPS)}")
    return keys


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=DEFAULT)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--blocked", action="store_true",
                        help="convs: also time the blocked-channel kernel (block_layout)")
    args = parser.parse_args()
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    if "tvm" in sys.modules:
        raise SystemExit("bench.gemm must set TVM_NUM_THREADS before TVM is imported")
    import torch
    torch.set_num_threads(args.threads)

    rng = np.random.default_rng(0)
    rows = []
    for key in expand(args.cases):
        case = CASES[key]
        arrays = [rng.standard_normal(s).astype(np.float32) for s in case.shapes]
        engines = {"kiln": kiln_engine(case, arrays), "torch": torch_engine(case, arrays),
                   "ORT": ort_engine(case, arrays, args.threads)}
        if args.blocked and case.op == "conv":
            engines["kiln NCHWc"] = kiln_engine(case, arrays, blocked=True)
        seconds = interleaved(engines, args.rounds)
        rows.append((key, case, seconds))
        print(f"{case.name}: " + ", ".join(f"{k} {case.flops / v / 1e9:.1f}"
                                           for k, v in seconds.items()) + " GFLOP/s", flush=True)
    print()
    print(f"threads {args.threads}, {args.rounds} interleaved rounds, median GFLOP/s "
          "(ms per call for the totals)")
    extra = "kiln NCHWc" if any("kiln NCHWc" in sec for _, _, sec in rows) else None
    print("| case | kiln | torch | ORT | kiln/torch | kiln/ORT |"
          + (" kiln NCHWc | NCHWc/ORT |" if extra else ""))
    print("|---|---|---|---|---|---|" + ("---|---|" if extra else ""))

    def more(values: dict[str, float], ratio: float) -> str:
        if not extra:
            return ""
        return f" {values[extra]:.2f} | {ratio:.2f} |" if extra in values else " - | - |"
    for _, case, sec in rows:
        g = {k: case.flops / v / 1e9 for k, v in sec.items()}
        count = f" (x{case.count})" if case.count > 1 else ""
        print(f"| {case.name}{count} | {g['kiln']:.1f} | {g['torch']:.1f} | {g['ORT']:.1f} | "
              f"{g['kiln'] / g['torch']:.2f} | {g['kiln'] / g['ORT']:.2f} |"
              + more(g, g.get(extra, 0) / g['ORT']))
    for group, members in GROUPS.items():
        chosen = [(case, sec) for key, case, sec in rows if key in members.split(",")]
        if chosen:   # the layers' summed time, each layer as often as the model has it
            ms = {k: 1e3 * sum(c.count * sec[k] for c, sec in chosen) for k in chosen[0][1]}
            print(f"| {group}: {len(chosen)} layers, total ms | {ms['kiln']:.2f} | "
                  f"{ms['torch']:.2f} | {ms['ORT']:.2f} | {ms['torch'] / ms['kiln']:.2f} | "
                  f"{ms['ORT'] / ms['kiln']:.2f} |" + more(ms, ms['ORT'] / ms.get(extra, 1)))


if __name__ == "__main__":
    main()
