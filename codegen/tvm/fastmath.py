"""Vectorizable float32 exp, expm1, tanh and erf for the TVM CPU kernels.

LLVM has no vector exp/tanh/erf without a vector math library, so TVM's intrinsics
become one libm call per element (about 5x slower than these inside softmax,
sigmoid, silu or gelu). These follow Cephes (exp, tanh) and Eigen (erf) with
polynomials in float32; measured against float64 NumPy/SciPy on a dense sweep of
float32 (see tests/codegen/test_tvm_lowering.py): exp, expm1 and tanh within 2 ulp,
erf within 6 ulp, and NaN, +-inf, overflow to inf and gradual underflow as libm.
float64 (and anything else) keeps TVM's libm intrinsics.
"""
from __future__ import annotations

import numpy as np
from tvm import tirx

from .common import dtype_of, is_nan, let, select

E = tirx.Expr


def _c(v: float) -> E:
    return tirx.const(v, "float32")


def _pow2(n: E) -> E:
    """2**n for an int32 n in [-126, 127], built from its exponent bits."""
    return tirx.reinterpret("float32", tirx.shift_left(n + tirx.const(127, "int32"),
                                                       tirx.const(23, "int32")))


def _poly(x: E, coefficients: list[float]) -> E:
    """Horner: coefficients from the highest power down."""
    out = _c(coefficients[0])
    for c in coefficients[1:]:
        out = out * x + _c(c)
    return out


def exp(x: E) -> E:
    """e**x: Cephes expf (range reduction by ln 2 in two parts, degree-5 polynomial),
    scaled by 2**n in two halves so results down to the subnormals round once."""
    if dtype_of(x) != "float32":
        return tirx.exp(x)
    return let(x, _exp)


def _exp(x: E) -> E:
    xc = select(x > _c(88.8), _c(88.8), select(x < _c(-104.0), _c(-104.0), x))
    fx = tirx.floor(xc * _c(1.44269504088896341) + _c(0.5))
    r = xc - fx * _c(0.693359375) - fx * _c(-2.12194440e-4)
    y = _poly(r, [1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2,
                  1.6666665459e-1, 5.0000001201e-1]) * (r * r) + r + _c(1.0)
    n = fx.astype("int32")
    half = tirx.shift_right(n, tirx.const(1, "int32"))
    out = y * _pow2(half) * _pow2(n - half)
    out = select(x > _c(88.72283905206835), _c(np.inf), select(x < _c(-103.97208), _c(0.0), out))
    return select(is_nan(x), x, out)


def expm1(x: E) -> E:
    """e**x - 1: its Taylor polynomial to x**9 below |x| = 0.5 (no cancellation), else
    exp(x) - 1."""
    if dtype_of(x) != "float32":
        raise TypeError("fastmath.expm1 is float32 only")
    return let(x, _expm1)


def _expm1(x: E) -> E:
    taylor = x * _poly(x, [1 / 362880, 1 / 40320, 1 / 5040, 1 / 720, 1 / 120, 1 / 24, 1 / 6,
                           1 / 2, 1.0])
    return select(tirx.abs(x) < _c(0.5), taylor, exp(x) - _c(1.0))


def mish_gate(x: E) -> E:
    """tanh(log1p(e**x)) = n (n + 2) / (n (n + 2) + 2) with n = e**x (no log, no
    cancellation for x << 0); 1 once e**x overflows float32."""
    if dtype_of(x) != "float32":
        return tirx.tanh(tirx.log1p(tirx.exp(x)))
    gate = let(exp(x), lambda n: let(n * (n + _c(2.0)), lambda m: m / (m + _c(2.0))))
    return select(x > _c(20.0), _c(1.0), gate)


def tanh(x: E) -> E:
    """Cephes tanhf: an odd polynomial below |x| = 0.625, else 1 - 2 / (e**2|x| + 1)."""
    if dtype_of(x) != "float32":
        return tirx.tanh(x)
    return let(x, _tanh)


def _tanh(x: E) -> E:
    ax = tirx.abs(x)
    z = x * x
    small = _poly(z, [-5.70498872745e-3, 2.06390887954e-2, -5.37397155531e-2,
                      1.33314422036e-1, -3.33332819422e-1]) * z * x + x
    sign = select(x < _c(0.0), _c(-1.0), _c(1.0))
    large = sign * (_c(1.0) - _c(2.0) / (exp(ax + ax) + _c(1.0)))   # (exp's Let used once)
    return select(ax < _c(0.625), small, large)   # NaN: the comparison fails -> large: NaN


def erf(x: E) -> E:
    """Eigen's float erf: a rational odd/even polynomial in x on |x| < 3.8325, where
    erf rounds to +-1 in float32; beyond, +-1."""
    if dtype_of(x) != "float32":
        return tirx.erf(x)
    return let(x, _erf)


def _erf(x: E) -> E:
    x2 = x * x
    p = x * _poly(x2, [0.00022905065861350646, 0.0034082910107109506, 0.050955695062380861,
                       0.18520832239976145, 1.128379143519084])
    q = _poly(x2, [-1.1791602954361697e-7, 0.000023547966471313185, 0.0010179625278914885,
                   0.014070470171167667, 0.11098505178285362, 0.49746925110067538, 1.0])
    saturated = select(x < _c(0.0), _c(-1.0), _c(1.0))
    return select(tirx.abs(x) >= _c(3.832506856900711), saturated, p / q)
