"""Precision assignment: FP32, FP16 (fp16 storage, fp32 accumulation), INT8 and FP8.

FP16: conv / conv_transpose / matmul store their weights in float16 and every layer stores its
float32 activations in float16, except the layers in ``FP32_KINDS`` (softmax, reductions,
normalization, top-k, ...) and pointwise layers that square, raise or exponentiate values a
reduction or a pool reads (a variance's (x - mean)^2), with the layers between and such pools
(``_variance_terms``), layers that only move a reduction's float32 output (an expand_dims of
a row sum), the steps of a running sum (``_scan_steps``), and the gate of each
squeeze-and-excitation block (mean, FC steps:
``se_fusion.se_gate_layers``; its scale of x stays FP16), which compute in float32 and keep
float32 outputs because fp16 loses too much (or overflows) there; softmax and normalization store
their main output in float16 all the same (``HALF_OUTPUT_KINDS``). Network inputs and
outputs keep their declared dtypes (as in TF-TRT). Epilogue vectors (bias/scale) stay float32:
they are applied to the fp32 accumulator.

INT8 / FP8 (E4M3; tftrt's extension, Hopper-class GPUs): the conv and GEMM layers the network's
quantization table gives ranges for become quantized layers (``quantization.py``: int8 / fp8
operands, int32 / fp32 accumulation, per-channel weight scales, a dequantizing and, for INT8,
requantizing epilogue); everything else is assigned as in FP16. The table comes from
calibration or from the fake-quantization ops of the TF graph. A network with neither a table
nor explicit QuantizeLinear / DequantizeLinear layers cannot be built in INT8 / FP8 (the
converter runs such segments in FP16, TF-TRT's fallback). Explicit Q/DQ layers without a table
run as written, in fp32.
"""

from __future__ import annotations

import logging
from typing import Dict, List, Optional

import numpy as np

from tftrt.engine import quantization as Q
from tftrt.engine.errors import EngineBuildError
from tftrt.engine.network import COMPARISONS, Layer, Network, put_back
from tftrt.engine.passes.se_fusion import se_gate_layers

log = logging.getLogger("tftrt.engine")

PRECISIONS = ("FP32", "FP16", "INT8", "FP8")
FP32_KINDS = frozenset({"softmax", "reduce", "normalization", "topk", "arg_reduce", "cumsum",
                        "nms", "range", "shape", "size", "quantize", "dequantize", "einsum"})
# Computed in fp32, main output stored fp16 (a probability / a normalized value loses nothing
# that matters; TensorRT's FP16 softmax and layer norm do the same). Statistics stay fp32.
HALF_OUTPUT_KINDS = frozenset({"softmax", "normalization"})
_WEIGHTED = ("conv", "conv_transpose", "matmul")


def normalize_precision(precision: str) -> str:
    p = str(precision).upper().replace("FLOAT", "FP")
    if p not in PRECISIONS:
        raise EngineBuildError(f"precision {precision!r} is not supported; use one of "
                               f"{', '.join(PRECISIONS)}")
    return p


def apply_precision(net: Network, precision: str, table: Optional[dict] = None,
                    probes=(), keep_fp16: Optional[dict] = None) -> Network:
    """A copy of ``net`` with ``layer.precision`` set and tensors/weights stored accordingly.

    Args:
      table: the quantization table (INT8 / FP8; see quantization.py).
      probes: network outputs stored as their producers store them (float16 from an FP16
        layer) instead of float32: values `tftrt compare --per-layer` marks as outputs, which
        hid every float16 storage loss (helper hunt, 2026-12-02).
      keep_fp16: INT8 / FP8: layer name -> why it stays FP16 although the table allows it
        (builder.timed_precision).
    Raises:
      EngineBuildError: INT8 / FP8 without a table or Q/DQ layers, or an unknown precision.
    """
    p = normalize_precision(precision)
    net = net.copy()
    if p in Q.QUANTIZED_PRECISIONS:
        if table is None:
            if p == "INT8" and any(l.kind in ("quantize", "dequantize") for l in net.layers):
                for l in net.layers:
                    l.precision = "FP32"  # explicit Q/DQ layers run as written, in fp32
                return net
            raise EngineBuildError(
                f"{p} precision needs quantization ranges: calibrate the model (use_calibration"
                f"=True with a calibration_input_fn; TF1's TrtGraphConverter: calibrate()), "
                f"give it quantization ops (FakeQuant*, "
                f"QuantizeAndDequantize*; in an ONNX network QuantizeLinear/DequantizeLinear), or "
                f"use precision FP16")
        try:
            Q.check_table(table)
        except ValueError as e:
            raise EngineBuildError(str(e)) from e
        quantized = set(Q.quantize_network(net, p, table, keep_fp16=keep_fp16))
        # tensors calibrated past half of float16's range stay float32 in the layers around
        # the quantized ones too (a Reshape of 3.6e6 before an INT8 GEMM overflowed to inf and
        # the engine answered 3x off, silently: helper hunt, 2026-12-02)
        # (and those calibrated below float16's normal range: Q.fp16_cannot_hold)
        wide = {t for t, v in table.get("tensors", {}).items()
                if v is not None and Q.fp16_cannot_hold(float(v))}
        _assign_half(net, skip=quantized, probes=probes, wide=wide)
        return net
    if p == "FP32":
        for l in net.layers:
            l.precision = "FP32"
        return net
    _assign_half(net, probes=probes)
    return net


