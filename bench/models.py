"""Model benchmark: kiln vs PyTorch eager vs ONNX Runtime (CPU EP), interleaved.

    python -m bench.models [--models mlp,bert,gpt2,resnet,llama] [--rounds 15] [--threads 2]

Per model: kiln compile time, the kiln output's max error against eager, median latency
of each engine over rounds that alternate the three engines call by call (so machine
noise hits all alike), the ratios, and peak intermediate memory (kiln's memory plan vs
one buffer per intermediate). Models are built from configs with random weights.
"""
from __future__ import annotations

import argparse
import io
import statistics
import time
from dataclasses import dataclass
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


def ort_session(case: Case, threads: int):
    import onnxruntime as ort
    buf = io.BytesIO()
    torch.onnx.export(case.model, case.inputs, buf, input_names=list(case.input_names),
                      dynamo=False, opset_version=17)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(buf.getvalue(), options, providers=["CPUExecutionProvider"])
    feed = {n: t.numpy() for n, t in zip(case.input_names, case.inputs)}
    return lambda: session.run(None, feed)


def interleaved(engines: dict[str, Callable[[], Any]], rounds: int) -> dict[str, float]:
    """Median milliseconds of each engine, alternating engines call by call."""
    for fn in engines.values():        # warm up
        fn(); fn()
    times: dict[str, list[float]] = {k: [] for k in engines}
    for _ in range(rounds):
        for name, fn in engines.items():
            start = time.perf_counter()
            fn()
            times[name].append(1e3 * (time.perf_counter() - start))
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    import kiln
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mlp,bert,gpt2,resnet,llama")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for name in args.models.split(","):
        case = make_case(name)
        start = time.perf_counter()
        compiled = kiln.compile(case.model, case.inputs)
        compile_s = time.perf_counter() - start
        with torch.no_grad():
            expected = case.model(*case.inputs)
        got = compiled(*[t.numpy() for t in case.inputs])[0]
        err = float(np.max(np.abs(got - expected.numpy())))
        engines = {"kiln": lambda: compiled(*case.inputs)}
        with torch.no_grad():
            engines["eager"] = lambda: case.model(*case.inputs)
            engines["ort"] = ort_session(case, args.threads)
            ms = interleaved(engines, args.rounds)
        memory = compiled.memory({})
        rows.append((case.name, ms, compile_s, err, memory, compiled.report))
        print(f"{case.name}: kiln {ms['kiln']:.2f} ms, eager {ms['eager']:.2f} ms, "
              f"ORT {ms['ort']:.2f} ms; compile {compile_s:.1f} s; max err {err:.1e}", flush=True)
    print()
    print(f"| model | kiln ms | eager ms | ORT ms | eager/kiln | ORT/kiln | compile s "
          f"| max err | kiln peak intermediates MB (unplanned) | kernels |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, ms, compile_s, err, memory, report in rows:
        print(f"| {name} | {ms['kiln']:.2f} | {ms['eager']:.2f} | {ms['ort']:.2f} | "
              f"{ms['eager'] / ms['kiln']:.2f}x | {ms['ort'] / ms['kiln']:.2f}x | {compile_s:.1f} | "
              f"{err:.1e} | {memory.planned_bytes / 1e6:.1f} ({memory.unplanned_bytes / 1e6:.1f}) | "
              f"{report.kernel_calls} calls / {report.distinct_kernels} distinct |")


if __name__ == "__main__":
    main()
