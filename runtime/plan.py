"""The execution plan: everything the runtime needs to run a compiled graph, as plain
data that round-trips exactly through JSON. It is the contract between the compiler
(which builds it: codegen names the kernels, `kiln.passes.memory` fills `memory`) and
the runtime (`Executor`), and it is stored in the artifact's `manifest.json`.

    Plan
      signature   inputs and outputs: (name, dtype, shape) in call / return order
      values      every value's TensorSpec: kiln dtype name ("f32") and shape, whose
                  dims are ints or symbol expressions ("batch", "batch*seq")
      constants   value name -> key in the weights file
      steps       Step(kernel, inputs, outputs, source, workspace), in execution order; a
                  kernel's parameters are its inputs then its outputs; `workspace` is the
                  scratch memory the kernel allocates while it runs (`Workspace`)
      memory      intermediate value -> slot id (values sharing a slot have disjoint
                  lifetimes; a slot holds the largest of its values)
      aliases     view value -> the value it views: no step makes a view; it is its
                  source's storage (all kiln buffers are row-major and contiguous) under
                  its own shape (reshape, squeeze, unsqueeze). Chains are allowed; the end
                  of the chain is the view's *root* (a graph input, constant or step output)
      inplace     step output -> the input of the same step whose slot it overwrites (an
                  elementwise step whose input dies there; same dtype and shape)

Names are SSA value names (`%t` in the `.kir` text). Graph inputs are bound by the
caller, constants come from the weights, and the step outputs that are the root of a
graph output get fresh arrays on every call (they are returned); every other step
output — an *intermediate* — lives in a slot. A view lives in its root's storage and
keeps it alive: a read of a view is a read of its root (`Plan.lifetimes`). Graph
inputs and constants are never written: no slot, so never a target of `inplace`.
JSON form (see `Plan.to_json`):

    {"format_version": 2, "name": "mlp",
     "signature": {"inputs": [{"name": "x", "dtype": "f32", "shape": ["batch", 4]}],
                   "outputs": [{"name": "out", "dtype": "f32", "shape": ["batch", 4]}]},
     "values": {"x": {"dtype": "f32", "shape": ["batch", 4]}, ...},
     "constants": {"b": "fc.bias"},
     "steps": [{"kernel": "add_relu", "inputs": ["x", "b"], "outputs": ["t"],
                "source": "%t: f32[batch, 4] = ...",
                "workspace": {"shared": 0, "per_thread": 0, "symbolic": 0}}, ...],
     "memory": {"t": 0}, "aliases": {"t2": "t"}, "inplace": {}}

A plan of another format version is refused (`from_json`): recompile the model.

This module imports only the standard library, `kiln.errors` and the runtime's
`dims` and `dtypes`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..errors import ArtifactError, DimExpressionError
from . import dims, dtypes
from .dims import Dim

FORMAT_VERSION = 3     # 2: aliases (views) and in-place steps; 3: kernel workspace


@dataclass(frozen=True)
class TensorSpec:
    """A value's type: kiln dtype name and (possibly symbolic) shape."""
    dtype: str
    shape: tuple[Dim, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(self.shape))

    def concrete_shape(self, bindings: Mapping[str, int]) -> tuple[int, ...]:
        return dims.evaluate_shape(self.shape, bindings)

    def nbytes(self, bindings: Mapping[str, int]) -> int:
        return dtypes.nbytes(self.dtype, self.concrete_shape(bindings))

    @property
    def symbols(self) -> frozenset[str]:
        return frozenset().union(*(dims.symbols(d) for d in self.shape))

    def __str__(self) -> str:
        return f"{self.dtype}[{', '.join(str(d) for d in self.shape)}]"


@dataclass(frozen=True)
class Port:
    """One entry of the signature: a graph input or output (named by its value)."""
    name: str
    dtype: str
    shape: tuple[Dim, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(self.shape))

    @property
    def spec(self) -> TensorSpec:
        return TensorSpec(self.dtype, self.shape)

    def __str__(self) -> str:
        return f"{self.name}: {self.spec}"


@dataclass(frozen=True)
class Signature:
    inputs: tuple[Port, ...]
    outputs: tuple[Port, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "inputs", tuple(self.inputs))
        object.__setattr__(self, "outputs", tuple(self.outputs))

    def __str__(self) -> str:
        return (f"({', '.join(map(str, self.inputs))}) -> "
                f"({', '.join(map(str, self.outputs))})")


THREADS_ENV = "TVM_NUM_THREADS"


