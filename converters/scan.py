"""Cumsum: running sums along one axis, as a log-step scan of shifted adds.

The engine's layers for a running sum are data movement and adds, which every backend runs:
Hillis and Steele's scan adds to y its copy shifted by 1, 2, 4, ... positions along the axis
(Slice off the far end, Pad zeros at the near end), ceil(log2 L) steps for an axis of static
length L:

    y = x (exclusive: x shifted by 1)
    for s in 1, 2, 4, ... < L:   y = y + shift(y, s)      shift: Slice + Pad (zeros)
    reverse=True shifts the other way

Why not one MatMul with a constant triangular matrix: x @ T multiplies every element by the
zeros of T as well, and 0 * inf is NaN, so one inf (a log of 0) made the whole row NaN where
TF's running sum is finite before the inf and inf after it. The scan only adds what TF adds
(in another order: results differ by rounding, not by kind), and needs no L x L constant.
Integer running sums stay native (float32 / float16 only): they are mostly shape arithmetic
(``cumsum(tf.shape(x))``), which TF-TRT, and its tests that tftrt ports, keep native.
"""

from __future__ import annotations

from tftrt.lowering import ConversionError

from .axes import axis_error, const_ints, int64s, normalize_axis
from .broadcast import scalar_like
from .registry import FLOATS, TENSOR, WEIGHT, converter

# Longest axis converted: 12 steps. An FP16 engine rounds every step's partial sums to
# float16; on signed N(0, 1) data a reverse cumsum broke FP16's tolerance (2e-2) at 2 of 4,096
# elements for L = 1,024 and at 160 of 16,384 for L = 4,096, where sums cancel (FP32: exact to
# rounding at any length). Longer axes stay native.
MAX_LENGTH = 4096


def _axis_plan(node, ctx):
    """(axis, static length) or a reason string."""
    axis = const_ints(ctx, node, 1)
    if len(axis) != 1 or len(ctx.const_value(node, 1).shape) != 0:
        return f"Cumsum axis must be a scalar, got {axis}"
    shape = ctx.input_shape(node, 0)
    reason = axis_error(axis[0], len(shape))
    if reason:
        return reason
    axis = normalize_axis(axis[0], len(shape))
    length = shape[axis]
    if length is None:
        return (f"Cumsum along dim {axis} of unknown size (shape {list(shape)}): the scan's "
                f"steps depend on its length, which must be static")
    if length == 0:
        return f"Cumsum along dim {axis} of size 0 (an empty output)"
    if length > MAX_LENGTH:
        return (f"Cumsum along dim {axis} of size {length} > {MAX_LENGTH}: left to TF (an FP16 "
                f"engine stores each of the scan's steps in float16, whose rounding of long "
                f"partial sums grows past FP16's tolerance)")
    return axis, length


def _shift(ctx, x, axis: int, rank: int, length: int, s: int, reverse: bool, zero: str) -> str:
    """x moved ``s`` positions along ``axis`` (towards the end, or towards the start when
    ``reverse``), zeros coming in: out[j] = x[j - s] (x[j + s] when reversed)."""
    start, end = (s, length) if reverse else (0, length - s)
    kept = ctx.emit("Slice", [x, int64s(ctx, [start], "starts"), int64s(ctx, [end], "ends"),
                              int64s(ctx, [axis], "axes")])
    pads = [0] * (2 * rank)
    pads[axis + (rank if reverse else 0)] = s
    return ctx.emit("Pad", [kept, int64s(ctx, pads, "pads"), zero], mode="constant")


@converter("Cumsum", dtypes=FLOATS, inputs=(TENSOR, WEIGHT))
class Cumsum:
    """tf.cumsum on float32 / float16 along a constant axis of static length (other dims,
    a dynamic batch, may be unknown), with exclusive and reverse: a log-step scan of
    Slice + Pad + Add (ceil(log2 L) steps), which adds exactly the values TF adds, so inf and
    NaN spread as in TF. Rejects: integer types (shape arithmetic, left to TF as in TF-TRT);
    an axis computed at run time or out of range; an axis of unknown or zero size, or longer
    than 4096.

    Rounding: the sums are taken in a tree order instead of TF's left-to-right one, so they
    differ by rounding (within FP32's tolerance). An FP16 engine keeps the steps in FP32
    (engine/precision.py ``_scan_steps``, s48: stored as float16, running sums past 65504
    were inf); MAX_LENGTH dates from when it stored them as float16, whose rounding of long
    sums that cancel lost more than FP16's tolerance. A MatMul by a triangular constant
    would accumulate in float32, but made whole rows NaN from one inf."""

    @staticmethod
    def validate(node, ctx):
        plan = _axis_plan(node, ctx)
        return plan if isinstance(plan, str) else None

    @staticmethod
    def convert(node, ctx):
        plan = _axis_plan(node, ctx)
        if isinstance(plan, str):
            raise ConversionError(plan)
        axis, length = plan
        rank = ctx.input_rank(node, 0)
        reverse = bool(ctx.attr(node, "reverse", False))
        zero = scalar_like(ctx, 0, ctx.attr_dtype(node, "T"), "zero")
        y = ctx.input(node, 0)
        if ctx.attr(node, "exclusive", False):
            if length == 1:  # nothing before the only element: zeros (not x * 0: inf * 0)
                shape = ctx.emit("Shape", [y])
                ctx.set_output(node, 0, ctx.emit("Expand", [zero, shape]))
                return
            y = _shift(ctx, y, axis, rank, length, 1, reverse, zero)
        s = 1
        while s < length:
            y = ctx.emit("Add", [y, _shift(ctx, y, axis, rank, length, s, reverse, zero)])
            s *= 2
        ctx.set_output(node, 0, y)
