"""The runtime: runs compiled models. It owns the execution plan (`plan`), the
evaluation of symbolic dims without sympy (`dims`), aligned host buffers (`buffers`),
the weights file format (`weights`), the bridge to TVM-compiled kernels through
`tvm_ffi` (`ffi`), the `Executor` and the `.kiln` artifact (`artifact`).

It never imports the compiler — not torch, not tvm, not `kiln.ir`, `kiln.frontend`,
`kiln.passes` or `kiln.codegen` — so a CPU artifact runs with NumPy, safetensors,
ml_dtypes and tvm_ffi alone. The compiler may import the runtime's data modules
(`plan`, `dims`, `dtypes`, `weights`); they stay free of tvm_ffi. The names below are
imported on first use, so `import kiln.runtime.weights` pulls in nothing else.

    m = kiln.runtime.load("model.kiln")   # or kiln.load
    outs = m(x, y)                        # list of NumPy arrays
"""
from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "load": "artifact", "write_artifact": "artifact", "LoadedModel": "artifact",
    "Executor": "executor", "Plan": "plan", "Step": "plan", "TensorSpec": "plan",
    "Port": "plan", "Signature": "plan", "Workspace": "plan", "FORMAT_VERSION": "plan",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
