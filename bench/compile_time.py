"""Compile-time benchmark: a cold compile (empty kernel cache) against a warm one (the
cache the cold compile filled), per benchmark model of `bench.models`.

    python -m bench.compile_time [--models mlp,bert,gpt2,resnet,llama] [--cores N]

Each model is imported from torch once and saved as `.kir` + weights; then each
compile runs in a fresh process (`kiln.compile(path.kir, cache_dir=...)`, the default
pass pipeline), as a user's second `kiln compile` would, so the cold figure includes
importing TVM and the warm one shows what the cache spares. Printed per model: the
codegen stage (keys, cache, lowering, LLVM, link) and the whole compile after import,
cold and warm, and warm/cold. `--cores 1` pins the compiling processes to one core
(the build then compiles its kernels one at a time instead of in parallel).
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


def compile_once(kir: Path, cache_dir: Path, cores: int | None) -> dict:
    """Compile `kir` in a fresh process; its report as a dict."""
    command = [sys.executable, "-m", "bench.compile_time", "--child", str(kir), str(cache_dir)]
    if cores:
        command += ["--cores", str(cores)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"compiling {kir} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def child(kir: str, cache_dir: str, cores: int | None) -> None:
    if cores:
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:cores])
    import kiln
    start = time.perf_counter()
    compiled = kiln.compile(kir, cache_dir=cache_dir)
    total = time.perf_counter() - start
    r = compiled.report
    print(json.dumps({"total": total, "codegen": r.seconds["codegen"], "hits": r.cache_hits,
                      "misses": r.cache_misses, "kernels": r.distinct_kernels}))


def save_model(name: str, folder: Path) -> tuple[str, Path]:
    """Import a benchmark model from torch once; its title and `.kir` path."""
    from bench.models import make_case
    from kiln.frontend.torch import import_model
    from kiln.ir import save
    case = make_case(name)
    path = folder / f"{name}.kir"
    save(import_model(case.model, case.inputs), path)
    return case.name, path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mlp,bert,gpt2,resnet,llama")
    parser.add_argument("--cores", type=int, default=None,
                        help="pin each compile to this many cores (default: all allowed)")
    parser.add_argument("--child", nargs=2, metavar=("KIR", "CACHE_DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child, args.cores)
        return
    rows = []
    with tempfile.TemporaryDirectory(prefix="kiln-compile-time-") as tmp:
        for name in args.models.split(","):
            title, kir = save_model(name, Path(tmp))
            cache = Path(tmp) / f"cache-{name}"          # empty: a cold compile
            cold = compile_once(kir, cache, args.cores)
            warm = compile_once(kir, cache, args.cores)
            rows.append((title, cold, warm))
            print(f"{title}: codegen cold {cold['codegen']:.2f} s, warm {warm['codegen']:.2f} s "
                  f"({warm['codegen'] / cold['codegen']:.1%}); compile cold {cold['total']:.1f} s,"
                  f" warm {warm['total']:.1f} s; {cold['kernels']} kernels, warm hits "
                  f"{warm['hits']}/{warm['kernels']}", flush=True)
    print()
    print("| model | kernels | codegen cold s | codegen warm s | warm/cold | compile cold s "
          "| compile warm s | warm/cold |")
    print("|---|---|---|---|---|---|---|---|")
    for title, cold, warm in rows:
        print(f"| {title} | {cold['kernels']} | {cold['codegen']:.2f} | {warm['codegen']:.2f} | "
              f"{warm['codegen'] / cold['codegen']:.1%} | {cold['total']:.1f} | "
              f"{warm['total']:.1f} | {warm['total'] / cold['total']:.1%} |")


if __name__ == "__main__":
    main()
