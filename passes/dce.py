"""Dead-code elimination: remove nodes none of whose outputs reach a graph output."""
from __future__ import annotations

from ..ir import Graph


def eliminate_dead_code(graph: Graph) -> int:
    """Erase dead nodes in place (last first, so users go before producers).
    Returns how many nodes were removed."""
    removed = 0
    outputs = {id(v) for v in graph.outputs}
    for node in reversed(list(graph.nodes)):
        if not any(v.users or id(v) in outputs for v in node.outputs):
            graph.erase_node(node)
            removed += 1
    return removed
