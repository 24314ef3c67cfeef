"""Image ops: DepthToSpace, SpaceToDepth, CombinedNonMaxSuppression."""

from __future__ import annotations

import numpy as np
from onnx import numpy_helper

from . import layout
from .layout import onnx_type
from .registry import FLOATS, TENSOR, WEIGHT, converter


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


@converter("CombinedNonMaxSuppression", dtype_attr=None,
           inputs=(TENSOR, TENSOR, WEIGHT, WEIGHT, WEIGHT, WEIGHT))
class CombinedNonMaxSuppression:
    """Batched per-class NMS as tf.image.combined_non_max_suppression: ONNX NonMaxSuppression
    per class, then the survivors of all classes ranked by score (TopK) and cut to
    max_total_size (or max_output_size_per_class * classes with pad_per_class), padded with
    zeros; clip_boxes clips the output boxes to [0, 1]. Boxes shared by all classes
    ([batch, boxes, 1, 4]); static box and class counts; the batch may be dynamic.

    Rejects: per-class boxes (q > 1: ONNX NMS shares boxes among classes), non-float32 inputs,
    non-constant sizes or thresholds, unknown box or class counts.
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
