"""The `.kir` text form: hand-written graphs round-trip exactly
(`print_graph(parse(t)) == t`), and malformed text raises a ParseError at the
exact line and column, saying what was expected (as MLIR's expected-error tests)."""
from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest

from kiln.errors import ParseError
from kiln.ir import graphs_equal, parse, print_graph, registry, tensor
from kiln.ir.registry import Attr, OpDef, Operand
from kiln.testing import assert_roundtrip

# --- round trips -----------------------------------------------------------------------------
CONV_NET = """\
graph net(%x: f32[batch, 3, h, w]) {
  %conv.weight: f32[8, 3, 3, 3] = constant() {ref="conv.weight"}
  %conv: f32[batch, 8, floor(h/2 - 1/2) + 1, floor(w/2 - 1/2) + 1] = conv(%x, %conv.weight) {strides=[2, 2], pads=[1, 1, 1, 1], dilations=[1, 1]} loc("model.py:10 in forward")
  %max_pool: f32[batch, 8, ceiling(floor(h/2 - 1/2)/2 - 1/2) + 1, ceiling(floor(w/2 - 1/2)/2 - 1/2) + 1] = max_pool(%conv) {kernel=[2, 2], strides=[2, 2], pads=[0, 0, 0, 0], ceil_mode=true, dilations=[1, 1]}
  %gelu: f32[batch, 8, ceiling(floor(h/2 - 1/2)/2 - 1/2) + 1, ceiling(floor(w/2 - 1/2)/2 - 1/2) + 1] = gelu(%max_pool) {approximate="tanh"}
  %sum: f32[batch, 8, 1, 1] = sum(%gelu) {axes=[2, 3], keepdims=true}
  %cast: f16[batch, 8, 1, 1] = cast(%sum) {dtype=f16}
  return %cast
}
"""

SYMBOLIC = """\
graph shapes(%x: f32[batch, seq, 64], %m: f32[Max(a, b)]) {
  %reshape: f32[batch*seq, 64] = reshape(%x) {shape=[batch*seq, 64]}
  %slice: f32[batch*seq - 1, 64] = slice(%reshape) {axis=0, start=1, end=batch*seq}
  %tail: f32[3] = slice(%m) {axis=0, start=-3, end=Max(a, b)}
  %expand: f32[2, Max(a, b)] = expand(%m) {shape=[2, Max(a, b)]}
  %arange: i32[seq] = arange() {end=seq, dtype=i32}
  %pad: f32[batch, seq + 2, 64] = pad(%x) {pads=[0, 1, 0, 0, 1, 0], mode="reflect"}
  return %slice, %tail, %expand, %arange, %pad
}
"""

MULTI_OUTPUT = """\
graph parts(%x: f32[6, n]) {
  %a: f32[1, n], %b: f32[2, n], %c: f32[3, n] = split(%x) {axis=0, sizes=[1, 2, 3]} loc("split \\"x\\" at caf\\u00e9:3")
  %cat: f32[4, n] = concat(%c, %a) {axis=0}
  %0: f32[6, n] = concat(%b, %c, %a) {axis=0}
  return %b, %cat, %0, %x
}
"""

FLOATS = """\
graph floats(%x: f32[4]) {
  %leaky_relu: f32[4] = leaky_relu(%x) {negative_slope=1e-05}
  %elu: f32[4] = elu(%leaky_relu) {alpha=-0.0}
  %softplus: f32[4] = softplus(%elu) {beta=inf, threshold=nan}
  %pad: f32[6] = pad(%softplus) {pads=[1, 1], value=-inf}
  %full: f32[2, 3] = full() {shape=[2, 3], value=1e+20}
  %clamp: f32[6] = clamp(%pad) {min=0.1, max=2.0}
  %clamp_1: f32[6] = clamp(%clamp) {max=-3.5}
  return %clamp_1, %full
}
"""

DTYPES = """\
graph all_dtypes(%a: f32[], %b: f16[1], %c: bf16[2], %d: f64[3], %e: i8[4], %f: u8[5], %g: i16[6], %h: i32[7], %i: i64[8], %j: bool[9], %k: i4[10]) {
  %cast: bf16[] = cast(%a) {dtype=bf16}
  %any: bool[] = any(%j)
  return %cast, %any, %k
}
"""

