"""Whole-graph TVM build: one kernel per distinct node or fused group, each compiled
once per machine (the kernel cache, `cache.py`), linked into one shared library per model.

    build_graph(graph, out_dir, cache=open_cache())
      -> key each kernel node (constants and views need none) by `kernel_key`: op,
         attributes, types and a fused group's body, value names aside; nodes with
         equal keys (BERT's twelve identical layers) share one kernel, named after the
         digest of its key, target and codegen salt (`CacheEntry`)
      -> each kernel's object file from the cache: a hit skips lowering and LLVM alike
      -> the misses (one error listing every op without a lowering): lower_node() each
         to a scheduled PrimFunc, then tvm.compile each into its own object file,
         `jobs` forked processes at a time, reading each kernel's workspace as TVM
         lowers it (`workspace.py`); store each object and workspace in the cache
      -> link all objects into kernels.so with the system C compiler (as TVM's
         `export_library` does with the one object of a whole module)
      -> the library path, the steps (kernel name, argument value names, workspace),
         cache stats

TVM itself is imported only when some kernel misses the cache: a compile served
wholly from the cache never loads it (the host target is remembered in the cache).
"""
from __future__ import annotations

import dataclasses
import json
import multiprocessing
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...errors import CodegenError, KilnError, UnsupportedOpsError
from ...ir import Graph, Node
from ...ir.registry import is_view
from ...runtime.plan import Workspace
from . import tuning
from .cache import CacheEntry, CacheStats, KernelCache, codegen_salt, host_fingerprint, kernel_key

if TYPE_CHECKING:
    import tvm

__all__ = ["BuildResult", "KernelCall", "build_graph", "kernel_key"]

_LINKERS = ("g++", "gcc", "clang++", "clang", "c++", "cc")   # TVM's get_cc() order


@dataclass(frozen=True)
class KernelCall:
    """Run `kernel(*inputs, *outputs)` over the named values; `source` is the node's text,
    `workspace` the scratch memory the kernel allocates."""
    kernel: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    source: str
    workspace: Workspace = Workspace()


@dataclass
class BuildResult:
    library: Path
    calls: list[KernelCall]
    kernels: dict[str, str] = field(default_factory=dict)   # kernel name -> its key
    seconds: dict[str, float] = field(default_factory=dict)
    cache: CacheStats = field(default_factory=CacheStats)
    target: str = ""                                         # the TVM target, as JSON

    @property
    def target_name(self) -> str:
        """The target as one line, e.g. `llvm -mcpu=rocketlake`."""
        attrs = json.loads(self.target)
        return f"{attrs['kind']} -mcpu={attrs['mcpu']}" if "mcpu" in attrs else attrs["kind"]


@dataclass(frozen=True)
class _Kernel:
    name: str
    node: Node           # the first node with this key: the one lowered
    entry: CacheEntry


def build_graph(graph: Graph, out_dir: str | Path, target: tvm.target.Target | None = None,
                *, cache: KernelCache | None = None, jobs: int | None = None) -> BuildResult:
    """Build `graph`'s kernels into `out_dir`/kernels.so for `target` (default: this
    machine's CPU), reusing and filling `cache` (None: compile everything). `jobs`
    processes compile the missing kernels (default: one per core this process may use)."""
    start = time.perf_counter()
    target_text = str(target) if target is not None else _host_target(cache)
    with tuning.building_for(target_text):      # the tuning database of target's CPU
        return _build(graph, Path(out_dir), target, target_text, cache, jobs, start)


