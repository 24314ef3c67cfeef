"""Numpy kernels of the reference backend: pointwise ops, conv, pooling, resize, NMS, ...

Every function takes and returns numpy arrays and follows the layer semantics documented in
network.py (ONNX opset 17 on the axes given; conv/pool/depth-space in NHWC). Float math runs
in float32 (float16 inputs are upcast by the caller), accumulation in BLAS sgemm.
"""

from __future__ import annotations

import itertools
import math
from typing import List, Sequence

import numpy as np


# --- pointwise ----------------------------------------------------------------------------------
def erf(x: np.ndarray) -> np.ndarray:
    """erf in float64 without scipy: Taylor series below 0.5, Numerical Recipes' erfc
    Chebyshev fit (relative error < 1.2e-7) above."""
    x = np.asarray(x, np.float64)
    z = np.abs(x)
    t = 1.0 / (1.0 + 0.5 * z)
    poly = (-1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (
        -0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (
            -0.82215223 + t * 0.17087277)))))))))
    big = 1.0 - t * np.exp(-z * z + poly)
    x2 = x * x
    term, small = x.copy(), x.copy()
    for n in range(1, 12):
        term = -term * x2 / n
        small = small + term / (2 * n + 1)
    small *= 2.0 / math.sqrt(math.pi)
    return np.where(z < 0.5, small, np.sign(x) * big)


def _int_div(a, b):
    # ONNX integer Div truncates toward zero (C semantics); numpy floor-divides: one more
    # where an inexact quotient is negative. (Through abs, INT_MIN stayed negative: INT_MIN / 2
    # came out positive, 1 / INT_MIN 1.)
    dt = np.result_type(a, b)
    b1 = np.where(b == 0, 1, b).astype(dt)  # in the result's type: uint64 / 3 stays integer
    with np.errstate(over="ignore"):
        q = np.floor_divide(a, b1)
        r = a - q * b1
    q = np.where((r != 0) & ((a < 0) != (b1 < 0)), q + 1, q)
    return q.astype(dt)


_NARROW_INTS = (np.dtype(np.int8), np.dtype(np.uint8))


def _cast(to, x):
    """astype, except float64 to float16 rounds through float32 as TF's (Eigen's) cast and
    the CUDA lowering do: numpy's single rounding gave 65504 where TF gives inf for
    65519.99999999. A float cast to int8 / uint8 saturates as TF's vectorized
    CPU kernel does (x86: truncate to int32, INT_MIN for NaN and values past int32, then
    pack with saturation): numpy wrapped, and ``tf.cast(tanh(y) * 255, tf.uint8)`` answered
    126 where TF answers 0 (helper hunt, 2026-12-05)."""
    x = np.asarray(x)
    to = np.dtype(to)
    if to == np.float16 and x.dtype == np.float64:
        x = x.astype(np.float32)
    if to in _NARROW_INTS and x.dtype.kind == "f":
        info = np.iinfo(to)
        with np.errstate(invalid="ignore"):
            wide = x.astype(np.int32)  # INT_MIN for NaN, +-inf and |x| >= 2**31, as x86
        return np.clip(wide, info.min, info.max).astype(to)
    return x.astype(to)


def _pow(a, b):
    a_arr = np.asarray(a)
    if a_arr.dtype.kind in "iu":
        b_arr = np.asarray(b)
        if b_arr.dtype.kind not in "iu":
            return np.power(a_arr.astype(np.float64), b_arr.astype(np.float64)).astype(
                a_arr.dtype)
        # exact, wrapping on overflow as TF's integer Pow does (float64 lost the low digits
        # of int64 results past 2**53: 3**39); a negative exponent keeps the float path
        # (the CUDA lowering's ipow does the same per element)
        with np.errstate(over="ignore"):
            exact = np.power(a_arr.astype(np.int64), np.maximum(b_arr, 0).astype(np.int64))
        neg = b_arr < 0
        if neg.any():
            small = np.power(a_arr.astype(np.float64), np.where(neg, b_arr, 0).astype(
                np.float64))  # |a ** -n| <= 1 where neg
            exact = np.where(neg, small.astype(np.int64), exact)
        return exact.astype(a_arr.dtype)
    return np.power(a_arr, np.asarray(b).astype(a_arr.dtype, copy=False))


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _elu(x, alpha):
    return np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0)))


def _clip(x, lo, hi):
    if lo is not None:
        x = np.maximum(x, np.asarray(lo).astype(x.dtype))
    if hi is not None:
        x = np.minimum(x, np.asarray(hi).astype(x.dtype))
    return x


def _gelu(x, approximate="none"):
    if approximate == "tanh":
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
    return (0.5 * x * (1 + erf(x / math.sqrt(2)))).astype(x.dtype)


