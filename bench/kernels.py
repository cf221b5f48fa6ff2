"""Per-kernel profile of compiled benchmark models: where the time goes, and how close
each kernel runs to the machine's memory bandwidth (or, for contractions, what
GFLOP/s it reaches).

    python -m bench.kernels --models bert,gpt2,llama,resnet [--top 25] [--threads 2]
                            [--save profile.json]

Per model (`bench.models.make_case`, compiled by `kiln.compile` with the default
pipeline): the plan runs once, then walks its steps in order, each step timed in
place on the executor's own buffers (`Executor.step_arguments`), so every kernel
reads the values the steps before it left (masks, -inf, ...). A step is called until
about `--budget` seconds have passed (at least 5 calls) and its median call counts.
Repeated calls find their data in cache, so small kernels look faster here than
inside a whole run; the sum of the steps is printed beside a whole run's median.

Per distinct kernel: calls, total ms, share of the model, bytes per call (its
buffers: inputs read + outputs written, weights included), achieved GB/s (GFLOP/s
for contractions: matmul, linear, conv, attention and groups built on them), the
`.kir` line it was compiled from, and flags read from its machine code in the
model's kernels.so (`objdump -d`): `gather` (vgather*/vscatter*: LLVM could not
vectorize contiguously) and `libm:<name>` (a scalar math call per element). The
reference is this machine's copy bandwidth: NumPy copying 8 MB (read + write) on one
thread and on two threads at once.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import subprocess
import threading
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .models import make_case

CONTRACTIONS = frozenset({"matmul", "linear", "linear_packed", "conv", "conv_packed",
                          "scaled_dot_product_attention"})
_PICKING = frozenset({"gather", "index", "gather_elements"})   # read rows of input 0
_GATHER = re.compile(r"\b(v(p)?gather\w+|v(p)?scatter\w+)")
_LIBM = re.compile(r"call\s+\S+\s+<([a-z0-9_]+?)(?:@plt)?>")
_LIBM_NAMES = frozenset({"expf", "exp", "logf", "log", "log1pf", "log1p", "powf", "pow",
                         "tanhf", "tanh", "erff", "erf", "sinf", "sin", "cosf", "cos",
                         "tanf", "tan", "sinhf", "sinh", "coshf", "cosh", "fmodf", "fmod",
                         "atan2f", "atan2", "asinf", "acosf", "atanf", "asinhf", "acoshf",
                         "atanhf", "expm1f", "expm1", "sqrtf", "sqrt", "exp2f", "roundf",
                         "nearbyintf", "truncf", "floorf", "ceilf"})


@dataclass
class StepTime:
    kernel: str
    seconds: float            # median of one call
    nbytes: int               # buffers read and written
    flops: float | None       # contractions only
    source: str


@dataclass
class KernelRow:
    kernel: str
    calls: int = 0
    seconds: float = 0.0
    nbytes: int = 0                 # per call (the first step's)
    flops: float | None = None      # per call
    source: str = ""
    flags: list[str] = field(default_factory=list)

    @property
    def contraction(self) -> bool:
        return self.flops is not None

    def rate(self) -> str:
        per_call = self.seconds / self.calls
        if self.contraction:
            return f"{self.flops / per_call / 1e9:7.1f} GFLOP/s"
        return f"{self.nbytes / per_call / 1e9:7.1f} GB/s   "


@dataclass
class ModelProfile:
    name: str
    run_ms: float                 # median of whole runs
    rows: list[KernelRow]
    copy_gbs: tuple[float, float]

    @property
    def total_s(self) -> float:
        return sum(r.seconds for r in self.rows)

    def share(self, contraction: bool) -> float:
        return sum(r.seconds for r in self.rows if r.contraction == contraction) / self.total_s


# --- measuring ---------------------------------------------------------------------------
def copy_bandwidth(megabytes: int = 8, threads: int = 1, rounds: int = 30) -> float:
    """GB/s (bytes read + written) of NumPy copying `megabytes` per thread, `threads`
    copies at once (NumPy releases the GIL while it copies)."""
    n = megabytes * (1 << 20) // 4
    pairs = [(np.ones(n, np.float32), np.empty(n, np.float32)) for _ in range(threads)]
    best = math.inf
    for _ in range(rounds):
        barrier = threading.Barrier(threads)

        def work(src: np.ndarray, dst: np.ndarray) -> None:
            barrier.wait()
            np.copyto(dst, src)
        workers = [threading.Thread(target=work, args=p) for p in pairs]
        start = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        best = min(best, time.perf_counter() - start)
    return 2 * n * 4 * threads / best / 1e9


def time_call(fn: Any, args: list[Any], budget: float) -> float:
    """Median seconds of `fn(*args)`, called for about `budget` seconds (>= 5 calls)."""
    fn(*args)
    times: list[float] = []
    spent = 0.0
    while len(times) < 5 or spent < budget:
        start = time.perf_counter()
        fn(*args)
        t = time.perf_counter() - start
        times.append(t)
        spent += t
        if len(times) >= 2000:
            break
    return statistics.median(times)


def _nbytes(tensor: Any) -> int:
    return math.prod(tensor.shape) * np.dtype(_numpy_dtype(str(tensor.dtype))).itemsize


def _numpy_dtype(name: str) -> str:
    return "uint16" if name == "bfloat16" else ("bool" if name == "bool" else name)


def profile_steps(compiled: Any, inputs: list[np.ndarray], budget: float) -> list[StepTime]:
    """Each step of `compiled`'s plan timed in place (see the module docstring)."""
    executor = compiled._executor            # the one place that reads CompiledModel internals
    prepared = executor.prepare(*inputs)
    nodes = {v.name: n for n in compiled.graph.nodes for v in n.outputs}
    out: list[StepTime] = []
    for step, kernel, args in executor.step_arguments(prepared):
        seconds = time_call(kernel, args, budget)
        flops = node_flops(nodes[step.outputs[0]])
        out.append(StepTime(step.kernel, seconds, moved_bytes(nodes[step.outputs[0]], args),
                            flops, step.source.split("  # from")[0]))
    return out


