"""INT8 and FP8 layers: number formats, the quantization table, and the network pass.

Which layers are quantized
--------------------------
``conv`` layers and ``matmul`` layers whose second operand is a constant 2-D weight (GEMMs)
run in INT8 (or FP8 E4M3 under ``precision="FP8"``) when the *quantization table* gives a range
for their activation input and, where the table holds a per-layer error measured on the
calibration data, that error is at most :data:`MAX_LAYER_ERROR` of the format. Every other layer
runs as in an FP16 engine. ``conv_transpose`` and matmuls of two activations (attention) stay
FP16.

A quantized layer (``layer.precision`` "INT8" / "FP8", ``layer.attrs["quant"]``):

* input 0 is quantized on entry with the per-tensor scale ``s_x = amax / QMAX`` (symmetric,
  zero point 0) -- unless the tensor is already int8 (its producer requantized it, below);
* input 1 (the weight) is stored quantized, per output channel: ``s_w[c] = max|w_c| / QMAX``;
  INT8 as int8 values, FP8 as E4M3 bit patterns (uint8, the layout cuBLASLt / cuDNN read);
* the products accumulate in int32 (INT8) or fp32 (FP8);
* the epilogue starts with a ``scale`` step by ``s_x * s_w[c]`` (and the matmul's alpha): the
  dequantization, applied to the fp32 accumulator; bias, activation and residual follow as in
  any fused layer;
* INT8 only: when every consumer of the output is an INT8 layer reading it as its input 0
  (quantized with the output's own calibrated scale) or adding it as a residual in its
  epilogue, the output is *requantized* in the epilogue (``quant["output_scale"]``) and
  stored as int8; a residual ``add`` step reading it carries the scale (``{"op": "add",
  "input": i, "scale": s}``: ``y + float(q) * s``, the product rounded to float32 on its own).
  ResNet block outputs, read by the next block's first conv and added by its last, stay
  int8 that way -- unless env TFTRT_INT8_RESIDUAL=0 (:func:`int8_residuals`), where an
  output some INT8 layer adds as a residual is stored as float16, as any other output is
  (the declared dtype for network outputs).
* an image stem -- a conv / GEMM reading the network input (through no other conv / GEMM)
  that reduces over at most :data:`STEM_CHANNELS` channels per group -- stays FP16 unless
  TFTRT_QUANTIZE_STEM=1; the calibrator measures its error either way, so a build with the
  switch on still keeps a stem that quantizes badly in FP16.

Rounding and saturation (what the numpy backend simulates, bit for bit, and what the GPU
kernels must do): ``q = saturate(round_half_even(x * inv_scale))`` with ``inv_scale`` the
float32 reciprocal of the scale. INT8 saturates to [-127, 127] and maps NaN to 0 (PTX
``cvt.rni.sat.s8.f32``); FP8 E4M3 rounds to nearest even on the E4M3 grid, saturates to +-448
and keeps NaN (``cvt.rn.satfinite.e4m3x2.f32``). The int32 accumulator converts to float32
with round-to-nearest-even.

The quantization table
----------------------
A JSON object stored in the segment ONNX model's ``metadata_props`` under
:data:`METADATA_KEY` (so a saved segment network carries its ranges, and a plan built from
other ranges does not match the network digest)::

    {"version": 1, "source": "calibration" | "graph" | "calibration+graph",
     "precision": "INT8", "method": "entropy", "batches": 16,
     "tensors": {tensor name: amax},            # symmetric range [-amax, amax]
     "fake_quant": {output: input},             # FakeQuant / QDQ ops of the TF graph
     "layer_errors": {layer output: error},     # relative L2 error on the calibration data
     "residual_errors": {layer output: error},  # the same, its residuals read as int8
     "nonfinite": [tensor names],               # NaN / Inf seen while calibrating
     "plan": {...}}                              # precision_report of the calibration network

Tensor names are those of the engine network after the optimization passes (fused layers have
no TF tensor); ``fake_quant`` maps the output of a fake-quantization op to its input: an INT8
layer that reads the output reads the input instead, quantized with the op's range -- the
quantize / dequantize pair folds into the layer (TF-TRT made such ops identities with a range).
"""

from __future__ import annotations

import json
import logging
import math
import os
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from tftrt.engine.network import Layer, Network, TensorInfo, put_back

log = logging.getLogger("tftrt.engine")

METADATA_KEY = "tftrt.quantization"
TABLE_VERSION = 1
QUANTIZED_PRECISIONS = ("INT8", "FP8")
INT8_QMAX = 127
FP8_E4M3_MAX = 448.0
QMAX = {"INT8": float(INT8_QMAX), "FP8": FP8_E4M3_MAX}
FORMAT = {"INT8": "int8", "FP8": "fp8_e4m3"}

# A layer stays FP16 when its quantized output differs from its higher-precision output on the
# calibration data by more than this relative L2 error, ||y_q - y|| / ||y||, summed over the
# calibration batches kept for the check. Typical calibrated layers measure 0.5-3 % (INT8) and
# 2-5 % (FP8 E4M3, 3 mantissa bits); a range spoiled by outliers or a layer that amplifies its
# input's rounding goes far beyond. Env TFTRT_QUANTIZATION_MAX_ERROR overrides both.
MAX_LAYER_ERROR = {"INT8": 0.10, "FP8": 0.15}

GEMM_KINDS = ("conv", "conv_transpose", "matmul")


def max_layer_error(precision: str) -> float:
    env = os.environ.get("TFTRT_QUANTIZATION_MAX_ERROR", "").strip()
    if env:
        try:
            value = float(env)
        except ValueError:
            raise ValueError(f"TFTRT_QUANTIZATION_MAX_ERROR={env!r} is not a number; give the "
                             f"largest relative error a quantized layer may have, e.g. 0.1")
        if not value > 0:
            raise ValueError(f"TFTRT_QUANTIZATION_MAX_ERROR={env!r} must be positive")
        return value
    return MAX_LAYER_ERROR[precision]


# --- number formats --------------------------------------------------------------------------

def inv_scale(scale) -> np.ndarray:
    """float32 reciprocal of a scale (what the kernels multiply by)."""
    return np.float32(1.0) / np.asarray(scale, np.float32)


