"""Symbolic dimensions: a dim is an `int` or a `str` holding an integer expression
over named symbols (`"batch"`, `"seq"`, `"batch*seq"`, `"floor((h - 1)/2) + 1"`).

This module owns dim arithmetic (via sympy), the canonical spelling of a dim
(so equal dims compare equal as strings) and evaluation under symbol bindings.
Symbols are positive integers.
"""
from __future__ import annotations

import keyword
import math
import re
from functools import lru_cache
from typing import Iterable, Mapping, Union

from ..lazy_import import lazy_import

Dim = Union[int, str]
Shape = tuple[Dim, ...]

sympy = lazy_import("sympy")   # ~0.7 s to import; static dims never need it
_FUNC_NAMES = ("floor", "ceiling", "Max", "Min", "Mod")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z_0-9]*")
SYMBOL_NAME = re.compile(r"^[A-Za-z_][A-Za-z_0-9]*$")


# A dim expression is integers, symbol names, + - * / // ** ( ) and calls of _FUNC_NAMES
# (commas separate their arguments). Anything else (dots, quotes, brackets,
# comparisons, Python keywords) is refused *before* sympy sees the text, because
# sympy.parse_expr evaluates it as Python.
_EXPR_CHARS = re.compile(r"^[A-Za-z0-9_\s+\-*/(),]*$")


@lru_cache(maxsize=4096, typed=True)
def to_expr(dim: Dim) -> sympy.Expr:
    """The sympy expression of a dim. Raises ValueError for text that is not one."""
    if isinstance(dim, int) and not isinstance(dim, bool):
        return sympy.Integer(dim)
    if isinstance(dim, sympy.Integer):
        return dim
    if not isinstance(dim, str):
        raise ValueError(f"not a dim: {dim!r} (expected an int or an expression string)")
    if not _EXPR_CHARS.match(dim):
        raise ValueError(f"not a dim expression: {dim!r} (use integers, symbol names, "
                         "+ - * / ( ) and floor, ceiling, Max, Min, Mod)")
    idents = _IDENT.findall(dim)
    bad = [n for n in idents if keyword.iskeyword(n)]
    if bad:
        raise ValueError(f"not a dim expression: {dim!r} ({bad[0]!r} is a Python keyword)")
    funcs = {n: getattr(sympy, n) for n in _FUNC_NAMES}
    names = {n: sympy.Symbol(n, integer=True, positive=True) for n in idents if n not in funcs}
    try:
        expr = sympy.parse_expr(dim, local_dict={**funcs, **names}, evaluate=True)
    except Exception as e:  # noqa: BLE001  sympy/tokenize raise many kinds; text is vetted above
        raise ValueError(f"not a dim expression: {dim!r} ({e})") from None
    if not isinstance(expr, sympy.Expr):  # e.g. a bare function name: "floor"
        raise ValueError(f"not a dim expression: {dim!r}")
    return expr


@lru_cache(maxsize=16384)  # sympy.simplify is slow; the same dims recur across a graph
def from_expr(expr: sympy.Expr) -> Dim:
    """The canonical dim for a sympy expression: an int when constant, else its text."""
    expr = sympy.simplify(expr) if not expr.is_Atom else expr
    if expr.is_Integer:
        return int(expr)
    if expr.is_number:
        raise ValueError(f"dim expression {expr} is not an integer")
    return str(expr)


@lru_cache(maxsize=4096, typed=True)  # sympy.simplify is slow; the same dims recur across a graph
def canonical(dim: Dim) -> Dim:
    return dim if isinstance(dim, int) else from_expr(to_expr(dim))


def is_static(dim: Dim) -> bool:
    return isinstance(dim, int)


def symbols(dim: Dim) -> set[str]:
    return set() if isinstance(dim, int) else {s.name for s in to_expr(dim).free_symbols}


def add(a: Dim, b: Dim) -> Dim:
    if isinstance(a, int) and isinstance(b, int):
        return a + b
    return from_expr(to_expr(a) + to_expr(b))


def sub(a: Dim, b: Dim) -> Dim:
    if isinstance(a, int) and isinstance(b, int):
        return a - b
    return from_expr(to_expr(a) - to_expr(b))


def mul(a: Dim, b: Dim) -> Dim:
    if isinstance(a, int) and isinstance(b, int):
        return a * b
    return from_expr(to_expr(a) * to_expr(b))


def floordiv(a: Dim, b: Dim) -> Dim:
    if isinstance(a, int) and isinstance(b, int):
        return a // b
    q = to_expr(a) / to_expr(b)
    return from_expr(q if q.is_integer else sympy.floor(q))


def ceildiv(a: Dim, b: Dim) -> Dim:
    if isinstance(a, int) and isinstance(b, int):
        return -(-a // b)
    q = to_expr(a) / to_expr(b)
    return from_expr(q if q.is_integer else sympy.ceiling(q))


def minimum(a: Dim, b: Dim) -> Dim:
    if isinstance(a, int) and isinstance(b, int):
        return min(a, b)
    return from_expr(sympy.Min(to_expr(a), to_expr(b)))


def product(dims: Iterable[Dim]) -> Dim:
    out: Dim = 1
    for d in dims:
        out = mul(out, d)
    return out


@lru_cache(maxsize=4096, typed=True)
def equal(a: Dim, b: Dim) -> bool:
    """True when the dims are provably equal for all symbol values."""
    if a == b or (isinstance(a, int) and isinstance(b, int)):
        return a == b
    return sympy.simplify(to_expr(a) - to_expr(b)) == 0


def evaluate(dim: Dim, bindings: Mapping[str, int]) -> int:
    """The integer value of a dim once its symbols are bound."""
    if isinstance(dim, int):
        return dim
    expr = to_expr(dim)
    missing = {s.name for s in expr.free_symbols} - set(bindings)
    if missing:
        raise KeyError(f"dim {dim!r} needs values for symbol(s) {sorted(missing)}")
    value = expr.subs({s: bindings[s.name] for s in expr.free_symbols})
    if not value.is_Integer:
        raise ValueError(f"dim {dim!r} evaluates to non-integer {value} under {dict(bindings)}")
    return int(value)


def evaluate_shape(shape: Shape, bindings: Mapping[str, int]) -> tuple[int, ...]:
    return tuple(evaluate(d, bindings) for d in shape)


def static_size(shape: Shape) -> int | None:
    """Number of elements when every dim is static, else None."""
    if all(isinstance(d, int) for d in shape):
        return math.prod(shape)  # type: ignore[arg-type]
    return None
