"""Elementwise lowerings that take more than one ONNX node (used by math.py's tables).

Each function has the table signature ``f(ctx, *operands, dtype) -> value`` where ``dtype`` is
the numpy dtype of the TF operands; constants made here carry that dtype (ONNX does not mix
types). Comments say which TF semantics each sequence reproduces.
"""

from __future__ import annotations

import numpy as np

from .broadcast import scalar_like


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
    """TF FloorDiv: floor(a / b). For ints ONNX Div truncates toward zero, so we subtract the
    floor-modulus first (ONNX Mod with fmod=0 takes the divisor's sign, like TF's FloorMod):
    (a - a mod b) is an exact multiple of b and the truncating division is then exact."""
    if is_int(dtype):
        return ctx.emit("Div", [ctx.emit("Sub", [a, ctx.emit("Mod", [a, b], fmod=0)]), b])
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


def erfc(ctx, x, dtype=None):
    """1 - erf(x): Keras' exact gelu traces to Erfc. Loses relative precision only where
    erfc(x) is below float epsilon (x > ~4), where its absolute value is negligible."""
    one = ctx.const(np.ones((), dtype=np.dtype(dtype or np.float32)), "one")
    return ctx.emit("Sub", [one, ctx.emit("Erf", [x])])


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