def quantize_int8(x, inv) -> np.ndarray:
    """int8 values of ``x * inv``: round half to even, saturate to [-127, 127], NaN -> 0."""
    y = np.asarray(x, np.float32) * np.asarray(inv, np.float32)
    y = np.rint(y)
    y = np.where(np.isnan(y), np.float32(0), y)
    return np.clip(y, -INT8_QMAX, INT8_QMAX).astype(np.int8)


def round_e4m3(x) -> np.ndarray:
    """``x`` (float32) rounded to the nearest FP8 E4M3 value (ties to even), saturated to
    +-448; NaN stays NaN. Returned as float32 (every E4M3 value is exact in float32)."""
    x = np.asarray(x, np.float32)
    a = np.minimum(np.abs(x), np.float32(FP8_E4M3_MAX))
    _, e = np.frexp(a)  # a = m * 2**e, m in [0.5, 1): the binade's exponent is e - 1
    # 3 mantissa bits: the step is 2**(e - 1 - 3); below 2**-6 (subnormals) it stays 2**-9.
    step = np.ldexp(np.float32(1), (np.maximum(e - 1, -6) - 3).astype(np.int32))
    r = (np.rint(a / step) * step).astype(np.float32)  # both operations are exact
    return np.where(np.isnan(x), x, np.copysign(r, x)).astype(np.float32)


def _e4m3_table() -> np.ndarray:
    """float32 value of every E4M3 bit pattern (0x7F / 0xFF are NaN; there is no infinity)."""
    codes = np.arange(256)
    sign = np.where(codes & 0x80, -1.0, 1.0)
    exp = (codes >> 3) & 0xF
    man = codes & 0x7
    mag = np.where(exp == 0, man / 8.0 * 2.0 ** -6, (1 + man / 8.0) * 2.0 ** (exp - 7))
    vals = (sign * mag).astype(np.float32)
    vals[(codes & 0x7F) == 0x7F] = np.nan
    return vals


E4M3_VALUES = _e4m3_table()


def e4m3_decode(codes) -> np.ndarray:
    """float32 values of E4M3 bit patterns (uint8)."""
    return E4M3_VALUES[np.asarray(codes, np.uint8)]


def e4m3_encode(x) -> np.ndarray:
    """E4M3 bit patterns (uint8) of ``x`` rounded as :func:`round_e4m3`."""
    r = round_e4m3(x)
    a = np.abs(r)
    normal = a >= 2.0 ** -6
    _, e = np.frexp(np.where(normal, a, 1))
    exp = np.where(normal, e - 1 + 7, 0)
    man = np.where(normal, np.rint((a / np.ldexp(1.0, e - 1) - 1) * 8), np.rint(a / 2.0 ** -9))
    man = np.where(np.isnan(man), 0, man)
    code = (exp << 3) | man.astype(np.int64)
    code = np.where(np.signbit(r), code | 0x80, code)
    code = np.where(np.isnan(r), 0x7F, code)
    return code.astype(np.uint8)


def quantize_values(x, inv, precision: str) -> np.ndarray:
    """Quantized ``x * inv`` as float64 values (exact): int8 integers, or E4M3 values."""
    if precision == "INT8":
        return quantize_int8(x, inv).astype(np.float64)
    return round_e4m3(np.asarray(x, np.float32) * np.asarray(inv, np.float32)).astype(np.float64)


def dequantized_weight(layer: Layer, w: np.ndarray) -> np.ndarray:
    """Values (float64) of a quantized layer's stored weight: int8, or E4M3 codes."""
    if layer.attrs["quant"]["format"] == FORMAT["FP8"]:
        return e4m3_decode(w).astype(np.float64)
    return np.asarray(w, np.float64)


def weight_axis(layer: Layer) -> int:
    """The output-channel axis of a GEMM layer's weight (input 1)."""
    if layer.kind == "conv":
        return 0  # KRSC: [Cout, *K, Cin / group]
    return 0 if layer.attrs.get("transpose_b") else 1  # [K, N], or [N, K] transposed


def quantize_weight(w: np.ndarray, axis: int, precision: str) -> Tuple[np.ndarray, np.ndarray]:
    """(stored weight, per-channel scales float32) of float weight ``w``, symmetric per
    output channel: scale = max|w_c| / QMAX (1 for an all-zero channel)."""
    w = np.asarray(w, np.float32)
    other = tuple(a for a in range(w.ndim) if a != axis)
    wmax = np.max(np.abs(w), axis=other) if other else np.abs(w)
    scale = np.where(wmax > 0, wmax / np.float32(QMAX[precision]), 1).astype(np.float32)
    shape = [1] * w.ndim
    shape[axis] = -1
    inv = inv_scale(scale).reshape(shape)
    if precision == "INT8":
        return quantize_int8(w, inv), scale
    return e4m3_encode(w * inv), scale


# --- the table -----------------------------------------------------------------------------

def new_table(**fields) -> dict:
    t = {"version": TABLE_VERSION, "tensors": {}, "fake_quant": {}, "layer_errors": {}}
    t.update(fields)
    return t


def check_table(table: Any, where: str = "the quantization table") -> dict:
    """``table`` checked for the fields the builder reads; ValueError saying what is wrong."""
    if not isinstance(table, dict):
        raise ValueError(f"{where} is not a JSON object")
    if table.get("version") != TABLE_VERSION:
        raise ValueError(f"{where} has version {table.get('version')!r}; this tftrt reads "
                         f"version {TABLE_VERSION}: convert and calibrate the model again")
    for key in ("tensors", "fake_quant", "layer_errors", "residual_errors"):
        if not isinstance(table.get(key, {}), dict):
            raise ValueError(f"{where}: {key!r} must be an object")
    for name, amax in table.get("tensors", {}).items():
        if not isinstance(amax, (int, float)) or not math.isfinite(amax) or amax < 0:
            raise ValueError(f"{where}: the range of tensor {name!r} is {amax!r}; it must be "
                             f"a finite non-negative number")
    return table


def table_from_model(model) -> Optional[dict]:
    """The quantization table in an ONNX model's metadata, or None."""
    for p in model.metadata_props:
        if p.key == METADATA_KEY:
            try:
                return check_table(json.loads(p.value), f"{METADATA_KEY} of {model.graph.name}")
            except json.JSONDecodeError as e:
                raise ValueError(f"{METADATA_KEY} of {model.graph.name} is not JSON: {e}")
    return None