PW = {
    "identity": lambda s, x: x,
    "neg": lambda s, x: -x,
    "abs": lambda s, x: np.abs(x),
    "exp": lambda s, x: np.exp(x),
    "log": lambda s, x: np.log(x),
    "sqrt": lambda s, x: np.sqrt(x),
    "reciprocal": lambda s, x: 1 / x,
    "floor": lambda s, x: np.floor(x),
    "ceil": lambda s, x: np.ceil(x),
    "round": lambda s, x: np.round(x),  # half to even, as ONNX Round
    "sign": lambda s, x: np.sign(x),
    "sin": lambda s, x: np.sin(x), "cos": lambda s, x: np.cos(x), "tan": lambda s, x: np.tan(x),
    "asin": lambda s, x: np.arcsin(x), "acos": lambda s, x: np.arccos(x),
    "atan": lambda s, x: np.arctan(x), "sinh": lambda s, x: np.sinh(x),
    "cosh": lambda s, x: np.cosh(x), "asinh": lambda s, x: np.arcsinh(x),
    "acosh": lambda s, x: np.arccosh(x), "atanh": lambda s, x: np.arctanh(x),
    "erf": lambda s, x: erf(x).astype(x.dtype),
    "relu": lambda s, x: np.maximum(x, 0),
    "leaky_relu": lambda s, x: np.where(x >= 0, x, x * s["alpha"]),
    "elu": lambda s, x: _elu(x, s["alpha"]),
    "selu": lambda s, x: s["gamma"] * _elu(x, s["alpha"]),
    "sigmoid": lambda s, x: _sigmoid(x),
    "hard_sigmoid": lambda s, x: np.clip(s["alpha"] * x + s["beta"], 0, 1),
    "tanh": lambda s, x: np.tanh(x),
    "softplus": lambda s, x: np.logaddexp(0, x),
    "softsign": lambda s, x: x / (1 + np.abs(x)),
    "gelu": lambda s, x: _gelu(x, s.get("approximate", "none")),
    "silu": lambda s, x: x * _sigmoid(x),
    "not": lambda s, x: np.logical_not(x),
    "isnan": lambda s, x: np.isnan(x),
    "isinf": lambda s, x: np.isinf(x),
    "cast": lambda s, x: _cast(s["to"], x),
    "add": lambda s, a, b: a + b,
    "sub": lambda s, a, b: a - b,
    "mul": lambda s, a, b: a * b,
    "div": lambda s, a, b: _int_div(a, b) if np.asarray(a).dtype.kind in "iu" and
    np.asarray(b).dtype.kind in "iu" else a / b,
    "pow": lambda s, a, b: _pow(a, b),
    "max": lambda s, a, b: np.maximum(a, b),
    "min": lambda s, a, b: np.minimum(a, b),
    "mod": lambda s, a, b: np.fmod(a, b) if s.get("fmod") else np.mod(a, b),
    "equal": lambda s, a, b: np.equal(a, b),
    "less": lambda s, a, b: np.less(a, b),
    "less_equal": lambda s, a, b: np.less_equal(a, b),
    "greater": lambda s, a, b: np.greater(a, b),
    "greater_equal": lambda s, a, b: np.greater_equal(a, b),
    "and": lambda s, a, b: np.logical_and(a, b),
    "or": lambda s, a, b: np.logical_or(a, b),
    "xor": lambda s, a, b: np.logical_xor(a, b),
    "prelu": lambda s, x, slope: np.where(x < 0, x * slope, x),
    "where": lambda s, c, a, b: np.where(c, a, b),
    "clip": lambda s, x, lo, hi: _clip(x, lo, hi),
}


def compute_dtype(dtype: str) -> np.dtype:
    """fp16 values are computed in fp32 (the GPU kernels do the same)."""
    return np.dtype(np.float32) if dtype == "float16" else np.dtype(dtype)


def run_program(program: List[dict], inputs: Sequence[np.ndarray]) -> np.ndarray:
    vals: List[np.ndarray] = []
    for st in program:
        args = []
        for a in st["args"]:
            if isinstance(a, str) and a[:1] == "$":
                args.append(inputs[int(a[1:])])
            elif isinstance(a, str) and a[:1] == "%":
                args.append(vals[int(a[1:])])
            else:
                args.append(a)
        r = np.asarray(PW[st["op"]](st, *args))
        if st.get("dtype") == "float16":
            # TF rounds each float16 op's result to float16; an fp32 value kept between fused
            # steps can fall on the other side of what follows: erf(2.9) is 0.99996 in fp32,
            # 1.0 in fp16, and a Cast to int, Floor or Equal after it then disagrees.
            r = r.astype(np.float16)
        cd = compute_dtype(st["dtype"]) if st.get("dtype") else r.dtype
        vals.append(r.astype(cd, copy=False))
    return vals[-1]


