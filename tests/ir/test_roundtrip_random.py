"""Property tests of the `.kir` text form on random graphs.

Graphs are chains of registry ops, generated from each op's own attribute schema
(random shapes with symbolic dims, random attribute values, sources, constants);
every graph must verify and round-trip through print -> parse -> print. Mutated
text must either parse to a valid graph or raise ParseError, never anything else.
Deterministic: the `kiln` hypothesis profile (tests/conftest.py) derandomizes.
"""
from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kiln.errors import ParseError, TypeInferenceError
from kiln.ir import Graph, TensorType, Value, all_ops, dtype, parse, print_graph, tensor, verify
from kiln.ir.registry import HAS_BODY
from kiln.testing import assert_roundtrip

# constants need the table; a fused node needs a body graph (COUPLED has one)
OPS = sorted(name for name, op in all_ops().items()
             if name != "constant" and HAS_BODY not in op.traits)
DTYPES = ["f32", "f16", "bf16", "f64", "i8", "i32", "i64", "u8", "bool"]
INPUT_DTYPES = st.one_of(st.just("f32"), st.just("bool"), st.sampled_from(DTYPES))
SYMBOLS = ["batch", "seq", "n"]
DIMS = st.one_of(st.integers(0, 4), st.sampled_from(SYMBOLS),
                 st.sampled_from(["2*batch", "seq + 1", "batch*seq", "floor(n/2) + 1",
                                  "Max(n, seq)"]))
FLOATS = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=64),
                   st.sampled_from([0.0, -0.0, 1.0, 0.5, 1e-5, -2.0]))
NAME_HINTS = st.one_of(st.none(), st.sampled_from(["h", "h_1", "layer.0", "x", "out", "2"]))


def attr_value(draw, attr, rank: int, base: int):
    """A value of attribute `attr` for an input of rank `rank`: mostly plausible
    (axes in range, `base` entries per list, twice that for `pads`), sometimes not."""
    kind = attr.kind
    axes = st.integers(-max(rank, 1), max(rank, 1) - 1)
    if attr.optional and draw(st.integers(0, 3)) == 0:
        return None
    if attr.choices is not None:
        return draw(st.sampled_from(attr.choices))
    if kind == "int":
        return draw(st.one_of(axes, st.integers(-2, 4)))
    if kind == "float":
        return draw(FLOATS)
    if kind == "bool":
        return draw(st.booleans())
    if kind == "str":
        return draw(st.text(max_size=6))
    if kind == "dtype":
        return dtype(draw(st.sampled_from(DTYPES)))
    if kind == "dim":
        return draw(st.one_of(st.integers(-3, 5), DIMS))
    length = draw(st.sampled_from([base, base, 2 * base, rank, 0]))
    if attr.name == "pads":
        length = draw(st.sampled_from([2 * base, 2 * base, base]))
    if kind == "ints":
        if attr.name == "perm":
            return tuple(draw(st.permutations(range(rank))))
        return tuple(draw(st.lists(st.one_of(st.integers(1, 3), axes, st.integers(0, 1)),
                                   min_size=length, max_size=length)))
    if kind == "floats":
        return tuple(draw(st.lists(FLOATS, min_size=length, max_size=length)))
    if kind == "dims":
        return tuple(draw(st.lists(DIMS, min_size=length, max_size=length)))
    raise AssertionError(kind)


def random_array(draw, dt: str, shape: tuple[int, ...]) -> np.ndarray:
    seed = draw(st.integers(0, 2 ** 16))
    rng = np.random.default_rng(seed)
    if dt == "bool":
        return rng.random(shape) < 0.5
    if dt in ("f32", "f16", "f64"):
        return rng.standard_normal(shape).astype(dtype(dt).numpy)
    if dt == "bf16":
        return rng.standard_normal(shape).astype(ml_dtypes.bfloat16)
    return rng.integers(-5, 5, shape).astype(dtype(dt).numpy)


def derived_type(draw, t: TensorType) -> TensorType:
    """A type related to `t`, as the extra operands of most ops are: the same type (most
    often), the same shape as bool or i64 (masks, indices), its last dim or its channel
    dim (norm weights), a [d, last] matrix (linear), the same rank, or new last two dims."""
    choice = draw(st.sampled_from([0, 0, 0, 1, 2, 3, 4, 5, 6, 7]))
    if choice == 0:
        return t
    if choice in (1, 2):
        return t.with_dtype(dtype("bool" if choice == 1 else "i64"))
    if choice == 3:
        return TensorType(t.shape[-1:], t.dtype)
    if choice == 4:
        return TensorType(t.shape[1:2], t.dtype)
    if choice == 5:
        return TensorType((draw(DIMS),) + t.shape[-1:], t.dtype)
    if choice == 6:
        return TensorType(tuple(draw(st.lists(DIMS, min_size=t.rank, max_size=t.rank))), t.dtype)
    return TensorType(t.shape[:-2] + (draw(DIMS),) + t.shape[-1:], t.dtype)


