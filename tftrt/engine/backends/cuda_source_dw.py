"""CUDA C source of the shared-memory tiled depthwise convolution (tactic ``dw_tiled``),
strings only.

No CuPy here (tests compile it with nvcc and run it on the host); ``cupy_dw.DepthwiseTiled``
compiles and launches it. One kernel, ``dw_tiled``: 2-D depthwise convolution, NHWC,
group == C_in, channel multiplier 1, dilation 1, stride 1 or 2, kernels up to 9x9, the
layer's epilogue fused (``cuda_source._dw_epilogue``, the same statements the direct kernel
``dwconv`` applies). In :class:`Quant` mode (tactic ``q_dw``) it runs an INT8 / FP8 layer:
the quantized values, the quantized epilogue and int8 store, whose C pieces
(:func:`staged_expr`, :func:`quant_epilogue`) the direct kernel's quantized mode shares.

A block computes one output tile: TH x TW output pixels of one sample for a group of CG
channels. It first stages the input tile with its halo, ``(TH - 1) * sh + kh`` rows by
``(TW - 1) * sw + kw`` columns of its CG channels, in shared memory as float32 (vector loads
of V channels, 16 / 8 / 4 bytes where C allows, scalar otherwise; zero padding and positions
past the input written as zeros there), then each thread computes RH x RW outputs of one
channel from shared memory: the channel's kh * kw weights in registers, one input row segment
at a time in registers, each row used by every output row it reaches. A thread's outputs are
accumulated in float32 over the taps in the order of ``numpy_ops.conv_depthwise`` and of
``dwconv`` (kernel row, then column, starting from 0; a padded position adds 0 * w), so the
answers are the direct kernel's, within the rounding of FMA contraction.

The tile (:class:`Tile`) is chosen per layer by a small cost model (:func:`plan_tile`):
instructions per thread (FMAs, shared-memory loads with their bank conflicts, the staging),
blocks per SM by shared memory / threads / registers, waves over the GPU's SMs, bytes moved;
shared memory stays within 48 KB (static). :func:`layer_params` reads a network layer and
raises ValueError for what the kernel does not take.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from tftrt.engine.backends import cuda_source_quant as S
from tftrt.engine.backends.cuda_source import (PRELUDE, _dw_epilogue, _vec_type,
                                               conv_kernel_params, ctype, dw_operand_modes,
                                               load_expr, store_expr)

KERNEL = "dw_tiled"
SMEM_LIMIT = 48 * 1024       # static shared memory of one block
SMEM_PER_SM = 227 * 1024     # H100 / H200: what the blocks on one SM may share
MAX_TAPS = 81                # the weights of a thread's channel live in registers: up to 9x9
MAX_THREADS = 512
_FLOATS = ("float16", "float32")


def enabled() -> bool:
    """``TFTRT_DW_TILED`` is not 0 / false (TensorFlow's spellings; default on): the CuPy
    backend offers tactic ``dw_tiled`` (the builder's timing picks it where it is faster).
    On an H200 it made ConvNeXtTiny 19% faster at batch 1 and 9% at 128 (with se fusion,
    benchmarks/README.md)."""
    from tftrt.env import env_bool  # standard library only
    return env_bool("TFTRT_DW_TILED", True)


def quant_enabled() -> bool:
    """``TFTRT_QUANT_DW`` (default on; 0 turns it off): the CuPy backend offers tactics
    ``q_dw`` (this kernel in :class:`Quant` mode) and ``q_dw_direct`` (the direct kernel's,
    ``cuda_source.DepthwiseConvSource``) for INT8 / FP8 depthwise convs, which ran emulated
    in TF32 before (``cupy_quant.QuantEmulated``)."""
    from tftrt.env import env_bool  # standard library only
    return env_bool("TFTRT_QUANT_DW", True)


@dataclasses.dataclass(frozen=True)
class Quant:
    """An INT8 / FP8 depthwise conv (tactic ``q_dw``): x is staged as its quantized values --
    an int8 x as it is, a float x quantized on load with ``inv_x`` (``q_int8`` / ``q_e4m3``,
    as ``cuda_source_quant.QuantizeSource``) -- the filter ``wt`` holds the weight's int8
    codes / E4M3 values as float32, so an INT8 sum of products is an exact integer in float32
    (below 2**24: 81 taps x 128 x 127), as the numpy backend's float64 one; the layer's
    epilogue (its first step the per-channel dequantization ``scale``) runs with
    ``cuda_source_quant.epilogue_statements`` (numpy's float32 steps), and an int8 y is
    requantized with ``out_scale`` (``q_int8``)."""

    fmt: str
    inv_x: float
    out_scale: Optional[float] = None


def staged_expr(quant: Optional[Quant], in_dtype: str, v: str) -> str:
    """C expression: the float32 a depthwise kernel computes with for x's element ``v`` (a
    float): itself, or under ``quant`` its quantized value (an int8 x's code as it is)."""
    if quant is None or np.dtype(in_dtype).name == "int8":
        return v
    inv = S.float_literal(np.float32(quant.inv_x))
    if quant.fmt == S.INT8:
        return f"(float)q_int8(__fmul_rn({v}, {inv}))"
    return f"e4m3_value(q_e4m3(__fmul_rn({v}, {inv})))"


def quant_epilogue(quant: Quant, out_dtype: str, epilogue, operand_modes, acc: str,
                   lane: str) -> Tuple[list, str]:
    """(statements applying ``epilogue`` to float ``acc`` of channel ``k`` at ``oidx``
    (``lane``: "" or " + v") with numpy's float32 steps, the C expression of the value
    stored: int8 requantized with the output scale, or float16 / float32)."""
    loads = {}
    for i, (mode, dt) in operand_modes.items():
        e = load_expr(dt, f"e{i}[k{lane}]" if mode == "vec" else f"e{i}[oidx{lane}]")
        loads[i] = e if dt in _FLOATS else f"(float){e}"
    stmts = S.epilogue_statements(epilogue, loads, acc)
    if np.dtype(out_dtype).name == "int8":
        inv = S.float_literal(S.output_scale_inverse(quant.out_scale))
        return stmts, f"q_int8(__fmul_rn({acc}, {inv}))"
    return stmts, store_expr(out_dtype, acc)


def quant_helpers(quant: Optional[Quant]) -> str:
    """The device helpers a quantized depthwise kernel calls."""
    if quant is None:
        return ""
    return S.INT8_HELPERS + (S.FP8_HELPERS + S.E4M3_VALUE if quant.fmt == S.FP8 else "")


def check_quant(quant: Quant, in_dtype: str, out_dtype: str, what: str) -> None:
    """ValueError for dtypes the quantized depthwise kernels do not take."""
    if quant.fmt not in (S.INT8, S.FP8):
        raise ValueError(f"quantized format {quant.fmt!r}")
    if in_dtype not in _FLOATS + (("int8",) if quant.fmt == S.INT8 else ()):
        raise ValueError(f"the {what} {quant.fmt} depthwise kernel takes float16 / float32 "
                         f"x (or int8 x in INT8), not {in_dtype}")
    if out_dtype not in _FLOATS + ("int8",) or \
            (out_dtype == "int8") != (quant.out_scale is not None):
        raise ValueError(f"the {what} quantized depthwise kernel writes float16 / float32 "
                         f"y, or int8 y with its output scale, not {out_dtype}")


@dataclasses.dataclass(frozen=True)
class Tile:
    """A block's work: ``cg`` channels x (rh * nsh) x (rw * nsw) output pixels; each of its
    ``cg * nsh * nsw`` threads computes rh x rw outputs of one channel."""

    cg: int
    rh: int
    rw: int
    nsh: int
    nsw: int

    @property
    def th(self) -> int:
        return self.rh * self.nsh

    @property
    def tw(self) -> int:
        return self.rw * self.nsw

    @property
    def threads(self) -> int:
        return self.cg * self.nsh * self.nsw


@dataclasses.dataclass(frozen=True)
class Geometry:
    n: int
    h: int
    w: int
    c: int
    ho: int
    wo: int
    kh: int
    kw: int
    sh: int
    sw: int
    ph: int
    pw: int

    def in_tile(self, t: Tile) -> Tuple[int, int]:
        """Rows and columns of the input tile (with halo) of tile ``t``."""
        return (t.th - 1) * self.sh + self.kh, (t.tw - 1) * self.sw + self.kw

    def smem_bytes(self, t: Tile) -> int:
        ih, iw = self.in_tile(t)
        return 4 * ih * iw * t.cg


def _check(g: Geometry, in_dtype: str, out_dtype: str, quant: Optional[Quant] = None) -> None:
    if quant is not None:
        check_quant(quant, in_dtype, out_dtype, "tiled")
    elif in_dtype not in _FLOATS or out_dtype not in _FLOATS:
        raise ValueError(f"the tiled depthwise kernel takes float16 / float32 x and y, not "
                         f"{in_dtype} / {out_dtype}")
    if g.sh not in (1, 2) or g.sw not in (1, 2):
        raise ValueError(f"the tiled depthwise kernel takes strides 1 and 2, not "
                         f"{(g.sh, g.sw)}")
    if g.kh * g.kw > MAX_TAPS:
        raise ValueError(f"a {g.kh}x{g.kw} kernel has more than {MAX_TAPS} taps: the tiled "
                         f"depthwise kernel keeps a channel's weights in registers")
    if min(g.n, g.h, g.w, g.c, g.ho, g.wo, g.kh, g.kw) < 1:
        raise ValueError(f"empty depthwise conv {g}")


def _bank_ways(g: Geometry, t: Tile) -> int:
    """Shared-memory bank conflicts (ways) of the first warp's input reads: lanes are channels
    first, then strips."""
    if t.cg >= 32:
        return 1
    return _ways(t.cg, t.rh * g.sh * g.in_tile(t)[1], t.rw * g.sw, t.nsw, min(32, t.threads))


@functools.lru_cache(maxsize=4096)
def _ways(cg: int, row: int, col: int, nsw: int, lanes: int) -> int:
    banks: Dict[int, set] = {}
    for q in range(lanes):
        cl, s = q % cg, q // cg
        off = ((s // nsw) * row + (s % nsw) * col) * cg + cl
        banks.setdefault(off % 32, set()).add(off)
    return max(len(v) for v in banks.values())


def _sectors(nbytes: int) -> int:
    """Bytes moved for ``nbytes`` contiguous bytes: whole 32-byte sectors."""
    return -(-nbytes // 32) * 32


# cycles a global load takes to come back (H100 / H200, from L2 or memory), for the staging's
# bandwidth when few warps are resident (tile_cost's ``latency``)
LOAD_LATENCY = 700


def tile_cost(g: Geometry, t: Tile, vec: int, in_size: int, out_size: int, n_epi: int,
              sms: int, latency: bool = False) -> Optional[float]:
    """Estimated cycles of the whole layer with tile ``t`` (None: it does not fit).
    ``latency``: the staging's bandwidth is also bounded by the loads the resident warps keep
    in flight (one vector a thread, :data:`LOAD_LATENCY` cycles each). Without it, the
    quantized mode's model put MobileNetV2's 112 x 112 x 96 stride-2 depthwise conv (batch
    128, int8 x) at 43 us on one-warp blocks, 11 resident an SM (their float32 staging fills
    shared memory); it took 223 us on an H200 (s45). With the bound that tile costs 106 us
    and a tile of 4-warp blocks 46: still optimistic, but no longer blind to occupancy. Only
    the stride-2 layers of MobileNetV2 change tiles; not yet timed on a GPU."""
    if t.threads > MAX_THREADS or g.smem_bytes(t) > SMEM_LIMIT:
        return None
    ih, iw = g.in_tile(t)
    span = (t.rw - 1) * g.sw + g.kw
    rows = (t.rh - 1) * g.sh + g.kh
    taps = g.kh * g.kw
    regs = t.rh * t.rw + taps + span + 24
    if regs > 255:
        return None
    fill = math.ceil(ih * iw * t.cg / vec / t.threads) * (12 + vec + vec // 4)
    pti = (t.rh * t.rw * taps + rows * span * _bank_ways(g, t) + taps + fill +
           t.rh * t.rw * (6 + 2 * n_epi) + 30)
    warps = math.ceil(t.threads / 32)
    per_sm = min(SMEM_PER_SM // g.smem_bytes(t), 2048 // (warps * 32),
                 65536 // (warps * 32 * max(regs, 32)), 32)
    if per_sm < 1:
        return None
    blocks = g.n * math.ceil(g.ho / t.th) * math.ceil(g.wo / t.tw) * math.ceil(g.c / t.cg)
    mine = math.ceil(blocks / sms)          # blocks one SM runs
    resident = min(mine, per_sm)
    # 4 warp instructions a cycle per SM; a lone warp's independent FMAs issue ~1 in 2 cycles
    compute = math.ceil(mine / resident) * max(resident * warps * pti / 4, 2 * pti)
    # bytes per SM at ~32 bytes a cycle (halo re-reads mostly hit L2), in whole sectors: a
    # pixel's CG channels are contiguous, the next pixel C channels further
    moved = mine * (ih * iw * _sectors(t.cg * in_size) + t.th * t.tw * _sectors(t.cg * out_size))
    rate = 32.0  # bytes a cycle an SM
    if latency:
        rate = min(rate, resident * warps * 32 * vec * in_size / LOAD_LATENCY)
    return max(compute, moved / rate)


@functools.lru_cache(maxsize=256)
def plan_tile(g: Geometry, vec: int, in_size: int, out_size: int, n_epi: int,
              sms: int, latency: bool = False) -> Tile:
    """The cheapest :class:`Tile` by :func:`tile_cost` (``latency``: its load-latency
    bound, the quantized mode's); ValueError when none fits in shared memory."""
    best, best_cost = None, None
    # A pixel's channels of one group are at least a 32-byte sector where C allows: narrower
    # groups halve the sectors' use in the staging loads and the stores.
    cgs = [cg for cg in (8, 16, 32, 64) if cg % vec == 0 and cg < g.c + 8 and
           (cg * in_size >= 32 or cg >= g.c)] or [max(8, vec)]
    for cg in cgs:
        for rh in (1, 2, 3, 4):
            if rh > g.ho:
                continue
            for rw in range(1, 9):
                if rw > g.wo or rh * rw > 32:
                    continue
                for nsh in range(1, 17):
                    if (nsh - 1) * rh >= g.ho:
                        break
                    for nsw in range(1, 17):
                        if (nsw - 1) * rw >= g.wo or cg * nsh * nsw > MAX_THREADS:
                            break
                        t = Tile(cg, rh, rw, nsh, nsw)
                        cost = tile_cost(g, t, vec, in_size, out_size, n_epi, sms, latency)
                        if cost is not None and (best_cost is None or cost < best_cost):
                            best, best_cost = t, cost
    if best is None:
        raise ValueError(f"no tile of the tiled depthwise kernel fits in {SMEM_LIMIT} bytes "
                         f"of shared memory for a {g.kh}x{g.kw} kernel, strides "
                         f"{(g.sh, g.sw)}")
    return best


def vector_width(c: int, dtype: str) -> int:
    """Channels per input load: the widest of 16 / 8 / 4 bytes that divides C, else 1."""
    isz = np.dtype(dtype).itemsize
    return next((v for v in (16 // isz, 8 // isz, 4 // isz) if v >= 2 and c % v == 0), 1)


class DwTiledSource:
    """The ``dw_tiled`` kernel of one depthwise conv layer for fixed shapes and dtypes.

    Args:
      x_shape, out_shape: NHWC shapes of x and y (y's channels are x's: multiplier 1).
      k_hw, strides, pads: the kernel's (kh, kw), (sh, sw) and begin pads (ph, pw, ...).
      in_dtype, out_dtype: float16 / float32 storage of x and y (y may differ from x).
      epilogue: the layer's epilogue; operand_modes: layer input index -> ("vec" | "full",
        dtype) of each epilogue operand (per channel, or of y's shape).
      vec: channels per input load (1: scalar loads, for an x that is not aligned to
        ``vec * itemsize`` bytes); None: :func:`vector_width`.
      sms: the GPU's multiprocessor count (the tile plan's waves); tile: a :class:`Tile`
        to use instead of the planned one (tests).
      quant: a :class:`Quant` for an INT8 / FP8 layer (tactic ``q_dw``; x may then be int8,
        y int8): x's quantized values staged, the quantized epilogue and store.

    Kernel ``dw_tiled(x, wt, *operands, y)``: ``wt`` the filter as float32 [kh * kw, C],
    operands in :attr:`operands` order; launch :attr:`blocks` blocks of :attr:`threads`
    threads (any other block size also computes every output, as the host tests run it).
    Raises:
      ValueError: what the kernel does not take (dtypes, strides, kernels over 9x9, a vector
        width that does not divide C, a tile over 48 KB of shared memory).
    """

    def __init__(self, x_shape, k_hw, strides, pads, out_shape, in_dtype: str, out_dtype: str,
                 epilogue: Sequence[dict], operand_modes: Dict[int, Tuple[str, str]],
                 vec: Optional[int] = None, sms: int = 132, tile: Optional[Tile] = None,
                 quant: Optional[Quant] = None):
        self.quant = quant
        n, h, w, c = (int(d) for d in x_shape)
        n2, ho, wo, kout = (int(d) for d in out_shape)
        if n2 != n or kout != c:
            raise ValueError(f"the tiled depthwise kernel takes y [N, Ho, Wo, C] of x "
                             f"{tuple(x_shape)} (channel multiplier 1), not {tuple(out_shape)}")
        self.in_dtype, self.out_dtype = np.dtype(in_dtype).name, np.dtype(out_dtype).name
        g = Geometry(n, h, w, c, ho, wo, int(k_hw[0]), int(k_hw[1]), int(strides[0]),
                     int(strides[1]), int(pads[0]), int(pads[1]))
        _check(g, self.in_dtype, self.out_dtype, quant)
        if vec is None:
            vec = vector_width(c, self.in_dtype)
        if vec < 1 or c % vec or (vec > 1 and _vec_type(vec * np.dtype(in_dtype).itemsize)
                                  is None):
            raise ValueError(f"vector width {vec} does not divide C={c}")
        self.geometry, self.vec = g, int(vec)
        self.align = self.vec * np.dtype(self.in_dtype).itemsize  # bytes x must be aligned to
        isz, osz = np.dtype(self.in_dtype).itemsize, np.dtype(self.out_dtype).itemsize
        n_epi = len(epilogue)
        if tile is None:
            tile = plan_tile(g, self.vec, isz, osz, n_epi, int(sms), quant is not None)
        elif tile.cg % self.vec or g.smem_bytes(tile) > SMEM_LIMIT or \
                tile.threads > MAX_THREADS:
            raise ValueError(f"tile {tile} does not fit vector width {self.vec} or "
                             f"{SMEM_LIMIT} bytes of shared memory")
        self.tile = tile
        self.threads = tile.threads
        self.grid = (math.ceil(ho / tile.th), math.ceil(wo / tile.tw), math.ceil(c / tile.cg))
        self.blocks = n * self.grid[0] * self.grid[1] * self.grid[2]
        if self.blocks >= 2 ** 31:
            raise ValueError(f"{self.blocks} blocks: more than a grid holds")
        self.smem_bytes = g.smem_bytes(tile)
        self.operands, self.params = conv_kernel_params(self.in_dtype, self.out_dtype,
                                                        operand_modes)
        self.source = self._source(epilogue, operand_modes)

    def _fill(self, it: str) -> str:
        """Statements staging the input tile: thread i takes vector i (channels first)."""
        g, t, V = self.geometry, self.tile, self.vec
        ih, iw = g.in_tile(t)
        nv = t.cg // V
        ict = ctype(self.in_dtype)
        value = lambda p: self._staged(load_expr(self.in_dtype, p))  # noqa: E731
        if V == 1:
            load = f"f[0] = {value(f'xs[({it})(ih * {g.w} + iw) * {g.c} + c]')};"
        else:
            vt, chunks = _vec_type(V * np.dtype(self.in_dtype).itemsize)
            load = (f"union {{ {vt} u[{chunks}]; {ict} e[{V}]; }} b;\n"
                    f"        #pragma unroll\n"
                    f"        for (int q = 0; q < {chunks}; ++q) b.u[q] = "
                    f"reinterpret_cast<const {vt}*>(xs + ({it})(ih * {g.w} + iw) * {g.c} + c)[q];\n"
                    f"        #pragma unroll\n"
                    f"        for (int v = 0; v < {V}; ++v) f[v] = "
                    f"{value('b.e[v]')};")
        if V % 4 == 0:
            decl = f"union {{ float4 q[{V // 4}]; float f[{V}]; }} u;\n      float* f = u.f;"
            put = (f"#pragma unroll\n      for (int q = 0; q < {V // 4}; ++q) "
                   f"reinterpret_cast<float4*>(tile + p * {t.cg} + cv * {V})[q] = u.q[q];")
        else:
            decl = f"float f[{V}];"
            put = (f"#pragma unroll\n      for (int v = 0; v < {V}; ++v) "
                   f"tile[p * {t.cg} + cv * {V} + v] = f[v];")
        return f"""for (int i = threadIdx.x; i < {ih * iw * nv}; i += blockDim.x) {{
      const int cv = i % {nv}, p = i / {nv};
      const int ly = p / {iw}, lx = p - ly * {iw};
      const int ih = ih0 + ly, iw = iw0 + lx, c = c0 + cv * {V};
      {decl}
      if (ih >= 0 && ih < {g.h} && iw >= 0 && iw < {g.w} && c < {g.c}) {{
        {load}
      }} else {{
        #pragma unroll
        for (int v = 0; v < {V}; ++v) f[v] = 0.f;
      }}
      {put}
    }}"""

    def _staged(self, v: str) -> str:
        """C expression: the float32 the tile holds for x's element ``v`` (a float)."""
        return staged_expr(self.quant, self.in_dtype, v)

    def _epilogue_src(self, epilogue, operand_modes) -> str:
        """Statements applying the epilogue to ``a_`` and storing it at ``y[oidx]``."""
        if self.quant is None:
            stmts = _dw_epilogue(epilogue, operand_modes, "a_", "")
            store = store_expr(self.out_dtype, "a_")
        else:
            stmts, store = quant_epilogue(self.quant, self.out_dtype, epilogue, operand_modes,
                                          "a_", "")
        epi = "\n          ".join(stmts)
        return f"{epi}\n          y[oidx] = {store};"

    def _helpers(self) -> str:
        return quant_helpers(self.quant)

    def _source(self, epilogue, operand_modes) -> str:
        g, t = self.geometry, self.tile
        ih, iw = g.in_tile(t)
        span = (t.rw - 1) * g.sw + g.kw
        rows = (t.rh - 1) * g.sh + g.kh
        taps = g.kh * g.kw
        it = "long long" if max(g.n * g.h * g.w * g.c, g.n * g.ho * g.wo * g.c) >= \
            2 ** 31 - 64 else "int"
        nth, ntw, ncg = self.grid
        epi = self._epilogue_src(epilogue, operand_modes)
        params = ", ".join(f"{ty} __restrict__ {nm}" for ty, nm in self.params)
        smem = (ih * iw * t.cg + 3) // 4
        return PRELUDE + self._helpers() + f"""
extern "C" __global__ void __launch_bounds__({t.threads}) {KERNEL}({params}) {{
  __shared__ float4 tile4[{smem}];
  float* tile = reinterpret_cast<float*>(tile4);
  int r = blockIdx.x;
  const int c0 = (r % {ncg}) * {t.cg}; r /= {ncg};
  const int ow0 = (r % {ntw}) * {t.tw}; r /= {ntw};
  const int oh0 = (r % {nth}) * {t.th};
  const int nb = r / {nth};
  const int ih0 = oh0 * {g.sh} - {g.ph}, iw0 = ow0 * {g.sw} - {g.pw};
  {{
    const {ctype(self.in_dtype)}* xs = x + ({it})nb * {g.h * g.w * g.c};
    {self._fill(it)}
  }}
  __syncthreads();
  for (int q = threadIdx.x; q < {t.threads}; q += blockDim.x) {{
    const int cl = q % {t.cg}, s = q / {t.cg};
    const int sy = s / {t.nsw}, sx = s % {t.nsw};
    const int k = c0 + cl;
    if (k >= {g.c}) continue;  // past the last channel (no barrier follows)
    const float* wk = wt + k;
    float wr[{taps}];
    #pragma unroll
    for (int u = 0; u < {taps}; ++u) wr[u] = wk[u * {g.c}];
    float acc[{t.rh}][{t.rw}];
    #pragma unroll
    for (int j = 0; j < {t.rh}; ++j) {{
      #pragma unroll
      for (int i = 0; i < {t.rw}; ++i) acc[j][i] = 0.f;
    }}
    const float* base = tile + ((sy * {t.rh * g.sh}) * {iw} + sx * {t.rw * g.sw}) * {t.cg} + cl;
    #pragma unroll
    for (int rr = 0; rr < {rows}; ++rr) {{
      float seg[{span}];
      #pragma unroll
      for (int m = 0; m < {span}; ++m) seg[m] = base[(rr * {iw} + m) * {t.cg}];
      #pragma unroll
      for (int j = 0; j < {t.rh}; ++j) {{
        const int a = rr - j * {g.sh};
        if (a >= 0 && a < {g.kh}) {{
          #pragma unroll
          for (int b = 0; b < {g.kw}; ++b) {{
            const float wv = wr[a * {g.kw} + b];
            #pragma unroll
            for (int i = 0; i < {t.rw}; ++i) acc[j][i] += seg[i * {g.sw} + b] * wv;
          }}
        }}
      }}
    }}
    #pragma unroll
    for (int j = 0; j < {t.rh}; ++j) {{
      const int oh = oh0 + sy * {t.rh} + j;
      #pragma unroll
      for (int i = 0; i < {t.rw}; ++i) {{
        const int ow = ow0 + sx * {t.rw} + i;
        if (oh < {g.ho} && ow < {g.wo}) {{
          const {it} oidx = ((({it})nb * {g.ho} + oh) * {g.wo} + ow) * {g.c} + k;
          float a_ = acc[j][i];
          {epi}
        }}
      }}
    }}
  }}
}}
"""


def layer_params(net, layer, quantized: bool = False) -> dict:
    """Keyword arguments of :class:`DwTiledSource` (but ``vec``, ``sms``) for a conv layer
    of ``net`` (``quantized``: an INT8 / FP8 one, ``quant`` included). Raises ValueError for
    what the kernel does not take: not a 2-D depthwise conv of multiplier 1, dilation other
    than 1, an epilogue operand broadcast other than per channel or full."""
    a = layer.attrs
    x, w, y = layer.inputs[0], layer.inputs[1], layer.outputs[0]
    xs, ws, ys = (tuple(net.tensors[t].shape) for t in (x, w, y))
    if ("quant" in a) != quantized:
        raise ValueError("a quantized layer (tactic q_dw)" if "quant" in a else
                         "not a quantized layer")
    if len(xs) != 4 or a.get("group") != xs[-1] or ws[-1] != 1 or \
            ws[0] != xs[-1]:
        raise ValueError("not a 2-D depthwise conv of channel multiplier 1")
    if any(int(d) != 1 for d in a.get("dilations", (1, 1))):
        raise ValueError(f"the tiled depthwise kernel takes dilation 1, not "
                         f"{list(a['dilations'])}")
    modes = dw_operand_modes(net, layer)
    params = dict(x_shape=xs, k_hw=ws[1:3], strides=a.get("strides", (1, 1)),
                  pads=a.get("pads", (0, 0, 0, 0)), out_shape=ys,
                  in_dtype=np.dtype(net.tensors[x].dtype).name,
                  out_dtype=np.dtype(net.tensors[y].dtype).name, epilogue=layer.epilogue,
                  operand_modes=modes)
    if quantized:
        from tftrt.engine import quantization as Q
        q = a["quant"]
        params["quant"] = Quant(q["format"], float(Q.inv_scale(q["input_scale"])),
                                q.get("output_scale"))
    return params


def direct_params(net, layer) -> dict:
    """Keyword arguments of ``cuda_source.DepthwiseConvSource`` (the direct kernel) for a
    quantized depthwise conv layer (tactic ``q_dw_direct``): the layers ``q_dw`` takes."""
    p = layer_params(net, layer, quantized=True)
    return dict(x_shape=p["x_shape"], k_hw=p["k_hw"], strides=p["strides"],
                dilations=(1, 1), pads=p["pads"], out_shape=p["out_shape"], mult=1,
                in_dtype=p["in_dtype"], out_dtype=p["out_dtype"], epilogue=p["epilogue"],
                operand_modes=p["operand_modes"], quant=p["quant"])


def quant_unsupported(net, layer) -> Optional[str]:
    """Why ``q_dw`` cannot run quantized ``layer`` (the vector and the scalar build), or
    None. Plans the tiles only: no GPU work."""
    if not quant_enabled():
        return "off (TFTRT_QUANT_DW=0)"
    return tiled_unsupported(net, layer, quantized=True)


def tiled_unsupported(net, layer, quantized: bool = False) -> Optional[str]:
    """Why ``dw_tiled`` (``quantized``: ``q_dw``) cannot run ``layer`` (both the vector and
    the scalar build), or None. Plans the tiles only: no GPU work."""
    errors = (ValueError, NotImplementedError) + ((KeyError,) if quantized else ())
    try:
        p = layer_params(net, layer, quantized=quantized)
        DwTiledSource(**p)
        DwTiledSource(**p, vec=1)
    except errors as e:
        return str(e)
    return None
