"""ONNX (opset 17) segment network -> engine :class:`~tftrt.engine.network.Network`.

Every ONNX op is lowered to one or a few IR layers (see network.py for the kinds). Shape
operands (Reshape's shape, Slice's starts, ...) stay layer inputs here; shape inference folds
them into attrs once the engine is built for concrete input shapes.

Layout: ONNX convolutions, pools and DepthToSpace/SpaceToDepth are NCHW; the engine's are NHWC.
Each is imported as ``transpose(to NHWC) -> layer -> transpose(back to NCHW)``. The TF converters
already wrap every conv in ``Transpose(0,3,1,2) -> Conv -> Transpose(0,2,3,1)``, so the shuffle
folding pass cancels both pairs and the engine runs the conv in NHWC end to end.
"""

from __future__ import annotations

import logging
from typing import Callable, Dict, List, Optional

import numpy as np
import onnx
from onnx import helper, numpy_helper

from tftrt.engine.errors import EngineBuildError
from tftrt.engine.network import Network

log = logging.getLogger("tftrt.engine")

_IMPORTERS: Dict[str, Callable] = {}


def importer(*op_types: str):
    """Registers an importer ``fn(node, ctx)`` for the ONNX op types given."""
    def deco(fn):
        for t in op_types:
            _IMPORTERS[t] = fn
        return fn
    return deco


def supported_ops() -> List[str]:
    return sorted(_IMPORTERS)


def np_dtype_name(onnx_type: int) -> str:
    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(onnx_type)).name
    except Exception:
        raise EngineBuildError(f"ONNX element type {onnx_type} "
                               f"({onnx.TensorProto.DataType.Name(onnx_type)}) is not supported "
                               f"by the engine; cast it to a float or integer type") from None


class _Ctx:
    """What importers see: resolved input names, constants, rank hints, layer emission."""

    def __init__(self, net: Network, ranks: Dict[str, int]):
        self.net = net
        self.alias: Dict[str, str] = {}
        self.ranks = ranks

    def inp(self, node, i: int) -> str:
        if i >= len(node.input) or not node.input[i]:
            return ""
        name = node.input[i]
        return self.alias.get(name, name)

    def const(self, node, i: int) -> Optional[np.ndarray]:
        name = self.inp(node, i)
        return self.net.weights.get(name) if name else None

    def rank(self, node, i: int = 0) -> Optional[int]:
        name = self.inp(node, i)
        if name in self.net.weights:
            return self.net.weights[name].ndim
        info = self.net.tensors.get(name)
        if info is not None and info.shape is not None:
            return len(info.shape)
        return self.ranks.get(node.input[i])

    def weight(self, value, hint: str) -> str:
        return self.net.add_weight(np.asarray(value), hint)

    def tmp(self, hint: str) -> str:
        return self.net.add_tensor(self.net.unique_name(hint))

    def layer(self, kind, inputs, outputs, attrs=None, epilogue=None, name=None):
        return self.net.add_layer(kind, inputs, outputs, attrs, epilogue, name)

    def pointwise(self, op: str, inputs: List[str], output: str, name: str, **params):
        step = {"op": op, "args": [f"${k}" for k in range(len(inputs))], "dtype": None, **params}
        return self.layer("pointwise", inputs, [output], {"program": [step]}, name=name)

    def to_nhwc(self, x: str, rank: int, hint: str) -> str:
        out = self.tmp(hint + "_nhwc")
        self.layer("transpose", [x], [out], {"perm": [0, *range(2, rank), 1]}, name=out)
        return out

    def from_nhwc(self, y_nhwc: str, rank: int, out: str) -> None:
        self.layer("transpose", [y_nhwc], [out], {"perm": [0, rank - 1, *range(1, rank - 1)]},
                   name=out + "_nchw")


def _attrs(node) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _s(v):
    return v.decode() if isinstance(v, bytes) else v


# an initializer with more elements than this is a weight, never a shape operand: ONNX shape
# inference sees only its type and shape (its data is what made the inference slow)
_SHAPE_OPERAND_MAX_ELEMENTS = 64


