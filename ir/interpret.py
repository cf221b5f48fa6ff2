"""The reference interpreter: the semantics of kiln IR, and the ground truth of
every test and of the fuzzer.

    interpret(graph, inputs)
      -> bind each input (check dtype, check shape, bind symbolic dims)
      -> for node in graph.nodes: run registry[node.op].reference
         (constant nodes read the graph's constant table; a fused node
          interprets its body graph on its inputs)
      -> check every result against its node's declared type
      -> return the graph outputs, in order, as NumPy arrays
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from ..errors import InterpretError, KilnError
from . import registry, symbolic
from .graph import Graph, Node, Value


def bind_inputs(graph: Graph, inputs: Sequence[np.ndarray] | Mapping[str, np.ndarray],
                known: Mapping[str, int] | None = None) -> tuple[list[np.ndarray], dict[str, int]]:
    """Check `inputs` against the graph's signature; return them in order with the
    symbol bindings they imply (on top of `known`, e.g. the bindings of the graph a
    fused body runs in). Raises `InterpretError` naming the input at fault."""
    if isinstance(inputs, Mapping):
        names = [v.name for v in graph.inputs]
        missing = [n for n in names if n not in inputs]
        extra = [n for n in inputs if n not in names]
        if missing or extra:
            raise InterpretError(f"graph {graph.name} takes inputs {names}; "
                                 f"missing {missing}, unexpected {extra}")
        arrays = [inputs[n] for n in names]
    else:
        arrays = list(inputs)
        if len(arrays) != len(graph.inputs):
            raise InterpretError(f"graph {graph.name} takes {len(graph.inputs)} inputs "
                                 f"({[v.name for v in graph.inputs]}), got {len(arrays)}")
    bindings: dict[str, int] = dict(known or {})
    out = []
    for value, array in zip(graph.inputs, arrays):
        array = np.asarray(array)
        if array.dtype != value.type.dtype.numpy:
            raise InterpretError(f"input %{value.name}: expected dtype {value.type.dtype!r}, "
                                 f"got {array.dtype}")
        if array.ndim != value.type.rank:
            raise InterpretError(f"input %{value.name}: expected shape {list(value.type.shape)} "
                                 f"(rank {value.type.rank}), got {list(array.shape)}")
        for axis, (dim, size) in enumerate(zip(value.type.shape, array.shape)):
            if isinstance(dim, str) and symbolic.SYMBOL_NAME.match(dim):
                if bindings.setdefault(dim, size) != size:
                    raise InterpretError(
                        f"input %{value.name} axis {axis}: symbol '{dim}' is {size} here but "
                        f"{bindings[dim]} in an earlier input")
        out.append(array)
    for value, array in zip(graph.inputs, out):
        try:
            expected = value.type.concrete_shape(bindings)
        except KeyError as e:  # str(KeyError) would quote the message
            raise InterpretError(f"input %{value.name}: {e.args[0]}; no input binds it "
                                 "alone (bind each symbol by an axis of its own)") from None
        if expected != array.shape:
            raise InterpretError(f"input %{value.name}: expected shape {list(value.type.shape)} "
                                 f"= {list(expected)}, got {list(array.shape)}")
    return out, bindings


def _check_result(node: Node, value: Value, array: np.ndarray, bindings: Mapping[str, int]) -> None:
    expected = value.type.concrete_shape(bindings)
    if not isinstance(array, np.ndarray) or array.shape != expected \
            or array.dtype != value.type.dtype.numpy:
        got = (f"{np.asarray(array).dtype}{list(np.shape(array))}")
        raise InterpretError(f"while executing {node.format()}: reference produced {got} for "
                             f"%{value.name}, declared {value.type} = "
                             f"{value.type.dtype.numpy}{list(expected)}")


def interpret(graph: Graph, inputs: Sequence[np.ndarray] | Mapping[str, np.ndarray],
              bindings: Mapping[str, int] | None = None) -> list[np.ndarray]:
    """Run `graph` on NumPy `inputs` (a list in input order, or a name -> array map);
    `bindings` gives symbols the inputs may not bind alone (a fused body's)."""
    arrays, bindings = bind_inputs(graph, inputs, bindings)
    env: dict[int, np.ndarray] = {id(v): a for v, a in zip(graph.inputs, arrays)}
    for node in graph.nodes:
        if node.op == "constant":
            results: tuple[np.ndarray, ...] = (graph.constants[node.attrs["ref"]],)
        elif node.body is not None:
            results = tuple(interpret(node.body, [env[id(v)] for v in node.inputs], bindings))
        else:
            opdef = registry.get_op(node.op)
            args = [env[id(v)] for v in node.inputs]
            try:
                attrs = opdef.bind_attrs(node.attrs, bindings)
            except KeyError as e:
                raise InterpretError(f"while executing {node.format()}: {e.args[0]}, which no "
                                     "graph input binds") from None
            try:
                results = opdef.run_reference(args, attrs)
            except KilnError:
                raise
            except Exception as e:  # a reference raised: say which node, keep the cause
                source = f" (from {node.source})" if node.source else ""
                raise InterpretError(f"while executing {node.format()}{source}: "
                                     f"{type(e).__name__}: {e}") from e
        for value, array in zip(node.outputs, results):
            _check_result(node, value, array, bindings)
            env[id(value)] = array
    return [env[id(v)] for v in graph.outputs]


def example_inputs(graph: Graph, bindings: Mapping[str, int] | None = None, *, seed: int = 0
                   ) -> list[np.ndarray]:
    """Random inputs matching the graph's signature (symbols default to 2)."""
    rng = np.random.default_rng(seed)
    bindings = {s: 2 for s in graph.symbols} | dict(bindings or {})
    out = []
    for v in graph.inputs:
        shape = v.type.concrete_shape(bindings)
        dt = v.type.dtype
        if dt.is_float:
            out.append(rng.standard_normal(shape).astype(dt.numpy))
        elif dt.is_bool:
            out.append(rng.random(shape) < 0.5)
        else:
            out.append(rng.integers(0, 8, shape).astype(dt.numpy))
    return out