def pool_floor(floor_program, floor, dtype):
    """A max pool's floor (``floor``: the value of a window with no number) after the
    activation ``floor_program`` moved before the pool: that activation of it, in ``dtype``."""
    with np.errstate(all="ignore"):
        v = run_program(floor_program, [np.asarray([floor], dtype)])
    return np.asarray(v, dtype).reshape(-1)[0]


def apply_activation(y: np.ndarray, e: dict) -> np.ndarray:
    fn = e["fn"]
    if fn == "clip":
        return _clip(y, e.get("min"), e.get("max"))
    return PW[fn](e, y)


# --- convolution --------------------------------------------------------------------------------
def _pad_spatial(x, pads, value=0.0, extra_end=None):
    nsp = x.ndim - 2
    extra_end = extra_end or [0] * nsp
    widths = [(0, 0)] + [(pads[i], pads[nsp + i] + extra_end[i]) for i in range(nsp)] + [(0, 0)]
    if not any(a or b for a, b in widths):
        return x
    return np.pad(x, widths, constant_values=value)


def _window_slices(kpos, dil, strides, out_sp):
    return (slice(None),) + tuple(
        slice(k * d, k * d + (o - 1) * s + 1, s) for k, d, s, o in zip(kpos, dil, strides, out_sp)
    ) + (slice(None),)


def conv_out_spatial(x_sp, k, strides, dil, pads):
    nsp = len(x_sp)
    return [(x_sp[i] + pads[i] + pads[nsp + i] - ((k[i] - 1) * dil[i] + 1)) // strides[i] + 1
            for i in range(nsp)]


def im2col(xp: np.ndarray, k, strides, dil, out_sp) -> np.ndarray:
    """Padded NHWC x -> [N, *out, prod(K), C] patches (kernel positions in row-major order)."""
    n, c = xp.shape[0], xp.shape[-1]
    cols = np.empty((n, *out_sp, int(np.prod(k)), c), xp.dtype)
    for p, kpos in enumerate(itertools.product(*[range(kk) for kk in k])):
        cols[..., p, :] = xp[_window_slices(kpos, dil, strides, out_sp)]
    return cols


def conv_im2col(x, wmat, k, strides, dil, pads, group, cout):
    """Conv as one GEMM per group. wmat: [G, prod(K)*Cin/G, Cout/G] (prepared from KRSC)."""
    out_sp = conv_out_spatial(x.shape[1:-1], k, strides, dil, pads)
    cols = im2col(_pad_spatial(x, pads), k, strides, dil, out_sp)
    n, p, cin = x.shape[0], cols.shape[-2], x.shape[-1]
    m = n * int(np.prod(out_sp))
    if group == 1:
        y = cols.reshape(m, p * cin) @ wmat[0]
    else:
        cg = cin // group
        cols = cols.reshape(m, p, group, cg).transpose(2, 0, 1, 3).reshape(group, m, p * cg)
        y = np.matmul(cols, wmat).transpose(1, 0, 2).reshape(m, cout)
    return y.reshape(n, *out_sp, cout)


def conv_1x1(x, wmat, strides, pads):
    """1x1 conv: (strided) slice then one GEMM. wmat: [Cin, Cout]."""
    x = _pad_spatial(x, pads)
    if any(s != 1 for s in strides):
        x = x[(slice(None),) + tuple(slice(None, None, s) for s in strides) + (slice(None),)]
    return (x.reshape(-1, x.shape[-1]) @ wmat).reshape(*x.shape[:-1], wmat.shape[-1])


def conv_depthwise(x, wdw, k, strides, dil, pads):
    """Depthwise conv (group == Cin): multiply-accumulate per kernel position.
    wdw: [prod(K), C, mult]; output channel c*mult + j as in ONNX grouped conv."""
    out_sp = conv_out_spatial(x.shape[1:-1], k, strides, dil, pads)
    xp = _pad_spatial(x, pads)
    c, mult = wdw.shape[1], wdw.shape[2]
    acc = np.zeros((x.shape[0], *out_sp, c, mult), np.float32)
    for p, kpos in enumerate(itertools.product(*[range(kk) for kk in k])):
        acc += xp[_window_slices(kpos, dil, strides, out_sp)][..., None] * wdw[p]
    return acc.reshape(x.shape[0], *out_sp, c * mult)


