"""`make demo`: compile the bundled example (a small BERT encoder, random weights) ahead
of time into a `.kiln` artifact, load it back, and compare with PyTorch eager:
accuracy, and speed measured interleaved at two input sizes served by the same artifact.
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tiny_bert  # noqa: E402

import kiln  # noqa: E402


def interleaved_ms(a, b, rounds: int = 20) -> tuple[float, float]:
    """Median milliseconds of `a` and `b`, called alternately (noise hits both alike)."""
    a(), b()
    ta, tb = [], []
    for _ in range(rounds):
        for fn, times in ((a, ta), (b, tb)):
            start = time.perf_counter()
            fn()
            times.append(1e3 * (time.perf_counter() - start))
    return statistics.median(ta), statistics.median(tb)


def main() -> None:
    torch.set_num_threads(2)
    model, inputs, dynamic_dims = tiny_bert.make_model()
    start = time.perf_counter()
    compiled = kiln.compile(model, inputs, dynamic_dims=dynamic_dims)
    print(f"compiled {type(model).__name__} in {time.perf_counter() - start:.1f} s: "
          f"{compiled.report}")
    out_dir = Path("out")
    out_dir.mkdir(exist_ok=True)
    path = compiled.save(out_dir / "tiny_bert.kiln")
    loaded = kiln.load(path)
    print(f"saved {path} ({path.stat().st_size / 1e6:.1f} MB) and loaded it back: "
          f"{loaded.signature}")

    worst = 0.0
    for batch, seq in ((1, 128), (4, 37)):
        _, feed, _ = tiny_bert.make_model(batch, seq)
        with torch.no_grad():
            eager = model(*feed)
        expected = [eager.last_hidden_state.numpy(), eager.pooler_output.numpy()]
        got = loaded(*feed)
        err = max(float(np.max(np.abs(g - e))) for g, e in zip(got, expected))
        worst = max(worst, err)
        with torch.no_grad():
            kiln_ms, eager_ms = interleaved_ms(lambda: loaded(*feed), lambda: model(*feed))
        print(f"batch={batch} seq={seq}: max |kiln - eager| = {err:.1e}; kiln {kiln_ms:.2f} ms, "
              f"eager {eager_ms:.2f} ms: speed-up {eager_ms / kiln_ms:.2f}x")
    ok = worst < 1e-4
    print("outputs match eager (max error %.1e)" % worst if ok else f"MISMATCH: {worst:.2e}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
