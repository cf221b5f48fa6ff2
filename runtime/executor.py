"""The executor: runs a `Plan` with the kernels of one compiled library.

    ex = Executor(plan, "kernels.so", weights)     # weights: key -> NumPy array
    outs = ex(x, y)  or  ex(x=x, y=y)              # list of NumPy arrays, output order

A call goes  prepare -> run:

- `prepare` checks every input against the signature — count and names, dtype (never
  cast), CPU device, rank and every dim — and binds the symbolic dims: a bare-symbol
  dim binds its symbol (the same symbol must get the same size everywhere), an
  expression dim must equal its value once the symbols are bound. Inputs become
  `tvm_ffi` tensors without a copy (NumPy arrays, and torch tensors or anything else
  with `__dlpack__`); an input is copied only when it is not C-contiguous or not
  64-byte aligned, which TVM's kernels require.
- `run` looks up the memory for this binding of the symbols — the plan's slots,
  allocated on the first call at that binding and cached (LRU, `max_cached_bindings`)
  together with their tensor wrappers, the views of slots and constants, and each
  step's argument list with the places that change per call — takes aligned arrays
  for the values the graph returns (the last call's, when the caller kept no
  reference to them; else fresh), makes the views of inputs and of those arrays,
  fills them into the argument lists and calls each step's kernel with its inputs
  then its outputs. An in-place step simply gets the same slot for an input and its
  output.

A view (`Plan.aliases`) is its root's array reshaped: no kernel, no copy. Constants
are taken from `weights` once, as 64-byte aligned arrays (copied only if they are
not already). Every returned array is the caller's own: a graph output that is (a
view of) an input or a constant, or that shares its storage with an earlier output,
is returned as a copy. Calls are serialised by a lock (the slots are shared). Errors are
`RuntimeInputError` (naming the input), `KernelError` (naming the kernel and its
source) and `ArtifactError` (a plan or library that cannot run).
"""
from __future__ import annotations

import sys
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..errors import ArtifactError, DimExpressionError, KernelError, RuntimeInputError
from . import dims, dtypes, ffi
from .buffers import ALIGNMENT, aligned_copy, aligned_empty, ensure_aligned, is_aligned
from .plan import Plan, Port, Signature, Step

DEFAULT_MAX_CACHED_BINDINGS = 8


@dataclass
class Prepared:
    """Checked inputs of one call: the symbol bindings and one kernel-ready tensor per
    input (`arrays` keeps alive any aligned copies)."""
    bindings: dict[str, int]
    tensors: list[Any]
    arrays: list[np.ndarray | None]


@dataclass
class _Returned:
    """A step output the graph returns: the array handed to the caller, its kernel
    tensor, and the reference counts of the array and of its memory while only the
    executor holds them (`references`)."""
    array: np.ndarray
    tensor: Any
    unshared: tuple[int, int] = (0, 0)

    @classmethod
    def allocate(cls, shape: tuple[int, ...], dtype: np.dtype) -> _Returned:
        returned = cls(aligned_empty(shape, dtype), None)   # no local name for the array:
        returned.tensor = ffi.to_tensor(returned.array)     # `unshared` counts no caller
        returned.unshared = returned.references()
        return returned

    def references(self) -> tuple[int, int]:
        """References to the array (the caller's result, a torch.from_numpy or a
        memoryview of it hold one each) and to its memory (every NumPy view holds one)."""
        return sys.getrefcount(self.array), sys.getrefcount(self.array.base)


@dataclass
class _Memory:
    """Everything allocated for one binding of the symbols."""
    slots: list[np.ndarray]
    outputs: list[tuple[str, tuple[int, ...], np.dtype]]  # returned step outputs to allocate
    views: list[tuple[str, str, tuple[int, ...]]]  # per call: (view, its root, its shape)
    shapes: dict[str, tuple[int, ...]]             # storage shape of every view
    step_args: list[list[Any]]     # per step: its arguments, None where they change per call
    step_fills: list[list[tuple[int, int]]]  # per step: (argument, index into a call's
    #   per-call tensors: the inputs, then the returned outputs, then the views above)
    returned: dict[str, _Returned] = field(default_factory=dict)   # the last call's


