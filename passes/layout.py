"""Blocked channel layout for convolution chains (`block_layout`): 2-D convs become
`conv_nchwc`, which reads and writes activations as [N, C/b, H, W, b] — b channels
innermost, one AVX-512 float32 vector for b = 16 — so a chain of convs (a CNN's
body) passes activations from kernel to kernel in the layout the direct convolution
kernel consumes, with no repacking in between (ONNX Runtime's NCHWc scheme).

    conv(x, W, b)  ->  from_blocked(conv_nchwc(to_blocked(x), block(W), block(b)))

    to_blocked(x)   = transpose(reshape(x, [N, C/b, b, H, W]), [0, 1, 3, 4, 2])
    from_blocked(y) = reshape(transpose(y, [0, 1, 4, 2, 3]), [N, C, H, W])

The layout changes are ordinary `reshape` and `transpose` nodes. Four rules make the
chain stay blocked, applied in graph order to a fixed point:

- a conv whose input is `from_blocked(z)` reads `z` (the pair cancels);
- an elementwise op whose tensor inputs are all `from_blocked` of the same shape as
  its output (relu, the residual add) runs on the blocked values and is followed by
  one `from_blocked`;
- a 2-d pooling op (max, average, adaptive average) whose input is `from_blocked(z)`
  pools `z`, the block as a third spatial dim with windows of one element;
- the weight and bias are constants blocked here, once per weight.

A `from_blocked` that nothing reads any more is removed; what remains converts back
where an op needs NCHW (a flatten before the classifier, the graph's outputs). A conv
is converted when it has one group, two spatial dims, a constant float weight, static
channel counts, out-channels divisible by the block and in-channels divisible by it
(or fewer: an RGB stem reads its 3 channels as one block of 3).

Run after canonicalize (batch-norm folding changes the weights) and before
pack_weights and fuse. Idempotent: a second run finds no `conv` left to convert
and no elementwise or pooling op to move.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..errors import PipelineError
from ..ir import Graph, Node, Value
from ..ir.ops.linalg import block_weight
from ..ir.registry import ELEMENTWISE, ops_with
from .manager import Pass, PassReport, register_pass
from .pack import float_constant
from .rewrite import Rewriter, RuleSet, rewrite

Blocked = dict[tuple[Value, "Value | None"], tuple[Value, "Value | None"]]  # (W, b) -> blocked

TO_BLOCKED_PERM = (0, 1, 3, 4, 2)      # [N, C/b, b, H, W] -> [N, C/b, H, W, b]
FROM_BLOCKED_PERM = (0, 1, 4, 2, 3)    # [N, C/b, H, W, b] -> [N, C/b, b, H, W]


@register_pass
@dataclass(frozen=True)
class BlockLayout(Pass):
    """Run 2-D convolution chains in the blocked channel layout [N, C/b, H, W, b].

    Needs canonicalize before it (folded batch norms); run it before pack_weights and
    fuse. Idempotent."""
    name: ClassVar[str] = "block_layout"
    block: int = 16

    def run(self, graph: Graph) -> PassReport:
        if self.block < 1:
            raise PipelineError(f"block_layout: block={self.block} must be positive")
        blocked_weights: Blocked = {}
        counts = rewrite(graph, self._rules(blocked_weights))
        counts.pop("dce", None)
        return PassReport(changed=bool(counts), counts={**counts})

    def _rules(self, blocked_weights: Blocked) -> RuleSet:
        rules = RuleSet()
        block = self.block

        @rules.rule("conv")
        def conv_blocked(rw: Rewriter, node: Node) -> Value | None:
            # conv(x, W, b) -> from_blocked(conv_nchwc(to_blocked(x), block(W), block(b)))
            x = node.inputs[0]
            w = float_constant(rw, node.inputs[1])
            if w is None or w.ndim != 4 or node.attrs["groups"] != 1 or x.type.rank != 4:
                return None
            out_channels, in_channels = w.shape[:2]
            cb = in_channels if in_channels <= block else block
            if out_channels % block or in_channels % cb or x.type.shape[1] != in_channels:
                return None
            bias = node.inputs[2] if len(node.inputs) > 2 else None
            if bias is not None and float_constant(rw, bias) is None:
                return None
            key = node.inputs[1], bias      # the values themselves: ids of dead ones recur
            if key not in blocked_weights:
                wb = rw.add_constant(block_weight(w, cb, block), f"{node.inputs[1].name}.nchwc")
                bb = None if bias is None else rw.add_constant(
                    float_constant(rw, bias).reshape(-1, block), f"{bias.name}.nchwc")
                blocked_weights[key] = wb, bb
            wb, bb = blocked_weights[key]
            attrs = {k: node.attrs[k] for k in ("strides", "pads", "dilations")}
            operands = [to_blocked(rw, x, cb), wb] + ([bb] if bb is not None else [])
            y = rw.add("conv_nchwc", operands, attrs)
            return from_blocked(rw, y)

        @rules.rule(*ops_with(ELEMENTWISE))
        def elementwise_blocked(rw: Rewriter, node: Node) -> Value | None:
            # f(from_blocked(a), from_blocked(b)) -> from_blocked(f(a, b)); an input
            # already blocked for a conv (the residual of a ResNet block) is taken too
            shape = node.outputs[0].type.shape
            if len(node.outputs) != 1 or any(v.type.shape != shape for v in node.inputs):
                return None
            sources = [blocked_source(v) for v in node.inputs]
            blocks = {s.type.shape[-1] for s in sources if s is not None}
            if len(blocks) != 1:
                return None
            sources = [s if s is not None else existing_blocked(rw, v, *blocks)
                       for s, v in zip(sources, node.inputs)]
            if any(s is None for s in sources):
                return None
            return from_blocked(rw, rw.add(node.op, sources, node.attrs))

        @rules.rule("max_pool", "avg_pool", "adaptive_avg_pool")
        def pool_blocked(rw: Rewriter, node: Node) -> Value | None:
            # pool(from_blocked(z)) -> from_blocked(pool(z)): the block is one more
            # spatial dim, pooled by windows of 1 (adaptive: to its own size)
            z = blocked_source(node.inputs[0])
            if z is None or node.inputs[0].type.rank != 4:
                return None
            return from_blocked(rw, rw.add(node.op, [z], blocked_pool_attrs(node, z)))

        return rules


def blocked_pool_attrs(node: Node, z: Value) -> dict:
    """A 2-d pooling node's attributes for its input blocked as `z` [N, C/b, H, W, b]:
    the block as a third spatial dim that each window covers one element of."""
    attrs = dict(node.attrs)
    if node.op == "adaptive_avg_pool":
        return {**attrs, "output_size": [*attrs["output_size"], z.type.shape[-1]]}
    pads = list(attrs["pads"])
    attrs.update(kernel=[*attrs["kernel"], 1], strides=[*attrs["strides"], 1],
                 pads=[*pads[:2], 0, *pads[2:], 0])
    if "dilations" in attrs:
        attrs["dilations"] = [*attrs["dilations"], 1]
    return attrs


def blocked_source(value: Value) -> Value | None:
    """`z` when `value` is `from_blocked(z)` (a reshape of the inverse transpose that
    merges its block back into the channels), else None."""
    reshape = value.producer
    if reshape is None or reshape.op != "reshape":
        return None
    transpose = reshape.inputs[0].producer
    if transpose is None or transpose.op != "transpose" or \
            tuple(transpose.attrs["perm"]) != FROM_BLOCKED_PERM:
        return None
    z = transpose.inputs[0]
    n, cblocks, h, w, b = z.type.shape
    merged = (n, cblocks * b if isinstance(cblocks, int) else None, h, w)
    return z if tuple(value.type.shape) == merged else None


def existing_blocked(rw: Rewriter, x: Value, block: int) -> Value | None:
    """`to_blocked(x, block)` when the graph computes it before the node being
    rewritten, else None."""
    here = rw.graph.nodes.index(rw.node)
    for reshape in x.users:
        if reshape.op != "reshape" or len(reshape.outputs[0].type.shape) != 5 or \
                reshape.outputs[0].type.shape[2] != block:
            continue
        for transpose in reshape.outputs[0].users:
            if transpose.op == "transpose" and tuple(transpose.attrs["perm"]) == \
                    TO_BLOCKED_PERM and rw.graph.nodes.index(transpose) < here:
                return transpose.outputs[0]
    return None


def to_blocked(rw: Rewriter, x: Value, block: int) -> Value:
    """x [N, C, H, W] as [N, C/block, H, W, block]: `z` itself when x = from_blocked(z)
    with that block, the graph's own when it computes it already, else new nodes."""
    source = blocked_source(x)
    if source is not None and source.type.shape[-1] == block:
        return source
    existing = existing_blocked(rw, x, block)
    if existing is not None:
        return existing
    n, c, h, w = x.type.shape
    split = rw.add("reshape", [x], {"shape": [n, c // block, block, h, w]})
    return rw.add("transpose", [split], {"perm": list(TO_BLOCKED_PERM)})


def from_blocked(rw: Rewriter, y: Value) -> Value:
    """y [N, C/b, H, W, b] as [N, C, H, W]."""
    n, cblocks, h, w, b = y.type.shape
    moved = rw.add("transpose", [y], {"perm": list(FROM_BLOCKED_PERM)})
    return rw.add("reshape", [moved], {"shape": [n, cblocks * b, h, w]})
