"""SpaceToBatchND / BatchToSpaceND: TensorFlow's block rearrangements for dilated convolutions.

tf.nn.atrous_conv2d, tf.nn.convolution with dilations, and Keras Conv2D / DepthwiseConv2D with
a dilation_rate trace to SpaceToBatchND -> Conv2D / DepthwiseConv2dNative -> BatchToSpaceND:
the input is cut into block_shape-strided sub-images stacked on the batch, convolved
undilated, and woven back. Both ops are pure data movement, lowered to what the array
converters emit (Pad, Reshape, Transpose, Slice), which the engine runs on every backend.

Input x has shape [N] + spatial (M dims, one per block_shape entry) + remaining. TF's order
of the new batch is block-major: output batch index (i_0 * b_1 + i_1) * N + n holds the
sub-image at offset (i_0, i_1) of image n (checked against TF with numbers, not only docs):

    SpaceToBatchND   Pad -> Reshape [N, s_0/b_0, b_0, ..., s_M-1/b_M-1, b_M-1, rest]
                     -> Transpose (blocks, N, s/b..., rest) -> Reshape [N * prod(b), s/b..., rest]
    BatchToSpaceND   Reshape [b_0, ..., b_M-1, N / prod(b), s..., rest]
                     -> Transpose (N', s_0, b_0, ..., s_M-1, b_M-1, rest)
                     -> Reshape [N', s_0 * b_0, ..., rest] -> Slice (crops)

Unknown dims are never replaced by a concrete size: the one unknown dim the reshapes allow
(a dynamic batch, typically) becomes ONNX Reshape's -1, and crops become Slice ends counted
from the end.
"""

from __future__ import annotations

from typing import List, Optional, Tuple, Union

import numpy as np

from tftrt.lowering import ConversionError

from .axes import INT64_MAX, const_ints, int64s
from .broadcast import scalar_like
from .registry import TENSOR, WEIGHT, converter

# TensorFlow has no bool kernel for these ops (CPU or GPU), so there is nothing to match
DTYPES = ("float32", "float16", "int32", "int64")

# block_shape, paddings or crops as [M, 2], and the input's static shape
Plan = Tuple[List[int], np.ndarray, Tuple[Optional[int], ...]]


def _block_plan(node, ctx, what: str) -> Union[Plan, str]:
    """block_shape, paddings / crops ([M, 2] int64) and the input shape, or a reason string.

    Checks what every lowering step needs: constant block_shape >= 1 and paddings / crops >= 0
    of matching lengths (the registry's WEIGHT role already refused run-time values), enough
    dims for the blocks, and at most one unknown dim (the reshapes infer it as -1).
    """
    block = const_ints(ctx, node, 1)
    edges = np.asarray(ctx.const_value(node, 2)).astype(np.int64)
    shape = tuple(ctx.input_shape(node, 0))
    m = len(block)
    if m < 1 or np.ndim(ctx.const_value(node, 1)) != 1:
        return f"block_shape {block} must be a vector of at least one entry"
    if any(b < 1 for b in block):
        return f"block_shape {block} must be >= 1 in every entry"
    if edges.shape != (m, 2):
        return f"{what} of shape {list(edges.shape)} for block_shape {block} (expected [{m}, 2])"
    if (edges < 0).any():
        return f"negative {what} {edges.tolist()}"
    if len(shape) < m + 1:
        return f"input of rank {len(shape)} has too few dims for {m} block dims (needs {m + 1})"
    if 0 in shape:
        return (f"input shape {list(shape)} has a zero-sized dimension (ONNX Reshape reads 0 "
                f"as 'copy the input dim')")
    if sum(d is None for d in shape) > 1:
        return (f"input shape {list(shape)} has more than one unknown dim; the reshapes can "
                f"infer only one (give the spatial dims a static size)")
    return block, edges, shape


def _unknown_or(d: Optional[int], value: int) -> int:
    """``value`` for a known dim, ONNX Reshape's -1 (infer) for the one unknown dim."""
    return -1 if d is None else int(value)