def set_table(model, table: Optional[dict]) -> None:
    """Stores ``table`` in the model's metadata (None removes it), in place."""
    keep = [(p.key, p.value) for p in model.metadata_props if p.key != METADATA_KEY]
    del model.metadata_props[:]
    for k, v in keep:
        model.metadata_props.add(key=k, value=v)
    if table is not None:
        model.metadata_props.add(key=METADATA_KEY,
                                 value=json.dumps(check_table(table), sort_keys=True))


def table_of(model_or_network) -> Optional[dict]:
    """The table a build uses: an ONNX model's metadata, or ``Network.quantization``."""
    if isinstance(model_or_network, Network):
        return model_or_network.quantization
    return table_from_model(model_or_network)


# --- the pass --------------------------------------------------------------------------------

def layer_flops(net: Network, layer: Layer) -> int:
    """Multiply-add FLOPs (2 per MAC) of a conv / conv_transpose / matmul layer, 0 when a
    shape is unknown. A stem that took its max pool (pool_fusion) counts its own output, not
    the pool's (a quarter of it: hunt, s53)."""
    try:
        fused = layer.attrs.get("pool") if layer.kind == "conv" else None
        y = fused["output"]["shape"] if isinstance(fused, dict) else \
            net.tensors[layer.outputs[0]].shape
        w = net.tensors[layer.inputs[1]].shape
        if layer.kind == "conv":
            return 2 * int(np.prod(y)) * int(np.prod(w[1:]))
        if layer.kind == "conv_transpose":
            x = net.tensors[layer.inputs[0]].shape
            return 2 * int(np.prod(x)) * int(np.prod(w[1:]))
        a = net.tensors[layer.inputs[0]].shape
        k = a[-2] if layer.attrs.get("transpose_a") and len(a) > 1 else a[-1]
        return 2 * int(np.prod(y)) * int(k)
    except (TypeError, ValueError, KeyError, IndexError):
        return 0


def attention_flops(net: Network, layer: Layer) -> int:
    """FLOPs of a fused attention layer's two GEMMs (q k^T and p v), 0 when a shape is
    unknown: q and the output are [b, h, s, d] ("bhsd") or [b, s, h, d] ("bshd")."""
    try:
        q = net.tensors[layer.inputs[0]].shape
        k = net.tensors[layer.inputs[1]].shape
        y = net.tensors[layer.outputs[0]].shape
        keys = k[2] if layer.attrs.get("layout", "bhsd") == "bhsd" else k[1]
        return 2 * int(keys) * (int(np.prod(q)) + int(np.prod(y)))
    except (TypeError, ValueError, KeyError, IndexError):
        return 0


def _candidate_reason(net: Network, layer: Layer) -> Optional[str]:
    """Why a GEMM layer cannot be quantized at all (None: it can, given a range)."""
    if layer.kind == "conv_transpose":
        return "conv_transpose has no INT8 / FP8 implementation"
    x, w = layer.inputs[0], layer.inputs[1]
    if w not in net.weights:
        return "its second operand is not a constant weight"
    if layer.kind == "matmul" and net.weights[w].ndim != 2:
        return f"its weight has rank {net.weights[w].ndim} (2 needed)"
    if np.dtype(net.weights[w].dtype).kind != "f":
        return f"its weight is {net.weights[w].dtype}"
    if x in net.weights or net.tensors[x].dtype not in ("float32", "float16"):
        return "its input is not a float activation"
    if not (net.tensors[x].is_static and net.tensors[layer.outputs[0]].is_static):
        return "its shapes are data dependent"
    return None


# A conv / GEMM that reads the network's input (through no other conv / GEMM) and reduces
# over at most this many of its channels -- an image stem, RGB -- stays FP16 unless
# TFTRT_QUANTIZE_STEM=1: cuDNN's int8 kernel for ResNet50's 7x7 stem (3 channels padded to 4)
# took 5.6 of the INT8 engine's 13 ms at batch 128 on an H100 (0.16x its FP16 layer;
# benchmarks/README.md, 2026-12-05).
STEM_CHANNELS = 4


def quantize_stems() -> bool:
    from tftrt.env import env_bool
    return env_bool("TFTRT_QUANTIZE_STEM", False)


def reduced_channels(net: Network, layer: Layer) -> Optional[int]:
    """The channels a conv (per group) or the K a matmul reduces over, None when unknown."""
    try:
        w = net.weights[layer.inputs[1]]
        if layer.kind == "conv":
            return int(w.shape[-1])
        return int(w.shape[1] if layer.attrs.get("transpose_b") else w.shape[0])
    except (KeyError, IndexError, TypeError):
        return None


def _reads_network_input(net: Network, x: str) -> bool:
    """Whether tensor ``x`` comes from a network input through layers that are no conv /
    GEMM (pads, transposes, casts, normalization)."""
    producers = net.producers()
    seen, todo = set(), [x]
    while todo:
        t = todo.pop()
        if t in seen or t in net.weights:
            continue
        seen.add(t)
        if t in net.inputs:
            return True
        layer = producers.get(t)
        if layer is None or layer.kind in GEMM_KINDS or layer.kind == "attention":
            continue
        todo.extend(i for i in layer.inputs if i)
    return False


def _stem_reason(net: Network, layer: Layer) -> Optional[str]:
    """Why ``layer`` stays FP16 as an image stem (None: it is none, or stems are quantized)."""
    c = reduced_channels(net, layer)
    if c is None or c > STEM_CHANNELS or quantize_stems() or \
            not _reads_network_input(net, layer.inputs[0]):
        return None
    return (f"it reads the network input and reduces over {c} channel{'s' if c != 1 else ''} "
            f"(an image stem): int8 / fp8 kernels pad them and were 6x slower than FP16 on "
            f"an H100; it stays FP16, as TensorRT keeps such layers (TFTRT_QUANTIZE_STEM=1 "
            f"quantizes it, when its error on the calibration data allows)")


def _amax(table: dict, name: str) -> Optional[float]:
    v = table.get("tensors", {}).get(name)
    return float(v) if v is not None and v > 0 else None


# layers that only move or select their input's values: a fake-quant op's range holds on
# their output (TF-TRT's Converter::MarkQuantizationRangesAsInferrable carried it across
# Reshape, Transpose, Identity and MaxPool)
_RANGE_KEEPING = ("transpose", "reshape", "slice", "split", "gather", "tile", "expand")