def _build(graph: Graph, out_dir: Path, target: Any, target_text: str,
           cache: KernelCache | None, jobs: int | None, start: float) -> BuildResult:
    objects = out_dir / "objects"
    objects.mkdir(parents=True, exist_ok=True)
    kernels, calls = _kernels(graph, target_text)
    stats = CacheStats()
    missing: list[_Kernel] = []
    workspaces: dict[str, Workspace] = {}
    for kernel in kernels.values():
        cached = cache.load(kernel.entry, stats) if cache is not None else None
        if cached is None:
            missing.append(kernel)
        else:
            (objects / f"{kernel.name}.o").write_bytes(cached.payload)
            workspaces[kernel.name] = cached.workspace
    if cache is None:
        stats.misses = len(missing)
    seconds = {"cache": time.perf_counter() - start}
    if missing:
        compiled = _compile_missing(graph, missing, target, target_text, objects, jobs,
                                    seconds)
        workspaces |= compiled
        if cache is not None:
            for kernel in missing:
                cache.store(kernel.entry, (objects / f"{kernel.name}.o").read_bytes(),
                            compiled[kernel.name])
    calls = [dataclasses.replace(c, workspace=workspaces[c.kernel]) for c in calls]
    start = time.perf_counter()
    library = out_dir / "kernels.so"
    if kernels:
        link_shared([objects / f"{k.name}.o" for k in sorted(kernels.values(),
                                                            key=lambda k: k.name)], library)
    shutil.rmtree(objects)                 # linked into the library (and kept in the cache)
    seconds["link"] = time.perf_counter() - start
    return BuildResult(library if kernels else Path(), calls,
                       {k.name: key for key, k in kernels.items()}, seconds, stats, target_text)


def _kernels(graph: Graph, target: str) -> tuple[dict[str, _Kernel], list[KernelCall]]:
    """The distinct kernels of `graph` by key, and one call per kernel node."""
    salt = codegen_salt()
    kernels: dict[str, _Kernel] = {}
    names: dict[str, str] = {}
    calls: list[KernelCall] = []
    for node in graph.nodes:
        if node.op == "constant" or is_view(node):   # views alias their input (runtime plan)
            continue
        key = kernel_key(node)
        kernel = kernels.get(key)
        if kernel is None:
            entry = CacheEntry.of(key, target, salt)
            name = f"k_{node.op}_{entry.digest[:16]}"
            if names.setdefault(name, key) != key:
                raise CodegenError(f"kernels {names[name]!r} and {key!r} share the name {name} "
                                   "(a 64-bit digest collision): report it to kiln")
            kernel = kernels[key] = _Kernel(name, node, entry)
        source = node.format() + (f"  # from {node.source}" if node.source else "")
        calls.append(KernelCall(kernel.name, tuple(v.name for v in node.inputs),
                                tuple(v.name for v in node.outputs), source))
    return kernels, calls


def _host_target(cache: KernelCache | None) -> str:
    """This machine's LLVM target as JSON: remembered in the cache under the CPU's
    fingerprint, else asked of TVM (and remembered)."""
    fingerprint = host_fingerprint() if cache is not None else None
    if fingerprint is not None and (known := cache.host_target(fingerprint)):
        return known
    from .target import cpu_target
    text = str(cpu_target())
    if fingerprint is not None:
        cache.remember_host_target(fingerprint, text)
    return text


def _compile_missing(graph: Graph, missing: list[_Kernel], target: Any, target_text: str,
                     objects: Path, jobs: int | None, seconds: dict[str, float]
                     ) -> dict[str, Workspace]:
    """Lower each missing kernel, then compile each to `objects`/<name>.o; returns
    each one's workspace."""
    import tvm

    from .lower import lower_node, missing_lowerings, symbol_args
    unsupported = missing_lowerings(graph)
    if unsupported:
        raise UnsupportedOpsError(f"graph {graph.name} has no TVM lowering", unsupported)
    start = time.perf_counter()
    work: list[_Work] = []
    for kernel in missing:
        func = lower_node(kernel.node, kernel.name)
        scalars = symbol_args(func)
        if scalars:   # the plan passes buffers only; say so rather than mis-run
            node = kernel.node
            raise CodegenError(
                f"{node.format()}: its kernel needs symbol(s) {scalars} that no input or "
                "output shape carries, and kiln's runtime passes buffers only"
                + (f" (from {node.source})" if node.source else ""))
        work.append(_Work(kernel.name, func, objects / f"{kernel.name}.o", kernel.node.format()))
    lowered = time.perf_counter()
    workspaces = _compile_objects(
        work, target if target is not None else tvm.target.Target(target_text), jobs)
    seconds["lower"] = lowered - start
    seconds["compile"] = time.perf_counter() - lowered
    return workspaces


