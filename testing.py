"""Test helpers shared by kiln's own tests and by users testing their passes:
one helper per common check."""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from .ir import Graph, graphs_equal, interpret, parse, print_graph, verify


def assert_roundtrip(graph_or_text: Graph | str,
                     constants: Mapping[str, np.ndarray] | None = None) -> Graph:
    """Print -> parse -> print gives the same text, and the parsed graph equals the
    original (structure and constants). Returns the parsed graph."""
    if isinstance(graph_or_text, Graph):
        graph = graph_or_text
        verify(graph)
        text = print_graph(graph)
        constants = graph.constants
    else:
        text, graph = graph_or_text, None
    parsed = parse(text, constants)
    verify(parsed)
    again = print_graph(parsed)
    assert again == text, f"round-trip changed the text:\n--- before\n{text}\n--- after\n{again}"
    if graph is not None:
        assert graphs_equal(graph, parsed), "parsed graph differs from the original"
    return parsed


def assert_same_outputs(model: Any, graph: Graph, inputs: Any, *, rtol: float, atol: float
                        ) -> list[np.ndarray]:
    """Run `model` (an nn.Module or ExportedProgram) in torch eager mode and `graph` in
    kiln's interpreter on the same `inputs` (a tensor, a tuple of positional inputs or
    a dict of keyword inputs); every output leaf must agree in dtype, shape and value
    (within rtol/atol). Returns the interpreter's outputs."""
    import torch

    from .frontend.torch import numpy_view

    if isinstance(model, torch.export.ExportedProgram):
        model = model.module()
    if isinstance(inputs, Mapping):
        args, kwargs = (), dict(inputs)
    else:
        args, kwargs = (tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)), {}
    with torch.no_grad():
        expected = torch.utils._pytree.tree_leaves(model(*args, **kwargs))
    expected = [t for t in expected if isinstance(t, torch.Tensor)]
    if kwargs:
        feed: Any = {k: numpy_view(v) for k, v in kwargs.items() if isinstance(v, torch.Tensor)}
    else:
        feed = [numpy_view(a) for a in args if isinstance(a, torch.Tensor)]
    got = interpret(graph, feed)
    assert len(got) == len(expected), \
        f"kiln graph {graph.name} returns {len(got)} outputs, torch returns {len(expected)}"
    for i, (actual, want) in enumerate(zip(got, expected)):
        want = numpy_view(want)
        where = f"output {i} (%{graph.outputs[i].name})"
        assert actual.dtype == want.dtype, f"{where}: dtype {actual.dtype}, torch {want.dtype}"
        assert actual.shape == want.shape, \
            f"{where}: shape {list(actual.shape)}, torch {list(want.shape)}"
        np.testing.assert_allclose(actual.astype(np.float64), want.astype(np.float64),
                                   rtol=rtol, atol=atol, equal_nan=True, err_msg=where)
    return got