def conv_transpose(x, w, strides, dil, pads, out_pad, group):
    """NHWC transposed conv: GEMM to per-tap contributions, then strided scatter-add.
    w: [Cin, *K, Cout/G]."""
    nsp = x.ndim - 2
    k = w.shape[1:-1]
    n, sp, cin = x.shape[0], x.shape[1:-1], x.shape[-1]
    coutg = w.shape[-1]
    full = [strides[i] * (sp[i] - 1) + (k[i] - 1) * dil[i] + 1 + out_pad[i] for i in range(nsp)]
    y = np.zeros((n, *full, coutg * group), np.float32)
    cg = cin // group
    ntap = int(np.prod(k))
    for g in range(group):
        xg = x[..., g * cg:(g + 1) * cg].reshape(-1, cg)
        wg = w[g * cg:(g + 1) * cg].reshape(cg, ntap * coutg)
        taps = (xg @ wg).reshape(n, *sp, ntap, coutg)
        for p, kpos in enumerate(itertools.product(*[range(kk) for kk in k])):
            sl = (slice(None),) + tuple(slice(kp * d, kp * d + (s_ - 1) * st + 1, st)
                                        for kp, d, st, s_ in zip(kpos, dil, strides, sp))
            y[sl + (slice(g * coutg, (g + 1) * coutg),)] += taps[..., p, :]
    crop = (slice(None),) + tuple(slice(pads[i], full[i] - pads[nsp + i]) for i in range(nsp))
    return y[crop + (slice(None),)]


# --- pooling ------------------------------------------------------------------------------------
def pool(x, mode, kernel, strides, dil, pads, ceil_mode, count_include_pad, out_sp,
         out_dtype=None, floor_program=None, pad_value=None):
    """Max or average pooling of an N...C tensor.

    Max pooling of floats gives what TF's CPU kernels give (measured on TF 2.21; ``out_dtype``,
    the stored dtype, names the ``lowest`` below):
      * 1-D / 2-D (MaxPool, MaxPoolV2, with or without oneDNN): the largest value of the window
        that is not NaN, and never less than ``lowest`` (the dtype's most negative finite
        value): a window of NaN or -inf gives ``lowest``.
      * 3-D (MaxPool3D, Eigen's kernel, oneDNN off): a scan of the window in order from -inf
        with ``acc = acc if acc > v else v``, padding counted as ``lowest``: a NaN is kept
        only until the next value, so the result is the largest value after the window's last
        NaN (NaN when the NaN is last). oneDNN's MaxPool3D instead does what the 2-D kernel
        does (docs/differences.md).
    Average pooling propagates NaN and inf as a sum does. ``floor_program``: the program of an
    activation moved before the pool (passes/activation_motion): ``lowest`` becomes that
    activation of it, the 2-D kernels' floor after the activation. ``pad_value`` (max only):
    the explicit pads hold this value, as a constant pad before the pool would have written
    (passes/pad_folding), instead of ``lowest``; the ceil-mode region past them does not.
    """
    nsp = x.ndim - 2
    sp = x.shape[1:-1]
    # ceil_mode can make the last window run past the explicit end pad: pad that extra
    # region too, but never count it in an average (as onnxruntime and cuDNN do).
    extra = [max(0, (out_sp[i] - 1) * strides[i] + (kernel[i] - 1) * dil[i] + 1
                 - (sp[i] + pads[i] + pads[nsp + i])) for i in range(nsp)]
    if mode == "max":
        windows = itertools.product(*[range(kk) for kk in kernel])
        if pad_value is not None:  # the pads as a constant pad writes them; then no pads
            x = _pad_spatial(x, pads, np.asarray(pad_value).astype(x.dtype))
            pads = [0] * len(pads)
        if x.dtype.kind != "f":
            xp = _pad_spatial(x, pads, np.iinfo(x.dtype).min, extra)
            acc = None
            for kpos in windows:
                v = xp[_window_slices(kpos, dil, strides, out_sp)]
                acc = v.copy() if acc is None else np.maximum(acc, v, out=acc)
            return acc
        lowest = np.finfo(np.dtype(out_dtype or x.dtype)).min.astype(x.dtype)
        if floor_program:
            lowest = pool_floor(floor_program, lowest, x.dtype)
        xp = _pad_spatial(x, pads, lowest, extra)
        shape = (x.shape[0], *out_sp, x.shape[-1])
        if nsp == 3:
            acc = np.full(shape, -np.inf, x.dtype)
            for kpos in windows:
                v = xp[_window_slices(kpos, dil, strides, out_sp)]
                acc = np.where(acc > v, acc, v)
            return acc
        acc = np.full(shape, lowest, x.dtype)
        for kpos in windows:
            np.fmax(acc, xp[_window_slices(kpos, dil, strides, out_sp)], out=acc)
        return acc
    xp = _pad_spatial(x.astype(np.float32, copy=False), pads, 0.0, extra)
    if count_include_pad:
        mask = _pad_spatial(np.ones((1, *[sp[i] + pads[i] + pads[nsp + i] for i in range(nsp)],
                                     1), np.float32), [0] * (2 * nsp), 0.0, extra)
    else:
        mask = _pad_spatial(np.ones((1, *sp, 1), np.float32), pads, 0.0, extra)
    acc = np.zeros((x.shape[0], *out_sp, x.shape[-1]), np.float32)
    cnt = np.zeros((1, *out_sp, 1), np.float32)
    for kpos in itertools.product(*[range(kk) for kk in kernel]):
        sl = _window_slices(kpos, dil, strides, out_sp)
        acc += xp[sl]
        cnt += mask[sl]
    return acc / np.maximum(cnt, 1)


