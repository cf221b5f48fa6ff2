"""The persistent kernel cache: every compiled kernel's object file kept on disk under
a hash of what makes the kernel what it is, so that each kernel compiles once per
machine, whatever model or process asks for it.

    kernel_key(node)           the node's kernel, value names aside: op, attributes,
                               input/output types, the tuning knobs its contractions
                               use (tuning.py) and, for a fused group, its body
                               printed with its values renamed by position
    CacheEntry.of(key, target) + the target (LLVM CPU included) and codegen_salt(),
                               a hash of kiln's TVM code generator and TVM's version:
                               the SHA-256 digest that names the entry
    open_cache(cache_dir)      the cache at `cache_dir`, $KILN_CACHE_DIR or
                               ~/.cache/kiln/kernels; None when "off" or False
    KernelCache.load(entry, stats)  the object file's bytes and the kernel's workspace
                               (a `CachedKernel`: a hit), or None (a miss; a damaged
                               entry is deleted and counted as `rebuilt`)
    KernelCache.store(entry, payload, workspace)

An entry is one file, `<digest[:2]>/<digest>.kernel`: a JSON header line (format, key,
target, salt, payload size and SHA-256, the kernel's workspace as [shared, per thread,
symbolic]), then the object file. A reader checks the
header against what it asked for and the payload against its hash. A writer writes a
temporary file in the same folder and renames it over the entry (`os.replace`), so
a reader sees a whole entry or none, and concurrent compiles of one kernel each write
a whole entry (the last rename wins; both are the same kernel).

Nothing here imports TVM: a compile whose kernels are all cached never loads it (the
host's LLVM target is remembered in the cache too, under a fingerprint of the CPU).
"""
from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import os
import platform
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ...errors import CodegenError
from ...ir import Graph, Node, Value
from ...ir.printer import format_attrs
from ...runtime.plan import Workspace
from . import tuning
from .tuning import workload_key

CACHE_ENV = "KILN_CACHE_DIR"
DEFAULT_DIR = Path("~/.cache/kiln/kernels")
OFF = "off"                       # KILN_CACHE_DIR=off or --cache-dir off: no cache
FORMAT = 2                        # of an entry; part of the salt (2: workspace)
CODEGEN_DIR = Path(__file__).parent
_SALTED_PACKAGES = ("apache-tvm", "apache-tvm-ffi")


# --- keys ------------------------------------------------------------------------------------
def kernel_key(node: Node) -> str:
    """What makes two nodes compile to the same kernel: op, attributes, input and
    output types and, for a fused group, its body with values named by position
    (`%i0` for its first input, `%v0` for the first value its nodes define).
    Value names, graph names and source locations do not count."""
    head = workload_key(node) + tuning.describe(node)
    return head if node.body is None else f"{head} {_canonical_body(node.body)}"


def _canonical_body(body: Graph) -> str:
    names: dict[int, str] = {id(v): f"%i{k}" for k, v in enumerate(body.inputs)}

    def name(v: Value) -> str:
        if id(v) not in names:
            raise CodegenError(f"fused body {body.name}: %{v.name} is used but neither an "
                               "input of the body nor defined in it")
        return names[id(v)]

    lines = [f"({', '.join(f'{names[id(v)]}: {v.type}' for v in body.inputs)}) {{"]
    for node in body.nodes:
        args = ", ".join(name(v) for v in node.inputs)
        for v in node.outputs:
            names[id(v)] = f"%v{len(names) - len(body.inputs)}"
        outs = ", ".join(f"{names[id(v)]}: {v.type}" for v in node.outputs)
        body_text = "" if node.body is None else " " + _canonical_body(node.body)
        lines.append(f"{outs} = {node.op}({args}){format_attrs(node)}{body_text}")
    lines.append(f"return {', '.join(name(v) for v in body.outputs)}")
    return "\n".join(lines) + "\n}"


@functools.lru_cache(maxsize=1)
def codegen_salt() -> str:
    """A hash of every file of kiln's TVM code generator (lowerings, schedules; not
    the tuning databases), the entry format and the TVM packages' versions: a changed
    schedule or a new TVM makes every earlier entry unreachable."""
    h = hashlib.sha256(f"format {FORMAT}\n".encode())
    for package in _SALTED_PACKAGES:
        h.update(f"{package} {importlib.metadata.version(package)}\n".encode())
    for path in sorted(CODEGEN_DIR.rglob("*")):
        # the tuning databases are not: kernel keys name the knobs they use
        if path.is_file() and "__pycache__" not in path.parts and \
                path.parent != tuning.DB_DIR:
            h.update(f"{path.relative_to(CODEGEN_DIR).as_posix()}\n".encode())
            h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