NO_INPUTS = """\
graph make() {
  %full: bool[0] = full() {shape=[0], value=0.0, dtype=bool}
  return %full
}
"""


@pytest.mark.parametrize("text", [CONV_NET, SYMBOLIC, MULTI_OUTPUT, FLOATS, DTYPES, NO_INPUTS],
                         ids=["conv_net", "symbolic", "multi_output", "floats", "dtypes",
                              "no_inputs"])
def test_round_trip(text):
    constants = {"conv.weight": np.zeros((8, 3, 3, 3), np.float32)}
    graph = assert_roundtrip(text, constants)
    assert print_graph(graph) == text
    again = parse(print_graph(graph), constants)
    assert graphs_equal(graph, again)


def test_parsed_values():
    g = parse(MULTI_OUTPUT)
    split, cat, zero = g.nodes
    assert [v.name for v in split.outputs] == ["a", "b", "c"]
    assert split.source == 'split "x" at caf\u00e9:3'
    assert cat.inputs == (split.outputs[2], split.outputs[0])
    assert split.outputs[0].users == [cat, zero]
    assert g.outputs == [split.outputs[1], cat.output, zero.output, g.inputs[0]]
    f = parse(FLOATS)
    attrs = {n.output.name: n.attrs for n in f.nodes}
    assert attrs["leaky_relu"] == {"negative_slope": 1e-05}
    assert math.copysign(1, attrs["elu"]["alpha"]) == -1
    assert attrs["softplus"]["beta"] == math.inf and math.isnan(attrs["softplus"]["threshold"])
    assert attrs["clamp_1"] == {"min": None, "max": -3.5}
    assert parse(DTYPES).inputs[10].type == tensor("i4", 10)


def test_default_attributes_are_filled_in_and_left_out_when_printed():
    text = ("graph g(%x: f32[2, 3]) {\n"
            "  %y: f32[2, 3] = softmax(%x) {axis=-1}\n"
            "  %z: f32[2, 3] = clamp(%y) {min=none, max=1}\n"
            "  return %z\n}\n")
    g = parse(text)
    assert g.nodes[0].attrs == {"axis": -1}
    assert g.nodes[1].attrs == {"min": None, "max": 1.0}
    assert print_graph(g) == ("graph g(%x: f32[2, 3]) {\n"
                              "  %y: f32[2, 3] = softmax(%x)\n"
                              "  %z: f32[2, 3] = clamp(%y) {max=1.0}\n"
                              "  return %z\n}\n")


def test_comments_and_layout_do_not_matter():
    text = """\
# a comment before the graph
graph g(%x: f32[n, 4],   # the input
        %w: f32[4, 4]) {
  # a comment line
  %y: f32[n, 4] = matmul(%x, %w)   # trailing comment
  %z: f32[n, 4] = softmax(%y)
      {axis=1}
      loc("here")
  return %y,
         %z
}
# the end
"""
    clean = ("graph g(%x: f32[n, 4], %w: f32[4, 4]) {\n"
             "  %y: f32[n, 4] = matmul(%x, %w)\n"
             "  %z: f32[n, 4] = softmax(%y) {axis=1} loc(\"here\")\n"
             "  return %y, %z\n}\n")
    g = parse(text)
    assert print_graph(g) == clean
    assert graphs_equal(g, parse(clean))
    one_line = "graph g(%x:f32[n,4],%w:f32[4,4]){%y:f32[n,4]=matmul(%x,%w) " \
               "%z:f32[n,4]=softmax(%y){axis=1}loc(\"here\") return %y,%z}"
    assert graphs_equal(g, parse(one_line))


def test_dims_are_canonicalized():
    g = parse("graph g(%x: f32[seq*batch, 2*3]) {\n  return %x\n}\n")
    assert g.inputs[0].type == tensor("f32", "batch*seq", 6)
    assert print_graph(g) == "graph g(%x: f32[batch*seq, 6]) {\n  return %x\n}\n"


