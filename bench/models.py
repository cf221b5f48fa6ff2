"""Model benchmark: kiln vs ONNX Runtime (CPU EP) vs torch.compile (Inductor) vs
PyTorch eager, interleaved.

    python -m bench.models [--models mlp,bert,gpt2,resnet,llama] [--rounds 15] [--threads 2]
                           [--cold] [--no-inductor] [--passes SPEC]

Per model: compile times (kiln's `kiln.compile`, with its kernel cache as found, or an
empty one with --cold; torch.compile's first call, which is when Inductor compiles,
with Inductor's caches as found or empty with --cold; ORT's export + session), the
kiln output's max error against eager, the median latency of each engine over rounds
that alternate the engines (so machine noise hits all alike; two warm-up calls each
are excluded; each timed call follows a 0.25 s pause and one untimed call, so no
engine runs while another's thread pool still spins), the ratios, kiln's kernel calls and distinct
kernels after fusion, and peak intermediate memory: kiln's (its memory plan's slots,
plus the scratch its kernels allocate inside, `MemoryReport.peak_bytes`; with one
buffer per intermediate in parentheses) and ORT's, read from the arena statistics its
profiler records per kernel (peak bytes in use during a run minus the bytes in use
before it; `ort_peak_intermediates`).
Models are built from configs with random weights. kiln and ORT are called with the
inputs as NumPy arrays (each one's native input; kiln also takes torch tensors, through
DLPack), torch.compile and eager with torch tensors.
"""
from __future__ import annotations

import argparse
import io
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch


@dataclass
class Case:
    name: str
    model: torch.nn.Module
    inputs: tuple[torch.Tensor, ...]
    input_names: tuple[str, ...]


def _hf(model: torch.nn.Module, names: tuple[str, ...]) -> torch.nn.Module:
    class Outputs(torch.nn.Module):       # positional tensors in, one tensor out, for every engine
        def __init__(self, inner: torch.nn.Module):
            super().__init__()
            self.inner = inner

        def forward(self, *args):
            out = self.inner(**dict(zip(names, args)))
            return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    return Outputs(model).eval()


TEXT = ("input_ids", "attention_mask")


