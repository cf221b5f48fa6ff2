"""ONNX's node conformance tests (`onnx.backend.test`, built in memory from
`onnx/backend/test/case/node`) through kiln and ONNX Runtime, side by side.

    python -m kiln.frontend.onnx.conformance [-k SUBSTRING] [--modes interpret,compile,ort]
                                             [--write-xfail] [--details]

Each case runs through (1) kiln's reference interpreter, (2) kiln compiled with TVM on
the CPU, (3) ONNX Runtime, and ends as one of:
  pass         every output matches the expected one (dtype, shape, values within the
               case's rtol/atol, as ONNX's own backend test runner checks them)
  unsupported  kiln refused the model with its UnsupportedOpsError (op, attribute or
               dtype it does not implement) — an honest "no"
  error        any other exception
  imprecise    float16 outputs outside the case's tolerance but within 4 ulps of the
               expected ones: kiln computes half-precision math in float32 and rounds
               once, ONNX's reference rounds after every step (an expected failure,
               listed with its reason, not a wrong answer)
  wrong        kiln returned outputs that do not match: the one outcome never allowed
  timeout      (isolated runs) the case did not finish within the per-case time limit;
               its worker process is killed and replaced
  crash        (isolated runs) the worker process died running the case (a signal)

`--modes compile` runs every case in worker processes (`--workers`, default 2) with a
per-case time limit (`--timeout`, default 300 s): one stuck or crashing case cannot
stall or end the run.

The expected-failure list (`conformance_xfail.txt` beside this file) names every
case kiln does not pass, per mode, with the reason; `--write-xfail` regenerates it.
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import onnx

XFAIL_FILE = Path(__file__).with_name("conformance_xfail.txt")
MODES = ("interpret", "compile", "ort")
KILN_MODES = ("interpret", "compile")


@dataclass(frozen=True)
class Outcome:
    status: str    # pass | unsupported | imprecise | error | wrong | timeout | crash
    reason: str = ""


@lru_cache(maxsize=1)
def node_cases() -> tuple:
    """Every node test case of the installed onnx, by name order."""
    from onnx.backend.test.case.node import collect_testcases
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        cases = collect_testcases(None)
    return tuple(sorted(cases, key=lambda c: c.name))


def compare(case, outputs: Iterable, expected: Iterable) -> str | None:
    """None when the outputs match, else what differs. The same check as ONNX's own
    backend test runner (`Runner.assert_similar_outputs`): shape, dtype, then
    `assert_allclose` with the case's rtol/atol (at least two ulps for bfloat16)."""
    outputs, expected = list(outputs), list(expected)
    if len(outputs) != len(expected):
        return f"{len(outputs)} outputs, expected {len(expected)}"
    for i, (got, want) in enumerate(zip(outputs, expected)):
        if isinstance(want, (list, tuple, dict)) or want is None:
            return f"output {i}: expected a {type(want).__name__}, not a tensor"
        got, want = np.asarray(got), np.asarray(want)
        if got.shape != want.shape:
            return f"output {i}: shape {list(got.shape)}, expected {list(want.shape)}"
        if got.dtype != want.dtype:
            return f"output {i}: dtype {got.dtype}, expected {want.dtype}"
        rtol = case.rtol
        if want.dtype.name == "bfloat16":
            rtol = max(rtol, 2 ** -6)
            got, want = got.astype(np.float32), want.astype(np.float32)
        try:
            np.testing.assert_allclose(got, want, rtol=rtol, atol=case.atol)
        except AssertionError as e:
            detail = " ".join(line.strip() for line in str(e).splitlines()[2:5])
            ulps = _half_ulps(got, want)
            if ulps is not None and ulps <= HALF_ULPS:
                return f"{IMPRECISE} output {i}: {detail} ({ulps} ulps)"
            return f"output {i}: {detail}"
    return None


IMPRECISE = "imprecise:"
HALF_ULPS = 4