def in_network_names(net: Network, table: dict) -> dict:
    """``table`` with its tensor names also as ``net`` has them (Network.resolve). The
    table names the segment's tensors as its ONNX model does, and passes remove some: a
    conv's NCHW -> NHWC transposes folded away leave its output under the conv's own name
    (helper hunt, 2026-12-07: conv -> fake quant -> conv, the fold's source gone, the fake
    quantization ran as a float16 layer between the INT8 convs). A name still in the network
    keeps its own entry."""
    if not table or not getattr(net, "aliases", None):
        return table
    out = dict(table)
    fake = {}
    for k, v in (table.get("fake_quant") or {}).items():
        fake[k] = net.resolve(v)
        fake.setdefault(net.resolve(k), net.resolve(v))
    out["fake_quant"] = fake
    # A range moves to the name a pass left only where that tensor holds the same values for
    # every reader: a fake-quant op's output (on its grid), or a fold's source that nothing but
    # fake quantization reads. A no-op reshape's input read by another conv too must not take
    # the range graph_table gave the reshape's output (only fake quantization read that):
    # the other conv was clipped to it (0.29 of the largest output off TF; QAT hunt, s50).
    chain = _fake_quant_layers(net, fake)
    consumers = net.consumers()
    for key in ("tensors", "layer_errors"):
        d = dict(table.get(key) or {})
        for k, v in (table.get(key) or {}).items():
            r = net.resolve(k)
            if r != k and r not in d and (k in fake or all(
                    id(c) in chain for c in consumers.get(r, []))):
                d[r] = v
        out[key] = d
    return out


def _fake_quant_layers(net: Network, fake: Dict[str, str]) -> set:
    """ids of the layers computing the fake-quant ops of ``fake`` (output -> source): the
    one-input-tensor pointwise layers from each op's output back to its source."""
    producers = net.producers()
    ids = set()
    for out, src in fake.items():
        name = out
        for _ in range(16):  # (a lowering is a few steps)
            p = producers.get(name)
            if p is None or p.kind != "pointwise":
                break
            tensors = [i for i in p.inputs if i not in net.weights]
            if len(tensors) != 1:
                break
            ids.add(id(p))
            if tensors[0] == src:
                break
            name = tensors[0]
    return ids


def _carried_amax(table: dict, name: str, producers) -> Optional[float]:
    """The range of a fake-quant op's output that reaches tensor ``name`` through layers that
    keep its values (a max pool, a transpose, a reshape, a cast to float16 ...), or None.
    Only a fake-quant op's output: its values lie on the op's grid, and a max or a move keeps
    them there (a raw tensor's calibrated range would clip what a pool's reader sees, which
    TF does not).
    Helper hunt, 2026-12-07: QAT's fake quant -> max pool -> conv left the conv FP16."""
    outs = set(table.get("fake_quant", {}))
    seen = set()
    while name not in seen:
        seen.add(name)
        if name in outs:
            return _amax(table, name)
        p = producers.get(name)
        if p is None or not p.inputs or not (
                p.kind in _RANGE_KEEPING or _code_keeping_cast(p) or
                (p.kind == "pool" and p.attrs.get("mode") == "max" and not p.epilogue)):
            return None
        name = p.inputs[0]
    return None


def _code_keeping_cast(layer: Layer) -> bool:
    """A cast of a float tensor to float16 / float32 alone (a mixed-precision QAT model casts
    fake-quant outputs to float16 before its convs; bf16 hunt, 2026-12-07: the convs stayed
    FP16). Each value on a fake-quant grid keeps its code: float16's rounding moves a value of
    at most 127 steps by 127 * 2**-11 = 0.06 of a step. Not to bfloat16, whose rounding can
    move the largest codes by half a step."""
    prog = layer.attrs.get("program") or []
    return layer.kind == "pointwise" and len(prog) == 1 and prog[0].get("op") == "cast" and \
        prog[0].get("to") in ("float16", "float32") and not layer.epilogue


# the start of the reason a layer builder.timed_precision kept FP16 carries (quant_fallback)
TIMED_FP16_REASON = "FP16 measured faster on this device"


def timed_fp16_reason(layer: Layer) -> Optional[str]:
    """Why builder.timed_precision kept ``layer`` FP16 (its ``quant_fallback``), or None."""
    reason = layer.attrs.get("quant_fallback")
    return reason if isinstance(reason, str) and reason.startswith(TIMED_FP16_REASON) else None


def quantize_network(net: Network, precision: str, table: dict,
                     max_error: Optional[float] = None, stems: bool = False,
                     keep_fp16: Optional[Dict[str, str]] = None) -> List[str]:
    """Quantizes the GEMM layers of ``net`` (in place) that the table allows; see the module
    doc. Layers it does not quantize keep no precision (the caller assigns FP16 to them); each
    GEMM layer among them gets ``attrs["quant_fallback"]``: why it is not quantized.
    ``stems``: image stems too, whatever TFTRT_QUANTIZE_STEM says (the calibrator measures
    every layer a later build may quantize). ``keep_fp16``: layer name -> why it is not
    quantized although it could be (builder.timed_precision: FP16 measured faster).

    Returns the names of the quantized layers.
    """
    precision = precision.upper()
    qmax = QMAX[precision]
    table = in_network_names(net, table)
    limit = max_layer_error(precision) if max_error is None else max_error
    errors = table.get("layer_errors", {})
    fake = table.get("fake_quant", {})
    produced = set(net.inputs) | {o for l in net.layers for o in l.outputs}
    producers = net.producers()
    for layer in net.layers:
        if layer.kind not in GEMM_KINDS:
            continue
        reason = _candidate_reason(net, layer)
        if reason is None and not stems:
            reason = _stem_reason(net, layer)
        x = layer.inputs[0]
        # a fake-quant op's range carried to x wins over a calibrated one, as the graph's
        # ranges do (a conv behind a max pool took the pool's calibrated range: 0.36 off TF
        # where the data left the calibration's range; QAT hunt, s50)
        amax = _carried_amax(table, x, producers)
        if amax is None:
            amax = _amax(table, x)
        p = producers.get(x)
        if amax is None and p is not None and p.kind == "space_to_depth":
            # passes/stem_space_to_depth's rearranged image: its values are the image's and
            # zeros, so its range is the image's (a table calibrated without the pass)
            amax = _amax(table, p.inputs[0])
        src = fake.get(x)  # the input of a fake-quant op this layer reads: fold the pair
        if src is not None and (src not in produced or src in net.weights or
                                net.tensors[src].dtype not in ("float32", "float16") or
                                net.tensors[src].shape != net.tensors[x].shape):
            src = None
        if reason is None and amax is None:
            reason = f"no range for tensor {x}"
        if reason is None and amax / qmax < 1.0 / float(np.finfo(np.float32).max):
            # (its float32 inverse scale would be inf: a RuntimeWarning, then garbage)
            reason = f"the range of tensor {x} ({amax:.3g}) is too small for a float32 scale"
        err = errors.get(layer.outputs[0])
        if reason is None and err is not None and err > limit:
            reason = (f"its {precision} output differs from the FP32 one by "
                      f"{_digits_over(err, limit)} "
                      f"(relative L2 error on the calibration data; limit {limit:g})")
        if reason is None and keep_fp16 and layer.name in keep_fp16:
            reason = keep_fp16[layer.name]
        if reason is not None:
            layer.attrs["quant_fallback"] = reason
            continue
        _quantize_layer(net, layer, precision, amax / qmax, src, table)
    # the layers of fake-quant ops folded above go first: left, they count as readers of the
    # output a folded op took, which then stays float (helper hunt, 2026-12-07: a QAT chain
    # conv -> relu -> fake quant -> conv stored float16 between the convs, and the second
    # conv's requantization of those values flipped codes, 2e-3 off TF where 6e-8 is exact)
    _remove_unused_layers(net)
    if precision == "INT8":
        _requantize_outputs(net, table, limit)
        _requantize_pools(net)
    _remove_unused_layers(net)
    net.prune_tensors()
    return [l.name for l in net.layers if l.precision == precision and "quant" in l.attrs]