# Ops whose result stays small however large their input (or that scale it back down): growth
# stops there. Any other op passes a large input on (a sum, a ReLU, a max, a cast...).
_BOUNDED = frozenset({"tanh", "sigmoid", "hard_sigmoid", "erf", "softsign", "sin", "cos",
                      "atan", "sign", "sqrt", "log", "reciprocal", "equal", "greater",
                      "greater_equal", "less", "less_equal", "isinf", "isnan", "and", "or",
                      "not", "xor"})
_EXPLODES = frozenset({"pow", "exp", "cosh", "sinh"})
# Ops that keep a value an affine function of one tensor (c * x + d, -x, |x|, x / c).
_AFFINE_UNARY = frozenset({"neg", "abs", "identity", "cast"})
_AFFINE_BINARY = frozenset({"add", "sub", "mul", "div"})


def _affine_bases(net: Network) -> dict:
    """Per tensor produced by a pointwise layer, the tensor it is an affine function of
    (c * x + d, -x, |x|, x * w with w a weight, chains of them through pointwise layers);
    tensors missing from the dict are their own base. One pass in layer order (topological):
    no recursion, no depth limit, linear in the network."""
    bases: dict = {}
    for l in net.layers:
        if l.kind == "pointwise" and l.attrs.get("program") and l.outputs:
            vals = _program_values(net, l, bases, ())
            if vals and vals[-1][0] is not None and vals[-1][0][0] == "tensor":
                bases[l.outputs[0]] = vals[-1][0][1]
    return bases


def _program_values(net: Network, layer: Layer, bases: dict, growing):
    """Per step of pointwise ``layer``'s program: (what its value is an affine function of:
    ``("tensor", name)``, or ``("step", i)`` for a step that is no such function of one
    tensor, None for a constant; whether it may be far larger than the inputs' scale: a
    square, i.e. a product of two affine functions of one value (``x * x``, ``mul $0 $1`` of
    one tensor given twice, ``h * (h * 0.5)`` as Grappler writes ``h * h * 0.5``, ``d * d * w``
    with ``d = x - m`` and ``w`` a weight), a power, an exponential, or what a growing value
    (an input in ``growing``) passes through; a quotient grows as its numerator does).
    Weight tensors count as constants; ``bases``: :func:`_affine_bases` (so far)."""
    vals = []

    def arg(a):  # "$k": input k (one tensor given twice is one value), "%k": step k
        if isinstance(a, str) and a[:1] == "%":
            return vals[int(a[1:])]
        if isinstance(a, str) and a[:1] == "$":
            t = layer.inputs[int(a[1:])]
            if t not in net.weights:
                return (("tensor", bases.get(t, t)), t in growing)
        return (None, False)
    for n, st in enumerate(layer.attrs.get("program", ())):
        op, args = st.get("op"), [arg(a) for a in st.get("args", ())]
        live = [a for a in args if a[0] is not None]
        base, grows = ("step", n), any(a[1] for a in live)
        if op in _EXPLODES:
            grows = True
        elif op in _BOUNDED:
            grows = False
        elif op in _AFFINE_UNARY and len(live) == 1:
            base = live[0][0]
        elif op in _AFFINE_BINARY and len(args) == 2 and len(live) == 1 and \
                (op != "div" or args[1][0] is None):
            base = live[0][0]
        elif op == "mul" and len(live) == 2 and live[0][0] == live[1][0]:
            grows = True          # a square
        elif op == "div" and len(args) == 2:
            grows = args[0][1]    # a growing denominator makes it smaller: x / (1 + exp(-x))
        elif op == "min" and live:
            grows = all(a[1] for a in live) and len(live) == len(args)
        vals.append((base, grows))
    return vals


