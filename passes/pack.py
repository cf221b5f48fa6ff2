"""Weight packing at compile time: a contraction whose weight is a constant reads it in
the layout its GEMM kernel consumes, computed once here and stored in the artifact's
weights, instead of packing it on every call.

    linear(x, W[N, K], b)                 -> linear_packed(x, P, b) {out_features=N}
    matmul(x, W[K, N])                    -> linear_packed(x, P)    {out_features=N}
    conv(x, W[O, C, *k], b) {groups=1}    -> conv_packed(x, P, b)   {out_channels=O, kernel=k}

with P = `pack_panels(W as [N, K], panel)`: [ceil(N/panel), K, panel], the GEMM's
column panels (`ir/ops/linalg.py`). `panel` is the kernel's tile width in output
features: 64 = four AVX-512 float32 vectors (the TVM CPU template's); a narrower
weight gets the narrowest multiple of panel/4 that holds it. A linear or matmul whose
x is a matrix of `small_rows` rows (32: two float32 vectors) gets panels
`small_rows_panel` (8) wide instead: the TVM template computes it transposed, with x's
rows in the vector axis and the weight's panels as its broadcast row panels
(`codegen/tvm/gemm.py`, `transposed_linear`). A weight read by several contractions
is packed once per panel width. Half-precision weights stay in their dtype (the
kernel widens them as it reads). The old constant goes when nothing else reads it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ..errors import PipelineError
from ..ir import Graph, Node, Value
from ..ir.ops.linalg import pack_panels
from .manager import Pass, PassReport, register_pass
from .rewrite import Rewriter, RuleSet, rewrite


def panel_width(n: int, panel: int) -> int:
    """The panel width for a weight of `n` output features."""
    step = max(1, panel // 4)
    return min(panel, -(-n // step) * step)


@register_pass
@dataclass(frozen=True)
class PackWeights(Pass):
    """Pack constant linear/matmul/conv weights into their GEMM panel layout.

    Needs nothing before it; run it after canonicalize (batch-norm folding changes
    conv weights) and before fuse. Idempotent: packed contractions are not linear,
    matmul or conv any more."""
    name: ClassVar[str] = "pack_weights"
    panel: int = 64
    small_rows: int = 32
    small_rows_panel: int = 8

    def run(self, graph: Graph) -> PassReport:
        for option in ("panel", "small_rows", "small_rows_panel"):
            if getattr(self, option) < 1:
                raise PipelineError(f"pack_weights: {option}={getattr(self, option)} must "
                                    "be positive")
        packed: dict[tuple[Value, str, int], Value] = {}  # (weight, how, panel) -> packed
        counts = rewrite(graph, self._rules(packed))
        counts.pop("dce", None)   # the unpacked weights nothing reads any more
        kept = [v for v in packed.values() if v.users]
        return PassReport(changed=bool(counts), counts={
            **counts, "weights_packed": len(kept),
            "bytes_packed": sum(int(graph.constants[v.producer.attrs["ref"]].nbytes)
                                for v in kept)})

    def _rules(self, packed: dict[tuple[Value, str], Value]) -> RuleSet:
        rules = RuleSet()

        def pack(rw: Rewriter, x: Value, weight: Value, how: str, matrix: np.ndarray
                 ) -> Value:
            panel = (self.small_rows_panel if self._small_rows(x, weight)
                     else panel_width(matrix.shape[0], self.panel))
            key = (weight, how, panel)      # the value itself: ids of dead values recur
            if key not in packed:
                packed[key] = rw.add_constant(pack_panels(matrix, panel), f"{weight.name}.packed")
            return packed[key]

        @rules.rule("linear")
        def linear_packed(rw: Rewriter, node: Node) -> Value | None:
            # linear(x, W, b) -> linear_packed(x, pack(W), b)
            w = float_constant(rw, node.inputs[1])
            if w is None or rw.is_constant(node.inputs[0]):
                return None
            wp = pack(rw, node.inputs[0], node.inputs[1], "rows", w)
            return rw.add("linear_packed", [node.inputs[0], wp, *node.inputs[2:]],
                          {"out_features": w.shape[0]})

        @rules.rule("matmul")
        def matmul_packed(rw: Rewriter, node: Node) -> Value | None:
            # matmul(x, W[K, N]) -> linear_packed(x, pack(W.T))
            w = float_constant(rw, node.inputs[1])
            if w is None or w.ndim != 2 or rw.is_constant(node.inputs[0]):
                return None
            wp = pack(rw, node.inputs[0], node.inputs[1], "columns", np.ascontiguousarray(w.T))
            return rw.add("linear_packed", [node.inputs[0], wp], {"out_features": w.shape[1]})

        @rules.rule("conv")
        def conv_packed(rw: Rewriter, node: Node) -> Value | None:
            # conv(x, W[O, C, *k], b) {groups=1} -> conv_packed(x, pack(W as [O, C*k]), b)
            w = float_constant(rw, node.inputs[1])
            if w is None or node.attrs["groups"] != 1 or rw.is_constant(node.inputs[0]):
                return None
            wp = pack(rw, None, node.inputs[1], "rows", w.reshape(w.shape[0], -1))
            attrs = {k: node.attrs[k] for k in ("strides", "pads", "dilations")}
            return rw.add("conv_packed", [node.inputs[0], wp, *node.inputs[2:]],
                          {"out_channels": w.shape[0], "kernel": list(w.shape[2:]), **attrs})

        return rules

    def _small_rows(self, x: Value | None, weight: Value) -> bool:
        """A linear/matmul whose x is a `small_rows` x K matrix of float32 (or of a half
        dtype, widened to float32) and whose weight is too: packed for the transposed
        kernel."""
        return (x is not None and x.type.shape[:1] == (self.small_rows,) and x.type.rank == 2
                and x.type.dtype.is_float and x.type.dtype.bits <= 32
                and weight.type.dtype.bits <= 32)


def float_constant(rw: Rewriter, value: Value) -> np.ndarray | None:
    """The array of a constant float weight (a `constant` node's), else None."""
    node = value.producer
    if node is None or node.op != "constant" or not value.type.dtype.is_float:
        return None
    return rw.graph.constant_array(node)
