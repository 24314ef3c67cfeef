"""Fake quantization: FakeQuantWithMinMax{Args,Vars,VarsPerChannel}, QuantizeAndDequantizeV2-4.

These ops simulate integer quantization in floating point. We lower them to the same float
expression TF evaluates (tensorflow/core/kernels/fake_quant_ops_functor.h and
quantize_and_dequantize_op.h), step by step and in the same order, with the range constants
("nudged" min/max, scales) computed here in the op's own float type exactly as TF computes
them. ONNX QuantizeLinear/DequantizeLinear would not be bit-exact: they divide by the scale
where TF multiplies by its inverse, and cannot express narrow ranges or 16-bit saturation.

For INT8 / FP8 conversion the op's range matters too: the last node of each lowering carries
it in its ``doc_string`` (:func:`mark_range`, read by ``tftrt.calibration.graph_table``), and
an INT8 layer that reads the op's output folds the fake quantization into its own (TF-TRT made
such ops identities and gave their range to TensorRT). Per-channel ranges, and QDQ ops whose
min / max are not constants, carry none.
"""

from __future__ import annotations

import json
import math
from typing import Tuple

import numpy as np

from .registry import ANY, TENSOR, WEIGHT, converter


RANGE_TAG = "tftrt_fake_quant"


def mark_range(ctx, source: str, lo: float, hi: float, bits: int,
               range_given: bool = True, op: str = "") -> None:
    """Tags the node just emitted (the op's output) with the op's input, float range and
    ``num_bits`` (calibration.graph_table folds only ops as fine as INT8: a QDQ whose scale
    is computed from the data has no constant step to tell it by); ``range_given`` False: a
    QDQ whose range TF computes from the data (graph_table warns that INT8 engines take the
    constant one)."""
    tag = {"input": source, "min": float(lo), "max": float(hi), "num_bits": int(bits)}
    if not range_given:
        tag["range_given"], tag["op"] = False, op
    ctx.nodes[-1].doc_string = json.dumps({RANGE_TAG: tag})


# --- FakeQuantWithMinMax* ---------------------------------------------------------------------

def _nudge(mn: float, mx: float, qmin: int, qmax: int) -> Tuple[np.float32, ...]:
    """TF's Nudge() in float32: (nudged_min, nudged_max, scale, inv_scale, quant_zero)."""
    f = np.float32
    mn, mx = f(mn), f(mx)
    qmin_f, qmax_f = f(qmin), f(qmax)
    scale = (mx - mn) / (qmax_f - qmin_f)
    inv_scale = (qmax_f - qmin_f) / (mx - mn)
    zero_from_min = qmin_f - mn / scale
    if zero_from_min < qmin_f:
        zero = qmin
    elif zero_from_min > qmax_f:
        zero = qmax
    else:  # std::round: half away from zero (zero_from_min >= 0 here); exact in float64
        zero = math.floor(float(zero_from_min) + 0.5)
    nudged_min = (qmin_f - f(zero)) * scale
    nudged_max = (qmax_f - f(zero)) * scale
    quant_zero = f(math.floor(float(-nudged_min * inv_scale + f(0.5))))
    return nudged_min, nudged_max, scale, inv_scale, quant_zero


def _quant_range(node, ctx) -> Tuple[int, int]:
    bits = int(ctx.attr(node, "num_bits", 8))
    return (1 if ctx.attr(node, "narrow_range", False) else 0), (1 << bits) - 1


def _min_max(node, ctx) -> Tuple[np.ndarray, np.ndarray]:
    if node.op == "FakeQuantWithMinMaxArgs":
        return (np.array(ctx.attr(node, "min", -6.0), np.float32),
                np.array(ctx.attr(node, "max", 6.0), np.float32))
    return (np.asarray(ctx.const_value(node, 1), np.float32),
            np.asarray(ctx.const_value(node, 2), np.float32))


@converter("FakeQuantWithMinMaxArgs", "FakeQuantWithMinMaxVars",
           "FakeQuantWithMinMaxVarsPerChannel", dtype_attr=None, inputs=(TENSOR, WEIGHT))