def _grows(net: Network, layer: Layer, bases: dict, growing=frozenset()) -> bool:
    """Whether pointwise ``layer``'s output may be far larger than its inputs' scale (where
    float16, max 65504, overflows first): see :func:`_program_values`. A program that squares
    inside and then bounds the value (the cube inside GELU's tanh) does not grow."""
    vals = _program_values(net, layer, bases, growing)
    return bool(vals) and vals[-1][1]


# Layers that move values without computing new ones: a square reaches its reduction through
# them (GroupNormalization reshapes, a transpose before a mean).
_MOVES = frozenset({"transpose", "reshape", "slice", "expand", "tile", "concat", "split", "pad",
                    "depth_to_space", "space_to_depth", "gather", "gather_elements",
                    "gather_nd", "resize"})
# Layers that sum, pool or rank what they read (in FP32 or not): a square they read must be
# stored as float32, or they read its float16 inf.
_READS_ALL = frozenset({"reduce", "pool", "einsum", "topk", "arg_reduce", "cumsum",
                        "normalization", "softmax"})


def _saturates(net: Network, layer: Layer, t: str) -> bool:
    """Whether pointwise ``layer`` gives (nearly) the same output when its input ``t`` is
    +inf as when it is very large (tanh, sigmoid, erf: a float16 inf stored for ``t`` does no
    harm there), the other inputs 1; sqrt and log of inf stay inf, and such a reader needs
    ``t`` stored as float32."""
    from tftrt.engine.backends.numpy_ops import run_program
    ins = [np.array([1.0], np.float32) for _ in layer.inputs]

    def out(v):
        for k, name in enumerate(layer.inputs):
            if name == t:
                ins[k] = np.array([v], np.float32)
        with np.errstate(all="ignore"):
            return float(np.asarray(run_program(layer.attrs["program"], ins),
                                    np.float64).reshape(-1)[0])
    try:
        a, b = out(np.inf), out(1e6)
    except Exception:  # noqa: BLE001 -- a program the probe cannot run: not known safe
        return False
    return bool(np.isfinite(a) and np.isfinite(b) and abs(a - b) <= 1e-2 * max(1.0, abs(b)))


def _variance_terms(net: Network) -> set:
    """Pointwise layers whose output grows (a square, a power, an exponential:
    :func:`_grows`) and that a layer of :data:`_READS_ALL` (a reduction, a pool, an einsum, a
    top-k...) or a pointwise layer that bounds it (``sqrt``: a float16 inf stored before it
    stays inf) reads, directly or through layers that only move values (:data:`_MOVES`) or
    pointwise layers the large values pass through (``relu(sq - 5)``, ``sq + 1``), and every
    layer on such a path (the pools too): kept in
    FP32 ((x - mean)^2 of a variance no norm_fusion pattern took: GroupNormalization, a
    LayerNormalization over another axis, an RMS norm, l2_normalize, L2 pooling; exp(x) of
    a hand-written softmax or log-sum-exp). Stored in fp16 the square overflowed once
    |x - mean| > 256, the variance became inf and the output beta (helper hunt, 2026-12-01:
    relative error 1.0); a max of squares read the inf too, and every path to a reduction
    counts, not the first found (helper hunts, 2026-12-02)."""
    readers = net.consumers()
    bases = _affine_bases(net)
    keep = set()
    for l in net.layers:
        if l.kind != "pointwise" or not _grows(net, l, bases):
            continue
        came_from = {l.name: None}
        stack, hits = [l], []
        while stack:
            cur = stack.pop()
            for t in cur.outputs:
                for r in readers.get(t, ()):
                    if r.kind in _READS_ALL:
                        hits.append(cur.name)
                        if r.kind == "pool":
                            keep.add(r.name)
                    elif r.name in came_from:
                        continue
                    elif r.kind in _MOVES:
                        came_from[r.name] = cur.name
                        stack.append(r)
                    elif r.kind == "pointwise":
                        if _grows(net, r, bases, growing={t}):
                            came_from[r.name] = cur.name
                            stack.append(r)
                        elif not _saturates(net, r, t):  # it bounds the value, but a float16
                            hits.append(cur.name)        # inf stored before it stays inf
        for name in hits:  # every layer from the square to the hit, even past layers kept
            while name is not None:  # by another square's walk (two squares meeting)
                keep.add(name)
                name = came_from[name]
    return keep


