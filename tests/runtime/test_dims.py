"""The runtime's dim evaluator (kiln.runtime.dims): exact integer arithmetic over the
expressions the compiler prints, checked against sympy, and refusal of everything else."""
from __future__ import annotations

import sympy
from hypothesis import given
from hypothesis import strategies as st
import pytest

from kiln.errors import DimExpressionError
from kiln.ir import symbolic
from kiln.runtime import dims


@pytest.mark.parametrize("dim, bindings, value", [
    (7, {}, 7),
    ("batch", {"batch": 3}, 3),
    ("3*batch", {"batch": 5}, 15),
    ("batch*seq", {"batch": 2, "seq": 11}, 22),
    ("floor((h - 1)/2) + 1", {"h": 8}, 4),
    ("floor((h - 1)/2) + 1", {"h": 1}, 1),
    ("ceiling(seq/2)", {"seq": 7}, 4),
    ("Max(a, b)", {"a": 2, "b": 9}, 9),
    ("Min(a, 2, b)", {"a": 5, "b": 3}, 2),
    ("Mod(a, 4)", {"a": 10}, 2),
    ("Mod(-a, 4)", {"a": 3}, 1),              # sympy's sign convention: the divisor's
    ("a**2 - 1", {"a": 6}, 35),
    ("a//2 + a % 3", {"a": 7}, 4),
    ("-a + 5", {"a": 2}, 3),
    ("a/2 + a/2", {"a": 3}, 3),               # exact: 3/2 + 3/2, not 1 + 1
    ("2**-1*a", {"a": 4}, 2),
])
def test_evaluate(dim, bindings, value):
    assert dims.evaluate(dim, bindings) == value


@pytest.mark.parametrize("text, reason", [
    ("__import__('os')", "'__import__' is not a dim function"),
    ("a.b", "Attribute is not allowed"),
    ("x[0]", "Subscript is not allowed"),
    ("1.5*a", "the constant 1.5 is not an integer"),
    ("True", "the constant True is not an integer"),
    ("a if b else c", "IfExp is not allowed"),
    ("lambda: 1", "Lambda is not allowed"),
    ("a < b", "Compare is not allowed"),
    ("floor(a, b)", r"floor\(\) takes 1 argument\(s\), got 2"),
    ("Max()", r"Max\(\) takes one or more arguments, got 0"),
    ("Max(a, key=b)", "takes no keyword arguments"),
    ("floor", "the function 'floor' is used as a value"),
    ("sqrt(a)", "'sqrt' is not a dim function"),
    ("a b", "invalid syntax"),
    ("", "empty"),
])
def test_refuses_what_is_not_a_dim(text, reason):
    with pytest.raises(DimExpressionError, match=reason) as info:
        dims.evaluate(text, {"a": 1, "b": 2, "c": 3})
    assert str(info.value).startswith(f"not a dim expression: {text!r}")


@pytest.mark.parametrize("text, bindings, message", [
    ("a/2", {"a": 3}, r"dim 'a/2' is 3/2 under \{'a': 3\}, not an integer"),
    ("a*b", {"a": 3}, "dim 'a\\*b' needs a value for symbol 'b'"),
    ("a/(b - 2)", {"a": 3, "b": 2}, "cannot be evaluated"),
    ("Mod(a, b - 2)", {"a": 3, "b": 2}, "cannot be evaluated"),
    ("2**(a*100)", {"a": 3}, "exponent 300 is larger than 64"),
    ("a**(1/2)", {"a": 4}, "non-integer exponent 1/2"),
])
def test_evaluation_errors_name_the_dim(text, bindings, message):
    with pytest.raises(DimExpressionError, match=message):
        dims.evaluate(text, bindings)


def test_symbols_and_is_symbol():
    assert dims.symbols("floor((h - 1)/2) + Max(w, 3)") == {"h", "w"}
    assert dims.symbols(4) == frozenset()
    assert dims.is_symbol("batch") and not dims.is_symbol("2*batch")
    assert not dims.is_symbol("floor") and not dims.is_symbol(3)
    with pytest.raises(DimExpressionError, match="dim -1 is negative"):
        dims.check(-1)


# --- against sympy on random expressions -------------------------------------------------
_SYMBOLS = [sympy.Symbol(n, integer=True, positive=True) for n in ("a", "b", "c")]
_positive = st.one_of(st.sampled_from(_SYMBOLS), st.integers(1, 9).map(sympy.Integer))


def _extend(children):
    return st.one_of(
        st.tuples(children, children).map(lambda t: t[0] + t[1]),
        st.tuples(children, children).map(lambda t: t[0] - t[1]),
        st.tuples(children, children).map(lambda t: t[0] * t[1]),
        st.tuples(children, _positive).map(lambda t: sympy.floor(t[0] / t[1])),
        st.tuples(children, _positive).map(lambda t: sympy.ceiling(t[0] / t[1])),
        st.tuples(children, _positive).map(lambda t: sympy.Mod(t[0], t[1])),
        st.tuples(children, children).map(lambda t: sympy.Max(t[0], t[1])),
        st.tuples(children, children).map(lambda t: sympy.Min(t[0], t[1])),
        children.map(lambda e: e ** 2),
        children.map(lambda e: -e),
    )


expressions = st.recursive(st.one_of(st.sampled_from(_SYMBOLS), st.integers(-5, 9)
                                     .map(sympy.Integer)), _extend, max_leaves=8)
bindings = st.fixed_dictionaries({s.name: st.integers(1, 40) for s in _SYMBOLS})


@given(expressions, bindings)
def test_agrees_with_sympy(expr, env):
    expected = int(expr.subs({s: env[s.name] for s in _SYMBOLS}))
    assert dims.evaluate(str(expr), env) == expected
    canonical = symbolic.from_expr(expr)          # the spelling the compiler writes
    assert dims.evaluate(canonical, env) == expected