def _half_ulps(got: np.ndarray, want: np.ndarray) -> int | None:
    """For float16 outputs: the largest difference in units in the last place."""
    if got.dtype != np.float16 or want.dtype != np.float16 or \
            not np.array_equal(np.isnan(got), np.isnan(want)):
        return None
    a, b = got.view(np.int16).astype(np.int64), want.view(np.int16).astype(np.int64)
    a = np.where(a < 0, -(a & 0x7FFF), a)     # sign-magnitude -> a monotonic integer line
    b = np.where(b < 0, -(b & 0x7FFF), b)
    finite = ~np.isnan(got)
    return int(np.max(np.abs(a - b)[finite], initial=0))


def _kiln_runner(mode: str) -> Callable:
    from .backend import KilnBackend

    def run(case, inputs):
        return KilnBackend.prepare(case.model, mode=mode).run(inputs)
    return run


def _ort_runner() -> Callable:
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.log_severity_level = 4
    options.intra_op_num_threads = 1

    def run(case, inputs):
        session = ort.InferenceSession(case.model.SerializeToString(), options,
                                       providers=["CPUExecutionProvider"])
        feeds = {i.name: v for i, v in zip(session.get_inputs(), inputs)}
        return session.run(None, feeds)
    return run


def run_case(case, mode: str, runner: Callable | None = None) -> Outcome:
    """One case through one mode."""
    from ...errors import UnsupportedOpsError
    runner = runner or (_ort_runner() if mode == "ort" else _kiln_runner(mode))
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            for inputs, expected in case.data_sets:
                problem = compare(case, runner(case, [_array(v) for v in inputs]),
                                  [_array(v) for v in expected])
                if problem and problem.startswith(IMPRECISE):
                    return Outcome("imprecise", problem.removeprefix(IMPRECISE).strip())
                if problem:
                    return Outcome("wrong", problem)
    except UnsupportedOpsError as e:
        return Outcome("unsupported", _unsupported_reason(e))
    except Exception as e:  # noqa: BLE001  every other failure is an "error" outcome
        return Outcome("error", f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                       [:200])
    return Outcome("pass")


def _array(value):
    """A case's tensor as NumPy (some cases hold TensorProtos, as the .pb files do)."""
    return onnx.numpy_helper.to_array(value) if isinstance(value, onnx.TensorProto) else value


def _unsupported_reason(e) -> str:
    keys = sorted(e.ops)
    return "unsupported: " + "; ".join(keys)[:300]


def run_cases(cases, mode: str, progress: bool = False) -> dict[str, Outcome]:
    runner = _ort_runner() if mode == "ort" else _kiln_runner(mode)
    out = {}
    for i, case in enumerate(cases):
        out[case.name] = run_case(case, mode, runner)
        if progress and i % 100 == 99:
            print(f"  {mode}: {i + 1}/{len(cases)}", file=sys.stderr)
    return out



CASE_TIMEOUT = 300.0      # seconds one isolated case may take (compiling included)
STARTUP_TIMEOUT = 300.0   # seconds a worker may take to import kiln, TVM and the cases


def _worker(conn, mode: str) -> None:
    """A worker process: receive case names, send back (name, Outcome); None ends it."""
    cases = {c.name: c for c in node_cases()}
    runner = _ort_runner() if mode == "ort" else _kiln_runner(mode)
    conn.send(("ready", None))
    while (name := conn.recv()) is not None:
        conn.send((name, run_case(cases[name], mode, runner)))


@dataclass
class _Slot:
    """One worker process and the case it is running."""
    process: object
    conn: object
    case: str | None = None
    started: float = 0.0


