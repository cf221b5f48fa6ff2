"""TVM code generation for the CPU: kiln nodes lowered through TE to scheduled TIR
PrimFuncs, compiled by LLVM for the host CPU.

- `target.py`: `cpu_target()`, the LLVM target for this machine;
- `lower.py`: `lower_node(node, name)` -> PrimFunc, `missing_lowerings(graph)`;
- `common.py`: `LowerContext` and the TE helpers the lowerings share;
- `lower_elementwise.py`, `lower_layout.py`, `lower_reduction.py`,
  `lower_linalg.py`: the lowerings, registered against the op registry (the
  contractions' basic ones only where `gemm.py` registers none);
- `gemm.py`, `conv.py`, `conv_nchwc.py`, `conv_winograd.py`, `attention.py`: the
  contraction kernels and their schedules; `tune.py`, `tuning.py`: the tuner and its
  database;
- `fastmath.py`: vectorizable float32 exp, expm1, tanh and erf;
- `schedule.py`: the generic CPU schedules and `SCHEDULES`, the table op-specific
  schedules (the contraction kernels') register into;
- `build.py`: one shared library for a whole graph;
- `workspace.py`: compiles a kernel and reads the scratch memory it allocates inside;
- `cache.py`: the persistent kernel cache (object files keyed by kernel, target and
  codegen version, with each kernel's workspace).

The names below load on first use, so that `build` and `cache` can serve a fully
cached compile without importing TVM.
"""
from __future__ import annotations

import importlib
from typing import Any

_LAZY = {"lower_node": "lower", "missing_lowerings": "lower", "symbol_args": "lower",
         "SCHEDULES": "schedule", "cpu_target": "target"}
__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