# Integer types whose every value float16 holds exactly (|v| <= 2048): casts of them (an uint8
# image) may be stored as float16.
_EXACT_IN_HALF = frozenset({"bool", "int8", "uint8"})


def _float32_sources(net: Network) -> set:
    """Pointwise and moving layers (:data:`_MOVES`) computed from run-time integers wider than
    float16 holds exactly, with no float16 activation among their inputs (only float32
    weights and such layers' outputs): a cast of int32 positions or timestamps, a gather by
    a run-time index from a float32 table such as a noise schedule, the angles of a
    sinusoidal encoding made from them. Kept float32, as TF and Keras' mixed precision keep
    an explicit float32 value: stored as float16, integers past 2048 were rounded and past
    65504 inf (sin of them NaN), and 1 - abar[t] of a gathered schedule cancelled to 0 (FP16
    hunt, 2026-12-02). So are GEMMs and einsums of such values with weights only (RoPE's
    angles as ``einsum("i,j->ij", positions, inv_freq)``: an FP16 matmul rounded positions
    past 2048). Casts of bool / int8 / uint8 (an image) stay float16 (exact there), and so
    do weights moved alone (a class token broadcast) and rows gathered from a 2-D table by
    token ids (embeddings: float16 as in Keras' mixed precision)."""
    weights = {w for w, v in net.weights.items() if np.asarray(v).dtype == np.float32}
    exact: set = set()
    names = set()

    def kind(t):
        return np.dtype(net.tensors[t].dtype or "float32")
    for l in net.layers:
        if l.kind not in ("pointwise", "matmul", "einsum") and l.kind not in _MOVES:
            continue
        ins = [i for i in l.inputs if i]
        floats = [i for i in ins if kind(i).kind == "f"]
        # run-time integers float16 does not hold exactly, except into a GEMM (of exact
        # values only) or as the ids of rows of a 2-D table (embeddings: not exact values)
        from_ints = l.kind not in ("matmul", "einsum") and any(
            kind(i).kind in "iu" and i not in net.weights and
            kind(i).name not in _EXACT_IN_HALF for i in ins) and not (
            l.kind.startswith("gather") and
            any(i in weights and np.ndim(net.weights[i]) >= 2 for i in floats))
        if all(i in exact or i in weights for i in floats) and \
                (from_ints or any(i in exact for i in floats)) and \
                any(net.tensors[o].dtype == "float32" for o in l.outputs if o):
            names.add(l.name)
            exact.update(o for o in l.outputs if o)
    return names


def _assign_half(net: Network, skip=frozenset(), probes=(), wide=frozenset()) -> None:
    """FP16 assignment (module doc) of every layer not in ``skip``, in place; outputs in
    ``probes`` are stored as their producers store them; layers with an output in ``wide``
    (calibrated past float16's safe range) stay FP32."""
    keep = set(net.inputs) | (set(net.outputs) - set(probes)) | set(wide)
    uses = {}
    for l in net.layers:
        for i in l.inputs:
            uses[i] = uses.get(i, 0) + 1
    fp32 = _variance_terms(net) | _float32_sources(net) | se_gate_layers(net) | {
        l.name for l in net.layers if any(o in wide for o in l.outputs)} | \
        _weights_past_half(net) | _ranked_only(net) | _scan_steps(net)
    # float32 outputs of reductions (and of moves of them): a move after one keeps them
    # float32. Stored as float16, a row sum past 65504 that x / sum[:, None] divides by
    # became inf and the answer 0 (a keepdims sum, with no move, was exact; FP16 hunt, s48)
    reduced = set()
    for l in net.layers:
        if l.name in skip:
            continue
        moves_reduced = l.kind in _MOVES and _reads_only(net, l, reduced)
        l.precision = "FP32" if l.kind in FP32_KINDS or l.name in fp32 or moves_reduced \
            else "FP16"
        if l.kind in _REDUCED_KINDS or moves_reduced:
            reduced.update(o for o in l.outputs if o and net.tensors[o].dtype == "float32")
        if l.kind in HALF_OUTPUT_KINDS and l.outputs[0] not in keep and \
                net.tensors[l.outputs[0]].dtype == "float32":
            net.tensors[l.outputs[0]].dtype = "float16"
        if l.precision != "FP16":
            continue
        for o in l.outputs:
            info = net.tensors[o]
            if o not in keep and info.dtype == "float32":
                info.dtype = "float16"
        if l.kind in _WEIGHTED:
            for k in (0, 1):
                w = l.inputs[k]
                if w in net.weights and net.weights[w].dtype == np.float32:
                    half = net.weights[w].astype(np.float16)
                    if uses.get(w, 0) == 1:
                        net.set_weight(w, half)
                    else:
                        l.inputs[k] = net.add_weight(half, w + "_fp16")
    _cast_gemm_inputs_to_fp16(net)
    _cast_compared_inputs_to_fp16(net)