def _digits_over(err: float, limit: float) -> str:
    """``err`` (> ``limit``) with three decimals, or as many more as it takes to read above
    the limit: 0.10046 against 0.1 printed "0.100 (...; limit 0.1)" (INT8 sweep, s42)."""
    for digits in range(3, 10):
        text = f"{err:.{digits}f}"
        if float(text) > limit:
            return text
    return repr(float(err))


# A quantized layer's float output is stored in float16 unless the calibration saw it past
# half of float16's range (65504): calibrated outputs of 2.9e5 were stored as float16, inf,
# and the engine answered NaN where TF was finite (helper hunt, 2026-12-02). The half leaves
# room for inputs past the calibration data's.
FP16_SAFE_AMAX = 65504.0 / 2
# ... nor when every value it saw was below float16's normal range (2**-14): stored as float16
# they flushed to subnormals and zeros, the engine answered 0.26-1.0 off TF, and the
# fallback's reason blamed INT8 (INT8 hunt, 2026-12-04).
FP16_TINY_AMAX = 2.0 ** -14


def fp16_cannot_hold(amax: Optional[float]) -> bool:
    """Whether a tensor calibrated to ``amax`` keeps float32 around quantized layers."""
    return amax is not None and (amax > FP16_SAFE_AMAX or 0 < amax < FP16_TINY_AMAX)


def _quantize_layer(net: Network, layer: Layer, precision: str, s_x: float,
                    src: Optional[str], table: Optional[dict] = None) -> None:
    axis = weight_axis(layer)
    wname = layer.inputs[1]
    stored, s_w = quantize_weight(net.weights[wname], axis, precision)
    alpha = float(layer.attrs.get("alpha", 1.0)) if layer.kind == "matmul" else 1.0
    dequant = (np.float64(np.float32(s_x)) * s_w.astype(np.float64) * alpha).astype(np.float32)
    if src is not None:
        layer.inputs[0] = src
    layer.inputs[1] = net.add_weight(stored, f"{wname}_{FORMAT[precision]}")
    layer.inputs.append(net.add_weight(dequant, f"{layer.name}_dequant_scale"))
    layer.epilogue.insert(0, {"op": "scale", "input": len(layer.inputs) - 1})
    if layer.kind == "matmul":
        layer.attrs["alpha"] = 1.0
    layer.attrs["quant"] = {"format": FORMAT[precision], "input_scale": float(np.float32(s_x)),
                            "weight_axis": axis}
    if src is not None:
        layer.attrs["quant"]["folded"] = True
    layer.precision = precision
    keep = set(net.outputs)
    for o in layer.outputs:
        amax = _amax(table, o) if table is not None else None
        big = fp16_cannot_hold(amax)
        if big:
            log.info("layer %s: its output keeps float32: calibrated to %.3g, outside what "
                     "float16 holds well", layer.name, amax)
        if o not in keep and net.tensors[o].dtype == "float32" and not big:
            net.tensors[o].dtype = "float16"


def int8_scale(amax: float) -> float:
    """The scale of a tensor stored as int8 with calibrated range ``amax`` (float32)."""
    return float(np.float32(amax / INT8_QMAX))


def int8_residuals() -> bool:
    """Whether an INT8 layer's output that other INT8 layers also add as a residual is stored
    as int8 (env TFTRT_INT8_RESIDUAL; on by default since s37). Off at first: it measured slower
    (ResNet50 at batch 128 on an H100: 7.9 ms on, 6.9 ms off; benchmarks/README.md, s33)
    while a requantized output left the fused cuDNN epilogue for an fp32 output and a
    requantize kernel, and a scaled residual was not fused. With cupy_quant's fused_int8
    variant, which does both in cuDNN's graph, it measured faster (3.92 ms on, 4.49 off; s34;
    with q_mma 2.87 against FP16's 3.50 ms, s37, H100). A model where it is slower (the
    encoder) keeps FP16 what FP16 runs faster (builder.timed_precision)."""
    from tftrt.env import env_bool
    return env_bool("TFTRT_INT8_RESIDUAL", True)


def _int8_reads(u: Layer, out: str, s: float, residuals: bool, table: dict,
                limit: float) -> Optional[List[dict]]:
    """The residual ``add`` steps of INT8 layer ``u`` that read tensor ``out`` when every read
    of ``out`` by ``u`` can take it as int8 of scale ``s`` (input 0 quantized with ``s``, or an
    epilogue ``add`` whose layer's error with the residual read as int8 -- the table's
    ``residual_errors``, where calibration measured it -- is within ``limit``); None when one
    cannot."""
    if u.precision != "INT8" or "quant" not in u.attrs:
        return None
    adds = []
    for i, name in enumerate(u.inputs):
        if name != out:
            continue
        if i == 0:
            if u.attrs["quant"]["input_scale"] != s:
                return None
            continue
        steps = [e for e in u.epilogue if e.get("input") == i]
        if not residuals or not steps or any(e["op"] != "add" for e in steps):
            return None
        err = table.get("residual_errors", {}).get(u.outputs[0])
        if err is not None and err > limit:
            log.info("layer %s: its residual %s stays float: read as int8 its output differs "
                     "from the FP32 one by %.3f (limit %g)", u.name, out, err, limit)
            return None
        adds += steps
    return adds


