"""Compile-time benchmark: a cold compile (empty caches) against a warm one (the caches
the cold compile filled), per benchmark model of `bench.models`, from torch.

    python -m bench.compile_time [--models mlp,bert,gpt2,resnet,llama] [--cores N]

Each compile runs in a fresh process, as a user's second run would: the process
builds the model (random weights, seed 0; not timed) and times
`kiln.compile(model, example_inputs, cache_dir=...)` with the default pass pipeline.
The cold compile starts from an empty cache folder, so it includes importing TVM,
torch.export, the passes and compiling every kernel; the warm one finds the model's
optimized graph in the graph cache (frontend/model_cache.py) and every kernel in the
kernel cache. Printed per model: each stage's seconds, cold and warm, and warm/cold.
`--cores 1` pins the compiling processes to one core (the build then compiles its
kernels one at a time instead of in parallel).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def compile_once(name: str, cache_dir: Path, cores: int | None) -> dict:
    """Compile benchmark model `name` in a fresh process; its report as a dict."""
    command = [sys.executable, "-m", "bench.compile_time", "--child", name, str(cache_dir)]
    if cores:
        command += ["--cores", str(cores)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"compiling {name} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def child(name: str, cache_dir: str, cores: int | None) -> None:
    if cores:
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:cores])
    import torch
    torch.set_num_threads(cores or len(os.sched_getaffinity(0)))
    from bench.models import make_case

    import kiln
    case = make_case(name)
    start = time.perf_counter()
    compiled = kiln.compile(case.model, case.inputs, cache_dir=cache_dir)
    total = time.perf_counter() - start
    r = compiled.report
    print(json.dumps({"title": case.name, "total": total, "stages": r.seconds,
                      "hits": r.cache_hits, "misses": r.cache_misses,
                      "kernels": r.distinct_kernels, "graph_cache": r.graph_cache}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mlp,bert,gpt2,resnet,llama")
    parser.add_argument("--cores", type=int, default=None,
                        help="pin each compile to this many cores (default: all allowed)")
    parser.add_argument("--child", nargs=2, metavar=("MODEL", "CACHE_DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child, args.cores)
        return
    rows = []
    with tempfile.TemporaryDirectory(prefix="kiln-compile-time-") as tmp:
        for name in args.models.split(","):
            cache = Path(tmp) / f"cache-{name}"          # empty: a cold compile
            cold = compile_once(name, cache, args.cores)
            warm = compile_once(name, cache, args.cores)
            rows.append((cold, warm))
            stages = lambda r: ", ".join(f"{k} {v:.2f}" for k, v in r["stages"].items())  # noqa: E731
            print(f"{cold['title']}: cold {cold['total']:.2f} s ({stages(cold)}; graph cache "
                  f"{cold['graph_cache']}), warm {warm['total']:.2f} s ({stages(warm)}; graph "
                  f"cache {warm['graph_cache']}, kernel hits {warm['hits']}/{warm['kernels']})",
                  flush=True)
    print()
    print("| model | kernels | compile cold s | of which codegen | compile warm s | warm/cold |")
    print("|---|---|---|---|---|---|")
    for cold, warm in rows:
        print(f"| {cold['title']} | {cold['kernels']} | {cold['total']:.2f} | "
              f"{cold['stages'].get('codegen', 0):.2f} | {warm['total']:.2f} | "
              f"{warm['total'] / cold['total']:.1%} |")


if __name__ == "__main__":
    main()