def run_cases_isolated(cases, mode: str, *, workers: int = 2, timeout: float = CASE_TIMEOUT,
                       progress: bool = False) -> dict[str, Outcome]:
    """`run_cases`, each case in one of `workers` spawned processes: a case still running
    after `timeout` seconds is a "timeout" (its worker is killed and replaced), a worker
    that dies is a "crash". Spawned, not forked: the workers start with no threads."""
    import multiprocessing
    from multiprocessing.connection import wait

    from ...errors import KilnError
    context = multiprocessing.get_context("spawn")
    todo = [c.name for c in reversed(cases)]
    out: dict[str, Outcome] = {}

    def start() -> _Slot:
        parent, child = context.Pipe()
        process = context.Process(target=_worker, args=(child, mode))   # not a daemon: kiln
        # compiles kernels in child processes of its own
        process.start()
        child.close()
        return _Slot(process, parent)

    def up(slot: _Slot) -> _Slot:
        """Wait for the worker's imports (not counted in any case's time)."""
        if not slot.conn.poll(STARTUP_TIMEOUT):
            raise KilnError(f"a conformance worker did not start within {STARTUP_TIMEOUT} s")
        slot.conn.recv()
        return slot

    def feed(slot: _Slot) -> None:
        slot.case = todo.pop() if todo else None
        slot.started = time.monotonic()
        if slot.case is not None:
            slot.conn.send(slot.case)

    def finish(slot: _Slot, outcome: Outcome) -> None:
        out[slot.case] = outcome
        if progress and len(out) % 100 == 0:
            print(f"  {mode}: {len(out)}/{len(cases)}", file=sys.stderr)

    slots = [up(slot) for slot in [start() for _ in range(min(workers, len(cases)))]]
    for slot in slots:
        feed(slot)
    while any(slot.case is not None for slot in slots):
        busy = [slot for slot in slots if slot.case is not None]
        ready = wait([slot.conn for slot in busy] + [slot.process.sentinel for slot in busy],
                     timeout=1.0)
        for i, slot in enumerate(slots):
            if slot.case is None:
                continue
            if slot.conn in ready:
                try:
                    name, outcome = slot.conn.recv()
                except EOFError:
                    ready.append(slot.process.sentinel)
                else:
                    finish(slot, outcome)
                    feed(slot)
                    continue
            elapsed = time.monotonic() - slot.started
            died = slot.process.sentinel in ready or not slot.process.is_alive()
            if died or elapsed > timeout:
                slot.process.kill()
                slot.process.join()
                finish(slot, Outcome("crash", f"worker exited with code {slot.process.exitcode}")
                       if died else Outcome("timeout", f"not done after {timeout:g} s"))
                slot.conn.close()
                slot.case = None
                if todo:
                    slots[i] = up(start())
                    feed(slots[i])
    for slot in slots:
        if slot.process.is_alive():
            slot.conn.send(None)
        slot.process.join(timeout=10)
        if slot.process.is_alive():
            slot.process.kill()
    return out


# --- expected failures ---------------------------------------------------------------------
def read_xfail(path: Path = XFAIL_FILE) -> dict[str, dict[str, str]]:
    """mode -> {case: reason}. A line is `case<TAB>modes<TAB>reason` (modes: interpret,compile)."""
    out: dict[str, dict[str, str]] = {m: {} for m in KILN_MODES}
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        case, modes, reason = line.split("\t", 2)
        for m in modes.split(","):
            out[m][case] = reason
    return out


def write_xfail(results: dict[str, dict[str, Outcome]], path: Path = XFAIL_FILE) -> None:
    lines = ["# kiln's expected failures on ONNX's node conformance tests, one case a line:",
             "# case<TAB>modes it fails in<TAB>reason. Regenerate with",
             "#   python -m kiln.frontend.onnx.conformance --write-xfail",
             "# and review the diff: no case may fail with a wrong answer."]
    cases = sorted({c for m in KILN_MODES for c, o in results.get(m, {}).items()
                    if o.status != "pass"})
    for case in cases:
        modes = [m for m in KILN_MODES if results.get(m, {}).get(case, Outcome("pass")).status
                 != "pass"]
        first = results[modes[0]][case]
        lines.append(f"{case}\t{','.join(modes)}\t{first.status}: {first.reason}"
                     if not first.reason.startswith("unsupported") else
                     f"{case}\t{','.join(modes)}\t{first.reason}")
    path.write_text("\n".join(lines) + "\n")