def _scan_steps(net: Network) -> set:
    """The layers of a running sum (``cumsum``, FP32_KINDS) as converters/scan.py lowers it:
    y + pad(slice(y)) steps (a shifted copy of y added to y), and the shift of an exclusive
    one before them. Kept FP32: stored as float16, running sums past 65504 became inf where
    TF's answer (a CDF, cumsum(w) / sum(w)) was in [0, 1] (FP16 hunt, s48)."""
    producer = net.producers()

    def shift_of(t):
        """(pad, slice) when ``t`` is a pad of a slice, else None."""
        pad = producer.get(t)
        if pad is None or pad.kind != "pad":
            return None
        cut = producer.get(pad.inputs[0])
        return (pad, cut) if cut is not None and cut.kind == "slice" else None
    keep = set()
    for l in net.layers:
        acts = [i for i in l.inputs if i and i not in net.weights]
        if l.kind != "pointwise" or len(acts) < 2:
            continue  # (the last step may have taken the layers after it: 3+ inputs)
        for moved in acts:
            shift = shift_of(moved)
            y = shift[1].inputs[0] if shift is not None else None
            if y in acts and y != moved:
                keep.update({l.name, shift[0].name, shift[1].name})
                first = shift_of(y)  # an exclusive scan's first shift
                if first is not None:
                    keep.update({first[0].name, first[1].name})
    return keep


# Layers whose float32 output (FP32_KINDS) is a reduction of what they read: small, and often
# past float16's range (a sum of 2,000 values of 50)
_REDUCED_KINDS = frozenset({"reduce", "cumsum", "topk"})


def _reads_only(net: Network, layer: Layer, tensors: set) -> bool:
    """Whether every float activation ``layer`` reads is one of ``tensors`` (at least one)."""
    floats = [i for i in layer.inputs if i and i not in net.weights and
              np.dtype(net.tensors[i].dtype or "float32").kind == "f"]
    return bool(floats) and all(i in tensors for i in floats)


def _ranked_only(net: Network) -> set:
    """Pointwise layers read only by rankings (top-k, arg-max / arg-min, which run in FP32):
    kept FP32, so a value is not rounded to float16 just before it is ranked. tf.sort /
    tf.argsort ascending is top_k(-x): the negation stored as float16 tied values float32
    told apart, and the order of 31 of 32 close values changed, where the descending sort of
    the same values (top_k(x), reading x itself) was exact (review hunt, 2026-12-04)."""
    readers = net.consumers()
    keep = set()
    for l in net.layers:
        if l.kind != "pointwise":
            continue
        rs = [r for o in l.outputs for r in readers.get(o, ())]
        if rs and all(r.kind in ("topk", "arg_reduce") for r in rs) and \
                not any(o in net.outputs for o in l.outputs):
            keep.add(l.name)
    return keep


