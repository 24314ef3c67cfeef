"""Generated CUDA kernels of the CuPy backend for pooling, padding and reductions over NHWC /
row-major tensors: max/avg pooling, pad (constant / reflect / edge), row-wise softmax and layer
normalization (one warp per row, values in registers, for rows of up to 2048), reductions over
one contiguous block of axes, resize (nearest / linear), transposes and concatenation. Same
conventions as ``cupy_kernels`` (shapes baked in, fp16 as ``unsigned short``, fp32 math)."""

from __future__ import annotations

from typing import Optional

import numpy as np

import cupy as cp

from tftrt.engine.backends.cupy_kernels import (PRELUDE, _device_sms, _lit, _raw_kernel,
                                                comptype, ctype, grid_stride_source,
                                                launch, load_expr, store_expr)
from tftrt.engine.backends.cuda_source_move import ConcatSource, PoolSource


# --- pooling (NHWC, any number of spatial dims; source in cuda_source_move) ---------------------
class PoolKernel(PoolSource):
    def __call__(self, x, y) -> None:
        if self._kernel is None:
            self._kernel = _raw_kernel(self.source, "pool")
        if self.vec > 1 and (x.data.ptr % 16 or y.data.ptr % 16):
            raise RuntimeError("pool: vectorized kernel needs 16-byte aligned buffers")
        if self.work:
            launch(self._kernel, self.work, [x, y])


# --- row-wise kernels: softmax and layer normalization over the trailing axes ------------------
# is_max combines with fmaxnan: fmaxf skipped a NaN, so ReduceMax / ReduceMin over trailing
# axes (the row mode) dropped it where TF returns NaN (helper hunt, 2026-12-01)
_ROW_REDUCE = r"""
__device__ __forceinline__ float block_reduce(float v, bool is_max, float* sh) {
  #pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    float u = __shfl_xor_sync(0xffffffff, v, o);
    v = is_max ? fmaxnan(v, u) : v + u;
  }
  const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
  __syncthreads();
  if (lane == 0) sh[wid] = v;
  __syncthreads();
  const int nw = blockDim.x >> 5;
  v = (threadIdx.x < nw) ? sh[threadIdx.x] : (is_max ? -(1.f/0.f) : 0.f);
  if (wid == 0) {
    #pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      float u = __shfl_xor_sync(0xffffffff, v, o);
      v = is_max ? fmaxnan(v, u) : v + u;
    }
    if (lane == 0) sh[32] = v;
  }
  __syncthreads();
  return sh[32];
}
"""


def _row_threads(cols: int) -> int:
    t = 32
    while t < cols and t < 1024:
        t *= 2
    return max(t, 64) if cols > 32 else 32


_WARP_REDUCE = r"""
__device__ __forceinline__ float warp_sum(float v) {
  #pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
  #pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffff, v, o));
  return v;
}
"""

_WARP_ROW_MAX_PER_LANE = 64  # floats held in registers per lane (cols <= 2048)


def _warp_row_vec(cols: int, dtypes) -> int:
    """Elements per vector access of a warp-per-row kernel over ``cols`` (0: not applicable).
    Each lane holds cols / 32 values in registers, loaded V at a time (16 bytes at most)."""
    if cols % 32 or cols // 32 > _WARP_ROW_MAX_PER_LANE or \
            any(np.dtype(d).name not in ("float16", "float32") for d in dtypes):
        return 0
    isz = max(np.dtype(d).itemsize for d in dtypes)
    v = 16 // isz
    while v > 1 and cols % (32 * v):
        v //= 2
    return v


def _warp_row_io(name: str, dtype: str, V: int) -> tuple:
    """(C declaration of the V-element vector struct ``<name>_v``, C element type) for a
    warp-per-row kernel: chunk c of a lane holds columns (c * 32 + lane) * V + [0, V)."""
    ct = ctype(dtype)
    st = f"struct __align__({np.dtype(dtype).itemsize * V}) {name}_v {{ {ct} e[{V}]; }};"
    return st, ct


