"""`fused`: a fused group, the one op whose semantics is a subgraph (its *body*).

    %out: f32[b, 256] = fused(%x, %w, %bias) {kind="contraction"} graph linear_relu(
        %x: f32[b, 784], %w: f32[256, 784], %bias: f32[256]) {
      %linear: f32[b, 256] = linear(%x, %w, %bias)
      %relu: f32[b, 256] = relu(%linear)
      return %relu
    }

The body is a `Graph` of its own (its own value names) whose inputs are the node's
inputs, in order, and whose outputs are the node's outputs: running the node runs
the body. Bodies hold no constants (weights come in as inputs; a `full` may be
inside) and no fused nodes.
`kind` says what the group is built around (the fusion pass fills it; a backend
picks its schedule by it); `device` and `backend` are filled by placement.

Types and reference both come from the body, so the registry entry's own `infer`
and `reference` refuse to run: `Graph.add_node(..., body=...)`, the verifier and
the interpreter go to the body instead (`HAS_BODY` trait).
"""
from __future__ import annotations

from ..registry import HAS_BODY, Attr, OpDef, Operand, register, type_error

FUSED_KINDS = ("elementwise", "contraction", "reduction", "attention")


def _no_infer(*_, **__):
    raise type_error("a fused node's types come from its body (build it with "
                     "Graph.add_node('fused', ..., body=graph))")


def _no_reference(*_, **__):
    raise type_error("a fused node runs its body (kiln.ir.interpret does)")


register(OpDef(
    "fused", (Operand("xs", variadic=True),), _no_infer, _no_reference,
    (Attr("kind", "str", "elementwise", choices=FUSED_KINDS,
          doc="what the group is built around"),
     Attr("device", "str", None, optional=True, doc="where placement put the group"),
     Attr("backend", "str", None, optional=True, doc="which backend compiles the group")),
    {HAS_BODY}, num_outputs=-1,
    doc="a fused group: runs its body graph"))