def _requantize_outputs(net: Network, table: dict, limit: float = math.inf) -> None:
    """INT8 outputs read only by INT8 layers -- as their input 0, or (int8_residuals()) as a
    residual their epilogue adds -- are stored as int8 of the output's calibrated scale; the
    residual ``add`` steps reading them dequantize on load (``"scale"``)."""
    consumers = net.consumers()
    keep = set(net.outputs)
    residuals = int8_residuals()
    for layer in net.layers:
        if layer.precision != "INT8" or "quant" not in layer.attrs:
            continue
        out = layer.outputs[0]
        amax = _amax(table, out)
        users = consumers.get(out, [])
        if out in keep or amax is None or not users:
            continue
        s = int8_scale(amax)
        reads = [_int8_reads(u, out, s, residuals, table, limit) for u in users]
        if any(r is None for r in reads):
            continue
        layer.attrs["quant"]["output_scale"] = s
        net.tensors[out].dtype = "int8"
        for steps in reads:
            for e in steps:
                e["scale"] = s


def int8_pools() -> bool:
    """Whether a float max pool read only by INT8 layers, as their input 0 with one input
    scale, stores its output as int8 of that scale (env TFTRT_INT8_POOL, default on). The
    answers are the same bit for bit: round-to-nearest and saturation are monotonic, so the
    largest code of a window is the code of its largest value, and the pool computes the code
    as the readers would have on load. The readers then take int8, and the pool writes half
    the bytes (ResNet50: its stem's MaxPool feeds the first block's 1x1 convs)."""
    from tftrt.env import env_bool
    return env_bool("TFTRT_INT8_POOL", True)


def _requantize_pools(net: Network) -> None:
    """Float max pools whose every reader is an INT8 layer taking the pool's output as input
    0 with one input scale: their output becomes int8 of that scale (``attrs["output_scale"]``
    of the pool; :func:`int8_pools`)."""
    if not int8_pools():
        return
    consumers = net.consumers()
    keep = set(net.outputs)
    for layer in net.layers:
        if layer.kind != "pool" or layer.attrs.get("mode") != "max" or len(layer.inputs) != 1:
            continue
        out = layer.outputs[0]
        users = consumers.get(out, [])
        if out in keep or not users or \
                net.tensors[layer.inputs[0]].dtype not in ("float16", "float32") or \
                net.tensors[out].dtype not in ("float16", "float32"):
            continue
        scales = set()
        for u in users:
            if u.precision != "INT8" or "quant" not in u.attrs or \
                    u.attrs["quant"].get("folded") or \
                    any(name == out for name in u.inputs[1:]):
                scales = set()
                break
            scales.add(u.attrs["quant"]["input_scale"])
        if len(scales) != 1:
            continue
        layer.attrs["output_scale"] = scales.pop()
        net.tensors[out].dtype = "int8"


def int8_pool_producers() -> bool:
    """Whether a conv that only feeds an int8 max pool stores the codes itself, where its
    chosen implementation can (env TFTRT_INT8_POOL_PRODUCER, default on; 0 leaves the pool
    quantizing; :func:`absorb_pool_requantization`). ResNet50 INT8 at batch 128 (H100, s41,
    one call): stem 264.5 us storing codes against 260.7 storing float16, its MaxPool 55.0
    against 91.6 us; the engine 2.719 against 2.724 ms."""
    from tftrt.env import env_bool
    return env_bool("TFTRT_INT8_POOL_PRODUCER", True)


def absorb_pool_requantization(net: Network, stores_int8) -> List[str]:
    """After tactics are chosen (builder._finish): a max pool that stores int8 codes
    (:func:`_requantize_pools`) and whose input only it reads, the output of a float conv
    whose implementation can store int8 (``stores_int8(net, layer)``, the backend's: the CuPy
    backend's ``stem_mma``), has the conv store the codes instead, and pools them as int8:
    the largest code of a window is the code of its largest value, so the pool's answers
    are the same, except that the codes now come from the conv's float32 result rather than
    from its float16 storage (the nearer code where that rounding crossed a boundary). The
    conv writes half the bytes and the pool reads half (ResNet50's stem and MaxPool). Only
    pools whose every window holds an input element (dilation 1, no ceil mode, pads under
    the kernel; no floor program): an empty window's float answer has no code. A folded
    zero pad's ``pad_value`` (passes/pad_folding: ResNet50's pool1_pad) becomes its code,
    which the pads then hold: the code of the largest of a window's values and pad cells is
    the largest of their codes. A NaN pad value stays float (its code would be
    :data:`NAN_CODE`'s meaning). A NaN of the conv's is stored as :data:`NAN_CODE`. The conv
    records what the pool and the tensor were (``attrs["pool_codes"]``: :func:`unfused`).
    Returns the convs changed."""
    if not int8_pool_producers():
        return []
    consumers = net.consumers()
    producer = {o: l for l in net.layers for o in l.outputs}
    keep = set(net.outputs) | set(net.inputs)
    changed = []
    for pool in net.layers:
        a = pool.attrs
        pad_value = a.get("pad_value")
        if pool.kind != "pool" or a.get("output_scale") is None or \
                a.get("floor_program") or (pad_value is not None and math.isnan(pad_value)) or \
                int(a.get("ceil_mode", 0)) or any(int(d) != 1 for d in a["dilations"]):
            continue
        nsp = len(a["kernel"])
        if any(int(a["pads"][i]) >= int(a["kernel"][i % nsp]) for i in range(2 * nsp)):
            continue
        x = pool.inputs[0]
        conv = producer.get(x)
        if conv is None or x in keep or conv.kind != "conv" or "quant" in conv.attrs or \
                conv.attrs.get("output_scale") is not None or len(conv.outputs) != 1 or \
                [u.name for u in consumers.get(x, [])] != [pool.name] or \
                net.tensors[x].dtype not in ("float16", "float32") or \
                not stores_int8(net, conv):
            continue
        # what the pool and the tensor were (unfused gives them back)
        conv.attrs["pool_codes"] = {"pool": pool.name, "dtype": net.tensors[x].dtype,
                                    **({"pad_value": pad_value} if "pad_value" in a else {})}
        if pad_value is not None:  # the pad cell as the float pool held it, then its code
            cell = np.asarray(pad_value, np.float32).astype(net.tensors[x].dtype)
            a["pad_value"] = float(quantize_int8(cell, inv_scale(a["output_scale"])))
        conv.attrs["output_scale"] = a.pop("output_scale")
        conv.attrs["output_nan_code"] = NAN_CODE
        a["code_floor"] = -INT8_QMAX
        net.tensors[x].dtype = "int8"
        changed.append(conv.name)
    return changed