def moved_bytes(node: Any, args: list[Any]) -> int:
    """The bytes a call reads and writes: its buffers, except that a table a gather
    picks rows from (an embedding) counts as much as the gather's output."""
    sizes = [_nbytes(a) for a in args]
    if node.op in _PICKING:
        out = sum(sizes[len(node.inputs):])
        sizes[0] = min(sizes[0], out)
    return sum(sizes)


def node_flops(node: Any) -> float | None:
    """Multiply-add FLOPs (2 per MAC) of a contraction node or of the contractions in a
    fused group; None when it has none (or a dim is symbolic)."""
    members = list(node.body.nodes) if node.body is not None else [node]
    total, found = 0.0, False
    for m in members:
        if m.op not in CONTRACTIONS:
            continue
        shapes = [tuple(v.type.shape) for v in m.inputs] + [tuple(m.outputs[0].type.shape)]
        if any(not isinstance(d, int) for s in shapes for d in s):
            return None
        found = True
        out = math.prod(shapes[-1])
        if m.op in ("matmul", "linear", "linear_packed"):
            total += 2.0 * out * shapes[0][-1]
        elif m.op == "conv":
            total += 2.0 * out * math.prod(shapes[1][1:])
        elif m.op == "conv_packed":
            total += 2.0 * out * shapes[0][1] * math.prod(m.attrs["kernel"])
        else:   # attention: q k^T then p v
            q, k, v = shapes[0], shapes[1], shapes[2]
            total += 2.0 * math.prod(q[:-1]) * k[-2] * (q[-1] + v[-1])
    return total if found else None


# --- machine code ------------------------------------------------------------------------
def asm_flags(library: Path) -> dict[str, list[str]]:
    """Kernel name -> flags ("gather", "libm:expf") from the library's disassembly; every
    function whose symbol starts with the kernel's name (its compute function and
    parallel lambdas) counts."""
    text = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(library)],
                          capture_output=True, text=True, check=True).stdout
    flags: dict[str, set[str]] = defaultdict(set)
    function = None
    for line in text.splitlines():
        head = re.match(r"^[0-9a-f]+ <(.+)>:$", line)
        if head:
            name = head.group(1)
            match = re.match(r"(k_[a-z_]+_[0-9a-f]{16})", name)
            function = match.group(1) if match else None
            continue
        if function is None:
            continue
        if _GATHER.search(line):
            flags[function].add("gather")
        call = _LIBM.search(line)
        if call and call.group(1) in _LIBM_NAMES:
            flags[function].add(f"libm:{call.group(1)}")
    return {k: sorted(v) for k, v in flags.items()}


