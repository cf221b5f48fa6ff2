"""Evaluating symbolic dims at run time, without sympy.

A dim is an `int` or the text of an integer expression over named symbols, as the
compiler (`kiln.ir.symbolic`, which prints through sympy) writes it:

    "batch"   "3*batch"   "batch*seq"   "a**2 - 1"   "floor((h - 1)/2) + 1"
    "ceiling(seq/2)"   "Max(a, b)"   "Min(a, 2)"   "Mod(a, 4)"

Grammar (a whitelist over Python's `ast`; anything else is refused):

    expr  := int | name | expr (+ | - | * | / | // | % | **) expr | (+ | -) expr
           | func "(" expr ("," expr)* ")"
    func  := floor | ceiling | Max | Min | Mod

Arithmetic is exact: `/` gives a `Fraction`, and the value of the whole expression
must be an integer. Every problem raises `DimExpressionError` naming the expression.
This module imports nothing but the standard library and `kiln.errors`.
"""
from __future__ import annotations

import ast
import math
from fractions import Fraction
from functools import lru_cache
from typing import Callable, Mapping, Union

from ..errors import DimExpressionError

Dim = Union[int, str]
Number = Union[int, Fraction]
Evaluator = Callable[[Mapping[str, int]], Number]

MAX_EXPONENT = 64          # refuse `2**10**10`: an artifact must not hang its loader
MAX_TEXT = 1000


def _norm(x: Number) -> Number:
    return x.numerator if isinstance(x, Fraction) and x.denominator == 1 else x


def _floor(x: Number) -> int:
    return math.floor(x)


def _ceiling(x: Number) -> int:
    return math.ceil(x)


def _mod(a: Number, b: Number) -> Number:
    if b == 0:
        raise ZeroDivisionError("Mod(_, 0)")
    return _norm(a - b * math.floor(Fraction(a) / b))  # sympy's Mod: a - b*floor(a/b)


def _div(a: Number, b: Number) -> Number:
    return _norm(Fraction(a) / b)


def _floordiv(a: Number, b: Number) -> Number:
    return math.floor(Fraction(a) / b)


def _pow(a: Number, b: Number) -> Number:
    if not isinstance(b, int):
        raise ArithmeticError(f"non-integer exponent {b}")
    if abs(b) > MAX_EXPONENT:
        raise ArithmeticError(f"exponent {b} is larger than {MAX_EXPONENT}")
    return _norm(Fraction(a) ** b) if b < 0 else a ** b


_FUNCS: dict[str, tuple[Callable[..., Number], int | None]] = {
    # name: (function, exact argument count or None for "one or more")
    "floor": (_floor, 1), "ceiling": (_ceiling, 1),
    "Max": (lambda *xs: max(xs), None), "Min": (lambda *xs: min(xs), None),
    "Mod": (_mod, 2),
}
_BINOPS: dict[type, Callable[[Number, Number], Number]] = {
    ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b, ast.Div: _div, ast.FloorDiv: _floordiv,
    ast.Mod: _mod, ast.Pow: _pow,
}
_UNARY: dict[type, Callable[[Number], Number]] = {
    ast.USub: lambda a: -a, ast.UAdd: lambda a: a,
}


def _refuse(text: str, why: str) -> DimExpressionError:
    return DimExpressionError(f"not a dim expression: {text!r} ({why}; use integers, symbol "
                              "names, + - * / // % **, floor, ceiling, Max, Min, Mod)")


