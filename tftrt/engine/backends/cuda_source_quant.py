"""CUDA C source and host-side planning of the CuPy backend's INT8 / FP8 layers, as strings and
numpy arrays only (no CuPy), so CPU tests check them (``tests/engine/test_quant_codegen.py``).

The arithmetic is the one ``quantization.py``'s module doc fixes and the numpy backend
simulates; the GPU layers (``cupy_quant``) split it in three steps:

1. :class:`QuantizeSource`: the activation (fp16 / fp32) quantized on entry,
   ``q = saturate(round_half_even(x * inv_scale))`` -- INT8 as ``__float2int_rn`` clamped
   to [-127, 127] with NaN -> 0, FP8 with PTX ``cvt.rn.satfinite.e4m3x2.f32`` (sm_89+) -- and
   written channels-last with the channel (GEMM K) axis padded with zeros to what the
   library needs (:data:`CHANNEL_MULTIPLE`); an int8 input (a requantizing producer) is only
   copied / padded. The "values" modes write the quantized values as float16 (every int8
   and E4M3 value is exact there): the emulated fallback's operand.
2. The main op on cuDNN / cuBLASLt: int8 x int8 -> int32 (exact), E4M3 x E4M3 -> fp32.
3. :class:`QuantEpilogueSource`: the accumulator converted to float32 (round to nearest
   even, ``__int2float_rn``), then the layer's epilogue in order -- the dequantization
   ``scale`` first, bias, residual, activation -- each multiply / add rounded on its own
   (``__fmul_rn`` / ``__fadd_rn``: NVRTC would otherwise contract ``a * b + c`` into one
   FMA, and numpy rounds twice), then the store: float16 / float32, or int8 requantized
   with the output scale exactly as step 1.

So an INT8 layer's output equals the numpy backend's bit for bit except where an activation
calls a transcendental function (sigmoid, tanh, GELU: a few float32 ulps); an FP8 layer's
fp32 accumulation order is the library's (relative 1e-6 of the sum of |products|).

Planning: :func:`padded_channels`, :func:`conv_weight`, :func:`gemm_weight` (cuBLASLt's
int8 / fp8 kernels want the "TN" layout: the weight [N, K] and the activation [M, K], both
K-contiguous, with K and N multiples of :data:`CHANNEL_MULTIPLE`), :func:`gemm_dims`.
"""

from __future__ import annotations

import struct
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from tftrt.engine import quantization as Q
from tftrt.engine.backends.cuda_source import (activation_expr, ctype,
                                               grid_stride_source, load_expr)

INT8, FP8 = Q.FORMAT["INT8"], Q.FORMAT["FP8"]

# Channel (conv C) and GEMM K / N multiple the int8 / fp8 kernels need: cuBLASLt's IMMA
# kernels with the regular (non-COL32) order want K, N and the leading dimensions multiples
# of 4, its FP8 kernels multiples of 16; cuDNN's int8 NHWC convolutions want C a multiple of 4
# (its fp8 ones 16). Layers whose channels are not are padded with zero channels (weights and
# activations), e.g. an RGB first conv (C = 3 -> 4).
CHANNEL_MULTIPLE = {INT8: 4, FP8: 16}


def padded_channels(c: int, fmt: str) -> int:
    m = CHANNEL_MULTIPLE[fmt]
    return (int(c) + m - 1) // m * m


def float_literal(v: float) -> str:
    """The float32 value ``v`` as an exact C expression (its bit pattern)."""
    bits = struct.unpack("<I", struct.pack("<f", float(np.float32(v))))[0]
    return f"__int_as_float(0x{bits:08x})"


# Device helpers. q_int8: saturate(round_half_even(v)) to [-127, 127], NaN -> 0
# (__float2int_rn rounds half to even and clamps to the int range). q_e4m3: PTX cvt with
# satfinite (round to nearest even on the E4M3 grid, +-448, NaN stays NaN); the result of the
# second source lands in the low byte. e4m3_value: the float32 value of an E4M3 code.
INT8_HELPERS = r"""
__device__ __forceinline__ signed char q_int8(float v) {
  if (v != v) return 0;
  int q = __float2int_rn(v);
  return (signed char)(q < -127 ? -127 : (q > 127 ? 127 : q));
}"""