# --- reductions ---------------------------------------------------------------------------------
def reduce(x, op, axes, keepdims):
    if not axes:
        return x
    ax = tuple(axes)
    kd = bool(keepdims)
    if op == "sum":
        return np.sum(x, axis=ax, keepdims=kd)
    if op == "mean":
        return np.mean(x, axis=ax, keepdims=kd)
    if op == "max":
        return _extreme(np.max, x, ax, kd)
    if op == "min":
        return _extreme(np.min, x, ax, kd)
    if op == "prod":
        return np.prod(x, axis=ax, keepdims=kd)
    if op == "l1":
        return np.sum(np.abs(x), axis=ax, keepdims=kd)
    if op == "l2":
        return np.sqrt(np.sum(np.square(x), axis=ax, keepdims=kd))
    if op == "sum_square":
        return np.sum(np.square(x), axis=ax, keepdims=kd)
    if op == "log_sum":
        return np.log(np.sum(x, axis=ax, keepdims=kd))
    if op == "log_sum_exp":
        m = _extreme(np.max, x, ax, True)
        m = np.where(np.isfinite(m), m, 0)
        r = np.log(np.sum(np.exp(x - m), axis=ax, keepdims=True)) + m
        return r if kd else np.squeeze(r, axis=ax)
    raise ValueError(f"unknown reduce op {op}")


def _extreme(f, x, ax, kd):
    """np.max / np.min of ``x`` over ``ax``; over no elements, TF's identity: -inf / +inf for
    floats, the type's lowest / highest for integers, False / True for bools (numpy raised,
    and the engine fell back on every such call: helper hunt, 2026-12-01)."""
    if x.size:
        return f(x, axis=ax, keepdims=kd)
    top = f is np.min
    if x.dtype.kind == "f":
        init = np.inf if top else -np.inf
    elif x.dtype.kind == "b":
        init = top
    else:
        info = np.iinfo(x.dtype)
        init = info.max if top else info.min
    return f(x, axis=ax, keepdims=kd, initial=init)


def arg_reduce(x, op, axis, keepdims, select_last_index):
    """ArgMax / ArgMin as TF's CPU kernel: NaN is never chosen (the first extreme among the
    other values; index 0 when all are NaN)."""
    f = np.argmax if op == "max" else np.argmin
    if x.dtype.kind == "f":
        x = np.where(np.isnan(x), -np.inf if op == "max" else np.inf, x)
    if select_last_index:
        idx = x.shape[axis] - 1 - f(np.flip(x, axis), axis=axis)
    else:
        idx = f(x, axis=axis)
    idx = idx.astype(np.int64)
    return np.expand_dims(idx, axis) if keepdims else idx


def softmax(x, axis, log, dead_rows_uniform=True):
    """Softmax / LogSoftmax. A row whose values are all -inf is NaN in TF; with
    ``dead_rows_uniform`` it comes out uniform instead. Such rows come from masks: Keras writes
    masked scores as -2.4e38 (where(mask, s, -2.4e38)), which is finite in fp32 (uniform rows
    where every key is masked) but -inf once an FP16 engine stores it; without this those rows
    would be NaN and spread through later layers."""
    if x.shape[axis] == 0:  # nothing to normalize: TF returns the empty rows as they are
        return x.copy()
    m = np.max(x, axis=axis, keepdims=True)
    dead = np.isneginf(m)
    if dead_rows_uniform and dead.any():
        x = np.where(dead, np.zeros((), x.dtype), x)
        m = np.where(dead, np.zeros((), m.dtype), m)
    e = x - m
    s = np.sum(np.exp(e), axis=axis, keepdims=True)
    return e - np.log(s) if log else np.exp(e) / s


def attention_p_dtype(out_dtype):
    """The dtype attention probabilities are rounded to before they meet v: the output's when
    it is narrower than fp32 (what a flash-attention kernel feeds its tensor cores)."""
    dt = np.dtype(out_dtype)
    return dt if dt.itemsize < 4 else None


def attention(q, k, v, scale, layout, p_dtype=None):
    """softmax(scale * q @ k^T) @ v over [B, H, S, D] ("bhsd") or [B, S, H, D] ("bshd")
    operands, in float32; the probabilities are rounded to ``p_dtype`` before they meet v (a
    flash-attention kernel feeds its tensor cores fp16 probabilities)."""
    q, k, v = (np.asarray(t, np.float32) for t in (q, k, v))
    if layout == "bshd":
        q, k, v = (t.transpose(0, 2, 1, 3) for t in (q, k, v))
    p = softmax(np.matmul(q, np.swapaxes(k, -1, -2)) * np.float32(scale), -1, False)
    if p_dtype is not None:
        p = p.astype(p_dtype).astype(np.float32)
    y = np.matmul(p, v)
    return y.transpose(0, 2, 1, 3) if layout == "bshd" else y