def kernel_threads() -> int:
    """The threads kiln's kernels run on: $TVM_NUM_THREADS, else every core this process
    may run on (`kiln.runtime.ffi` sets up TVM's thread pool so)."""
    return int(os.environ.get(THREADS_ENV) or len(os.sched_getaffinity(0)))


@dataclass(frozen=True)
class Workspace:
    """The scratch memory a kernel allocates while it runs, as its code generator
    lowered it (TVM: the kernel's `TVMBackendAllocWorkspace` calls; small buffers live
    on the stack and are not counted): `shared` bytes once per call, plus `per_thread`
    bytes in each thread that runs one of its parallel tasks at the same time.
    `symbolic` counts the allocations whose size depends on symbols; their bytes are
    not in the other two."""
    shared: int = 0
    per_thread: int = 0
    symbolic: int = 0

    def nbytes(self, threads: int) -> int:
        """The bytes held at once when `threads` threads run the kernel."""
        return self.shared + threads * self.per_thread

    def __str__(self) -> str:
        return (f"{self.shared:,} B + {self.per_thread:,} B per thread"
                + (f" + {self.symbolic} symbolic" if self.symbolic else ""))


@dataclass(frozen=True)
class Step:
    """Run `kernel(*inputs, *outputs)`. `source` is the `.kir` text (and its origin) the
    kernel was compiled from, quoted when the kernel fails; `workspace` is the scratch
    memory the kernel allocates while it runs."""
    kernel: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    source: str = ""
    workspace: Workspace = Workspace()

    def __post_init__(self) -> None:
        object.__setattr__(self, "inputs", tuple(self.inputs))
        object.__setattr__(self, "outputs", tuple(self.outputs))

    @property
    def args(self) -> tuple[str, ...]:
        return self.inputs + self.outputs


