"""The tuner: measures the template's candidate knobs on each contraction workload of a
graph and records the fastest in the tuning database (tuning.py).

    tune_graph(graph, db, rounds=5) -> list[Tuned]     (`kiln tune MODEL` calls it)

For each distinct static contraction (conv, conv_packed, conv_nchwc, conv_winograd,
linear, linear_packed, matmul; a fused group's member, without its epilogue), every
candidate (`candidates`: the conv strategies it can take times rows per tile 4, 5, 6;
for conv_nchwc and conv_winograd their register tiles; and the heuristics)
is compiled on its own and called on random inputs of its types. The candidates
alternate round by round; each one's time is the best over the rounds of a batch of
calls lasting about `budget` seconds (the minimum: noise only ever adds). A candidate
replaces the heuristics only when it is at least `MIN_GAIN` faster, so the database
does not chase noise. Workloads already in the database are skipped unless
`retune`.

    tune_in_model(graph, steps, db) -> list[Tuned]      (`python -m bench.tune --in-model`)

measures the candidates where the model runs them instead: a kernel alone, called
back to back, finds its inputs and weights in cache, which a model's kernel does not
(its input was just written, partly by the other core; its weights were evicted since
the last call). On ResNet-50's 56x56 256 -> 64 conv the hot measurement chose a 6 x 2
register tile that took 18-24% longer in the model than the heuristics' 4 x 4. Each
candidate's kernels replace the model's own in the compiled model's step sequence,
which runs whole once per candidate and round; a candidate's time is the median over
the rounds of its workload's steps.
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import tvm

from ...ir import Graph, Node
from ...ir.registry import CONTRACTION
from ...runtime import dtypes
from ...runtime.ffi import ensure_tvm_runtime
from .lower import lower_node
from .target import cpu_target
from .tuning import STRATEGIES, Knobs, Record, TuningDatabase, forcing, workload_key

TUNABLE = frozenset({"conv", "conv_packed", "conv_nchwc", "conv_winograd", "linear",
                     "linear_packed", "matmul"})
ROWS = (4, 5, 6)          # rows per register tile tried (6 x 4 vectors fill AVX-512)
NCHWC_COLUMNS = (4, 6, 7, 8, 14)    # conv_nchwc's tile widths tried (ResNet's 56, 28, 14, 7)
NCHWC_BLOCKS = (1, 2, 3, 4)         # ... times output-channel blocks,
NCHWC_ACCUMULATORS = (8, 28)        # ... keeping 8..28 vectors of accumulators
MIN_GAIN = 0.05           # a candidate must beat the heuristics by this share


@dataclass
class Tuned:
    """What tuning one workload found."""
    key: str
    flops: float
    seconds: dict[str, float]       # str(knobs) -> best seconds per call
    chosen: Knobs

    @property
    def measured(self) -> dict[str, float]:
        """GFLOP/s per candidate, to three significant digits (what the database keeps;
        a tiny workload's figure stays above zero)."""
        return {name: float(f"{self.flops / s / 1e9:.3g}") for name, s in self.seconds.items()}

    @property
    def gain(self) -> float:
        """The chosen knobs' speed over the heuristics'."""
        return self.seconds[str(Knobs())] / self.seconds[str(self.chosen)]


def tunable_workloads(graph: Graph) -> dict[str, Node]:
    """Distinct static contractions of `graph` (fused groups' members included)."""
    found: dict[str, Node] = {}
    for node in graph.nodes:
        members = node.body.nodes if node.body is not None else [node]
        for m in members:
            if m.op in TUNABLE and CONTRACTION in m.opdef.traits and all(
                    isinstance(d, int) for v in [*m.inputs, *m.outputs] for d in v.type.shape):
                found.setdefault(workload_key(m), m)
    return found


def candidates(node: Node) -> list[Knobs]:
    """The heuristics first, then every strategy the node can take x ROWS (a linear
    or matmul: only tiles no taller than its rows); for conv_nchwc, the register tiles
    NCHWC_COLUMNS x NCHWC_BLOCKS that fit the output and NCHWC_ACCUMULATORS (for
    conv_winograd, the tiles of its product stage: its columns are Winograd tiles)."""
    if node.op in ("conv_nchwc", "conv_winograd"):
        out = node.outputs[0].type.shape
        width, blocks = out[3], out[1]
        if node.op == "conv_winograd":
            tile = node.attrs["tile"]
            width = out[0] * -(-out[2] // tile) * -(-out[3] // tile)
        low, high = NCHWC_ACCUMULATORS
        return [Knobs(), *(Knobs(rw=rw, ot=ot) for ot in NCHWC_BLOCKS for rw in NCHWC_COLUMNS
                           if rw <= width and ot <= blocks and low <= rw * ot <= high)]
    strategies: tuple[str | None, ...] = (None,)
    rows = ROWS
    if node.op == "conv_packed" or (node.op == "conv" and node.attrs.get("groups", 1) == 1):
        strategies = STRATEGIES
    elif node.op not in ("conv", "conv_packed"):
        shape = node.inputs[0].type.shape
        rows = tuple(mr for mr in ROWS if len(shape) > 1 and mr <= shape[-2])
    return [Knobs(), *(Knobs(s, mr) for s in strategies for mr in rows)]


def flops(node: Node) -> float:
    """Multiply-adds x 2 of a contraction: output elements x the reduction's length
    (conv_winograd: those of the direct 3 x 3 conv it replaces)."""
    out = math.prod(node.outputs[0].type.shape)
    if node.op == "conv_nchwc":         # x [N, C/cb, H, W, cb], w [O/ob, C/cb, *kernel, cb, ob]
        x, w = node.inputs[0].type.shape, node.inputs[1].type.shape
        return 2.0 * out * x[1] * x[-1] * math.prod(w[2:-2])
    if node.op == "conv_winograd":
        x = node.inputs[0].type.shape
        return 2.0 * out * x[1] * x[-1] * 9
    if node.op in ("conv", "conv_packed"):
        x = node.inputs[0].type.shape
        kernel = node.attrs.get("kernel") or node.inputs[1].type.shape[2:]
        groups = node.attrs.get("groups", 1)
        return 2.0 * out * (x[1] // groups) * math.prod(kernel)
    return 2.0 * out * node.inputs[0].type.shape[-1]


def _kernel(node: Node, key: str, knobs: Knobs) -> Callable[..., None]:
    """`node`'s kernel (a contraction, or a fused group around one) compiled with `knobs`
    for the workload `key`."""
    with forcing(key, knobs):
        func = lower_node(node, "main")
    return tvm.compile(tvm.IRModule({"main": func}), target=cpu_target())["main"]


def _runner(node: Node, knobs: Knobs, rng: np.random.Generator) -> Callable[[], None]:
    """`node` compiled alone with `knobs`, bound to random inputs of its types."""
    fn = _kernel(node, workload_key(node), knobs)
    args = []
    for v in [*node.inputs, *node.outputs]:
        dtype = dtypes.numpy_dtype(v.type.dtype.name)
        shape = dtypes.storage_shape(v.type.dtype.name, v.type.shape)
        data = rng.standard_normal(shape).astype(dtype) if dtype.kind == "f" else \
            rng.integers(-3, 4, shape).astype(dtype)
        args.append(tvm.runtime.tensor(data))
    return lambda: fn(*args)


def measure(runners: dict[str, Callable[[], None]], rounds: int, budget: float
            ) -> dict[str, float]:
    """Best seconds per call of each runner, the runners alternating round by round."""
    reps = {}
    for name, run in runners.items():
        run()
        start = time.perf_counter()
        run()
        reps[name] = max(1, int(budget / max(time.perf_counter() - start, 1e-7)))
    best = {name: math.inf for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            run()
            start = time.perf_counter()
            for _ in range(reps[name]):
                run()
            best[name] = min(best[name], (time.perf_counter() - start) / reps[name])
    return best


def tune_workload(node: Node, *, rounds: int, budget: float, seed: int = 0) -> Tuned:
    rng = np.random.default_rng(seed)
    knobs = {str(k): k for k in candidates(node)}
    runners = {name: _runner(node, k, rng) for name, k in knobs.items()}
    seconds = measure(runners, rounds, budget)
    return Tuned(workload_key(node), flops(node), seconds, _choose(knobs, seconds))


def _choose(knobs: dict[str, Knobs], seconds: dict[str, float]) -> Knobs:
    """The fastest candidate if it beats the heuristics by `MIN_GAIN`, else the
    heuristics (the database does not chase noise)."""
    fastest = min(seconds, key=seconds.__getitem__)
    return knobs[fastest] if seconds[fastest] < (1 - MIN_GAIN) * seconds[str(Knobs())] \
        else Knobs()


def tune_graph(graph: Graph, db: TuningDatabase, *, rounds: int = 5, budget: float = 0.02,
               retune: bool = False, log: Callable[[str], None] | None = None) -> list[Tuned]:
    """Tune every workload of `graph` not yet in `db` (all of them with `retune`),
    recording each in `db` (the caller saves it). Kernels run on the thread pool the
    runtime sets up (every core, unless TVM_NUM_THREADS says otherwise), as when a
    compiled model runs."""
    ensure_tvm_runtime()    # before TVM's pool starts: it reads the thread settings once
    results = []
    for key, node in tunable_workloads(graph).items():
        if key in db.records and not retune:
            continue
        tuned = tune_workload(node, rounds=rounds, budget=budget)
        db.records[key] = Record(tuned.chosen, tuned.measured)
        results.append(tuned)
        if log:
            log(f"{tuned.gain:5.2f}x  {tuned.chosen}  ({tuned.measured[str(Knobs())]:.3g} -> "
                f"{tuned.measured[str(tuned.chosen)]:.3g} GFLOP/s)  {key}")
    return results


Step = tuple[Node, Callable[..., None], Sequence[object]]   # node, kernel, its arguments


def tune_in_model(graph: Graph, steps: Sequence[Step], db: TuningDatabase, *,
                  rounds: int = 10, log: Callable[[str], None] | None = None) -> list[Tuned]:
    """Tune every workload of `graph` in the model (module docstring): `steps` are the
    compiled model's steps in execution order, each the graph node it runs (a fused
    group or a single node), its kernel and the arguments the model calls it with.
    Records each workload in `db`, whatever it held (the caller saves it)."""
    ensure_tvm_runtime()
    results = []
    for key, member in tunable_workloads(graph).items():
        where = [i for i, (node, _, _) in enumerate(steps) if key in _workloads(node)]
        if not where:
            continue
        knobs = {str(k): k for k in candidates(member)}
        nodes = {id(steps[i][0]): steps[i][0] for i in where}   # one kernel per distinct node
        kernels: dict[str, dict[int, Callable[..., None]]] = {}
        for name, k in knobs.items():
            built = {n: _kernel(node, key, k) for n, node in nodes.items()}
            kernels[name] = {i: built[id(steps[i][0])] for i in where}
        seconds = _measure_in_model(steps, kernels, rounds)
        tuned = Tuned(key, flops(member) * len(where), seconds, _choose(knobs, seconds))
        db.records[key] = Record(tuned.chosen, tuned.measured)
        results.append(tuned)
        if log:
            log(f"{tuned.gain:5.2f}x  {tuned.chosen}  ({tuned.measured[str(Knobs())]:.3g} -> "
                f"{tuned.measured[str(tuned.chosen)]:.3g} GFLOP/s in the model, "
                f"{len(where)} steps)  {key}")
    return results


def _workloads(node: Node) -> set[str]:
    members = node.body.nodes if node.body is not None else [node]
    return {workload_key(m) for m in members if m.op in TUNABLE}


def _measure_in_model(steps: Sequence[Step], kernels: dict[str, dict[int, Callable[..., None]]],
                      rounds: int) -> dict[str, float]:
    """Seconds per run of the replaced steps, for each candidate: the median over
    `rounds` runs of the whole sequence with its kernels in place (the candidates
    alternating run by run; a first run each is not counted)."""
    times: dict[str, list[float]] = {name: [] for name in kernels}
    for round_ in range(rounds + 1):
        for name, replaced in kernels.items():
            spent = 0.0
            for i, (_, kernel, args) in enumerate(steps):
                fn = replaced.get(i)
                if fn is None:
                    kernel(*args)
                    continue
                start = time.perf_counter()
                fn(*args)
                spent += time.perf_counter() - start
            if round_:
                times[name].append(spent)
    return {name: statistics.median(t) for name, t in times.items()}