class Executor:
    def __init__(self, plan: Plan, kernel_module_path: str | Path | None,
                 weights: Mapping[str, np.ndarray], *,
                 max_cached_bindings: int = DEFAULT_MAX_CACHED_BINDINGS):
        self.plan = plan.validate()
        self.path = Path(kernel_module_path) if kernel_module_path else None
        self.max_cached_bindings = max(1, max_cached_bindings)
        kernel_names = list(dict.fromkeys(s.kernel for s in plan.steps))
        functions: dict[str, Any] = {}
        self.module = None          # a plan without steps needs no kernel library
        if kernel_names:
            if self.path is None:
                raise ArtifactError(f"plan {plan.name!r} calls kernels but no kernel library "
                                    "was given")
            self.module, functions = ffi.load_kernels(self.path, kernel_names)
        self._steps = [(i, s, functions[s.kernel]) for i, s in enumerate(plan.steps)]
        self._constants, self._constant_tensors = self._load_constants(weights)
        self._symbols = sorted(plan.bindable_symbols())
        self._ports = plan.signature.inputs
        self._dtypes = [dtypes.numpy_dtype(p.dtype) for p in self._ports]
        self._static = [dtypes.storage_shape(p.dtype, tuple(  # static dims as stored
            d if isinstance(d, int) else 1 for d in p.shape)) for p in self._ports]
        # every input's shape, when no input dim is a symbol: a call whose shapes equal
        # it needs no binding (the common case, checked first)
        self._all_static = (self._static if not any(isinstance(d, str) for p in self._ports
                                                    for d in p.shape) else None)
        self._returned = plan.returned
        self._roots = {v: plan.root(v) for v in plan.aliases}
        self._cache: OrderedDict[tuple[int, ...], _Memory] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def signature(self) -> Signature:
        return self.plan.signature

    def __repr__(self) -> str:
        library = self.path.name if self.path else "no kernels"
        return f"<kiln Executor {self.plan.name} {self.plan.signature} ({library})>"

    def _load_constants(self, weights: Mapping[str, np.ndarray]):
        arrays: dict[str, np.ndarray] = {}
        for value, key in self.plan.constants.items():
            spec = self.plan.values[value]
            if key not in weights:
                raise ArtifactError(f"the weights hold no {key!r} for constant %{value}")
            array = np.asarray(weights[key])
            want = dtypes.storage_shape(spec.dtype, spec.shape)  # type: ignore[arg-type]
            if array.dtype != dtypes.numpy_dtype(spec.dtype) or array.shape != want:
                raise ArtifactError(f"weight {key!r} for constant %{value} is {array.dtype}"
                                    f"{list(array.shape)}, the plan expects {spec}")
            arrays[value] = ensure_aligned(array)
        return arrays, {v: ffi.to_tensor(a) for v, a in arrays.items()}

    # --- a call ------------------------------------------------------------------------
    def __call__(self, *inputs: Any, **named: Any) -> list[np.ndarray]:
        return self.run(self.prepare(*inputs, **named))

    def prepare(self, *inputs: Any, **named: Any) -> Prepared:
        """Check the inputs, bind the symbols, make every input kernel-ready."""
        given = self._match(inputs, named)
        views = [self._view(port, dt, x) for port, dt, x in zip(self._ports, self._dtypes, given)]
        shapes = [shape for _, shape in views]
        bindings = {} if shapes == self._all_static else self._bind(shapes)
        tensors, arrays = [], []
        for (tensor, _), x in zip(views, given):
            tensor, array = self._kernel_ready(tensor, x)
            tensors.append(tensor)
            arrays.append(array)
        return Prepared(bindings, tensors, arrays)

    def run(self, prepared: Prepared) -> list[np.ndarray]:
        """Run the steps on prepared inputs; return the graph outputs as NumPy arrays."""
        with self._lock:
            memory = self._memory(prepared.bindings)
            made = self._returned_arrays(memory)
            for (i, step, kernel), args in zip(self._steps, self._arguments(prepared, memory,
                                                                            made)):
                try:
                    kernel(*args)
                except Exception as e:  # noqa: BLE001  kernels raise TypeError, ValueError, ...
                    where = f"\n  compiled from: {step.source}" if step.source else ""
                    raise KernelError(f"kernel {step.kernel!r} (step {i} of plan "
                                      f"{self.plan.name!r}) failed: {e}{where}") from e
        return self._results(prepared, made, memory.shapes)

    def step_arguments(self, prepared: Prepared) -> list[tuple[Step, Any, list[Any]]]:
        """Each step with its kernel function and the tensors a run on `prepared` calls
        it with (the executor's own buffers), for profiling one kernel at a time
        (bench/kernels.py). The buffers stay valid until a call with other symbol
        bindings; calling kernels on them while the executor runs is the caller's race."""
        with self._lock:
            memory = self._memory(prepared.bindings)
            arguments = self._arguments(prepared, memory, self._returned_arrays(memory))
        return [(step, kernel, args) for (_, step, kernel), args in zip(self._steps, arguments)]

    def _returned_arrays(self, memory: _Memory) -> dict[str, np.ndarray]:
        """An array for each step output the graph returns: the previous call's array,
        with its kernel tensor, when nothing references it or its memory any more (the
        caller dropped that result and every view of it), else fresh memory. Reuse
        spares the page faults and cache misses of new memory on every call, as an
        arena allocator would, and the making of arrays and tensors."""
        made: dict[str, np.ndarray] = {}
        for name, shape, dtype in memory.outputs:
            kept = memory.returned.get(name)
            if kept is None or kept.references() != kept.unshared:
                kept = memory.returned[name] = _Returned.allocate(shape, dtype)
            made[name] = kept.array
        return made

    def _arguments(self, prepared: Prepared, memory: _Memory, made: dict[str, np.ndarray]
                   ) -> list[list[Any]]:
        """Each step's argument tensors for one call: the binding's fixed tensors
        (constants, slots, views of them) with this call's inputs, returned arrays and
        views of those filled in."""
        per_call = list(prepared.tensors)
        per_call += [memory.returned[name].tensor for name, _, _ in memory.outputs]
        per_call += [ffi.to_tensor(_reshaped(self._array(root, prepared, made), shape, view,
                                             root)) for view, root, shape in memory.views]
        arguments = []
        for fixed, fills in zip(memory.step_args, memory.step_fills):
            args = list(fixed)
            for position, index in fills:
                args[position] = per_call[index]
            arguments.append(args)
        return arguments

    def _array(self, name: str, prepared: Prepared, made: dict[str, np.ndarray]) -> np.ndarray:
        """The array of a graph input, a constant or a returned step output."""
        if name in made:
            return made[name]
        if name in self._constants:
            return self._constants[name]
        return ffi.to_numpy(prepared.tensors[self.plan.input_names.index(name)])

    def _results(self, prepared: Prepared, made: dict[str, np.ndarray],
                 shapes: dict[str, tuple[int, ...]]) -> list[np.ndarray]:
        """Each output as an array of its own: a fresh step output (or a view of one)
        the first time its storage is returned, else a copy."""
        results, returned = [], set()
        for name in self.plan.output_names:
            root = self._roots.get(name, name)
            array = self._array(root, prepared, made)
            if name != root:
                array = _reshaped(array, shapes[name], name, root)
            if root not in made or root in returned:
                array = array.copy()
            results.append(array)
            returned.add(root)
        return results

    # --- inputs ------------------------------------------------------------------------
    def _match(self, inputs: tuple[Any, ...], named: dict[str, Any]) -> list[Any]:
        names = self.plan.input_names
        if not named and len(inputs) == len(names):          # the common case
            return list(inputs)
        expected = ", ".join(map(str, self._ports)) or "no inputs"
        if len(inputs) > len(names):
            raise RuntimeInputError(f"got {len(inputs)} positional inputs, but "
                                    f"{self.plan.name!r} takes {len(names)}: {expected}")
        given: dict[str, Any] = dict(zip(names, inputs))
        for name, x in named.items():
            if name not in names:
                raise RuntimeInputError(f"unknown input {name!r}; {self.plan.name!r} takes: "
                                        f"{expected}")
            if name in given:
                raise RuntimeInputError(f"input {name!r} is given both by position and by name")
            given[name] = x
        missing = [p for p in self._ports if p.name not in given]
        if missing:
            raise RuntimeInputError(
                f"missing input(s) {', '.join(repr(p.name) for p in missing)} "
                f"(expected {', '.join(map(str, missing))}); {self.plan.name!r} takes: "
                f"{expected}")
        return [given[n] for n in names]

    @staticmethod
    def _view(port: Port, dtype: np.dtype, x: Any) -> tuple[Any, tuple[int, ...]]:
        """Check dtype and device; return (tensor or None for NumPy, shape)."""
        def wrong_dtype(got: object) -> RuntimeInputError:
            return RuntimeInputError(f"input {port.name!r} has dtype {got}, expected "
                                     f"{port.dtype} ({dtypes.TVM_DTYPES[port.dtype]}); kiln "
                                     "does not cast inputs")
        if isinstance(x, np.ndarray):
            if x.dtype != dtype:
                raise wrong_dtype(x.dtype)
            return None, x.shape
        if not hasattr(x, "__dlpack__"):
            raise RuntimeInputError(f"input {port.name!r} is a {type(x).__name__}; pass a "
                                    "NumPy array or a tensor with __dlpack__ (torch.Tensor)")
        try:
            tensor = ffi.tvm_ffi.from_dlpack(x)
        except Exception as e:  # noqa: BLE001  producers raise BufferError, RuntimeError, ...
            first_line = (str(e).splitlines() or [type(e).__name__])[0]
            raise RuntimeInputError(f"input {port.name!r}: cannot read it through DLPack: "
                                    f"{first_line}") from None
        if not ffi.is_cpu(tensor):
            raise RuntimeInputError(f"input {port.name!r} is on {tensor.device}; this model "
                                    "runs on the CPU (move the tensor with .cpu())")
        if str(tensor.dtype) != dtypes.TVM_DTYPES[port.dtype]:
            raise wrong_dtype(tensor.dtype)
        return tensor, tuple(tensor.shape)

    def _bind(self, shapes: list[tuple[int, ...]]) -> dict[str, int]:
        """Check ranks and static dims, bind the bare symbols, then check expression dims."""
        bindings: dict[str, int] = {}
        bound_at: dict[str, str] = {}
        later: list[tuple[Port, int, str, int]] = []
        for port, want, shape in zip(self._ports, self._static, shapes):
            if len(shape) != len(want):
                raise RuntimeInputError(f"input {port.name!r} has shape {list(shape)} (rank "
                                        f"{len(shape)}), expected {port.spec} (rank "
                                        f"{len(port.shape)})")
            packed_axis = len(shape) - 1 if port.dtype in dtypes.PACKED else -1
            for axis, (size, dim) in enumerate(zip(shape, port.shape)):
                here = f"input {port.name!r} axis {axis}"
                if isinstance(dim, int):
                    if size != want[axis]:
                        raise RuntimeInputError(f"{here} is {size}, expected {want[axis]} "
                                                f"({port.name}: {port.spec})")
                elif axis == packed_axis or not dims.is_symbol(dim):
                    later.append((port, axis, dim, size))
                elif dim in bindings and bindings[dim] != size:
                    raise RuntimeInputError(f"{here}: symbol {dim!r} is {size} here but "
                                            f"{bindings[dim]} from {bound_at[dim]}")
                elif size < 1:
                    raise RuntimeInputError(f"{here}: symbol {dim!r} is {size}; symbolic dims "
                                            "are sizes of at least 1")
                else:
                    bindings.setdefault(dim, size)
                    bound_at.setdefault(dim, here)
        for port, axis, dim, size in later:
            try:
                value = dims.evaluate(dim, bindings)
            except DimExpressionError as e:
                raise RuntimeInputError(f"input {port.name!r} axis {axis}: {e}") from None
            if port.dtype in dtypes.PACKED and axis == len(port.shape) - 1:
                value = -(-value // dtypes.PACKED[port.dtype])
            if value != size:
                at = ", ".join(f"{s}={bindings[s]} from {bound_at[s]}"
                               for s in sorted(dims.symbols(dim)))
                raise RuntimeInputError(f"input {port.name!r} axis {axis} is {size}, expected "
                                        f"{dim} = {value} ({at})")
        return bindings

    @staticmethod
    def _kernel_ready(tensor: Any, x: Any) -> tuple[Any, np.ndarray | None]:
        """The input as a contiguous, 64-byte aligned tensor; copied only if it is not."""
        if tensor is None:                                   # a NumPy array
            array = x if is_aligned(x) else aligned_copy(x)
            return ffi.to_tensor(array), (None if array is x else array)
        if tensor.is_contiguous() and (tensor.numel() == 0 or tensor.data_ptr() % ALIGNMENT == 0):
            return tensor, None
        array = aligned_copy(ffi.to_numpy(tensor))
        return ffi.to_tensor(array), array

    # --- memory ------------------------------------------------------------------------
    def _memory(self, bindings: dict[str, int]) -> _Memory:
        key = tuple(bindings[s] for s in self._symbols)
        memory = self._cache.get(key)
        if memory is not None:
            self._cache.move_to_end(key)
            return memory
        shapes = {}
        for name in [*self.plan.memory, *self._returned, *self.plan.aliases]:
            spec = self.plan.values[name]
            try:
                shape = spec.concrete_shape(bindings)
            except DimExpressionError as e:
                raise RuntimeInputError(f"these inputs give %{name} ({spec}) no valid shape: "
                                        f"{e}") from None
            if any(d < 0 for d in shape):
                raise RuntimeInputError(f"with {bindings}, %{name} ({spec}) would have shape "
                                        f"{list(shape)}; the inputs are too small for this "
                                        "model")
            shapes[name] = dtypes.storage_shape(spec.dtype, shape)
        sizes = self.plan.slot_bytes(bindings)
        slots = [aligned_empty((n,), np.uint8) for n in sizes]
        arrays = dict(self._constants)
        for name, slot in self.plan.memory.items():
            dtype = dtypes.numpy_dtype(self.plan.values[name].dtype)
            nbytes = int(np.prod(shapes[name])) * dtype.itemsize
            arrays[name] = slots[slot][:nbytes].view(dtype).reshape(shapes[name])
        tensors = {name: ffi.to_tensor(arrays[name]) for name in self.plan.memory}
        views = []
        for view, root in self._roots.items():
            if root in arrays:                 # a slot or a constant: fixed for this binding
                tensors[view] = ffi.to_tensor(_reshaped(arrays[root], shapes[view], view, root))
            else:                              # an input or a returned value: new each call
                views.append((view, root, shapes[view]))
        outputs = [(n, shapes[n], dtypes.numpy_dtype(self.plan.values[n].dtype))
                   for n in self._returned]
        per_call = [*self.plan.input_names, *(n for n, _, _ in outputs), *(v for v, _, _ in views)]
        index = {name: i for i, name in enumerate(per_call)}
        fixed = {**self._constant_tensors, **tensors}
        step_args = [[fixed.get(v) for v in step.args] for _, step, _ in self._steps]
        step_fills = [[(p, index[v]) for p, v in enumerate(step.args) if v not in fixed]
                      for _, step, _ in self._steps]
        memory = _Memory(slots, outputs, views, {v: shapes[v] for v in self._roots}, step_args,
                         step_fills)
        self._cache[key] = memory
        while len(self._cache) > self.max_cached_bindings:
            self._cache.popitem(last=False)
        return memory


def _reshaped(array: np.ndarray, shape: tuple[int, ...], view: str, root: str) -> np.ndarray:
    """`array` (contiguous) under `shape`, without a copy; ArtifactError if the sizes
    differ (a plan whose view does not fit its storage)."""
    if array.size != int(np.prod(shape)):
        raise ArtifactError(f"view %{view} {list(shape)} does not fit its storage %{root} "
                            f"{list(array.shape)}: the plan's aliases are wrong")
    return array.reshape(shape)
