"""CUDA C sources of the data-movement kernels, strings only (no CuPy; tests build them for the
host): resize (nearest / linear on one or two adjacent axes, the numpy reference's
coordinate math in host tables), concatenation in one pass over the output, and pooling. Split from
``cuda_source`` (the pointwise programs, the depthwise convolution and the shared helpers
they use); ``cupy_kernels_nn`` compiles them."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from tftrt.engine import quantization as Q
from tftrt.engine.backends import cuda_source_quant as S
from tftrt.engine.backends.cuda_source import (ctype, grid_stride_source, load_expr,
                                               store_expr)


# --- resize (nearest / linear on one or two adjacent axes) ---------------------------------------
def resize_axis_table(in_len: int, out_len: int, scale: float, attrs: dict, roi_s: float,
                      roi_e: float):
    """Host table of one resized axis, the numpy reference's math (numpy_ops.resize):
    nearest -> (idx int32 [out],); linear -> (idx int32 [2 * out]: lower then upper,
    t float32 [out]: the upper tap's weight)."""
    from tftrt.engine.backends import numpy_ops as ops
    xo = ops._resize_coords(np.arange(out_len), in_len, out_len, scale,
                            attrs["coordinate_transformation_mode"], roi_s, roi_e)
    if attrs["mode"] == "nearest":
        nm = attrs["nearest_mode"]
        i = {"round_prefer_floor": np.ceil(xo - 0.5), "round_prefer_ceil": np.floor(xo + 0.5),
             "floor": np.floor(xo)}.get(nm, np.ceil(xo))
        return (np.clip(i, 0, in_len - 1).astype(np.int32),)
    xc = np.clip(xo, 0, in_len - 1)
    i0 = np.floor(xc)
    t = (xc - i0).astype(np.float32)
    i0 = np.clip(i0, 0, in_len - 1).astype(np.int32)
    i1 = np.clip(i0 + 1, 0, in_len - 1).astype(np.int32)
    return np.concatenate([i0, i1]), t


class ResizeSource:
    """CUDA source of kernel ``resize(x, hi, ht, wi, wt, y)``: ONNX Resize, mode nearest or
    linear (any coordinate_transformation_mode but tf_crop_and_resize), when the resized axes
    are one axis or two adjacent ones: x is viewed as [O, H, W, I] -> y [O, H2, W2, I] (NHWC:
    O = N, I = C; NCHW: O = N * C, I = 1; one resized axis: W = W2 = 1). The per-axis index and
    weight tables (:attr:`tables`: hi, ht, wi, wt) are computed on the host with the numpy
    reference's math, so only the blend runs on the device: linear blends H first, then W, in
    float32, as the reference takes the axes in order. ``ht`` / ``wt`` are unused (one zero)
    for nearest. One output element per thread, :attr:`work` in a grid-stride loop.

    :meth:`plan` says whether a layer fits (None otherwise: the caller uses its fallback).
    """

    def __init__(self, x_shape, out_shape, axes: Sequence[int], tables, mode: str,
                 in_dtype: str, out_dtype: str):
        a = axes[0]
        O = int(np.prod(x_shape[:a], dtype=np.int64))
        I = int(np.prod(x_shape[axes[-1] + 1:], dtype=np.int64))
        H, H2 = x_shape[a], out_shape[a]
        W, W2 = (x_shape[a + 1], out_shape[a + 1]) if len(axes) == 2 else (1, 1)
        self.tables = tables
        self.work = O * H2 * W2 * I
        ct, oct_ = ctype(in_dtype), ctype(out_dtype)

        def ld(h, w):
            return load_expr(in_dtype, f"xo[((long long){h} * {W} + {w}) * {I}]")
        if mode == "nearest":
            blend = f"y[t] = {store_expr(out_dtype, ld('hi[h]', 'wi[w]'))};"
        else:
            blend = f"""const int h0 = hi[h], h1 = hi[{H2} + h], w0 = wi[w], w1 = wi[{W2} + w];
    const float ty = ht[h], tx = wt[w];
    const float l = {ld('h0', 'w0')} * (1.f - ty) + {ld('h1', 'w0')} * ty;
    const float r = {ld('h0', 'w1')} * (1.f - ty) + {ld('h1', 'w1')} * ty;
    y[t] = {store_expr(out_dtype, "l * (1.f - tx) + r * tx")};"""
        body = f"""const long long i = t % {I};
    long long q = t / {I};
    const int w = (int)(q % {W2}); q /= {W2};
    const int h = (int)(q % {H2});
    const {ct}* xo = x + (q / {H2}) * {H * W * I}LL + i;
    {blend}"""
        self.source = grid_stride_source(
            "resize", f"const {ct}* __restrict__ x, const int* __restrict__ hi, "
            f"const float* __restrict__ ht, const int* __restrict__ wi, "
            f"const float* __restrict__ wt, {oct_}* __restrict__ y", "long long", self.work,
            body)

    @classmethod
    def plan(cls, x_shape, attrs: dict, in_dtype: str, out_dtype: str):
        """A ResizeSource for a canonical resize layer (attrs sizes / scales / roi), or None
        when it does not fit: cubic, tf_crop_and_resize, non-float dtypes, resized axes that
        are not adjacent, or nothing resized."""
        mode, ctm = attrs["mode"], attrs["coordinate_transformation_mode"]
        floats = ("float16", "float32")
        if mode not in ("nearest", "linear") or ctm == "tf_crop_and_resize" or \
                np.dtype(in_dtype).name not in floats or np.dtype(out_dtype).name not in floats:
            return None
        r = len(x_shape)
        axes = [ax for ax in range(r) if not (x_shape[ax] == attrs["sizes"][ax]
                                              and attrs["scales"][ax] == 1.0)]
        if not axes or len(axes) > 2 or axes[-1] - axes[0] != len(axes) - 1:
            return None
        tabs = [resize_axis_table(x_shape[ax], attrs["sizes"][ax], attrs["scales"][ax], attrs,
                                  attrs["roi"][ax], attrs["roi"][r + ax]) for ax in axes]
        if len(axes) == 1:  # W = W2 = 1: index 0, weight 0
            tabs.append((np.zeros(1 if mode == "nearest" else 2, np.int32),
                         np.zeros(1, np.float32)))
        zero = np.zeros(1, np.float32)
        (hi, *ht), (wi, *wt) = tabs
        tables = (hi, ht[0] if ht else zero, wi, wt[0] if wt else zero)
        return cls(tuple(x_shape), tuple(attrs["sizes"]), axes, tables, mode, in_dtype,
                   out_dtype)



# --- concatenation -------------------------------------------------------------------------------
_VEC_CT = {16: "uint4", 8: "uint2", 4: "unsigned int", 2: "unsigned short", 1: "unsigned char"}


class ConcatSource:
    """y = concat(x_0, ..., x_{m-1}, axis) of one dtype in one pass over y.

    Viewed as rows: ``outer`` = the product of the dims before ``axis``, input k a row of
    ``L_k`` = its dims from ``axis`` on, y a row of sum(L_k). Each thread moves one vector of
    ``vec_bytes`` (the widest of 16 / 8 / 4 / 2 / 1 bytes dividing every L_k's bytes): for
    NHWC channel concats of fp16 with channels a multiple of 8, 16-byte vectors. The input a
    vector comes from is found by comparing its column with the baked-in offsets."""

    def __init__(self, in_shapes, axis: int, dtype: str):
        in_shapes = [tuple(int(d) for d in s) for s in in_shapes]
        r = len(in_shapes[0])
        axis = axis % r if r else 0
        isz = np.dtype(dtype).itemsize
        outer = int(np.prod(in_shapes[0][:axis], dtype=np.int64))
        rows = [int(np.prod(s[axis:], dtype=np.int64)) * isz for s in in_shapes]  # bytes
        self.vec_bytes = next(vb for vb in (16, 8, 4, 2, 1)
                              if vb >= isz and all(b % vb == 0 for b in rows))
        vb = self.vec_bytes
        cols = [b // vb for b in rows]
        total = sum(cols)
        self.work = outer * total
        self.num_inputs = len(in_shapes)
        it = "long long" if outer * sum(rows) >= 2 ** 31 - 64 else "int"
        ct = _VEC_CT[vb]
        lines = [f"const {it} row = t / {max(total, 1)};",
                 f"const {it} col = t % {max(total, 1)};"]
        off = 0
        for k, c in enumerate(cols):
            if c == 0:
                continue
            cond = "" if off + c == total else f"if (col < {off + c}) "
            prefix = "" if off == 0 else "else "
            lines.append(f"{prefix}{cond}{{ y[t] = x{k}[row * {c} + (col - {off})]; }}")
            off += c
        params = ", ".join([f"const {ct}* __restrict__ x{k}" for k in range(len(in_shapes))] +
                           [f"{ct}* __restrict__ y"])
        self.source = grid_stride_source("concat", params, it, self.work, "\n    ".join(lines))


# --- space-to-depth with padding and a dtype change --------------------------------------------
class SpaceToDepthSource:
    """y = space_to_depth(pad(x), b) (numpy_ops.space_to_depth: zero ``pads`` [top, left,
    bottom, right] around each image, zero channels up to ``channels``, then channel
    ``(p * b + q) * channels + c`` of output pixel (i, j) is padded pixel (b i + p, b j + q)'s
    channel c), converting x's dtype to y's on the way: a stem's float32 image becomes its
    float16 rearranged input in one pass (passes/stem_space_to_depth).

    One thread per output pixel and block position (n, i, j, p, q) writes its ``channels``
    consecutive elements from the ``C`` consecutive ones of its input pixel (zeros in the
    padding). The batch size is not in the source (:attr:`per_image`: the work of one image;
    ``work`` is an argument)."""

    def __init__(self, x_shape, b: int, pads, channels: int, x_dtype: str, y_dtype: str):
        h, w, c = (int(d) for d in x_shape[1:4])
        pt, pl, pb, pr = (int(p) for p in pads)
        b, cp_ = int(b), int(channels)
        if (h + pt + pb) % b or (w + pl + pr) % b or cp_ < c:
            raise ValueError(f"space_to_depth: padded {h + pt + pb} x {w + pl + pr} is not a "
                             f"multiple of block {b}, or {cp_} channels < {c}")
        hs, ws = (h + pt + pb) // b, (w + pl + pr) // b
        self.per_image = hs * ws * b * b
        self.out_image = (hs, ws, b * b * cp_)
        xt, yt = ctype(x_dtype), ctype(y_dtype)
        zero = store_expr(y_dtype, "0")
        val = store_expr(y_dtype, load_expr(x_dtype, "x[base + c]"))
        body = f"""const long long q = t % {b}, p = (t / {b}) % {b}, px = t / {b * b};
    const long long j = px % {ws}, i = (px / {ws}) % {hs}, n = px / {hs * ws};
    const long long ih = i * {b} + p - {pt}, iw = j * {b} + q - {pl};
    const bool in = ih >= 0 && ih < {h} && iw >= 0 && iw < {w};
    const long long base = ((n * {h} + (in ? ih : 0)) * {w} + (in ? iw : 0)) * {c};
    #pragma unroll
    for (int c = 0; c < {cp_}; ++c)
      y[t * {cp_} + c] = (in && c < {c}) ? {val} : {zero};"""
        params = f"const {xt}* __restrict__ x, {yt}* __restrict__ y"
        self.source = grid_stride_source("space_to_depth", params, "long long", 0, body)


# --- pooling (NHWC, any number of spatial dims) --------------------------------------------------
class PoolSource:
    """CUDA source of kernel ``pool(x, y)``: max / average pooling over [N, *S, C] with pads,
    dilations and ceil-mode windows; the average never counts the region beyond the explicit
    end pad (as the reference does). Float tensors with C a multiple of the 16-byte vector
    width move 16 bytes per access (``vec``)."""

    def __init__(self, x_shape, out_shape, mode, kernel, strides, dilations, pads,
                 count_include_pad, dtype: str, out_dtype: str, floor=None, pad_value=None,
                 out_scale=None, code_floor=None):
        """``floor``: a float max pool's value for a window with no number (default -inf,
        TF's GPU kernels; an activation moved before the pool changes it). ``pad_value``: a
        max pool's explicit pads hold this value, as if a constant pad had written it
        (passes/pad_folding folds a zero pad into the pool), rather than being skipped; in
        an int8 max pool of codes, the pad's code (quantization.absorb_pool_requantization).
        ``out_scale``: a float max pool whose INT8 readers take its output as int8 of this
        scale (quantization._requantize_pools) stores ``q_int8(max * (1 / out_scale))``, the
        quantization those readers would have applied on load (cuda_source_quant).
        ``code_floor``: an int8 max pool of codes whose producer stored NaN below them
        (quantization.NAN_CODE) raises its result to this (-127: a window of NaN only)."""
        nsp = len(x_shape) - 2
        sp, osp, c = x_shape[1:-1], out_shape[1:-1], x_shape[-1]
        fl = np.dtype(dtype).kind == "f"
        if out_scale is not None and not (fl and mode == "max" and
                                          np.dtype(out_dtype) == np.int8):
            raise ValueError(f"a requantizing pool is a float max pool with an int8 output, "
                             f"not a {mode} pool of {dtype} -> {out_dtype}")
        V = 16 // np.dtype(dtype).itemsize
        # 16-byte loads: float pools (to their dtype or requantized), and int8 max pools of
        # codes (an INT8 model's MaxPool after a stem that stores int8, builder.py)
        i8max = np.dtype(dtype) == np.int8 and np.dtype(out_dtype) == np.int8 and \
            mode == "max"
        if not ((fl and (dtype == out_dtype or out_scale is not None) or i8max) and
                c % V == 0 and V > 1):
            V = 1
        cv = c // V
        self.work = int(np.prod(out_shape, dtype=np.int64)) // V
        it = "long long" if max(self.work * V, int(np.prod(x_shape, dtype=np.int64))) >= \
            2 ** 31 - 64 else "int"
        lines = [f"{it} r = t / {cv};", f"const int ch = (int)(t % {cv}) * {V};"]
        for d in range(nsp - 1, -1, -1):
            lines.append(f"const int o{d} = r % {osp[d]}; r /= {osp[d]};")
        lines.append("const int nb = r;")
        is_max = mode == "max"
        padded = is_max and pad_value is not None
        init = "-(1.f/0.f)" if is_max else "0.f"
        if is_max and floor is not None and float(floor) != float("-inf"):
            init = f"{float(floor)!r}f" if np.isfinite(floor) else \
                ("(1.f/0.f)" if floor > 0 else "(0.f/0.f)")
        if not fl:
            init = str(np.iinfo(np.dtype(dtype)).min) if is_max else "0"
        acc_t = "float" if fl else ("int" if i8max else "long long")
        ct = ctype(dtype)
        lines.append(f"{acc_t} acc[{V}]; int cnt = 0;")
        lines.append(f"#pragma unroll\nfor (int v = 0; v < {V}; ++v) acc[v] = {init};")
        loops = []
        for d in range(nsp):
            lines.append(f"for (int k{d} = 0; k{d} < {kernel[d]}; ++k{d}) {{")
            lines.append(f"  const int i{d} = o{d} * {strides[d]} - {pads[d]} + k{d} * "
                         f"{dilations[d]};")
            if count_include_pad or padded:
                lines.append(f"  if (i{d} >= {sp[d] + pads[nsp + d]}) continue;")
            else:
                lines.append(f"  if (i{d} < 0 || i{d} >= {sp[d]}) continue;")
            loops.append("}")
        inside = " && ".join(f"i{d} >= 0 && i{d} < {sp[d]}" for d in range(nsp)) or "true"
        pos = "nb"
        for d in range(nsp):
            pos = f"({pos}) * {sp[d]} + i{d}"
        lines.append("  cnt += 1;")
        lines.append(f"  if ({inside}) {{")
        lines.append(f"    const {it} base = (({it})({pos})) * {c} + ch;")
        if V > 1:
            lines.append(f"    union {{ uint4 u; {ct} e[{V}]; }} b;")
            lines.append("    b.u = *reinterpret_cast<const uint4*>(x + base);")
            val = load_expr(dtype, "b.e[v]")
        else:
            val = load_expr(dtype, "x[base]")
        lines.append(f"    #pragma unroll\n    for (int v = 0; v < {V}; ++v) {{")
        lines.append(f"      {acc_t} w = ({acc_t}){val};")
        # TF's GPU MaxPool and MaxPool3D skip NaN (an all-NaN 2-D window is -inf), measured
        # on an H200 (docs/differences.md; a run of 2026-12-01 propagated it in 3-D, which
        # TF did not)
        lines.append("      acc[v] = (w > acc[v]) ? w : acc[v];" if is_max else
                     "      acc[v] += w;")
        if padded:  # a pad cell: the value a constant pad wrote there
            pv = pad_literal(pad_value, fl)
            lines.append(f"    }}\n  }} else {{\n    #pragma unroll\n    for (int v = 0; v < {V}; "
                         f"++v) {{\n      {acc_t} w = ({acc_t}){pv};")
            lines.append("      acc[v] = (w > acc[v]) ? w : acc[v];")
        lines.append("    }\n  }")
        lines += loops
        res = "acc[v]" if is_max else "acc[v] / (float)(cnt > 0 ? cnt : 1)"
        if code_floor is not None:
            if not i8max:
                raise ValueError("a code floor belongs to an int8 max pool")
            res = f"(acc[v] < {int(code_floor)} ? {int(code_floor)} : acc[v])"
        store = store_expr(out_dtype, res)
        helpers = ""
        if out_scale is not None:
            store = f"q_int8(__fmul_rn({res}, {S.float_literal(Q.inv_scale(out_scale))}))"
            helpers = S.INT8_HELPERS
        if V > 1:
            vt = {16: "uint4", 8: "uint2", 4: "unsigned"}[V * np.dtype(out_dtype).itemsize]
            lines.append(f"union {{ {vt} u; {ctype(out_dtype)} e[{V}]; }} o;")
            lines.append(f"#pragma unroll\nfor (int v = 0; v < {V}; ++v) o.e[v] = {store};")
            lines.append(f"*reinterpret_cast<{vt}*>(y + t * {V}) = o.u;")
        else:
            lines.append(f"{{ const int v = 0; y[t] = {store}; }}")
        self.source = grid_stride_source(
            "pool", f"const {ct}* __restrict__ x, {ctype(out_dtype)}* y", it, self.work,
            "\n    ".join(lines), helpers)
        self.vec = V
        self._kernel = None


def pad_literal(v, fl: bool) -> str:
    """A pad value as a C literal of a pool's accumulator (float, or a long long; the stem
    kernel's fused pool, cuda_source_stem_mma, too)."""
    v = float(v)
    if not fl:
        return str(int(v))
    if np.isnan(v):
        return "(0.f/0.f)"
    if np.isinf(v):
        return "(1.f/0.f)" if v > 0 else "-(1.f/0.f)"
    return f"{v!r}f"
