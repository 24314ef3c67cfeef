"""Elementwise math: binary arithmetic, unary functions, Cast, comparisons, logic, selection.

Broadcasting: TF's binary ops, SelectV2 and comparisons broadcast like numpy, and so do the
ONNX ops they lower to, so operands pass through unchanged (see broadcast.py for the one
exception, v1 Select). TF requires both operands of a binary op to have the same dtype, which
keeps the ONNX graph free of mixed types; constants we add ourselves take the operand dtype.

Dtypes: float32, float16 and int32 throughout, int64 where TF graphs carry it (shape
arithmetic), bool for logic, comparisons and selection. Ops that TF defines only on floats (or
whose ONNX counterpart is float-only, e.g. Reciprocal) reject integer inputs with a reason.
"""

from __future__ import annotations

import numpy as np

from . import elementwise as ew
from .broadcast import align_leading, broadcast_error
from .registry import ANY, converter

FLOAT = ("float32", "float16")
NUMERIC = ("float32", "float16", "int32", "int64")
WITH_BOOL = NUMERIC + ("bool",)
CAST_TYPES = ("float32", "float16", "int32", "int64", "bool", "int8", "uint8")


# --- binary --------------------------------------------------------------------------------------

# TF op -> (lowering, accepts integers)
BINARY = {
    "Add": (ew.onnx_op("Add"), True),
    "AddV2": (ew.onnx_op("Add"), True),
    "Sub": (ew.onnx_op("Sub"), True),
    "Mul": (ew.onnx_op("Mul"), True),
    # TF's integer Div truncates toward zero, like ONNX Div.
    "Div": (ew.onnx_op("Div"), True),
    "RealDiv": (ew.onnx_op("Div"), False),
    "DivNoNan": (ew.div_no_nan, False),
    "FloorDiv": (ew.floor_div, True),
    "FloorMod": (ew.floor_mod, True),
    "Maximum": (ew.onnx_op("Max"), True),
    "Minimum": (ew.onnx_op("Min"), True),
    "Pow": (ew.onnx_op("Pow"), True),
    "SquaredDifference": (ew.squared_difference, True),
}


def _binary(node, ctx):
    lower = BINARY[node.op][0]
    ctx.set_output(node, 0, lower(ctx, ctx.input(node, 0), ctx.input(node, 1),
                                  dtype=ctx.attr_dtype(node, "T")))


# Registered apart, so that a rejection's "supported:" list and docs/supported_ops.md name
# each op's own dtypes (they named integers for the float-only ones: dtype hunt, 2026-12-04).
@converter(*(k for k, v in BINARY.items() if v[1]), dtypes=NUMERIC, inputs=(ANY, ANY))
class Binary:
    """Binary arithmetic with numpy broadcasting: Add, AddV2, Sub, Mul, Div, FloorDiv,
    FloorMod (TF floor semantics, also for negative integers), Maximum, Minimum, Pow,
    SquaredDifference on float32, float16, int32, int64.
    Rejects: other dtypes."""

    convert = staticmethod(_binary)


@converter(*(k for k, v in BINARY.items() if not v[1]), dtypes=FLOAT, inputs=(ANY, ANY))
class BinaryFloat:
    """RealDiv and DivNoNan with numpy broadcasting on float32, float16.
    Rejects: other dtypes (integers too)."""

    convert = staticmethod(_binary)


@converter("AddN", dtypes=NUMERIC, inputs=(ANY,))
class AddN:
    """Sum of N same-shaped tensors (ONNX Sum for floats, a chain of Add for integers, Sum
    being float-only). Rejects: other dtypes."""

    @staticmethod
    def convert(node, ctx):
        xs = [ctx.input(node, i) for i in range(ctx.num_inputs(node))]
        if len(xs) == 1:
            out = xs[0]
        elif ew.is_int(ctx.attr_dtype(node, "T")):
            out = xs[0]
            for x in xs[1:]:
                out = ctx.emit("Add", [out, x])
        else:
            out = ctx.emit("Sum", xs)
        ctx.set_output(node, 0, out)


# --- unary ---------------------------------------------------------------------------------------