def _without_weight_data(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with each large initializer declared as a graph input of its type and shape
    instead: what ONNX shape inference needs of a weight. Small initializers (Reshape's
    shape, Slice's starts, Pad's pads: data that shapes depend on) stay as they are."""
    light = onnx.ModelProto()
    light.ir_version = model.ir_version
    light.opset_import.extend(model.opset_import)
    light.functions.extend(model.functions)
    graph, g = model.graph, light.graph
    g.name = graph.name
    g.node.extend(graph.node)
    g.input.extend(graph.input)
    g.output.extend(graph.output)
    g.value_info.extend(graph.value_info)
    declared = {vi.name for vi in graph.input}
    for init in graph.initializer:
        if int(np.prod(init.dims, dtype=np.int64)) <= _SHAPE_OPERAND_MAX_ELEMENTS:
            g.initializer.append(init)
        elif init.name not in declared:
            g.input.append(helper.make_tensor_value_info(init.name, init.data_type,
                                                         list(init.dims)))
    g.sparse_initializer.extend(graph.sparse_initializer)
    return light


def onnx_ranks(model: onnx.ModelProto) -> Dict[str, int]:
    """The rank of every value ONNX shape inference knows (the importers' rank hints), run on
    the model without its weights' data: with them, serializing ResNet50's 100 MB for the
    inference was 80% of an import (0.22 of 0.28 s on a CPU; on the GPU host the import moved
    into build()'s shape check and the warm build took 3.7 s against its 3 s bar)."""
    ranks: Dict[str, int] = {}
    try:
        inferred = onnx.shape_inference.infer_shapes(_without_weight_data(model))
        for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
            if vi.type.tensor_type.HasField("shape"):
                ranks[vi.name] = len(vi.type.tensor_type.shape.dim)
    except Exception as e:  # rank hints are optional; importers fall back to operand shapes
        log.debug("onnx shape inference failed: %s", e)
    return ranks


def network_from_onnx(model: onnx.ModelProto) -> Network:
    """Imports an ONNX model (opset 17 semantics) as an engine network.

    Args:
      model: the segment network (inputs ``TensorRTInputPH_<i>``, outputs
        ``TensorRTOutputPH_<i>``, weights as initializers, unknown dims symbolic).
    Returns:
      The network; symbolic dims are kept as strings until ``build_engine`` binds shapes.
    Raises:
      EngineBuildError: naming every op outside the supported list (all at once).
    """
    graph = model.graph
    unsupported = sorted({n.op_type for n in graph.node
                          if n.op_type not in _IMPORTERS or n.domain not in ("", "ai.onnx")})
    if unsupported:
        raise EngineBuildError(
            f"ONNX op(s) {', '.join(unsupported)} in network {graph.name!r} are not supported by "
            f"the tftrt engine (supported: {', '.join(supported_ops())}); keep those nodes out "
            f"of the segment (e.g. add them to the converter denylist)")
    ranks = onnx_ranks(model)

    net = Network(graph.name or "network")
    for n in graph.node:  # reserve every ONNX value name so generated names never collide
        for o in n.output:
            if o:
                net.add_tensor(o)
    for init in graph.initializer:
        net.add_weight(numpy_helper.to_array(init).copy(), init.name)
    for vi in graph.input:
        if vi.name in net.weights:
            continue
        net.inputs.append(vi.name)
        net.add_tensor(vi.name, *_value_info(vi))
    ctx = _Ctx(net, ranks)
    for node in graph.node:
        try:
            _IMPORTERS[node.op_type](node, ctx)
        except EngineBuildError:
            raise
        except Exception as e:
            raise EngineBuildError(f"cannot import ONNX node {node.name!r} ({node.op_type}): "
                                   f"{type(e).__name__}: {e}") from e
    for vi in graph.output:
        src = ctx.alias.get(vi.name, vi.name)
        net.outputs.append(vi.name)
        dtype, shape = _value_info(vi)
        if src != vi.name:
            net.tensors.pop(vi.name, None)
            net.outputs[-1] = src
            if src in net.inputs or src in net.weights or src in net.outputs[:-1] or \
                    not any(src in l.outputs for l in net.layers):
                net.add_tensor(vi.name)
                net.outputs[-1] = vi.name
                net.add_layer("pointwise", [src], [vi.name], {"program": [
                    {"op": "identity", "args": ["$0"], "dtype": None}]}, name=vi.name)
            else:
                net.rename(src, vi.name)
                for k, v in ctx.alias.items():
                    if v == src:
                        ctx.alias[k] = vi.name
        info = net.tensors[vi.name]
        info.dtype = info.dtype or dtype
        if info.shape is None:
            info.shape = shape
    net.prune_tensors()
    net.uniquify_layer_names()
    return net


def _value_info(vi):
    tt = vi.type.tensor_type
    dtype = np_dtype_name(tt.elem_type) if tt.elem_type else None
    shape = None
    if tt.HasField("shape"):
        shape = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                      for d in tt.shape.dim)
    return dtype, shape


# --------------------------------------------------------------------------------------------
# Elementwise
_UNARY = {
    "Abs": "abs", "Neg": "neg", "Exp": "exp", "Log": "log", "Sqrt": "sqrt",
    "Reciprocal": "reciprocal", "Floor": "floor", "Ceil": "ceil", "Round": "round",
    "Sign": "sign", "Sin": "sin", "Cos": "cos", "Tan": "tan", "Asin": "asin", "Acos": "acos",
    "Atan": "atan", "Sinh": "sinh", "Cosh": "cosh", "Asinh": "asinh", "Acosh": "acosh",
    "Atanh": "atanh", "Erf": "erf", "Relu": "relu", "Sigmoid": "sigmoid", "Tanh": "tanh",
    "Softplus": "softplus", "Softsign": "softsign", "Not": "not", "IsNaN": "isnan",
    "IsInf": "isinf",
}
_BINARY = {
    "Add": "add", "Sub": "sub", "Mul": "mul", "Div": "div", "Pow": "pow", "Equal": "equal",
    "Less": "less", "LessOrEqual": "less_equal", "Greater": "greater",
    "GreaterOrEqual": "greater_equal", "And": "and", "Or": "or", "Xor": "xor", "PRelu": "prelu",
}


@importer(*_UNARY)
def _unary(node, ctx):
    ctx.pointwise(_UNARY[node.op_type], [ctx.inp(node, 0)], node.output[0], node.name or
                  node.output[0])


@importer(*_BINARY)
def _binary(node, ctx):
    ctx.pointwise(_BINARY[node.op_type], [ctx.inp(node, 0), ctx.inp(node, 1)], node.output[0],
                  node.name or node.output[0])


@importer("Mod")
def _mod(node, ctx):
    ctx.pointwise("mod", [ctx.inp(node, 0), ctx.inp(node, 1)], node.output[0],
                  node.name or node.output[0], fmod=int(_attrs(node).get("fmod", 0)))


@importer("Max", "Min", "Sum", "Mean")
def _variadic(node, ctx):
    op = {"Max": "max", "Min": "min", "Sum": "add", "Mean": "add"}[node.op_type]
    ins = [ctx.inp(node, i) for i in range(len(node.input))]
    if len(ins) == 1 and node.op_type != "Mean":
        ctx.pointwise("identity", ins, node.output[0], node.name or node.output[0])
        return
    prog = [{"op": "identity", "args": ["$0"], "dtype": None}] if len(ins) == 1 else \
        [{"op": op, "args": ["$0", "$1"], "dtype": None}]
    for k in range(2, len(ins)):
        prog.append({"op": op, "args": [f"%{len(prog) - 1}", f"${k}"], "dtype": None})
    if node.op_type == "Mean":
        prog.append({"op": "div", "args": [f"%{len(prog) - 1}", float(len(ins))], "dtype": None})
    ctx.layer("pointwise", ins, [node.output[0]], {"program": prog}, name=node.name or None)


@importer("LeakyRelu", "Elu", "Selu", "HardSigmoid")
def _param_act(node, ctx):
    a = _attrs(node)
    op, params = {
        "LeakyRelu": ("leaky_relu", {"alpha": a.get("alpha", 0.01)}),
        "Elu": ("elu", {"alpha": a.get("alpha", 1.0)}),
        "Selu": ("selu", {"alpha": a.get("alpha", 1.67326319217681884765625),
                          "gamma": a.get("gamma", 1.05070102214813232421875)}),
        "HardSigmoid": ("hard_sigmoid", {"alpha": a.get("alpha", 0.2),
                                         "beta": a.get("beta", 0.5)}),
    }[node.op_type]
    ctx.pointwise(op, [ctx.inp(node, 0)], node.output[0], node.name or node.output[0],
                  **{k: float(v) for k, v in params.items()})


@importer("Clip")
def _clip(node, ctx):
    x, lo, hi = ctx.inp(node, 0), ctx.inp(node, 1), ctx.inp(node, 2)
    ins, args = [x], ["$0"]
    for v in (lo, hi):
        if not v:
            args.append(None)  # no bound
        elif v in ctx.net.weights and ctx.net.weights[v].size == 1:
            args.append(ctx.net.weights[v].reshape(()).item())
        else:
            ins.append(v)
            args.append(f"${len(ins) - 1}")
    ctx.layer("pointwise", ins, [node.output[0]],
              {"program": [{"op": "clip", "args": args, "dtype": None}]},
              name=node.name or None)


@importer("Cast")
def _cast(node, ctx):
    ctx.pointwise("cast", [ctx.inp(node, 0)], node.output[0], node.name or node.output[0],
                  to=np_dtype_name(_attrs(node)["to"]))


@importer("Where")
def _where(node, ctx):
    ctx.pointwise("where", [ctx.inp(node, i) for i in range(3)], node.output[0],
                  node.name or node.output[0])


@importer("Identity")
def _identity(node, ctx):
    ctx.alias[node.output[0]] = ctx.inp(node, 0)


@importer("Constant")
def _constant(node, ctx):
    a = _attrs(node)
    if "value" in a:
        v = numpy_helper.to_array(a["value"])
    elif "value_float" in a:
        v = np.array(a["value_float"], np.float32)
    elif "value_floats" in a:
        v = np.array(a["value_floats"], np.float32)
    elif "value_int" in a:
        v = np.array(a["value_int"], np.int64)
    elif "value_ints" in a:
        v = np.array(a["value_ints"], np.int64)
    else:
        raise EngineBuildError(f"Constant {node.name!r} uses {sorted(a)}; only dense value, "
                               f"value_float(s) and value_int(s) are supported")
    ctx.net.tensors.pop(node.output[0], None)
    ctx.net.add_weight(np.array(v), node.output[0])


# --------------------------------------------------------------------------------------------
# Convolution, matmul
def _conv_attrs(a: dict, nsp: int) -> dict:
    return {"strides": list(a.get("strides", [1] * nsp)),
            "dilations": list(a.get("dilations", [1] * nsp)),
            "pads": list(a.get("pads", [0] * 2 * nsp)), "group": int(a.get("group", 1)),
            "auto_pad": _s(a.get("auto_pad", "NOTSET"))}


@importer("Conv")
def _conv(node, ctx):
    x, w, b = ctx.inp(node, 0), ctx.inp(node, 1), ctx.inp(node, 2)
    wv = ctx.const(node, 1)
    rank = wv.ndim if wv is not None else ctx.rank(node, 1) or ctx.rank(node, 0) or 4
    nsp = rank - 2
    # ONNX filter [Cout, Cin/g, *K] -> engine KRSC [Cout, *K, Cin/g].
    perm = [0, *range(2, rank), 1]
    if wv is not None:
        w2 = ctx.weight(np.ascontiguousarray(wv.transpose(perm)), w + "_krsc")
    else:
        w2 = ctx.tmp(w + "_krsc")
        ctx.layer("transpose", [w], [w2], {"perm": perm}, name=w2)
    xh = ctx.to_nhwc(x, rank, node.output[0])
    yh = ctx.tmp(node.output[0] + "_conv")
    ins, epi = [xh, w2], []
    if b:
        ins.append(b)
        epi.append({"op": "bias", "input": 2})
    ctx.layer("conv", ins, [yh], _conv_attrs(_attrs(node), nsp), epi, name=node.name or yh)
    ctx.from_nhwc(yh, rank, node.output[0])


@importer("ConvTranspose")
def _conv_transpose(node, ctx):
    x, w, b = ctx.inp(node, 0), ctx.inp(node, 1), ctx.inp(node, 2)
    wv = ctx.const(node, 1)
    rank = wv.ndim if wv is not None else ctx.rank(node, 1) or 4
    nsp = rank - 2
    # ONNX filter [Cin, Cout/g, *K] -> engine [Cin, *K, Cout/g].
    perm = [0, *range(2, rank), 1]
    if wv is not None:
        w2 = ctx.weight(np.ascontiguousarray(wv.transpose(perm)), w + "_nhwc")
    else:
        w2 = ctx.tmp(w + "_nhwc")
        ctx.layer("transpose", [w], [w2], {"perm": perm}, name=w2)
    a = _attrs(node)
    attrs = _conv_attrs(a, nsp)
    attrs["output_padding"] = list(a.get("output_padding", [0] * nsp))
    if "output_shape" in a:
        attrs["output_shape"] = list(a["output_shape"])[-nsp:]
    xh = ctx.to_nhwc(x, rank, node.output[0])
    yh = ctx.tmp(node.output[0] + "_deconv")
    ins, epi = [xh, w2], []
    if b:
        ins.append(b)
        epi.append({"op": "bias", "input": 2})
    ctx.layer("conv_transpose", ins, [yh], attrs, epi, name=node.name or yh)
    ctx.from_nhwc(yh, rank, node.output[0])


@importer("MatMul")
def _matmul(node, ctx):
    ctx.layer("matmul", [ctx.inp(node, 0), ctx.inp(node, 1)], [node.output[0]],
              {"transpose_a": False, "transpose_b": False, "alpha": 1.0}, name=node.name or None)


@importer("Gemm")
def _gemm(node, ctx):
    a = _attrs(node)
    A, B, C = ctx.inp(node, 0), ctx.inp(node, 1), ctx.inp(node, 2)
    ta, tb = bool(a.get("transA", 0)), bool(a.get("transB", 0))
    alpha, beta = float(a.get("alpha", 1.0)), float(a.get("beta", 1.0))
    ins, epi = [A, B], []
    if C and beta != 0.0:
        cv, bv = ctx.const(node, 2), ctx.const(node, 1)
        n = None if bv is None else bv.shape[0 if tb else 1]
        if cv is not None:
            cv = (cv.astype(np.float64) * beta).astype(cv.dtype) if beta != 1.0 else cv
            if n is not None and cv.size == n and (cv.ndim == 1 or cv.shape[0] == 1):
                ins.append(ctx.weight(cv.reshape(n), C + "_bias"))
                epi.append({"op": "bias", "input": 2})
            else:
                ins.append(ctx.weight(cv, C + "_scaled"))
                epi.append({"op": "add", "input": 2})
        else:
            if beta != 1.0:
                cs = ctx.tmp(C + "_beta")
                ctx.layer("pointwise", [C], [cs], {"program": [
                    {"op": "mul", "args": ["$0", beta], "dtype": None}]}, name=cs)
                C = cs
            ins.append(C)
            epi.append({"op": "add", "input": 2})
    ctx.layer("matmul", ins, [node.output[0]],
              {"transpose_a": ta, "transpose_b": tb, "alpha": alpha}, epi,
              name=node.name or None)


@importer("Einsum")
def _einsum(node, ctx):
    ctx.layer("einsum", [ctx.inp(node, i) for i in range(len(node.input))], [node.output[0]],
              {"equation": _s(_attrs(node)["equation"]).replace(" ", "")},
              name=node.name or None)


# --------------------------------------------------------------------------------------------
# Normalization
@importer("BatchNormalization")
def _batchnorm(node, ctx):
    a = _attrs(node)
    if a.get("training_mode", 0):
        raise EngineBuildError(f"BatchNormalization {node.name!r} has training_mode=1; only "
                               f"inference batch norm is supported (export in inference mode)")
    eps = float(a.get("epsilon", 1e-5))
    x = ctx.inp(node, 0)
    rank = ctx.rank(node, 0) or 4
    consts = [ctx.const(node, i) for i in range(1, 5)]
    bshape = (-1,) + (1,) * (rank - 2)
    if all(c is not None for c in consts):
        # Inference BN is y = x * s + t with s = gamma / sqrt(var + eps), t = beta - mean * s.
        g, b, m, v = (c.astype(np.float64) for c in consts)
        s = g / np.sqrt(v + eps)
        t = b - m * s
        dt = consts[0].dtype
        ws = ctx.weight(s.astype(dt).reshape(bshape), node.output[0] + "_scale")
        wt = ctx.weight(t.astype(dt).reshape(bshape), node.output[0] + "_shift")
        ctx.layer("pointwise", [x, ws, wt], [node.output[0]], {"program": [
            {"op": "mul", "args": ["$0", "$1"], "dtype": None},
            {"op": "add", "args": ["%0", "$2"], "dtype": None}]}, name=node.name or None)
        return
    ins = [x]
    for i in range(1, 5):  # runtime statistics: reshape each [C] operand to broadcast
        r = ctx.tmp(ctx.inp(node, i) + "_bc")
        ctx.layer("reshape", [ctx.inp(node, i)], [r], {"mode": "unsqueeze",
                                                       "axes": list(range(1, rank - 1))}, name=r)
        ins.append(r)
    ctx.layer("pointwise", ins, [node.output[0]], {"program": [
        {"op": "sub", "args": ["$0", "$3"], "dtype": None},
        {"op": "add", "args": ["$4", eps], "dtype": None},
        {"op": "sqrt", "args": ["%1"], "dtype": None},
        {"op": "div", "args": ["%0", "%2"], "dtype": None},
        {"op": "mul", "args": ["%3", "$1"], "dtype": None},
        {"op": "add", "args": ["%4", "$2"], "dtype": None}]}, name=node.name or None)


@importer("LayerNormalization")
def _layernorm(node, ctx):
    a = _attrs(node)
    rank = ctx.rank(node, 0)
    axis = int(a.get("axis", -1))
    if rank is None and axis >= 0:
        raise EngineBuildError(f"LayerNormalization {node.name!r}: the rank of its input is "
                               f"unknown; give the model input shapes")
    axes = list(range(axis % rank if rank else axis, rank)) if rank else [axis]
    outs = [o for o in node.output]
    while outs and not outs[-1]:
        outs.pop()
    outs = [o or ctx.tmp("unused") for o in outs]
    ctx.layer("normalization", [ctx.inp(node, 0), ctx.inp(node, 1), ctx.inp(node, 2)], outs,
              {"axes": axes, "epsilon": float(a.get("epsilon", 1e-5)), "from_axis": axis},
              name=node.name or None)


@importer("InstanceNormalization")
def _instancenorm(node, ctx):
    a = _attrs(node)
    rank = ctx.rank(node, 0) or 4
    ins = [ctx.inp(node, 0)]
    for i in (1, 2):
        v = ctx.const(node, i)
        if v is not None:
            ins.append(ctx.weight(v.reshape((-1,) + (1,) * (rank - 2)), ctx.inp(node, i) + "_bc"))
        else:
            r = ctx.tmp(ctx.inp(node, i) + "_bc")
            ctx.layer("reshape", [ctx.inp(node, i)], [r],
                      {"mode": "unsqueeze", "axes": list(range(1, rank - 1))}, name=r)
            ins.append(r)
    ctx.layer("normalization", ins, [node.output[0]],
              {"axes": list(range(2, rank)), "epsilon": float(a.get("epsilon", 1e-5))},
              name=node.name or None)


# --------------------------------------------------------------------------------------------
# Pooling, reductions
@importer("MaxPool", "AveragePool")
def _pool(node, ctx):
    a = _attrs(node)
    if len(node.output) > 1 and node.output[1]:
        raise EngineBuildError(f"MaxPool {node.name!r} asks for its Indices output, which the "
                               f"engine does not produce; drop that output")
    k = list(a["kernel_shape"])
    nsp = len(k)
    attrs = {"mode": "max" if node.op_type == "MaxPool" else "avg", "kernel": k,
             "strides": list(a.get("strides", [1] * nsp)),
             "dilations": list(a.get("dilations", [1] * nsp)),
             "pads": list(a.get("pads", [0] * 2 * nsp)), "ceil_mode": int(a.get("ceil_mode", 0)),
             "count_include_pad": int(a.get("count_include_pad", 0)),
             "auto_pad": _s(a.get("auto_pad", "NOTSET"))}
    xh = ctx.to_nhwc(ctx.inp(node, 0), nsp + 2, node.output[0])
    yh = ctx.tmp(node.output[0] + "_pool")
    ctx.layer("pool", [xh], [yh], attrs, name=node.name or yh)
    ctx.from_nhwc(yh, nsp + 2, node.output[0])


@importer("GlobalAveragePool", "GlobalMaxPool")
def _global_pool(node, ctx):
    rank = ctx.rank(node, 0) or 4
    ctx.layer("reduce", [ctx.inp(node, 0)], [node.output[0]],
              {"op": "mean" if node.op_type == "GlobalAveragePool" else "max",
               "axes": list(range(2, rank)), "keepdims": 1}, name=node.name or None)


_REDUCE = {"ReduceMean": "mean", "ReduceSum": "sum", "ReduceMax": "max", "ReduceMin": "min",
           "ReduceProd": "prod", "ReduceL1": "l1", "ReduceL2": "l2",
           "ReduceSumSquare": "sum_square", "ReduceLogSum": "log_sum",
           "ReduceLogSumExp": "log_sum_exp"}


def _attr_or_input(node, ctx, value):
    """Inputs [x, (operand 1)] and the value of an operand that moved from an attribute (older
    opsets) to input 1 (newer ones): a constant input 1 overrides ``value`` and is not a layer
    input; a computed one stays an input (resolved when the engine is built)."""
    ins = [ctx.inp(node, 0)]
    if len(node.input) > 1 and node.input[1]:
        v = ctx.const(node, 1)
        if v is None:
            ins.append(ctx.inp(node, 1))
        else:
            value = v.tolist()
    return ins, value


@importer(*_REDUCE)
def _reduce(node, ctx):
    a = _attrs(node)
    axes = a.get("axes")
    ins, axes = _attr_or_input(node, ctx, axes)
    attrs = {"op": _REDUCE[node.op_type], "axes": list(axes) if axes else None,
             "keepdims": int(a.get("keepdims", 1)),
             "noop_with_empty_axes": int(a.get("noop_with_empty_axes", 0))}
    ctx.layer("reduce", ins, [node.output[0]], attrs, name=node.name or None)


@importer("Softmax", "LogSoftmax")
def _softmax(node, ctx):
    ctx.layer("softmax", [ctx.inp(node, 0)], [node.output[0]],
              {"axis": int(_attrs(node).get("axis", -1)), "log": node.op_type == "LogSoftmax"},
              name=node.name or None)


@importer("ArgMax", "ArgMin")
def _argreduce(node, ctx):
    a = _attrs(node)
    ctx.layer("arg_reduce", [ctx.inp(node, 0)], [node.output[0]],
              {"op": "max" if node.op_type == "ArgMax" else "min", "axis": int(a.get("axis", 0)),
               "keepdims": int(a.get("keepdims", 1)),
               "select_last_index": int(a.get("select_last_index", 0))}, name=node.name or None)


@importer("TopK")
def _topk(node, ctx):
    a = _attrs(node)
    outs = [o or ctx.tmp("unused") for o in node.output]
    ctx.layer("topk", [ctx.inp(node, 0), ctx.inp(node, 1)], outs,
              {"axis": int(a.get("axis", -1)), "largest": int(a.get("largest", 1)),
               "sorted": int(a.get("sorted", 1))}, name=node.name or None)


@importer("CumSum")
def _cumsum(node, ctx):
    a = _attrs(node)
    ctx.layer("cumsum", [ctx.inp(node, 0), ctx.inp(node, 1)], [node.output[0]],
              {"exclusive": int(a.get("exclusive", 0)), "reverse": int(a.get("reverse", 0))},
              name=node.name or None)


# --------------------------------------------------------------------------------------------
# Shape and data movement
@importer("Reshape")
def _reshape(node, ctx):
    ctx.layer("reshape", [ctx.inp(node, 0), ctx.inp(node, 1)], [node.output[0]],
              {"mode": "onnx", "allowzero": int(_attrs(node).get("allowzero", 0))},
              name=node.name or None)


@importer("Flatten")
def _flatten(node, ctx):
    ctx.layer("reshape", [ctx.inp(node, 0)], [node.output[0]],
              {"mode": "flatten", "axis": int(_attrs(node).get("axis", 1))},
              name=node.name or None)


@importer("Squeeze", "Unsqueeze")
def _squeeze(node, ctx):
    mode = node.op_type.lower()
    axes = _attrs(node).get("axes")
    ins, axes = _attr_or_input(node, ctx, axes)
    ctx.layer("reshape", ins, [node.output[0]],
              {"mode": mode, "axes": None if axes is None else list(axes)},
              name=node.name or None)


@importer("Transpose")
def _transpose(node, ctx):
    perm = _attrs(node).get("perm")
    ctx.layer("transpose", [ctx.inp(node, 0)], [node.output[0]],
              {"perm": None if perm is None else list(perm)}, name=node.name or None)


@importer("Concat")
def _concat(node, ctx):
    ctx.layer("concat", [ctx.inp(node, i) for i in range(len(node.input))], [node.output[0]],
              {"axis": int(_attrs(node)["axis"])}, name=node.name or None)


@importer("Split")
def _split(node, ctx):
    a = _attrs(node)
    sizes = a.get("split")
    ins, sizes = _attr_or_input(node, ctx, sizes)
    outs = [o or ctx.tmp("unused") for o in node.output]
    ctx.layer("split", ins, outs, {"axis": int(a.get("axis", 0)),
                                   "sizes": None if sizes is None else list(sizes)},
              name=node.name or None)


@importer("Slice")
def _slice(node, ctx):
    ctx.layer("slice", [ctx.inp(node, i) for i in range(len(node.input))], [node.output[0]], {},
              name=node.name or None)


@importer("Pad")
def _pad(node, ctx):
    ctx.layer("pad", [ctx.inp(node, i) for i in range(len(node.input))], [node.output[0]],
              {"mode": _s(_attrs(node).get("mode", "constant"))}, name=node.name or None)


@importer("Gather", "GatherElements")
def _gather(node, ctx):
    kind = "gather" if node.op_type == "Gather" else "gather_elements"
    ctx.layer(kind, [ctx.inp(node, 0), ctx.inp(node, 1)], [node.output[0]],
              {"axis": int(_attrs(node).get("axis", 0))}, name=node.name or None)


@importer("GatherND")
def _gather_nd(node, ctx):
    ctx.layer("gather_nd", [ctx.inp(node, 0), ctx.inp(node, 1)], [node.output[0]],
              {"batch_dims": int(_attrs(node).get("batch_dims", 0))}, name=node.name or None)


@importer("ScatterND")
def _scatter_nd(node, ctx):
    ctx.layer("scatter_nd", [ctx.inp(node, i) for i in range(3)], [node.output[0]],
              {"reduction": _s(_attrs(node).get("reduction", "none"))}, name=node.name or None)


@importer("Expand", "Tile")
def _expand_tile(node, ctx):
    ctx.layer(node.op_type.lower(), [ctx.inp(node, 0), ctx.inp(node, 1)], [node.output[0]], {},
              name=node.name or None)


@importer("Shape")
def _shape(node, ctx):
    a = _attrs(node)
    ctx.layer("shape", [ctx.inp(node, 0)], [node.output[0]],
              {"start": int(a.get("start", 0)), "end": a.get("end")}, name=node.name or None)


@importer("Size")
def _size(node, ctx):
    ctx.layer("size", [ctx.inp(node, 0)], [node.output[0]], {}, name=node.name or None)


@importer("ConstantOfShape")
def _constant_of_shape(node, ctx):
    v = _attrs(node).get("value")
    arr = numpy_helper.to_array(v).reshape(-1) if v is not None else np.zeros(1, np.float32)
    ctx.layer("constant_of_shape", [ctx.inp(node, 0)], [node.output[0]],
              {"value": arr[0].item(), "dtype": arr.dtype.name}, name=node.name or None)


@importer("Range")
def _range(node, ctx):
    ctx.layer("range", [ctx.inp(node, i) for i in range(3)], [node.output[0]], {},
              name=node.name or None)


@importer("OneHot")
def _onehot(node, ctx):
    ctx.layer("onehot", [ctx.inp(node, i) for i in range(3)], [node.output[0]],
              {"axis": int(_attrs(node).get("axis", -1))}, name=node.name or None)


@importer("DepthToSpace", "SpaceToDepth")
def _depth_space(node, ctx):
    a = _attrs(node)
    rank = ctx.rank(node, 0) or 4
    attrs = {"blocksize": int(a["blocksize"])}
    kind = "depth_to_space" if node.op_type == "DepthToSpace" else "space_to_depth"
    if kind == "depth_to_space":
        attrs["mode"] = _s(a.get("mode", "DCR"))
    xh = ctx.to_nhwc(ctx.inp(node, 0), rank, node.output[0])
    yh = ctx.tmp(node.output[0] + "_" + kind)
    ctx.layer(kind, [xh], [yh], attrs, name=node.name or yh)
    ctx.from_nhwc(yh, rank, node.output[0])


@importer("Resize")
def _resize(node, ctx):
    a = _attrs(node)
    attrs = {"mode": _s(a.get("mode", "nearest")),
             "coordinate_transformation_mode": _s(a.get("coordinate_transformation_mode",
                                                        "half_pixel")),
             "nearest_mode": _s(a.get("nearest_mode", "round_prefer_floor")),
             "cubic_coeff_a": float(a.get("cubic_coeff_a", -0.75)),
             "exclude_outside": int(a.get("exclude_outside", 0)),
             "extrapolation_value": float(a.get("extrapolation_value", 0.0))}
    if a.get("antialias", 0) or a.get("axes") is not None or \
            _s(a.get("keep_aspect_ratio_policy", "stretch")) != "stretch":
        raise EngineBuildError(f"Resize {node.name!r}: antialias/axes/keep_aspect_ratio_policy "
                               f"(opset 18) are not supported; use opset 17 Resize")
    ctx.layer("resize", [ctx.inp(node, i) for i in range(len(node.input))], [node.output[0]],
              attrs, name=node.name or None)


@importer("NonMaxSuppression")
def _nms(node, ctx):
    ctx.layer("nms", [ctx.inp(node, i) for i in range(len(node.input))], [node.output[0]],
              {"center_point_box": int(_attrs(node).get("center_point_box", 0))},
              name=node.name or None)


@importer("QuantizeLinear", "DequantizeLinear")
def _qdq(node, ctx):
    a = _attrs(node)
    ins = [ctx.inp(node, i) for i in range(len(node.input))]
    attrs = {"axis": int(a.get("axis", 1))}
    if node.op_type == "QuantizeLinear":
        zp = ctx.net.tensors.get(ins[2]) if len(ins) > 2 and ins[2] else None
        attrs["dtype"] = zp.dtype if zp is not None and zp.dtype else "uint8"
    ctx.layer("quantize" if node.op_type == "QuantizeLinear" else "dequantize", ins,
              [node.output[0]], attrs, name=node.name or None)