def se_stages(v, stages):
    """A squeeze-and-excitation vector through its stages (network.py, ``se``): rounding to a
    storage dtype, or a pointwise program over it; float32 between them."""
    for st in stages:
        if "round" in st:
            v = v.astype(st["round"]).astype(np.float32)
        else:
            v = run_program(st["program"], [v]).astype(np.float32)
    return v


def se_fc(v, wt, bias, act):
    """One fully connected step of ``se``, as the unfused 1x1 conv / matmul computes it:
    [N, Cin] @ wt [Cin, Cout] in float32, then bias and activation (the epilogue)."""
    y = v @ wt
    if bias is not None:
        y = y + bias
    return y if act is None else apply_activation(y, act)


def se(x, w1t, b1, w2t, b2, attrs):
    """``se`` (squeeze-and-excitation) in float32: the gate [N, C] from the spatial mean of x,
    then x scaled by it per sample and channel. ``w1t`` / ``w2t``: the weights transposed to
    [Cin, Cout] float32. Returns (y, gate)."""
    a = attrs
    p = se_stages(reduce(x, "mean", a["axes"], 0), a["pool"])
    h = se_stages(se_fc(p, w1t, b1, a["act1"]), a["hidden"])
    g = se_stages(se_fc(h, w2t, b2, a["act2"]), a["gate"])
    n, c = g.shape
    return x * g.reshape((n,) + (1,) * (x.ndim - 2) + (c,)), g


def normalization(x, scale, bias, axes, eps):
    ax = tuple(axes)
    mean = np.mean(x, axis=ax, keepdims=True)
    d = x - mean
    inv = 1.0 / np.sqrt(np.mean(d * d, axis=ax, keepdims=True) + np.float32(eps))
    y = d * inv
    if scale is not None:
        y = y * scale
    if bias is not None:
        y = y + bias
    return y, mean, inv


def descending_order(xp, key, axis: int, **sort_kw):
    """Indices sorting ``key`` largest first along ``axis``, ties in index order and NaN
    first (TF's CPU TopK places NaN by its position: docs/differences.md): a stable
    ascending sort of the reversed axis, reversed. Negating the key instead overflowed
    int32's INT_MIN (-INT_MIN is itself) and put NaN last."""
    n = key.shape[axis]
    order = xp.argsort(xp.flip(key, axis), axis=axis, **sort_kw)
    return (n - 1) - xp.flip(order, axis)


def topk(x, k, axis, largest, sorted_):
    order = (descending_order(np, x, axis, kind="stable") if largest else
             np.argsort(x, axis=axis, kind="stable"))
    idx = np.take(order, np.arange(k), axis=axis)
    return np.take_along_axis(x, idx, axis=axis), idx.astype(np.int64)


def cumsum(x, axis, exclusive, reverse):
    if reverse:
        x = np.flip(x, axis)
    y = np.cumsum(x, axis=axis, dtype=x.dtype)
    if exclusive:
        y = np.concatenate([np.zeros_like(np.take(y, [0], axis=axis)),
                            np.take(y, np.arange(x.shape[axis] - 1), axis=axis)], axis=axis)
    return np.flip(y, axis) if reverse else y


# --- indexing -----------------------------------------------------------------------------------
def _wrap(idx, dim):
    idx = np.asarray(idx).astype(np.int64)
    return np.where(idx < 0, idx + dim, idx)


def gather(x, idx, axis):
    n = x.shape[axis]
    w = _wrap(idx, n)
    if w.size and (w.min() < 0 or w.max() >= n):
        # converters/array.py sends TF's negative indices here as the largest index
        raise IndexError(f"gather index out of range [0, {n}) (TF's CPU kernel rejects it; a "
                         f"negative index counts as out of range for TensorFlow's gather)")
    return np.take(x, w, axis=axis)


def gather_elements(x, idx, axis):
    # indices may be smaller than x on the other axes: index with open grids of idx's shape.
    grid = list(np.ogrid[tuple(slice(0, s) for s in np.shape(idx))])
    grid[axis] = _wrap(idx, x.shape[axis])
    return x[tuple(grid)]


def gather_nd(x, idx, batch_dims):
    idx = np.asarray(idx).astype(np.int64)
    b = batch_dims
    m = idx.shape[-1]
    bshape = x.shape[:b]
    nb = int(np.prod(bshape, dtype=np.int64))
    xb = x.reshape((nb,) + x.shape[b:])
    ib = idx.reshape((nb, -1, m))
    out = []
    for i in range(nb):
        ii = _wrap(ib[i], np.array(x.shape[b:b + m]))
        out.append(xb[i][tuple(ii.T)])
    res = np.stack(out) if out else np.zeros((0,), x.dtype)
    return res.reshape(idx.shape[:-1] + x.shape[b + m:])