def _text(vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    # an explicit all-ones mask: real serving passes one (and transformers' packed-sequence
    # detection, taken when it is absent, uses aten::diff, which ONNX export lacks)
    return torch.randint(0, vocab, (1, 128)), torch.ones(1, 128, dtype=torch.int64)


def make_case(name: str) -> Case:
    torch.manual_seed(0)
    if name == "mlp":
        layers = []
        for _ in range(3):
            layers += [torch.nn.Linear(1024, 1024), torch.nn.ReLU()]
        return Case("MLP 3x1024 b32", torch.nn.Sequential(*layers).eval(),
                    (torch.randn(32, 1024),), ("x",))
    if name == "bert":
        from transformers import BertConfig, BertModel
        model = _hf(BertModel(BertConfig(), add_pooling_layer=False), TEXT)
        return Case("BERT-base s128", model, _text(30522), TEXT)
    if name == "gpt2":
        from transformers import GPT2Config, GPT2Model
        model = _hf(GPT2Model(GPT2Config(use_cache=False)), TEXT)
        return Case("GPT-2-small s128", model, _text(50257), TEXT)
    if name == "resnet":
        from transformers import ResNetConfig, ResNetModel
        model = _hf(ResNetModel(ResNetConfig()), ("pixel_values",))  # default config: ResNet-50
        return Case("ResNet-50 224", model, (torch.randn(1, 3, 224, 224),), ("pixel_values",))
    if name == "llama":
        from transformers import LlamaConfig, LlamaModel
        config = LlamaConfig(hidden_size=512, intermediate_size=1376, num_hidden_layers=4,
                             num_attention_heads=8, num_key_value_heads=8, vocab_size=32000,
                             use_cache=False)
        model = _hf(LlamaModel(config), TEXT)
        return Case("Llama 4L h512 s128", model, _text(32000), TEXT)
    raise SystemExit(f"unknown model {name!r}")


def onnx_bytes(case: Case) -> bytes:
    buf = io.BytesIO()
    torch.onnx.export(case.model, case.inputs, buf, input_names=list(case.input_names),
                      dynamo=False, opset_version=17)
    return buf.getvalue()


def ort_options(threads: int, profile: str | None = None):
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    if profile:
        options.enable_profiling = True
        options.profile_file_prefix = profile
    return options


def ort_session(model: bytes, case: Case, threads: int) -> Callable[[], Any]:
    import onnxruntime as ort
    session = ort.InferenceSession(model, ort_options(threads), providers=["CPUExecutionProvider"])
    feed = {n: t.numpy() for n, t in zip(case.input_names, case.inputs)}
    return lambda: session.run(None, feed)


def ort_peak_intermediates(model: bytes, case: Case, threads: int, tmp: Path) -> int:
    """Peak bytes of ORT's CPU arena in use during one run beyond what it held before
    the run (weights), from the memory statistics its profiler records per kernel
    (`mem_bytes_in_use`, `mem_in_use_delta`, `mem_in_use_peak`; ORT >= 1.31). The run's
    outputs are allocated in the arena and count; its inputs are the caller's."""
    import json

    import onnxruntime as ort
    session = ort.InferenceSession(model, ort_options(threads, str(tmp / "ort-profile")),
                                   providers=["CPUExecutionProvider"])
    session.run(None, {n: t.numpy() for n, t in zip(case.input_names, case.inputs)})
    trace = Path(session.end_profiling())
    kernels = [e["args"] for e in json.loads(trace.read_text())
               if e.get("cat") == "Node" and "mem_in_use_peak" in e.get("args", {})]
    trace.unlink()
    if not kernels:
        raise SystemExit("ORT's profile has no per-kernel memory statistics (ORT < 1.31?)")
    before = int(kernels[0]["mem_bytes_in_use"]) - int(kernels[0]["mem_in_use_delta"])
    return max(int(k["mem_in_use_peak"]) for k in kernels) - before


def inductor(case: Case) -> tuple[Callable[[], Any], float]:
    """torch.compile (Inductor, default mode) of the model and its compile time: the
    first call's, when Dynamo traces and Inductor compiles."""
    torch._dynamo.reset()
    compiled = torch.compile(case.model)
    start = time.perf_counter()
    compiled(*case.inputs)
    return (lambda: compiled(*case.inputs)), time.perf_counter() - start


SETTLE_S = 0.25   # ORT's and OpenMP's pools spin ~0.05-0.2 s after a call: let them sleep


def interleaved(engines: dict[str, Callable[[], Any]], rounds: int) -> dict[str, float]:
    """Median milliseconds of each engine, the engines alternating round by round. Each
    turn waits SETTLE_S (so no engine pays for the previous one's spinning threads),
    makes one untimed call (its own threads wake), then times the next call."""
    for fn in engines.values():        # warm up
        fn(); fn()
    times: dict[str, list[float]] = {k: [] for k in engines}
    for _ in range(rounds):
        for name, fn in engines.items():
            time.sleep(SETTLE_S)
            fn()
            start = time.perf_counter()
            fn()
            times[name].append(1e3 * (time.perf_counter() - start))
    return {k: statistics.median(v) for k, v in times.items()}


@dataclass
class Row:
    name: str
    ms: dict[str, float]
    compile_s: dict[str, float]
    err: float
    kiln_mb: tuple[float, float, float]   # kiln: planned slots, kernel workspace,
                                          # one buffer per value
    ort_mb: float                         # ORT's arena: peak in use during a run
    report: Any                           # kiln's CompileReport


def run_case(name: str, args: argparse.Namespace, cache_dir: str | None, tmp: Path) -> Row:
    import kiln
    case = make_case(name)
    compile_s: dict[str, float] = {}
    start = time.perf_counter()
    compiled = kiln.compile(case.model, case.inputs, cache_dir=cache_dir, passes=args.passes)
    compile_s["kiln"] = time.perf_counter() - start
    with torch.no_grad():
        expected = case.model(*case.inputs)
    arrays = [t.numpy() for t in case.inputs]   # kiln and ORT both take NumPy inputs
    got = compiled(*arrays)[0]
    err = float(np.max(np.abs(got - expected.numpy())))
    start = time.perf_counter()
    onnx = onnx_bytes(case)
    engines: dict[str, Callable[[], Any]] = {"kiln": lambda: compiled(*arrays),
                                             "ort": ort_session(onnx, case, args.threads)}
    compile_s["ort"] = time.perf_counter() - start
    with torch.no_grad():
        if args.inductor:
            engines["inductor"], compile_s["inductor"] = inductor(case)
        engines["eager"] = lambda: case.model(*case.inputs)
        ms = interleaved(engines, args.rounds)
    memory = compiled.memory({})
    return Row(case.name, ms, compile_s, err,
               (memory.planned_bytes / 1e6, memory.workspace_bytes / 1e6,
                memory.unplanned_bytes / 1e6),
               ort_peak_intermediates(onnx, case, args.threads, tmp) / 1e6, compiled.report)


def _kiln_mb(row: Row) -> str:
    planned, workspace, _ = row.kiln_mb
    return f"{planned:.1f} + {workspace:.1f} = {planned + workspace:.1f}"


def _ms(row: Row, engine: str) -> str:
    return f"{row.ms[engine]:.2f}" if engine in row.ms else "-"


def _ratio(row: Row, engine: str) -> str:
    return f"{row.ms[engine] / row.ms['kiln']:.2f}x" if engine in row.ms else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mlp,bert,gpt2,resnet,llama")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cold", action="store_true",
                        help="compile with empty kiln and Inductor caches")
    parser.add_argument("--no-inductor", dest="inductor", action="store_false",
                        help="leave torch.compile out")
    parser.add_argument("--passes", default=None,
                        help="kiln's pass pipeline (default: DEFAULT_PIPELINE), e.g. "
                             "canonicalize,block_layout,pack_weights,fuse,plan")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory(prefix="kiln-bench-") as tmp:
        cache_dir = None
        if args.cold:
            cache_dir = os.path.join(tmp, "kiln-cache")
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(tmp, "inductor-cache")
        for name in args.models.split(","):
            row = run_case(name, args, cache_dir, Path(tmp))
            rows.append(row)
            r = row.report
            print(f"{row.name}: " + ", ".join(f"{k} {v:.2f} ms" for k, v in row.ms.items())
                  + "; compile " + ", ".join(f"{k} {v:.1f} s" for k, v in row.compile_s.items())
                  + f" (kiln cache {r.cache_hits} hits, {r.cache_misses} misses); max err "
                  f"{row.err:.1e}; peak intermediates kiln {_kiln_mb(row)} MB, "
                  f"ORT {row.ort_mb:.1f} MB", flush=True)
    print()
    print("| model | kiln ms | ORT ms | torch.compile ms | eager ms | ORT/kiln "
          "| torch.compile/kiln | eager/kiln | compile s kiln / Inductor / ORT | max err "
          "| peak intermediates MB kiln: plan + kernel workspace (unplanned) / ORT "
          "| kernels after fusion |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        r = row.report
        compile_s = " / ".join(f"{row.compile_s[k]:.1f}" if k in row.compile_s else "-"
                               for k in ("kiln", "inductor", "ort"))
        print(f"| {row.name} | {_ms(row, 'kiln')} | {_ms(row, 'ort')} | "
              f"{_ms(row, 'inductor')} | {_ms(row, 'eager')} | {_ratio(row, 'ort')} | "
              f"{_ratio(row, 'inductor')} | {_ratio(row, 'eager')} | {compile_s} | "
              f"{row.err:.1e} | {_kiln_mb(row)} ({row.kiln_mb[2]:.1f}) / {row.ort_mb:.1f} | "
              f"{r.kernel_calls} calls / {r.distinct_kernels} distinct "
              f"({r.cache_hits} cached) |")


if __name__ == "__main__":
    main()
