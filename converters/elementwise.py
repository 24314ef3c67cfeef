"""Elementwise lowerings that take more than one ONNX node (used by math.py's tables).

Each function has the table signature ``f(ctx, *operands, dtype) -> value`` where ``dtype`` is
the numpy dtype of the TF operands; constants made here carry that dtype (ONNX does not mix
types). Comments say which TF semantics each sequence reproduces.
"""

from __future__ import annotations

import numpy as np

from .broadcast import scalar_like
from .layout import onnx_type


def is_int(dtype) -> bool:
    return np.dtype(dtype).kind in "iu"


def onnx_op(op_type: str, **attrs):
    """A table entry lowering to one ONNX node of ``op_type``."""
    def lower(ctx, *xs, dtype=None):
        return ctx.emit(op_type, list(xs), **attrs)
    lower.__name__ = op_type
    return lower


# --- binary --------------------------------------------------------------------------------------

def floor_div(ctx, a, b, dtype=None):
    """TF FloorDiv: floor(a / b). For ints ONNX Div truncates toward zero (numpy_ops._int_div,
    C's / in the CUDA lowering), so q = a / b is one too large where the division was inexact
    and the true quotient negative: the remainder r = a - q * b is nonzero and its sign differs
    from b's. r cannot overflow (|r| < |b|); the former a - (a mod b) wrapped near the int32
    limits (2**31 - 1 // -3 came out positive)."""
    if is_int(dtype):
        zero = scalar_like(ctx, 0, dtype, "zero")
        q = ctx.emit("Div", [a, b])
        r = ctx.emit("Sub", [a, ctx.emit("Mul", [q, b])])
        signs_differ = ctx.emit("Xor", [ctx.emit("Less", [r, zero]),
                                        ctx.emit("Less", [b, zero])])
        fix = ctx.emit("And", [ctx.emit("Not", [ctx.emit("Equal", [r, zero])]), signs_differ])
        return ctx.emit("Where", [fix, ctx.emit("Sub", [q, scalar_like(ctx, 1, dtype, "one")]),
                                  q])
    return ctx.emit("Floor", [ctx.emit("Div", [a, b])])


def floor_mod(ctx, a, b, dtype=None):
    """TF FloorMod: result has the divisor's sign. Ints: ONNX Mod fmod=0 is exactly that.
    Floats (ONNX allows only fmod=1, C fmod): r = fmod(a, b); r + b where r != 0 and r, b have
    different signs, which is TF's own float kernel, so results match bit for bit."""
    if is_int(dtype):
        return ctx.emit("Mod", [a, b], fmod=0)
    r = ctx.emit("Mod", [a, b], fmod=1)
    zero = scalar_like(ctx, 0, dtype, "zero")
    signs_differ = ctx.emit("Xor", [ctx.emit("Less", [r, zero]), ctx.emit("Less", [b, zero])])
    fix = ctx.emit("And", [ctx.emit("Not", [ctx.emit("Equal", [r, zero])]), signs_differ])
    return ctx.emit("Where", [fix, ctx.emit("Add", [r, b]), r])


def squared_difference(ctx, a, b, dtype=None):
    d = ctx.emit("Sub", [a, b])
    return ctx.emit("Mul", [d, d])


def div_no_nan(ctx, a, b, dtype=None):
    """TF DivNoNan: 0 where the divisor is 0 (even for a 0 or inf dividend), else a / b."""
    zero = scalar_like(ctx, 0, dtype, "zero")
    return ctx.emit("Where", [ctx.emit("Equal", [b, zero]), zero, ctx.emit("Div", [a, b])])


# --- unary ---------------------------------------------------------------------------------------

def square(ctx, x, dtype=None):
    return ctx.emit("Mul", [x, x])


# Numerical Recipes' erfcc (2nd ed., 6.2): erfc(z) = t exp(-z^2 + P(t)), t = 1 / (1 + z / 2),
# z >= 0, fractional error < 1.2e-7 everywhere; P's coefficients from the constant term up.
ERFC_POLY = (-1.26551223, 1.00002368, 0.37409196, 0.09678418, -0.18628806, 0.27886807,
             -1.13520398, 1.48851587, -0.82215223, 0.17087277)


def erfc(ctx, x, dtype=None):
    """TF Erfc with full relative precision in the tail (Keras' exact gelu traces to Erfc).

    x < 0.5: 1 - erf(x), exact enough there (erfc(x) > 0.47, so the subtraction cancels
    nothing). x >= 0.5: the erfcc fit (ERFC_POLY), where 1 - erf(x) lost all relative precision
    (4% at x = 3.5, 0 from x ~ 4 while erfc(5) = 1.5e-12). Its exp(-z^2) is evaluated as
    exp(-h^2) exp(P(t) - (z - h)(z + h)) with h = floor(256 z) / 256: h^2 is exact in float32
    for z < 16, whereas a rounded z * z put up to z^2 * 6e-8 into the exponent (8e-6 relative
    error at z = 9; with the split it stays < 5e-7 in float32). z is clamped to [0.5, 12]:
    erfc(12) is 0 in float32 already, and z - h is NaN for z = inf; the clamp's Where lets NaN
    through. Every op is pointwise, so the whole sequence fuses into one elementwise kernel.

    float16 runs it in float32 and rounds once, as TF's half Erfc does: the engine rounds each
    float16 op to float16 (TF's rounding between ops), and some 40 roundings cost up to 6 ulps.
    """
    if np.dtype(dtype or np.float32) == np.float16:
        y = _erfc_float32(ctx, ctx.emit("Cast", [x], to=onnx_type(np.float32)))
        return ctx.emit("Cast", [y], to=onnx_type(np.float16))
    return _erfc_float32(ctx, x)