FP8_HELPERS = r"""
__device__ __forceinline__ unsigned char q_e4m3(float v) {
  unsigned short r;
  asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(r) : "f"(0.f), "f"(v));
  return (unsigned char)(r & 0xff);
}"""

E4M3_VALUE = r"""
__device__ __forceinline__ float e4m3_value(unsigned char c) {
  const int e = (c >> 3) & 15, m = c & 7;
  float v = e == 0 ? (float)m * 0.001953125f : ldexpf(1.f + (float)m * 0.125f, e - 7);
  if ((c & 0x7f) == 0x7f) v = __int_as_float(0x7fc00000);
  return (c & 0x80) ? -v : v;
}"""

QUANTIZE_MODES = ("int8", "e4m3", "int8_values", "e4m3_values")


def _index_type(*sizes: int) -> str:
    return "long long" if max(sizes) >= 2 ** 31 - 64 else "int"


class QuantizeSource:
    """CUDA source of kernel ``quantize(x, y)``: ``x`` [rows, c] (float16 / float32, or int8
    already quantized), ``y`` [rows, cp] with ``y[r, k] = q(x[r, k])`` for ``k < c`` and 0
    for the padding channels ``c <= k < cp``.

    Modes: "int8" (y int8), "e4m3" (y uint8 E4M3 codes), "int8_values" / "e4m3_values" (y
    ``values_dtype``, float16 or float32, holding the quantized values: the emulated
    fallback's operand; both hold every int8 and E4M3 value exactly). ``inv_scale`` is the
    float32 reciprocal of the input scale (unused for an int8 input: its values are copied).
    :attr:`work` items (one output element each) in a grid-stride loop.
    """

    def __init__(self, rows: int, c: int, cp: int, in_dtype: str, mode: str,
                 inv_scale: float, values_dtype: str = "float16"):
        if mode not in QUANTIZE_MODES:
            raise ValueError(f"quantize mode {mode!r}; one of {QUANTIZE_MODES}")
        in_dtype = np.dtype(in_dtype).name
        if in_dtype not in ("float16", "float32", "int8"):
            raise ValueError(f"cannot quantize a {in_dtype} tensor")
        if in_dtype == "int8" and not mode.startswith("int8"):
            raise ValueError("an int8 input feeds only an INT8 layer")
        if cp < c:
            raise ValueError(f"padded channels {cp} < channels {c}")
        self.rows, self.c, self.cp, self.mode = int(rows), int(c), int(cp), mode
        self.in_dtype = in_dtype
        values_dtype = np.dtype(values_dtype).name
        if values_dtype not in ("float16", "float32"):
            raise ValueError(f"quantized values are stored as float16 or float32, not "
                             f"{values_dtype}")
        self.out_dtype = {"int8": "int8", "e4m3": "uint8"}.get(mode, values_dtype)
        self.work = self.rows * self.cp
        it = _index_type(self.work, self.rows * self.c)
        if in_dtype == "int8":
            val = "(float)x[src]" if mode == "int8_values" else "x[src]"
            conv = val
        else:
            v = f"__fmul_rn({load_expr(in_dtype, 'x[src]')}, {float_literal(inv_scale)})"
            conv = {"int8": f"q_int8({v})", "e4m3": f"q_e4m3({v})",
                    "int8_values": f"(float)q_int8({v})",
                    "e4m3_values": f"e4m3_value(q_e4m3({v}))"}[mode]
        zero = "0"
        if self.out_dtype == "float16":
            conv, zero = f"f2h({conv})", "(unsigned short)0"
        helpers = ""
        if mode.startswith("int8") and in_dtype != "int8":
            helpers += INT8_HELPERS
        if mode.startswith("e4m3"):
            helpers += FP8_HELPERS + (E4M3_VALUE if mode == "e4m3_values" else "")
        oct_ = ctype(self.out_dtype)
        if self.c == self.cp:
            body = f"const {it} src = t;\n    y[t] = {conv};"
        else:
            body = (f"const {it} r = t / {self.cp}; const int k = (int)(t - r * {self.cp});\n"
                    f"    const {it} src = r * {self.c} + k;\n"
                    f"    y[t] = k < {self.c} ? ({oct_})({conv}) : ({oct_}){zero};")
        self.source = grid_stride_source(
            "quantize", f"const {ctype(in_dtype)}* __restrict__ x, {oct_}* __restrict__ y", it,
            self.work, body, helpers)


