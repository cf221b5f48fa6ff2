"""Winograd convolution (`winograd`): a blocked 3 x 3 convolution with stride 1 becomes
`conv_winograd`, Winograd's minimal filtering F(m x m, 3 x 3) (Lavin & Gray, "Fast
Algorithms for Convolutional Neural Networks", 2016):

    conv_nchwc(x, W, b) {strides=[1, 1], dilations=[1, 1], pads}
        ->  conv_winograd(x, U, b) {tile=m, pads}      U = G W G^T (`winograd_weight`)

For each m x m output tile the kernel transforms the (m + 2)^2 input tile, multiplies
it channel block by channel block with the transformed weight, and transforms back:
(m + 2)^2 multiply-adds per tile and channel pair against 9 m^2 for the direct conv,
2.25x fewer for m = 2 and 4x fewer for m = 4. The transformed weight is (m + 2)^2 / 9
times the size of W (4x for m = 4), computed here once, at compile time.

Each conv gets the largest tile m <= `tile` (4, else 2) whose transformed weight fits
in `max_weight_bytes`, else stays direct: a model's weights do not stay in cache from
one call to the next, so each call streams them in, and past a few MiB that traffic
outweighs the saved arithmetic. Measured on ResNet-50 (2 threads, in the model, against
ONNX Runtime's direct NCHWc convs): F(4 x 4) runs the 56 x 56 and 28 x 28 layers (0.6
and 2.4 MiB transformed) 1.5-2.2x faster; on the 14 x 14 layers F(2 x 2) (4 MiB) beat
F(4 x 4) (9 MiB) in the model, though not alone; the 7 x 7 ones (16 MiB with F(2 x 2))
gained nothing even alone. Only float32 convs are converted: F(4 x 4, 3 x 3) is accurate
to about 1e-5 relative in float32, but a half-precision U would lose it.

Run after block_layout (it rewrites `conv_nchwc`) and before fuse. Idempotent: a
second run finds no 3 x 3 `conv_nchwc` left.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ..errors import PipelineError
from ..ir import Graph, Node, Value
from ..ir.ops.linalg import unblock_weight, winograd_weight
from .manager import Pass, PassReport, register_pass
from .pack import float_constant
from .rewrite import Rewriter, RuleSet, rewrite


TILES = (4, 2)      # the tiles tried, largest first


@register_pass
@dataclass(frozen=True)
class Winograd(Pass):
    """Run blocked 3 x 3 stride-1 convolutions as Winograd F(m x m, 3 x 3), m the largest
    tile up to `tile` whose transformed weight fits in `max_weight_bytes`.

    Needs block_layout before it; run it before fuse. Idempotent."""
    name: ClassVar[str] = "winograd"
    tile: int = 4
    max_weight_bytes: int = 8 << 20

    def run(self, graph: Graph) -> PassReport:
        if self.tile not in TILES:
            raise PipelineError(f"winograd: tile={self.tile}, expected 2 or 4")
        if self.max_weight_bytes < 0:
            raise PipelineError(f"winograd: max_weight_bytes={self.max_weight_bytes} must "
                                "not be negative")
        transformed: dict[tuple[Value, int], Value] = {}   # (blocked weight, m) -> U
        counts = rewrite(graph, self._rules(transformed))
        counts.pop("dce", None)
        return PassReport(changed=bool(counts), counts={
            **counts, "bytes_transformed": sum(
                int(graph.constants[v.producer.attrs["ref"]].nbytes)
                for v in transformed.values() if v.users)})

    def _rules(self, transformed: dict[tuple[Value, int], Value]) -> RuleSet:
        rules = RuleSet()

        @rules.rule("conv_nchwc")
        def conv_winograd(rw: Rewriter, node: Node) -> Value | None:
            w = float_constant(rw, node.inputs[1])
            if w is None or w.dtype != np.float32 or w.ndim != 6 or w.shape[2:4] != (3, 3) \
                    or list(node.attrs["strides"]) != [1, 1] \
                    or list(node.attrs["dilations"]) != [1, 1]:
                return None
            fitting = [m for m in TILES if m <= self.tile
                       and (m + 2) ** 2 * w.nbytes // 9 <= self.max_weight_bytes]
            if not fitting:
                return None
            m, key = fitting[0], (node.inputs[1], fitting[0])
            if key not in transformed:
                u = winograd_weight(unblock_weight(w), m, w.shape[4], w.shape[5])
                transformed[key] = rw.add_constant(u, f"{node.inputs[1].name}.winograd{m}")
            return rw.add("conv_winograd", [node.inputs[0], transformed[key], *node.inputs[2:]],
                          {"tile": m, "pads": list(node.attrs["pads"])})

        return rules
