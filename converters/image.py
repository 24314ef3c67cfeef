"""Image ops: DepthToSpace, SpaceToDepth, the resize family, CombinedNonMaxSuppression."""

from __future__ import annotations

import numpy as np
from onnx import numpy_helper

from . import layout
from .layout import onnx_type
from .registry import ANY, FLOATS, TENSOR, WEIGHT, converter
from .shape_values import resolve


@converter("DepthToSpace", "SpaceToDepth", dtypes=FLOATS, inputs=(TENSOR,))
class DepthToSpace:
    """DepthToSpace / SpaceToDepth with block_size >= 2, NHWC (wrapped in transposes) or
    NCHW, float32/float16. TF's channel order (block row, block column, channel) is ONNX's
    DCR mode.

    Rejects: other dtypes (onnxruntime, our reference, has no int32 kernel), NCHW_VECT_C,
    non-4-D inputs, channels not divisible by block_size**2
    (DepthToSpace) or spatial sizes not divisible by block_size (SpaceToDepth).
    """

    @staticmethod
    def validate(node, ctx):
        shape = ctx.input_shape(node, 0)
        if len(shape) != 4:
            return f"{node.op} needs a rank-4 input, got shape {shape}"
        fmt = layout.data_format(node, ctx)
        if fmt not in ("NHWC", "NCHW"):
            return f"data_format={fmt} is not supported (supported: NHWC, NCHW)"
        bs = int(ctx.attr(node, "block_size", 0))
        if bs < 2:
            return f"block_size={bs} must be at least 2"
        c = shape[layout.channel_axis(fmt)]
        if node.op == "DepthToSpace" and c is not None and c % (bs * bs):
            return f"{c} channels are not divisible by block_size**2 = {bs * bs}"
        if node.op == "SpaceToDepth":
            for d in layout.spatial_of(shape, fmt):
                if d is not None and d % bs:
                    return f"spatial size {d} is not divisible by block_size {bs}"
        return None

    @staticmethod
    def convert(node, ctx):
        fmt = layout.data_format(node, ctx)
        x = ctx.input(node, 0)
        if fmt == "NHWC":
            x = layout.to_channels_first(ctx, x, 4)
        bs = int(ctx.attr(node, "block_size"))
        if node.op == "DepthToSpace":
            y = ctx.emit("DepthToSpace", [x], blocksize=bs, mode="DCR")
        else:
            y = ctx.emit("SpaceToDepth", [x], blocksize=bs)
        if fmt == "NHWC":
            y = layout.to_channels_last(ctx, y, 4)
        ctx.set_output(node, 0, y)


# --- resize -------------------------------------------------------------------------------------
# TF's resize kernels (core/kernels/image/resize_*_op.cc) map output pixel x to the input
# coordinate, in float32:
#   legacy (neither flag)     c = x * in/out
#   align_corners             c = x * (in-1)/(out-1)            (in/out when out == 1)
#   half_pixel_centers        c = (x + 0.5) * in/out - 0.5      (bilinear)
#                             c = (x + 0.5) * in/out            (nearest: no -0.5)
# Bilinear interpolates between floor(c) and ceil(c), both clamped to the image: ONNX Resize
# "linear" with coordinate_transformation_mode asymmetric / align_corners / half_pixel, which
# clamp the same way. Nearest takes floor(c) (roundf(c) with align_corners), clamped: ONNX
# asymmetric + floor, align_corners + round_prefer_ceil, and half_pixel + round_prefer_ceil
# (round((x + 0.5) / s - 0.5) = floor((x + 0.5) * in/out); the same as the deprecated
# tf_half_pixel_for_nn + floor without onnxruntime's deprecation warning).
# TF's float32 products and ONNX's quotients round differently, and nearest is not continuous:
# for some sizes (e.g. 14 -> 9 with half_pixel_centers) a pixel lands one input pixel apart.
# With static sizes the converter computes TF's indices and checks ONNX's (in float32, as
# onnxruntime computes, and float64, as the engine does); where one differs it emits Gathers of
# TF's own indices instead of Resize, exact everywhere.

_RESIZE_OPS = {"ResizeBilinear": "linear", "ResizeNearestNeighbor": "nearest"}


def _resize_flags(node, ctx):
    return bool(ctx.attr(node, "align_corners", False)), \
        bool(ctx.attr(node, "half_pixel_centers", False))