def test_printing_without_locations():
    g = parse(CONV_NET, {"conv.weight": np.zeros((8, 3, 3, 3), np.float32)})
    text = print_graph(g, locations=False)
    assert "loc(" not in text
    assert text == CONV_NET.replace(' loc("model.py:10 in forward")', "")


def test_floats_list_attribute(monkeypatch):
    """No registered op has a `floats` attribute yet; a test-only op covers the kind."""
    opdef = OpDef("test_scale", (Operand("x"),), lambda x, *, factors, bias: x,
                  lambda x, *, factors, bias: x,
                  (Attr("factors", "floats"), Attr("bias", "floats", (0.0,))))
    monkeypatch.setitem(registry._REGISTRY, "test_scale", opdef)
    text = ("graph g(%x: f32[2]) {\n"
            "  %y: f32[2] = test_scale(%x) {factors=[1.5, -0.0, nan, inf, 1e-07], bias=[]}\n"
            "  %z: f32[2] = test_scale(%y) {factors=[]}\n"
            "  return %z\n}\n")
    g = assert_roundtrip(text)
    assert g.nodes[0].attrs["factors"][:2] == (1.5, -0.0)
    assert g.nodes[1].attrs == {"factors": (), "bias": (0.0,)}
    spaced = text.replace("[1.5, -0.0", "[ 1.5 ,  -0.0")
    assert print_graph(parse(spaced)) == text


def test_constants_come_from_the_table():
    w = np.arange(6, dtype=np.int64).reshape(2, 3)
    h = np.ones(2, ml_dtypes.bfloat16)
    text = ("graph g() {\n"
            "  %w: i64[2, 3] = constant() {ref=\"layer.0.w\"}\n"
            "  %h: bf16[2] = constant() {ref=\"h\"}\n"
            "  return %w, %h\n}\n")
    g = assert_roundtrip(text, {"layer.0.w": w, "h": h, "unused": np.zeros(1)})
    assert g.constants.keys() == {"layer.0.w", "h"}
    assert g.constants["layer.0.w"] is w


# --- errors ----------------------------------------------------------------------------------
def check_error(text: str, line: int, column: int, message: str, **kw) -> ParseError:
    with pytest.raises(ParseError) as info:
        parse(text, **kw)
    err = info.value
    assert type(err) is ParseError
    assert (err.message, err.line, err.column) == (message, line, column), str(err)
    source_line = text.split("\n")[line - 1]
    assert err.source_line == source_line
    caret = f"\n  {source_line}\n  {' ' * (column - 1)}^" if source_line else ""
    assert str(err) == f"{err.filename}:{line}:{column}: {message}{caret}"
    return err


def g(*lines: str, inputs: str = "%x: f32[4]") -> str:
    """A graph around `lines` (nodes, then a return line): node lines start on line 2."""
    return f"graph g({inputs}) {{\n" + "".join(f"  {ln}\n" for ln in lines) + "}\n"


DTYPE_NAMES = "['bf16', 'bool', 'f16', 'f32', 'f64', 'i16', 'i32', 'i4', 'i64', 'i8', 'u8']"

