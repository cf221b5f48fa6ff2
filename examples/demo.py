"""`make demo`: import the bundled example (a small BERT) into kiln IR, run it in
kiln's reference interpreter at two input sizes from one graph, and compare with
PyTorch eager: accuracy and speed.

Kernels (TVM) are not built yet: the speed shown is the NumPy reference
interpreter's, which is the semantics, not the fast path.
"""
from __future__ import annotations

import collections
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tiny_bert  # noqa: E402

import kiln.ir as ir  # noqa: E402
from kiln.frontend.torch import import_model  # noqa: E402


def median_ms(fn, repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def main() -> None:
    torch.set_num_threads(2)
    model, inputs, dynamic_dims = tiny_bert.make_model()
    start = time.perf_counter()
    graph = import_model(model, inputs, dynamic_dims)
    import_s = time.perf_counter() - start
    ops = collections.Counter(n.op for n in graph.nodes)
    print(f"imported {type(model).__name__} in {import_s:.1f} s: {len(graph.nodes)} nodes, "
          f"{len(ops)} distinct ops, {len(graph.constants)} weights")
    print("  signature:", ", ".join(f"%{v.name}: {v.type}" for v in graph.inputs), "->",
          ", ".join(str(v.type) for v in graph.outputs))
    print("  ops:", ", ".join(f"{op}×{n}" for op, n in ops.most_common()))
    out_dir = Path("out")
    out_dir.mkdir(exist_ok=True)
    ir.save(graph, out_dir / "tiny_bert.kir")
    print(f"  wrote {out_dir / 'tiny_bert.kir'} (+ .safetensors)")

    worst = 0.0
    for batch, seq in ((2, 64), (3, 37)):
        _, feed, _ = tiny_bert.make_model(batch, seq)
        with torch.no_grad():
            eager = model(*feed)
        expected = [eager.last_hidden_state.numpy(), eager.pooler_output.numpy()]
        arrays = [t.numpy() for t in feed]
        got = ir.interpret(graph, arrays)
        err = max(float(np.max(np.abs(g - e))) for g, e in zip(got, expected))
        worst = max(worst, err)
        with torch.no_grad():
            eager_ms = median_ms(lambda: model(*feed))
        kiln_ms = median_ms(lambda: ir.interpret(graph, arrays))
        print(f"batch={batch} seq={seq}: max |kiln - eager| = {err:.2e}; "
              f"interpreter {kiln_ms:.1f} ms vs eager {eager_ms:.1f} ms "
              f"(speed-up {eager_ms / kiln_ms:.2f}x — reference interpreter, no kernels yet)")
    ok = worst < 1e-4
    print("outputs match eager" if ok else f"MISMATCH: max error {worst:.2e}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