def fuse_projection_default() -> bool:
    """Whether the builder offers a residual layer its projection shortcut
    (:func:`fuse_projections`; env TFTRT_QUANT_MMA_PROJECTION, default on, 0 turns it off).
    ResNet50 INT8 engine alone (H100, s51, one call, alternating): batch 128 2.442 / 2.447 ms
    with it against 2.475 / 2.474 without (stage 1's first block: 161.8 us fused against
    104.2 + 85.0); batch 1 0.405 / 0.404 against 0.405 / 0.402."""
    from tftrt.env import env_bool
    return env_bool("TFTRT_QUANT_MMA_PROJECTION", True)


def _fusable_projection(net: Network, layer: Layer, index: int, producer, consumers,
                        keep) -> Optional[Layer]:
    """The quantized layer whose int8 output ``layer`` adds as its residual input ``index``
    and nothing else reads, with per-channel constant operands only, over int8 codes; else
    None (:func:`fuse_projections`)."""
    t = layer.inputs[index]
    p = producer.get(t)
    if p is None or t in keep or p.kind not in ("conv", "matmul") or \
            p.precision != "INT8" or "quant" not in p.attrs or "projection" in p.attrs or \
            p.attrs["quant"].get("output_scale") is None or len(p.outputs) != 1 or \
            net.tensors[t].dtype != "int8" or \
            net.tensors[p.inputs[0]].dtype != "int8" or \
            [u.name for u in consumers.get(t, [])] != [layer.name] or \
            layer.inputs.count(t) != 1:
        return None
    if any("input" in e and p.inputs[e["input"]] not in net.weights for e in p.epilogue):
        return None
    return p


def fuse_projections(net: Network, fuses) -> List[str]:
    """After tactics are chosen (builder._finish): an INT8 layer ``m`` whose epilogue adds the
    int8 output of another INT8 GEMM layer ``p`` that only ``m`` reads (a bottleneck's
    projection shortcut, added by the block's last conv) takes ``p`` into its own kernel where
    the implementation of its chosen tactic can (``fuses(net, m, p)``, the backend's: the CuPy
    backend's ``q_mma`` with :func:`fuse_projection_default`). ``p`` leaves the network;
    ``m`` reads ``p``'s input x2 in the residual's place (its ``inputs[i]``), ``p``'s weight
    and operands are appended to ``m``'s inputs, and ``m.attrs["projection"]`` holds ``p``
    (:meth:`Layer.to_json`) with ``"inputs_at"`` (where each of ``p``'s inputs is in ``m``'s),
    ``"residual"`` (i) and ``"output"`` (its int8 tensor: name, shape). The codes ``p`` would
    store are what ``m`` adds (:func:`projection_layer` gives ``p`` back to run it): the
    answers are the same; the fused kernel skips writing and reading them. The memory plan
    keeps x2 alive until ``m``. Returns the layers that took one."""
    if not fuse_projection_default():
        return []
    consumers = net.consumers()
    producer = {o: l for l in net.layers for o in l.outputs}
    keep = set(net.outputs) | set(net.inputs)
    changed, gone, codes = [], set(), []
    at = {l.name: k for k, l in enumerate(net.layers)}
    for m in net.layers:
        if m.kind not in ("conv", "matmul") or m.precision != "INT8" or \
                "quant" not in m.attrs or "projection" in m.attrs:
            continue
        for e in m.epilogue:
            if e.get("op") != "add" or "input" not in e:
                continue
            i = e["input"]
            p = _fusable_projection(net, m, i, producer, consumers, keep)
            if p is None or not fuses(net, m, p):
                continue
            t = p.outputs[0]
            inputs_at = [i] + [len(m.inputs) + j - 1 for j in range(1, len(p.inputs))]
            m.inputs[i] = p.inputs[0]
            m.inputs.extend(p.inputs[1:])
            d = p.to_json()  # without the backend's records of p's own tactic: m's choice
            d["attrs"] = {k: v for k, v in d["attrs"].items() if not k.startswith("_")}
            m.attrs["projection"] = dict(
                d, inputs_at=inputs_at, residual=i, at=at[p.name],
                output={"name": t, "shape": list(net.tensors[t].shape)})
            gone.add(p.name)
            codes.append(t)
            changed.append(m.name)
            break
    net.layers = [l for l in net.layers if l.name not in gone]
    for t in codes:  # kept in registers (or in the implementation's scratch): no tensor
        del net.tensors[t]
    return changed


def projection_layer(net: Network, layer: Layer) -> Optional[Tuple[Network, Layer]]:
    """The projection ``layer`` took (:func:`fuse_projections`), as a layer of its own over
    ``layer``'s inputs, and a network to run it in (``net``'s tensors and weights, and its
    int8 output), or None. Implementations run it first and add its codes (the reference and
    emulated paths), or fuse it (q_mma)."""
    d = layer.attrs.get("projection")
    if d is None:
        return None
    p = Layer.from_json(d)
    p.inputs = [layer.inputs[k] for k in d["inputs_at"]]
    for key in ("inputs_at", "residual", "output", "at"):
        p.attrs.pop(key, None)
    out = d["output"]
    sub = Network(net.name)
    sub.inputs, sub.outputs = list(net.inputs), [out["name"]]
    sub.tensors, sub.weights = dict(net.tensors), net.weights
    sub.tensors[out["name"]] = TensorInfo(out["name"], "int8", tuple(out["shape"]))
    sub.layers = [p]
    return sub, p