def _erfc_float32(ctx, x):
    c = lambda v, name: scalar_like(ctx, v, np.float32, name)  # noqa: E731
    half, one, two, top = c(0.5, "half"), c(1, "one"), c(2, "two"), c(12, "erfc_top")
    low = ctx.emit("Less", [x, half])
    near = ctx.emit("Sub", [one, ctx.emit("Erf", [x])])
    z = ctx.emit("Where", [ctx.emit("Greater", [x, top]), top, x])
    z = ctx.emit("Where", [low, half, z])
    t = ctx.emit("Div", [two, ctx.emit("Add", [two, z])])  # 1 / (1 + z / 2), same rounding
    p = c(ERFC_POLY[-1], "erfc_c")
    for coef in reversed(ERFC_POLY[:-1]):
        p = ctx.emit("Add", [ctx.emit("Mul", [t, p]), c(coef, "erfc_c")])
    scale = c(256, "erfc_split")
    h = ctx.emit("Div", [ctx.emit("Floor", [ctx.emit("Mul", [z, scale])]), scale])
    lo_part = ctx.emit("Mul", [ctx.emit("Sub", [z, h]), ctx.emit("Add", [z, h])])
    # t exp(P - lo_part) is in (0.04, 0.62): multiplied first, the product loses no bits before
    # exp(-h^2) takes it into the subnormal range (z > 9.3)
    head = ctx.emit("Mul", [t, ctx.emit("Exp", [ctx.emit("Sub", [p, lo_part])])])
    far = ctx.emit("Mul", [head, ctx.emit("Exp", [ctx.emit("Neg", [ctx.emit("Mul", [h, h])])])])
    return ctx.emit("Where", [low, near, far])


def rsqrt(ctx, x, dtype=None):
    return ctx.emit("Reciprocal", [ctx.emit("Sqrt", [x])])


def log1p(ctx, x, dtype=None):
    """log(1 + x) without the cancellation of a plain Log(1 + x) for small x (Kahan's trick):
    u = 1 + x;  x where u == 1, else x * log(u) / (u - 1). The rounding error of u cancels
    between log(u) and u - 1, so the result keeps full relative precision; +inf stays +inf."""
    one = scalar_like(ctx, 1, dtype, "one")
    inf = scalar_like(ctx, np.inf, dtype, "inf")
    u = ctx.emit("Add", [x, one])
    ratio = ctx.emit("Div", [ctx.emit("Log", [u]), ctx.emit("Sub", [u, one])])
    y = ctx.emit("Where", [ctx.emit("Equal", [u, one]), x, ctx.emit("Mul", [x, ratio])])
    # log1p(+inf) is +inf; the ratio is inf / inf there (NaN)
    return ctx.emit("Where", [ctx.emit("Equal", [x, inf]), x, y])


def expm1(ctx, x, dtype=None):
    """exp(x) - 1 with full relative precision near 0 (Kahan): u = exp(x);
    x where u == 1; (u - 1) * x / log(u) for |x| < 0.5; plain u - 1 elsewhere (no cancellation
    there, and it avoids inf / inf for large x)."""
    one = scalar_like(ctx, 1, dtype, "one")
    half = scalar_like(ctx, 0.5, dtype, "half")
    u = ctx.emit("Exp", [x])
    um1 = ctx.emit("Sub", [u, one])
    kahan = ctx.emit("Div", [ctx.emit("Mul", [um1, x]), ctx.emit("Log", [u])])
    small = ctx.emit("Less", [ctx.emit("Abs", [x]), half])
    return ctx.emit("Where", [ctx.emit("Equal", [u, one]), x,
                              ctx.emit("Where", [small, kahan, um1])])


# --- comparisons and selection -------------------------------------------------------------------

def not_equal(ctx, a, b, dtype=None):
    return ctx.emit("Not", [ctx.emit("Equal", [a, b])])


def select_bool(ctx, cond, x, y, dtype=None):
    """Where on bool values as logic, (c and x) or (not c and y): same broadcasting, and it
    runs where Where has no bool kernel (onnxruntime's CPU provider)."""
    return ctx.emit("Or", [ctx.emit("And", [cond, x]),
                           ctx.emit("And", [ctx.emit("Not", [cond]), y])])


def clip(ctx, x, lo, hi, dtype=None, scalar_bounds_ordered: bool = False):
    """TF ClipByValue is max(min(x, hi), lo): where lo > hi TF returns lo.
    ONNX Clip (scalar bounds only) is min(max(x, lo), hi), the same whenever lo <= hi; we use it
    only when the bounds are constants known to be ordered."""
    if scalar_bounds_ordered:
        return ctx.emit("Clip", [x, lo, hi])
    return ctx.emit("Max", [ctx.emit("Min", [x, hi]), lo])