def _build(node: ast.AST, text: str, names: set[str]) -> Evaluator:
    """One evaluator closure per syntax node; collects the symbol names into `names`."""
    if isinstance(node, ast.Constant):
        value = node.value
        if isinstance(value, bool) or not isinstance(value, int):
            raise _refuse(text, f"the constant {value!r} is not an integer")
        return lambda env: value
    if isinstance(node, ast.Name):
        name = node.id
        if name in _FUNCS:
            raise _refuse(text, f"the function {name!r} is used as a value")
        names.add(name)

        def symbol(env: Mapping[str, int]) -> Number:
            try:
                return env[name]
            except KeyError:
                raise DimExpressionError(f"dim {text!r} needs a value for symbol {name!r}; "
                                         f"bound: {dict(env)}") from None
        return symbol
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        op, left, right = _BINOPS[type(node.op)], _build(node.left, text, names), \
            _build(node.right, text, names)
        return lambda env: _norm(op(left(env), right(env)))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        uop, operand = _UNARY[type(node.op)], _build(node.operand, text, names)
        return lambda env: uop(operand(env))
    if isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name) or node.func.id not in _FUNCS:
            what = node.func.id if isinstance(node.func, ast.Name) else ast.unparse(node.func)
            raise _refuse(text, f"{what!r} is not a dim function")
        if node.keywords:
            raise _refuse(text, f"{node.func.id}() takes no keyword arguments")
        func, arity = _FUNCS[node.func.id]
        if (arity is None and not node.args) or (arity is not None and len(node.args) != arity):
            want = "one or more arguments" if arity is None else f"{arity} argument(s)"
            raise _refuse(text, f"{node.func.id}() takes {want}, got {len(node.args)}")
        args = [_build(a, text, names) for a in node.args]
        return lambda env: _norm(func(*(a(env) for a in args)))
    raise _refuse(text, f"{type(node).__name__} is not allowed")


@lru_cache(maxsize=4096)
def _compile(text: str) -> tuple[Evaluator, frozenset[str]]:
    if not isinstance(text, str) or not text.strip():
        raise _refuse(str(text), "empty")
    if len(text) > MAX_TEXT:
        raise _refuse(text[:40] + "...", f"longer than {MAX_TEXT} characters")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as e:
        raise _refuse(text, f"invalid syntax: {e.msg}") from None
    names: set[str] = set()
    return _build(tree.body, text, names), frozenset(names)


def check(dim: Dim) -> None:
    """Raise `DimExpressionError` unless `dim` is a non-negative int or a valid expression."""
    if isinstance(dim, bool) or not isinstance(dim, (int, str)):
        raise DimExpressionError(f"not a dim: {dim!r} (expected an int or an expression string)")
    if isinstance(dim, int):
        if dim < 0:
            raise DimExpressionError(f"dim {dim} is negative")
        return
    _compile(dim)


def symbols(dim: Dim) -> frozenset[str]:
    """The symbol names a dim mentions."""
    check(dim)
    return frozenset() if isinstance(dim, int) else _compile(dim)[1]


def is_symbol(dim: Dim) -> bool:
    """True for a dim that is one bare symbol, such as `"batch"` (it can be bound from an
    input's shape); False for ints and compound expressions."""
    return isinstance(dim, str) and dim.strip().isidentifier() and dim.strip() not in _FUNCS \
        and symbols(dim) == {dim.strip()}


def evaluate(dim: Dim, bindings: Mapping[str, int]) -> int:
    """The value of `dim` with its symbols bound; an exact integer, or DimExpressionError."""
    if isinstance(dim, int) and not isinstance(dim, bool):
        return dim
    check(dim)
    evaluator, _ = _compile(dim)
    try:
        value = evaluator(bindings)
    except DimExpressionError:
        raise
    except (ArithmeticError, ValueError, OverflowError) as e:
        raise DimExpressionError(f"dim {dim!r} cannot be evaluated under {dict(bindings)}: "
                                 f"{e}") from None
    if isinstance(value, Fraction):
        raise DimExpressionError(f"dim {dim!r} is {value} under {dict(bindings)}, "
                                 "not an integer")
    return value


def evaluate_shape(shape: tuple[Dim, ...], bindings: Mapping[str, int]) -> tuple[int, ...]:
    return tuple(evaluate(d, bindings) for d in shape)