def epilogue_statements(epilogue: Sequence[dict], loads: Dict[int, str], acc: str = "y"):
    """C statements applying a layer's epilogue to float ``acc`` with the numpy backend's
    rounding (module doc); ``loads``: layer input index -> C expression of the operand's
    element (a float)."""
    out = []
    for e in epilogue:
        op = e["op"]
        if op == "scale":
            out.append(f"{acc} = __fmul_rn({acc}, {loads[e['input']]});")
        elif op == "add" and "scale" in e:  # an int8 residual, dequantized on load
            out.append(f"{acc} = __fadd_rn({acc}, __fmul_rn({loads[e['input']]}, "
                       f"{float_literal(np.float32(e['scale']))}));")
        elif op in ("bias", "add"):
            out.append(f"{acc} = __fadd_rn({acc}, {loads[e['input']]});")
        elif op == "act":
            out.append(f"{acc} = {activation_expr(e, acc)};")
        else:
            raise NotImplementedError(f"epilogue op {op!r}")
    return out


class QuantEpilogueSource:
    """CUDA source of kernel ``qepi(acc, *operands, y)``: for ``r < rows``, ``k < n``,
    ``y[r * n + k] = store(epilogue(float(acc[r * ld + k])))``.

    Args:
      acc_dtype: "int32" (INT8: ``__int2float_rn``) or "float32" (FP8 / the emulated path).
      ld: the accumulator's row stride (>= n: a GEMM whose N was padded).
      epilogue: the layer's epilogue (its first step the dequantization ``scale``).
      operand_modes: layer input index -> ("vec" [n] | "full" [rows, n], dtype) of every
        epilogue operand; the kernel takes them in sorted index order (:attr:`operands`).
      out_dtype: "float16", "float32", or "int8" with ``out_scale`` (requantization).
    """

    def __init__(self, rows: int, n: int, ld: int, acc_dtype: str, epilogue: Sequence[dict],
                 operand_modes: Dict[int, Tuple[str, str]], out_dtype: str,
                 out_scale: Optional[float] = None):
        acc_dtype, out_dtype = np.dtype(acc_dtype).name, np.dtype(out_dtype).name
        if acc_dtype not in ("int32", "float32"):
            raise ValueError(f"accumulator dtype {acc_dtype}")
        if out_dtype not in ("float16", "float32", "int8"):
            raise ValueError(f"a quantized layer's output is float16, float32 or int8, not "
                             f"{out_dtype}")
        if (out_dtype == "int8") != (out_scale is not None):
            raise ValueError("an int8 output needs its output scale (and only it)")
        if ld < n:
            raise ValueError(f"row stride {ld} < columns {n}")
        for i, (mode, _) in operand_modes.items():
            if mode not in ("vec", "full"):
                raise ValueError(f"epilogue operand {i}: broadcast {mode!r} not supported")
        self.rows, self.n, self.ld = int(rows), int(n), int(ld)
        self.acc_dtype, self.out_dtype = acc_dtype, out_dtype
        self.operands = sorted(operand_modes)
        self.work = self.rows * self.n
        it = _index_type(self.work, self.rows * self.ld)
        loads = {}
        for i in self.operands:
            mode, dt = operand_modes[i]
            loads[i] = load_expr(dt, f"e{i}[{'k' if mode == 'vec' else 't'}]")
            if np.dtype(dt) != np.float32 and np.dtype(dt) != np.float16:
                loads[i] = f"(float){loads[i]}"
        params = [f"const {ctype(acc_dtype)}* __restrict__ acc"]
        params += [f"const {ctype(operand_modes[i][1])}* __restrict__ e{i}"
                   for i in self.operands]
        params.append(f"{ctype(out_dtype)}* __restrict__ out")
        conv = "__int2float_rn" if acc_dtype == "int32" else ""
        stmts = "\n    ".join(epilogue_statements(epilogue, loads))
        if out_dtype == "int8":
            inv = float_literal(output_scale_inverse(out_scale))
            store = f"out[t] = q_int8(__fmul_rn(y, {inv}));"
        elif out_dtype == "float16":
            store = "out[t] = f2h(y);"
        else:
            store = "out[t] = y;"
        src_index = "t" if self.ld == self.n else "r * " + str(self.ld) + " + k"
        self.source = grid_stride_source(
            "qepi", ", ".join(params), it, self.work,
            f"const {it} r = t / {self.n}; const int k = (int)(t - r * {self.n});\n"
            f"    float y = {conv}(acc[{src_index}]);\n    {stmts}\n    {store}",
            INT8_HELPERS if out_dtype == "int8" else "")
        # r is unused when ld == n and no operand is per channel; keep the compilers quiet
        self.source = self.source.replace("const int k", "(void)r; const int k")