def plausible_sizes(draw, attrs: dict, first: TensorType | None) -> None:
    """`sizes` (split) usually adds up to the split axis, when that axis is static."""
    if first is None or "sizes" not in attrs or not isinstance(attrs.get("axis"), int) \
            or not -first.rank <= attrs["axis"] < first.rank:
        return
    total = first.shape[attrs["axis"]]
    if isinstance(total, int) and total > 0 and draw(st.integers(0, 3)):
        cuts = sorted(draw(st.lists(st.integers(0, total), max_size=3)))
        attrs["sizes"] = tuple(b - a for a, b in zip([0] + cuts, cuts + [total]))


@st.composite
def graphs(draw, max_steps: int = 12, ops: tuple[str, ...] = tuple(OPS)) -> Graph:
    graph = Graph(draw(st.sampled_from(["main", "g", "model_1"])))
    values = []

    def new_input(type_: TensorType) -> Value:
        value = graph.add_input(f"in{len(graph.inputs)}", type_)
        values.append(value)
        return value

    for _ in range(draw(st.integers(1, 3))):
        new_input(tensor(draw(INPUT_DTYPES), *draw(st.lists(DIMS, max_size=4))))
    for i in range(draw(st.integers(0, 2))):
        shape = tuple(draw(st.lists(st.integers(1, 3), max_size=3)))
        dt = draw(st.sampled_from(DTYPES))
        values.append(graph.add_constant(draw(st.sampled_from(["w", "layer.0.bias", "table"]))
                                         + f"_{i}", random_array(draw, dt, shape)))
    for _ in range(draw(st.integers(1, max_steps))):
        opdef = all_ops()[ops[draw(st.integers(0, len(ops) - 1))]]
        n = draw(st.integers(opdef.min_inputs, int(min(opdef.max_inputs, opdef.min_inputs + 2))))
        inputs: list[Value] = []
        for k in range(n):
            how = draw(st.integers(0, 3))
            if k > 0 and how in (0, 3):       # a fresh graph input shaped after the first
                inputs.append(new_input(derived_type(draw, inputs[0].type)))
            elif how == 1:                    # a recent value, so that chains form
                inputs.append(values[draw(st.integers(max(0, len(values) - 4), len(values) - 1))])
            else:
                inputs.append(draw(st.sampled_from(values)))
        first = inputs[0].type if inputs else None
        rank = first.rank if first else 1
        base = draw(st.sampled_from([rank, max(rank - 2, 0), 1]))   # e.g. spatial dims
        attrs = {a.name: attr_value(draw, a, rank, base) for a in opdef.attrs
                 if a.required or draw(st.booleans())}
        plausible_sizes(draw, attrs, first)
        source = draw(st.one_of(st.none(), st.text(max_size=12)))
        try:
            node = graph.add_node(opdef.name, inputs, attrs, name=draw(NAME_HINTS), source=source)
        except TypeInferenceError:
            continue   # the op refuses these inputs/attributes: try another step
        values.extend(node.outputs)
    outputs = draw(st.lists(st.sampled_from(values), min_size=1, max_size=3))
    graph.set_outputs(outputs)
    return graph


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(graphs())
def test_random_graph_round_trips(graph):
    verify(graph)
    parsed = assert_roundtrip(graph)
    assert print_graph(parsed, locations=False) == print_graph(graph, locations=False)