@dataclass(frozen=True)
class Plan:
    signature: Signature
    values: Mapping[str, TensorSpec]
    constants: Mapping[str, str]
    steps: tuple[Step, ...]
    memory: Mapping[str, int] = field(default_factory=dict)
    name: str = "main"
    aliases: Mapping[str, str] = field(default_factory=dict)
    inplace: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("values", "constants", "memory", "aliases", "inplace"):
            object.__setattr__(self, name, dict(getattr(self, name)))
        object.__setattr__(self, "steps", tuple(self.steps))

    # --- derived facts ---------------------------------------------------------------
    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.signature.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.signature.outputs)

    def root(self, name: str) -> str:
        """The value whose storage `name` is: itself, or the end of its alias chain."""
        seen = {name}
        while name in self.aliases:
            name = self.aliases[name]
            if name in seen:
                raise ArtifactError(f"invalid plan {self.name!r}: the aliases of %{name} "
                                    "form a cycle")
            seen.add(name)
        return name

    @property
    def returned(self) -> list[str]:
        """Step outputs that are the root of a graph output, in definition order: each
        gets a fresh array per call (it is returned, directly or through a view)."""
        roots = {self.root(v) for v in self.output_names}
        return [v for s in self.steps for v in s.outputs if v in roots]

    @property
    def intermediates(self) -> list[str]:
        """Step outputs that are not `returned`, in definition order: the values that
        live in memory slots."""
        returned = set(self.returned)
        return [v for s in self.steps for v in s.outputs if v not in returned]

    @property
    def num_slots(self) -> int:
        return max(self.memory.values(), default=-1) + 1

    def lifetimes(self) -> dict[str, tuple[int, int]]:
        """Each step output's (defining step, last step reading it or a view of it). A
        value no step reads lives only during its own step. Values with disjoint
        intervals may share memory; a step's inputs and outputs are live together
        (except an `inplace` output and the input it overwrites)."""
        live: dict[str, tuple[int, int]] = {}
        for i, step in enumerate(self.steps):
            for v in map(self.root, step.inputs):
                if v in live:
                    live[v] = (live[v][0], i)
            for v in step.outputs:
                live[v] = (i, i)
        return live

    def slot_bytes(self, bindings: Mapping[str, int]) -> list[int]:
        """Bytes of each memory slot under `bindings`: the largest value it holds."""
        sizes = [0] * self.num_slots
        for value, slot in self.memory.items():
            sizes[slot] = max(sizes[slot], self.values[value].nbytes(bindings))
        return sizes

    def bindable_symbols(self) -> dict[str, tuple[str, int]]:
        """Symbols that appear as a bare input dim: symbol -> (first input, axis). (Not the
        packed last axis of an `i4` input: its storage size does not tell 2k-1 from 2k.)"""
        found: dict[str, tuple[str, int]] = {}
        for port in self.signature.inputs:
            for axis, d in enumerate(port.shape):
                packed = port.dtype in dtypes.PACKED and axis == len(port.shape) - 1
                if dims.is_symbol(d) and not packed:
                    found.setdefault(d.strip(), (port.name, axis))  # type: ignore[union-attr]
        return found

    # --- checking --------------------------------------------------------------------
    def validate(self) -> "Plan":
        """Check that the plan is runnable; raise ArtifactError naming the first fault.
        Returns the plan, so `Plan.from_json(j)` can end with `.validate()`."""
        def bad(msg: str) -> ArtifactError:
            return ArtifactError(f"invalid plan {self.name!r}: {msg}")

        for name, spec in self.values.items():
            if not dtypes.known(spec.dtype):
                raise bad(f"%{name} has unknown dtype {spec.dtype!r} "
                          f"(known: {', '.join(dtypes.NUMPY_DTYPES)})")
            for d in spec.shape:
                try:
                    dims.check(d)
                except DimExpressionError as e:
                    raise bad(f"%{name} has a bad dim: {e}") from None
        for kind, ports in (("input", self.signature.inputs), ("output", self.signature.outputs)):
            for port in ports:
                if port.name not in self.values:
                    raise bad(f"signature {kind} {port.name!r} has no entry in values")
                if self.values[port.name] != port.spec:
                    raise bad(f"signature {kind} {port} disagrees with values "
                              f"(%{port.name}: {self.values[port.name]})")
        inputs = self.input_names
        if len(set(inputs)) != len(inputs):
            raise bad(f"an input name repeats: {list(inputs)}")
        defined: set[str] = set(inputs)
        for name, key in self.constants.items():
            if name in defined:
                raise bad(f"%{name} is both a graph input and a constant")
            if name not in self.values:
                raise bad(f"constant %{name} has no entry in values")
            if not isinstance(key, str) or not key:
                raise bad(f"constant %{name} has no weights key")
            if not all(isinstance(d, int) for d in self.values[name].shape):
                raise bad(f"constant %{name} has a symbolic shape {self.values[name]}")
            defined.add(name)
        made = {v for step in self.steps for v in step.outputs}
        self._validate_aliases(bad, defined | made)
        for i, step in enumerate(self.steps):
            where = f"step {i} (kernel {step.kernel!r})"
            if not step.kernel:
                raise bad(f"step {i} names no kernel")
            for v in step.inputs:
                if self.root(v) not in defined:
                    raise bad(f"{where} reads %{v} before anything defines it")
            for v in step.outputs:
                if v in defined or v in self.aliases:
                    raise bad(f"{where} redefines %{v}")
                if v not in self.values:
                    raise bad(f"{where} writes %{v}, which has no entry in values")
                defined.add(v)
        defined |= self.aliases.keys()
        for name in self.values:
            if name not in defined:
                raise bad(f"values lists %{name}, which no input, constant, step or alias "
                          "defines")
        for name in self.output_names:
            if name not in defined:
                raise bad(f"graph output %{name} is never defined")
        self._validate_memory(bad)
        self._validate_inplace(bad)
        bindable = self.bindable_symbols()
        for name, spec in self.values.items():
            for sym in sorted(spec.symbols - bindable.keys()):
                raise bad(f"symbol {sym!r} in the shape of %{name} is not the whole dim of "
                          "any input, so no call can bind it")
        return self

    def _validate_aliases(self, bad, defined: set[str]) -> None:
        """Every view names a defined source of its dtype; same size where it is static."""
        for view, source in self.aliases.items():
            if view in defined:
                raise bad(f"%{view} is an alias of %{source} but is also an input, constant "
                          "or step output")
            if view not in self.values:
                raise bad(f"alias %{view} has no entry in values")
            if source not in defined and source not in self.aliases:
                raise bad(f"alias %{view} views %{source}, which nothing defines")
            root = self.values[self.root(view)]
            spec = self.values[view]
            if spec.dtype != root.dtype or spec.dtype in dtypes.PACKED:
                raise bad(f"alias %{view} ({spec}) views %{self.root(view)} ({root}); a view "
                          "keeps the dtype, and packed dtypes have no views")
            static = [s.shape for s in (spec, root) if all(isinstance(d, int) for d in s.shape)]
            if len(static) == 2 and spec.nbytes({}) != root.nbytes({}):
                raise bad(f"alias %{view} ({spec}) and its storage %{self.root(view)} ({root}) "
                          "differ in size")

    def _validate_inplace(self, bad) -> None:
        """Each in-place output overwrites an input of its own step: an intermediate that
        shares its slot, with the output's dtype and shape (no broadcasting), read by that
        step through no other shape. (That the two overlap at exactly that step and
        nowhere else is `_validate_memory`'s check.)"""
        step_of = {v: (i, s) for i, s in enumerate(self.steps) for v in s.outputs}
        for out, source in self.inplace.items():
            if out not in self.memory:
                raise bad(f"in-place output %{out} is not an intermediate with a slot")
            i, step = step_of[out]
            where = f"step {i} (kernel {step.kernel!r})"
            root = self.root(source)
            if source not in step.inputs:
                raise bad(f"{where} writes %{out} in place of %{source}, which it does not read")
            if root not in self.memory:
                raise bad(f"{where} writes %{out} in place of %{source}, whose storage "
                          f"%{root} is a graph input, constant or returned value")
            if self.memory[root] != self.memory[out]:
                raise bad(f"{where} writes %{out} (slot {self.memory[out]}) in place of "
                          f"%{source} (slot {self.memory[root]})")
            for v in step.inputs:
                if self.root(v) == root and self.values[v] != self.values[out]:
                    raise bad(f"{where} writes %{out} ({self.values[out]}) in place of "
                              f"%{source}, but reads %{v} ({self.values[v]}) from that storage")

    def _validate_memory(self, bad) -> None:
        intermediates = self.intermediates
        for v in intermediates:
            if v not in self.memory:
                raise bad(f"intermediate %{v} has no memory slot")
        extra = set(self.memory) - set(intermediates)
        if extra:
            raise bad(f"the memory plan gives a slot to {sorted(extra)}, which are not "
                      "intermediates (graph inputs, constants, views and returned values have "
                      "none)")
        for v, slot in self.memory.items():
            if isinstance(slot, bool) or not isinstance(slot, int) or slot < 0:
                raise bad(f"%{v} has slot {slot!r}; slots are non-negative integers")
        live = self.lifetimes()
        # In half steps: a value occupies its slot from 2*start to 2*end; an in-place
        # output from 2*start + 1, after its step has read the input it overwrites.
        by_slot: dict[int, list[tuple[int, int, str]]] = {}
        for v, slot in self.memory.items():
            s, e = live[v]
            by_slot.setdefault(slot, []).append((2 * s + (v in self.inplace), 2 * e, v))
        for slot, spans in by_slot.items():
            spans.sort()
            end, holder = -1, ""        # the latest-ending value seen so far in this slot
            for s, e, v in spans:
                if s <= end:
                    raise bad(f"%{holder} (live until step {end // 2}) and %{v} (steps "
                              f"{s // 2}..{e // 2}) share slot {slot} but are live at the "
                              "same time")
                if e > end:
                    end, holder = e, v

    # --- JSON ------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        """A JSON-compatible dict; `Plan.from_json(p.to_json()) == p`."""
        def port(p: Port) -> dict[str, Any]:
            return {"name": p.name, "dtype": p.dtype, "shape": list(p.shape)}
        return {
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "signature": {"inputs": [port(p) for p in self.signature.inputs],
                          "outputs": [port(p) for p in self.signature.outputs]},
            "values": {n: {"dtype": s.dtype, "shape": list(s.shape)}
                       for n, s in self.values.items()},
            "constants": dict(self.constants),
            "steps": [{"kernel": s.kernel, "inputs": list(s.inputs),
                       "outputs": list(s.outputs), "source": s.source,
                       "workspace": {"shared": s.workspace.shared,
                                     "per_thread": s.workspace.per_thread,
                                     "symbolic": s.workspace.symbolic}}
                      for s in self.steps],
            "memory": dict(self.memory),
            "aliases": dict(self.aliases),
            "inplace": dict(self.inplace),
        }

    @classmethod
    def from_json(cls, data: Any) -> "Plan":
        """Read `to_json`'s form, checking every field; ArtifactError names the field."""
        r = _Reader()
        version = r.integer(r.mapping(data, "plan").get("format_version"),
                            "plan.format_version")
        if version > FORMAT_VERSION:
            raise ArtifactError(f"the plan has format version {version}, newer than this "
                                f"kiln reads ({FORMAT_VERSION}); upgrade kiln")
        if version < FORMAT_VERSION:
            raise ArtifactError(f"the plan has format version {version}, older than this "
                                f"kiln reads ({FORMAT_VERSION}, which adds each kernel's "
                                "workspace); compile the model again with this kiln")
        obj = r.obj(data, "plan", {"format_version", "name", "signature", "values",
                                   "constants", "steps", "memory", "aliases", "inplace"})
        sig = r.obj(obj["signature"], "plan.signature", {"inputs", "outputs"})
        ports = {k: tuple(r.port(p, f"plan.signature.{k}[{i}]")
                          for i, p in enumerate(r.seq(sig[k], f"plan.signature.{k}")))
                 for k in ("inputs", "outputs")}
        values = {n: r.spec(s, f"plan.values[{n!r}]")
                  for n, s in r.mapping(obj["values"], "plan.values").items()}
        constants = {n: r.text(k, f"plan.constants[{n!r}]")
                     for n, k in r.mapping(obj["constants"], "plan.constants").items()}
        steps = []
        for i, s in enumerate(r.seq(obj["steps"], "plan.steps")):
            where = f"plan.steps[{i}]"
            s = r.obj(s, where, {"kernel", "inputs", "outputs", "source", "workspace"})
            ws = r.obj(s["workspace"], f"{where}.workspace", {"shared", "per_thread", "symbolic"})
            steps.append(Step(r.text(s["kernel"], f"{where}.kernel"),
                              r.names(s["inputs"], f"{where}.inputs"),
                              r.names(s["outputs"], f"{where}.outputs"),
                              r.text(s["source"], f"{where}.source"),
                              Workspace(*(r.count(ws[k], f"{where}.workspace.{k}")
                                          for k in ("shared", "per_thread", "symbolic")))))
        memory = {n: r.integer(k, f"plan.memory[{n!r}]")
                  for n, k in r.mapping(obj["memory"], "plan.memory").items()}
        aliases, inplace = ({n: r.text(v, f"plan.{key}[{n!r}]")
                             for n, v in r.mapping(obj[key], f"plan.{key}").items()}
                            for key in ("aliases", "inplace"))
        return cls(Signature(ports["inputs"], ports["outputs"]), values, constants,
                   tuple(steps), memory, r.text(obj["name"], "plan.name"), aliases,
                   inplace).validate()