ERRORS = {
    "unknown_op": (g("%y: f32[4] = relux(%x)", "return %y"), 2, 16, "unknown op 'relux'"),
    "unknown_dtype": (g("return %x", inputs="%x: f31[4]"), 1, 13,
                      f"unknown dtype 'f31'; expected one of {DTYPE_NAMES}"),
    "long_dtype_name": (g("%y: float32[4] = relu(%x)", "return %y"), 2, 7,
                        f"unknown dtype 'float32'; expected one of {DTYPE_NAMES}"),
    "unknown_dtype_attribute": (g("%y: f16[4] = cast(%x) {dtype=half}", "return %y"), 2, 32,
                                "unknown dtype 'half'"),
    "unknown_attribute": (g("%y: f32[4] = softmax(%x) {dim=0}", "return %y"), 2, 29,
                          "op 'softmax' has no attribute 'dim' (it takes: axis)"),
    "attribute_of_op_without_attributes": (g("%y: f32[4] = relu(%x) {alpha=1.0}", "return %y"),
                                           2, 26, "op 'relu' has no attribute 'alpha' "
                                                  "(it takes: none)"),
    "attribute_twice": (g("%y: f32[4] = softmax(%x) {axis=0, axis=0}", "return %y"), 2, 37,
                        "attribute 'axis' is given twice"),
    "int_attribute_given_a_float": (g("%y: f32[4] = softmax(%x) {axis=1.5}", "return %y"), 2, 34,
                                    "expected an integer, found '1.5}'"),
    "int_attribute_given_a_string": (g('%y: f32[4] = softmax(%x) {axis="0"}', "return %y"), 2, 34,
                                     "expected an integer, found '\"0\"}'"),
    "bool_attribute_given_an_int": (g("%y: f32[] = sum(%x) {keepdims=1}", "return %y"), 2, 33,
                                    "expected true or false, found '1}'"),
    "str_attribute_unquoted": (g("%y: f32[4] = gelu(%x) {approximate=tanh}", "return %y"), 2, 38,
                               "expected a string, found 'tanh}'"),
    "list_attribute_given_a_scalar": (g("%y: f32[4] = flip(%x) {axes=0}", "return %y"), 2, 31,
                                      "expected '[' to start the ints list of 'axes', found '0}'"),
    "none_for_a_required_attribute": (g("%y: f32[4] = softmax(%x) {axis=none}", "return %y"),
                                      2, 34, "expected an integer, found 'none}'"),
    "attribute_value_not_allowed": (g('%y: f32[4] = gelu(%x) {approximate="erf"}', "return %y"),
                                    2, 16, "op 'gelu' attribute 'approximate': 'erf' is not one "
                                           "of ['none', 'tanh']"),
    "missing_required_attribute": (g("%y: f32[4] = transpose(%x)", "return %y"), 2, 16,
                                   "op 'transpose' requires attribute 'perm' (ints)"),
    "use_before_def": (g("%y: f32[4] = add(%x, %z)", "%z: f32[4] = relu(%x)", "return %y"),
                       2, 24, "%z is used before it is defined"),
    "return_of_undefined": (g("return %x, %y"), 2, 14, "%y is used before it is defined"),
    "duplicate_definition": (g("%x: f32[4] = relu(%x)", "return %x"), 2, 3,
                             "%x is defined twice"),
    "duplicate_input": (g("return %x", inputs="%x: f32[4], %x: f32[4]"), 1, 21,
                        "%x is defined twice"),
    "duplicate_result_of_one_node": (g("%a: f32[2], %a: f32[2] = split(%x) {axis=0, sizes=[2, 2]}",
                                       "return %a"), 2, 15, "%a is defined twice"),
    "declared_type_differs": (g("%y: f32[5] = relu(%x)", "return %y"), 2, 3,
                              "declared result type(s) [f32[5]] differ from what 'relu' infers: "
                              "[f32[4]]"),
    "declared_dtype_differs": (g("%y: f16[4] = relu(%x)", "return %y"), 2, 3,
                               "declared result type(s) [f16[4]] differ from what 'relu' infers: "
                               "[f32[4]]"),
    "too_few_results": (g("%a: f32[2] = split(%x) {axis=0, sizes=[2, 2]}", "return %a"), 2, 3,
                        "declared result type(s) [f32[2]] differ from what 'split' infers: "
                        "[f32[2], f32[2]]"),
    "inference_refuses": (g("%y: f32[4] = add(%x, %i)", "return %y",
                            inputs="%x: f32[4], %i: i64[4]"), 2, 16,
                          "op 'add': inputs must share one dtype, got [float32, int64] "
                          "(insert a cast)"),
    "wrong_number_of_inputs": (g("%y: f32[4] = relu(%x, %x)", "return %y"), 2, 16,
                               "op 'relu' takes 1 input(s) (x), got 2"),
    "missing_constant_data": (g('%w: f32[2] = constant() {ref="w"}', "return %w"), 2, 16,
                              "no data for constant 'w': weights live in the .safetensors file "
                              "beside the .kir file (or pass constants= to parse)"),
    "constant_with_inputs": (g('%w: f32[2] = constant(%x) {ref="w"}', "return %w"), 2, 16,
                             "a constant takes no inputs"),
    "constant_without_ref": (g("%w: f32[2] = constant()", "return %w"), 2, 16,
                             "a constant has one result and exactly the attribute 'ref'"),
    "missing_close_brace": ("graph g(%x: f32[4]) {\n  return %x\n", 3, 1,
                            "expected '}' after the return line, found end of input"),
    "missing_return": ("graph g(%x: f32[4]) {\n  %y: f32[4] = relu(%x)\n}\n", 3, 1,
                       "expected a node or 'return' before the end of the graph"),
    "missing_graph_keyword": ("graf g(%x: f32[4]) {\n  return %x\n}\n", 1, 1,
                              "expected 'graph' at the start of a .kir file, found "
                              "'graf g(%x: f'"),
    "keyword_is_a_whole_word": ("graphs g(%x: f32[4]) {\n  return %x\n}\n", 1, 1,
                                "expected 'graph' at the start of a .kir file, found "
                                "'graphs g(%x:'"),
    "text_after_the_graph": (g("return %x") + "graph h() {\n", 4, 1,
                             "unexpected text after the graph: 'graph h() {'"),
    "value_without_percent": (g("y: f32[4] = relu(%x)", "return %y"), 2, 3,
                              "expected a value name like %x, found 'y: f32[4] = '"),
    "missing_type": (g("%y = relu(%x)", "return %y"), 2, 6,
                     "expected ':' and a type after the value name, found '= relu(%x)'"),
    "missing_comma_between_inputs": (g("%y: f32[4] = add(%x %x)", "return %y"), 2, 23,
                                     "expected ',' or ')' in the input list, found '%x)'"),
    "bad_dim_expression": (g("return %x", inputs="%x: f32[4, a.b]"), 1, 20,
                           "not a dim expression: 'a.b' (use integers, symbol names, "
                           "+ - * / ( ) and floor, ceiling, Max, Min, Mod)"),
    "negative_dim": (g("return %x", inputs="%x: f32[4, -1]"), 1, 20,
                     "expected a dim >= 0, found -1"),
    "empty_dim": (g("return %x", inputs="%x: f32[4, ]"), 1, 20,
                  "expected a dim (an integer or a symbol expression)"),
    "fractional_dim": (g("return %x", inputs="%x: f32[3/2]"), 1, 17,
                       "dim expression 3/2 is not an integer"),
    "loc_needs_a_string": (g("%y: f32[4] = relu(%x) loc(model.py)", "return %y"), 2, 29,
                           "expected a string, found 'model.py)'"),
    "unterminated_string": (g('%y: f32[4] = gelu(%x) {approximate="tanh}', "return %y"), 2, 38,
                            "bad string: Invalid control character (a string is a JSON "
                            "string on one line)"),
}