# TF op -> (lowering, accepts integers)
UNARY = {
    "Abs": (ew.onnx_op("Abs"), True),
    "Neg": (ew.onnx_op("Neg"), True),
    "Sign": (ew.onnx_op("Sign"), True),
    "Square": (ew.square, True),
    # TF 2.21's CPU Round kernel returns zeros for integer inputs; an identity would disagree
    # with native TF, so integers stay native.
    "Round": (ew.onnx_op("Round"), False),
    "Ceil": (ew.onnx_op("Ceil"), False),
    "Floor": (ew.onnx_op("Floor"), False),
    "Exp": (ew.onnx_op("Exp"), False),
    "Expm1": (ew.expm1, False),
    "Log": (ew.onnx_op("Log"), False),
    "Log1p": (ew.log1p, False),
    "Sqrt": (ew.onnx_op("Sqrt"), False),
    "Rsqrt": (ew.rsqrt, False),
    "Reciprocal": (ew.onnx_op("Reciprocal"), False),
    "Inv": (ew.onnx_op("Reciprocal"), False),
    "Erf": (ew.onnx_op("Erf"), False),
    "Erfc": (ew.erfc, False),
    "Sin": (ew.onnx_op("Sin"), False),
    "Cos": (ew.onnx_op("Cos"), False),
    "Tan": (ew.onnx_op("Tan"), False),
    "Asin": (ew.onnx_op("Asin"), False),
    "Acos": (ew.onnx_op("Acos"), False),
    "Atan": (ew.onnx_op("Atan"), False),
    "Sinh": (ew.onnx_op("Sinh"), False),
    "Cosh": (ew.onnx_op("Cosh"), False),
    "Asinh": (ew.onnx_op("Asinh"), False),
    "Acosh": (ew.onnx_op("Acosh"), False),
    "Atanh": (ew.onnx_op("Atanh"), False),
    "IsNan": (ew.onnx_op("IsNaN"), False),
}


def _unary(node, ctx):
    lower = UNARY[node.op][0]
    ctx.set_output(node, 0, lower(ctx, ctx.input(node, 0), dtype=ctx.attr_dtype(node, "T")))


@converter(*(k for k, v in UNARY.items() if v[1]), dtypes=NUMERIC, inputs=(ANY,))
class Unary:
    """Elementwise functions through one table: Abs, Neg, Sign, Square on float32, float16,
    int32, int64. Rejects: other dtypes."""

    convert = staticmethod(_unary)


@converter(*(k for k, v in UNARY.items() if not v[1]), dtypes=FLOAT, inputs=(ANY,))
class UnaryFloat:
    """Elementwise functions through one table: Round (half to even, like TF), Ceil, Floor,
    Exp, Expm1, Log, Log1p (both kept precise near 0), Sqrt, Rsqrt, Reciprocal, Inv, Erf,
    Erfc, Sin, Cos, Tan, Asin, Acos, Atan, Sinh, Cosh, Asinh, Acosh, Atanh, IsNan on float32,
    float16. Rejects: other dtypes (integers too)."""

    convert = staticmethod(_unary)


@converter("ClipByValue", dtypes=NUMERIC, inputs=(ANY, ANY, ANY))
class ClipByValue:
    """ClipByValue with scalar or same-shaped tensor bounds (tf.clip_by_value itself now emits
    Minimum + Maximum, converted on their own). Constant
    scalar bounds with min <= max lower to ONNX Clip, anything else to Max(Min(x, max), min),
    TF's own order (which returns min where min > max). Rejects: other dtypes; bounds that
    are neither scalars nor of the input's shape (TF raises; broadcasting them answered:
    helper hunt, 2026-12-02)."""

    @staticmethod
    def validate(node, ctx):
        x = ctx.input_shape(node, 0)
        for i, name in ((1, "clip_value_min"), (2, "clip_value_max")):
            b = ctx.input_shape(node, i)
            if b is None or x is None or len(b) == 0:
                continue
            if len(b) != len(x) or any(p is not None and q is not None and p != q
                                       for p, q in zip(b, x)):
                return (f"{name} of shape {list(b)} is neither a scalar nor of the input's "
                        f"shape {list(x)}: TensorFlow raises for this")
        return None

    @staticmethod
    def convert(node, ctx):
        x, lo, hi = (ctx.input(node, i) for i in range(3))
        ordered = False
        if ctx.is_const(node, 1) and ctx.is_const(node, 2):
            lo_v, hi_v = ctx.const_value(node, 1), ctx.const_value(node, 2)
            ordered = np.ndim(lo_v) == 0 and np.ndim(hi_v) == 0 and lo_v <= hi_v
        ctx.set_output(node, 0, ew.clip(ctx, x, lo, hi, scalar_bounds_ordered=ordered))


# --- Cast ----------------------------------------------------------------------------------------

@converter("Cast", dtype_attr=None, inputs=(ANY,))
class Cast:
    """Cast between float32, float16, int32, int64, bool, int8 and uint8 (a uint8 image
    entering the engine as it is). float -> int truncates toward zero (TF's semantics); out
    of range, int8 / uint8 saturate as TF's CPU kernel does (int32 / int64: each backend's
    hardware conversion, as TF's), x -> bool is x != 0.
    Rejects: other source/destination types; Truncate=True between float types (TF then
    truncates the mantissa instead of rounding)."""

    @staticmethod
    def validate(node, ctx):
        src, dst = ctx.attr_dtype(node, "SrcT"), ctx.attr_dtype(node, "DstT")
        for what, dt in (("SrcT", src), ("DstT", dst)):
            if dt is None or dt.name not in CAST_TYPES:
                return (f"Cast with {what}={dt.name if dt is not None else 'unknown'} is not "
                        f"supported (supported: {', '.join(CAST_TYPES)})")
        if ctx.attr(node, "Truncate", False) and src.kind == "f" and dst.kind == "f" \
                and src != dst:
            return "Cast with Truncate=True between float types is not supported"
        return None

    @staticmethod
    def convert(node, ctx):
        from tftrt.lowering import onnx_dtype
        x = ctx.input(node, 0)
        src, dst = ctx.attr_dtype(node, "SrcT"), ctx.attr_dtype(node, "DstT")
        ctx.set_output(node, 0, x if src == dst else ctx.emit("Cast", [x], to=onnx_dtype(dst)))