class _Reader:
    """Typed reads from parsed JSON; each failure is an ArtifactError naming the field."""

    @staticmethod
    def fail(where: str, want: str, got: Any) -> ArtifactError:
        return ArtifactError(f"{where}: expected {want}, got {type(got).__name__} {got!r:.60}")

    def obj(self, x: Any, where: str, keys: set[str]) -> dict[str, Any]:
        if not isinstance(x, dict):
            raise self.fail(where, "an object", x)
        missing, extra = keys - x.keys(), x.keys() - keys
        if missing:
            raise ArtifactError(f"{where}: missing field(s) {sorted(missing)}")
        if extra:
            raise ArtifactError(f"{where}: unknown field(s) {sorted(extra)}")
        return x

    def mapping(self, x: Any, where: str) -> dict[str, Any]:
        if not isinstance(x, dict):
            raise self.fail(where, "an object", x)
        return x

    def seq(self, x: Any, where: str) -> list[Any]:
        if not isinstance(x, list):
            raise self.fail(where, "a list", x)
        return x

    def text(self, x: Any, where: str) -> str:
        if not isinstance(x, str):
            raise self.fail(where, "a string", x)
        return x

    def integer(self, x: Any, where: str) -> int:
        if isinstance(x, bool) or not isinstance(x, int):
            raise self.fail(where, "an integer", x)
        return x

    def count(self, x: Any, where: str) -> int:
        if self.integer(x, where) < 0:
            raise self.fail(where, "a count (>= 0)", x)
        return x

    def names(self, x: Any, where: str) -> tuple[str, ...]:
        return tuple(self.text(v, f"{where}[{i}]") for i, v in enumerate(self.seq(x, where)))

    def shape(self, x: Any, where: str) -> tuple[Dim, ...]:
        out = []
        for i, d in enumerate(self.seq(x, where)):
            if isinstance(d, bool) or not isinstance(d, (int, str)):
                raise self.fail(f"{where}[{i}]", "an int or a dim expression", d)
            out.append(d)
        return tuple(out)

    def spec(self, x: Any, where: str) -> TensorSpec:
        x = self.obj(x, where, {"dtype", "shape"})
        return TensorSpec(self.text(x["dtype"], f"{where}.dtype"),
                          self.shape(x["shape"], f"{where}.shape"))

    def port(self, x: Any, where: str) -> Port:
        x = self.obj(x, where, {"name", "dtype", "shape"})
        return Port(self.text(x["name"], f"{where}.name"), self.text(x["dtype"], f"{where}.dtype"),
                    self.shape(x["shape"], f"{where}.shape"))
