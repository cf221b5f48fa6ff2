"""The TVM target kiln compiles CPU kernels for: LLVM for the host CPU."""
from __future__ import annotations

import tvm


def cpu_target() -> tvm.target.Target:
    """LLVM for this machine's CPU (e.g. "znver5"). TVM refuses `-mcpu=native`
    silently (it compiles for a generic x86-64), so the CPU is named explicitly."""
    return tvm.target.Target({"kind": "llvm", "mcpu": tvm.target.codegen.llvm_get_system_cpu()})