def _weights_past_half(net: Network) -> set:
    """Conv, transposed-conv and GEMM layers with a float32 weight float16 cannot hold (a
    finite value past +-65504): kept FP32. Stored as float16 the weight became inf, and a
    sum of inf terms of both signs NaN: a per-channel scale of 2e5 folded into a filter gave
    a NaN channel where TF's was finite (fusion hunt, 2026-12-04)."""
    big = set()
    limit = float(np.finfo(np.float16).max)
    for l in net.layers:
        if l.kind not in _WEIGHTED:
            continue
        for k in (0, 1):
            w = net.weights.get(l.inputs[k]) if k < len(l.inputs) else None
            if w is not None and w.dtype == np.float32 and w.size:
                finite = np.abs(w[np.isfinite(w)])
                if finite.size and float(finite.max()) > limit:
                    big.add(l.name)
    if big:
        log.info("%d layer(s) with weights past float16's range (+-65504) stay FP32 in this "
                 "FP16 engine: %s", len(big), ", ".join(sorted(big)[:5]))
    return big


def _cast_compared_inputs_to_fp16(net: Network) -> None:
    """Rounds a float32 network input to float16 where an FP16 comparison also reads a
    float16 activation: a value compared with a float16 copy of itself (``x == reverse(
    reverse(x))``, ``x <= tile(x)[..., ::2]``: the moves store float16) came out unequal, a
    whole bool output flipped where TF's is exact (numerics hunt, 2026-12-04). TensorRT's
    FP16 comparison reads both operands in one precision too. So are float32 constants
    float16 can hold: ``relu(x) >= 0.1`` with x = 0.1 compared float16 0.09998 with float32
    0.1 and answered False, where TF (both float32) and TensorRT (both float16) answer True
    (dtype hunt, 2026-12-04). Other float32 operands (kept so for their range or exactness)
    are left as they are."""
    inputs = set(net.inputs)
    casts = {}
    halves: Dict[str, str] = {}  # float32 weight -> its float16 copy
    layers = []
    for l in net.layers:
        program = l.attrs.get("program") or () if l.kind == "pointwise" else ()
        if l.precision == "FP16" and any(st.get("op") in COMPARISONS for st in program):
            acts = [i for i in l.inputs if i and i not in net.weights]
            if any(net.tensors[i].dtype == "float16" for i in acts):
                compared = {int(a[1:]) for st in program if st.get("op") in COMPARISONS
                            for a in st.get("args", ()) if isinstance(a, str) and
                            a.startswith("$")}
                # scalar constants elementwise_fusion inlined into the program
                l.attrs["program"] = [
                    dict(st, args=[_fp16_value(a) for a in st.get("args", ())])
                    if st.get("op") in COMPARISONS else st for st in program]
                for k, name in enumerate(l.inputs):
                    if name in net.weights:
                        if k in compared:  # (a weight the layer only selects stays)
                            l.inputs[k] = _fp16_weight(net, name, halves)
                        continue
                    if name not in inputs or net.tensors[name].dtype != "float32":
                        continue
                    l.inputs[k] = _fp16_copy(net, name, casts, layers)
        layers.append(l)
    net.layers = layers


def _fp16_value(a):
    """A float literal of a program on float16's grid where float16 holds it; others as
    they are."""
    if isinstance(a, float) and not isinstance(a, bool) and np.isfinite(a) and \
            abs(a) <= float(np.finfo(np.float16).max):
        return float(np.float16(a))
    return a


def _fp16_weight(net: Network, name: str, halves: Dict[str, str]) -> str:
    """A float32 weight's float16 copy where float16 holds every value (finite, within
    +-65504), else the weight itself."""
    w = net.weights[name]
    if w.dtype != np.float32:
        return name
    if name not in halves:
        finite = np.isfinite(w)
        if np.any(np.abs(w[finite]) > np.finfo(np.float16).max):
            halves[name] = name
        else:
            halves[name] = net.add_weight(w.astype(np.float16), name + "_fp16")
    return halves[name]


_FP16_CAST = [{"op": "cast", "args": ["$0"], "dtype": "float16", "to": "float16"}]


def _fp16_copy(net: Network, name: str, casts: dict, layers: list) -> str:
    """The float16 copy of tensor ``name``: a cast layer appended to ``layers`` the first
    time, remembered in ``casts`` (one cast per tensor, however many layers read it)."""
    if name not in casts:
        out = net.add_tensor(net.unique_name(name + "_fp16"), "float16",
                             net.tensors[name].shape)
        layers.append(Layer(out, "pointwise", [name], [out],
                            {"program": [dict(st) for st in _FP16_CAST]}, precision="FP16"))
        casts[name] = out
    return casts[name]


