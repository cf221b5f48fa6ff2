"""The compiled-graph cache for torch models: a second `kiln.compile` of the same
nn.Module skips torch.export, the import and the passes, and reads the optimized
graph it stored the first time (the kernels then come from the kernel cache).

    fingerprint(model, example_inputs, dynamic_dims, options) -> str | Unfingerprintable
    GraphCache(root).load(digest) -> Graph | None;  .store(digest, graph)

The fingerprint is a hash of everything torch.export reads, or kiln does with it:

- the versions of Python, torch, and of the package of every module class;
- for every submodule: its name, its class, the source file of every class in the
  class's MRO (the whole file: the forward and the helpers beside it), its training
  flag and its other attributes (configs, sizes, flags; see `_encode`);
- every parameter and buffer (and plain tensor attribute): name, dtype, shape,
  strides, which of them share storage, and the bytes (xxh3-128);
- the example inputs' structure, dtypes, shapes and strides (and non-tensor values),
  `dynamic_dims`, and the compile options that shape the graph (pass pipeline,
  target);
- every source file of kiln itself (a changed frontend or pass invalidates entries).

A model the fingerprint cannot capture soundly is compiled as usual, never from the
cache, and the reason is reported (`Unfingerprintable`): forward hooks (its own or
global), attributes whose value has no stable encoding (an object whose repr holds an
address, say), a class whose source file is unknown (defined in a notebook or
`exec`), or a reference cycle among attributes. What it cannot see at all is code
outside the class files and installed packages that the forward calls (a module-level
function of an editable install elsewhere, a global flag): compile with
`cache_dir="off"` when such code changes between compiles.

An entry is a folder `<root>/<digest[:2]>/<digest>/` (see `GraphCache`), written into
a temporary folder and renamed into place, so readers see whole entries only.
Imports torch, xxhash, NumPy and kiln.ir.
"""
from __future__ import annotations

import dataclasses
import enum
import functools
import hashlib
import importlib.metadata
import inspect
import json
import os
import shutil
import sys
import tempfile
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xxhash

from ..ir import Graph, parse, print_graph
from ..runtime.dtypes import NUMPY_DTYPES

DTYPE_NAMES = {np.dtype(v): k for k, v in NUMPY_DTYPES.items()}

FORMAT = 1
KILN_DIR = Path(__file__).resolve().parents[1]
MAX_DEPTH = 12
_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_forward_hooks_with_kwargs",
               "_forward_pre_hooks_with_kwargs", "_forward_hooks_always_called",
               "_state_dict_hooks", "_state_dict_pre_hooks", "_load_state_dict_pre_hooks",
               "_load_state_dict_post_hooks", "_backward_hooks", "_backward_pre_hooks")
_SKIPPED_ATTRS = frozenset({"_parameters", "_buffers", "_modules", "_non_persistent_buffers_set",
                            "training", "_is_full_backward_hook", "_compiled_call_impl",
                            *_HOOK_DICTS})


@dataclass(frozen=True)
class Unfingerprintable:
    """Why a model has no fingerprint (it is then compiled without this cache)."""
    reason: str

    def __str__(self) -> str:
        return self.reason


class _Unencodable(Exception):
    pass


# --- the fingerprint -------------------------------------------------------------------------
def fingerprint(model: torch.nn.Module, example_inputs: Any, dynamic_dims: Any,
                options: str) -> str | Unfingerprintable:
    """The hex digest naming `model` compiled from `example_inputs` with `options`."""
    h = hashlib.sha256(f"kiln graph cache {FORMAT}\n{sys.version}\ntorch {torch.__version__}\n"
                       f"{kiln_source_digest()}\n{options}\n".encode())
    try:
        if _has_global_hooks():
            return Unfingerprintable("global nn.Module hooks are registered")
        tensors = _TensorDigests()
        for name, module in model.named_modules(remove_duplicate=False):
            hooks = [d for d in _HOOK_DICTS if getattr(module, d, None)]
            if hooks:
                return Unfingerprintable(f"module {name or type(model).__name__!r} has hooks "
                                         f"({', '.join(hooks)})")
            h.update(f"module {name}: {_class_text(type(module))} training="
                     f"{module.training}\n".encode())
            for key, value in sorted(vars(module).items()):
                if key not in _SKIPPED_ATTRS:
                    h.update(f"  .{key} = {_encode(value, tensors)}\n".encode())
            for kind, table in (("param", module._parameters), ("buffer", module._buffers)):
                for key, t in table.items():
                    h.update(f"  {kind} {key} = {_encode(t, tensors)}\n".encode())
            h.update(f"  non-persistent {sorted(module._non_persistent_buffers_set)}\n".encode())
        h.update(f"inputs {_encode_input(example_inputs)}\n".encode())
        h.update(f"dynamic {_encode(dynamic_dims, tensors)}\n".encode())
    except _Unencodable as e:
        return Unfingerprintable(str(e))
    return h.hexdigest()


