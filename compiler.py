"""`kiln.compile`: a model in, a callable `CompiledModel` out.

    compile(model, example_inputs, dynamic_dims=...)
      -> an nn.Module compiled before (same fingerprint, frontend/model_cache.py):
         its optimized graph from the graph cache, skipping the next two steps
      -> a kiln Graph: torch frontend (nn.Module, ExportedProgram), ONNX frontend
         (`.onnx` file, ModelProto), `.kir` file, or a Graph
      -> passes: PassManager(passes or DEFAULT_PIPELINE), verified after each pass
      -> codegen.tvm.build_graph: one kernel per distinct node, one kernels.so
      -> a runtime Plan: signature, value specs, constants, views, steps; the memory
         plan of the `plan` pass (slots, in-place steps), or planned here without it
      -> CompiledModel: runs through the runtime's Executor; `save` writes a .kiln

The compiler side imports everything; the `CompiledModel` runs on the runtime alone.
"""
from __future__ import annotations

import contextlib
import copy
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from .errors import KilnError
from .ir import Graph, verify
from .passes.manager import DEFAULT_PIPELINE, Pass, PassManager, PassReport
from .passes.memory import MemoryPlan, graph_plan, memory_report, plan_graph_memory
from .runtime.executor import Executor
from .runtime.plan import Plan, Signature, Step

if TYPE_CHECKING:
    from .codegen.tvm.build import KernelCall

TARGETS = ("cpu",)


@dataclass
class CompileReport:
    """What compiling took: seconds per stage, kernel counts, and what each pass did."""
    seconds: dict[str, float] = field(default_factory=dict)
    passes: list[PassReport] = field(default_factory=list)
    nodes: int = 0
    kernel_calls: int = 0
    distinct_kernels: int = 0
    cache_hits: int = 0          # distinct kernels the kernel cache held
    cache_misses: int = 0        # distinct kernels compiled (all of them with no cache)
    graph_cache: str = "off"     # an nn.Module's optimized graph: "hit", "stored", or why not

    def __str__(self) -> str:
        stages = ", ".join(f"{k} {v:.2f}s" for k, v in self.seconds.items())
        return (f"{self.nodes} nodes -> {self.kernel_calls} kernel calls, "
                f"{self.distinct_kernels} distinct kernels (kernel cache: {self.cache_hits} "
                f"hits, {self.cache_misses} misses; graph cache: {self.graph_cache}); {stages}")


class CompiledModel:
    """A compiled model: `cm(*inputs)` returns a list of NumPy arrays in graph-output
    order; `cm.save(path)` writes a `.kiln` artifact that `kiln.load` runs anywhere."""

    def __init__(self, graph: Graph, plan: Plan, library: Path, workdir: tempfile.TemporaryDirectory,
                 target: str, report: CompileReport):
        self.graph, self.plan, self.library, self.target = graph, plan, library, target
        self.report = report
        self._workdir = workdir   # owns kernels.so for the model's lifetime
        self.weights = {ref: graph.constants[ref] for ref in set(plan.constants.values())}
        self._executor = Executor(plan, library, self.weights)

    @property
    def signature(self) -> Signature:
        return self.plan.signature

    def __call__(self, *inputs: Any, **named: Any) -> list[np.ndarray]:
        return self._executor(*inputs, **named)

    def save(self, path: str | Path) -> Path:
        from .runtime.artifact import write_artifact
        return write_artifact(path, self.plan, self.weights, self.library, self.target,
                              extra_manifest={"report": str(self.report)})

    def memory(self, bindings: Mapping[str, int]):
        """Peak intermediate bytes under `bindings`, planned vs one buffer per value."""
        return memory_report(self.plan, bindings)

    def __repr__(self) -> str:
        return f"<CompiledModel {self.plan.name} {self.signature}>"


StageHook = Callable[[str, float | None], None]