@converter("SpaceToBatchND", dtypes=DTYPES, inputs=(TENSOR, WEIGHT, WEIGHT))
class SpaceToBatchND:
    """Zero-pads the M block dims after the batch and moves block_shape-strided sub-images
    into the batch, block-major (TF's order), for any M (atrous convolutions: NHWC, M = 2);
    a dynamic batch (or one other unknown dim) is inferred at run time. Lowered to Pad,
    Reshape, Transpose, Reshape.

    Rejects: block_shape or paddings computed at run time; block_shape entries < 1; negative
    paddings or paddings not of shape [M, 2]; padded sizes not divisible by block_shape;
    inputs with more than one unknown dim or a zero-sized dim.
    """

    @staticmethod
    def validate(node, ctx):
        plan = _block_plan(node, ctx, "paddings")
        if isinstance(plan, str):
            return plan
        block, pads, shape = plan
        for k, b in enumerate(block):
            d = shape[1 + k]
            if d is not None and (d + pads[k].sum()) % b:
                return (f"padded size {d} + {pads[k].tolist()} of dim {1 + k} is not divisible "
                        f"by block size {b}")
        return None

    @staticmethod
    def convert(node, ctx):
        plan = _block_plan(node, ctx, "paddings")
        if isinstance(plan, str):
            raise ConversionError(plan)
        block, pads, shape = plan
        m, rank = len(block), len(shape)
        x = ctx.input(node, 0)
        if pads.any():
            full = np.zeros((rank, 2), np.int64)
            full[1:1 + m] = pads
            zero = scalar_like(ctx, 0, ctx.attr_dtype(node, "T"), "pad_value")
            x = ctx.emit("Pad", [x, int64s(ctx, list(full[:, 0]) + list(full[:, 1]), "pads"),
                                 zero], mode="constant")
        n, rest = shape[0], shape[1 + m:]
        padded = [None if d is None else d + int(p.sum()) for d, p in zip(shape[1:], pads)]
        split = [_unknown_or(n, n)]
        for d, b in zip(padded, block):
            split += [_unknown_or(d, (d or 0) // b), b]
        split += [_unknown_or(d, d) for d in rest]
        x = ctx.emit("Reshape", [x, int64s(ctx, split, "shape")])
        # [N, s0/b0, b0, s1/b1, b1, rest] -> [b0, b1, N, s0/b0, s1/b1, rest]
        perm = ([2 + 2 * i for i in range(m)] + [0] + [1 + 2 * i for i in range(m)]
                + list(range(1 + 2 * m, 1 + 2 * m + len(rest))))
        x = ctx.emit("Transpose", [x], perm=perm)
        merged = [_unknown_or(n, (n or 0) * int(np.prod(block)))] + split[1:2 * m:2] \
            + split[1 + 2 * m:]
        ctx.set_output(node, 0, ctx.emit("Reshape", [x, int64s(ctx, merged, "shape")]))


@converter("BatchToSpaceND", dtypes=DTYPES, inputs=(TENSOR, WEIGHT, WEIGHT))
class BatchToSpaceND:
    """The inverse of SpaceToBatchND: weaves the block-major batch back into the M block dims
    and crops them, for any M (atrous convolutions: NHWC, M = 2); a dynamic batch (or one other
    unknown dim) is inferred at run time. Lowered to Reshape, Transpose, Reshape, Slice.

    Rejects: block_shape or crops computed at run time; block_shape entries < 1; negative crops
    or crops not of shape [M, 2]; a batch not divisible by prod(block_shape); crops larger than
    a known block dim; inputs with more than one unknown dim or a zero-sized dim.
    """

    @staticmethod
    def validate(node, ctx):
        plan = _block_plan(node, ctx, "crops")
        if isinstance(plan, str):
            return plan
        block, crops, shape = plan
        n, total = shape[0], int(np.prod(block))
        if n is not None and n % total:
            return f"batch {n} is not divisible by prod(block_shape {block}) = {total}"
        for k, b in enumerate(block):
            d = shape[1 + k]
            if d is not None and crops[k].sum() > d * b:
                return f"crops {crops[k].tolist()} exceed dim {1 + k} of size {d} * block {b}"
            # an unknown dim d >= 1 gives d * b >= b: crops up to b always fit, larger ones
            # only for some sizes, where TF raises and a Slice would clamp to an empty tensor
            if d is None and crops[k].sum() > b:
                return (f"crops {crops[k].tolist()} exceed block {b} on dim {1 + k}, whose size "
                        "is unknown: TF's error for too small a size cannot be kept")
        return None

    @staticmethod
    def convert(node, ctx):
        plan = _block_plan(node, ctx, "crops")
        if isinstance(plan, str):
            raise ConversionError(plan)
        block, crops, shape = plan
        m = len(block)
        n, spatial, rest = shape[0], shape[1:1 + m], shape[1 + m:]
        split = (list(block) + [_unknown_or(n, (n or 0) // int(np.prod(block)))]
                 + [_unknown_or(d, d) for d in spatial + rest])
        x = ctx.emit("Reshape", [ctx.input(node, 0), int64s(ctx, split, "shape")])
        # [b0, b1, N', s0, s1, rest] -> [N', s0, b0, s1, b1, rest]
        perm = [m] + [a for i in range(m) for a in (m + 1 + i, i)] \
            + list(range(2 * m + 1, 2 * m + 1 + len(rest)))
        x = ctx.emit("Transpose", [x], perm=perm)
        merged = ([split[m]] + [_unknown_or(d, (d or 0) * b) for d, b in zip(spatial, block)]
                  + split[2 * m + 1:])
        x = ctx.emit("Reshape", [x, int64s(ctx, merged, "shape")])
        axes = [k for k in range(m) if crops[k].any()]
        if axes:
            # ends counted from the end: right for an unknown dim as for a known one
            starts = [int(crops[k, 0]) for k in axes]
            ends = [-int(crops[k, 1]) if crops[k, 1] else INT64_MAX for k in axes]
            x = ctx.emit("Slice", [x, int64s(ctx, starts, "starts"), int64s(ctx, ends, "ends"),
                                   int64s(ctx, [1 + k for k in axes], "axes")])
        ctx.set_output(node, 0, x)