def _has_global_hooks() -> bool:
    from torch.nn.modules import module as m
    return any(getattr(m, name, None) for name in dir(m) if name.startswith("_global_")
               and name.endswith("hooks"))


def _class_text(cls: type) -> str:
    """`cls` and every class of its MRO up to nn.Module: qualified name, the version
    of its package and the digest of its source file."""
    parts = []
    for klass in cls.__mro__:
        if klass is torch.nn.Module or klass is object:
            break
        parts.append(f"{klass.__module__}.{klass.__qualname__}@{_file_digest(klass)}")
    return " < ".join(parts)


def _file_digest(obj: Any) -> str:
    module = sys.modules.get(getattr(obj, "__module__", "") or "")
    if module is None:
        raise _Unencodable(f"{obj!r}: its module is not loaded")
    top = module.__name__.split(".")[0]
    version = _package_version(top)
    try:
        path = inspect.getsourcefile(obj) or inspect.getfile(obj)
    except (TypeError, OSError):
        path = None
    if not path or not os.path.isfile(path):
        raise _Unencodable(f"{getattr(obj, '__qualname__', obj)!r} has no source file "
                           "(defined interactively?)")
    stat = os.stat(path)           # an edited (and reloaded) file has a new digest
    return f"{top}=={version}:{_digest_file(path, stat.st_mtime_ns, stat.st_size)}"


@functools.lru_cache(maxsize=None)
def _package_version(top: str) -> str:
    try:
        return importlib.metadata.version(top)
    except importlib.metadata.PackageNotFoundError:
        return "-"


@functools.lru_cache(maxsize=None)
def _digest_file(path: str, mtime_ns: int, size: int) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:32]


@functools.lru_cache(maxsize=1)
def kiln_source_digest() -> str:
    """A digest of every Python file of the kiln package (its subpackages: tests,
    benchmarks, examples and a virtual environment beside them aside)."""
    h = hashlib.sha256()
    for folder, dirs, files in os.walk(KILN_DIR):
        here = Path(folder)
        dirs[:] = sorted(d for d in dirs if (here / d / "__init__.py").is_file()
                         and d not in ("tests", "bench", "examples"))
        for name in sorted(f for f in files if f.endswith(".py")):
            h.update(f"{(here / name).relative_to(KILN_DIR).as_posix()}\n".encode())
            h.update((here / name).read_bytes())
    return h.hexdigest()


class _TensorDigests:
    """Tensor -> its encoding; tensors sharing storage are named by the first one."""

    def __init__(self) -> None:
        self.seen: dict[tuple[int, int], int] = {}

    def encode(self, t: torch.Tensor) -> str:
        if t.device.type != "cpu" or t.is_sparse or t.layout != torch.strided:
            raise _Unencodable(f"a {t.device.type} / {t.layout} tensor")
        storage = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        shared = self.seen.setdefault(storage, len(self.seen))
        raw = t.detach().contiguous().reshape(-1).view(torch.uint8).numpy()
        digest = xxhash.xxh3_128_hexdigest(raw)
        return (f"tensor({t.dtype}, {list(t.shape)}, strides={list(t.stride())}, "
                f"offset={t.storage_offset()}, storage#{shared}, {digest})")


def _encode(x: Any, tensors: _TensorDigests, depth: int = 0) -> str:
    """A deterministic text for an attribute value, or _Unencodable."""
    if depth > MAX_DEPTH:
        raise _Unencodable("attributes nest too deep (a reference cycle?)")
    enc = functools.partial(_encode, tensors=tensors, depth=depth + 1)
    if x is None or isinstance(x, (bool, int, float, complex, str, bytes)):
        return repr(x)
    if isinstance(x, torch.Tensor):
        return tensors.encode(x)
    if isinstance(x, torch.nn.Module):     # a submodule held as a plain attribute
        return f"module {_class_text(type(x))}"
    if isinstance(x, (torch.dtype, torch.device, torch.Size, torch.memory_format, enum.Enum)):
        return repr(x)
    if isinstance(x, (list, tuple)):
        return f"{type(x).__name__}[{', '.join(enc(i) for i in x)}]"
    if isinstance(x, (set, frozenset)):
        return f"{type(x).__name__}{{{', '.join(sorted(enc(i) for i in x))}}}"
    if isinstance(x, dict):
        items = sorted((enc(k), enc(v)) for k, v in x.items())
        return f"{type(x).__name__}{{{', '.join(f'{k}: {v}' for k, v in items)}}}"
    if isinstance(x, functools.partial):
        return f"partial({enc(x.func)}, {enc(x.args)}, {enc(x.keywords)})"
    if isinstance(x, (types.FunctionType, types.MethodType, type)):
        return _encode_code(x, enc)
    if isinstance(x, types.BuiltinFunctionType):
        return f"builtin {getattr(x, '__module__', '')}.{x.__qualname__}"
    if dataclasses.is_dataclass(x):
        fields = {f.name: getattr(x, f.name) for f in dataclasses.fields(x)}
        return f"{_class_text(type(x))}({enc(fields)})"
    if hasattr(x, "to_dict") and callable(x.to_dict):          # transformers' configs
        return f"{_class_text(type(x))}({enc(x.to_dict())})"
    raise _Unencodable(f"an attribute of type {type(x).__module__}.{type(x).__qualname__} "
                       "has no stable encoding")


