"""The bridge to TVM-compiled kernels through `tvm_ffi`, the small FFI package:

- importing tvm_ffi *without* letting it import torch (its `__init__` tries
  `import torch` first; a torch-free process must stay torch-free);
- making TVM's runtime library (`libtvm_runtime.so`, shipped in the apache-tvm wheel)
  available to kernel libraries: their parallel loops call `TVMBackendParallelLaunch`
  through a pointer the loader fills from the global symbol table, so it is loaded
  with RTLD_GLOBAL, found on `sys.path` *without importing tvm*; and configuring its
  thread pool before it starts (`ensure_tvm_runtime`: every core, no spinning);
- loading a kernel library and looking up its functions;
- zero-copy conversion between NumPy arrays, DLPack tensors (torch) and
  `tvm_ffi.Tensor`, including bfloat16, which NumPy cannot export through DLPack:
  its uint16 bits are exported and the DLPack dtype code is retagged.

Nothing here imports torch, tvm or the kiln compiler.
"""
from __future__ import annotations

import ctypes
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ArtifactError, KilnError
from .dtypes import NUMPY_DTYPES
from .plan import THREADS_ENV, kernel_threads


def _import_tvm_ffi() -> Any:
    """`import tvm_ffi`, hiding torch from it unless the process already imported torch
    (tvm_ffi imports torch only as a workaround for a Windows symbol clash)."""
    if "tvm_ffi" in sys.modules:
        return sys.modules["tvm_ffi"]
    hide_torch = "torch" not in sys.modules
    if hide_torch:
        sys.modules["torch"] = None  # type: ignore[assignment]  # `import torch` fails fast
    try:
        import tvm_ffi
    finally:
        if hide_torch and sys.modules.get("torch", False) is None:
            del sys.modules["torch"]
    return tvm_ffi


tvm_ffi = _import_tvm_ffi()
Tensor = tvm_ffi.Tensor

_SHARED_SUFFIX = {"darwin": ".dylib", "win32": ".dll"}.get(sys.platform, ".so")
_TVM_RUNTIME_NAME = f"libtvm_runtime{_SHARED_SUFFIX}"
_tvm_runtime: ctypes.CDLL | None = None

# TVM's pool workers spin-wait (sched_yield in a loop) this many times for the next
# parallel region before they sleep; TVM's default, 300000, keeps both cores busy for
# ~0.1 s after every call returns. Sleeping at once (0) makes every kernel wake the
# workers: BERT-base ran 179 ms against 151 ms with 3000, which spins ~1 ms after a
# call returns (1.1 ms of CPU in the 200 ms after it; ORT's default burns ~55 ms).
# bench/spin.py measures the idle CPU and the latency of each choice.
SPIN_COUNT_ENV = "TVM_THREAD_POOL_SPIN_COUNT"
DEFAULT_SPIN_COUNT = 3000
# TVM pins each pool worker to one core (the calling thread stays free). When the
# caller wakes on the core a worker is pinned to, the two share it until the kernel
# scheduler moves the caller, milliseconds later: the MLP benchmark (2 ms calls after
# a pause) ran 2.9-3.8 ms in half the processes pinned, 1.8-2.1 ms unpinned, while
# BERT-base was the same either way. So kiln leaves placement to the OS scheduler.
BIND_THREADS_ENV = "TVM_BIND_THREADS"
DEFAULT_BIND_THREADS = "0"


def find_tvm_runtime() -> Path | None:
    """`tvm/lib/libtvm_runtime.so` in the first `sys.path` entry that has it (no import)."""
    for entry in sys.path:
        for rel in (Path("tvm") / "lib" / _TVM_RUNTIME_NAME, Path("tvm") / _TVM_RUNTIME_NAME):
            candidate = Path(entry or ".") / rel
            if candidate.is_file():
                return candidate
    return None