def output_scale_inverse(out_scale: float) -> np.float32:
    """The float32 reciprocal the requantization multiplies by (quantization.inv_scale)."""
    return np.float32(Q.inv_scale(out_scale))


# --- host-side planning ----------------------------------------------------------------------
def layer_format(layer) -> str:
    """"int8" or "fp8_e4m3" of a quantized layer."""
    return layer.attrs["quant"]["format"]


def conv_weight(w: np.ndarray, cp: int) -> np.ndarray:
    """A quantized conv weight (KRSC [K, *R, C]) with its channel axis zero-padded to ``cp``."""
    w = np.asarray(w)
    c = w.shape[-1]
    if cp == c:
        return np.ascontiguousarray(w)
    pad = [(0, 0)] * (w.ndim - 1) + [(0, cp - c)]
    return np.pad(w, pad)  # zero: int8 0 and E4M3 code 0x00 are both +0


# --- pixel pairs: a narrow stride-1 conv as a conv of twice the channels (q_cudnn_pairs) -----
# NHWC [N, H, W, C] with W even is, byte for byte, [N, H, W / 2, 2 C]: each "pixel" a pair of
# horizontally adjacent ones. A stride-1 conv S wide (S odd, p = (S - 1) / 2 columns of
# padding each side) is then a conv over the pairs with 2 C input and 2 K output channels,
# S' = 2 p' + 1 pairs wide with p' = ceil(p / 2) pairs of padding: pair output column j, half
# ho, reads pair column j + sp - p', half hi -- the original column 2 (j + sp - p') + hi, tap
# t = 2 (sp - p') + hi - ho + p of the original filter where 0 <= t < S, zero elsewhere.
# A pair column past either edge is wholly padding exactly where its two columns are (W is
# even), so the sums are the same products: exact in int32, and the same fp32 products in
# FP8. It costs 2 S' / S times the multiply-adds (2x for S = 3) and can pay only where the
# library runs 2 C channels more than twice as fast as C: cuDNN's int8 fusion engine ran
# ResNet50's stage-1 3x3 conv (64 channels, 56 x 56) in 91 us at best on an H100 (s36), the
# stage-2 one (128 channels, 28 x 28, the same multiply-adds) in 28 (s46).
PAIRS_MAX_CHANNELS = 64


def pairs_unsupported(x_shape, w_shape, strides, dilations, pads, group) -> Optional[str]:
    """Why a quantized conv cannot run over pixel pairs (above), or None. ``w_shape`` is KRSC,
    ``pads`` [begin..., end...] as the layer's attrs."""
    if len(x_shape) != 4 or len(w_shape) != 4:
        return "not a 2-D conv"
    if group != 1:
        return "a grouped conv"
    if list(strides) != [1, 1] or list(dilations) != [1, 1]:
        return "strided or dilated"
    k, _, s, c = (int(d) for d in w_shape)
    p = (s - 1) // 2
    if s < 3 or s % 2 == 0 or list(pads)[1] != p or list(pads)[3] != p:
        return f"{s} wide with padding {list(pads)}: pairs take an odd width >= 3, padded 'same'"
    if int(x_shape[2]) % 2:
        return f"an odd width ({x_shape[2]})"
    if max(c, k) > PAIRS_MAX_CHANNELS:
        return (f"{c} -> {k} channels: more than {PAIRS_MAX_CHANNELS} run well as they are "
                f"(PAIRS_MAX_CHANNELS)")
    return None