def scatter_nd(data, idx, updates, reduction):
    out = np.array(data, copy=True)
    idx = np.asarray(idx).astype(np.int64)
    k = idx.shape[-1]
    flat_idx = _wrap(idx.reshape(-1, k), np.array(data.shape[:k]))
    upd = updates.reshape((-1,) + data.shape[k:])
    key = tuple(flat_idx.T)
    if reduction == "none":
        for i in range(flat_idx.shape[0]):
            out[tuple(flat_idx[i])] = upd[i]
    else:
        ufunc = {"add": np.add, "mul": np.multiply, "max": np.maximum, "min": np.minimum}[
            reduction]
        ufunc.at(out, key, upd)
    return out


def onehot(idx, depth, values, axis):
    idx = _wrap(idx, depth)
    hot = idx[..., None] == np.arange(depth)
    y = np.where(hot, values[1], values[0]).astype(values.dtype)
    return np.moveaxis(y, -1, axis)


def depth_to_space(x, b, mode):
    n, h, w, c = x.shape
    cc = c // (b * b)
    if mode == "DCR":  # channel = (b1 * b + b2) * C' + c
        y = x.reshape(n, h, w, b, b, cc).transpose(0, 1, 3, 2, 4, 5)
    else:  # CRD: channel = c * b * b + b1 * b + b2
        y = x.reshape(n, h, w, cc, b, b).transpose(0, 1, 4, 2, 5, 3)
    return y.reshape(n, h * b, w * b, cc)