def _resize_out_size(node, ctx):
    """(out_h, out_w) as ints, or a reason string. ``size`` is a constant, or computed from
    static dims (Keras UpSampling2D: tf.shape(x)[1:3] * factor); TF's static output shape
    serves when it knows both."""
    elems = resolve(ctx.info, ctx.input_tensor(node, 1))
    if not (isinstance(elems, list) and len(elems) == 2
            and all(isinstance(e, int) for e in elems)):
        out = ctx.output_shape(node, 0)
        if out is None or len(out) != 4 or out[1] is None or out[2] is None:
            return ("size must be known at conversion time (a constant, or computed from "
                    "static dimensions); it is computed at run time")
        elems = [int(out[1]), int(out[2])]
    if min(elems) <= 0:
        return f"size={elems} must be positive"
    return elems


def _validate_resize(node, ctx):
    shape = ctx.input_shape(node, 0)
    if len(shape) != 4:
        return f"{node.op} needs a rank-4 NHWC input, got shape {shape}"
    align_corners, half_pixel = _resize_flags(node, ctx)
    if align_corners and half_pixel:
        return "align_corners and half_pixel_centers cannot both be true (TF rejects it too)"
    size = _resize_out_size(node, ctx)
    return size if isinstance(size, str) else None


def tf_nearest_indices(in_len: int, out_len: int, align_corners: bool,
                       half_pixel: bool) -> np.ndarray:
    """The input index of each output pixel, as TF's ResizeNearestNeighbor computes it."""
    f = np.float32
    scale = f(in_len - 1) / f(out_len - 1) if align_corners and out_len > 1 \
        else f(in_len) / f(out_len)
    x = np.arange(out_len, dtype=f)
    c = ((x + f(0.5)) * scale if half_pixel else x * scale).astype(f)
    if align_corners:  # roundf: half away from zero (c >= 0)
        lo = np.floor(c)
        c = np.where(c - lo >= 0.5, lo + 1, lo)
    return np.clip(np.floor(c), 0, in_len - 1).astype(np.int64)


def _onnx_nearest_indices(in_len, out_len, ctm, dtype) -> np.ndarray:
    """ONNX Resize nearest indices for our modes, computed in ``dtype`` (float32 as
    onnxruntime does: scale = float(out) / float(in); float64 as the engine does)."""
    d = np.dtype(dtype).type
    x = np.arange(out_len).astype(d)
    scale = d(out_len) / d(in_len)
    if ctm == "asymmetric":
        return np.clip(np.floor(x / scale), 0, in_len - 1).astype(np.int64)
    if ctm == "half_pixel":
        c = (x + d(0.5)) / scale - d(0.5)
    else:  # align_corners
        c = x * d(in_len - 1) / d(out_len - 1) if out_len > 1 else np.zeros_like(x)
    lo = np.floor(c)  # round_prefer_ceil
    return np.clip(np.where(c - lo >= 0.5, lo + 1, lo), 0, in_len - 1).astype(np.int64)


def _resize_mode(node, ctx):
    """(onnx mode, coordinate_transformation_mode, nearest_mode) of a TF resize node."""
    align_corners, half_pixel = _resize_flags(node, ctx)
    ctm = "align_corners" if align_corners else "half_pixel" if half_pixel else "asymmetric"
    if _RESIZE_OPS[node.op] == "linear":
        return "linear", ctm, None
    return "nearest", ctm, "floor" if ctm == "asymmetric" else "round_prefer_ceil"


def _nearest_gathers(node, ctx, x, in_hw, out_hw):
    """TF's nearest indices as Gathers on H and W, or None when ONNX Resize gives the same."""
    if None in in_hw:
        return None  # unknown at conversion: Resize (docs/differences.md)
    align_corners, half_pixel = _resize_flags(node, ctx)
    _, ctm, _ = _resize_mode(node, ctx)
    tables = [tf_nearest_indices(i, o, align_corners, half_pixel) for i, o in zip(in_hw, out_hw)]
    if all(np.array_equal(t, _onnx_nearest_indices(i, o, ctm, d)) for t, i, o in
           zip(tables, in_hw, out_hw) for d in (np.float32, np.float64)):
        return None
    for axis, (t, i) in enumerate(zip(tables, in_hw), start=1):
        if not np.array_equal(t, np.arange(i)):
            x = ctx.emit("Gather", [x, ctx.const(t, f"{node.name}/indices")], axis=axis)
    return x


def _resize_sizes(node, ctx, x, shape, out_hw) -> str:
    """ONNX Resize's int64 ``sizes`` [N, H', W', C]: N and C copied from the input (a
    Shape slice where they are unknown, e.g. the dynamic batch)."""
    n, c = shape[0], shape[3]
    if n is not None and c is not None:
        return ctx.const(np.array([n, *out_hw, c], np.int64), f"{node.name}/sizes")
    i64 = lambda v, hint: ctx.const(np.array(v, np.int64), f"{node.name}/{hint}")  # noqa: E731
    parts = [ctx.emit("Shape", [x], start=0, end=1) if n is None else i64([n], "batch"),
             i64(out_hw, "size"),
             ctx.emit("Shape", [x], start=3, end=4) if c is None else i64([c], "channels")]
    return ctx.emit("Concat", parts, axis=0)


