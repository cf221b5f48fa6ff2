"""Symbolic dims (kiln.ir.symbolic): canonical spelling, arithmetic, evaluation,
and the refusal of text that is not an integer expression."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kiln.ir import symbolic


# --- canonical spelling -------------------------------------------------------------------
@pytest.mark.parametrize("dim, expected", [
    ("batch", "batch"),
    ("seq*batch", "batch*seq"),           # one spelling per expression
    ("batch*seq", "batch*seq"),
    ("2*n + 1 - n", "n + 1"),
    ("n - n", 0),                         # constant expressions become ints
    ("3*4", 12),
    ("(a + 1)*(a - 1)", "a**2 - 1"),
    ("a//2", "floor(a/2)"),               # Python floor division is floor()
    ("Max(a, b)", "Max(a, b)"),
    ("Mod(a, 4)", "Mod(a, 4)"),
    ("ceiling(a/3)", "ceiling(a/3)"),
    (7, 7),
])
def test_canonical(dim, expected):
    assert symbolic.canonical(dim) == expected


@pytest.mark.parametrize("dim", ["floor((h - 1)/2) + 1", "a**2 - 1", "Max(a, b) + Min(a, 2)",
                                 "ceiling(a/3)*b", "Mod(a, 4) + floor(floor(a/2)/2)"])
def test_canonical_is_idempotent(dim):
    once = symbolic.canonical(dim)
    assert symbolic.canonical(once) == once


def test_symbols_are_positive_integers():
    # `n` is a positive integer, so floor(n) is n and n/n is 1.
    assert symbolic.canonical("floor(n)") == "n"
    assert symbolic.canonical("n/n") == 1


# --- text that is not a dim ------------------------------------------------------------------
@pytest.mark.parametrize("text, reason", [
    ("a.b", "use integers, symbol names"),          # attribute access
    ("x[0]", "use integers, symbol names"),         # indexing
    ("'s'", "use integers, symbol names"),          # a string literal
    ("a<b", "use integers, symbol names"),          # a comparison
    ("a!", "use integers, symbol names"),           # sympy's factorial notation
    ("a if b else c", "'if' is a Python keyword"),  # Python that evaluates to `a`
    ("None", "'None' is a Python keyword"),
    ("lambda", "'lambda' is a Python keyword"),
    ("floor", "not a dim expression: 'floor'"),     # a function, not a value
    ("a b", "invalid syntax"),
    ("f(a)", "not callable"),
    ("", "not a dim expression"),
])
def test_not_a_dim(text, reason):
    with pytest.raises(ValueError, match="not a dim expression") as info:
        symbolic.to_expr(text)
    assert reason in str(info.value)


@pytest.mark.parametrize("text", ["3/2", "1e3", "a/0"])
def test_constant_that_is_not_an_integer(text):
    with pytest.raises(ValueError, match="not an integer"):
        symbolic.canonical(text)


def test_python_is_not_evaluated(tmp_path):
    marker = tmp_path / "ran"
    text = f"__import__('os').mkdir('{marker}')"
    with pytest.raises(ValueError):
        symbolic.canonical(text)
    assert not marker.exists()


# --- arithmetic ------------------------------------------------------------------------------
def test_arithmetic_on_static_dims_stays_int():
    assert symbolic.add(2, 3) == 5 and isinstance(symbolic.add(2, 3), int)
    assert symbolic.sub(7, 2) == 5
    assert symbolic.mul(3, 4) == 12
    assert symbolic.floordiv(7, 2) == 3
    assert symbolic.ceildiv(7, 2) == 4
    assert symbolic.minimum(3, 9) == 3
    assert symbolic.product([2, 3, 4]) == 24
    assert symbolic.product([]) == 1


def test_arithmetic_on_symbols():
    assert symbolic.add("n", 1) == "n + 1"
    assert symbolic.sub("n + 1", 1) == "n"
    assert symbolic.mul("n", "m") == "m*n"
    assert symbolic.product(["batch", 4, "seq"]) == "4*batch*seq"
    assert symbolic.floordiv("2*n", 2) == "n"              # exact: no floor()
    assert symbolic.floordiv("n", 2) == "floor(n/2)"
    assert symbolic.ceildiv("n", 2) == "ceiling(n/2)"
    assert symbolic.minimum("n", "n") == "n"
    assert symbolic.minimum("n", 4) == "Min(4, n)"


def test_equal():
    assert symbolic.equal("a*b", "b*a")
    assert symbolic.equal("2*(n + 1)", "2*n + 2")
    assert symbolic.equal(4, "2*2")
    assert not symbolic.equal("n", "m")
    assert not symbolic.equal("n", 4)   # not provably equal for every n


def test_symbols_and_static():
    assert symbolic.symbols("batch*seq + 1") == {"batch", "seq"}
    assert symbolic.symbols(5) == set()
    assert symbolic.is_static(5) and not symbolic.is_static("n")
    assert symbolic.static_size((2, 3, 4)) == 24
    assert symbolic.static_size((2, "n")) is None
    assert symbolic.static_size(()) == 1


# --- evaluation --------------------------------------------------------------------------------
def test_evaluate():
    assert symbolic.evaluate("floor((h - 1)/2) + 1", {"h": 7}) == 4
    assert symbolic.evaluate("batch*seq", {"batch": 2, "seq": 5}) == 10
    assert symbolic.evaluate(3, {}) == 3
    assert symbolic.evaluate_shape(("n", 4, "2*n"), {"n": 3}) == (3, 4, 6)


def test_evaluate_names_the_missing_symbol():
    with pytest.raises(KeyError, match=r"needs values for symbol\(s\) \['seq'\]"):
        symbolic.evaluate("batch*seq", {"batch": 2})


def test_evaluate_non_integer():
    with pytest.raises(ValueError, match="non-integer"):
        symbolic.evaluate("n/2", {"n": 3})


# --- properties ------------------------------------------------------------------------------
_names = st.sampled_from(["a", "b", "batch", "seq"])
_leaf = st.one_of(_names, st.integers(1, 9).map(str))
_exprs = st.recursive(
    _leaf,
    lambda inner: st.one_of(
        st.tuples(inner, st.sampled_from(["+", "-", "*"]), inner).map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
        st.tuples(inner, st.integers(1, 4)).map(lambda t: f"floor({t[0]}/{t[1]})"),
        st.tuples(inner, st.integers(1, 4)).map(lambda t: f"ceiling({t[0]}/{t[1]})"),
        st.tuples(inner, inner).map(lambda t: f"Max({t[0]}, {t[1]})"),
    ),
    max_leaves=6)


@given(_exprs, st.fixed_dictionaries({n: st.integers(1, 50) for n in ["a", "b", "batch", "seq"]}))
def test_canonical_keeps_the_value(text, bindings):
    """The canonical form is idempotent and evaluates like the original text."""
    canon = symbolic.canonical(text)
    assert symbolic.canonical(canon) == canon
    py = text.replace("floor(", "_floor(").replace("ceiling(", "_ceil(").replace("Max(", "max(")
    expected = eval(py, {"_floor": lambda q: q.__floor__(), "_ceil": lambda q: q.__ceil__(),
                         "max": max, **{k: __import__("fractions").Fraction(v)
                                        for k, v in bindings.items()}})
    assert symbolic.evaluate(canon, bindings) == expected