def space_to_depth(x, b, pads=None, channels=None):
    """NHWC space-to-depth (channel = (row in block * b + column in block) * C + c), after
    zero ``pads`` ([top, left, bottom, right]) around each image and zero channels appended
    up to ``channels``."""
    if pads is not None and any(pads) or channels is not None and channels != x.shape[-1]:
        pt, pl, pb, pr = pads or (0, 0, 0, 0)
        x = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, (channels or x.shape[-1]) - x.shape[-1])))
    n, h, w, c = x.shape
    y = x.reshape(n, h // b, b, w // b, b, c).transpose(0, 1, 3, 2, 4, 5)
    return y.reshape(n, h // b, w // b, b * b * c)


def range_(start, limit, delta):
    s, l, d = (np.asarray(v).reshape(()) for v in (start, limit, delta))
    n = max(int(math.ceil((l.item() - s.item()) / d.item())), 0)
    return (s + np.arange(n).astype(s.dtype) * d).astype(s.dtype)


# --- resize -------------------------------------------------------------------------------------
def _resize_coords(o, in_len, out_len, scale, mode, roi_s, roi_e):
    o = o.astype(np.float64)
    if mode == "half_pixel":
        return (o + 0.5) / scale - 0.5
    if mode == "pytorch_half_pixel":
        return (o + 0.5) / scale - 0.5 if out_len > 1 else np.zeros_like(o)
    if mode == "align_corners":
        return o * (in_len - 1) / (out_len - 1) if out_len > 1 else np.zeros_like(o)
    if mode == "asymmetric":
        return o / scale
    if mode == "tf_half_pixel_for_nn":
        return (o + 0.5) / scale
    if mode == "tf_crop_and_resize":
        if out_len > 1:
            return roi_s * (in_len - 1) + o * (roi_e - roi_s) * (in_len - 1) / (out_len - 1)
        return np.full_like(o, 0.5 * (roi_s + roi_e) * (in_len - 1))
    raise ValueError(f"Resize coordinate_transformation_mode {mode} is not supported")


def _cubic_weights(t, a):
    # Keys cubic convolution kernel for taps at offsets -1, 0, 1, 2.
    def k(d):
        d = np.abs(d)
        return np.where(d <= 1, ((a + 2) * d - (a + 3)) * d * d + 1,
                        np.where(d < 2, ((a * d - 5 * a) * d + 8 * a) * d - 4 * a, 0.0))
    return [k(t + 1), k(t), k(1 - t), k(2 - t)]


def resize(x, a):
    y = x.astype(np.float32, copy=False) if x.dtype.kind == "f" else x
    r = x.ndim
    roi = a["roi"]
    ctm = a["coordinate_transformation_mode"]
    for ax in range(r):
        in_len, out_len, scale = x.shape[ax], a["sizes"][ax], a["scales"][ax]
        if in_len == out_len and scale == 1.0 and ctm != "tf_crop_and_resize":
            continue
        xo = _resize_coords(np.arange(out_len), in_len, out_len, scale, ctm, roi[ax],
                            roi[r + ax])
        outside = (xo < 0) | (xo > in_len - 1) if ctm == "tf_crop_and_resize" else None
        bshape = [1] * r
        bshape[ax] = out_len
        if a["mode"] == "nearest":
            nm = a["nearest_mode"]
            if nm == "round_prefer_floor":
                i = np.ceil(xo - 0.5)
            elif nm == "round_prefer_ceil":
                i = np.floor(xo + 0.5)
            elif nm == "floor":
                i = np.floor(xo)
            else:
                i = np.ceil(xo)
            y = np.take(y, np.clip(i, 0, in_len - 1).astype(np.int64), axis=ax)
        elif a["mode"] == "linear":
            xc = xo if ctm == "tf_crop_and_resize" else np.clip(xo, 0, in_len - 1)
            i0 = np.floor(xc)
            t = (xc - i0).reshape(bshape).astype(np.float32)
            i0 = np.clip(i0, 0, in_len - 1).astype(np.int64)
            i1 = np.clip(i0 + 1, 0, in_len - 1)
            y = np.take(y, i0, axis=ax) * (1 - t) + np.take(y, i1, axis=ax) * t
        else:  # cubic
            i0 = np.floor(xo)
            t = xo - i0
            ws = _cubic_weights(t, a["cubic_coeff_a"])
            idx = [i0.astype(np.int64) + d for d in (-1, 0, 1, 2)]
            if a["exclude_outside"]:
                ws = [np.where((i < 0) | (i > in_len - 1), 0.0, w) for i, w in zip(idx, ws)]
                tot = sum(ws)
                ws = [w / tot for w in ws]
            acc = 0
            for i, w in zip(idx, ws):
                acc = acc + np.take(y, np.clip(i, 0, in_len - 1), axis=ax) * \
                    w.reshape(bshape).astype(np.float32)
            y = acc
        if outside is not None and outside.any():
            y = np.where(outside.reshape(bshape), np.float32(a["extrapolation_value"]), y)
    return y


# --- NMS ----------------------------------------------------------------------------------------
def nms(boxes, scores, max_out, iou_thr, score_thr, center_point_box):
    max_out = 0 if max_out is None else int(np.asarray(max_out).reshape(-1)[0])
    iou_thr = 0.0 if iou_thr is None else float(np.asarray(iou_thr).reshape(-1)[0])
    score_thr = None if score_thr is None else float(np.asarray(score_thr).reshape(-1)[0])
    b = boxes.astype(np.float32)
    if center_point_box:
        xc, yc, w, h = b[..., 0], b[..., 1], b[..., 2], b[..., 3]
        y1, x1, y2, x2 = yc - h / 2, xc - w / 2, yc + h / 2, xc + w / 2
    else:
        y1 = np.minimum(b[..., 0], b[..., 2])
        y2 = np.maximum(b[..., 0], b[..., 2])
        x1 = np.minimum(b[..., 1], b[..., 3])
        x2 = np.maximum(b[..., 1], b[..., 3])
    area = (y2 - y1) * (x2 - x1)
    out = []
    for bi in range(scores.shape[0]):
        for ci in range(scores.shape[1]):
            s = scores[bi, ci]
            cand = np.arange(s.shape[0])
            if score_thr is not None:
                cand = cand[s[cand] > score_thr]
            cand = cand[np.argsort(-s[cand], kind="stable")]
            keep: List[int] = []
            for i in cand:
                if len(keep) >= max_out:
                    break
                ok = True
                for j in keep:
                    iy1, ix1 = max(y1[bi, i], y1[bi, j]), max(x1[bi, i], x1[bi, j])
                    iy2, ix2 = min(y2[bi, i], y2[bi, j]), min(x2[bi, i], x2[bi, j])
                    inter = max(iy2 - iy1, 0) * max(ix2 - ix1, 0)
                    union = area[bi, i] + area[bi, j] - inter
                    if union > 0 and inter / union > iou_thr:
                        ok = False
                        break
                if ok:
                    keep.append(int(i))
            out += [[bi, ci, k] for k in keep]
    return np.array(out, np.int64).reshape(-1, 3)


# --- quantization -------------------------------------------------------------------------------
def _per_axis(v, axis, rank):
    v = np.asarray(v)
    if v.ndim == 1 and v.size > 1:
        shape = [1] * rank
        shape[axis] = v.size
        return v.reshape(shape)
    return v


def quantize(x, scale, zp, axis, dtype):
    info = np.iinfo(np.dtype(dtype))
    s = _per_axis(scale, axis, x.ndim).astype(np.float32)
    z = 0 if zp is None else _per_axis(zp, axis, x.ndim).astype(np.float32)
    q = np.rint(x.astype(np.float32) / s) + z  # round half to even, then saturate
    return np.clip(q, info.min, info.max).astype(dtype)


def dequantize(x, scale, zp, axis):
    s = _per_axis(scale, axis, x.ndim)
    z = 0 if zp is None else _per_axis(zp, axis, x.ndim).astype(np.int32)
    return ((x.astype(np.int32) - z).astype(np.float32) * s).astype(s.dtype)
