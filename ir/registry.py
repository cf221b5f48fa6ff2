"""The op registry: the single source of truth for every kiln op.

One `OpDef` per op holds its operands, its attribute schema, its shape/dtype
inference, its NumPy reference implementation (the semantics: `interpret` runs
it) and its traits. Op modules under `ir/ops/` declare ops with `register`;
passes ask the registry for traits (`ops_with(ELEMENTWISE)`), never for lists
of op names; backends attach lowerings to an existing entry, never redefine it.

    register(OpDef(
        "relu", operands=(Operand("x"),), traits={ELEMENTWISE},
        infer=same_as_first, reference=lambda x: np.maximum(x, 0).astype(x.dtype)))
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..errors import TypeInferenceError, VerifyError
from . import symbolic
from .dtypes import DType, dtype as to_dtype
from .types import TensorType

# --- traits: named op families, declared once -----------------------------------------
ELEMENTWISE = "elementwise"    # out[i] = f(in0[i], in1[i], ...) after broadcasting
COMMUTATIVE = "commutative"    # f(a, b) == f(b, a)
REDUCTION = "reduction"        # reduces one or more axes (softmax/norms included)
LAYOUT = "layout"              # moves data without arithmetic (reshape, transpose, ...)
VIEW = "view"                  # output = the input's row-major storage under a new shape
                               # (reshape, squeeze, unsqueeze): no kernel, no copy (`is_view`)
CREATION = "creation"          # no tensor inputs (full, arange, constant)
CONTRACTION = "contraction"    # matmul-like: the compute-heavy ops
COMPARISON = "comparison"      # returns bool
HAS_BODY = "body"              # semantics and types come from the node's body graph (fused)
MAY_RAISE = "may_raise"        # integer inputs can make it raise (division by zero, x ** -1)

REQUIRED = object()  # default of an attribute that must be given

# --- attribute kinds -------------------------------------------------------------------
# int, float, bool, str, dtype: scalars; ints/floats: tuples of those;
# dim: one (possibly symbolic) dim; dims: a tuple of dims.
ATTR_KINDS = ("int", "float", "bool", "str", "dtype", "ints", "floats", "dim", "dims")


@dataclass(frozen=True)
class Attr:
    """One attribute of an op: its name, kind, default and constraints."""
    name: str
    kind: str
    default: Any = REQUIRED
    choices: tuple | None = None   # allowed values (for str/int kinds)
    optional: bool = False         # may be None (e.g. clamp's min)
    doc: str = ""

    def __post_init__(self) -> None:
        assert self.kind in ATTR_KINDS, f"attribute {self.name}: unknown kind {self.kind!r}"

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def normalize(self, value: Any, op: str) -> Any:
        """Convert a user-given value to the canonical form of this kind, or raise."""
        where = f"op '{op}' attribute '{self.name}'"
        if value is None:
            if self.optional:
                return None
            raise TypeInferenceError(f"{where}: may not be None")
        try:
            value = _NORMALIZE[self.kind](value)
        except (TypeError, ValueError, KeyError) as e:
            raise TypeInferenceError(f"{where}: expected {self.kind}, got {value!r} ({e})") from None
        if self.choices is not None and value not in self.choices:
            raise TypeInferenceError(f"{where}: {value!r} is not one of {list(self.choices)}")
        return value


def _norm_int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise TypeError("not an int")
    return int(v)


def _norm_float(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise TypeError("not a number")
    return float(v)


def _norm_bool(v: Any) -> bool:
    if not isinstance(v, (bool, np.bool_)):
        raise TypeError("not a bool")
    return bool(v)


def _norm_str(v: Any) -> str:
    if not isinstance(v, str):
        raise TypeError("not a string")
    return v


def _norm_dim(v: Any) -> symbolic.Dim:
    if isinstance(v, str):
        return symbolic.canonical(v)
    return _norm_int(v)


def _norm_list(item: Callable[[Any], Any]) -> Callable[[Any], tuple]:
    def norm(v: Any) -> tuple:
        if isinstance(v, (str, bytes)):  # a str is iterable, but "batch" is not a list of dims
            raise TypeError("not a list")
        return tuple(item(x) for x in v)
    return norm


_NORMALIZE: dict[str, Callable[[Any], Any]] = {
    "int": _norm_int, "float": _norm_float, "bool": _norm_bool, "str": _norm_str,
    "dtype": to_dtype,
    "ints": _norm_list(_norm_int),
    "floats": _norm_list(_norm_float),
    "dim": _norm_dim,
    "dims": _norm_list(_norm_dim),
}


@dataclass(frozen=True)
class Operand:
    """One tensor input of an op. `optional` inputs come last and may be left out;
    a `variadic` operand (at most one, last) takes one or more values."""
    name: str
    optional: bool = False
    variadic: bool = False


InferFn = Callable[..., "TensorType | tuple[TensorType, ...]"]
ReferenceFn = Callable[..., "np.ndarray | tuple[np.ndarray, ...]"]


@dataclass
class OpDef:
    """Everything kiln knows about one op.

    `infer(*input_types, **attrs)` returns the output type(s); it raises
    `TypeInferenceError` for inputs the op does not accept.
    `reference(*arrays, **attrs)` computes the outputs with NumPy; attributes of
    kind dim/dims arrive with their symbols already evaluated.
    """
    name: str
    operands: tuple[Operand, ...]
    infer: InferFn
    reference: ReferenceFn
    attrs: tuple[Attr, ...] = ()
    traits: frozenset[str] = frozenset()
    num_outputs: int = 1
    doc: str = ""
    # backend name -> lowering function; filled by the backends (`register_lowering`)
    lowerings: dict[str, Callable[..., Any]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.traits = frozenset(self.traits)
        self.attrs = tuple(self.attrs)
        self.operands = tuple(self.operands)
        self.attr_by_name: dict[str, Attr] = {a.name: a for a in self.attrs}

    # --- arity ----------------------------------------------------------------------
    @property
    def min_inputs(self) -> int:
        return sum(1 for o in self.operands if not o.optional)

    @property
    def max_inputs(self) -> float:
        if self.operands and self.operands[-1].variadic:
            return math.inf
        return len(self.operands)

    def check_arity(self, n: int) -> None:
        if not self.min_inputs <= n <= self.max_inputs:
            want = (f"at least {self.min_inputs}" if self.max_inputs == math.inf else
                    f"{self.min_inputs}" if self.min_inputs == self.max_inputs else
                    f"{self.min_inputs} to {self.max_inputs}")
            names = ", ".join(o.name + ("?" if o.optional else "...") * (o.optional or o.variadic)
                              for o in self.operands)
            raise TypeInferenceError(f"op '{self.name}' takes {want} input(s) ({names}), got {n}")

    # --- attributes -----------------------------------------------------------------
    def normalize_attrs(self, attrs: Mapping[str, Any]) -> dict[str, Any]:
        """Check attribute names and kinds; fill defaults. Returns a new dict in schema order."""
        unknown = set(attrs) - set(self.attr_by_name)
        if unknown:
            known = ", ".join(self.attr_by_name) or "none"
            raise TypeInferenceError(
                f"op '{self.name}' has no attribute(s) {sorted(unknown)}; it takes: {known}")
        out: dict[str, Any] = {}
        for a in self.attrs:
            if a.name in attrs:
                out[a.name] = a.normalize(attrs[a.name], self.name)
            elif a.required:
                raise TypeInferenceError(f"op '{self.name}' requires attribute '{a.name}' ({a.kind})")
            else:
                out[a.name] = a.default
        return out

    def bind_attrs(self, attrs: Mapping[str, Any], bindings: Mapping[str, int]) -> dict[str, Any]:
        """Attributes with every symbolic dim replaced by its value under `bindings`."""
        out = dict(attrs)
        for a in self.attrs:
            value = attrs.get(a.name)
            if value is None:
                continue
            if a.kind == "dim":
                out[a.name] = symbolic.evaluate(value, bindings)
            elif a.kind == "dims":
                out[a.name] = symbolic.evaluate_shape(value, bindings)
        return out

    # --- inference --------------------------------------------------------------------
    def infer_types(self, input_types: Sequence[TensorType], attrs: Mapping[str, Any]
                    ) -> tuple[TensorType, ...]:
        self.check_arity(len(input_types))
        try:
            result = self.infer(*input_types, **attrs)
        except (TypeInferenceError, ValueError) as e:  # ValueError: a bad dim in a result type
            raise TypeInferenceError(f"op '{self.name}': {e}") from None
        return result if isinstance(result, tuple) else (result,)

    def run_reference(self, arrays: Sequence[np.ndarray], attrs: Mapping[str, Any]
                      ) -> tuple[np.ndarray, ...]:
        result = self.reference(*arrays, **attrs)
        return tuple(result) if isinstance(result, (tuple, list)) else (result,)


_REGISTRY: dict[str, OpDef] = {}


def register(opdef: OpDef) -> OpDef:
    if opdef.name in _REGISTRY:
        raise ValueError(f"op '{opdef.name}' is registered twice")
    _REGISTRY[opdef.name] = opdef
    return opdef


def get_op(name: str) -> OpDef:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise VerifyError(f"unknown op '{name}': no such op is registered", rule="op-registered") \
            from None


def has_op(name: str) -> bool:
    return name in _REGISTRY


def all_ops() -> dict[str, OpDef]:
    return dict(_REGISTRY)


def ops_with(trait: str) -> frozenset[str]:
    """Names of the ops that have `trait` (e.g. `ops_with(ELEMENTWISE)`)."""
    return frozenset(name for name, op in _REGISTRY.items() if trait in op.traits)


def is_view(node: Any) -> bool:
    """True when `node` (a `Node`) needs no kernel: a VIEW op whose input is stored one
    element per unit (a packed int4 reshape would move nibbles between bytes)."""
    return VIEW in get_op(node.op).traits and not node.inputs[0].type.dtype.packed


def register_lowering(op: str, backend: str) -> Callable[[Callable], Callable]:
    """Decorator by which a backend attaches its lowering of `op` to the registry entry:

        @register_lowering("softmax", backend="tvm")
        def lower_softmax(ctx, x, *, axis): ...
    """
    def attach(fn: Callable) -> Callable:
        opdef = get_op(op)
        if backend in opdef.lowerings:
            raise ValueError(f"op '{op}' already has a '{backend}' lowering")
        opdef.lowerings[backend] = fn
        return fn
    return attach


def type_error(message: str) -> TypeInferenceError:
    """Used by infer functions: `raise type_error("...")`."""
    return TypeInferenceError(message)


def check_dtype(t: TensorType, what: str, *, allowed: Sequence[DType] | None = None,
                kind: str | None = None) -> None:
    """Raise a TypeInferenceError unless `t.dtype` is allowed."""
    if allowed is not None and t.dtype not in allowed:
        raise type_error(f"{what} must be one of {list(allowed)}, got {t.dtype!r}")
    if kind == "float" and not t.dtype.is_float:
        raise type_error(f"{what} must be a floating-point tensor, got {t.dtype!r}")
    if kind == "numeric" and t.dtype.is_bool:
        raise type_error(f"{what} must be numeric, got bool")