# Ops whose operands must agree in coupled ways (channels, kernels, head dims) that the
# generic generator rarely meets; this hand-written graph round-trips each of them.
COUPLED = """\
graph coupled(%x: f32[batch, 4, 8, 8], %w: f32[6, 2, 3, 3], %c: f32[4], %q: f32[batch, 2, seq, 16], %ids: i64[batch, 3], %h: f32[batch, seq, 16], %pw: f32[32, 16], %g: f32[16], %gi: i64[batch, 4, 8, 1], %lp: f32[1, 16, 64], %cp: f32[1, 36, 16], %xb: f32[batch, 2, 8, 8, 2], %wb: f32[3, 2, 3, 3, 2, 4], %bb: f32[3, 4], %uw: f32[6, 6, 3, 2, 2, 4]) {
  %conv: f32[batch, 6, 8, 8] = conv(%x, %w) {strides=[1, 1], pads=[1, 1, 1, 1], dilations=[1, 1], groups=2}
  %max_pool: f32[batch, 4, 4, 4] = max_pool(%x) {kernel=[2, 2], strides=[2, 2], pads=[0, 0, 0, 0], dilations=[1, 1]}
  %avg_pool: f32[batch, 4, 5, 5] = avg_pool(%x) {kernel=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=true, count_include_pad=false}
  %adaptive_avg_pool: f32[batch, 4, 2, 2] = adaptive_avg_pool(%x) {output_size=[2, 2]}
  %batch_norm: f32[batch, 4, 8, 8] = batch_norm(%x, %c, %c, %c, %c) {eps=0.001}
  %group_norm: f32[batch, 4, 8, 8] = group_norm(%x, %c, %c) {num_groups=2}
  %layer_norm: f32[batch, seq, 16] = layer_norm(%h, %g)
  %linear: f32[batch, seq, 32] = linear(%h, %pw)
  %scaled_dot_product_attention: f32[batch, 2, seq, 16] = scaled_dot_product_attention(%q, %q, %q) {is_causal=true, scale=0.25}
  %gather_elements: f32[batch, 4, 8, 1] = gather_elements(%x, %gi) {axis=3}
  %index: f32[batch, batch, 3, 16] = index(%h, %ids) {axis=1}
  %linear_packed: f32[batch, seq, 40] = linear_packed(%h, %lp) {out_features=40}
  %conv_packed: f32[batch, 6, 8, 8] = conv_packed(%x, %cp) {out_channels=6, kernel=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1], dilations=[1, 1]}
  %conv_nchwc: f32[batch, 3, 4, 8, 4] = conv_nchwc(%xb, %wb, %bb) {strides=[2, 1], pads=[1, 1, 1, 1], dilations=[1, 1]}
  %conv_winograd: f32[batch, 3, 7, 7, 4] = conv_winograd(%xb, %uw, %bb) {tile=4, pads=[1, 0, 0, 1]}
  %fused: f32[batch, seq, 16] = fused(%h, %g) {kind="reduction", device="cpu", backend="tvm"} loc("model.py:9") graph norm_relu(%h: f32[batch, seq, 16], %g: f32[16]) {
    %ln: f32[batch, seq, 16] = layer_norm(%h, %g)
    %two: f32[] = full() {shape=[], value=2.0}
    %scaled: f32[batch, seq, 16] = mul(%ln, %two) loc("model.py:8")
    return %scaled
  }
  return %conv, %max_pool, %avg_pool, %adaptive_avg_pool, %batch_norm, %group_norm, %layer_norm, %linear, %scaled_dot_product_attention, %gather_elements, %index, %linear_packed, %conv_packed, %conv_nchwc, %conv_winograd, %fused
}
"""


def test_coupled_ops_round_trip():
    assert_roundtrip(COUPLED)


@pytest.mark.parametrize("op", OPS)
def test_each_op_round_trips(op):
    """Graphs of `op` alone, with random inputs and attributes from its schema, round-trip.
    The generator must manage to build the op (else this checks nothing), unless the op
    is one of the coupled ops that COUPLED covers."""
    built = []

    @settings(max_examples=12, suppress_health_check=[HealthCheck.too_slow])
    @given(graphs(max_steps=4, ops=(op,)))
    def check(graph):
        assert_roundtrip(graph)
        built.extend(n for n in graph.nodes if n.op == op)

    check()
    coupled = {n.op for n in parse(COUPLED).nodes}
    assert built or op in coupled, \
        f"no random graph contained {op}: teach graphs() its operand rules, or add it to COUPLED"


# --- mutated text ------------------------------------------------------------------------------
TOKENS = ["%", "%x", ",", "(", ")", "[", "]", "{", "}", "=", ":", " ", "\n", "#", '"', "-1",
          "f32", "i4", "none", "nan", "batch", "*", "/", "loc", "return", "graph", "1e5", ".", "_"]


@st.composite
def mutated_texts(draw) -> tuple[str, dict]:
    graph = draw(graphs(max_steps=6))
    text = print_graph(graph)
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(text)))
        j = draw(st.integers(i, min(len(text), i + 8)))
        insert = "".join(draw(st.lists(st.sampled_from(TOKENS), max_size=3)))
        text = text[:i] + insert + text[j:]
    return text, graph.constants


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_texts())
def test_mutated_text_parses_or_raises_parse_error(case):
    text, constants = case
    try:
        graph = parse(text, constants)
    except ParseError as e:
        assert 1 <= e.line <= text.count("\n") + 1
        assert 1 <= e.column <= len(e.source_line) + 1
        return
    verify(graph)                      # whatever parses is a valid graph
    printed = print_graph(graph)
    assert print_graph(parse(printed, constants)) == printed


def test_float_attribute_spellings_survive():
    """Floats print with repr and parse back to the same bits (incl. -0.0, nan, inf)."""
    for value in [0.1, -0.0, 1e-300, 5e-324, 1.7976931348623157e308, -math.inf, math.nan, 1e16]:
        g = Graph()
        x = g.add_input("x", tensor("f32", 2))
        g.set_outputs([g.add_node("leaky_relu", [x], {"negative_slope": value}).output])
        back = assert_roundtrip(g).nodes[0].attrs["negative_slope"]
        assert repr(back) == repr(value)