class _Stages:
    """Times each compile stage into the report; tells `on_stage(name, None)` when a
    stage starts and `on_stage(name, seconds)` when it ends (the CLI's progress)."""

    def __init__(self, report: CompileReport, on_stage: StageHook | None):
        self.report, self.on_stage = report, on_stage

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        if self.on_stage:
            self.on_stage(name, None)
        start = time.perf_counter()
        yield
        seconds = time.perf_counter() - start
        self.report.seconds[name] = self.report.seconds.get(name, 0.0) + seconds
        if self.on_stage:
            self.on_stage(name, seconds)


def compile(model: Any, example_inputs: Any = None, *, target: str = "cpu",
            dynamic_dims: Mapping[Any, Mapping[int, str]] | None = None,
            passes: str | Sequence[Pass] | None = None, dump_ir: str | Path | None = None,
            cache_dir: str | Path | bool | None = None,
            on_stage: StageHook | None = None) -> CompiledModel:
    """Compile `model` (an nn.Module, an ExportedProgram, an ONNX ModelProto, a kiln
    Graph, or a `.kir` or `.onnx` path) for `target`. `dynamic_dims` maps an input name (or position) to
    `{axis: "symbol"}`; one compiled model then serves every value of each symbol.
    `passes` is a pipeline spec (`"canonicalize,fuse(max_group=16)"`, see
    kiln.passes.manager) or a list of passes; None runs `DEFAULT_PIPELINE`. `dump_ir`
    names a folder for the IR before and after each pass. `cache_dir` is the kernel
    cache's folder (default $KILN_CACHE_DIR, else ~/.cache/kiln/kernels; False or "off":
    no cache); an nn.Module's optimized graph is kept in its `graphs/` folder, keyed by
    the model's fingerprint (frontend/model_cache.py), so compiling it again skips
    torch.export and the passes.
    `on_stage(name, seconds)` is called as each stage starts (seconds=None) and ends."""
    if target not in TARGETS:
        raise KilnError(f"unknown target {target!r}; kiln compiles for: {', '.join(TARGETS)}")
    manager = PassManager(DEFAULT_PIPELINE if passes is None else passes, dump_ir=dump_ir)
    report = CompileReport()
    stage = _Stages(report, on_stage)
    from .codegen.tvm.cache import open_cache
    kernel_cache = open_cache(cache_dir)
    graph = None
    with stage("fingerprint"):
        graphs, digest = _graph_cache(model, example_inputs, dynamic_dims, manager, target,
                                      kernel_cache, dump_ir, report)
        if digest is not None:
            graph = graphs.load(digest)
    if graph is not None:
        report.graph_cache = "hit"
        with stage("passes"):              # the memory plan is not stored: plan again
            PassManager([p for p in manager.passes if p.name == "plan"]).run(graph)
    else:
        if isinstance(model, Graph):           # already imported (e.g. by the CLI)
            graph = to_graph(model, example_inputs, dynamic_dims)
        else:
            with stage("import"):
                graph = to_graph(model, example_inputs, dynamic_dims)
        with stage("passes"):
            report.passes = manager.run(graph)   # verifies after every pass
            verify(graph)                         # and an empty pipeline's input
        if digest is not None:
            graphs.store(digest, graph)
            report.graph_cache = "stored"
    with stage("codegen"):
        from .codegen.tvm.build import build_graph   # imports TVM if a kernel is not cached
        workdir = tempfile.TemporaryDirectory(prefix="kiln-build-")
        built = build_graph(graph, workdir.name, cache=kernel_cache)
    with stage("plan"):
        plan = make_plan(graph, built.calls)
    report.nodes = len(graph.nodes)
    report.kernel_calls = len(built.calls)
    report.distinct_kernels = len(built.kernels)
    report.cache_hits, report.cache_misses = built.cache.hits, built.cache.misses
    return CompiledModel(graph, plan, built.library, workdir, built.target_name, report)


