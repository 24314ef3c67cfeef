"""The CPU reference backend: every layer kind and epilogue in numpy.

Numerics: float16 tensors (FP16 engines) are upcast to float32 on entry to each layer and the
result rounded to the output tensor's dtype on exit, which is what the GPU kernels do (fp16
storage, fp32 compute/accumulation). Conv is NHWC im2col + one sgemm per group, with a direct
1x1 GEMM and a depthwise multiply-accumulate as alternative tactics.

INT8 / FP8 layers (``attrs["quant"]``, quantization.py) are simulated with the GPU kernels'
arithmetic: the input quantized with their rounding and saturation, the products summed exactly
in float64 (an int32 accumulator holds the same integers: |sum| < 2**31 for any K < 133,000;
FP8 products of two E4M3 values are exact too) and rounded once to float32, then the fp32
epilogue (dequantization scale first) and, when the output is int8, the requantization.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List

import numpy as np

from tftrt.engine.backends import Backend
from tftrt.engine import pool_fusion
from tftrt.engine import quantization as Q
from tftrt.engine.backends import numpy_ops as ops
from tftrt.engine.errors import EngineBuildError
from tftrt.engine.network import Layer, Network
from tftrt.engine.tactics import register_tactic


def _is_1x1(net: Network, layer: Layer) -> bool:
    w = net.tensors[layer.inputs[1]].shape
    return layer.attrs["group"] == 1 and all(k == 1 for k in w[1:-1])


def _is_depthwise(net: Network, layer: Layer) -> bool:
    w = net.tensors[layer.inputs[1]].shape
    x = net.tensors[layer.inputs[0]].shape
    return w[-1] == 1 and x is not None and layer.attrs["group"] == x[-1] and \
        layer.attrs["group"] > 1


def _im2col_workspace(net: Network, layer: Layer) -> int:
    fused = layer.attrs.get("pool")  # a stem that took its pool: its own output (pool_fusion)
    y = fused["output"]["shape"] if isinstance(fused, dict) else \
        net.tensors[layer.outputs[0]].shape
    w = net.tensors[layer.inputs[1]].shape
    if y is None:
        return 0
    return int(np.prod(y[:-1])) * int(np.prod(w[1:])) * layer.attrs["group"] * 4


register_tactic("numpy", "conv", "im2col_gemm", workspace=_im2col_workspace)
register_tactic("numpy", "conv", "gemm_1x1", applies=_is_1x1)
register_tactic("numpy", "conv", "depthwise_direct", applies=_is_depthwise)
register_tactic("numpy", "matmul", "blas_gemm")


def _f32(x):
    if isinstance(x, np.ndarray) and x.dtype == np.float16:
        return x.astype(np.float32)
    return x


class NumpyBackend(Backend):
    """Runs engines on the CPU with numpy (the reference for every other backend)."""

    name = "numpy"
    quantized_precisions = ("INT8", "FP8")  # simulated exactly (module doc)

    def device_name(self) -> str:
        return "cpu"

    def upload(self, array: np.ndarray):
        return np.asarray(array)

    def to_numpy(self, array) -> np.ndarray:
        return np.asarray(array)

    def stores_int8(self, net: Network, layer: Layer) -> bool:
        """Whether ``layer`` can store its float result as int8 codes
        (quantization.absorb_pool_requantization): any float conv here (:func:`_conv`), so
        CPU engines plan what GPU engines whose stem runs ``stem_mma`` plan."""
        return layer.kind == "conv" and "quant" not in layer.attrs

    def accepts_layer(self, net: Network, layer: Layer) -> bool:
        """Every fused layer a late pass proposes (``attention``, ``se``) runs here."""
        return True

    def prepare_layer(self, net: Network, layer: Layer, weights: Dict[str, Any]):
        fn = _KERNELS.get(layer.kind)
        if fn is None:
            raise EngineBuildError(f"numpy backend has no kernel for layer kind {layer.kind!r} "
                                   f"({layer.name})")
        body = fn(net, layer, weights)
        out_dtypes = [np.dtype(net.tensors[o].dtype) if net.tensors[o].dtype else None
                      for o in layer.outputs]

        def run(inputs: List[Any]) -> List[np.ndarray]:
            with np.errstate(all="ignore"):  # the cast too: float16 holds -1e9 as -inf,
                outs = body([_f32(x) for x in inputs])  # as the GPU's cast does
                return [o if d is None else np.asarray(o).astype(d, copy=False)
                        for o, d in zip(outs, out_dtypes)]
        return run


# --- kernels: fn(net, layer, weights) -> body(inputs) -> outputs ---------------------------------
_KERNELS: Dict[str, Callable] = {}


def kernel(*kinds):
    def deco(fn):
        for k in kinds:
            _KERNELS[k] = fn
        return fn
    return deco


def _epilogue(layer: Layer) -> Callable:
    epi = layer.epilogue

    def apply(y, inputs):
        for e in epi:
            op = e["op"]
            if op == "bias":
                y = y + inputs[e["input"]]
            elif op == "scale":
                y = y * inputs[e["input"]]
            elif op == "add" and "scale" in e:  # an int8 residual (quantization.py)
                y = y + inputs[e["input"]].astype(np.float32) * np.float32(e["scale"])
            elif op == "add":
                y = y + inputs[e["input"]]
            elif op == "act":
                y = ops.apply_activation(y, e)
            else:
                raise EngineBuildError(f"unknown epilogue op {op} in {layer.name}")
        return y
    return apply


def _const_or_runtime(weights, name, prep):
    """Prepares a weight once when it is constant; else per call."""
    if name in weights:
        w = prep(_f32(np.asarray(weights[name])))
        return lambda inputs_w: w
    return prep


def _quantized_gemm(net, layer, weights):
    """An INT8 / FP8 conv or matmul (module doc): quantize input 0 unless it is int8 already,
    exact float64 accumulation over the quantized weight, float32 epilogue, optional int8
    requantization of the result."""
    q = layer.attrs["quant"]
    precision = "INT8" if q["format"] == Q.FORMAT["INT8"] else "FP8"
    inv_x = Q.inv_scale(q["input_scale"])
    out_scale = q.get("output_scale")
    inv_out = None if out_scale is None else Q.inv_scale(out_scale)
    epi = _epilogue(layer)
    w = Q.dequantized_weight(layer, np.asarray(weights[layer.inputs[1]]))
    a = layer.attrs
    if layer.kind == "conv":
        k = list(w.shape[1:-1])
        st, dil, pads, g = a["strides"], a["dilations"], a["pads"], a["group"]
        cout, cg = w.shape[0], w.shape[-1]
        if g == 1 and all(d == 1 for d in k):
            wmat = np.ascontiguousarray(w.reshape(cout, cg).T)
            gemm = lambda x: ops.conv_1x1(x, wmat, st, pads)  # noqa: E731
        else:
            wmat = np.ascontiguousarray(
                w.reshape(g, cout // g, -1, cg).transpose(0, 2, 3, 1).reshape(g, -1, cout // g))
            gemm = lambda x: ops.conv_im2col(x, wmat, k, st, dil, pads, g, cout)  # noqa: E731
    else:
        wmat = w.T if a.get("transpose_b") else w
        ta = a.get("transpose_a")
        gemm = lambda x: np.matmul(np.swapaxes(x, -1, -2) if ta else x, wmat)  # noqa: E731

    def body(ins):
        x = ins[0]
        xq = x.astype(np.float64) if x.dtype == np.int8 else Q.quantize_values(x, inv_x,
                                                                               precision)
        y = epi(gemm(xq).astype(np.float32), ins)
        return [y if inv_out is None else Q.quantize_int8(y, inv_out)]
    fused = Q.projection_layer(net, layer)
    if fused is None:
        return body
    # a projection shortcut the layer took (quantization.fuse_projections): its codes first,
    # added in its output's place, as the fused GPU kernel adds them from registers
    sub, proj = fused
    project = _quantized_gemm(sub, proj, weights)
    at, res = layer.attrs["projection"]["inputs_at"], layer.attrs["projection"]["residual"]

    def with_projection(ins):
        ins = list(ins)
        ins[res] = project([ins[k] for k in at])[0]
        return body(ins)
    return with_projection


@kernel("conv")
def _conv(net, layer, weights):
    pair = pool_fusion.pool_layers(net, layer)
    if pair is not None:  # a stem that took its max pool (pool_fusion): the two in turn
        sub, conv, pool = pair
        first, then = _conv(sub, conv, weights), _pool(sub, pool, weights)
        return lambda ins: then(first(ins))
    if "quant" in layer.attrs:
        return _quantized_gemm(net, layer, weights)
    if layer.attrs.get("output_scale") is not None:  # int8 codes of its float32 result
        inv = Q.inv_scale(layer.attrs["output_scale"])
        nan_code = layer.attrs.get("output_nan_code")
        body = _float_conv(net, layer, weights)

        def coded(ins):
            y = np.asarray(body(ins)[0], np.float32)
            q = Q.quantize_int8(y, inv)
            if nan_code is not None:
                q[np.isnan(y)] = nan_code
            return [q]
        return coded
    return _float_conv(net, layer, weights)


def _float_conv(net, layer, weights):
    body = _float_conv_body(net, layer, weights)
    if not layer.attrs.get("float32_x"):
        return body
    # an FP16 conv reading float32 x rounds it to float16 on load, as the cast it replaced
    # (precision.absorb_input_casts; the CuPy backend's stem_mma)
    return lambda ins: body([np.asarray(ins[0]).astype(np.float16)] + list(ins[1:]))


def _float_conv_body(net, layer, weights):
    a = layer.attrs
    k = list(net.tensors[layer.inputs[1]].shape[1:-1])
    st, dil, pads, g = a["strides"], a["dilations"], a["pads"], a["group"]
    epi = _epilogue(layer)
    tactic = layer.tactic or "im2col_gemm"
    if tactic == "gemm_1x1":
        prep = lambda w: np.ascontiguousarray(w.reshape(w.shape[0], w.shape[-1]).T)
        getw = _const_or_runtime(weights, layer.inputs[1], prep)
        return lambda ins: [epi(ops.conv_1x1(ins[0], getw(ins[1]), st, pads), ins)]
    if tactic == "depthwise_direct":
        def prep(w):
            c = g
            mult = w.shape[0] // c
            return np.ascontiguousarray(w.reshape(c, mult, -1).transpose(2, 0, 1))
        getw = _const_or_runtime(weights, layer.inputs[1], prep)
        return lambda ins: [epi(ops.conv_depthwise(ins[0], getw(ins[1]), k, st, dil, pads), ins)]

    def prep(w):  # KRSC [Cout, *K, Cg] -> [G, prod(K) * Cg, Cout / G]
        cout, cg = w.shape[0], w.shape[-1]
        return np.ascontiguousarray(
            w.reshape(g, cout // g, -1, cg).transpose(0, 2, 3, 1).reshape(g, -1, cout // g))
    getw = _const_or_runtime(weights, layer.inputs[1], prep)
    cout = net.tensors[layer.inputs[1]].shape[0]
    return lambda ins: [epi(ops.conv_im2col(ins[0], getw(ins[1]), k, st, dil, pads, g, cout),
                            ins)]


@kernel("conv_transpose")
def _conv_transpose(net, layer, weights):
    a = layer.attrs
    epi = _epilogue(layer)
    return lambda ins: [epi(ops.conv_transpose(ins[0], ins[1], a["strides"], a["dilations"],
                                               a["pads"], a["output_padding"], a["group"]), ins)]


@kernel("matmul")
def _matmul(net, layer, weights):
    if "quant" in layer.attrs:
        return _quantized_gemm(net, layer, weights)
    a = layer.attrs
    epi = _epilogue(layer)
    ta, tb, alpha = a.get("transpose_a"), a.get("transpose_b"), a.get("alpha", 1.0)

    def body(ins):
        x, y = ins[0], ins[1]
        if ta:
            x = np.swapaxes(x, -1, -2)
        if tb:
            y = np.swapaxes(y, -1, -2)
        r = np.matmul(x, y)
        if alpha != 1.0:
            r = r * np.asarray(alpha, r.dtype)
        return [epi(r, ins)]
    return body


@kernel("pointwise")
def _pointwise(net, layer, weights):
    prog = layer.attrs["program"]
    return lambda ins: [ops.run_program(prog, ins)]


@kernel("einsum")
def _einsum(net, layer, weights):
    eq = layer.attrs["equation"]
    return lambda ins: [np.einsum(eq, *ins, optimize=len(ins) > 2)]


@kernel("pool")
def _pool(net, layer, weights):
    a = layer.attrs
    y = net.tensors[layer.outputs[0]]
    out_sp = list(y.shape[1:-1])

    def pool(x, dtype):
        return ops.pool(x, a["mode"], a["kernel"], a["strides"], a["dilations"], a["pads"],
                        a["ceil_mode"], a["count_include_pad"], out_sp, dtype,
                        a.get("floor_program"), a.get("pad_value"))
    if "output_scale" in a:  # int8 for INT8 readers (quantization._requantize_pools): the
        # float pool as its input's dtype stores it, then their quantization on load
        inv, fdt = Q.inv_scale(a["output_scale"]), net.tensors[layer.inputs[0]].dtype
        return lambda ins: [Q.quantize_int8(pool(ins[0], fdt), inv)]
    if "code_floor" in a:  # int8 codes with NaN below them (quantization.NAN_CODE)
        return lambda ins: [np.maximum(pool(ins[0], y.dtype), a["code_floor"]).astype(np.int8)]
    return lambda ins: [pool(ins[0], y.dtype)]


@kernel("reduce")
def _reduce(net, layer, weights):
    a = layer.attrs
    return lambda ins: [ops.reduce(ins[0], a["op"], a["axes"], a["keepdims"])]


@kernel("arg_reduce")
def _arg_reduce(net, layer, weights):
    a = layer.attrs
    return lambda ins: [ops.arg_reduce(ins[0], a["op"], a["axis"], a["keepdims"],
                                       a["select_last_index"])]


@kernel("softmax")
def _softmax(net, layer, weights):
    a = layer.attrs
    # All -inf rows are NaN in TF; uniform only where fp16 storage may have turned a finite
    # mask value (-2.4e38) into -inf (see ops.softmax).
    uniform = net.tensors[layer.inputs[0]].dtype == "float16"
    return lambda ins: [ops.softmax(ins[0], a["axis"], a["log"], uniform)]


@kernel("attention")
def _attention(net, layer, weights):
    a = layer.attrs
    p_dtype = ops.attention_p_dtype(net.tensors[layer.outputs[0]].dtype)
    return lambda ins: [ops.attention(ins[0], ins[1], ins[2], a["scale"], a["layout"], p_dtype)]


@kernel("se")
def _se(net, layer, weights):
    a = layer.attrs
    ins = layer.inputs
    prep = lambda w: np.ascontiguousarray(w.T)  # noqa: E731  [Cout, Cin] -> [Cin, Cout]
    w1, w2 = (_const_or_runtime(weights, ins[k], prep) for k in (1, 3))
    return lambda v: [ops.se(v[0], w1(v[1]), v[2], w2(v[3]), v[4], a)[0]]


@kernel("normalization")
def _normalization(net, layer, weights):
    a = layer.attrs
    n_out = len(layer.outputs)

    def body(ins):
        x = ins[0].astype(np.float32, copy=False)
        y, mean, inv = ops.normalization(x, ins[1] if len(ins) > 1 else None,
                                         ins[2] if len(ins) > 2 else None, a["axes"],
                                         a["epsilon"])
        return [y, mean, inv][:n_out]
    return body


@kernel("topk")
def _topk(net, layer, weights):
    a = layer.attrs
    return lambda ins: list(ops.topk(ins[0], a["k"], a["axis"], a["largest"], a["sorted"]))


@kernel("cumsum")
def _cumsum(net, layer, weights):
    a = layer.attrs
    return lambda ins: [ops.cumsum(ins[0], a["axis"], a["exclusive"], a["reverse"])]


@kernel("transpose")
def _transpose(net, layer, weights):
    perm = layer.attrs["perm"]
    return lambda ins: [np.transpose(ins[0], perm)]


@kernel("reshape")
def _reshape(net, layer, weights):
    a = layer.attrs
    if "shape" in a:
        shape = tuple(a["shape"])
        return lambda ins: [np.reshape(ins[0], shape)]

    def body(ins):  # dynamic: ONNX semantics on the runtime shape operand
        x = ins[0]
        if a["mode"] == "onnx":
            s = [int(d) for d in ins[1]]
            s = [x.shape[i] if d == 0 and not a.get("allowzero") else d for i, d in enumerate(s)]
            return [x.reshape(s)]
        if a["mode"] == "flatten":
            ax = a["axis"] % x.ndim if a["axis"] != x.ndim else x.ndim
            return [x.reshape(int(np.prod(x.shape[:ax])), -1)]
        axes = a.get("axes") if len(ins) < 2 else [int(v) for v in ins[1]]
        if a["mode"] == "squeeze":
            return [np.squeeze(x, axis=None if axes is None else tuple(axes))]
        return [np.expand_dims(x, tuple(axes))]
    return body


@kernel("concat")
def _concat(net, layer, weights):
    ax = layer.attrs["axis"]
    return lambda ins: [np.concatenate(ins, axis=ax)]


@kernel("split")
def _split(net, layer, weights):
    ax, sizes = layer.attrs["axis"], layer.attrs["sizes"]
    cuts = list(np.cumsum(sizes)[:-1])
    return lambda ins: np.split(ins[0], cuts, axis=ax)


@kernel("slice")
def _slice(net, layer, weights):
    if "slices" in layer.attrs:
        sl = tuple(slice(*s) for s in layer.attrs["slices"])
        return lambda ins: [ins[0][sl]]

    def body(ins):  # dynamic input shape: python slices clamp exactly as ONNX Slice does
        x, starts, ends = ins[0], ins[1], ins[2]
        axes = ins[3] if len(ins) > 3 and ins[3] is not None else range(len(starts))
        steps = ins[4] if len(ins) > 4 and ins[4] is not None else [1] * len(starts)
        sl = [slice(None)] * x.ndim
        for ax, st, en, sp in zip(axes, starts, ends, steps):
            sl[int(ax)] = slice(int(st), int(en), int(sp))
        return [x[tuple(sl)]]
    return body


@kernel("pad")
def _pad(net, layer, weights):
    a = layer.attrs
    r = len(a["pads"]) // 2
    widths = [(max(a["pads"][i], 0), max(a["pads"][r + i], 0)) for i in range(r)]
    # negative pads crop (ONNX; constant mode only, shapes.py refuses the others)
    crop = tuple(slice(max(-a["pads"][i], 0), None if a["pads"][r + i] >= 0 else
                       a["pads"][r + i]) for i in range(r))
    mode = a["mode"]

    def body(ins):
        x = ins[0][crop]
        if mode == "constant":
            return [np.pad(x, widths, constant_values=np.asarray(a["value"]).astype(x.dtype))]
        return [np.pad(x, widths, mode="reflect" if mode == "reflect" else "edge")]
    return body


@kernel("gather")
def _gather(net, layer, weights):
    ax = layer.attrs["axis"]
    return lambda ins: [ops.gather(ins[0], ins[1], ax)]


@kernel("gather_elements")
def _gather_elements(net, layer, weights):
    ax = layer.attrs["axis"]
    return lambda ins: [ops.gather_elements(ins[0], ins[1], ax)]


@kernel("gather_nd")
def _gather_nd(net, layer, weights):
    b = layer.attrs["batch_dims"]
    return lambda ins: [ops.gather_nd(ins[0], ins[1], b)]


@kernel("scatter_nd")
def _scatter_nd(net, layer, weights):
    red = layer.attrs["reduction"]
    return lambda ins: [ops.scatter_nd(ins[0], ins[1], ins[2], red)]


@kernel("expand")
def _expand(net, layer, weights):
    if "shape" in layer.attrs:
        shape = tuple(layer.attrs["shape"])
        return lambda ins: [np.broadcast_to(ins[0], shape)]
    return lambda ins: [ins[0] * np.ones([int(d) for d in ins[1]], ins[0].dtype)]


@kernel("tile")
def _tile(net, layer, weights):
    if "repeats" in layer.attrs:
        reps = layer.attrs["repeats"]
        return lambda ins: [np.tile(ins[0], reps)]
    return lambda ins: [np.tile(ins[0], [int(r) for r in ins[1]])]


@kernel("shape")
def _shape(net, layer, weights):
    from tftrt.engine.shapes import shape_slice
    return lambda ins: [np.array(ins[0].shape[shape_slice(layer, ins[0].ndim)], np.int64)]


@kernel("size")
def _size(net, layer, weights):
    return lambda ins: [np.array(ins[0].size, np.int64)]


@kernel("constant_of_shape")
def _constant_of_shape(net, layer, weights):
    a = layer.attrs
    return lambda ins: [np.full([int(d) for d in ins[0]], a["value"], a["dtype"])]


@kernel("range")
def _range(net, layer, weights):
    return lambda ins: [ops.range_(*ins)]


@kernel("onehot")
def _onehot(net, layer, weights):
    ax = layer.attrs["axis"]
    return lambda ins: [ops.onehot(ins[0], int(np.asarray(ins[1]).reshape(-1)[0]),
                                   np.asarray(ins[2]), ax)]


@kernel("depth_to_space")
def _d2s(net, layer, weights):
    a = layer.attrs
    return lambda ins: [ops.depth_to_space(ins[0], a["blocksize"], a["mode"])]


@kernel("space_to_depth")
def _s2d(net, layer, weights):
    a = layer.attrs
    return lambda ins: [ops.space_to_depth(ins[0], a["blocksize"], a.get("pads"),
                                           a.get("channels"))]


@kernel("resize")
def _resize(net, layer, weights):
    if "sizes" not in layer.attrs:
        raise EngineBuildError(f"Resize {layer.name}: scales/sizes must be constant")
    return lambda ins: [ops.resize(ins[0], layer.attrs)]


@kernel("nms")
def _nms(net, layer, weights):
    cpb = layer.attrs["center_point_box"]

    def body(ins):
        ins = ins + [None] * (5 - len(ins))
        return [ops.nms(ins[0], ins[1], ins[2], ins[3], ins[4], cpb)]
    return body


@kernel("quantize")
def _quantize(net, layer, weights):
    a = layer.attrs
    return lambda ins: [ops.quantize(ins[0], ins[1], ins[2] if len(ins) > 2 else None,
                                     a["axis"], a["dtype"])]


@kernel("dequantize")
def _dequantize(net, layer, weights):
    ax = layer.attrs["axis"]
    return lambda ins: [ops.dequantize(ins[0], ins[1], ins[2] if len(ins) > 2 else None, ax)]
