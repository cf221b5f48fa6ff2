"""Batch-norm folding: an inference batch norm after a conv (or a linear with a 2-D
output, whose axis 1 is its features) whose parameters are all constants becomes new
weights and a bias for that conv/linear.

    y = batch_norm(conv(x, W, b), mean, var, gamma, beta) {eps}
      = conv(x, W * s, (b - mean) * s + beta)     with s = gamma / sqrt(var + eps)

per output channel (W's axis 0). The new arrays are computed in float64 and stored in
the weight's dtype. The conv/linear must have no other reader, so that nothing is
computed twice.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ..ir import Graph, Node, Value
from .manager import Pass, PassReport, register_pass
from .rewrite import Rewriter, RuleSet, rewrite

rules = RuleSet()


@rules.rule("batch_norm")
def batch_norm_folded(rw: Rewriter, node: Node) -> Value | None:
    # batch_norm(conv(x, W, b), mean, var, gamma, beta) -> conv(x, W*s, (b - mean)*s + beta)
    # batch_norm(linear(x, W, b), ...) -> linear(x, W*s, (b - mean)*s + beta)  (2-D output)
    y = node.inputs[0]
    producer = y.producer
    if producer is None or producer.op not in ("conv", "linear") or len(y.users) != 1 \
            or any(y is o for o in rw.graph.outputs):
        return None
    if producer.op == "linear" and y.type.rank != 2:
        return None   # batch norm normalizes axis 1; a linear's features are its last axis
    params = [rw.constant(v) for v in node.inputs[1:]]
    weight = rw.constant(producer.inputs[1])
    bias = rw.constant(producer.inputs[2]) if len(producer.inputs) > 2 else None
    if weight is None or any(p is None for p in params) \
            or (len(producer.inputs) > 2 and bias is None):
        return None
    mean, var, gamma, beta = (params + [None, None])[:4]
    channels = weight.shape[0]
    wide = np.float64
    scale = 1 / np.sqrt(var.astype(wide) + node.attrs["eps"])
    if gamma is not None:
        scale = scale * gamma.astype(wide)
    shift = -mean.astype(wide) * scale
    if bias is not None:
        shift = shift + bias.astype(wide) * scale
    if beta is not None:
        shift = shift + beta.astype(wide)
    new_weight = (weight.astype(wide) * scale.reshape((channels,) + (1,) * (weight.ndim - 1)))
    w_value = producer.inputs[1]
    w = rw.add_constant(new_weight.astype(weight.dtype), f"{w_value.name}.bn")
    b = rw.add_constant(shift.astype(weight.dtype), f"{w_value.name}.bn_bias")
    return rw.add(producer.op, [producer.inputs[0], w, b], producer.attrs)


@register_pass
@dataclass(frozen=True)
class FoldBatchNorm(Pass):
    """Fold inference batch norms into the preceding conv/linear's constant weights."""
    name: ClassVar[str] = "fold_batch_norm"

    def run(self, graph: Graph) -> PassReport:
        counts = rewrite(graph, rules)
        return PassReport(changed=bool(counts), counts=dict(counts))
