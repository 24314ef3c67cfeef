"""CUDA C source of the direct few-channel convolution (tactic ``stem_direct``), strings only.

No CuPy here (tests compile it with nvcc and run it on the host); ``cupy_stem.StemDirect``
compiles and launches it.

Why: a network's stem reads an image of 3 channels, and neither cuDNN nor tactic ``im2col``
runs it near its floor. On the H200 (2026-12-01, VGG16 FP16, batch 128) the 3 -> 64 3x3 conv
took 1,244 us in cuDNN and 923 us as im2col + cuBLASLt, for a floor of ~290 us (reading the
image, writing 822 MB of output): 12% of VGG16's engine, and VGG16 was 1% behind XLA. Its
22 GFLOP are few for CUDA cores too (~330 us at the H200's float32 FMA rate), so this kernel
computes it directly, with no column matrix in memory and the epilogue fused.

One kernel, ``stem_conv(x, wt, *operands, y)``: 2-D convolution, NHWC, group 1, dilation 1,
any stride, with K = KH * KW * Cin taps up to :data:`MAX_K` and Cout a multiple of 4. A block
computes a tile of output pixels, 32 columns by ``th`` rows of one sample, for every output
channel. It stages the filter (float32 [K, Cout], the layer's [Cout, KH, KW, Cin] flattened
and transposed) and the input tile with its halo (float32, zero where the window leaves the
image, channel-major so that the 32 lanes of a warp read 32 consecutive words) in shared
memory. A warp takes ``cc`` output channels of ``px`` output rows: each lane one column, so a
tap's weights are one broadcast read for the whole warp and each lane holds px x cc float32
accumulators. Taps are summed in the filter's order (kernel row, column, input channel), in
float32. The epilogue (``cuda_source._dw_epilogue``: bias, scale, residual, activation) is
applied per output and a lane stores its cc channels of a pixel with 16-byte stores where the
output is aligned to them.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Dict, NamedTuple, Sequence, Tuple

import numpy as np

from tftrt.engine.backends.cuda_source import (PRELUDE, _dw_epilogue, conv_kernel_params,
                                               ctype, dw_operand_modes, load_expr,
                                               store_expr)

KERNEL = "stem_conv"
MAX_K = 64               # taps: 3x3 over up to 7 channels, ConvNeXt's 4x4 patches of 3
MAX_COUT = 256
STAGE = 8                # loads in flight a thread while a block stages its tile
SMEM_LIMIT = 48 * 1024   # static shared memory of one block
LANES = 32               # output columns of a block: one per lane
_FLOATS = ("float16", "float32")


def enabled() -> bool:
    """``TFTRT_STEM_DIRECT`` is not 0 / false (default on): the CuPy backend offers tactic
    ``stem_direct``, which the builder times against cuDNN and im2col."""
    from tftrt.env import env_bool  # standard library only
    return env_bool("TFTRT_STEM_DIRECT", True)


@dataclasses.dataclass(frozen=True)
class Plan:
    """A block's work: ``ncg`` warps of ``cc`` channels times ``rw`` warps of ``px`` output
    rows, over :data:`LANES` output columns."""

    cc: int
    ncg: int
    px: int
    rw: int

    @property
    def threads(self) -> int:
        return LANES * self.ncg * self.rw

    @property
    def th(self) -> int:
        return self.px * self.rw


def channels_per_warp(cout: int) -> int:
    """Output channels a warp (and each lane) computes: 16, 8 or 4, the largest dividing Cout."""
    return next(c for c in (16, 8, 4) if cout % c == 0)


def smem_bytes(cin: int, k: int, cout: int, kh: int, kw: int, sh: int, sw: int,
               th: int) -> int:
    """Shared memory of a block: the filter and the input tile with its halo, float32."""
    ih = (th - 1) * sh + kh
    return 4 * (k * cout + cin * ih * tile_row(kw, sw))


def tile_row(kw: int, sw: int) -> int:
    """Words of one tile row: its (LANES - 1) * sw + kw input columns, stored column ``lx`` at
    ``(lx % sw) * ceil(columns / sw) + lx // sw`` so that the 32 lanes of a warp, which read
    columns ``lane * sw + kx``, read 32 consecutive words at any stride (no bank conflicts)."""
    iw = (LANES - 1) * sw + kw
    return sw * -(-iw // sw)


def plan(cin: int, cout: int, kh: int, kw: int, sh: int, sw: int) -> Plan:
    """The block shape: 4 output rows a lane and ~8 warps a block, fewer rows where the
    tile would pass :data:`SMEM_LIMIT`; ValueError when even one row does not fit, or when
    the channel warps alone would pass 1024 threads."""
    cc = channels_per_warp(cout)
    ncg = cout // cc
    if LANES * ncg > 1024:  # 4 x an odd number over 128: warps of 4 channels
        raise ValueError(f"the direct stem kernel's block for {cout} output channels ({ncg} "
                         f"warps of {cc}) would pass 1024 threads")
    k = kh * kw * cin
    r = max(1, 8 // ncg)   # row warps that make ~8 warps a block
    # fewer rows a lane before fewer warps: a one-warp block stages its tile alone
    for px, rw in [(4, r), (2, r), (4, max(1, r // 2)), (2, max(1, r // 2)), (1, r),
                   (4, 1), (2, 1), (1, 1)]:
        if smem_bytes(cin, k, cout, kh, kw, sh, sw, px * rw) <= SMEM_LIMIT and \
                LANES * ncg * rw <= 1024:
            return Plan(cc, ncg, px, rw)
    raise ValueError(f"the direct stem kernel's tile ({kh}x{kw} stride {(sh, sw)}, {cin} -> "
                     f"{cout} channels) does not fit in {SMEM_LIMIT} bytes of shared memory")


class ConvGeometry(NamedTuple):
    n: int
    h: int
    w: int
    cin: int
    ho: int
    wo: int
    cout: int
    kh: int
    kw: int
    sh: int
    sw: int
    ph: int
    pw: int


def conv_geometry(x_shape, out_shape, k_hw, strides, pads) -> ConvGeometry:
    """The sizes of a 2-D convolution of NHWC ``x_shape`` into ``out_shape`` (filter ``k_hw``,
    ``strides``, ``pads`` top, left, ...) as ints; ValueError where they are not one."""
    n, h, w, cin = (int(d) for d in x_shape)
    n2, ho, wo, cout = (int(d) for d in out_shape)
    kh, kw = (int(d) for d in k_hw)
    sh, sw = (int(d) for d in strides)
    g = ConvGeometry(n, h, w, cin, ho, wo, cout, kh, kw, sh, sw, int(pads[0]), int(pads[1]))
    if n2 != n or min(g[:11]) < 1:
        raise ValueError(f"not a conv of x {tuple(x_shape)} into y {tuple(out_shape)}")
    return g


class StemSource:
    """The ``stem_conv`` kernel of one convolution layer for fixed shapes and dtypes.

    Args:
      x_shape, out_shape: NHWC shapes of x and y.
      k_hw, strides, pads: the filter's (kh, kw), (sh, sw) and pads (top, left, ...).
      in_dtype, out_dtype: float16 / float32 storage of x and y.
      epilogue: the layer's epilogue; operand_modes: layer input index -> ("vec" | "full",
        dtype) of each epilogue operand (per output channel, or of y's shape).

    Kernel ``stem_conv(x, wt, *operands, y)``: ``wt`` the filter as float32 [K, Cout] (the
    layer's [Cout, KH, KW, Cin] as ``w.reshape(Cout, -1).T``), operands in :attr:`operands`
    order; launch :attr:`blocks` blocks of :attr:`threads` threads (a block of any other size
    also computes every output, as the host tests run it).
    Raises:
      ValueError: what the kernel does not take (dtypes, K over :data:`MAX_K`, Cout not a
        multiple of 4 or over :data:`MAX_COUT`, a tile over the shared memory, a block over
        1024 threads).
    """

    def __init__(self, x_shape, k_hw, strides, pads, out_shape, in_dtype: str, out_dtype: str,
                 epilogue: Sequence[dict], operand_modes: Dict[int, Tuple[str, str]]):
        n, h, w, cin, ho, wo, cout, kh, kw, sh, sw, ph, pw = conv_geometry(
            x_shape, out_shape, k_hw, strides, pads)
        self.in_dtype, self.out_dtype = np.dtype(in_dtype).name, np.dtype(out_dtype).name
        if self.in_dtype not in _FLOATS or self.out_dtype not in _FLOATS:
            raise ValueError(f"the direct stem kernel takes float16 / float32 x and y, not "
                             f"{self.in_dtype} / {self.out_dtype}")
        self.k = kh * kw * cin
        if self.k > MAX_K:
            raise ValueError(f"KH*KW*Cin = {self.k} taps: the direct stem kernel takes up to "
                             f"{MAX_K}")
        if cout % 4 or cout > MAX_COUT:
            raise ValueError(f"the direct stem kernel takes Cout a multiple of 4 up to "
                             f"{MAX_COUT}, not {cout}")
        self.plan = p = plan(cin, cout, kh, kw, sh, sw)
        self.threads = p.threads
        self.grid = (math.ceil(ho / p.th), math.ceil(wo / LANES))
        self.blocks = n * self.grid[0] * self.grid[1]
        if self.blocks >= 2 ** 31:
            raise ValueError(f"{self.blocks} blocks: more than a grid holds")
        self.smem_bytes = smem_bytes(cin, self.k, cout, kh, kw, sh, sw, p.th)
        self.dims = dict(n=n, h=h, w=w, cin=cin, ho=ho, wo=wo, cout=cout, kh=kh, kw=kw, sh=sh,
                         sw=sw, ph=ph, pw=pw)
        self.operands, self.params = conv_kernel_params(self.in_dtype, self.out_dtype,
                                                        operand_modes)
        self.source = self._source(epilogue, operand_modes)

    def _store(self) -> str:
        """Statements storing ``o[cc]`` (the cc outputs of a pixel, y's C type) at
        ``y + obase``: 16-byte stores where that address is aligned to them, else one by
        one."""
        cc = self.plan.cc
        per = 16 // np.dtype(self.out_dtype).itemsize   # outputs a 16-byte store holds
        scalar = f"for (int q = 0; q < {cc}; ++q) y[obase + q] = o[q];"
        if cc % per:
            return scalar
        return f"""if ((reinterpret_cast<unsigned long long>(y + obase) & 15ull) == 0ull) {{
            #pragma unroll
            for (int v = 0; v < {cc // per}; ++v)
              reinterpret_cast<uint4*>(y + obase)[v] = reinterpret_cast<const uint4*>(o)[v];
          }} else {{
            #pragma unroll
            {scalar}
          }}"""

    def _source(self, epilogue, operand_modes) -> str:
        d, p = self.dims, self.plan
        ih, iw = (p.th - 1) * d["sh"] + d["kh"], (LANES - 1) * d["sw"] + d["kw"]
        # words of a tile row (the kernel's own `row` is a warp's first output row)
        sw, words = d["sw"], tile_row(d["kw"], d["sw"])
        iwq = words // sw
        cin, cout, cc = d["cin"], d["cout"], p.cc
        it = "long long" if max(d["n"] * d["h"] * d["w"] * cin,
                                d["n"] * d["ho"] * d["wo"] * cout) >= 2 ** 31 - 64 else "int"
        ict, oct_ = ctype(self.in_dtype), ctype(self.out_dtype)
        nth, ntw = self.grid
        epi = "\n            ".join(_dw_epilogue(epilogue, operand_modes, "a_", ""))
        params = ", ".join(f"{ty} __restrict__ {nm}" for ty, nm in self.params)
        load = load_expr(self.in_dtype, "px_[c]")
        wsm = self.k * cout // 4   # Cout is a multiple of 4
        nslots = ih * words
        stage = max(1, min(STAGE, 24 // cin))  # pixels in flight: STAGE x Cin registers
        align = "alignas(16) " if cc * np.dtype(self.out_dtype).itemsize % 16 == 0 else ""
        return PRELUDE + f"""
extern "C" __global__ void __launch_bounds__({p.threads}) {KERNEL}({params}) {{
  __shared__ float4 wsm4[{wsm}];
  __shared__ float tile[{cin * ih * words}];
  const float* wsm = reinterpret_cast<const float*>(wsm4);
  int r = blockIdx.x;
  const int ow0 = (r % {ntw}) * {LANES}; r /= {ntw};
  const int oh0 = (r % {nth}) * {p.th};
  const int nb = r / {nth};
  const int ih0 = oh0 * {d['sh']} - {d['ph']}, iw0 = ow0 * {d['sw']} - {d['pw']};
  // staging: loads in flight a thread before their stores (one at a time, a block waited
  // out a global load's latency per element: the mobilenet stem ran at 18x its floor)
  for (int i0 = threadIdx.x; i0 < {wsm}; i0 += {STAGE} * blockDim.x) {{
    float4 v[{STAGE}];
    #pragma unroll
    for (int u = 0; u < {STAGE}; ++u) {{
      const int i = i0 + u * blockDim.x;
      if (i < {wsm}) v[u] = reinterpret_cast<const float4*>(wt)[i];
    }}
    #pragma unroll
    for (int u = 0; u < {STAGE}; ++u) {{
      const int i = i0 + u * blockDim.x;
      if (i < {wsm}) wsm4[i] = v[u];
    }}
  }}
  {{
    // a thread stages whole pixels (their Cin channels), walking the tile's slots in their
    // stored order: slot s of a row holds column (s % iwq) * sw + s / iwq, so consecutive
    // threads store consecutive words (no bank conflicts at any stride) and do the index
    // arithmetic once per pixel, not per element; slots past the last column stay unwritten
    // (no lane reads them)
    const {ict}* xs = x + ({it})nb * {d['h'] * d['w'] * cin};
    for (int i0 = threadIdx.x; i0 < {nslots}; i0 += {stage} * blockDim.x) {{
      float v[{stage}][{cin}];
      int at[{stage}];
      #pragma unroll
      for (int u = 0; u < {stage}; ++u) {{
        const int i = i0 + u * blockDim.x;
        const int ly = i / {words}, sl = i % {words};
        const int lx = (sl % {iwq}) * {sw} + sl / {iwq};
        const int hh = ih0 + ly, ww = iw0 + lx;
        at[u] = (i < {nslots} && lx < {iw}) ? ly * {words} + sl : -1;
        const bool in = at[u] >= 0 && hh >= 0 && hh < {d['h']} && ww >= 0 && ww < {d['w']};
        const {ict}* px_ = xs + ({it})(in ? hh * {d['w']} + ww : 0) * {cin};
        #pragma unroll
        for (int c = 0; c < {cin}; ++c) v[u][c] = in ? {load} : 0.f;
      }}
      #pragma unroll
      for (int u = 0; u < {stage}; ++u)
        if (at[u] >= 0) {{
          #pragma unroll
          for (int c = 0; c < {cin}; ++c) tile[c * {ih * words} + at[u]] = v[u][c];
        }}
    }}
  }}
  __syncthreads();
  for (int q = threadIdx.x; q < {p.threads}; q += blockDim.x) {{
    const int lane = q % {LANES}, wq = q / {LANES};
    const int c0 = (wq % {p.ncg}) * {cc}, row = (wq / {p.ncg}) * {p.px};
    const int ow = ow0 + lane;
    float acc[{p.px}][{cc}];
    #pragma unroll
    for (int j = 0; j < {p.px}; ++j) {{
      #pragma unroll
      for (int m = 0; m < {cc}; ++m) acc[j][m] = 0.f;
    }}
    const float* tb = tile + (row * {d['sh']}) * {words} + lane;
    // one kernel row at a time: unrolled whole, ptxas hoisted every tap's weights into
    // registers where they have constant addresses (one warp of channels) and spilled
    #pragma unroll 1
    for (int ky = 0; ky < {d['kh']}; ++ky) {{
      #pragma unroll
      for (int kx = 0; kx < {d['kw']}; ++kx) {{
        #pragma unroll
        for (int c = 0; c < {cin}; ++c) {{
          const float4* w4 = reinterpret_cast<const float4*>(
              wsm + ((ky * {d['kw']} + kx) * {cin} + c) * {cout} + c0);
          float wv[{cc}];
          #pragma unroll
          for (int v = 0; v < {cc // 4}; ++v) {{
            const float4 f = w4[v];
            wv[4 * v] = f.x; wv[4 * v + 1] = f.y; wv[4 * v + 2] = f.z; wv[4 * v + 3] = f.w;
          }}
          #pragma unroll
          for (int j = 0; j < {p.px}; ++j) {{
            const float xv = tb[(c * {ih} + j * {d['sh']} + ky) * {words} +
                                (kx % {sw}) * {iwq} + kx / {sw}];
            #pragma unroll
            for (int m = 0; m < {cc}; ++m) acc[j][m] += xv * wv[m];
          }}
        }}
      }}
    }}
    #pragma unroll
    for (int j = 0; j < {p.px}; ++j) {{
      const int oh = oh0 + row + j;
      if (oh < {d['ho']} && ow < {d['wo']}) {{
        const {it} obase = ((({it})nb * {d['ho']} + oh) * {d['wo']} + ow) * {cout} + c0;
        {align}{oct_} o[{cc}];
        #pragma unroll
        for (int m = 0; m < {cc}; ++m) {{
          const int k = c0 + m;
          const {it} oidx = obase + m;
          float a_ = acc[j][m];
          {epi}
          o[m] = {store_expr(self.out_dtype, "a_")};
          (void)k; (void)oidx;
        }}
        {self._store()}
      }}
    }}
  }}
}}
"""


def layer_params(net, layer) -> dict:
    """Keyword arguments of :class:`StemSource` for a conv layer of ``net``. Raises
    ValueError for what the kernel does not take: not a group-1 2-D conv with dilation 1,
    an epilogue operand broadcast other than per channel or full."""
    a = layer.attrs
    if layer.kind != "conv" or "quant" in a or int(a.get("group", 1)) != 1 or \
            len(layer.inputs) < 2:
        raise ValueError("not a group-1 conv")
    x, w, y = layer.inputs[0], layer.inputs[1], layer.outputs[0]
    xs, ws, ys = (tuple(net.tensors[t].shape) for t in (x, w, y))
    if len(xs) != 4 or len(ws) != 4 or ws[-1] != xs[-1] or \
            any(d is None for d in xs + ys + ws):
        raise ValueError("not a 2-D conv of static shape")
    if any(int(d) != 1 for d in a.get("dilations", (1, 1))):
        raise ValueError(f"the direct stem kernel takes dilation 1, not "
                         f"{list(a['dilations'])}")
    return dict(x_shape=xs, k_hw=ws[1:3], strides=a.get("strides", (1, 1)),
                pads=a.get("pads", (0, 0, 0, 0)), out_shape=ys,
                in_dtype=np.dtype(net.tensors[x].dtype).name,
                out_dtype=np.dtype(net.tensors[y].dtype).name, epilogue=layer.epilogue,
                operand_modes=dw_operand_modes(net, layer))


def unsupported(net, layer):
    """Why ``stem_direct`` cannot run ``layer``, or None. Plans the block only: no GPU work.
    A filter of a float type only (the kernel reads it as float32)."""
    if not enabled():
        return "TFTRT_STEM_DIRECT=0"
    return why_not(net, layer, layer_params, StemSource)


def why_not(net, layer, params_of, source_cls):
    """Why a stem kernel's source (``source_cls`` on ``params_of(net, layer)``) cannot be made
    for ``layer``, or None: what it raises; a filter of a non-float type."""
    try:
        params = params_of(net, layer)
        if np.dtype(net.tensors[layer.inputs[1]].dtype).kind != "f":
            return "not a float filter"
        source_cls(**params)
    except (ValueError, NotImplementedError, TypeError) as e:
        return str(e)
    return None
