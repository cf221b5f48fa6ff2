"""`canonicalize`: constant folding, CSE, DCE, algebraic simplification and batch-norm
folding together, repeated until nothing changes.

One sweep tries, on each live node in order, the folding rule (`fold.py`), the
algebraic rules (`simplify.py`) and batch-norm folding (`batchnorm.py`); then CSE
(`cse.py`) merges equal nodes and DCE (`dce.py`) removes what died. Sweeps repeat to a
fixed point, so a second run reports no change (the pass is idempotent). The report
counts how often each rule fired, and the net change in node count.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, ClassVar

from ..ir import Graph
from . import batchnorm, simplify
from .cse import eliminate_common_subexpressions
from .fold import FOLD_LIMIT_BYTES, fold_rules
from .manager import Pass, PassReport, register_pass
from .rewrite import rewrite


@register_pass
@dataclass(frozen=True)
class Canonicalize(Pass):
    """Constant folding, CSE, DCE, algebraic simplification and batch-norm folding,
    to a fixed point.

    Keeps every value's type and the graph's signature; the result is idempotent.
    Folded results larger than max(fold_limit_bytes, their constant inputs' bytes)
    stay ops (see passes/fold.py)."""
    name: ClassVar[str] = "canonicalize"
    fold_limit_bytes: int = FOLD_LIMIT_BYTES

    def run(self, graph: Graph) -> PassReport:
        before = len(graph.nodes)
        digests: dict[int, tuple[Any, str]] = {}

        def cse(g: Graph, counts: Counter) -> None:
            counts["cse"] += eliminate_common_subexpressions(g, digests)

        rules = fold_rules(self.fold_limit_bytes) + simplify.rules + batchnorm.rules
        counts = rewrite(graph, rules, after_sweep=cse)
        if counts:
            counts["nodes_removed"] = before - len(graph.nodes)
        return PassReport(changed=bool(counts), counts=dict(counts))
