"""The tuning database of the TVM CPU backend: for each contraction workload measured
on a CPU, the template knobs that ran it fastest there.

    workload_key(node)     what a contraction kernel's core depends on: op, input and
                           output types, attributes (value names aside). A fused group
                           is looked up by its contraction member; the epilogue does
                           not count
    Knobs                  the template's free choices: the conv strategy (the rows or
                           the columns GEMM of conv.py), the rows of the register
                           tile (MR), conv_nchwc's register tile (RW columns x OT
                           channel blocks); a field left None keeps the heuristic
    knobs_for(node)        what the lowering of `node` uses: the database's entry for
                           its workload, else Knobs() (the heuristics); the database
                           is the host CPU's, or within `building_for(target)` that
                           target's CPU's
    TuningDatabase         one JSON file per CPU (LLVM's name for it, e.g.
                           "rocketlake"): codegen/tvm/tuning/<cpu>.json, checked in, or
                           the file $KILN_TUNING_DB names; `kiln tune MODEL` measures
                           candidates and writes it (tune.py)
    forcing(key, knobs)    a context in which `knobs_for` answers `knobs` for the
                           workload `key` (the tuner compiles its candidates so)

The kernel cache keys a kernel by its knobs too (`describe`), so a retuned workload
compiles afresh while the others stay cached. Nothing here imports TVM.
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

from ...errors import CodegenError
from ...ir import Node
from ...ir.printer import format_attrs
from ...ir.registry import CONTRACTION

DB_ENV = "KILN_TUNING_DB"
DB_DIR = Path(__file__).parent / "tuning"
FORMAT = 1
STRATEGIES = ("rows", "columns")     # conv.py's two GEMMs


def workload_key(node: Node) -> str:
    """`op(input types){attrs} -> (output types)`: the node's kernel, value names aside."""
    ins = ", ".join(str(v.type) for v in node.inputs)
    outs = ", ".join(str(v.type) for v in node.outputs)
    return f"{node.op}({ins}){format_attrs(node)} -> ({outs})"


@dataclass(frozen=True)
class Knobs:
    strategy: str | None = None   # conv: "rows" or "columns"
    mr: int | None = None         # rows per register tile
    rw: int | None = None         # conv_nchwc's register tile: output columns ...
    ot: int | None = None         # ... x output-channel blocks (both, or neither)

    def __post_init__(self) -> None:
        if self.strategy not in (None, *STRATEGIES):
            raise CodegenError(f"tuning knob strategy={self.strategy!r}: expected one of "
                               f"{', '.join(STRATEGIES)}")
        for name, top in (("mr", 16), ("rw", 32), ("ot", 8)):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, int) and 1 <= value <= top):
                raise CodegenError(f"tuning knob {name}={value!r}: expected an int in 1..{top}")
        if (self.rw is None) != (self.ot is None):
            raise CodegenError(f"tuning knobs rw={self.rw!r}, ot={self.ot!r}: give both or "
                               "neither")

    def __str__(self) -> str:
        chosen = [f"{k}={v}" for k, v in asdict(self).items() if v is not None]
        return ", ".join(chosen) or "heuristics"

    def as_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class Record:
    """One workload's measurement: the knobs chosen and GFLOP/s of each candidate."""
    knobs: Knobs
    measured: dict[str, float] = field(default_factory=dict)   # str(knobs) -> GFLOP/s

    def as_json(self) -> dict:
        return {"knobs": self.knobs.as_json(), "measured": self.measured}


@dataclass
class TuningDatabase:
    cpu: str
    records: dict[str, Record] = field(default_factory=dict)
    path: Path | None = None

    @classmethod
    def load(cls, path: Path, cpu: str) -> "TuningDatabase":
        """The database at `path`; an empty one for `cpu` if there is no file."""
        if not path.exists():
            return cls(cpu, {}, path)
        try:
            data = json.loads(path.read_text())
            if data.get("format") != FORMAT:
                raise ValueError(f"format {data.get('format')!r}, expected {FORMAT}")
            records = {key: Record(Knobs(**r["knobs"]), dict(r.get("measured", {})))
                       for key, r in data["workloads"].items()}
        except (ValueError, KeyError, TypeError, AttributeError, CodegenError) as e:
            raise CodegenError(f"tuning database {path} is damaged: {e} (delete it or run "
                               "`kiln tune` again)") from None
        if data.get("cpu") != cpu:
            raise CodegenError(f"tuning database {path} was measured on {data.get('cpu')!r}, "
                               f"this CPU is {cpu!r}")
        return cls(cpu, records, path)

    def save(self, path: Path | None = None) -> Path:
        """Write the database (sorted, so a retune diffs by workload); atomic."""
        path = Path(path or self.path or default_path(self.cpu))
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {"format": FORMAT, "cpu": self.cpu,
                "workloads": {k: self.records[k].as_json() for k in sorted(self.records)}}
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1)
            f.write("\n")
        os.replace(tmp, path)
        self.path = path
        return path


def default_path(cpu: str) -> Path:
    """$KILN_TUNING_DB, else the checked-in database of `cpu`."""
    return Path(os.environ[DB_ENV]) if os.environ.get(DB_ENV) else DB_DIR / f"{cpu}.json"


_loaded: dict[tuple[Path, float], TuningDatabase] = {}
_forced: dict[str, Knobs] = {}
_building_for: list[str] = []     # the CPU of the build in progress (build.py sets it)


@functools.lru_cache(maxsize=1)
def host_cpu() -> str:
    """LLVM's name for this CPU (e.g. "rocketlake"), as `cpu_target()` compiles for it."""
    from .target import cpu_target
    return str(json.loads(str(cpu_target()))["mcpu"])


@contextlib.contextmanager
def building_for(target: str) -> Iterator[None]:
    """Within it, lookups use the database of `target`'s CPU (a TVM target as JSON;
    one with no "mcpu" has no database): build.py wraps a build in it, so a fully
    cached build never imports TVM to learn the host CPU."""
    _building_for.append(str(json.loads(target).get("mcpu", "")))
    try:
        yield
    finally:
        _building_for.pop()


def database() -> TuningDatabase:
    """The database of the CPU being built for (else the host's), re-read when its
    file changes."""
    cpu = _building_for[-1] if _building_for else host_cpu()
    path = default_path(cpu)
    stamp = path.stat().st_mtime if path.exists() else 0.0
    if (path, stamp) not in _loaded:
        _loaded.clear()
        _loaded[(path, stamp)] = TuningDatabase.load(path, cpu)
    return _loaded[(path, stamp)]


def knobs_for(node: Node) -> Knobs:
    """The knobs the lowering of contraction `node` uses."""
    key = workload_key(node)
    if key in _forced:
        return _forced[key]
    record = database().records.get(key)
    return record.knobs if record else Knobs()


def describe(node: Node) -> str:
    """The knobs of `node`'s contractions (a fused group's members) that differ from
    the heuristics, for the kernel cache's key; "" when there are none."""
    members = node.body.nodes if node.body is not None else [node]
    tuned = [f"{m.op}: {k}" for m in members if CONTRACTION in m.opdef.traits
             and (k := knobs_for(m)) != Knobs()]
    return f" tuned[{'; '.join(tuned)}]" if tuned else ""


@contextlib.contextmanager
def forcing(key: str, knobs: Knobs) -> Iterator[None]:
    _forced[key] = knobs
    try:
        yield
    finally:
        del _forced[key]
