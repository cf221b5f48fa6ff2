"""Do the runtime's worker threads keep burning CPU after a call returns?

Thread pools often spin-wait for the next parallel region instead of sleeping; after a
call returns that spinning slows whatever the process (or the machine) runs next.
For kiln (TVM's thread pool; spinning set by `TVM_THREAD_POOL_SPIN_COUNT`, which kiln's
runtime sets unless the user did, see `kiln.runtime.ffi`) and for ONNX Runtime (its
`session.intra_op.allow_spinning`, on by default), this measures, in a fresh process
per configuration:

- idle CPU: the process CPU time (all threads) consumed while the caller sleeps for
  `--idle` seconds right after a call returns (milliseconds; 200 ms of one busy core
  is 200);
- latency of back-to-back calls, and of a call made after that idle period (a pool
  that sleeps must be woken), both medians in milliseconds.

    .venv/bin/python -m bench.spin --models mlp,bert

Numbers are noisy on a shared machine; compare configurations of one run.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

SPIN_ENV = "TVM_THREAD_POOL_SPIN_COUNT"


def measure(call: Callable[[], Any], rounds: int, idle: float) -> dict[str, float]:
    """Medians over `rounds` of: latency after an idle period, back-to-back latency, and
    the CPU time the process burns while its caller sleeps `idle` s after a call."""
    for _ in range(3):                                       # warm up
        call()
    after_idle, back_to_back, idle_cpu = [], [], []
    for _ in range(rounds):
        start = time.perf_counter()
        call()
        after_idle.append(time.perf_counter() - start)
        for _ in range(3):
            start = time.perf_counter()
            call()
            back_to_back.append(time.perf_counter() - start)
        cpu = time.process_time()
        time.sleep(idle)
        idle_cpu.append(time.process_time() - cpu)
    return {"idle_cpu_ms": 1e3 * statistics.median(idle_cpu),
            "ms": 1e3 * statistics.median(back_to_back),
            "ms_after_idle": 1e3 * statistics.median(after_idle)}


def child(args: argparse.Namespace) -> None:
    """One configuration in this (fresh) process; prints one JSON line."""
    inputs = [np.load(p) for p in sorted(Path(args.dir).glob("input_*.npy"))]
    if args.child == "kiln":
        import kiln
        model = kiln.load(Path(args.dir) / "model.kiln")
        call = lambda: model(*inputs)                      # noqa: E731
    else:
        import onnxruntime as ort
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        options.inter_op_num_threads = 1
        if not args.ort_spinning:                          # ORT spins by default
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(str(Path(args.dir) / "model.onnx"), options,
                                       providers=["CPUExecutionProvider"])
        feed = {i.name: x for i, x in zip(session.get_inputs(), inputs)}
        call = lambda: session.run(None, feed)             # noqa: E731
    print(json.dumps(measure(call, args.rounds, args.idle)))


def prepare(name: str, folder: Path, threads: int) -> str:
    """Compile case `name` to folder/model.kiln, export folder/model.onnx, save inputs."""
    import torch

    import kiln
    from bench.models import make_case
    torch.set_num_threads(threads)
    case = make_case(name)
    for i, t in enumerate(case.inputs):
        np.save(folder / f"input_{i}.npy", t.numpy())
    kiln.compile(case.model, case.inputs).save(folder / "model.kiln")
    torch.onnx.export(case.model, case.inputs, str(folder / "model.onnx"),
                      input_names=list(case.input_names), dynamo=False, opset_version=17)
    return case.name


def run_child(folder: Path, engine: str, args: argparse.Namespace, *, spin: str | None = None,
              ort_spinning: bool = True) -> dict[str, float]:
    env = dict(os.environ)
    env.pop(SPIN_ENV, None)
    if spin is not None:
        env[SPIN_ENV] = spin
    env["TVM_NUM_THREADS"] = str(args.threads)
    command = [sys.executable, "-m", "bench.spin", "--child", engine, "--dir", str(folder),
               "--rounds", str(args.rounds), "--idle", str(args.idle),
               "--threads", str(args.threads)] + (["--ort-spinning"] if ort_spinning else [])
    done = subprocess.run(command, env=env, capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parent.parent)
    if done.returncode:
        raise SystemExit(f"{engine} child failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mlp")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--idle", type=float, default=0.2, help="seconds asleep after a call")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3,
                        help="passes over the configurations, interleaved; medians reported")
    parser.add_argument("--spin-counts", default="300000",
                        help="TVM_THREAD_POOL_SPIN_COUNT values to compare with kiln's default "
                             "(TVM's own default is 300000)")
    parser.add_argument("--child", choices=("kiln", "ort"), help=argparse.SUPPRESS)
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    parser.add_argument("--ort-spinning", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    from kiln.runtime.ffi import DEFAULT_SPIN_COUNT
    configs = [(f"kiln (default: spin count {DEFAULT_SPIN_COUNT})", "kiln", None, True)]
    configs += [(f"kiln, spin count {n}", "kiln", n, True)
                for n in args.spin_counts.split(",") if n]
    configs += [("ORT (default: allow_spinning=1)", "ort", None, True),
                ("ORT, allow_spinning=0", "ort", None, False)]
    print(f"| model | engine | idle CPU ms in {1e3 * args.idle:.0f} ms after a call | "
          "ms back-to-back | ms after idle |")
    print("|---|---|---|---|---|")
    for name in args.models.split(","):
        with tempfile.TemporaryDirectory(prefix="kiln-spin-") as tmp:
            title = prepare(name, Path(tmp), args.threads)
            runs: dict[str, list[dict[str, float]]] = {c[0]: [] for c in configs}
            for _ in range(args.repeats):
                for label, engine, spin, ort_spinning in configs:
                    runs[label].append(run_child(Path(tmp), engine, args, spin=spin,
                                                 ort_spinning=ort_spinning))
            for label, results in runs.items():
                r = {k: statistics.median(x[k] for x in results) for k in results[0]}
                print(f"| {title} | {label} | {r['idle_cpu_ms']:.1f} | {r['ms']:.2f} | "
                      f"{r['ms_after_idle']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
