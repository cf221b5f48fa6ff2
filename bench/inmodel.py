"""In-model kernel times, kiln against ONNX Runtime, grouped by the output shape of
each kernel (for a CNN: by layer), to see which layers lose and by how much.

    python -m bench.inmodel [--models resnet] [--runs 12] [--threads 2] [--passes SPEC]

kiln: the compiled model's steps run in plan order, as a whole run does, each step
timed (`Executor.step_arguments`). ORT: the same model exported to ONNX, run with its
profiler on, each node's kernel time (`*_kernel_time` events). The two alternate run by
run (`--runs` each), so a noisy machine slows both alike, each run after a pause of
`bench.models.SETTLE_S` (otherwise the other engine's still-spinning threads slow the
first kernels); each kernel's time is the median over the runs, the first two excluded.
Kernels are grouped by their first output's shape: kiln's fused groups and ORT's fused
nodes then line up by layer, whatever each engine fused (kiln's blocked activations
count under their logical NCHW shape, its layout changes as one row).
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

from .models import SETTLE_S, Case, make_case, onnx_bytes, ort_options


class KilnRuns:
    """The compiled model's steps, each run timed in place."""

    def __init__(self, case: Case, passes: str | None = None):
        import kiln
        self.compiled = kiln.compile(case.model, case.inputs, passes=passes)
        executor = self.compiled._executor      # as bench/kernels.py: steps timed in place
        self.steps = executor.step_arguments(
            executor.prepare(*[t.numpy() for t in case.inputs]))
        self.samples: list[list[float]] = []

    def run(self) -> None:
        times = []
        for step, kernel, args in self.steps:
            start = time.perf_counter()
            kernel(*args)
            times.append(time.perf_counter() - start)
        self.samples.append(times)

    def times(self) -> dict[str, float]:
        """Output shape -> ms per run (medians, the first two runs excluded)."""
        shapes = {v.name: layer_key(n, v.type.shape) for n in self.compiled.graph.nodes
                  for v in n.outputs}
        out: dict[str, float] = defaultdict(float)
        for i, (step, _, _) in enumerate(self.steps):
            out[shapes[step.outputs[0]]] += 1e3 * statistics.median(
                s[i] for s in self.samples[2:])
        return out


def layer_key(node, shape: tuple) -> str:
    """The row a kiln kernel's time goes to: its output shape, a blocked activation
    [N, C/b, H, W, b] (passes/layout.py) as its logical [N, C, H, W] so that it lines up
    with ORT's NCHWc nodes; a layout change (a transpose) is a row of its own."""
    ops = [m.op for m in node.body.nodes] if node.body is not None else [node.op]
    if "transpose" in ops and not any(op.startswith("conv") for op in ops):
        return "layout changes"
    if len(shape) == 5:     # only blocked activations are 5-d in a CNN
        n, blocks, h, w, b = shape
        shape = (n, blocks * b, h, w)
    return str(list(shape))


class OrtRuns:
    """The model exported to ONNX, run with ORT's profiler on."""

    def __init__(self, case: Case, threads: int, folder: Path):
        import onnxruntime as ort
        self.session = ort.InferenceSession(
            onnx_bytes(case), ort_options(threads, str(folder / "ort")),
            providers=["CPUExecutionProvider"])
        self.feed = {n: t.numpy() for n, t in zip(case.input_names, case.inputs)}

    def run(self) -> None:
        self.session.run(None, self.feed)

    def times(self) -> dict[str, float]:
        """Output shape -> ms per run, from the per-node kernel times (medians, the first
        two runs excluded)."""
        trace = Path(self.session.end_profiling())
        per_node: dict[tuple[str, str], list[float]] = defaultdict(list)
        for event in json.loads(trace.read_text()):
            if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
                shapes = event["args"].get("output_type_shape") or [{}]
                shape = str(next(iter(shapes[0].values()), "?"))
                per_node[(event["name"], shape)].append(event["dur"] / 1e3)
        out: dict[str, float] = defaultdict(float)
        for (_, shape), durations in per_node.items():
            out[shape] += statistics.median(durations[2:] or durations)
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet")
    parser.add_argument("--runs", type=int, default=12)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--passes", default=None, help="kiln's pipeline (default: its own)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="kiln-inmodel-") as tmp:
        for name in args.models.split(","):
            case = make_case(name)
            engines = KilnRuns(case, args.passes), OrtRuns(case, args.threads, Path(tmp))
            for _ in range(args.runs):          # interleaved: both see the same machine
                for engine in engines:
                    time.sleep(SETTLE_S)        # no engine pays for the other's spinning
                    engine.run()
            kiln_ms, ort_ms = (engine.times() for engine in engines)
            print(f"\n{case.name}: kernels in one run, kiln {sum(kiln_ms.values()):.2f} ms, "
                  f"ORT {sum(ort_ms.values()):.2f} ms")
            print("| output shape | kiln ms | ORT ms | ORT/kiln |")
            print("|---|---|---|---|")
            for shape in sorted(set(kiln_ms) | set(ort_ms),
                                key=lambda s: -max(kiln_ms.get(s, 0), ort_ms.get(s, 0))):
                k, o = kiln_ms.get(shape, 0.0), ort_ms.get(shape, 0.0)
                ratio = f"{o / k:.2f}" if k and o else "-"
                print(f"| {shape} | {k:.2f} | {o:.2f} | {ratio} |")


if __name__ == "__main__":
    main()