# --- compiling and linking object files -------------------------------------------------------
@dataclass(frozen=True)
class _Work:
    name: str
    func: Any            # tvm.tirx.PrimFunc
    path: Path
    source: str          # the node's text, for errors


def _compile_objects(work: list[_Work], target: tvm.target.Target, jobs: int | None
                     ) -> dict[str, Workspace]:
    """Compile each PrimFunc into its own object file; with `jobs` > 1 (default: the
    cores this process may use), in that many forked processes. Returns each kernel's
    workspace."""
    jobs = min(jobs or len(os.sched_getaffinity(0)), len(work))
    if jobs <= 1 or "fork" not in multiprocessing.get_all_start_methods():
        results = [_compile_object(w, target) for w in work]
    else:
        # fork: the workers inherit the lowered PrimFuncs; nothing is pickled but indices.
        # A worker that dies (LLVM or TVM crashing) breaks the pool: each kernel it left
        # uncompiled is reported, rather than waiting for it forever
        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(jobs, mp_context=context, initializer=_receive_work,
                                 initargs=(work, target)) as pool:
            futures = [pool.submit(_compile_received, i) for i in range(len(work))]
            results = [_result(future, w) for future, w in zip(futures, work)]
    failures = [r for r in results if isinstance(r, str)]
    if failures:
        raise CodegenError("\n".join(failures))
    return {w.name: r for w, r in zip(work, results)}   # type: ignore[misc]


def _result(future: Future, work: _Work) -> Workspace | str:
    try:
        return future.result()
    except BrokenProcessPool:
        return (f"kernel {work.name} ({work.source}): the compiler process died while "
                "compiling kernels (TVM or LLVM crashed)")


_received: tuple[list[_Work], Any] | None = None   # a forked worker's share of compile_objects


def _receive_work(work: list[_Work], target: Any) -> None:
    global _received
    _received = (work, target)


def _compile_received(index: int) -> Workspace | str:
    assert _received is not None
    work, target = _received
    return _compile_object(work[index], target)


def _compile_object(work: _Work, target: Any) -> Workspace | str:
    """Compile one PrimFunc into `work.path`; its workspace, or the error text if TVM
    or LLVM fails."""
    from .workspace import compile_module
    try:
        module, workspace = compile_module(work.func, work.name, target)
        if module.kind != "llvm" or module.imports:
            return (f"kernel {work.name} ({work.source}) compiled to a {module.kind} module "
                    f"with {len(module.imports)} imports; kiln links host LLVM objects only")
        module.write_to_file(str(work.path))
    except KilnError as e:
        return str(e)
    except Exception as e:  # noqa: BLE001  TVM raises several kinds; name the kernel
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return f"TVM could not compile kernel {work.name} ({work.source}): {first}"
    return workspace


def link_shared(objects: list[Path], library: Path) -> Path:
    """Link object files into a shared library with the C compiler that TVM's
    `export_library` would use ($CXX, $CC, else the first of g++, gcc, clang, ...)."""
    linker = os.environ.get("CXX") or os.environ.get("CC") or next(
        (found for name in _LINKERS if (found := shutil.which(name))), None)
    if linker is None:
        raise CodegenError(f"no C compiler to link {library.name}: install one of "
                           f"{', '.join(_LINKERS)} or set $CXX")
    command = [linker, "-shared", "-fPIC", "-o", str(library), *map(str, objects)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise CodegenError(f"linking {library} failed ({' '.join(command[:4])} ...):\n"
                           f"{done.stdout}{done.stderr}")
    return library