@converter(*_RESIZE_OPS, dtypes=FLOATS, inputs=(TENSOR, ANY))
class Resize:
    """ResizeBilinear and ResizeNearestNeighbor (tf.image.resize, Keras Resizing and
    UpSampling2D) with align_corners or half_pixel_centers or neither, float32/float16, NHWC,
    up or down by any ratio, lowered to ONNX Resize on H and W. ``size`` constant or computed
    from static dims; the batch and channels may be dynamic. Bilinear outputs float32 (a
    float16 input is cast first, as TF computes in float); nearest keeps the input's type and
    uses TF's exact pixel indices (Gathers where ONNX's rounding would pick another pixel).

    Rejects: a size computed at run time, align_corners together with half_pixel_centers
    (TF rejects it), other dtypes.
    """

    @staticmethod
    def validate(node, ctx):
        return _validate_resize(node, ctx)

    @staticmethod
    def convert(node, ctx):
        x = ctx.input(node, 0)
        shape = list(ctx.input_shape(node, 0))
        out_hw = _resize_out_size(node, ctx)
        mode, ctm, nearest_mode = _resize_mode(node, ctx)
        if mode == "linear" and ctx.input_dtype(node, 0) != np.dtype(np.float32):
            x = ctx.emit("Cast", [x], to=onnx_type(np.float32))
        if mode == "nearest":
            y = _nearest_gathers(node, ctx, x, shape[1:3], out_hw)
            if y is not None:
                ctx.set_output(node, 0, y)
                return
        sizes = _resize_sizes(node, ctx, x, shape, out_hw)
        y = ctx.emit("Resize", [x, "", "", sizes], mode=mode,
                     coordinate_transformation_mode=ctm, nearest_mode=nearest_mode)
        ctx.set_output(node, 0, y)


@converter("ResizeBicubic", "ResizeArea", dtypes=FLOATS, inputs=(TENSOR, ANY))
class ResizeUnsupported:
    """ResizeBicubic and ResizeArea are recognized so that the reason they stay native is
    precise; no attribute combination converts.

    Rejects always: ResizeBicubic weighs its taps from a table quantized to 1/1024 pixel, which
    ONNX cubic (exact weights) misses by up to ~1e-3 of the pixel range; ResizeArea averages
    fractional pixel footprints, which ONNX Resize has no mode for.
    """

    @staticmethod
    def validate(node, ctx):
        if node.op == "ResizeBicubic":
            return ("ResizeBicubic is not supported: TF weighs the taps from a table quantized "
                    "to 1/1024 pixel that ONNX Resize cubic does not reproduce (differences "
                    "up to ~1e-3); use bilinear or keep it native")
        return ("ResizeArea is not supported: its fractional-footprint averaging has no ONNX "
                "Resize mode; use bilinear (or an average pool for integer factors)")

    @staticmethod
    def convert(node, ctx):
        raise NotImplementedError(ResizeUnsupported.validate(node, ctx))


@converter("CombinedNonMaxSuppression", dtype_attr=None,
           inputs=(TENSOR, TENSOR, WEIGHT, WEIGHT, WEIGHT, WEIGHT))
