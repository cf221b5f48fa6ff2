"""TVM code generation for the CPU: kiln nodes lowered through TE to scheduled TIR
PrimFuncs, compiled by LLVM for the host CPU.

- `target.py`: `cpu_target()`, the LLVM target for this machine;
- `lower.py`: `lower_node(node, name)` -> PrimFunc, `missing_lowerings(graph)`;
- `common.py`: `LowerContext` and the TE helpers the lowerings share;
- `lower_elementwise.py`, `lower_layout.py`, `lower_reduction.py`,
  `lower_linalg.py`: the lowerings, registered against the op registry (the
  contractions' basic ones only where `gemm.py` registers none);
- `gemm.py`, `conv.py`, `attention.py`: the contraction kernels and their schedules;
- `fastmath.py`: vectorizable float32 exp, expm1, tanh and erf;
- `schedule.py`: the generic CPU schedules and `SCHEDULES`, the table op-specific
  schedules (the contraction kernels') register into;
- `build.py`: one shared library for a whole graph.
"""
from .lower import lower_node, missing_lowerings, symbol_args
from .schedule import SCHEDULES
from .target import cpu_target

__all__ = ["SCHEDULES", "cpu_target", "lower_node", "missing_lowerings", "symbol_args"]