class _WarpRows:
    """Shared code of the warp-per-row kernels: one warp per row, values in registers."""

    def __init__(self, rows: int, cols: int, V: int, in_dtype: str, out_dtype: str):
        self.rows, self.cols, self.V = rows, cols, V
        self.chunks = cols // (32 * V)
        self.E = cols // 32
        sx, self.ict = _warp_row_io("in", in_dtype, V)
        sy, self.oct = _warp_row_io("out", out_dtype, V)
        self.structs = sx + "\n" + sy
        self.in_dtype, self.out_dtype = in_dtype, out_dtype

    def head(self) -> str:
        return f"""
  const int lane = threadIdx.x & 31;
  const long long wstride = (long long)gridDim.x * (blockDim.x >> 5);
  for (long long row = (long long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
       row < {self.rows}; row += wstride) {{
    float v[{self.E}];
    const in_v* xr = reinterpret_cast<const in_v*>(x + row * {self.cols});
    #pragma unroll
    for (int c = 0; c < {self.chunks}; ++c) {{
      const in_v t = xr[c * 32 + lane];
      #pragma unroll
      for (int k = 0; k < {self.V}; ++k) v[c * {self.V} + k] = {load_expr(self.in_dtype, "t.e[k]")};
    }}"""

    def store(self, value: str) -> str:
        """Stores ``value`` (an expression of ``v[i]`` and column ``j``) for every element."""
        return f"""
    out_v* yr = reinterpret_cast<out_v*>(y + row * {self.cols});
    #pragma unroll
    for (int c = 0; c < {self.chunks}; ++c) {{
      out_v t;
      #pragma unroll
      for (int k = 0; k < {self.V}; ++k) {{
        const int i = c * {self.V} + k;
        const int j = (c * 32 + lane) * {self.V} + k;
        (void)j;
        t.e[k] = {store_expr(self.out_dtype, value)};
      }}
      yr[c * 32 + lane] = t;
    }}"""

    def launch(self, kernel, args) -> None:
        """Launches ``kernel`` (compiled from a source built with :meth:`head`): 8 rows per
        256-thread block."""
        blocks = max(1, min((self.rows + 7) // 8, _device_sms() * 32))
        kernel((blocks,), (256,), tuple(args))


class SoftmaxKernel:
    """Softmax / LogSoftmax over the last axis of a [rows, cols] view (fp32 math)."""

    def __init__(self, rows: int, cols: int, in_dtype: str, out_dtype: str, log: bool):
        self.rows, self.cols = rows, cols
        self.threads = _row_threads(cols)
        V = _warp_row_vec(cols, (in_dtype, out_dtype))
        self.warp = _WarpRows(rows, cols, V, in_dtype, out_dtype) if V else None
        uniform = in_dtype == "float16"
        if self.warp is not None:  # rows of up to 2048: one warp per row, no shared memory
            w = self.warp
            out = "(x0 - m) - logf(s)" if log else "v[i] * inv"
            keep = f"float x0v[{w.E}];" if log else ""
            save = "x0v[i] = v[i];" if log else ""
            # A row of -inf is NaN, as in TF, except in fp16 storage: there it is uniform, as
            # the all-equal "very negative" mask values (-2.4e38, every key masked) it stands
            # for are (numpy_ops.softmax does the same).
            dead_uniform = "" if not uniform else f"""if (m == -(1.f/0.f)) {{
      #pragma unroll
      for (int i = 0; i < {w.E}; ++i) v[i] = 0.f;
    }}"""
            self.source = PRELUDE + _WARP_REDUCE + w.structs + f"""
extern "C" __global__ void softmax(const {w.ict}* __restrict__ x, {w.oct}* __restrict__ y) {{
  {w.head()}
    float m = -(1.f/0.f);
    #pragma unroll
    for (int i = 0; i < {w.E}; ++i) m = fmaxf(m, v[i]);
    m = warp_max(m);
    {dead_uniform}
    if (isinf(m)) m = (m > 0) ? m : 0.f;
    {keep}
    float s = 0.f;
    #pragma unroll
    for (int i = 0; i < {w.E}; ++i) {{ {save} v[i] = expf(v[i] - m); s += v[i]; }}
    s = warp_sum(s);
    const float inv = 1.f / s;
    (void)inv;
    {w.store(out.replace("x0", "x0v[i]"))}
  }}
}}
"""
            self._kernel = None
            return
        ld = lambda e: load_expr(in_dtype, e)  # noqa: E731
        out = ("(v - m) - logf(s)" if log else "expf(v - m) / s")
        self.source = PRELUDE + _ROW_REDUCE + f"""
extern "C" __global__ void softmax(const {ctype(in_dtype)}* __restrict__ x,
                                   {ctype(out_dtype)}* __restrict__ y) {{
  __shared__ float sh[33];
  for (long long row = blockIdx.x; row < {rows}; row += gridDim.x) {{
    const {ctype(in_dtype)}* xr = x + row * {cols};
    {ctype(out_dtype)}* yr = y + row * {cols};
    float m = -(1.f/0.f);
    for (int j = threadIdx.x; j < {cols}; j += blockDim.x) m = fmaxf(m, {ld("xr[j]")});
    m = block_reduce(m, true, sh);
    const bool dead = {"m == -(1.f/0.f)" if uniform else "false"};  // see the warp kernel
    if (isinf(m)) m = (m > 0) ? m : 0.f;
    float s = 0.f;
    for (int j = threadIdx.x; j < {cols}; j += blockDim.x)
      s += expf((dead ? 0.f : {ld("xr[j]")}) - m);
    s = block_reduce(s, false, sh);
    for (int j = threadIdx.x; j < {cols}; j += blockDim.x) {{
      const float v = dead ? 0.f : {ld("xr[j]")};
      yr[j] = {store_expr(out_dtype, out)};
    }}
  }}
}}
"""
        self._kernel = None

    def __call__(self, x, y) -> None:
        if self._kernel is None:
            self._kernel = _raw_kernel(self.source, "softmax")
        if self.rows and self.cols:
            if self.warp is not None:
                self.warp.launch(self._kernel, (x, y))
                return
            blocks = min(self.rows, 65535)
            self._kernel((blocks,), (self.threads,), (x, y))


class LayerNormKernel:
    """(x - mean) * rsqrt(var + eps) * scale + bias over the trailing ``cols`` elements of each
    row; scale/bias are per-column vectors (or absent); optional mean / inv_std outputs."""

    def __init__(self, rows: int, cols: int, in_dtype: str, out_dtype: str, eps: float,
                 scale_dtype: Optional[str], bias_dtype: Optional[str], stats: bool):
        self.rows, self.cols = rows, cols
        self.threads = _row_threads(cols)
        ld = lambda e: load_expr(in_dtype, e)  # noqa: E731
        params = [f"const {ctype(in_dtype)}* __restrict__ x"]
        if scale_dtype:
            params.append(f"const {ctype(scale_dtype)}* __restrict__ sc")
        if bias_dtype:
            params.append(f"const {ctype(bias_dtype)}* __restrict__ bi")
        params.append(f"{ctype(out_dtype)}* __restrict__ y")
        if stats:
            params += ["float* __restrict__ mean_out", "float* __restrict__ inv_out"]
        val = "(v - mean) * inv"
        if scale_dtype:
            val = f"({val}) * {load_expr(scale_dtype, 'sc[j]')}"
        if bias_dtype:
            val = f"({val}) + {load_expr(bias_dtype, 'bi[j]')}"
        stat_src = "if (threadIdx.x == 0) { mean_out[row] = mean; inv_out[row] = inv; }" \
            if stats else ""
        self.scale, self.bias, self.stats = bool(scale_dtype), bool(bias_dtype), stats
        self.vec_params = []
        V = _warp_row_vec(cols, (in_dtype, out_dtype))
        self.warp = _WarpRows(rows, cols, V, in_dtype, out_dtype) if V else None
        if self.warp is not None:  # rows of up to 2048: one warp per row, values in registers
            w = self.warp
            wstat = "if (lane == 0) { mean_out[row] = mean; inv_out[row] = inv; }" \
                if stats else ""
            # fp32 scale / bias: lane-contiguous float4 loads (scalar loads of the V columns a
            # lane owns cost V L1 wavefront groups each, which made this kernel 2x its floor)
            vec = [t for t, d in (("sc", scale_dtype), ("bi", bias_dtype))
                   if d == "float32" and w.V % 4 == 0]
            self.vec_params = vec
            pre, wval = "", val.replace("(v - mean)", "(v[i] - mean)")
            for t in vec:
                pre += f"""
      float {t}v[{w.E}];
      #pragma unroll
      for (int c = 0; c < {w.chunks}; ++c) {{
        #pragma unroll
        for (int q4 = 0; q4 < {w.V // 4}; ++q4) {{
          const float4 a = reinterpret_cast<const float4*>({t} + (c * 32 + lane) * {w.V})[q4];
          {t}v[c * {w.V} + 4 * q4] = a.x; {t}v[c * {w.V} + 4 * q4 + 1] = a.y;
          {t}v[c * {w.V} + 4 * q4 + 2] = a.z; {t}v[c * {w.V} + 4 * q4 + 3] = a.w;
        }}
      }}"""
                wval = wval.replace(load_expr("float32", f"{t}[j]"), f"{t}v[i]")
            self.source = PRELUDE + _WARP_REDUCE + w.structs + f"""
extern "C" __global__ void layernorm({", ".join(params)}) {{
  {w.head()}
    float sum = 0.f;
    #pragma unroll
    for (int i = 0; i < {w.E}; ++i) sum += v[i];
    const float mean = warp_sum(sum) / {cols}.f;
    float q = 0.f;
    #pragma unroll
    for (int i = 0; i < {w.E}; ++i) {{ const float d = v[i] - mean; q += d * d; }}
    const float inv = 1.f / sqrtf(warp_sum(q) / {cols}.f + {_lit(eps, "float")});
    {pre}
    {w.store(wval)}
    {wstat}
  }}
}}
"""
            self._kernel = None
            return
        self.source = PRELUDE + _ROW_REDUCE + f"""
extern "C" __global__ void layernorm({", ".join(params)}) {{
  __shared__ float sh[33];
  for (long long row = blockIdx.x; row < {rows}; row += gridDim.x) {{
    const {ctype(in_dtype)}* xr = x + row * {cols};
    {ctype(out_dtype)}* yr = y + row * {cols};
    float s = 0.f;
    for (int j = threadIdx.x; j < {cols}; j += blockDim.x) s += {ld("xr[j]")};
    const float mean = block_reduce(s, false, sh) / {cols}.f;
    float q = 0.f;
    for (int j = threadIdx.x; j < {cols}; j += blockDim.x) {{
      const float d = {ld("xr[j]")} - mean; q += d * d; }}
    const float inv = 1.f / sqrtf(block_reduce(q, false, sh) / {cols}.f + {_lit(eps, "float")});
    for (int j = threadIdx.x; j < {cols}; j += blockDim.x) {{
      const float v = {ld("xr[j]")};
      yr[j] = {store_expr(out_dtype, val)};
    }}
    {stat_src}
  }}
}}
"""
        self._kernel = None

    def __call__(self, x, scale, bias, y, mean=None, inv=None) -> None:
        if self._kernel is None:
            self._kernel = _raw_kernel(self.source, "layernorm")
        if self.warp is not None and self.vec_params:  # float4 loads need 16-byte alignment
            if scale is not None and scale.data.ptr % 16:
                scale = scale.copy()
            if bias is not None and bias.data.ptr % 16:
                bias = bias.copy()
        args = [x] + ([scale] if self.scale else []) + ([bias] if self.bias else []) + [y]
        if self.stats:
            args += [mean, inv]
        if self.rows and self.cols:
            if self.warp is not None:
                self.warp.launch(self._kernel, args)
                return
            self._kernel((min(self.rows, 65535),), (self.threads,), tuple(args))


# --- pad (constant / reflect / edge; negative pads crop) -----------------------------------------
class PadKernel:
    """One pass over the output: each element reads its source element or the pad value."""

    def __init__(self, x_shape, out_shape, pads, mode: str, value, dtype: str,
                 out_dtype: Optional[str] = None):
        r = len(x_shape)
        out_dtype = np.dtype(out_dtype or dtype).name
        isz = np.dtype(dtype).itemsize
        # Channels-last tensors padded only spatially move 16 bytes per element access.
        self.vec = 1
        if out_dtype == np.dtype(dtype).name and r >= 2 and pads[r - 1] == 0 and \
                pads[2 * r - 1] == 0 and \
                (x_shape[-1] * isz) % 16 == 0 and 16 // isz > 1 and \
                (mode != "constant" or float(value or 0) == 0.0):
            self.vec = 16 // isz
            x_shape = tuple(x_shape[:-1]) + (x_shape[-1] // self.vec,)
            out_shape = tuple(out_shape[:-1]) + (out_shape[-1] // self.vec,)
            dtype, out_dtype, value = "uint4", "uint4", 0
        self.work = int(np.prod(out_shape, dtype=np.int64))
        it = "long long" if max(self.work, int(np.prod(x_shape, dtype=np.int64))) >= \
            2 ** 31 - 64 else "int"
        lines, src, inside = [f"{it} r = t;"], "0", []
        for d in range(r - 1, -1, -1):
            lines.append(f"int c{d} = (int)(r % {out_shape[d]}) - {pads[d]}; r /= {out_shape[d]};")
            if mode == "edge":
                lines.append(f"c{d} = c{d} < 0 ? 0 : (c{d} >= {x_shape[d]} ? {x_shape[d] - 1} : "
                             f"c{d});")
            elif mode == "reflect":
                lines.append(f"if (c{d} < 0) c{d} = -c{d}; if (c{d} >= {x_shape[d]}) c{d} = "
                             f"{2 * (x_shape[d] - 1)} - c{d};")
            else:
                inside.append(f"c{d} >= 0 && c{d} < {x_shape[d]}")
        for d in range(r):
            src = f"({src}) * {x_shape[d]} + c{d}" if d else f"({it})c0"
        cond = " && ".join(inside) or "true"
        if dtype == "uint4":
            ct = oct_ = "uint4"
            lines.append(f"y[t] = ({cond}) ? x[{src if r else 0}] : make_uint4(0, 0, 0, 0);")
        else:  # the output may be stored in another dtype (an fp16 layer on an fp32 input)
            ct, oct_ = ctype(dtype), ctype(out_dtype)
            oc = comptype(out_dtype)
            val = ("true" if value else "false") if np.dtype(out_dtype).kind == "b" else \
                _lit(value, oc)
            xv = load_expr(dtype, f"x[{src if r else 0}]")
            lines.append(f"y[t] = ({cond}) ? {store_expr(out_dtype, xv)} : "
                         f"{store_expr(out_dtype, val)};")
        self.source = grid_stride_source(
            "pad", f"const {ct}* __restrict__ x, {oct_}* __restrict__ y", it, self.work,
            "\n    ".join(lines))
        self._kernel = None

    def __call__(self, x, y) -> None:
        if self._kernel is None:
            self._kernel = _raw_kernel(self.source, "pad")
        if self.vec > 1 and (x.data.ptr % 16 or y.data.ptr % 16):
            raise RuntimeError("pad: vectorized kernel needs 16-byte aligned buffers")
        if self.work:
            launch(self._kernel, self.work, [x, y])


# --- reductions over one contiguous block of axes ------------------------------------------------
_REDUCE = {  # op -> (map x, combine, init, finish(acc, R))
    "sum": ("v", "a + b", "0.f", "acc"),
    "mean": ("v", "a + b", "0.f", "acc / {R}.f"),
    "sum_square": ("v * v", "a + b", "0.f", "acc"),
    "l1": ("fabsf(v)", "a + b", "0.f", "acc"),
    "l2": ("v * v", "a + b", "0.f", "sqrtf(acc)"),
    "log_sum": ("v", "a + b", "0.f", "logf(acc)"),
    "prod": ("v", "a * b", "1.f", "acc"),
    "max": ("v", "fmaxnan(a, b)", "-(1.f/0.f)", "acc"),
    "min": ("v", "fminnan(a, b)", "(1.f/0.f)", "acc"),
}


class ReduceKernel:
    """Reduction of x viewed as [O, R, I] over R (the reduced axes are contiguous), fp32
    accumulation: one thread per (o, i) walking R (coalesced along I), or one block per o
    when I == 1. log_sum_exp takes two passes (max, then sum of exp)."""

    def __init__(self, O: int, R: int, I: int, op: str, in_dtype: str, out_dtype: str):
        self.O, self.R, self.I = O, R, I
        ld = load_expr(in_dtype, "x[base + (long long)r * {I}]".replace("{I}", str(I)))
        ct, oct_ = ctype(in_dtype), ctype(out_dtype)
        if op == "log_sum_exp":
            body = f"""
    float m = -(1.f/0.f);
    for (int r = 0; r < {R}; ++r) {{ float v = {ld}; m = fmaxnan(m, v); }}
    if (isinf(m)) m = 0.f;
    float acc = 0.f;
    for (int r = 0; r < {R}; ++r) {{ float v = {ld}; acc += expf(v - m); }}
    y[t] = {store_expr(out_dtype, "logf(acc) + m")};"""
            self.mode = "col"
        else:
            f, comb, init, fin = _REDUCE[op]
            fin = fin.replace("{R}", str(R))
            self.mode = "col" if I > 1 or op in ("prod",) else "row"
            if self.mode == "col":
                body = f"""
    float acc = {init};
    for (int r = 0; r < {R}; ++r) {{ float v = {ld}; float a = acc, b = {f}; acc = {comb}; }}
    y[t] = {store_expr(out_dtype, fin)};"""
            else:
                red = ("block_reduce(acc, true, sh)" if op == "max" else
                       "-block_reduce(-acc, true, sh)" if op == "min" else
                       "block_reduce(acc, false, sh)")
                self.threads = _row_threads(R)
                self.source = PRELUDE + _ROW_REDUCE + f"""
extern "C" __global__ void reduce(const {ct}* __restrict__ x, {oct_}* __restrict__ y) {{
  __shared__ float sh[33];
  for (long long o = blockIdx.x; o < {O}; o += gridDim.x) {{
    const long long base = o * {R};
    float acc = {init};
    for (int j = threadIdx.x; j < {R}; j += blockDim.x) {{
      float v = {load_expr(in_dtype, "x[base + j]")}; float a = acc, b = {f}; acc = {comb}; }}
    acc = {red};
    if (threadIdx.x == 0) y[o] = {store_expr(out_dtype, fin)};
  }}
}}
"""
                self._kernel = None
                return
        work = O * I
        it = "long long"
        self.work = work
        self.source = grid_stride_source(
            "reduce", f"const {ct}* __restrict__ x, {oct_}* __restrict__ y", it, work,
            f"const long long base = (t / {I}) * {R} * (long long){I} + (t % {I});{body}")
        self._kernel = None

    def __call__(self, x, y) -> None:
        if self._kernel is None:
            self._kernel = _raw_kernel(self.source, "reduce")
        if self.mode == "row":
            if self.O:
                self._kernel((min(self.O, 65535),), (self.threads,), (x, y))
        elif self.work:
            launch(self._kernel, self.work, [x, y])


# --- resize --------------------------------------------------------------------------------------
class ResizeKernel:
    """ONNX Resize (nearest / linear on one axis or two adjacent ones, float16 / float32) in one
    pass over the output: :class:`cuda_source_move.ResizeSource` compiled, its host tables uploaded
    once. :meth:`make` returns None where the source does not fit (the caller falls back)."""

    def __init__(self, src):
        self.src = src
        self.tables = [cp.asarray(t) for t in src.tables]
        self._kernel = None

    @classmethod
    def make(cls, x_shape, attrs, in_dtype: str, out_dtype: str) -> Optional["ResizeKernel"]:
        from tftrt.engine.backends.cuda_source_move import ResizeSource
        src = ResizeSource.plan(x_shape, attrs, in_dtype, out_dtype)
        return None if src is None else cls(src)

    def __call__(self, x, y) -> None:
        if self._kernel is None:
            self._kernel = _raw_kernel(self.src.source, "resize")
        if self.src.work:
            launch(self._kernel, self.src.work, [x, *self.tables, y])


# --- transpose -----------------------------------------------------------------------------------
class TransposeKernel:
    """y = x.transpose(perm) (converted to ``out_dtype``), one pass over y with the index map
    baked in. When the innermost axis stays innermost (attention's [b, s, h, d] <->
    [b, h, s, d]) and the dtype stays, each thread moves the widest vector (16/8/4 bytes) the
    contiguous run allows; else one element per thread."""

    def __init__(self, x_shape, perm, dtype: str, out_dtype: Optional[str] = None):
        r = len(x_shape)
        isz = np.dtype(dtype).itemsize
        x_shape = tuple(int(d) for d in x_shape)
        self.vec_bytes, self.perm = isz, tuple(perm)
        out_dtype = np.dtype(out_dtype or dtype).name
        convert = out_dtype != np.dtype(dtype).name  # e.g. an fp16 layer on an fp32 input
        if r and perm[-1] == r - 1 and not convert:
            for vb in (16, 8, 4):
                if vb > isz and (x_shape[-1] * isz) % vb == 0:
                    self.vec_bytes = vb
                    break
        V = self.vec_bytes // isz
        ct = {16: "uint4", 8: "uint2", 4: "unsigned int"}.get(self.vec_bytes) if V > 1 \
            else ctype(dtype)
        xs = x_shape[:-1] + (x_shape[-1] // V,) if V > 1 else x_shape
        strides = [1] * r
        for d in range(r - 2, -1, -1):
            strides[d] = strides[d + 1] * xs[d + 1]
        ys = [xs[p] for p in perm]
        self.work = int(np.prod(ys, dtype=np.int64))
        it = "long long" if self.work >= 2 ** 31 - 64 else "int"
        lines, src = [f"{it} r = t;"], []
        for d in range(r - 1, -1, -1):
            lines.append(f"const {it} c{d} = r % {ys[d]}; r /= {ys[d]};")
            src.append(f"c{d} * {strides[perm[d]]}")
        xv = f"x[{' + '.join(src) or '0'}]"
        oct_ = ct
        if convert:
            oct_ = ctype(out_dtype)
            xv = store_expr(out_dtype, load_expr(dtype, xv))
        lines.append(f"y[t] = {xv};")
        self.source = grid_stride_source(
            "transpose", f"const {ct}* __restrict__ x, {oct_}* __restrict__ y", it, self.work,
            "\n    ".join(lines))
        self._kernel = None

    def __call__(self, x, y) -> None:
        if self._kernel is None:
            self._kernel = _raw_kernel(self.source, "transpose")
        if self.vec_bytes > 1 and (x.data.ptr % self.vec_bytes or y.data.ptr % self.vec_bytes):
            cp.copyto(y, x.transpose(self.perm))
            return
        if self.work:
            launch(self._kernel, self.work, [x, y])


class ConcatKernel(ConcatSource):
    """concat of same-dtype inputs in one launch (source: :class:`cuda_source_move.ConcatSource`).
    Inputs and output must be C-contiguous and aligned to the vector width; ``aligned`` says
    whether they are (else the caller copies input by input)."""

    def __init__(self, in_shapes, axis: int, dtype: str):
        super().__init__(in_shapes, axis, dtype)
        self._kernel = None

    def aligned(self, xs, y) -> bool:
        vb = self.vec_bytes
        return all(a.data.ptr % vb == 0 and a.flags.c_contiguous for a in list(xs) + [y])

    def __call__(self, xs, y) -> None:
        if self._kernel is None:
            self._kernel = _raw_kernel(self.source, "concat")
        if self.work:
            launch(self._kernel, self.work, list(xs) + [y])