def float32_x_reads() -> bool:
    """Whether an FP16 conv whose implementation reads a float32 x itself does so instead of
    reading the float16 copy a cast layer makes (env TFTRT_FLOAT32_X, default on;
    :func:`absorb_input_casts`)."""
    from tftrt.env import env_bool
    return env_bool("TFTRT_FLOAT32_X", True)


def absorb_input_casts(net: Network, reads_float32) -> List[str]:
    """After tactics are chosen (builder._finish): a float32 -> float16 cast layer
    (:func:`_fp16_copy`'s: an image network's float32 input before its FP16 stem) whose every
    reader takes its output as x (input 0 only) with an implementation that reads float32 x,
    rounding each element to float16 on load as the cast does (``reads_float32(net, layer)``,
    the backend's: the CuPy backend's ``stem_mma``), is removed and its readers read the
    float32 tensor, marked ``attrs["float32_x"]`` (the CuPy backend then gives them only to
    implementations that read it): the cast as it was (its layer, its place in the network
    and its output tensor), so that :func:`restore_input_casts` can give it back. The same
    answers bit for bit; the cast's pass over the image (read 4 bytes, write 2 an element:
    ResNet50's input at batch 128, 40.6 us of an H100's 2.72 ms INT8 engine) and its buffer
    are gone, the stem reads 4 bytes instead of 2.
    Returns the layers that now read float32 x."""
    if not float32_x_reads():
        return []
    consumers = net.consumers()
    changed: List[str] = []
    at = {l.name: k for k, l in enumerate(net.layers)}
    for cast in list(net.layers):
        if cast.kind != "pointwise" or len(cast.inputs) != 1 or len(cast.outputs) != 1 or \
                cast.attrs.get("program") != _FP16_CAST:
            continue
        src, out = cast.inputs[0], cast.outputs[0]
        users = consumers.get(out, [])
        if out in net.outputs or net.tensors[src].dtype != "float32" or \
                net.tensors[out].dtype != "float16" or not users or \
                any(u.inputs[0] != out or out in u.inputs[1:] or not reads_float32(net, u)
                    for u in users):
            continue
        info = net.tensors[out]
        for u in users:
            u.inputs[0] = src
            u.attrs["float32_x"] = {
                "cast": cast.to_json(), "at": at[cast.name],
                "output": {"name": out, "dtype": info.dtype, "shape": list(info.shape)}}
            changed.append(u.name)
        net.layers.remove(cast)
        del net.tensors[out]
    return changed


def restore_input_casts(net: Network) -> None:
    """Undoes :func:`absorb_input_casts` on ``net`` (edited in place): each cast a layer at
    its place again, its readers reading its output without ``float32_x``. A layer marked
    ``True`` (a plan from before the cast was recorded, s53) keeps its mark."""
    from tftrt.engine.network import TensorInfo
    casts = {}
    for layer in net.layers:
        rec = layer.attrs.get("float32_x")
        if not isinstance(rec, dict):
            continue
        del layer.attrs["float32_x"]
        out = rec["output"]
        layer.inputs[0] = out["name"]
        net.tensors[out["name"]] = TensorInfo(out["name"], out["dtype"], tuple(out["shape"]))
        casts[out["name"]] = rec
    put_back(net.layers, [(rec["at"], Layer.from_json(rec["cast"])) for rec in casts.values()])


def _cast_gemm_inputs_to_fp16(net: Network) -> None:
    """Inserts float32 -> float16 casts in front of FP16 conv/matmul activation operands (a
    network input, or the output of an FP32 layer), so that cuDNN / cuBLASLt see one dtype:
    every float activation operand of an FP16 conv/conv_transpose/matmul (residual included)
    is float16. Pointwise layers take mixed dtypes as they are."""
    casts = {}
    layers = []
    for l in net.layers:
        if l.precision == "FP16" and l.kind in _WEIGHTED:
            epi_biases = {e["input"] for e in l.epilogue if e["op"] in ("bias", "scale")}
            for k, name in enumerate(l.inputs):
                if not name or name in net.weights or k in epi_biases or \
                        net.tensors[name].dtype != "float32":
                    continue
                l.inputs[k] = _fp16_copy(net, name, casts, layers)
        layers.append(l)
    net.layers = layers