def unfused(net: Network) -> Network:
    """``net`` as it was before builder._finish rewrote it (itself where nothing was): a
    stem's fused max pool (pool_fusion.fuse_pools) and each projection a layer of its own
    again, with its tactic (before the layer that took it, that layer reading its int8
    output); a conv that stored its pool's int8 codes (:func:`absorb_pool_requantization`)
    storing its float output again and the pool quantizing; an image's float16 cast a
    layer again before the stem that read float32 x (precision.absorb_input_casts). What a
    profile's other shapes start from: their networks are made and compared before _finish
    rewrites (shape_template), and their tactic choices name every layer (the fused network
    compared 3 layers with the probe's 4 and served no template: regression hunt, s51; an
    INT8 stem's codes and an FP16 stem's absorbed cast failed every template on the GPU
    since s41: hunt, s53). _finish rewrites the same way again."""
    from tftrt.engine import pool_fusion
    from tftrt.engine.precision import restore_input_casts
    net = pool_fusion.unfused(net)
    if not any("projection" in l.attrs or "pool_codes" in l.attrs or
               isinstance(l.attrs.get("float32_x"), dict) for l in net.layers):
        return net
    out = net.copy()
    _unproject(out)
    for conv in out.layers:  # absorb_pool_requantization, undone
        rec = conv.attrs.pop("pool_codes", None)
        if rec is None:
            continue
        (pool,) = [l for l in out.layers if l.name == rec["pool"]]
        pool.attrs["output_scale"] = conv.attrs.pop("output_scale")
        conv.attrs.pop("output_nan_code", None)
        pool.attrs.pop("code_floor", None)
        pool.attrs.pop("pad_value", None)
        if "pad_value" in rec:
            pool.attrs["pad_value"] = rec["pad_value"]
        out.tensors[conv.outputs[0]].dtype = rec["dtype"]
    restore_input_casts(out)
    return out


def _unproject(out: Network) -> None:
    """fuse_projections undone on ``out`` (edited in place): each projection back where it
    was (``at``; a plan from before s53 has none: right before the layer that took it, where
    a ResNet block's shortcut, listed before the block's other convs, did not stand and its
    profile's template failed: hunt, s53)."""
    layers, placed = [], []
    for layer in out.layers:
        fused = projection_layer(out, layer)
        if fused is None:
            layers.append(layer)
            continue
        sub, p = fused
        d = layer.attrs.pop("projection")
        t = d["output"]["name"]
        out.tensors[t] = sub.tensors[t]
        layer.inputs[int(d["residual"])] = t
        del layer.inputs[len(layer.inputs) - (len(d["inputs_at"]) - 1):]
        if d.get("at") is None:
            layers += [p, layer]
        else:
            layers.append(layer)
            placed.append((d["at"], p))
    put_back(layers, placed)
    out.layers = layers


# A NaN a conv stores for its int8 max pool (absorb_pool_requantization): below every code, so
# the pool passes over it as TF's MaxPool passes over NaN, and a window of NaN only, whose
# float answer is -inf, comes out as -inf's code once the pool raises its result to -127
# (the pool's attrs["code_floor"]). A NaN quantized as the readers quantize (to 0) could win a
# window of negative values.
NAN_CODE = -128


def _remove_unused_layers(net: Network) -> None:
    """Drops layers whose outputs nothing reads (fake-quant ops folded away)."""
    while True:
        used = set(net.outputs)
        for l in net.layers:
            used.update(l.inputs)
        dead = [l for l in net.layers if not any(o in used for o in l.outputs)]
        if not dead:
            return
        net.layers = [l for l in net.layers if l not in dead]


def layer_kernel(layer: Layer) -> Optional[str]:
    """What a backend recorded as running a layer, in words (a private record of its tactic
    with a "kernel" entry, e.g. the CuPy backend's "cuDNN INT8 conv (int32 accumulator;
    channels padded 3->4) + epilogue kernel"), or None."""
    for key, recs in layer.attrs.items():
        if key.startswith("_") and isinstance(recs, dict):
            rec = recs.get(layer.tactic or "default")
            if isinstance(rec, dict) and isinstance(rec.get("kernel"), str):
                return rec["kernel"]
    return None


def precision_report(net: Network) -> Dict[str, Any]:
    """Per GEMM layer (conv / conv_transpose / matmul): name, kind, precision, FLOPs, why it
    is not quantized, and the kernel a backend runs it on (:func:`layer_kernel`, when
    recorded); the share of their FLOPs that runs quantized."""
    layers, total, quantized = [], 0, 0
    for l in net.layers:
        if l.kind == "attention":
            # a fused attention is two activation x activation GEMMs: the calibration
            # network (unfused) lists them as matmuls; left out, a built engine's report
            # claimed up to 100% of the FLOPs quantized where 4.5% were (hunt, 2026-12-01)
            layers.append({"name": l.name, "kind": l.kind, "precision": l.precision,
                           "flops": attention_flops(net, l),
                           "reason": "attention's activation x activation matmuls have no "
                                     "INT8 / FP8 implementation",
                           "kernel": layer_kernel(l)})
            total += layers[-1]["flops"]
            continue
        if l.kind not in GEMM_KINDS:
            continue
        flops = layer_flops(net, l)
        total += flops
        if l.precision in QUANTIZED_PRECISIONS:
            quantized += flops
        layers.append({"name": l.name, "kind": l.kind, "precision": l.precision,
                       "flops": flops, "reason": l.attrs.get("quant_fallback"),
                       "kernel": layer_kernel(l)})
        fused = projection_layer(net, l)
        if fused is not None:  # a projection shortcut the layer's kernel runs too
            sub, p = fused
            flops = layer_flops(sub, p)
            total += flops
            quantized += flops
            kernel = layer_kernel(l)
            layers.append({"name": p.name, "kind": p.kind, "precision": p.precision,
                           "flops": flops, "reason": None,
                           "kernel": f"fused into {l.name}" + (f": {kernel}" if kernel else "")})
    return {"layers": layers, "flops": total, "quantized_flops": quantized,
            "quantized_share": (quantized / total) if total else 0.0}


def without_range(report: Dict[str, Any]) -> List[str]:
    """Tensors a report's FP16 layers lack a range for."""
    prefix = "no range for tensor "
    return sorted({r["reason"][len(prefix):] for r in report["layers"]
                   if (r.get("reason") or "").startswith(prefix)})