class FakeQuant:
    """Fake quantization to num_bits (2-16, narrow_range optional) with TF's nudged zero
    point and round-half-up, bit-exact in float32: Clip, Sub, Mul (Args, PerChannel) or Div
    (Vars), Sub, Add, Floor, Mul, as TF evaluates it. Vars and PerChannel need constant
    min/max (the per-channel ones along the last axis); a min = max = 0 range gives zeros,
    as in TF.

    Rejects: non-float32 inputs, non-constant min/max, min > max (min >= max for Args),
    num_bits outside [2, 16], per-channel ranges whose length is not the last dimension.
    """

    @staticmethod
    def validate(node, ctx):
        if ctx.input_dtype(node, 0) != np.dtype(np.float32):
            return f"{node.op} needs a float32 input, got {ctx.input_dtype(node, 0)}"
        bits = int(ctx.attr(node, "num_bits", 8))
        if not 2 <= bits <= 16:
            return f"num_bits={bits} is out of range (2 to 16)"
        mn, mx = _min_max(node, ctx)
        if node.op == "FakeQuantWithMinMaxArgs" and not mn < mx:
            return f"min={float(mn)} must be smaller than max={float(mx)}"
        if np.any(mn > mx):
            return f"min {mn.tolist()} is larger than max {mx.tolist()}"
        if node.op == "FakeQuantWithMinMaxVarsPerChannel":
            last = ctx.input_shape(node, 0)[-1] if ctx.input_rank(node, 0) else None
            if mn.ndim != 1 or mn.shape != mx.shape or (last is not None and
                                                         mn.shape[0] != last):
                return f"per-channel min/max of shape {mn.shape} do not match the last " \
                       f"dimension {last}"
        elif mn.size != 1 or mx.size != 1:
            return "min and max must be scalars"
        return None

    @staticmethod
    def convert(node, ctx):
        qmin, qmax = _quant_range(node, ctx)
        mn, mx = (np.atleast_1d(v).reshape(-1) for v in _min_max(node, ctx))
        # A min = max = 0 range outputs zeros in TF; clamping to [0, 0] does the same.
        nudged = [_nudge(a, b, qmin, qmax) if (a, b) != (0, 0) else (0, 0, 1, 1, 0)
                  for a, b in zip(mn, mx)]
        nmin, nmax, scale, inv, qzero = (np.array(v, np.float32) for v in zip(*nudged))
        if node.op != "FakeQuantWithMinMaxVarsPerChannel":
            nmin, nmax, scale, inv, qzero = (v.reshape(()) for v in
                                             (nmin, nmax, scale, inv, qzero))
        c = lambda v, n: ctx.const(v, f"{node.name}/{n}")  # noqa: E731
        x = ctx.input(node, 0)
        if nmin.ndim == 0:
            x = ctx.emit("Clip", [x, c(nmin, "nudged_min"), c(nmax, "nudged_max")])
        else:  # TF: x.cwiseMin(nudged_max).cwiseMax(nudged_min)
            x = ctx.emit("Max", [ctx.emit("Min", [x, c(nmax, "nudged_max")]),
                                 c(nmin, "nudged_min")])
        x = ctx.emit("Sub", [x, c(nmin, "nudged_min")])
        if node.op == "FakeQuantWithMinMaxVars":
            x = ctx.emit("Div", [x, c(scale, "scale")])
        else:
            x = ctx.emit("Mul", [x, c(inv, "inv_scale")])
        x = ctx.emit("Sub", [x, c(qzero, "quant_zero")])
        x = ctx.emit("Floor", [ctx.emit("Add", [x, c(np.float32(0.5), "half")])])
        ctx.set_output(node, 0, ctx.emit("Mul", [x, c(scale, "scale")]))
        if nmin.ndim == 0 and (float(nmin), float(nmax)) != (0.0, 0.0):
            mark_range(ctx, ctx.input(node, 0), nmin, nmax,
                       int(ctx.attr(node, "num_bits", 8)))


# --- QuantizeAndDequantizeV2 / V3 / V4 --------------------------------------------------------

