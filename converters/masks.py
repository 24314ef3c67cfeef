"""Masks and predicates: OneHot, MatrixBandPart, IsFinite, IsInf.

Each op compares values or positions and selects, so it lowers to what the elementwise
converters already emit (Equal, Less, Abs, Unsqueeze, Where), which the engine runs on every
backend and fuses into one pointwise kernel; no new layer kind is needed. Every lowering is
exact, non-finite inputs included:

    OneHot          Where(Equal(Unsqueeze(indices, axis), [0 .. depth) along axis),
                    on_value, off_value): a negative or too large index equals no position
                    and gives off_value everywhere, as TF's kernel does (bool values: And /
                    Or / Not; constant values of other types than float32: a Gather from
                    [off_value, on_value], see OneHot.convert)
    MatrixBandPart  Where(constant band mask [M, N], x, 0): a Where, not a Mul by the mask,
                    so that inf and NaN outside the band become 0 as in TF (inf * 0 is NaN);
                    bool values: And(mask, x)
    IsFinite        Less(Abs(x), +inf): false for +-inf and for NaN (every comparison with
                    NaN is false)
    IsInf           Equal(Abs(x), +inf)

(IsNan is in math.py's unary table, as ONNX IsNaN.)
"""

from __future__ import annotations

import numpy as np
import onnx

from tftrt.lowering import ConversionError

from . import elementwise as ew
from .axes import axis_error, const_ints, unsqueeze
from .broadcast import scalar_like
from .registry import ANY, TENSOR, WEIGHT, converter

# TF's OneHot / MatrixBandPart are defined for every type; these are the ones the engine
# carries (and that TF has CPU kernels for).
VALUES = ("float32", "float16", "int32", "int64", "bool")
INDEX = ("int32", "int64")
FLOAT = ("float32", "float16")


# --- OneHot --------------------------------------------------------------------------------------

def _one_hot_plan(node, ctx):
    """(depth, output axis) or a reason string."""
    ti = ctx.attr_dtype(node, "TI")
    if ti is None or ti.name not in INDEX:
        return (f"OneHot indices of type {ti.name if ti is not None else 'unknown'} are not "
                f"supported (int32, int64)")
    depth = const_ints(ctx, node, 1)
    if len(depth) != 1 or np.ndim(ctx.const_value(node, 1)) != 0:
        return f"OneHot depth must be a scalar, got {depth}"
    if depth[0] < 1:
        return f"OneHot depth {depth[0]} gives an empty output (TF raises for a negative one)"
    for i, what in ((2, "on_value"), (3, "off_value")):
        if ctx.input_rank(node, i) != 0:
            return f"OneHot {what} must be a scalar (TF raises for this)"
    rank = ctx.input_rank(node, 0)
    axis = ctx.attr(node, "axis", -1)
    if axis != -1:
        reason = axis_error(axis, rank, extra=1)
        if reason or axis < 0:
            return reason or f"OneHot axis {axis} is invalid (-1 or 0 .. {rank})"
    return depth[0], rank if axis == -1 else axis


@converter("OneHot", dtypes=VALUES, inputs=(TENSOR, WEIGHT, ANY, ANY))
class OneHot:
    """tf.one_hot with a constant depth along any axis (-1 = a new last axis), indices of
    int32 or int64 (a dynamic batch stays dynamic), scalar on_value / off_value (tensors or
    constants). Negative and out-of-range indices give off_value in every position, as in TF.
    Lowered to Unsqueeze, Equal with a constant [0, depth) and Where: exact.
    Rejects: a depth computed at run time or < 1; indices of other types; non-scalar on/off
    values; an axis other than -1 outside [0, rank]."""

    @staticmethod
    def validate(node, ctx):
        plan = _one_hot_plan(node, ctx)
        return plan if isinstance(plan, str) else None

    @staticmethod
    def convert(node, ctx):
        plan = _one_hot_plan(node, ctx)
        if isinstance(plan, str):
            raise ConversionError(plan)
        depth, axis = plan
        out_rank = ctx.input_rank(node, 0) + 1
        ti = ctx.attr_dtype(node, "TI")
        # positions 0 .. depth-1 along ``axis``, unit dims after it; numpy broadcasting
        # lines them up with the unsqueezed indices
        positions = np.arange(depth, dtype=ti).reshape([depth] + [1] * (out_rank - 1 - axis))
        hit = ctx.emit("Equal", [unsqueeze(ctx, ctx.input(node, 0), [axis]),
                                 ctx.const(positions, "one_hot_positions")])
        t = ctx.attr_dtype(node, "T")
        on, off = ctx.input(node, 2), ctx.input(node, 3)
        if t == np.bool_:
            out = ew.select_bool(ctx, hit, on, off)  # onnxruntime's Where has no bool kernel
        elif t != np.float32 and ctx.is_const(node, 2) and ctx.is_const(node, 3):
            # The engine's elementwise fusion inlines scalar weights as untyped literals, and a
            # Where of two literals came out float32 (an int64 or float16 one-hot answered
            # float32): pick from a typed [off, on] table instead, exact for every value.
            table = np.stack([np.asarray(ctx.const_value(node, i), t) for i in (3, 2)])
            index = ctx.emit("Cast", [hit], to=onnx.TensorProto.INT64)
            out = ctx.emit("Gather", [ctx.const(table, "one_hot_values"), index], axis=0)
        else:
            out = ctx.emit("Where", [hit, on, off])
        ctx.set_output(node, 0, out)