@pytest.mark.parametrize("name", ERRORS)
def test_parse_error(name):
    text, line, column, message = ERRORS[name]
    check_error(text, line, column, message)


def test_constant_declared_type_differs_from_its_data():
    text = g('%w: f32[3] = constant() {ref="w"}', "return %w")
    check_error(text, 2, 3, "constant 'w' is declared f32[3] but its data is f32[2]",
                constants={"w": np.ones(2, np.float32)})
    text = g('%w: f64[2] = constant() {ref="w"}', "return %w")
    check_error(text, 2, 3, "constant 'w' is declared f64[2] but its data is f32[2]",
                constants={"w": np.ones(2, np.float32)})


def test_two_constants_read_one_entry():
    text = g('%w: f32[2] = constant() {ref="w"}', '%v: f32[2] = constant() {ref="w"}', "return %v")
    check_error(text, 3, 16, "constant 'w' is already read by another constant node",
                constants={"w": np.ones(2, np.float32)})


def test_error_names_the_file():
    err = check_error(g("%y: f32[4] = relux(%x)", "return %y"), 2, 16, "unknown op 'relux'",
                      filename="model.kir")
    assert str(err).startswith("model.kir:2:16: unknown op 'relux'\n")
    assert err.filename == "model.kir"


def test_error_position_after_comments():
    text = "# header\ngraph g(%x: f32[4]) {  # inputs\n  # note\n  %y: f32[4] = relux(%x)\n" \
           "  return %y\n}\n"
    check_error(text, 4, 16, "unknown op 'relux'")