def _qdq_params(node, ctx) -> Tuple[bool, int, bool, bool, int, str]:
    """(signed, num_bits, range_given, narrow_range, axis, round_mode) of a QDQ node."""
    if node.op == "QuantizeAndDequantizeV3":
        bits = int(np.asarray(ctx.const_value(node, 3)).reshape(-1)[0])
        round_mode = "HALF_TO_EVEN"
    else:
        bits = int(ctx.attr(node, "num_bits", 8))
        round_mode = ctx.attr(node, "round_mode", "HALF_TO_EVEN")
    return (bool(ctx.attr(node, "signed_input", True)), bits,
            bool(ctx.attr(node, "range_given", False)),
            bool(ctx.attr(node, "narrow_range", False)), int(ctx.attr(node, "axis", -1)),
            round_mode)


def _quantized_bounds(signed: bool, bits: int, narrow: bool) -> Tuple[int, int]:
    if signed:
        return (-(1 << (bits - 1)) + (1 if narrow else 0)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def _qdq_range(mn, mx, qmin: int, qmax: int, dtype):
    """TF's ComputeQuantizationRange in the op's type: (min, max, scale, inverse_scale)."""
    t = np.dtype(dtype).type
    mn, mx = t(mn), t(mx)
    big = t(np.finfo(dtype).max)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        from_min = t(qmin) / mn if t(qmin) * mn > 0 else big
        from_max = t(qmax) / mx if t(qmax) * mx > 0 else big
        if from_min < from_max:
            inv = mn / t(qmin)
            return mn, t(qmax) * inv, from_min, inv
        inv = mx / t(qmax)
        return t(qmin) * inv, mx, from_max, inv


@converter("QuantizeAndDequantizeV2", "QuantizeAndDequantizeV3", "QuantizeAndDequantizeV4",
           dtypes=(np.float32,), inputs=(TENSOR, ANY, ANY, WEIGHT))
class QuantizeAndDequantize:
    """Simulated quantization as TF evaluates it: scale chosen so that [min, max] fits the
    signed/unsigned num_bits range while 0 stays exact; with range_given the input is clamped
    to the adjusted range, then out = round(x * scale) * inverse_scale (round half to even,
    or half up for round_mode=HALF_UP). range_given needs constant scalar min/max; without
    it the range is the input's min/max (per tensor, or per slice along ``axis``) computed
    in the network. V3 needs a constant num_bits.

    float32 only: TF has no half kernel outside XLA, and we don't lower float64.

    Rejects: other dtypes, non-constant min/max with range_given, min > max, range_given
    with a per-axis range (TF 2.21 fails on it too), num_bits out of [1, 32] (signed needs
    >= 2), an axis out of range.
    """

    @staticmethod
    def validate(node, ctx):
        if node.op == "QuantizeAndDequantizeV3" and not ctx.is_const(node, 3):
            return "num_bits must be a constant"
        signed, bits, range_given, _, axis, round_mode = _qdq_params(node, ctx)
        if not (2 if signed else 1) <= bits <= 32:
            return f"num_bits={bits} is out of range (signed_input={signed})"
        if round_mode not in ("HALF_TO_EVEN", "HALF_UP"):
            return f"round_mode={round_mode} is not supported"
        rank = ctx.input_rank(node, 0)
        if axis != -1 and not 0 <= axis < rank:
            return f"axis={axis} is out of range for an input of rank {rank}"
        if range_given:
            if axis != -1:
                return ("range_given=True with a per-axis range is not supported (TF 2.21 "
                        "itself fails on it: 'input_min must be a scalar')")
            if not (ctx.is_const(node, 1) and ctx.is_const(node, 2)):
                return "range_given=True needs constant input_min and input_max"
            mn = np.asarray(ctx.const_value(node, 1))
            mx = np.asarray(ctx.const_value(node, 2))
            if mn.size != 1 or mx.size != 1:
                return "input_min and input_max must be scalars"
            if np.any(mn > mx):
                return f"input_min {mn.tolist()} is larger than input_max {mx.tolist()}"
        return None

    @staticmethod
    def convert(node, ctx):
        signed, bits, range_given, narrow, axis, round_mode = _qdq_params(node, ctx)
        dtype = ctx.attr_dtype(node, "T") or np.dtype(np.float32)
        qmin, qmax = _quantized_bounds(signed, bits, narrow)
        rank = ctx.input_rank(node, 0)
        x = ctx.input(node, 0)
        if range_given:
            lo, hi, scale, inv = (np.array(v, dtype) for v in _qdq_range(
                ctx.const_value(node, 1).reshape(()), ctx.const_value(node, 2).reshape(()),
                qmin, qmax, dtype))
            if lo <= hi:
                x = ctx.emit("Clip", [x, ctx.const(lo, "min_range"),
                                      ctx.const(hi, "max_range")])
            else:  # unsigned with input_max < 0: min -0 over max. TF clamps
                # x.cwiseMin(max).cwiseMax(min), every element -0; ONNX's Clip gave max,
                # times a scale of FLT_MAX: ~1e38 or inf (differential fuzz, s48)
                x = ctx.emit("Max", [ctx.emit("Min", [x, ctx.const(hi, "max_range")]),
                                     ctx.const(lo, "min_range")])
            scale, inv = ctx.const(scale, "scale"), ctx.const(inv, "inverse_scale")
        else:
            scale, inv = _dynamic_scale(ctx, x, rank, axis, qmin, qmax, dtype)
        source = ctx.input(node, 0)
        x = ctx.emit("Mul", [x, scale])
        if round_mode == "HALF_UP":
            x = ctx.emit("Floor", [ctx.emit("Add", [x, ctx.const(np.array(0.5, dtype), "half")])])
        else:
            x = ctx.emit("Round", [x])
        ctx.set_output(node, 0, ctx.emit("Mul", [x, inv]))
        given = _given_range(node, ctx, range_given, axis)
        if given is not None:
            if range_given:
                # the range TF clamps to: unsigned with input_min < 0 clamps at 0 (tagged
                # -4..4 it folded as symmetric and INT8 lost the clamp: helper hunt,
                # 2026-12-02)
                given = (float(lo), float(hi))
            mark_range(ctx, source, *given, bits, range_given=range_given, op=node.name)


def _given_range(node, ctx, range_given: bool, axis: int):
    """The (min, max) an INT8 engine uses for a QDQ op: its constant scalar input_min /
    input_max, as TF-TRT took them (also without range_given, where TF itself computes the
    range from the data); None for per-axis or non-constant ranges."""
    if axis != -1 or not (ctx.is_const(node, 1) and ctx.is_const(node, 2)):
        return None
    mn, mx = np.asarray(ctx.const_value(node, 1)), np.asarray(ctx.const_value(node, 2))
    if mn.size != 1 or mx.size != 1:
        return None
    return float(mn.reshape(())), float(mx.reshape(()))


def _dynamic_scale(ctx, x: str, rank: int, axis: int, qmin: int, qmax: int,
                   dtype) -> Tuple[str, str]:
    """ComputeQuantizationRange on the input's own min/max, as network ops."""
    axes = [a for a in range(rank) if a != axis]
    kw = {"axes": axes} if axes else {}
    mn = ctx.emit("ReduceMin", [x], keepdims=1, **kw) if axes else x
    mx = ctx.emit("ReduceMax", [x], keepdims=1, **kw) if axes else x
    c = lambda v, n: ctx.const(np.array(v, dtype), n)  # noqa: E731
    zero, big = c(0, "zero"), c(np.finfo(dtype).max, "dtype_max")
    cmax = c(qmax, "max_quantized")

    def side(q, r):  # q / r when q * r > 0, else the type's max
        ok = ctx.emit("Greater", [ctx.emit("Mul", [q, r]), zero])
        return ctx.emit("Where", [ok, ctx.emit("Div", [q, r]), big])

    from_max = side(cmax, mx)
    inv_from_max = ctx.emit("Div", [mx, cmax])
    if qmin == 0:  # unsigned: the min side never decides the scale
        return from_max, inv_from_max
    cmin = c(qmin, "min_quantized")
    from_min = side(cmin, mn)
    use_min = ctx.emit("Less", [from_min, from_max])
    scale = ctx.emit("Where", [use_min, from_min, from_max])
    inv = ctx.emit("Where", [use_min, ctx.emit("Div", [mn, cmin]), inv_from_max])
    return scale, inv

