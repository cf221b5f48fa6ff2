"""Weight packing at compile time: a contraction whose weight is a constant reads it in
the layout its GEMM kernel consumes, computed once here and stored in the artifact's
weights, instead of packing it on every call.

    linear(x, W[N, K], b)                 -> linear_packed(x, P, b) {out_features=N}
    matmul(x, W[K, N])                    -> linear_packed(x, P)    {out_features=N}
    conv(x, W[O, C, *k], b) {groups=1}    -> conv_packed(x, P, b)   {out_channels=O, kernel=k}

with P = `pack_panels(W as [N, K], panel)`: [ceil(N/panel), K, panel], the GEMM's
column panels (`ir/ops/linalg.py`). `panel` is the kernel's tile width in output
features: 64 = four AVX-512 float32 vectors (the TVM CPU template's); a narrower
weight gets the narrowest multiple of panel/4 that holds it. A weight read by several
contractions is packed once. Half-precision weights stay in their dtype (the kernel
widens them as it reads). The old constant goes when nothing else reads it.
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

    def run(self, graph: Graph) -> PassReport:
        if self.panel < 1:
            raise PipelineError(f"pack_weights: panel={self.panel} must be positive")
        packed: dict[tuple[Value, str], Value] = {}   # (weight value, how) -> packed constant
        counts = rewrite(graph, self._rules(packed))
        counts.pop("dce", None)   # the unpacked weights nothing reads any more
        kept = [v for v in packed.values() if v.users]
        return PassReport(changed=bool(counts), counts={
            **counts, "weights_packed": len(kept),
            "bytes_packed": sum(int(graph.constants[v.producer.attrs["ref"]].nbytes)
                                for v in kept)})

    def _rules(self, packed: dict[tuple[Value, str], Value]) -> RuleSet:
        rules = RuleSet()

        def pack(rw: Rewriter, weight: Value, how: str, matrix: np.ndarray) -> Value:
            key = (weight, how)      # the value itself: ids of dead values recur
            if key not in packed:
                panel = panel_width(matrix.shape[0], self.panel)
                packed[key] = rw.add_constant(pack_panels(matrix, panel), f"{weight.name}.packed")
            return packed[key]

        @rules.rule("linear")
        def linear_packed(rw: Rewriter, node: Node) -> Value | None:
            # linear(x, W, b) -> linear_packed(x, pack(W), b)
            w = float_constant(rw, node.inputs[1])
            if w is None or rw.is_constant(node.inputs[0]):
                return None
            wp = pack(rw, node.inputs[1], "rows", w)
            return rw.add("linear_packed", [node.inputs[0], wp, *node.inputs[2:]],
                          {"out_features": w.shape[0]})

        @rules.rule("matmul")
        def matmul_packed(rw: Rewriter, node: Node) -> Value | None:
            # matmul(x, W[K, N]) -> linear_packed(x, pack(W.T))
            w = float_constant(rw, node.inputs[1])
            if w is None or w.ndim != 2 or rw.is_constant(node.inputs[0]):
                return None
            wp = pack(rw, node.inputs[1], "columns", np.ascontiguousarray(w.T))
            return rw.add("linear_packed", [node.inputs[0], wp], {"out_features": w.shape[1]})

        @rules.rule("conv")
        def conv_packed(rw: Rewriter, node: Node) -> Value | None:
            # conv(x, W[O, C, *k], b) {groups=1} -> conv_packed(x, pack(W as [O, C*k]), b)
            w = float_constant(rw, node.inputs[1])
            if w is None or node.attrs["groups"] != 1 or rw.is_constant(node.inputs[0]):
                return None
            wp = pack(rw, node.inputs[1], "rows", w.reshape(w.shape[0], -1))
            attrs = {k: node.attrs[k] for k in ("strides", "pads", "dilations")}
            return rw.add("conv_packed", [node.inputs[0], wp, *node.inputs[2:]],
                          {"out_channels": w.shape[0], "kernel": list(w.shape[2:]), **attrs})

        return rules


def float_constant(rw: Rewriter, value: Value) -> np.ndarray | None:
    """The array of a constant float weight (a `constant` node's), else None."""
    node = value.producer
    if node is None or node.op != "constant" or not value.type.dtype.is_float:
        return None
    return rw.graph.constant_array(node)