def _encode_code(x: Any, enc) -> str:
    """A function, method or class: its qualified name and source file; a closure's
    cell values and a bound method's object too."""
    if isinstance(x, types.MethodType):
        owner = x.__self__
        owner_text = f"module {_class_text(type(owner))}" if isinstance(owner, torch.nn.Module) \
            else enc(owner)
        return f"method {x.__func__.__qualname__} of {owner_text} @{_file_digest(x.__func__)}"
    cells = [c.cell_contents for c in (getattr(x, "__closure__", None) or ())]
    return f"{type(x).__name__} {x.__module__}.{x.__qualname__}@{_file_digest(x)}" + \
        (f" closure {enc(cells)}" if cells else "")


def _encode_input(x: Any) -> str:
    """Example inputs: structure, dtypes, shapes, strides; non-tensor values as such."""
    if isinstance(x, torch.Tensor):
        return f"tensor({x.dtype}, {list(x.shape)}, strides={list(x.stride())})"
    if isinstance(x, (list, tuple)):
        return f"{type(x).__name__}[{', '.join(_encode_input(i) for i in x)}]"
    if isinstance(x, dict):
        return "dict{" + ", ".join(f"{k!r}: {_encode_input(v)}" for k, v in sorted(x.items())) + "}"
    return _encode(x, _TensorDigests())


# --- the store -------------------------------------------------------------------------------
ALIGNMENT = 64      # every weight starts on it: the runtime uses the mapped arrays as they are


class GraphCache:
    """Optimized graphs by fingerprint, under `root`. An entry holds the graph as `.kir`
    text without its weights (`graph.kir`), and the weights as one file of 64-byte
    aligned arrays (`weights.bin`, described by `weights.json`), which a hit maps
    copy-on-write: nothing is read or copied until a kernel touches it, and the
    runtime uses the arrays as they are. The memory plan is not stored (the caller
    plans again)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def _entry(self, digest: str) -> Path:
        return self.root / digest[:2] / digest

    def load(self, digest: str) -> Graph | None:
        """The stored graph, or None (absent or unreadable: the caller compiles)."""
        entry = self._entry(digest)
        if not (entry / "graph.kir").is_file():
            shutil.rmtree(entry, ignore_errors=True)   # a partial entry: let a store replace it
            return None
        try:
            table = json.loads((entry / "weights.json").read_text())
            blob = np.memmap(entry / "weights.bin", np.uint8, mode="c") if table else None
            constants = {}
            for ref, (dtype, shape, offset) in table.items():
                dt = NUMPY_DTYPES[dtype]
                count = int(np.prod(shape, dtype=np.int64))
                constants[ref] = blob[offset:offset + count * dt.itemsize].view(dt).reshape(shape)
            return parse((entry / "graph.kir").read_text(encoding="utf-8"), constants,
                         filename=str(entry / "graph.kir"))
        except Exception:  # noqa: BLE001  a damaged entry is a miss; it is replaced
            shutil.rmtree(entry, ignore_errors=True)
            return None

    def store(self, digest: str, graph: Graph) -> Path:
        entry = self._entry(digest)
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=entry.parent, prefix=f".{digest[:8]}-"))
        try:
            (tmp / "graph.kir").write_text(print_graph(graph), encoding="utf-8")
            constants, table, offset = graph.constants, {}, 0
            with open(tmp / "weights.bin", "wb") as f:
                for ref, array in constants.items():
                    array = np.ascontiguousarray(array)
                    pad = -offset % ALIGNMENT
                    f.write(b"\0" * pad)
                    offset += pad
                    table[ref] = [DTYPE_NAMES[array.dtype], list(array.shape), offset]
                    f.write(array.tobytes())
                    offset += array.nbytes
            (tmp / "weights.json").write_text(json.dumps(table))
            try:
                os.replace(tmp, entry)
            except OSError:               # another process stored it first: keep theirs
                pass
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return entry