# --- MatrixBandPart ------------------------------------------------------------------------------

def _band_plan(node, ctx):
    """The constant bool band mask [M, N], or a reason string."""
    shape = ctx.input_shape(node, 0)
    if len(shape) < 2:
        return f"MatrixBandPart input of rank {len(shape)} (needs rank >= 2)"
    m, n = shape[-2:]
    if m is None or n is None:
        return (f"MatrixBandPart on matrices of shape {list(shape[-2:])}: the last two dims "
                f"must be static (the band mask is a constant)")
    bounds = []
    for i, what in ((1, "num_lower"), (2, "num_upper")):
        v = const_ints(ctx, node, i)
        if len(v) != 1 or np.ndim(ctx.const_value(node, i)) != 0:
            return f"MatrixBandPart {what} must be a scalar, got {v}"
        bounds.append(v[0])
    lower, upper = bounds
    # TF raises for bounds larger than the matrix (not for negative ones: "keep all")
    if lower > m or upper > n:
        return (f"MatrixBandPart num_lower {lower} / num_upper {upper} exceed the {m} x {n} "
                f"matrices (TF raises for this)")
    rows, cols = np.arange(m)[:, None], np.arange(n)[None, :]
    # TF: in_band(i, j) = (num_lower < 0 || i - j <= num_lower)
    #                  && (num_upper < 0 || j - i <= num_upper)
    return (((lower < 0) | (rows - cols <= lower)) & ((upper < 0) | (cols - rows <= upper)))


@converter("MatrixBandPart", dtypes=VALUES, inputs=(TENSOR, WEIGHT, WEIGHT))
class MatrixBandPart:
    """tf.linalg.band_part with constant num_lower / num_upper (negative = keep that whole
    triangle) on inputs whose last two dims are static (leading dims may be dynamic): a
    Where with a constant band mask, exact for inf and NaN outside the band (they become 0).
    Rejects: bounds computed at run time or larger than the matrices; unknown matrix dims;
    rank < 2."""

    @staticmethod
    def validate(node, ctx):
        plan = _band_plan(node, ctx)
        return plan if isinstance(plan, str) else None

    @staticmethod
    def convert(node, ctx):
        mask = _band_plan(node, ctx)
        if isinstance(mask, str):
            raise ConversionError(mask)
        x = ctx.input(node, 0)
        if mask.all():  # both bounds negative or covering the matrix: the input unchanged
            ctx.set_output(node, 0, x)
            return
        mask = ctx.const(mask, "band_mask")
        if ctx.attr_dtype(node, "T") == np.bool_:  # (onnxruntime's Where has no bool kernel)
            ctx.set_output(node, 0, ctx.emit("And", [mask, x]))
            return
        zero = scalar_like(ctx, 0, ctx.attr_dtype(node, "T"), "zero")
        ctx.set_output(node, 0, ctx.emit("Where", [mask, x, zero]))


# --- IsFinite / IsInf ----------------------------------------------------------------------------

@converter("IsFinite", "IsInf", dtypes=FLOAT, inputs=(ANY,))
class FinitePredicates:
    """tf.math.is_finite as Less(Abs(x), inf) and tf.math.is_inf as Equal(Abs(x), inf), on
    float32 and float16: exact (NaN compares false, so it is neither finite nor inf).
    Rejects: other dtypes.

    In an FP16 engine, a float32 activation the engine stores as float16 becomes inf past
    65504 before the test sees it, as any other op's would (TF-TRT's FP16 caveat); network
    inputs keep their dtype, so a test of an input is exact in every precision."""

    @staticmethod
    def convert(node, ctx):
        dt = ctx.attr_dtype(node, "T")
        size = ctx.emit("Abs", [ctx.input(node, 0)])
        inf = scalar_like(ctx, np.inf, dt, "inf")
        op = "Less" if node.op == "IsFinite" else "Equal"
        ctx.set_output(node, 0, ctx.emit(op, [size, inf]))
