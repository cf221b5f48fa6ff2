"""`make demo`: compile the bundled example (a small BERT encoder, random weights) ahead
of time into a `.kiln` artifact, load it back, and compare with PyTorch eager:
accuracy, and speed measured interleaved at two input sizes served by the same artifact
(as `python -m bench.models` measures: each timed call follows a pause, so that neither
engine pays for the other's spinning thread pool, and one untimed call).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tiny_bert  # noqa: E402

import kiln  # noqa: E402
from kiln.bench.models import interleaved  # noqa: E402


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
        with torch.no_grad():   # as bench.models measures: neither pays the other's threads
            ms = interleaved({"kiln": lambda: loaded(*feed), "eager": lambda: model(*feed)},
                             rounds=15)
        kiln_ms, eager_ms = ms["kiln"], ms["eager"]
        print(f"batch={batch} seq={seq}: max |kiln - eager| = {err:.1e}; kiln {kiln_ms:.2f} ms, "
              f"eager {eager_ms:.2f} ms: speed-up {eager_ms / kiln_ms:.2f}x")
    ok = worst < 1e-4
    print("outputs match eager (max error %.1e)" % worst if ok else f"MISMATCH: {worst:.2e}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