# --- op coverage ---------------------------------------------------------------------------
def op_coverage() -> tuple[list[str], list[str]]:
    """(supported, unsupported) default-domain ONNX ops of the installed onnx's schemas."""
    from .importer import CONVERTERS, SUBGRAPH_OPS
    names = sorted({s.name for s in onnx.defs.get_all_schemas() if s.domain in ("", "ai.onnx")
                    and not s.deprecated})
    supported = [n for n in names if n in CONVERTERS and n not in SUBGRAPH_OPS]
    return supported, [n for n in names if n not in supported]


# --- report --------------------------------------------------------------------------------
def report(results: dict[str, dict[str, Outcome]], details: bool = False) -> str:
    modes = [m for m in MODES if m in results]
    names = sorted(set().union(*(results[m] for m in modes)))
    lines = [f"ONNX node conformance: {len(names)} cases (onnx {onnx.__version__})", ""]
    header = f"{'':<14}" + "".join(f"{m:>12}" for m in modes)
    lines.append(header)
    for status in ("pass", "unsupported", "imprecise", "error", "timeout", "crash", "wrong"):
        counts = [sum(1 for o in results[m].values() if o.status == status) for m in modes]
        lines.append(f"{status:<14}" + "".join(f"{c:>12}" for c in counts))
    if "ort" in results:
        ort_pass = {c for c, o in results["ort"].items() if o.status == "pass"}
        lines.append("")
        for m in KILN_MODES:
            if m in results:
                both = sum(1 for c in ort_pass if results[m].get(c, Outcome("x")).status == "pass")
                lines.append(f"kiln {m} passes {both} of the {len(ort_pass)} cases ONNX Runtime "
                             f"passes: {100 * both / max(len(ort_pass), 1):.1f}%")
    for m in KILN_MODES:
        if m not in results:
            continue
        reasons = Counter(_category(o) for o in results[m].values() if o.status != "pass")
        lines.append(f"\n{m}: failures by reason")
        for reason, n in reasons.most_common(None if details else 40):
            lines.append(f"  {n:5d}  {reason}")
    supported, unsupported = op_coverage()
    total = len(supported) + len(unsupported)
    lines.append(f"\nop coverage: {len(supported)} of {total} default-domain ONNX ops "
                 f"({100 * len(supported) / total:.0f}%)")
    lines.append(f"  supported:   {' '.join(supported)}")
    lines.append(f"  unsupported: {' '.join(unsupported)}")
    return "\n".join(lines)


def _category(o: Outcome) -> str:
    if o.status == "unsupported":
        first = o.reason.removeprefix("unsupported: ").split("; ")[0]
        return "unsupported " + first.split(" (")[0][:90]
    return f"{o.status}: {o.reason[:90]}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kiln.frontend.onnx.conformance")
    parser.add_argument("-k", default="", help="only cases whose name contains this")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--write-xfail", action="store_true",
                        help=f"rewrite {XFAIL_FILE.name} from this run (all cases, kiln modes)")
    parser.add_argument("--details", action="store_true", help="every failure reason")
    parser.add_argument("--workers", type=int, default=2,
                        help="worker processes for the compile mode")
    parser.add_argument("--timeout", type=float, default=CASE_TIMEOUT,
                        help="seconds one compiled case may take")
    args = parser.parse_args(argv)
    cases = [c for c in node_cases() if args.k in c.name]
    results: dict[str, dict[str, Outcome]] = {}
    for mode in args.modes.split(","):
        start = time.perf_counter()
        results[mode] = run_cases_isolated(cases, mode, workers=args.workers,
                                           timeout=args.timeout, progress=True) \
            if mode == "compile" else run_cases(cases, mode, progress=True)
        print(f"{mode}: {len(cases)} cases in {time.perf_counter() - start:.1f} s",
              file=sys.stderr)
    print(report(results, args.details))
    if args.write_xfail:
        write_xfail(results)
    wrong = [(m, c, o.reason) for m in KILN_MODES if m in results
             for c, o in results[m].items() if o.status == "wrong"]
    for m, c, reason in wrong:
        print(f"WRONG ANSWER [{m}] {c}: {reason}")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
