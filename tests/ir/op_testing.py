"""Shared helpers of the op tests (`tests/ir/test_ops_*.py`); nothing here is a test.

- `check_op(op, inputs, attrs, expected)`: build a one-node graph with `GraphBuilder`,
  run `interpret`, compare with the expected (torch) result. The interpreter checks
  every result against the node's inferred type, so this tests inference too.
- `TOLERANCE` / `tolerance`: the allowed error per dtype, in one place.
- `infer` / `infer_error`: shape/dtype inference alone (symbolic dims, bad inputs).
- hypothesis strategies: `shapes`, `arrays` (every kiln dtype, bf16 included).
- `exercises(*ops)`: declares the ops a test runs; `test_op_coverage.py` compares the
  declarations of all op test modules with the registry.

Import it as `from tests.ir.op_testing import ...`: pytest's importlib mode (see
pyproject.toml) registers `tests` and `tests.ir` as namespace packages.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable, Mapping, Sequence

import ml_dtypes
import numpy as np
import pytest
import torch
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from kiln.errors import TypeInferenceError
from kiln.ir import GraphBuilder, TensorType, dtype, interpret
from kiln.ir.graph import Graph
from kiln.ir.registry import has_op

BF16 = np.dtype(ml_dtypes.bfloat16)
FLOAT_DTYPES = ("f32", "f64", "f16", "bf16")
INT_DTYPES = ("i8", "u8", "i16", "i32", "i64")
NUMERIC_DTYPES = FLOAT_DTYPES + INT_DTYPES
ALL_DTYPES = NUMERIC_DTYPES + ("bool",)

# (rtol, atol) for a result rounded once to its dtype; `tolerance` scales them for
# results that combine `reduce_size` inputs (sums, dot products, norms).
TOLERANCE: dict[str, tuple[float, float]] = {
    "f64": (1e-12, 1e-12),
    "f32": (1e-5, 1e-6),
    "f16": (2e-3, 1e-4),     # one f16 ulp is 2**-10 of the value
    "bf16": (1.6e-2, 1e-3),  # one bf16 ulp is 2**-7 of the value
}


def tolerance(dtype_name: str, reduce_size: int = 1) -> tuple[float, float]:
    """(rtol, atol) for `dtype_name`: rtol grows with sqrt(n), atol with n."""
    rtol, atol = TOLERANCE[dtype_name]
    n = max(1, reduce_size)
    return rtol * math.sqrt(n), atol * n


# --- torch <-> NumPy --------------------------------------------------------------------
def torch_dtype(name: str) -> torch.dtype:
    return getattr(torch, dtype(name).long_name)


def to_torch(a: np.ndarray) -> torch.Tensor:
    """A torch copy of `a` (bfloat16 included; hypothesis arrays may be read-only)."""
    a = np.asarray(a)
    if a.dtype == BF16:
        return torch.from_numpy(a.astype(np.float32)).to(torch.bfloat16)
    return torch.from_numpy(np.array(a, copy=True))


def from_torch(t: torch.Tensor) -> np.ndarray:
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        return t.float().numpy().astype(BF16)
    return t.numpy()


# --- comparing --------------------------------------------------------------------------
def assert_close(actual: np.ndarray, expected: Any, *, rtol: float | None = None,
                 atol: float | None = None, reduce_size: int = 1, what: str = "result") -> None:
    """Equal dtype and shape; equal values for integers and bools; for floats, close
    within `tolerance(dtype, reduce_size)` with NaN and inf in the same places."""
    expected = from_torch(expected) if isinstance(expected, torch.Tensor) else np.asarray(expected)
    assert actual.dtype == expected.dtype, \
        f"{what}: dtype {actual.dtype}, expected {expected.dtype}"
    assert actual.shape == expected.shape, \
        f"{what}: shape {list(actual.shape)}, expected {list(expected.shape)}"
    name = dtype(actual.dtype).name
    if name not in TOLERANCE:
        np.testing.assert_array_equal(actual, expected, err_msg=what, strict=True)
        return
    r, a = tolerance(name, reduce_size)
    np.testing.assert_allclose(actual.astype(np.float64), expected.astype(np.float64),
                               rtol=r if rtol is None else rtol, atol=a if atol is None else atol,
                               equal_nan=True, err_msg=what)


# --- running ops through the IR ---------------------------------------------------------
_ran: set[str] = set()   # ops interpreted since the current `exercises` test started


def run(graph: Graph, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    """`interpret(graph, inputs)`, recording the ops it ran for `exercises`."""
    results = interpret(graph, list(inputs))
    _ran.update(node.op for node in graph.nodes)
    return results


def build(op: str, inputs: Sequence[np.ndarray | TensorType], attrs: Mapping[str, Any] | None = None
          ) -> Graph:
    """A verified graph with one input per entry of `inputs` (an array gives its static
    type; a `TensorType` may hold symbolic dims) and one `op` node as its output(s)."""
    b = GraphBuilder(op)
    values = [b.input(f"x{i}", t if isinstance(t, TensorType) else
                      TensorType(np.shape(t), dtype(np.asarray(t).dtype)))
              for i, t in enumerate(inputs)]
    out = b.op(op, *values, **dict(attrs or {}))
    return b.build(*(out if isinstance(out, tuple) else (out,)))


def check_op(op: str, inputs: Sequence[np.ndarray], attrs: Mapping[str, Any] | None,
             expected: Any, *, rtol: float | None = None, atol: float | None = None,
             reduce_size: int = 1, input_types: Sequence[TensorType] | None = None
             ) -> list[np.ndarray]:
    """Run `op` on `inputs` through GraphBuilder + interpret and compare each output with
    `expected` (a torch tensor or array, or a sequence of them for multi-output ops).

    `input_types` declares the graph inputs (e.g. with symbolic dims) instead of the
    arrays' static types. Returns the interpreter's results."""
    inputs = [np.asarray(a) for a in inputs]
    graph = build(op, input_types if input_types is not None else inputs, attrs)
    results = run(graph, inputs)
    expected = list(expected) if isinstance(expected, (list, tuple)) else [expected]
    assert len(results) == len(expected), f"{op}: {len(results)} outputs, expected {len(expected)}"
    for i, (got, want) in enumerate(zip(results, expected)):
        assert_close(got, want, rtol=rtol, atol=atol, reduce_size=reduce_size,
                     what=f"{op}{dict(attrs or {})} output {i} on "
                          f"{[f'{a.dtype}{list(a.shape)}' for a in inputs]}")
    return results


def infer(op: str, *types: TensorType, **attrs: Any) -> TensorType | tuple[TensorType, ...]:
    """The output type(s) shape inference gives `op` on inputs of `types`."""
    b = GraphBuilder(op)
    values = [b.input(f"x{i}", t) for i, t in enumerate(types)]
    out = b.op(op, *values, **attrs)
    return tuple(v.type for v in out) if isinstance(out, tuple) else out.type


def infer_error(op: str, types: Sequence[TensorType], attrs: Mapping[str, Any], match: str
                ) -> TypeInferenceError:
    """Assert that inference rejects `op` on `types` with a message matching `match`,
    naming the op."""
    with pytest.raises(TypeInferenceError, match=match) as info:
        infer(op, *types, **attrs)
    assert f"'{op}'" in str(info.value), f"the message does not name the op: {info.value}"
    return info.value


# --- coverage ---------------------------------------------------------------------------
COVERED: dict[str, set[str]] = {}   # test module name -> ops its tests declare


def exercises(*ops: str) -> Callable[[Callable], Callable]:
    """Declare that the decorated test runs `ops` through the interpreter (with `run` or
    `check_op`). A test taking an `op` argument (parametrized) must run that op; any other
    test must run all of `ops`. The test fails when it did not, so a declaration cannot
    outlive the code that honours it."""
    unknown = sorted(o for o in ops if not has_op(o))
    if unknown:
        raise ValueError(f"exercises: no registered op(s) {unknown}")

    def decorate(fn: Callable) -> Callable:
        COVERED.setdefault(fn.__module__, set()).update(ops)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            _ran.clear()
            result = fn(*args, **kwargs)
            want = {kwargs["op"]} if kwargs.get("op") in ops else set(ops)
            missing = sorted(want - _ran)
            assert not missing, (f"{fn.__name__} declares @exercises{tuple(sorted(want))} but "
                                 f"never interpreted {missing}")
            return result
        return wrapper
    return decorate


# --- hypothesis strategies --------------------------------------------------------------
def shapes(min_dims: int = 0, max_dims: int = 4, min_side: int = 0, max_side: int = 4
           ) -> st.SearchStrategy[tuple[int, ...]]:
    return hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=min_side,
                            max_side=max_side)


SPECIAL_FLOATS = (math.nan, math.inf, -math.inf, 0.0, -0.0)


def arrays(dtype_name: str, shape: Sequence[int] | st.SearchStrategy, *, low: float = -10,
           high: float = 10, special: bool = False, unique: bool = False
           ) -> st.SearchStrategy[np.ndarray]:
    """Arrays of kiln dtype `dtype_name` with values in [low, high] (clipped to the
    dtype's range); `special` mixes in NaN, ±inf and ±0. Floats of 16 bits are drawn as
    float32 and rounded."""
    target = dtype(dtype_name).numpy
    if dtype_name == "bool":
        return hnp.arrays(np.bool_, shape, elements=st.booleans())
    if dtype_name in INT_DTYPES:
        info = np.iinfo(target)
        lo, hi = max(int(low), int(info.min)), min(int(high), int(info.max))
        return hnp.arrays(target, shape, elements=st.integers(lo, hi), unique=unique)
    width = 64 if dtype_name == "f64" else 32
    base = np.float64 if width == 64 else np.float32
    largest = float(ml_dtypes.finfo(target).max)
    low, high = (float(base(max(low, -largest))), float(base(min(high, largest))))
    elements = st.floats(low, high, width=width, allow_subnormal=False)
    if special:
        elements = elements | st.sampled_from(SPECIAL_FLOATS)
    return hnp.arrays(base, shape, elements=elements, unique=unique).map(
        lambda a: a.astype(target))


def dtypes(*names: str) -> st.SearchStrategy[str]:
    return st.sampled_from(names)
