"""Neural-network ops: convolutions, bias, batch norm, pooling, activations, matmul, softmax.

Layout: TF convolutions and pools are channels-last by default; ONNX's are channels-first, so a
channels-last node lowers to Transpose -> op -> Transpose (see layout.py; the engine folds the
transposes). Filters are turned from TF's [spatial..., in, out] into ONNX's [out, in, spatial...]
at conversion time when they are constants, else by a Transpose in the network.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from . import layout
from .layout import onnx_type
from .registry import ANY, FLOATS, TENSOR, WEIGHT, converter
from .shape_values import resolve

# TF's SELU constants (tensorflow/core/kernels/relu_op_functor.h), written out in full so the
# float32 rounding matches TF's.
_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946


def _dtype(node, ctx, attr="T"):
    return ctx.attr_dtype(node, attr) or np.dtype(np.float32)


def _check_window(node, ctx, name: str, rank: int, fmt: str) -> Optional[str]:
    """Checks a per-dimension attr (strides, ksize, dilations): length and batch/channel = 1."""
    vals = ctx.attr(node, name)
    if vals is None:
        return None
    if len(vals) != rank:
        return f"{name}={vals} has {len(vals)} entries, expected {rank}"
    if any(v != 1 for v in layout.non_spatial_of(vals, fmt)):
        return f"{name}={vals} on the batch or channel dimension is not supported"
    if any(v < 1 for v in vals):
        return f"{name}={vals} must be positive"
    return None


def _spatial_attr(node, ctx, name: str, fmt: str, nd: int):
    vals = ctx.attr(node, name)
    return [1] * nd if not vals else [int(v) for v in layout.spatial_of(vals, fmt)]


# --- convolution ------------------------------------------------------------------------------

def _validate_conv(node, ctx, nd: int, depthwise: bool, x_index: int = 0, w_index: int = 1,
                   paddings=("SAME", "VALID", "EXPLICIT")) -> Optional[str]:
    rank = nd + 2
    fmt = layout.data_format(node, ctx)
    xs = ctx.input_shape(node, x_index)
    if xs is None or len(xs) != rank:
        return f"{node.op} needs a rank-{rank} input, got shape {xs}"
    reason = layout.check_data_format(fmt, rank)
    if reason:
        return reason
    ws = ctx.input_shape(node, w_index)
    if ws is None or len(ws) != rank or any(d is None for d in ws):
        return f"the filter of {node.op} needs a static rank-{rank} shape, got {ws}"
    for name in ("strides", "dilations"):
        reason = _check_window(node, ctx, name, rank, fmt)
        if reason:
            return reason
    padding = ctx.attr(node, "padding", "VALID")
    reason = layout.check_padding(padding, paddings)
    if reason:
        return reason
    if padding == "EXPLICIT":
        reason = layout.check_explicit_paddings(ctx.attr(node, "explicit_paddings", []), fmt,
                                                rank)
        if reason:
            return reason
    if x_index == 0:  # forward convolution: input channels decide the group count
        cin = xs[layout.channel_axis(fmt)]
        if cin is None:
            return f"{node.op} needs a static channel dimension, got shape {xs}"
        if depthwise and ws[-2] != cin:
            return f"depthwise filter has {ws[-2]} input channels, input has {cin}"
        if not depthwise and (cin % ws[-2] or ws[-1] % (cin // ws[-2])):
            return (f"input channels {cin} are not a multiple of the filter's {ws[-2]} "
                    f"(grouped convolution needs both channel counts divisible by the groups)")
    return None


def _filter_oihw(node, ctx, w_index: int, depthwise: bool, dtype) -> str:
    """The ONNX weight [out, in/group, spatial...] of a TF filter input."""
    ws = ctx.input_shape(node, w_index)
    rank = len(ws)
    if depthwise:  # [H, W, C, M] -> [C*M, 1, H, W]; output channel c*M+m as in TF
        perm = [rank - 2, rank - 1] + list(range(rank - 2))
        shape = [ws[-2] * ws[-1], 1] + list(ws[:-2])
    else:
        perm = layout.kernel_perm_to_oihw(rank)
        shape = None
    if ctx.is_const(node, w_index):
        w = np.transpose(ctx.const_value(node, w_index), perm).astype(dtype)
        if shape is not None:
            w = w.reshape(shape)
        return ctx.const(np.ascontiguousarray(w), node.name + "/filter_oihw")
    w = ctx.emit("Transpose", [ctx.input(node, w_index)], perm=perm)
    if shape is not None:
        w = ctx.emit("Reshape", [w, ctx.const(np.array(shape, np.int64), "shape")])
    return w


def _convert_conv(node, ctx, nd: int, depthwise: bool):
    rank = nd + 2
    fmt = layout.data_format(node, ctx)
    xs = ctx.input_shape(node, 0)
    ws = ctx.input_shape(node, 1)
    strides = _spatial_attr(node, ctx, "strides", fmt, nd)
    dilations = _spatial_attr(node, ctx, "dilations", fmt, nd)
    kernel = [int(k) for k in ws[:nd]]
    cin = xs[layout.channel_axis(fmt)]
    group = cin if depthwise else cin // ws[-2]
    pads = layout.pad_attrs(ctx.attr(node, "padding"), layout.spatial_of(xs, fmt), kernel,
                            strides, dilations, ctx.attr(node, "explicit_paddings"), fmt)
    w = _filter_oihw(node, ctx, 1, depthwise, _dtype(node, ctx))
    x = ctx.input(node, 0)
    if layout.is_channels_last(fmt):
        x = layout.to_channels_first(ctx, x, rank)
    y = ctx.emit("Conv", [x, w], kernel_shape=kernel, strides=strides, dilations=dilations,
                 group=group, **pads)
    if layout.is_channels_last(fmt):
        y = layout.to_channels_last(ctx, y, rank)
    ctx.set_output(node, 0, y)


@converter("Conv2D", "Conv3D", dtypes=FLOATS, inputs=(TENSOR, ANY))
class Conv:
    """Conv2D / Conv3D in NHWC, NCHW, NDHWC or NCDHW; strides, dilations, padding SAME, VALID
    or EXPLICIT (Conv2D), grouped convolution (input channels a multiple of the filter's).
    The filter may be a constant or a tensor of static shape.

    Rejects: inputs of another rank (Conv2D batch_dims), strides/dilations on the batch or
    channel dimension, explicit paddings on batch/channel, unknown channel count, filters
    of unknown shape, channel counts that don't divide into groups.
    """

    @staticmethod
    def validate(node, ctx):
        return _validate_conv(node, ctx, 3 if node.op == "Conv3D" else 2, depthwise=False)

    @staticmethod
    def convert(node, ctx):
        _convert_conv(node, ctx, 3 if node.op == "Conv3D" else 2, depthwise=False)


@converter("DepthwiseConv2dNative", dtypes=FLOATS, inputs=(TENSOR, ANY))
class DepthwiseConv2dNative:
    """Depthwise 2-D convolution (channel multiplier M: output channel c*M+m), NHWC or NCHW,
    strides, dilations, padding SAME, VALID or EXPLICIT; lowered to a grouped ONNX Conv with
    group = input channels.

    Rejects: non-4-D inputs, strides/dilations on batch or channel, unknown channel count,
    a filter whose input channels differ from the input's, filters of unknown shape.
    """

    @staticmethod
    def validate(node, ctx):
        return _validate_conv(node, ctx, 2, depthwise=True)

    @staticmethod
    def convert(node, ctx):
        _convert_conv(node, ctx, 2, depthwise=True)


def _backprop_input_sizes(node, ctx, nd: int):
    """The output spatial sizes of a transposed convolution (ints), or a reason string.

    ``input_sizes`` is a constant, or (Keras Conv2DTranspose on a dynamic batch) built at run
    time as ``stack([shape(x)[0], H, W, C])``: the batch entry may be anything (ConvTranspose
    keeps out_backprop's batch, and TF checks the two agree), the spatial entries must resolve
    to static ints, the channel entry to the filter's or to a run-time value TF checks.
    """
    elems = resolve(ctx.info, ctx.input_tensor(node, 0))
    if not isinstance(elems, list):
        return ("input_sizes must be a constant or built from constants and tensor shapes "
                "(Const, Shape, StridedSlice, Pack, ConcatV2)")
    if len(elems) not in (nd, nd + 2):
        return f"input_sizes={elems} must have {nd + 2} (or {nd}) entries"
    fmt = layout.data_format(node, ctx)
    spatial = elems if len(elems) == nd else layout.spatial_of(elems, fmt)
    if not all(isinstance(e, int) for e in spatial):
        return (f"the spatial entries of input_sizes={elems} must be known at conversion time "
                f"(the engine needs static output sizes); only the batch may be dynamic")
    if len(elems) == nd + 2:
        c = elems[layout.channel_axis(fmt)]
        cin = ctx.input_shape(node, 1)[-2]
        if isinstance(c, int) and c != cin:
            return f"input_sizes channels {c} differ from the filter's input channels {cin}"
    return [int(e) for e in spatial]


@converter("Conv2DBackpropInput", "Conv3DBackpropInputV2", dtypes=FLOATS,
           inputs=(ANY, ANY, TENSOR))
class ConvBackpropInput:
    """Transposed convolution (tf.nn.conv2d_transpose / conv3d_transpose, Keras
    Conv2DTranspose): the gradient of a convolution with respect to its input, lowered to ONNX
    ConvTranspose with explicit pads and output_padding so the output has exactly the spatial
    size of ``input_sizes``. NHWC/NCHW (NDHWC/NCDHW), strides, dilations, padding SAME, VALID
    or EXPLICIT (2-D); ``input_sizes`` constant or built from the dynamic batch.

    Rejects: ``input_sizes`` whose spatial entries are not known at conversion time, grouped
    filters, strides/dilations on batch or channel, filters of unknown shape.
    """

    @staticmethod
    def validate(node, ctx):
        nd = 3 if node.op == "Conv3DBackpropInputV2" else 2
        reason = _validate_conv(node, ctx, nd, depthwise=False, x_index=2,
                                paddings=("SAME", "VALID", "EXPLICIT") if nd == 2
                                else ("SAME", "VALID"))
        if reason:
            return reason
        sizes = _backprop_input_sizes(node, ctx, nd)
        if isinstance(sizes, str):
            return sizes
        fmt = layout.data_format(node, ctx)
        cout = ctx.input_shape(node, 2)[layout.channel_axis(fmt)]
        ws = ctx.input_shape(node, 1)
        if cout is not None and cout != ws[-1]:
            return (f"out_backprop has {cout} channels but the filter {ws[-1]} "
                    f"(grouped transposed convolution is not supported)")
        # TF checks that the forward convolution of input_sizes gives out_backprop's size and
        # raises otherwise; ConvTranspose would answer at a size of its own (helper hunt,
        # 2026-12-02: 16 rows where the signature said 13)
        dy = ctx.input_shape(node, 2)
        spatial = dy[1:1 + nd] if layout.is_channels_last(fmt) else dy[2:2 + nd]
        want = ConvBackpropInput._geometry(node, ctx, nd, fmt, sizes)["forward"]
        if any(d is None for d in spatial):
            return (f"out_backprop's spatial size {list(spatial)} is not known at conversion "
                    f"time (input_sizes is constant: it must be {want})")
        if list(spatial) != want:
            return (f"out_backprop's spatial size {list(spatial)} is not what a convolution of "
                    f"input_sizes {sizes} gives ({want}): TensorFlow raises for this")
        return None

    @staticmethod
    def _geometry(node, ctx, nd, fmt, out_spatial) -> dict:
        """kernel, strides, dilations, pads (begins, ends), the forward convolution's output
        size ("forward") and the ConvTranspose output_padding ("out_pad") per spatial
        dimension of ``input_sizes``' spatial entries ``out_spatial``. The forward conv maps
        N -> M = (N + pads - eff_k) // s + 1; ConvTranspose gives back s*(M-1) + eff_k - pads,
        short of N by the remainder, which output_padding restores."""
        ws = ctx.input_shape(node, 1)
        kernel = [int(k) for k in ws[:nd]]
        strides = _spatial_attr(node, ctx, "strides", fmt, nd)
        dilations = _spatial_attr(node, ctx, "dilations", fmt, nd)
        padding = ctx.attr(node, "padding")
        if padding == "SAME":
            begins, ends = layout.same_pads(out_spatial, kernel, strides, dilations)
        elif padding == "EXPLICIT":
            begins, ends = layout.explicit_pads(ctx.attr(node, "explicit_paddings"), fmt)
        else:
            begins, ends = [0] * nd, [0] * nd
        span = [n + b + e - ((k - 1) * d + 1) for n, b, e, k, d in
                zip(out_spatial, begins, ends, kernel, dilations)]
        return {"kernel": kernel, "strides": strides, "dilations": dilations,
                "begins": begins, "ends": ends,
                "forward": [v // s + 1 for v, s in zip(span, strides)],
                "out_pad": [v % s for v, s in zip(span, strides)]}

    @staticmethod
    def convert(node, ctx):
        nd = 3 if node.op == "Conv3DBackpropInputV2" else 2
        rank = nd + 2
        fmt = layout.data_format(node, ctx)
        g = ConvBackpropInput._geometry(node, ctx, nd, fmt,
                                        _backprop_input_sizes(node, ctx, nd))
        kernel, strides, dilations = g["kernel"], g["strides"], g["dilations"]
        begins, ends, out_pad = g["begins"], g["ends"], g["out_pad"]
        # ConvTranspose weight is [C_in(=TF out), C_out(=TF in), spatial...]: same permutation.
        w = _filter_oihw(node, ctx, 1, False, _dtype(node, ctx))
        x = ctx.input(node, 2)
        if layout.is_channels_last(fmt):
            x = layout.to_channels_first(ctx, x, rank)
        y = ctx.emit("ConvTranspose", [x, w], kernel_shape=kernel, strides=strides,
                     dilations=dilations, pads=begins + ends, output_padding=out_pad)
        if layout.is_channels_last(fmt):
            y = layout.to_channels_last(ctx, y, rank)
        ctx.set_output(node, 0, y)


@converter("FusedConv2DBiasActivation", dtypes=FLOATS, inputs=(TENSOR, ANY, ANY, ANY, WEIGHT))
class FusedConv2DBiasActivation:
    """The fused conv + bias + activation of tf.contrib.fused_conv (TF 1.x graphs):
    activation(conv_input_scale * conv(x, filter) + side_input_scale * side_input + bias).
    Supports float32/float16, data_format NHWC or NCHW, filter_format HWIO or OIHW, padding
    SAME or VALID, activation_mode Relu or None, constant scales.

    Rejects: quantized types (qint8) and NCHW_VECT_C / OIHW_VECT_I layouts, other activation
    modes, non-constant scales, a non-zero side_input_scale without a rank-4 side_input,
    grouped filters, filters of unknown shape.
    """

    @staticmethod
    def validate(node, ctx):
        fmt = layout.data_format(node, ctx)
        if fmt not in ("NHWC", "NCHW"):
            return f"data_format={fmt} is not supported (supported: NHWC, NCHW)"
        ffmt = ctx.attr(node, "filter_format", "HWIO")
        if ffmt not in ("HWIO", "OIHW"):
            return f"filter_format={ffmt} is not supported (supported: HWIO, OIHW)"
        act = ctx.attr(node, "activation_mode", "Relu")
        if act not in ("Relu", "None"):
            return f"activation_mode={act} is not supported (supported: Relu, None)"
        if ctx.num_inputs(node) > 5:
            if not ctx.is_const(node, 5):
                return "side_input_scale must be a constant"
            side = ctx.input_shape(node, 3)
            if np.any(ctx.const_value(node, 5) != 0) and (side is None or len(side) != 4):
                return f"a non-zero side_input_scale needs a rank-4 side_input, got {side}"
        for i in range(2):
            reason = _check_window(node, ctx, ("strides", "dilations")[i], 4, fmt)
            if reason:
                return reason
        reason = layout.check_padding(ctx.attr(node, "padding", "VALID"), ("SAME", "VALID"))
        if reason:
            return reason
        ws = ctx.input_shape(node, 1)
        xs = ctx.input_shape(node, 0)
        if ws is None or len(ws) != 4 or None in ws or len(xs) != 4:
            return f"needs a rank-4 input and a filter of static rank-4 shape, got {ws}"
        cin = xs[layout.channel_axis(fmt)]
        fin = ws[2] if ffmt == "HWIO" else ws[1]
        if cin is None or cin != fin:
            return f"input channels {cin} differ from the filter's {fin} (groups unsupported)"
        return None

    @staticmethod
    def convert(node, ctx):
        fmt = layout.data_format(node, ctx)
        dtype = _dtype(node, ctx)
        xs = ctx.input_shape(node, 0)
        ws = ctx.input_shape(node, 1)
        if ctx.attr(node, "filter_format", "HWIO") == "OIHW":
            kernel = [int(k) for k in ws[2:]]
            w = ctx.input(node, 1)
        else:
            kernel = [int(k) for k in ws[:2]]
            w = _filter_oihw(node, ctx, 1, False, dtype)
        strides = _spatial_attr(node, ctx, "strides", fmt, 2)
        dilations = _spatial_attr(node, ctx, "dilations", fmt, 2)
        pads = layout.pad_attrs(ctx.attr(node, "padding"), layout.spatial_of(xs, fmt), kernel,
                                strides, dilations)
        x = ctx.input(node, 0)
        if fmt == "NHWC":
            x = layout.to_channels_first(ctx, x, 4)
        y = ctx.emit("Conv", [x, w], kernel_shape=kernel, strides=strides, dilations=dilations,
                     **pads)
        if fmt == "NHWC":
            y = layout.to_channels_last(ctx, y, 4)
        scale = np.asarray(ctx.const_value(node, 4)).astype(np.float32)
        if not np.all(scale == 1):
            y = ctx.emit("Mul", [y, ctx.const(scale.astype(dtype), "conv_input_scale")])
        if ctx.num_inputs(node) > 5:
            side_scale = np.asarray(ctx.const_value(node, 5)).astype(np.float32)
            if np.any(side_scale != 0):
                side = ctx.emit("Mul", [_cast_to(ctx, node, 3, dtype),
                                        ctx.const(side_scale.astype(dtype), "side_scale")])
                y = ctx.emit("Add", [y, side])
        y = ctx.emit("Add", [y, _bias_for(ctx, _cast_to(ctx, node, 2, dtype), fmt, 4)])
        if ctx.attr(node, "activation_mode", "Relu") == "Relu":
            y = ctx.emit("Relu", [y])
        ctx.set_output(node, 0, y)


def _bias_for(ctx, bias: str, fmt: str, rank: int) -> str:
    """A per-channel vector made broadcastable against a rank-``rank`` tensor in ``fmt``."""
    if layout.is_channels_last(fmt) or rank <= 2:
        return bias
    axes = ctx.const(np.arange(1, rank - 1, dtype=np.int64), "bias_axes")
    return ctx.emit("Unsqueeze", [bias, axes])


def _cast_to(ctx, node, i: int, dtype) -> str:
    """Input i of ``node`` cast to ``dtype`` when it has another type."""
    v = ctx.input(node, i)
    if ctx.input_dtype(node, i) != np.dtype(dtype):
        v = ctx.emit("Cast", [v], to=onnx_type(dtype))
    return v


# --- bias and batch norm ----------------------------------------------------------------------

@converter("BiasAdd", "BiasAddV1", dtypes=FLOATS, inputs=(TENSOR, ANY))
class BiasAdd:
    """Adds a 1-D bias along the channel axis: the last one for NHWC (and BiasAddV1), axis 1
    for NCHW / NCDHW. The bias may be a constant or a tensor.

    Rejects: inputs of rank < 2, unknown data formats (NCHW_VECT_C).
    """

    @staticmethod
    def validate(node, ctx):
        rank = ctx.input_rank(node, 0)
        if rank < 2:
            return f"BiasAdd needs an input of rank >= 2, got rank {rank}"
        fmt = layout.data_format(node, ctx)
        if fmt not in ("NHWC", "NCHW"):
            return f"data_format={fmt} is not supported (supported: NHWC, NCHW)"
        return None

    @staticmethod
    def convert(node, ctx):
        rank = ctx.input_rank(node, 0)
        fmt = layout.data_format(node, ctx)
        bias = ctx.input(node, 1)
        if fmt == "NCHW" and rank > 2:
            if ctx.is_const(node, 1):
                b = np.asarray(ctx.const_value(node, 1))
                bias = ctx.const(b.reshape([-1] + [1] * (rank - 2)), node.name + "/bias")
            else:
                bias = _bias_for(ctx, bias, "NCHW", rank)
        ctx.set_output(node, 0, ctx.emit("Add", [ctx.input(node, 0), bias]))


@converter("FusedBatchNorm", "FusedBatchNormV2", "FusedBatchNormV3", dtypes=FLOATS,
           inputs=(TENSOR, ANY))
class FusedBatchNorm:
    """Inference batch norm, y = (x - mean) * scale / sqrt(variance + epsilon) + offset, along
    the channel axis (NHWC, NCHW, NDHWC, NCDHW). With constant parameters it folds to one Mul
    and one Add per element; otherwise the same formula is emitted. Either way in float32, as
    TF's kernel computes it: a float16 / bfloat16 x (T=half, U=float: tf.compat.v1 and Keras 2
    mixed-precision models) is cast to float32 first and the result rounded once (in x's
    dtype, a folded scale of 1e6 was inf and a channel mean of 2000 lost 5% of the output:
    hunt, 2026-12-07). Outputs 1-4 (batch mean/variance, reserve spaces) pass the running
    mean/variance through as TF does in inference.

    With is_training=True the statistics are the batch's own (mean, and variance divided by
    the count, over every axis but the channel's, in float32), as TF computes y: Keras 2's
    LayerNormalization is such a batch norm over a [1, rows, C, 1] NCHW reshape, in
    inference graphs too (left native, every Keras 2 transformer split into engines around
    each LayerNorm: Keras 2 hunt, 2026-12-07). Only y: the batch mean / variance outputs
    (moving averages in training) must have no reader.

    Rejects: is_training=True with the batch statistics read, empty mean/variance at
    inference, unknown data formats.
    """

    @staticmethod
    def _training(node, ctx) -> bool:
        return bool(ctx.attr(node, "is_training", True))

    @staticmethod
    def validate(node, ctx):
        rank = ctx.input_rank(node, 0)
        reason = layout.check_data_format(layout.data_format(node, ctx), rank)
        if reason:
            return reason
        if FusedBatchNorm._training(node, ctx):
            used = ctx.info.consumers()
            read = [k for k in range(1, ctx.num_outputs(node))
                    if used.get(f"{node.name}:{k}")]
            if read:
                return (f"is_training=True with its batch statistics (output(s) {read}) read: "
                        f"a training graph; convert an inference graph")
            return None
        for i, name in ((3, "mean"), (4, "variance")):
            s = ctx.input_shape(node, i)
            if s is not None and 0 in s:
                return f"{name} is empty; inference batch norm needs the running {name}"
        return None

    @staticmethod
    def convert(node, ctx):
        x = ctx.input(node, 0)
        rank = ctx.input_rank(node, 0)
        fmt = layout.data_format(node, ctx)
        dtype = _dtype(node, ctx)
        cdt = np.dtype(np.float32)  # U, TF's arithmetic (T: half, bfloat16 or float)
        eps = float(ctx.attr(node, "epsilon", 1e-4))
        training = FusedBatchNorm._training(node, ctx)

        def param(i):
            return _bias_for(ctx, _cast_to(ctx, node, i, cdt), fmt, rank)
        if dtype != cdt:
            x = ctx.emit("Cast", [x], to=onnx_type(cdt))
        if training:
            # the batch's statistics, as TF's kernel computes them (two passes): x centred
            # on the mean, scaled by rsqrt(mean of the squares + epsilon)
            from .reduce import reduce
            axes = [a for a in range(rank)
                    if a != (rank - 1 if layout.is_channels_last(fmt) else 1)]
            x = ctx.emit("Sub", [x, reduce(ctx, "ReduceMean", x, axes, True)])
            var = reduce(ctx, "ReduceMean", ctx.emit("Mul", [x, x]), axes, True)
            inv = ctx.emit("Reciprocal", [ctx.emit("Sqrt", [ctx.emit("Add", [
                var, ctx.const(np.array(eps, cdt), "epsilon")])])])
            mul_v = ctx.emit("Mul", [inv, param(1)])
            add_v = param(2)
        elif all(ctx.is_const(node, i) for i in range(1, 5)):
            bshape = [-1] if layout.is_channels_last(fmt) else [-1] + [1] * (rank - 2)
            scale, offset, mean, var = (np.asarray(ctx.const_value(node, i), np.float32)
                                        for i in range(1, 5))
            mul = scale / np.sqrt(var + np.float32(eps))
            add = offset - mean * mul
            mul_v = ctx.const(mul.astype(cdt).reshape(bshape), node.name + "/scale")
            add_v = ctx.const(add.astype(cdt).reshape(bshape), node.name + "/shift")
        else:
            std = ctx.emit("Sqrt", [ctx.emit("Add", [param(4), ctx.const(
                np.array(eps, cdt), "epsilon")])])
            mul_v = ctx.emit("Div", [param(1), std])
            add_v = ctx.emit("Sub", [param(2), ctx.emit("Mul", [param(3), mul_v])])
        y = ctx.emit("Add", [ctx.emit("Mul", [x, mul_v]), add_v])
        if dtype != cdt:
            y = ctx.emit("Cast", [y], to=onnx_type(dtype))
        ctx.set_output(node, 0, y)
        if not training:  # (in training mode nothing reads them: validate)
            for k, src in ((1, 3), (2, 4), (3, 3), (4, 4)):
                ctx.set_output(node, k, ctx.input(node, src))


# --- pooling ----------------------------------------------------------------------------------

_POOL_ND = {"MaxPool": 2, "MaxPoolV2": 2, "AvgPool": 2, "MaxPool3D": 3, "AvgPool3D": 3}


@converter("MaxPool", "MaxPoolV2", "AvgPool", "MaxPool3D", "AvgPool3D", dtypes=FLOATS,
           inputs=(TENSOR, WEIGHT))
class Pool:
    """Max and average pooling, 2-D (NHWC/NCHW) and 3-D (NDHWC/NCDHW), padding SAME or VALID
    (and EXPLICIT for MaxPool); MaxPoolV2 with constant ksize/strides. Average pooling
    excludes the padding from the mean, as TF does.

    Rejects: windows or strides on the batch or channel dimension, NCHW_VECT_C, explicit
    paddings not smaller than the window, inputs of another rank.
    """

    @staticmethod
    def _window(node, ctx, name, index):
        if node.op == "MaxPoolV2":
            return [int(v) for v in np.asarray(ctx.const_value(node, index)).reshape(-1)]
        return ctx.attr(node, name)

    @staticmethod
    def validate(node, ctx):
        nd = _POOL_ND[node.op]
        rank = nd + 2
        fmt = layout.data_format(node, ctx)
        if ctx.input_rank(node, 0) != rank:
            return f"{node.op} needs a rank-{rank} input, got {ctx.input_shape(node, 0)}"
        reason = layout.check_data_format(fmt, rank)
        if reason:
            return reason
        for name, idx in (("ksize", 1), ("strides", 2)):
            vals = Pool._window(node, ctx, name, idx)
            if vals is None or len(vals) != rank:
                return f"{name}={vals} must have {rank} entries"
            if any(v != 1 for v in layout.non_spatial_of(vals, fmt)) or min(vals) < 1:
                return f"{name}={vals} pooling over the batch or channel dimension is not " \
                       f"supported"
        padding = ctx.attr(node, "padding", "VALID")
        allowed = ("SAME", "VALID", "EXPLICIT") if node.op == "MaxPool" else ("SAME", "VALID")
        reason = layout.check_padding(padding, allowed)
        if reason:
            return reason
        if padding == "EXPLICIT":
            pads = ctx.attr(node, "explicit_paddings", [])
            reason = layout.check_explicit_paddings(pads, fmt, rank)
            if reason:
                return reason
            ks = layout.spatial_of(Pool._window(node, ctx, "ksize", 1), fmt)
            b, e = layout.explicit_pads(pads, fmt)
            if any(p >= k for p, k in zip(b + e, ks + ks)):
                return "explicit paddings must be smaller than the pooling window"
        return None

    @staticmethod
    def convert(node, ctx):
        nd = _POOL_ND[node.op]
        rank = nd + 2
        fmt = layout.data_format(node, ctx)
        ksize = [int(v) for v in layout.spatial_of(Pool._window(node, ctx, "ksize", 1), fmt)]
        strides = [int(v) for v in layout.spatial_of(Pool._window(node, ctx, "strides", 2),
                                                     fmt)]
        pads = layout.pad_attrs(ctx.attr(node, "padding"),
                                layout.spatial_of(ctx.input_shape(node, 0), fmt), ksize,
                                strides, [1] * nd, ctx.attr(node, "explicit_paddings"), fmt)
        x = ctx.input(node, 0)
        if layout.is_channels_last(fmt):
            x = layout.to_channels_first(ctx, x, rank)
        if node.op.startswith("Max"):
            y = ctx.emit("MaxPool", [x], kernel_shape=ksize, strides=strides, **pads)
        else:
            y = ctx.emit("AveragePool", [x], kernel_shape=ksize, strides=strides,
                         count_include_pad=0, **pads)
        if layout.is_channels_last(fmt):
            y = layout.to_channels_last(ctx, y, rank)
        ctx.set_output(node, 0, y)


# --- activations ------------------------------------------------------------------------------

_UNARY = {"Relu": ("Relu", {}), "Sigmoid": ("Sigmoid", {}), "Tanh": ("Tanh", {}),
          "Softplus": ("Softplus", {}), "Softsign": ("Softsign", {}),
          "Elu": ("Elu", {"alpha": 1.0}),
          "Selu": ("Selu", {"alpha": _SELU_ALPHA, "gamma": _SELU_SCALE})}


@converter(*_UNARY, dtypes=FLOATS, inputs=(TENSOR,))
class Activation:
    """Element-wise activations with a direct ONNX op: Relu, Sigmoid, Tanh, Softplus,
    Softsign, Elu (alpha 1), Selu (TF's alpha and scale). Any rank, float32/float16.

    Rejects: other dtypes (int32 Relu included).
    """

    @staticmethod
    def convert(node, ctx):
        op, attrs = _UNARY[node.op]
        ctx.set_output(node, 0, ctx.emit(op, [ctx.input(node, 0)], **attrs))


@converter("Relu6", dtypes=FLOATS, inputs=(TENSOR,))
class Relu6:
    """min(max(x, 0), 6) as ONNX Clip. Any rank, float32/float16. Rejects other dtypes."""

    @staticmethod
    def convert(node, ctx):
        dt = _dtype(node, ctx)
        y = ctx.emit("Clip", [ctx.input(node, 0), ctx.const(np.array(0, dt), "zero"),
                              ctx.const(np.array(6, dt), "six")])
        ctx.set_output(node, 0, y)


@converter("LeakyRelu", dtypes=FLOATS, inputs=(TENSOR,))
class LeakyRelu:
    """x if x >= 0 else alpha * x (ONNX LeakyRelu with the node's alpha, default 0.2).

    Rejects: other dtypes.
    """

    @staticmethod
    def convert(node, ctx):
        alpha = float(ctx.attr(node, "alpha", 0.2))
        ctx.set_output(node, 0, ctx.emit("LeakyRelu", [ctx.input(node, 0)], alpha=alpha))


@converter("LRN", dtypes=FLOATS, inputs=(TENSOR,))
class LRN:
    """tf.nn.local_response_normalization (AlexNet, GoogLeNet): x / (bias + alpha *
    sqr_sum) ** beta, sqr_sum the sum of x**2 over channels d - depth_radius .. d +
    depth_radius (NHWC, the last axis). The window sum is an average pool over the
    channels (x**2 made [-1, 1, 1, C], a 1 x (2r+1) window with r zeros of padding each side,
    padding counted) times 2r+1: a pool reads the squares, so an FP16 engine keeps them
    and the pool in float32 (precision.py's rule for squares a reduction reads; with alpha
    = 1, TF's default, a float16 sum of squares overflows once |x| > 77). Rejects: a rank
    other than 4, an unknown channel count, other dtypes."""

    @staticmethod
    def validate(node, ctx):
        shape = ctx.input_shape(node, 0)
        if shape is None or len(shape) != 4:
            return f"LRN needs a rank-4 input, not shape {shape}"
        if shape[-1] is None:
            return "LRN needs a known channel count (the last dim)"
        return None

    @staticmethod
    def convert(node, ctx):
        dt = _dtype(node, ctx)
        x = ctx.input(node, 0)
        c = ctx.input_shape(node, 0)[-1]
        r = int(ctx.attr(node, "depth_radius", 5))
        bias = float(ctx.attr(node, "bias", 1.0))
        alpha = float(ctx.attr(node, "alpha", 1.0))
        beta = float(ctx.attr(node, "beta", 0.5))
        sq = ctx.emit("Reshape", [ctx.emit("Mul", [x, x]),
                                  ctx.const(np.array([-1, 1, 1, c], np.int64), "lrn_rows")])
        mean = ctx.emit("AveragePool", [sq], kernel_shape=[1, 2 * r + 1], pads=[0, r, 0, r],
                        strides=[1, 1], count_include_pad=1)
        # allowzero: an empty H or W is 0, not "keep the dim" (hunt: every call failed)
        win = ctx.emit("Reshape", [mean, ctx.emit("Shape", [x])], allowzero=1)
        scale = ctx.emit("Add", [ctx.emit("Mul", [win, ctx.const(np.array(alpha * (2 * r + 1),
                                                                          dt), "lrn_alpha")]),
                                 ctx.const(np.array(bias, dt), "lrn_bias")])
        den = ctx.emit("Pow", [scale, ctx.const(np.array(beta, dt), "lrn_beta")])
        ctx.set_output(node, 0, ctx.emit("Div", [x, den]))


@converter("Softmax", "LogSoftmax", dtypes=FLOATS, inputs=(TENSOR,))
class Softmax:
    """Softmax / LogSoftmax over the last axis (ONNX opset-13 semantics, axis=-1).

    Rejects: scalar inputs, other dtypes.
    """

    @staticmethod
    def validate(node, ctx):
        if ctx.input_rank(node, 0) < 1:
            return f"{node.op} needs an input of rank >= 1"
        return None

    @staticmethod
    def convert(node, ctx):
        ctx.set_output(node, 0, ctx.emit(node.op, [ctx.input(node, 0)], axis=-1))


# --- matrix multiplication --------------------------------------------------------------------

def _swap_last_two(ctx, node, i: int) -> str:
    """Input i with its two innermost dimensions swapped (folded for constants)."""
    rank = ctx.input_rank(node, i)
    perm = list(range(rank - 2)) + [rank - 1, rank - 2]
    if ctx.is_const(node, i):
        v = np.ascontiguousarray(np.transpose(ctx.const_value(node, i), perm))
        return ctx.const(v, node.name + f"/transposed_{i}")
    return ctx.emit("Transpose", [ctx.input(node, i)], perm=perm)


@converter("MatMul", dtypes=FLOATS, inputs=(ANY, ANY))
class MatMul:
    """2-D matrix product with transpose_a / transpose_b; either side may be a constant
    (weights, transposed at conversion time) or a tensor.

    Rejects: inputs that are not rank 2, other dtypes.
    """

    @staticmethod
    def validate(node, ctx):
        for i in range(2):
            if ctx.input_rank(node, i) != 2:
                return f"MatMul needs rank-2 inputs, input {i} has shape " \
                       f"{ctx.input_shape(node, i)}"
        return None

    @staticmethod
    def convert(node, ctx):
        a = _swap_last_two(ctx, node, 0) if ctx.attr(node, "transpose_a") else ctx.input(node, 0)
        b = _swap_last_two(ctx, node, 1) if ctx.attr(node, "transpose_b") else ctx.input(node, 1)
        ctx.set_output(node, 0, ctx.emit("MatMul", [a, b]))


@converter("BatchMatMul", "BatchMatMulV2", dtypes=FLOATS, inputs=(ANY, ANY))
class BatchMatMul:
    """Batched matrix product with adj_x / adj_y (real types: transpose); BatchMatMulV2
    broadcasts batch dimensions numpy-style, as ONNX MatMul does.

    Rejects: inputs of rank < 2, other dtypes.
    """

    @staticmethod
    def validate(node, ctx):
        for i in range(2):
            if ctx.input_rank(node, i) < 2:
                return f"{node.op} needs inputs of rank >= 2, input {i} has shape " \
                       f"{ctx.input_shape(node, i)}"
        return None

    @staticmethod
    def convert(node, ctx):
        a = _swap_last_two(ctx, node, 0) if ctx.attr(node, "adj_x") else ctx.input(node, 0)
        b = _swap_last_two(ctx, node, 1) if ctx.attr(node, "adj_y") else ctx.input(node, 1)
        ctx.set_output(node, 0, ctx.emit("MatMul", [a, b]))


@converter("BatchMatMulV3", dtypes=FLOATS, inputs=(ANY, ANY), dtype_attr="Ta")
class BatchMatMulV3:
    """BatchMatMulV3 with one floating type on both inputs and the output (Ta == Tb == Tout);
    otherwise as BatchMatMulV2.

    Rejects: mixed input/output types, inputs of rank < 2.
    """

    @staticmethod
    def validate(node, ctx):
        ta, tb, tout = (ctx.attr_dtype(node, a) for a in ("Ta", "Tb", "Tout"))
        if not ta == tb == tout:
            return f"mixed types Ta={ta}, Tb={tb}, Tout={tout} are not supported"
        return BatchMatMul.validate(node, ctx)

    convert = BatchMatMul.convert


@converter("Einsum", dtypes=FLOATS, inputs=(ANY,))
class Einsum:
    """Einstein summation with one or two operands and an explicit output ('->'). A
    two-operand equation without ellipsis, without repeated labels in an operand and whose
    every label appears in the output or in both operands (e.g. Keras EinsumDense and
    MultiHeadAttention: 'abc,cde->abde', 'aecd,abcd->acbe') lowers to Transpose/Reshape/MatMul,
    a constant operand transposed and reshaped at conversion time; other equations (ellipsis,
    one operand, labels summed within one operand, a reshape needing two unknown dims) lower to
    ONNX Einsum with subscripts renamed to lowercase letters.

    Rejects: more than two operands, equations without '->', more than 26 distinct labels.
    """

    @staticmethod
    def validate(node, ctx):
        eq = ctx.attr(node, "equation", "")
        if "->" not in eq:
            return f"equation {eq!r} has no explicit output ('->')"
        if ctx.num_inputs(node) > 2:
            return f"Einsum with {ctx.num_inputs(node)} operands is not supported (at most 2)"
        labels = {c for c in eq if c.isalpha()}
        if len(labels) > 26:
            return f"equation {eq!r} uses more than 26 distinct labels"
        return None

    @staticmethod
    def convert(node, ctx):
        if _einsum_as_matmul(node, ctx):
            return
        eq = ctx.attr(node, "equation").replace(" ", "")
        labels = sorted({c for c in eq if c.isalpha()})
        rename = {c: chr(ord("a") + k) for k, c in enumerate(labels)}
        eq = "".join(rename.get(c, c) for c in eq)
        ins = [ctx.input(node, i) for i in range(ctx.num_inputs(node))]
        ctx.set_output(node, 0, ctx.emit("Einsum", ins, equation=eq))


def _einsum_plan(node, ctx):
    """The MatMul plan of a two-operand Einsum, or None when it must stay an ONNX Einsum.

    Returns (a_sub, b_sub, out_sub, batch, left, contracted, right, size) where the label
    groups are lists in operand order and ``size`` maps a label to its dim (None: unknown).
    """
    if ctx.num_inputs(node) != 2:
        return None
    eq = ctx.attr(node, "equation", "").replace(" ", "")
    if "." in eq or "->" not in eq:
        return None
    lhs, out = eq.split("->")
    subs = lhs.split(",")
    if len(subs) != 2:
        return None
    a, b = subs
    if not all(c.isalpha() for c in a + b + out):
        return None
    if any(len(set(s)) != len(s) for s in (a, b, out)):
        return None
    if any(c not in a and c not in b for c in out):
        return None
    if any((c in a) != (c in b) and c not in out for c in a + b):
        return None  # summed within one operand: left to ONNX Einsum
    shapes = []
    for i, s in enumerate((a, b)):
        shp = (tuple(ctx.const_value(node, i).shape) if ctx.is_const(node, i)
               else ctx.input_shape(node, i))
        if shp is None or len(shp) != len(s):
            return None
        shapes.append(shp)
    size, unknown = {}, set()
    for s, shp in zip((a, b), shapes):
        for c, d in zip(s, shp):
            d = None if d is None or d < 0 else int(d)
            if d is None:
                unknown.add(c)
            if size.get(c) is None:
                size[c] = d
            elif d is not None and d != size[c]:
                return None  # broadcasting a label of size 1: left to ONNX Einsum
    if any(size[c] == 1 for c in unknown):
        # a label of size 1 on one operand, unknown on the other: the MatMul would broadcast
        # it where TF's Einsum raises (sizes must match: helper hunt, 2026-12-02); ONNX
        # Einsum checks them as TF does
        return None
    batch = [c for c in a if c in b and c in out]
    contracted = [c for c in a if c in b and c not in out]
    left = [c for c in a if c not in b]
    right = [c for c in b if c not in a]
    # Batch labels in output order, so that the final transpose is often an identity.
    batch.sort(key=out.index)
    left.sort(key=out.index)
    right.sort(key=out.index)
    return a, b, out, batch, left, contracted, right, size


def _group_dim(labels, size):
    dims = [size[c] for c in labels]
    return None if any(d is None for d in dims) else int(np.prod(dims, dtype=np.int64))


def _einsum_operand(node, ctx, i, sub, groups, size):
    """Operand i transposed to its groups' label order and reshaped to one dim per group
    (sizes of unknown groups read at run time: :func:`_group_dims`); the ONNX value."""
    order = [c for g in groups for c in g]
    perm = [sub.index(c) for c in order]
    target = [_group_dim(g, size) for g in groups]
    needs_reshape = any(len(g) != 1 for g in groups)
    if ctx.is_const(node, i):
        v = np.transpose(ctx.const_value(node, i), perm)
        if needs_reshape:
            v = v.reshape(target)
        return ctx.const(np.ascontiguousarray(v), node.name + f"/matmul_operand_{i}")
    x = ctx.input(node, i)
    if perm != list(range(len(perm))):
        x = ctx.emit("Transpose", [x], perm=perm)
    if needs_reshape and _sizes_at_run_time(target):
        # allowzero: a group of size 0 (an empty batch or sequence) is 0, not "keep the
        # input's dimension" (helper hunt, 2026-12-02: the engine failed and ran natively)
        x = ctx.emit("Reshape", [x, _group_dims(node, ctx, groups, {c: i for c in sub},
                                                {i: sub}, size)], allowzero=1)
    elif needs_reshape:
        shape = np.array([-1 if d is None else d for d in target], np.int64)
        x = ctx.emit("Reshape", [x, ctx.const(shape, node.name + "/shape")])
    return x


def _sizes_at_run_time(dims) -> bool:
    """Whether a reshape to ``dims`` (None: unknown) needs its sizes read at run time
    (:func:`_group_dims`, folded by the engine for each input shape) rather than a constant
    shape with -1: several unknown dims, or one beside a 0 (a -1 infers nothing there)."""
    return sum(d is None for d in dims) > 1 or (None in dims and 0 in dims)


def _group_dims(node, ctx, groups, owner, subs, size) -> str:
    """An int64 ONNX value: per group of labels, the product of their sizes, known ones as
    constants, the others read at run time from the operand holding them (``owner[label]``:
    its input index, ``subs[index]``: its subscript; one operand per group)."""
    parts, shapes = [], {}
    for g in groups:
        known = int(np.prod([size[c] for c in g if size[c] is not None], dtype=np.int64))
        unknown = [c for c in g if size[c] is None]
        if not unknown:
            parts.append(ctx.const(np.array([known], np.int64), node.name + "/dim"))
            continue
        i = owner[unknown[0]]
        if i not in shapes:
            shapes[i] = ctx.emit("Shape", [ctx.input(node, i)])
        d = ctx.emit("Gather", [shapes[i], ctx.const(
            np.array([subs[i].index(c) for c in unknown], np.int64), node.name + "/axes")],
            axis=0)
        if len(unknown) > 1:
            d = ctx.emit("ReduceProd", [d], keepdims=1)
        if known != 1:
            d = ctx.emit("Mul", [d, ctx.const(np.array([known], np.int64), node.name + "/k")])
        parts.append(d)
    return ctx.emit("Concat", parts, axis=0)


def _einsum_as_matmul(node, ctx) -> bool:
    """Lowers a two-operand Einsum to Transpose/Reshape/MatMul; False when it cannot."""
    plan = _einsum_plan(node, ctx)
    if plan is None:
        return False
    a, b, out, batch, left, contracted, right, size = plan
    ia, ib = 0, 1
    if left and right and out.index(right[0]) < out.index(left[0]):
        # The output puts B's free labels first: B @ A spares the final transpose.
        ia, ib, a, b, left, right = 1, 0, b, a, right, left
    lead = [batch] if batch else []
    a_groups = lead + [left, contracted]
    b_groups = lead + [contracted, right]
    out_groups = lead + [left, right]
    out_labels = batch + left + right
    out_reshape = any(len(g) != 1 for g in out_groups)
    owner = {c: (ia if c in a else ib) for c in out_labels}  # an operand holding each label
    if out_reshape and sum(size[c] is None for c in out_labels) > 1 and any(
            size[c] is None and ctx.is_const(node, owner[c]) for c in out_labels):
        return False
    # Check both operands before emitting anything, so a fallback leaves no dead nodes: a
    # constant operand's dims are all known, a computed one's are read at run time.
    xa = _einsum_operand(node, ctx, ia, a, a_groups, size)
    xb = _einsum_operand(node, ctx, ib, b, b_groups, size)
    y = ctx.emit("MatMul", [xa, xb])
    if out_reshape and _sizes_at_run_time([size[c] for c in out_labels]):
        # several unknown dims (batch and sequence of a [None, None, H] signature: Keras'
        # MultiHeadAttention projections): the shape read from the operands at run time
        # (the engine folds it for each input shape); left as an ONNX Einsum, these ran
        # in FP32 in FP16 engines (transformer hunt, 2026-12-02)
        y = ctx.emit("Reshape", [y, _group_dims(node, ctx, [[c] for c in out_labels], owner,
                                                {ia: a, ib: b}, size)], allowzero=1)
    elif out_reshape:
        shape = np.array([-1 if size[c] is None else size[c] for c in out_labels], np.int64)
        y = ctx.emit("Reshape", [y, ctx.const(shape, node.name + "/out_shape")])
    perm = [out_labels.index(c) for c in out]
    if perm != list(range(len(perm))):
        y = ctx.emit("Transpose", [y], perm=perm)
    ctx.set_output(node, 0, y)
    return True