class CombinedNonMaxSuppression:
    """Batched per-class NMS as tf.image.combined_non_max_suppression: ONNX NonMaxSuppression
    per class, then the survivors of all classes ranked by score (TopK) and cut to
    max_total_size (or max_output_size_per_class * classes with pad_per_class), padded with
    zeros; clip_boxes clips the output boxes to [0, 1]. Boxes shared by all classes
    ([batch, boxes, 1, 4]); static box and class counts; the batch may be dynamic.

    Rejects: per-class boxes (q > 1: ONNX NMS shares boxes among classes), non-float32 inputs,
    non-constant sizes or thresholds, unknown box or class counts, sizes below 1 and IoU
    thresholds outside [0, 1] (TF raises for them).
    """

    @staticmethod
    def validate(node, ctx):
        boxes, scores = ctx.input_shape(node, 0), ctx.input_shape(node, 1)
        for i in range(2):
            if ctx.input_dtype(node, i) != np.dtype(np.float32):
                return f"input {i} must be float32, got {ctx.input_dtype(node, i)}"
        if len(boxes) != 4 or len(scores) != 3:
            return f"boxes must be [batch, boxes, q, 4] and scores [batch, boxes, classes], " \
                   f"got {boxes} and {scores}"
        if boxes[2] != 1:
            return f"per-class boxes (q={boxes[2]}) are not supported; only q=1"
        if scores[1] is None or scores[2] is None:
            return f"box and class counts must be static, got scores of shape {scores}"
        # values TF's kernel refuses at every call: the engine answered them (0 per class:
        # zeros; an IoU threshold of 1.5: 4 boxes) where TF raises (detection hunt, 2026-12-04)
        per_class = np.asarray(ctx.const_value(node, 2)).reshape(-1)
        total = np.asarray(ctx.const_value(node, 3)).reshape(-1)
        iou = np.asarray(ctx.const_value(node, 4), np.float64).reshape(-1)
        if per_class.size != 1 or per_class[0] <= 0:
            return (f"max_output_size_per_class {per_class.tolist()} is not positive: TF raises "
                    f"(left to TensorFlow)")
        if total.size != 1 or total[0] <= 0:
            return (f"max_total_size {total.tolist()} is not positive: TF raises (left to "
                    f"TensorFlow)")
        if iou.size != 1 or not 0.0 <= iou[0] <= 1.0:
            return (f"iou_threshold {iou.tolist()} is not in [0, 1]: TF raises (left to "
                    f"TensorFlow)")
        return None

    @staticmethod
    def convert(node, ctx):
        n_boxes, n_classes = (int(d) for d in ctx.input_shape(node, 1)[1:])
        per_class = int(np.asarray(ctx.const_value(node, 2)).reshape(-1)[0])
        total = int(np.asarray(ctx.const_value(node, 3)).reshape(-1)[0])
        if ctx.attr(node, "pad_per_class", False):
            total = min(total, per_class * n_classes)
        c = lambda v, n: ctx.const(v, f"{node.name}/{n}")  # noqa: E731
        i64 = lambda v: np.array(v, np.int64)  # noqa: E731

        boxes = ctx.emit("Squeeze", [ctx.input(node, 0), c(i64([2]), "q_axis")])  # [B, N, 4]
        scores = ctx.emit("Transpose", [ctx.input(node, 1)], perm=[0, 2, 1])      # [B, C, N]
        selected = ctx.emit("NonMaxSuppression", [
            boxes, scores, c(i64([per_class]), "per_class"),
            c(np.asarray(ctx.const_value(node, 4), np.float32).reshape(1), "iou"),
            c(np.asarray(ctx.const_value(node, 5), np.float32).reshape(1), "score_thr")],
            center_point_box=0)                                                    # [K, 3]
        # Scores of the survivors, -inf elsewhere; then rank all classes together.
        neg_inf = numpy_helper.from_array(np.array([-np.inf], np.float32), "neg_inf")
        masked = ctx.emit("ScatterND", [
            ctx.emit("ConstantOfShape", [ctx.emit("Shape", [scores])], value=neg_inf),
            selected, ctx.emit("GatherND", [scores, selected])])
        flat = ctx.emit("Reshape", [masked, c(i64([0, -1]), "flat")])             # [B, C*N]
        if total > n_boxes * n_classes:  # fewer candidates than outputs: pad with -inf
            flat = ctx.emit("Pad", [flat, c(i64([0, 0, 0, total - n_boxes * n_classes]),
                                            "pads"), c(np.float32(-np.inf), "pad_value")])
        values, index = ctx.emit("TopK", [flat, c(i64([total]), "total")], outputs=2, axis=-1,
                                 largest=1, sorted=1)
        valid = ctx.emit("Greater", [values, c(np.float32(-np.inf), "neg_inf_scalar")])
        zero = c(np.float32(0), "zero")
        out_scores = ctx.emit("Where", [valid, values, zero])
        classes = ctx.emit("Cast", [ctx.emit("Div", [index, c(i64(n_boxes), "n_boxes")])],
                           to=onnx_type(np.float32))
        out_classes = ctx.emit("Where", [valid, classes, zero])
        box_index = ctx.emit("Unsqueeze", [ctx.emit("Mod", [index, c(i64(n_boxes), "n")]),
                                           c(i64([-1]), "last")])
        out_boxes = ctx.emit("GatherND", [boxes, box_index], batch_dims=1)        # [B, T, 4]
        if ctx.attr(node, "clip_boxes", True):
            out_boxes = ctx.emit("Clip", [out_boxes, zero, c(np.float32(1), "one")])
        out_boxes = ctx.emit("Where", [ctx.emit("Unsqueeze", [valid, c(i64([-1]), "last")]),
                                       out_boxes, zero])
        count = ctx.emit("ReduceSum", [ctx.emit("Cast", [valid], to=onnx_type(np.int32)),
                                       c(i64([1]), "axis1")], keepdims=0)
        for k, v in enumerate((out_boxes, out_scores, out_classes, count)):
            ctx.set_output(node, k, v)