@dataclass(frozen=True)
class CacheEntry:
    """One kernel's place in the cache: the digest of its key, target and salt."""
    key: str
    target: str
    salt: str
    digest: str

    @classmethod
    def of(cls, key: str, target: str, salt: str | None = None) -> CacheEntry:
        salt = salt or codegen_salt()
        text = f"{key}\n--- target\n{target}\n--- salt\n{salt}"
        return cls(key, target, salt, hashlib.sha256(text.encode()).hexdigest())

    def header(self, payload: bytes, workspace: Workspace) -> dict:
        return {"format": FORMAT, "key": self.key, "target": self.target, "salt": self.salt,
                "size": len(payload), "sha256": hashlib.sha256(payload).hexdigest(),
                "workspace": [workspace.shared, workspace.per_thread, workspace.symbolic]}


@dataclass(frozen=True)
class CachedKernel:
    """A cache hit: the kernel's object file and its workspace."""
    payload: bytes
    workspace: Workspace


@dataclass
class CacheStats:
    """Per build: kernels found in the cache, kernels compiled, damaged entries rebuilt
    (each also counted as a miss)."""
    hits: int = 0
    misses: int = 0
    rebuilt: int = 0

    def __str__(self) -> str:
        return (f"{self.hits} hits, {self.misses} misses"
                + (f" ({self.rebuilt} damaged entries rebuilt)" if self.rebuilt else ""))


# --- the cache ---------------------------------------------------------------------------
class KernelCache:
    """Kernel object files on disk (see the module docstring for the entry format)."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser()

    def path(self, entry: CacheEntry) -> Path:
        return self.root / entry.digest[:2] / f"{entry.digest}.kernel"

    def load(self, entry: CacheEntry, stats: CacheStats) -> CachedKernel | None:
        """The entry's object file and workspace, counted as a hit in `stats`; None (a
        miss) when absent or damaged (truncated, foreign, wrong hash: deleted, counted
        `rebuilt`)."""
        path = self.path(entry)
        try:
            with path.open("rb") as f:
                header_line, payload = f.readline(), f.read()
        except FileNotFoundError:
            stats.misses += 1
            return None
        except OSError as e:
            raise CodegenError(f"cannot read kernel cache entry {path}: {e.strerror}") from None
        try:
            header = json.loads(header_line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            header = None
        workspace = _workspace(header)
        if workspace is None or header != entry.header(payload, workspace):
            stats.misses += 1
            stats.rebuilt += 1
            path.unlink(missing_ok=True)
            return None
        stats.hits += 1
        return CachedKernel(payload, workspace)

    def store(self, entry: CacheEntry, payload: bytes, workspace: Workspace) -> Path:
        """Write the entry whole (temp file, then rename); returns its path."""
        path = self.path(entry)
        header = json.dumps(entry.header(payload, workspace), sort_keys=True).encode() + b"\n"
        _write_atomic(path, header + payload)
        return path

    def host_target(self, fingerprint: str) -> str | None:
        """The LLVM target remembered for the host CPU with `fingerprint`, if any."""
        try:
            data = json.loads(self._host_path(fingerprint).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        target = data.get("target") if isinstance(data, dict) else None
        return target if isinstance(target, str) else None

    def remember_host_target(self, fingerprint: str, target: str) -> None:
        _write_atomic(self._host_path(fingerprint), json.dumps({"target": target}).encode())

    def _host_path(self, fingerprint: str) -> Path:
        return self.root / "host" / f"{fingerprint}.json"

    def __repr__(self) -> str:
        return f"<KernelCache {self.root}>"


def _workspace(header: object) -> Workspace | None:
    """The workspace an entry's header records, None when it has no valid one."""
    counts = header.get("workspace") if isinstance(header, dict) else None
    if not (isinstance(counts, list) and len(counts) == 3
            and all(type(c) is int and c >= 0 for c in counts)):
        return None
    return Workspace(*counts)


def _write_atomic(path: Path, data: bytes) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(temp, path)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
    except OSError as e:
        raise CodegenError(f"cannot write kernel cache entry {path}: {e.strerror} (set "
                           f"{CACHE_ENV} to a writable folder, or to {OFF!r})") from None


def open_cache(cache_dir: str | Path | bool | None = None) -> KernelCache | None:
    """The kernel cache to use: `cache_dir` if given (False or "off": none), else
    $KILN_CACHE_DIR ("off": none), else ~/.cache/kiln/kernels."""
    if cache_dir is None or cache_dir is True:
        cache_dir = os.environ.get(CACHE_ENV) or DEFAULT_DIR
    if cache_dir is False or str(cache_dir).strip().lower() == OFF:
        return None
    return KernelCache(cache_dir)


def host_fingerprint() -> str | None:
    """A hash of what decides LLVM's host CPU name (machine, CPU vendor, family, model,
    stepping, feature flags) and of kiln's codegen salt; None off Linux."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    first = text.split("\n\n", 1)[0]
    fields = {"vendor_id", "cpu family", "model", "stepping", "flags"}
    wanted = [line for line in first.splitlines() if line.split(":", 1)[0].strip() in fields]
    if not wanted:
        return None
    data = "\n".join([platform.machine(), codegen_salt(), *wanted])
    return hashlib.sha256(data.encode()).hexdigest()[:32]