def pairs_enabled() -> bool:
    """``TFTRT_QUANT_CUDNN_PAIRS`` (default on: 1 offers tactic ``q_cudnn_pairs``, which the
    builder times against the others per layer; ResNet50's stage-1 3x3 convs ran 51 us over
    pairs against 85-94 us on q_mma / q_cudnn, H100 2026-12-07; 0 takes it away)."""
    from tftrt.env import env_bool
    return env_bool("TFTRT_QUANT_CUDNN_PAIRS", True)


def pairs_layer_reason(net, layer) -> Optional[str]:
    """Why quantized conv ``layer`` of ``net`` does not run over pixel pairs, or None: the
    geometry (:func:`pairs_unsupported`), and its per-channel epilogue operands must be
    constants (the pair conv tiles them once, when it is built). The switch
    (:func:`pairs_enabled`) decides what a build offers, not what a built plan runs."""
    if layer.kind != "conv" or "quant" not in layer.attrs:
        return "not a quantized conv"
    a = layer.attrs
    shapes = {n: tuple(net.tensors[n].shape) for n in layer.inputs + layer.outputs if n}
    if any(not isinstance(d, (int, np.integer)) or d < 0 for s in shapes.values() for d in s):
        return "a dynamic shape"
    shape = lambda name: tuple(int(d) for d in shapes[name])  # noqa: E731
    why = pairs_unsupported(shape(layer.inputs[0]), shape(layer.inputs[1]), a["strides"],
                            a["dilations"], a["pads"], a["group"])
    if why is not None:
        return why
    y = shape(layer.outputs[0])
    for e in layer.epilogue:
        if "input" in e:
            name = layer.inputs[e["input"]]
            if shape(name) != y and name not in net.weights:
                return f"per-channel operand {name!r} computed at run time"
    return None


