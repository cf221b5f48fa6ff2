"""Test helpers shared by kiln's own tests and by users testing their passes:
one helper per common check."""
from __future__ import annotations

from typing import Mapping

import numpy as np

from .ir import Graph, graphs_equal, parse, print_graph, verify


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