def ensure_tvm_runtime() -> Path:
    """Load TVM's runtime library into the global symbol table once per process.

    TVM's thread pool uses half the cores on x86 unless told otherwise; kiln's kernels
    use every core this process may run on, its workers do not spin after a call
    (`DEFAULT_SPIN_COUNT`) and are not pinned to cores (`DEFAULT_BIND_THREADS`).
    `TVM_NUM_THREADS`, `TVM_THREAD_POOL_SPIN_COUNT` and `TVM_BIND_THREADS` set by the
    user win. (TVM reads them when its pool starts, at the first parallel kernel.)"""
    global _tvm_runtime
    path = find_tvm_runtime()
    if _tvm_runtime is None:
        os.environ.setdefault(THREADS_ENV, str(kernel_threads()))
        os.environ.setdefault(SPIN_COUNT_ENV, str(DEFAULT_SPIN_COUNT))
        os.environ.setdefault(BIND_THREADS_ENV, DEFAULT_BIND_THREADS)
        if path is None:
            raise ArtifactError(f"cannot find {_TVM_RUNTIME_NAME} (tvm/lib/ in the apache-tvm "
                                "package) on sys.path; TVM CPU kernels need it to run "
                                "(install apache-tvm; kiln does not import it)")
        try:
            _tvm_runtime = ctypes.CDLL(str(path), ctypes.RTLD_GLOBAL)
        except OSError as e:
            raise ArtifactError(f"cannot load the TVM runtime library {path}: {e}") from None
    return Path(_tvm_runtime._name)


def load_kernels(path: str | Path, kernel_names: list[str]) -> tuple[Any, dict[str, Any]]:
    """Load a kernel library; return the module and its functions by name. ArtifactError
    names the file and every kernel the plan needs that the library lacks."""
    ensure_tvm_runtime()
    try:
        module = tvm_ffi.load_module(str(path))
    except Exception as e:  # noqa: BLE001  dlopen and tvm_ffi raise several kinds
        raise ArtifactError(f"cannot load kernel library {path}: {e}") from None
    missing = sorted({k for k in kernel_names if not module.implements_function(k)})
    if missing:
        raise ArtifactError(f"kernel library {path} lacks kernel(s) the plan calls: "
                            f"{', '.join(missing)}")
    return module, {k: module[k] for k in kernel_names}


# --- DLPack -------------------------------------------------------------------------------
_BF16 = NUMPY_DTYPES["bf16"]
_DL_UINT, _DL_BFLOAT = 1, 4            # DLDataTypeCode
_DL_CPU = 1                             # DLDeviceType kDLCPU
# DLManagedTensorVersioned = {DLPackVersion (2 x u32), manager_ctx*, deleter*, u64 flags,
# DLTensor}; DLTensor = {data*, DLDevice (2 x i32), i32 ndim, DLDataType {u8 code, ...}}.
_VERSIONED_DTYPE_CODE_OFFSET = 8 + 8 + 8 + 8 + (8 + 8 + 4)
_capsule_pointer = ctypes.pythonapi.PyCapsule_GetPointer
_capsule_pointer.restype = ctypes.c_void_p
_capsule_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]


def _retag(capsule: Any, from_code: int, to_code: int) -> Any:
    """Change the dtype code of an unconsumed versioned DLPack capsule in place."""
    address = _capsule_pointer(capsule, b"dltensor_versioned") + _VERSIONED_DTYPE_CODE_OFFSET
    code = ctypes.c_uint8.from_address(address)
    if code.value != from_code:  # the layout is not what this module assumes: stop here
        raise KilnError(f"unexpected DLPack dtype code {code.value} (expected {from_code}): "
                        "the DLPack capsule layout is not the one kiln.runtime.ffi knows")
    code.value = to_code
    return capsule


def to_tensor(array: np.ndarray) -> Any:
    """A zero-copy `tvm_ffi.Tensor` over a NumPy array (read-only arrays included)."""
    if array.dtype == _BF16:
        capsule = array.view(np.uint16).__dlpack__(max_version=(1, 0))
        return tvm_ffi.from_dlpack(_retag(capsule, _DL_UINT, _DL_BFLOAT))
    return tvm_ffi.from_dlpack(array.__dlpack__(max_version=(1, 0)))


class _Capsule:
    """Hands NumPy's `from_dlpack` a capsule we already hold."""

    def __init__(self, capsule: Any):
        self.capsule = capsule

    def __dlpack__(self, **_: Any) -> Any:
        return self.capsule

    def __dlpack_device__(self) -> tuple[int, int]:
        return (_DL_CPU, 0)


def to_numpy(tensor: Any) -> np.ndarray:
    """A zero-copy NumPy view of a CPU `tvm_ffi.Tensor` (bfloat16 included)."""
    if str(tensor.dtype) == "bfloat16":
        capsule = _retag(tensor._to_dlpack_versioned(), _DL_BFLOAT, _DL_UINT)
        return np.from_dlpack(_Capsule(capsule)).view(_BF16)
    return np.from_dlpack(tensor)


def is_cpu(tensor: Any) -> bool:
    return tensor.device.dlpack_device_type() == _DL_CPU