def paired_shape(shape) -> Tuple[int, ...]:
    """[N, H, W, C] as pairs of columns: [N, H, W / 2, 2 C] (the same bytes)."""
    n, h, w, c = (int(d) for d in shape)
    return (n, h, w // 2, 2 * c)


def paired_pads(pads) -> list:
    """The pair conv's padding: the height's as it was, ceil(p / 2) pairs each side."""
    hb, wb, he, _ = (int(d) for d in pads)
    return [hb, (wb + 1) // 2, he, (wb + 1) // 2]


def paired_conv_weight(w: np.ndarray) -> np.ndarray:
    """KRSC [K, R, S, C] of a conv that :func:`pairs_unsupported` takes -> the pair conv's
    [2 K, R, S', 2 C]: output channel ho K + k, input channel hi C + c (halves of a pair)."""
    w = np.asarray(w)
    k, r, s, c = w.shape
    p = (s - 1) // 2
    pp = (p + 1) // 2
    out = np.zeros((2, k, r, 2 * pp + 1, 2, c), w.dtype)  # [ho, K, R, S', hi, C]
    for sp in range(2 * pp + 1):
        for hi in range(2):
            for ho in range(2):
                t = 2 * (sp - pp) + hi - ho + p
                if 0 <= t < s:
                    out[ho, :, :, sp, hi, :] = w[:, :, t, :]
    return out.reshape(2 * k, r, 2 * pp + 1, 2 * c)


def paired_operand(shape, y_shape) -> Tuple[int, ...]:
    """An epilogue operand's shape in the pair conv: a per-channel vector twice as long (its
    values tiled), a full one as pairs."""
    if tuple(shape) == tuple(y_shape):
        return paired_shape(shape)
    return (2 * int(y_shape[-1]),)


def gemm_weight(w: np.ndarray, kind: str, transpose_b: bool, kp: int, np_: int) -> np.ndarray:
    """The weight of a quantized GEMM (matmul [K, N] / [N, K] transposed, or a conv KRSC
    [N, *R, C]: K = taps x C, tap-major, as an implicit GEMM reads it) as [np_, kp],
    K-contiguous (cuBLASLt's "TN" operand), zero-padded."""
    w = np.asarray(w)
    if kind == "conv":
        nk = w.reshape(w.shape[0], -1)
    else:
        nk = w if transpose_b else w.T
    n, k = nk.shape
    out = np.zeros((np_, kp), w.dtype)
    out[:n, :k] = nk
    return out


def weight_values(w: np.ndarray, fmt: str) -> np.ndarray:
    """float16 values of a stored quantized weight (int8, or E4M3 codes): exact."""
    if fmt == FP8:
        return Q.e4m3_decode(w).astype(np.float16)
    return np.asarray(w).astype(np.float16)


def gemm_dims(kind: str, x_shape, w_shape, attrs) -> Optional[Tuple[int, int, int]]:
    """(M, K, N) of a quantized layer that is one GEMM over channels-last rows of its input
    (a matmul without transpose_a, or a 1x1 / stride-1 / unpadded / group-1 conv), else None."""
    x_shape = tuple(x_shape)
    if kind == "conv":
        if attrs["group"] != 1 or any(d != 1 for d in w_shape[1:-1]) or \
                any(s != 1 for s in attrs["strides"]) or any(attrs["pads"]):
            return None
        return int(np.prod(x_shape[:-1])), int(w_shape[-1]), int(w_shape[0])
    if kind != "matmul" or attrs.get("transpose_a") or len(w_shape) != 2:
        return None
    k, n = (w_shape[1], w_shape[0]) if attrs.get("transpose_b") else tuple(w_shape)
    if not x_shape or x_shape[-1] != k:
        return None
    return int(np.prod(x_shape[:-1])), int(k), int(n)


def epilogue_operand_modes(epilogue, shapes: Dict[int, tuple], dtypes: Dict[int, str],
                           y_shape: tuple) -> Dict[int, Tuple[str, str]]:
    """Layer input index -> ("vec" | "full", dtype) of each epilogue operand; ValueError for
    a broadcast the quantized epilogue kernel does not take."""
    modes = {}
    for e in epilogue:
        if "input" not in e:
            continue
        i = e["input"]
        s = tuple(shapes[i])
        if s == (y_shape[-1],) or (len(s) == len(y_shape) and all(d == 1 for d in s[:-1]) and
                                   s[-1] == y_shape[-1]):
            modes[i] = ("vec", dtypes[i])
        elif s == tuple(y_shape):
            modes[i] = ("full", dtypes[i])
        else:
            raise ValueError(f"epilogue operand {i} of shape {s} does not broadcast per "
                             f"channel or elementwise to {tuple(y_shape)}")
    return modes


def layer_operand_modes(net, layer, y_shape) -> Dict[int, Tuple[str, str]]:
    """:func:`epilogue_operand_modes` of a quantized layer of ``net`` (its output of
    ``y_shape``), from its inputs' shapes and dtypes. A layer that took its projection shortcut
    (quantization.fuse_projections) names the shortcut's input x2 where its residual is: that
    operand is the shortcut's int8 codes, of y's shape."""
    idx = sorted({e["input"] for e in layer.epilogue if "input" in e})
    shapes = {i: tuple(net.tensors[layer.inputs[i]].shape) for i in idx}
    dtypes = {i: np.dtype(net.tensors[layer.inputs[i]].dtype).name for i in idx}
    fused = layer.attrs.get("projection")
    if fused is not None:
        res = int(fused["residual"])
        shapes[res], dtypes[res] = tuple(y_shape), "int8"
    return epilogue_operand_modes(layer.epilogue, shapes, dtypes, tuple(y_shape))


# --- build-time validation of the quantized implementations ----------------------------------
# A quantized layer's library implementation (a cuDNN graph variant and plan, a cuBLASLt
# algorithm) is run once when it is built, on seeded random inputs of the layer's real shapes
# (:func:`validation_inputs`), and its output compared with the emulated path's
# (``cupy_quant.QuantEmulated``: the same quantized values through a TF32 conv / GEMM, whose
# products and sums of int8 values are exact, then the same epilogue kernel) by
# :func:`compare_quantized`. One that disagrees is never used: the next variant / plan /
# implementation takes the layer, finally the emulated one. Bump VALIDATION_VERSION when the
# check changes: records carrying an older verdict are validated again.
VALIDATION_VERSION = 1

# What |got - want| may be, per element, beyond one rounding of the output format
# (OUTPUT_ULP * |want|), as a share of max|want| (the layer's output scale):
# * INT8: the int32 accumulator is exact in both paths and converts to float32 once, so the
#   only differences are the float epilogue's rounding order (a cuDNN-fused epilogue rounds
#   its own way; every step is one float32 rounding, 2**-24 of its operands, a
#   transcendental activation a few ulps): 2**-16 is 256 such roundings of the largest
#   value. The H200 measured <= 1.2e-7 for the fused epilogues that were right.
# * FP8: the library's fp32 accumulation order, and Hopper's FP8 tensor cores keep fewer
#   mantissa bits between promotions to fp32 (about 14): 2**-8. The H200 measured <= 1.2e-3
#   (cuBLASLt and cuDNN alike, K = 256); the failures it must catch (an unwritten or
#   misread output, a wrong layout, lost taps / channels) are of the order of max|want|.
# * An INT8 reference whose accumulator is not integral (a TF32 conv that rounds: Winograd
#   transforms) is itself off by up to ~2**-11 of the transformed sums: 2**-7 then.
ACC_TOLERANCE = {INT8: 2.0 ** -16, FP8: 2.0 ** -8}
INEXACT_REFERENCE_TOLERANCE = 2.0 ** -7
OUTPUT_ULP = {"float32": 2.0 ** -23, "float16": 2.0 ** -10}
# int8 (requantized) outputs: a float epilogue value on a rounding boundary may land one step
# away; never further, and on at most this share of the elements (plus one).
INT8_STEP_SHARE = {True: 0.005, False: 0.05}  # by "reference exact"
# Poison the outputs / scratch are filled with before a validation run, so that an output a
# library did not write cannot pass: int8 -128 (never produced: q_int8 saturates to +-127),
# NaN for floats, 0x7f bytes (int32 2139062143, float32 3.4e38) for accumulators.
INT8_POISON = -128
SCRATCH_POISON_BYTE = 0x7F


def validation_tolerance(fmt: str, out_dtype: str, ref_exact: bool = True) -> dict:
    """The bounds :func:`compare_quantized` applies (see ACC_TOLERANCE)."""
    out_dtype = np.dtype(out_dtype).name
    if fmt not in ACC_TOLERANCE:
        raise ValueError(f"quantized format {fmt!r}; one of {sorted(ACC_TOLERANCE)}")
    if out_dtype == "int8":
        return {"kind": "int8", "max_steps": 1, "step_share": INT8_STEP_SHARE[bool(ref_exact)]}
    if out_dtype not in OUTPUT_ULP:
        raise ValueError(f"a quantized layer's output is float16, float32 or int8, not "
                         f"{out_dtype}")
    rel = ACC_TOLERANCE[fmt] if ref_exact else max(ACC_TOLERANCE[fmt],
                                                   INEXACT_REFERENCE_TOLERANCE)
    return {"kind": "float", "rel": rel, "ulp": OUTPUT_ULP[out_dtype]}


def compare_quantized(got, want, fmt: str, out_dtype: str, ref_exact: bool = True,
                      xp=np) -> Tuple[bool, str, dict]:
    """Whether a quantized implementation's output ``got`` is the reference ``want`` within
    :func:`validation_tolerance` (arrays of one shape; ``xp`` their array module, numpy or
    CuPy, so the comparison runs where the arrays are). Returns (ok, what was measured --
    the reason when not ok --, stats)."""
    tol = validation_tolerance(fmt, out_dtype, ref_exact)
    if tuple(got.shape) != tuple(want.shape):
        return False, f"shape {tuple(got.shape)} is not {tuple(want.shape)}", {}
    n = int(np.prod(want.shape, dtype=np.int64))
    if n == 0:
        return True, "empty output", {"n": 0}
    if tol["kind"] == "int8":
        g, w = got.astype(xp.int32), want.astype(xp.int32)
        unwritten = int(xp.count_nonzero(g == INT8_POISON))
        d = xp.abs(g - w)
        worst = int(d.max())
        steps = int(xp.count_nonzero(d == 1))
        far = int(xp.count_nonzero(d > 1))
        allowed = int(tol["step_share"] * n) + 1
        stats = {"n": n, "max_steps": worst, "one_step": steps, "further": far,
                 "unwritten": unwritten}
        how = (f"int8 out: {steps} of {n} one step off (allowed {allowed}), {far} further "
               f"(max {worst} steps)")
        if unwritten and far:
            how += f"; {unwritten} hold the poison value {INT8_POISON} (not written?)"
        return far == 0 and steps <= allowed, how, stats
    # float32 differences (|d| within 2**-24 of the operands, far below every bound) keep a
    # large output's temporaries on the GPU at 4 bytes an element
    g, w = got.astype(xp.float32, copy=False), want.astype(xp.float32, copy=False)
    fin_w, fin_g = xp.isfinite(w), xp.isfinite(g)
    nan_w, nan_g = xp.isnan(w), xp.isnan(g)
    bad_nan = int(xp.count_nonzero(nan_w != nan_g))
    bad_inf = int(xp.count_nonzero((xp.isinf(w) | xp.isinf(g)) & (g != w)))
    if bad_nan or bad_inf:
        unwritten = int(xp.count_nonzero(nan_g & ~nan_w))
        how = (f"non-finite values differ: {bad_nan} NaN mismatches ({unwritten} NaN where "
               f"the reference is a number: the poison, not written?), {bad_inf} Inf "
               f"mismatches, of {n}")
        return False, how, {"n": n, "nan_mismatch": bad_nan, "inf_mismatch": bad_inf}
    both = fin_w & fin_g
    if not bool(both.any()):
        return True, "no finite values", {"n": n}
    wf, gf = xp.where(both, w, 0.0), xp.where(both, g, 0.0)
    scale = max(float(xp.abs(wf).max()), 1e-30)
    d = xp.abs(gf - wf)
    limit = tol["ulp"] * xp.abs(wf) + tol["rel"] * scale
    over = int(xp.count_nonzero(d > limit))
    err = float(d.max()) / scale
    exact = int(xp.count_nonzero(d == 0))
    stats = {"n": n, "max_rel": err, "over": over, "exact": exact, "scale": scale,
             "tol_rel": tol["rel"], "tol_ulp": tol["ulp"]}
    how = (f"max|d| {err:.2e} of max|ref| (limit {tol['rel']:.1e} + {tol['ulp']:.0e} "
           f"relative), {over} of {n} over, {100.0 * exact / n:.1f}% exact")
    return over == 0, how, stats


def validation_inputs(shapes: Dict[int, tuple], dtypes: Dict[int, str], fmt: str,
                      inv_scale: float, seed: int = 0) -> Dict[int, np.ndarray]:
    """Seeded random host inputs of a quantized layer's non-weight inputs (index -> shape /
    dtype): input 0 spans the whole quantized range (INT8: uniform in +-1.05 * 127 /
    inv_scale, so that the codes cover [-127, 127] and some saturate; FP8: +-448 /
    inv_scale * 2**-u, u uniform in [0, 18]: E4M3's binades from 448 down to its
    subnormals, some saturating); an int8 input 0 random codes in [-127, 127]; epilogue
    operands (residuals) standard normal."""
    rng = np.random.RandomState(seed)
    out = {}
    for i in sorted(shapes):
        shape, dt = tuple(shapes[i]), np.dtype(dtypes[i])
        if dt == np.int8:
            out[i] = rng.randint(-127, 128, shape).astype(np.int8)
        elif i != 0:
            out[i] = rng.standard_normal(shape).astype(dt)
        else:
            if fmt == INT8:
                v = rng.uniform(-1.05, 1.05, shape) * (Q.INT8_QMAX / float(inv_scale))
            else:
                mag = Q.FP8_E4M3_MAX / float(inv_scale) * np.exp2(-rng.uniform(0, 18, shape))
                v = mag * rng.choice([-1.0, 1.0], shape) * rng.uniform(0.97, 1.03, shape)
            out[i] = v.astype(dt)
    return out