# --- one model ---------------------------------------------------------------------------
def profile_model(name: str, budget: float, rounds: int) -> ModelProfile:
    import kiln
    case = make_case(name)
    compiled = kiln.compile(case.model, case.inputs)
    inputs = [t.numpy() for t in case.inputs]
    runs = []
    compiled(*inputs)
    for _ in range(rounds):
        start = time.perf_counter()
        compiled(*inputs)
        runs.append(time.perf_counter() - start)
    steps = profile_steps(compiled, inputs, budget)
    flags = asm_flags(compiled.library)
    rows: dict[str, KernelRow] = {}
    for s in steps:
        row = rows.setdefault(s.kernel, KernelRow(s.kernel, nbytes=s.nbytes, flops=s.flops,
                                                  source=s.source,
                                                  flags=flags.get(s.kernel, [])))
        row.calls += 1
        row.seconds += s.seconds
    return ModelProfile(case.name, 1e3 * statistics.median(runs),
                        sorted(rows.values(), key=lambda r: -r.seconds), (0.0, 0.0))


def print_profile(p: ModelProfile, top: int, width: int) -> None:
    total = p.total_s
    print(f"\n== {p.name}: whole run {p.run_ms:.2f} ms (median); steps timed one by one "
          f"{1e3 * total:.2f} ms; contractions {100 * p.share(True):.1f}%, other "
          f"{100 * p.share(False):.1f}%; {sum(r.calls for r in p.rows)} calls, "
          f"{len(p.rows)} kernels")
    print(f"{'calls':>5} {'total ms':>9} {'share':>6} {'MB/call':>8} {'rate':>15}  "
          f"flags / source")
    for r in p.rows[:top]:
        flags = f"[{' '.join(r.flags)}] " if r.flags else ""
        source = r.source if len(r.source) <= width else r.source[:width - 3] + "..."
        print(f"{r.calls:5d} {1e3 * r.seconds:9.3f} {100 * r.seconds / total:5.1f}% "
              f"{r.nbytes / 1e6:8.2f} {r.rate()}  {flags}{source}")
    flagged = [r for r in p.rows if r.flags]
    if flagged:
        print(f"  flagged kernels: {len(flagged)} "
              f"({1e3 * sum(r.seconds for r in flagged):.2f} ms): "
              + ", ".join(f"{r.kernel}[{' '.join(r.flags)}]" for r in flagged))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="bert,gpt2,llama,resnet")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--threads", type=int, default=2, help="torch's threads (the model "
                        "is built and exported with torch; kiln's pool: TVM_NUM_THREADS)")
    parser.add_argument("--budget", type=float, default=0.03,
                        help="seconds of calls per step")
    parser.add_argument("--rounds", type=int, default=10, help="whole runs timed")
    parser.add_argument("--width", type=int, default=110, help="characters of .kir source")
    parser.add_argument("--save", type=Path, help="write the profiles as JSON")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    copy = (copy_bandwidth(threads=1), copy_bandwidth(threads=2))
    print(f"copy bandwidth (NumPy, 8 MB, read + write): 1 thread {copy[0]:.1f} GB/s, "
          f"2 threads {copy[1]:.1f} GB/s")
    profiles = []
    for name in args.models.split(","):
        p = profile_model(name, args.budget, args.rounds)
        p.copy_gbs = copy
        print_profile(p, args.top, args.width)
        profiles.append(p)
    print("\n| model | whole run ms | steps ms | contractions ms (%) | other ms (%) |")
    print("|---|---|---|---|---|")
    for p in profiles:
        c = sum(r.seconds for r in p.rows if r.contraction)
        o = p.total_s - c
        print(f"| {p.name} | {p.run_ms:.2f} | {1e3 * p.total_s:.2f} | {1e3 * c:.2f} "
              f"({100 * c / p.total_s:.0f}%) | {1e3 * o:.2f} ({100 * o / p.total_s:.0f}%) |")
    if args.save:
        args.save.write_text(json.dumps([asdict(p) for p in profiles], indent=1))


if __name__ == "__main__":
    main()
