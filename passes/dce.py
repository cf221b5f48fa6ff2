"""Dead-code elimination: remove nodes none of whose outputs reach a graph output."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..ir import Graph
from .manager import Pass, PassReport, register_pass


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


@register_pass
@dataclass(frozen=True)
class DeadCodeElimination(Pass):
    """Remove nodes none of whose outputs reach a graph output (and unused constants).

    Graph inputs stay, used or not: they are the signature."""
    name: ClassVar[str] = "dce"

    def run(self, graph: Graph) -> PassReport:
        removed = eliminate_dead_code(graph)
        return PassReport(changed=removed > 0, counts={"nodes_removed": removed})