# --- comparisons, logic, selection ---------------------------------------------------------------

COMPARE = {
    "Equal": ew.onnx_op("Equal"),
    "NotEqual": ew.not_equal,
    "Greater": ew.onnx_op("Greater"),
    "GreaterEqual": ew.onnx_op("GreaterOrEqual"),
    "Less": ew.onnx_op("Less"),
    "LessEqual": ew.onnx_op("LessOrEqual"),
}


@converter(*COMPARE, dtypes=WITH_BOOL, inputs=(ANY, ANY))
class Compare:
    """Comparisons with numpy broadcasting, bool result: Equal, NotEqual, Greater,
    GreaterEqual, Less, LessEqual on float32, float16, int32, int64 (and bool for
    Equal/NotEqual). Rejects: incompatible_shape_error=False unless the shapes are known to
    broadcast (TF then returns a scalar False instead of failing); other dtypes."""

    @staticmethod
    def validate(node, ctx):
        if ctx.attr(node, "incompatible_shape_error", True) is False:
            reason = broadcast_error(ctx.input_shape(node, 0), ctx.input_shape(node, 1))
            if reason:
                return (f"{node.op} with incompatible_shape_error=False needs shapes known "
                        f"to broadcast: {reason}")
        return None

    @staticmethod
    def convert(node, ctx):
        ctx.set_output(node, 0, COMPARE[node.op](ctx, ctx.input(node, 0), ctx.input(node, 1)))


LOGICAL = {"LogicalAnd": "And", "LogicalOr": "Or", "LogicalNot": "Not"}


@converter(*LOGICAL, dtype_attr=None, inputs=(ANY,))
class Logical:
    """LogicalAnd, LogicalOr (numpy broadcasting), LogicalNot on bool tensors.
    Rejects: nothing beyond unknown ranks."""

    @staticmethod
    def convert(node, ctx):
        xs = [ctx.input(node, i) for i in range(ctx.num_inputs(node))]
        ctx.set_output(node, 0, ctx.emit(LOGICAL[node.op], xs))


@converter("Select", "SelectV2", dtypes=WITH_BOOL, inputs=(ANY, ANY, ANY))
class Select:
    """Elementwise choice (ONNX Where; And/Or/Not for bool values, which onnxruntime's Where
    lacks). SelectV2 broadcasts numpy-style; v1 Select takes a
    condition of the same shape, a scalar, or a vector that picks whole rows (its leading
    dim), which we align by appending unit dims. Rejects: a v1 condition of another rank."""

    @staticmethod
    def validate(node, ctx):
        if node.op == "Select":
            c, x = ctx.input_rank(node, 0), ctx.input_rank(node, 1)
            if c is not None and x is not None and c not in (0, 1, x):
                return (f"Select condition of rank {c} with values of rank {x} "
                        f"(expected rank 0, 1 or {x})")
            if c == 1 and x is not None and x > 1:
                # one condition per row of the values: TF raises on another length, where a
                # length-1 condition broadcast (helper hunt, 2026-12-02). Known lengths only;
                # a 1 against an unknown length could broadcast too.
                cd = (ctx.input_shape(node, 0) or (None,))[0]
                xd = (ctx.input_shape(node, 1) or (None,))[0]
                if (cd is not None and xd is not None and cd != xd) or \
                        ((cd is None) != (xd is None) and 1 in (cd, xd)):
                    return (f"Select's condition of length {cd} for values with {xd} rows "
                            f"(TensorFlow requires one condition per row)")
        return None

    @staticmethod
    def convert(node, ctx):
        cond, x, y = (ctx.input(node, i) for i in range(3))
        if node.op == "Select":
            c_rank, x_rank = ctx.input_rank(node, 0), ctx.input_rank(node, 1)
            if c_rank == 1 and x_rank > 1:
                cond = align_leading(ctx, cond, 1, x_rank)
        if ctx.attr_dtype(node, "T") == np.bool_:
            ctx.set_output(node, 0, ew.select_bool(ctx, cond, x, y))
        else:
            ctx.set_output(node, 0, ctx.emit("Where", [cond, x, y]))