def _graph_cache(model: Any, example_inputs: Any, dynamic_dims: Any, manager: PassManager,
                 target: str, kernel_cache: Any, dump_ir: Any, report: CompileReport):
    """(the graph cache, the model's fingerprint) for an nn.Module compiled with the
    kernel cache on and no IR dumps; (None, None) otherwise, with the reason in
    `report.graph_cache`."""
    torch = _loaded_torch()
    if kernel_cache is None or torch is None or not isinstance(model, torch.nn.Module):
        return None, None                      # report.graph_cache stays "off"
    if dump_ir is not None:
        report.graph_cache = "off (IR dumps asked for)"
        return None, None
    from .frontend.model_cache import GraphCache, Unfingerprintable, fingerprint
    digest = fingerprint(model, example_inputs, dynamic_dims,
                         f"pipeline {manager.pipeline}\ntarget {target}")
    if isinstance(digest, Unfingerprintable):
        report.graph_cache = f"off ({digest})"
        return None, None
    return GraphCache(kernel_cache.root / "graphs"), digest


def _loaded_torch() -> Any:
    """The torch module if the process imported it (a model can be a torch object only
    then), else None: asking never imports torch."""
    return sys.modules.get("torch")


def to_graph(model: Any, example_inputs: Any, dynamic_dims: Any) -> Graph:
    """The kiln graph of any model `compile` accepts (a Graph is copied, not changed)."""
    if isinstance(model, Graph):
        if dynamic_dims:
            raise KilnError("dynamic_dims does not apply to a kiln Graph: its input types "
                            "already say which dims are symbolic")
        return copy_graph(model)
    if isinstance(model, (str, Path)):
        path = Path(model)
        if path.suffix == ".kir":
            from .ir import load
            return load(path)
        if path.suffix == ".onnx":
            return _import_onnx(path, dynamic_dims)
        raise KilnError(f"cannot compile {path}: kiln reads .kir and .onnx files "
                        f"(not {path.suffix or 'files without a suffix'})")
    module = type(model).__module__
    if module.startswith("onnx") and type(model).__name__ == "ModelProto":
        return _import_onnx(model, dynamic_dims)
    if module.startswith("torch") or _is_torch_model(model):
        from .frontend.torch import import_model
        return import_model(model, example_inputs, dynamic_dims)
    raise KilnError(f"cannot compile a {type(model).__name__}: kiln takes an nn.Module, an "
                    "ExportedProgram, an ONNX ModelProto, a kiln Graph, or a .kir or .onnx path")


def _import_onnx(model: Any, dynamic_dims: Any) -> Graph:
    if dynamic_dims:
        raise KilnError("dynamic_dims does not apply to an ONNX model: its inputs' dim_param "
                        "names already become kiln symbols")
    from .frontend.onnx import import_model
    return import_model(model)


def _is_torch_model(model: Any) -> bool:
    torch = _loaded_torch()
    return torch is not None and isinstance(model, (torch.nn.Module,
                                                    torch.export.ExportedProgram))


def copy_graph(graph: Graph) -> Graph:
    """A deep copy of the structure; constants stay shared (held by reference)."""
    constants = graph.constants
    graph.constants = {}
    try:
        clone = copy.deepcopy(graph)
    finally:
        graph.constants = constants
    clone.constants = dict(constants)
    return clone


def make_plan(graph: Graph, calls: list["KernelCall"]) -> Plan:
    """The runtime plan of a built graph: signature, every value's spec, constants, views,
    one step per kernel call, and the memory plan the `plan` pass left on
    `graph.memory_plan` (planned here when no pipeline ran that pass)."""
    plan = graph_plan(graph, [Step(c.kernel, c.inputs, c.outputs, c.source, c.workspace)
                              for c in calls])
    memory_plan: MemoryPlan | None = getattr(graph, "memory_plan", None)
    if memory_plan is None:
        memory_plan, _ = plan_graph_memory(graph)
    return memory_plan.apply(plan)
