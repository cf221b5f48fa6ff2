"""Whole-graph TVM build: one kernel per distinct node, one shared library per model.

    build_graph(graph, out_dir)
      -> check that every op has a tvm lowering (one error listing all that do not)
      -> key each node by op, attributes and input/output types: nodes with equal
         keys (BERT's twelve identical layers) share one kernel
      -> lower_node() each distinct key to a scheduled PrimFunc; one IRModule
      -> tvm.compile for the host CPU; export_library -> kernels.so
      -> return the library path and the steps: (kernel name, argument value names)
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import tvm

from ...errors import CodegenError, UnsupportedOpsError
from ...ir import Graph, Node
from ...ir.printer import format_attrs
from .lower import lower_node, missing_lowerings, symbol_args
from .target import cpu_target


@dataclass(frozen=True)
class KernelCall:
    """Run `kernel(*inputs, *outputs)` over the named values; `source` is the node's text."""
    kernel: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    source: str


@dataclass
class BuildResult:
    library: Path
    calls: list[KernelCall]
    kernels: dict[str, str] = field(default_factory=dict)   # kernel name -> its key
    seconds: dict[str, float] = field(default_factory=dict)


def kernel_key(node: Node) -> str:
    """What makes two nodes compile to the same kernel (value names do not)."""
    ins = ", ".join(str(v.type) for v in node.inputs)
    outs = ", ".join(str(v.type) for v in node.outputs)
    return f"{node.op}({ins}){format_attrs(node)} -> ({outs})"


def build_graph(graph: Graph, out_dir: str | Path, target: tvm.target.Target | None = None
                ) -> BuildResult:
    missing = missing_lowerings(graph)
    if missing:
        raise UnsupportedOpsError(f"graph {graph.name} has no TVM lowering", missing)
    target = target or cpu_target()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    funcs: dict[str, tvm.tirx.PrimFunc] = {}
    names: dict[str, str] = {}
    calls: list[KernelCall] = []
    start = time.perf_counter()
    for node in graph.nodes:
        if node.op == "constant":
            continue
        key = kernel_key(node)
        if key not in names:
            digest = hashlib.sha1(key.encode()).hexdigest()[:8]
            names[key] = f"k{len(names)}_{node.op}_{digest}"
            funcs[names[key]] = lower_node(node, names[key])
            scalars = symbol_args(funcs[names[key]])
            if scalars:   # the plan passes buffers only; say so rather than mis-run
                raise CodegenError(
                    f"{node.format()}: its kernel needs symbol(s) {scalars} that no input or "
                    "output shape carries, and kiln's runtime passes buffers only"
                    + (f" (from {node.source})" if node.source else ""))
        source = node.format() + (f"  # from {node.source}" if node.source else "")
        calls.append(KernelCall(names[key], tuple(v.name for v in node.inputs),
                                tuple(v.name for v in node.outputs), source))
    lowered = time.perf_counter()
    library = out_dir / "kernels.so"
    if funcs:
        executable = tvm.compile(tvm.IRModule(funcs), target=target)
        executable.export_library(str(library))
    compiled = time.perf_counter()
    return BuildResult(library if funcs else Path(), calls, {v: k for k, v in names.items()},
                       {"lower": lowered - start, "compile": compiled - lowered})
