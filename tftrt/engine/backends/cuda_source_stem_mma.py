"""CUDA C source of the tensor-core few-channel convolution (tactic ``stem_mma``), strings only.

No CuPy here (tests compile it with nvcc and run it on the host with an emulated MMA);
``cupy_stem_mma.StemMma`` compiles and launches it.

Why: a network's stem (3 input channels) is a GEMM too thin in K for cuDNN and too large in M
for CUDA cores. VGG16's 3 -> 64 3x3 stem at batch 128 (FP16, H200, 2026-12-01) took 923 us as
tactic im2col (a column matrix in memory, then cuBLASLt) and 1,484 us as tactic
``stem_direct`` (float32 CUDA cores), for a floor of ~190-290 us: it writes 822 MB of float16.
This kernel runs the GEMM on tensor cores with the column matrix never in memory (implicit
im2col: each lane gathers its A fragment from the image) and the epilogue fused, so that the
output write is what it costs.

One kernel, ``stem_mma(x, wt, *operands, y, nb)``: 2-D convolution, NHWC, group 1, dilation
1, any stride and pads. The GEMM: M = N*Ho*Wo output pixels (flat, consecutive), N = Cout, K =
KH*KW*Cin zero-padded to Kp, a multiple of 16, at most :data:`MAX_K`. ``mma.sync`` m16n8k16,
float16 inputs (x is rounded to float16 if stored as float32), float32 accumulators. The
batch N is the argument ``nb``, the rest of the geometry is compiled in: every batch size
(of one index width, ``int`` below 2**31 elements) has the same source, so the engines of an
optimization profile compile it once (a kernel per batch size cost 0.6 s of NVRTC each in a
cold ResNet50 profile build on the H200, 2026-12-02).

A block of :data:`WARPS` warps stages the filter (float16 [Cout][Kp + 8]: the pad makes the B
fragment reads conflict-free) and a table of each k's input offset, ky and kx in shared
memory, then each warp takes ``mt`` consecutive m-tiles of 16 pixels (blocks loop over the
pixels when :attr:`StemMmaSource.blocks` is capped). Per m-tile, a lane decodes its two
pixels (fragment rows g and g + 8) once; per 16-wide k step it gathers its 8 A elements from
global memory (zero outside the image, for k >= K and for pixels past M), and for each 8
channels reads B from shared memory and issues the MMA. The accumulators of a chunk of up to
:data:`CHUNK` channels live in registers (Cout over :data:`CHUNK`: the gather is repeated per
chunk). The epilogue (``cuda_source._dw_epilogue``: bias, scale, residual, activation) runs
per accumulator; the float16 results go through a per-warp staging buffer in shared memory so
that the warp stores its 16 pixels x chunk channels with 16-byte stores (the pixels are
consecutive: the block is rows of contiguous memory).

The fragment layouts are :data:`A_FRAG`, :data:`B_FRAG` and :data:`C_FRAG`, from the PTX ISA
("Matrix Fragments for mma.m16n8k16 with floating point type"); the host tests emulate the
MMA from the ISA's per-element formulas, not from these tables, and the GPU tests confirm
them on an H200.

Measured (H200, 2026-12-02, batch 128, float16 x, bias + ReLU, the kernel alone; floor:
reading x and writing y at 4.8 TB/s): VGG 3x3/1 -> 64 320 us (floor 179), ResNet 7x7/2 ->
64 256 us (51), MobileNet 3x3/2 -> 32 67 us (29), Inception 3x3/2 -> 32 112 us (52),
ConvNeXt 4x4/4 -> 96 56 us (24), EfficientNet 3x3/2 -> 40 136 us (62). Nsight Compute on
VGG's: L1/TEX at 90% of its throughput (hit rate 49%), DRAM at 54%: the scattered 2-byte
gathers bound it, not the tensor cores or the output. Keeping B and the bias in registers
for all m-tiles, capping registers (__launch_bounds__ min blocks 3-8), 2 or 8 m-tiles a
warp and capped grids all measured within 5% or slower; so did (H100, 2026-12-06, s39) the
filter's fragments through ``ldmatrix`` (:func:`ldmatrix_default`) and the k table in
``__constant__`` memory instead of shared (ResNet's stem 398-405 us against 257-259: a
warp's four distinct entries a read serialize in the constant cache;
results/stems_const_ktab_h100_2026-12-06s39g.log). So did staging each m-tile's input
patch in shared memory (``stage``, :func:`stage_default`; H100, 2026-12-06, s40, two runs in
one call, the conv alone, us, without / with: VGG 324-326 / 345-347, ResNet 257 / 252,
MobileNet 65 / 83, Inception 112 / 154, ConvNeXt 61 / 66; outputs identical;
results/stems_staged_h100_2026-12-06s40a.log): 2% on ResNet's, up to 37% slower elsewhere --
the staging copy is one more pass through L1 and the warp waits on it, where the gathers it
replaces were already mostly L1 hits. It stays an off knob.

With a :class:`StemPool` (``pool``; pool_fusion, s53) the row-tile kernel stores the 3x3 / 2
max pool of its output instead of the output: ResNet50's stem writes 103 MB of float16 at
batch 128 that its MaxPool reads back to write 26 MB. A tile is ``pr`` pool rows (2 in
float16, 3 in int8: what fits the shared memory) over the 2 pr + 1 conv rows of their
windows (the first is the tile before's last: carried from it where the block ran it just
before, :func:`carry_default`, else computed again). Each m-tile, after its
epilogue, pools its 16 pixels across into the tile's pooled rows in shared memory (8
columns; the first column's pixel before it comes from the m-tile before, kept aside), and
once every warp is done the block pools down three rows at a time and stores 16 bytes a
thread. Each window is folded in the pool kernel's order from the same values, so the
results are the pool kernel's (tests/engine/test_stem_pool_codegen).
"""

from __future__ import annotations

import math
from typing import Dict, List, Sequence, Tuple

import numpy as np

from tftrt.engine import quantization as Q
from tftrt.engine.backends import cuda_source_quant as S
from tftrt.engine.backends import cuda_source_stem as ST
from tftrt.engine.backends.cuda_source_move import pad_literal
from tftrt.engine.backends.cuda_source_qmma import FAST_INT8
from tftrt.engine.backends.cuda_source import (PRELUDE, _dw_epilogue, conv_kernel_params,
                                               ctype)

KERNEL = "stem_mma"
MAX_K = 160              # Kp: ResNet's 7x7 over 3 channels (147 taps) padded to 160
# K of a conv whose input channels are a multiple of 16 (:attr:`StemMmaSource.vec`): a stem
# rearranged by passes/stem_space_to_depth, ResNet's 4x4 over 16 channels
MAX_K_VEC = 256
MAX_COUT = 256
CHUNK = 128              # output channels whose accumulators a lane holds at once
WARPS = 4                # a block: 128 threads
LANES = 32
MT = 4                   # m-tiles of 16 pixels a warp takes per block tile
SMEM_LIMIT = 48 * 1024   # static shared memory of one block
STAGE_MAX = 4096         # halves of a staged input patch (a warp's; 8 KB)
# row tiles (:attr:`StemMmaSource.rows`): a block of ROW_WARPS warps, R_ROWS output rows a tile,
# K (KH*KW*Cin with Cin padded to even) up to MAX_K_ROWS, dynamic shared memory up to
# ROW_SMEM_LIMIT (two blocks an SM on Hopper's 228 KB)
ROW_WARPS = 8
R_ROWS = 8
MAX_K_ROWS = 256
ROW_SMEM_LIMIT = 112 * 1024
STAGE_UNROLL = 4         # pixels a thread stages at once (their loads in flight together)
ROWS_MIN_K = 128         # row tiles by default from this K = KH*KW*Cin on (rows_default)
POOL_ROWS = 4            # pooled row tiles (StemPool): at most this many pool rows a tile
_FLOATS = ("float16", "float32")

# m16n8k16 fragments; lane = 4 g + t (g = lane >> 2, t = lane & 3). A (16 x 16, row major):
# register r holds rows g + A_FRAG[r][0], k = 2t + A_FRAG[r][1] + {0, 1} (low half: the lower
# k). B (16 x 8, k x n): register r holds k = 2t + B_FRAG[r] + {0, 1} of column n = g. C / D
# (16 x 8, float32): register r is row g + C_FRAG[r][0], column 2t + C_FRAG[r][1].
A_FRAG = ((0, 0), (8, 0), (0, 8), (8, 8))
B_FRAG = (0, 8)
C_FRAG = ((0, 0), (0, 1), (8, 0), (8, 1))

# The MMA and a float pair packed to float16x2, as PTX (no CUDA headers: CuPy's NVRTC may
# not find <mma.h> or <cuda_fp16.h>). Device only: host builds swap this block for an
# emulation (tests/engine/test_stem_mma_codegen).
MMA_HELPERS = r"""
__device__ __forceinline__ unsigned pack_h2(float lo, float hi) {
  unsigned r; asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo)); return r; }
__device__ __forceinline__ void mma_16816(float* c, const unsigned* a, unsigned b0,
                                          unsigned b1) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
               "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
               : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1)); }
__device__ __forceinline__ void ldsm_x4(unsigned* r, const unsigned short* p) {
  const unsigned a = (unsigned)__cvta_generic_to_shared(p);
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a)); }
__device__ __forceinline__ void ldsm_x2(unsigned* r, const unsigned short* p) {
  const unsigned a = (unsigned)__cvta_generic_to_shared(p);
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];"
               : "=r"(r[0]), "=r"(r[1]) : "r"(a)); }
"""


# An int8 store (out_scale): two codes of a channel pair as 2 bytes, the low byte the lower
# channel: q_int8's codes (round half to even, +-127), computed as q_mma's q_int8_fast
# computes them (FAST_INT8: clamped, then rounded by adding 1.5 * 2**23, whose mantissa's low
# byte is the code) and paired with one PRMT, not with the conversion unit (16 a clock an SM):
# with q_int8 the ResNet50 stem took 288 us against its float16 store's 259 (H100, s41).
# A NaN result is stored as ``nan`` (quantization.NAN_CODE: below every code, for the max
# pool after the stem).
Q_HELPERS = FAST_INT8 + r"""
__device__ __forceinline__ unsigned q_bits(float v, float inv, int nan) {
  const float c = fminf(fmaxf(__fmul_rn(v, inv), -127.f), 127.f);
  return v != v ? (unsigned)nan : (unsigned)__float_as_int(__fadd_rn(c, 12582912.f)); }
__device__ __forceinline__ unsigned short pack_q2(float lo, float hi, float inv, int nan) {
  return (unsigned short)prmt(q_bits(lo, inv, nan), q_bits(hi, inv, nan), 0x40u); }
"""


# A pooled row tile's max folds (:class:`StemPool`): ``acc = v > acc ? v : acc`` (TF's GPU
# MaxPool: NaN passes), float16 pairs in a word and int8 codes four a word.
POOL_HELPERS = r"""
__device__ __forceinline__ void fold2(float& lo, float& hi, unsigned w) {
  const float a = h2f((unsigned short)(w & 0xffffu)), b = h2f((unsigned short)(w >> 16));
  lo = a > lo ? a : lo;
  hi = b > hi ? b : hi; }
__device__ __forceinline__ unsigned max_s8x4(unsigned a, unsigned b) {
#ifdef __CUDA_ARCH__
  return __vmaxs4(a, b);  // CUDA's SIMD intrinsic: the same per-byte signed max
#else
  unsigned r = 0u;
  for (int i = 0; i < 32; i += 8) {
    const int x = (int)(signed char)(a >> i), y = (int)(signed char)(b >> i);
    r |= (unsigned)(unsigned char)(x > y ? x : y) << i;
  }
  return r;
#endif
}
"""


def carry_default() -> bool:
    """``TFTRT_STEM_MMA_POOL_CARRY`` (default on; 0 turns it off): a pooled row tile
    (:class:`StemPool`) takes its first conv row -- the last of the tile before, which a
    window of each shares -- from the tile before where that one ran in the same block just
    before: a block takes consecutive tiles (the grid one wave: cupy_stem_mma), and only its
    first tile of each image run computes that row again. Off: every tile computes it (a
    float16 tile 5 conv rows for 4 of output, 25% more MMAs; int8 7 for 6)."""
    from tftrt.env import env_bool  # standard library only
    return env_bool("TFTRT_STEM_MMA_POOL_CARRY", True)


def stage_default() -> bool:
    """``TFTRT_STEM_MMA_STAGE`` (default off: slower on four of five zoo stems, module doc; 1
    turns it on): an m-tile of 16 pixels in one output row has its input patch (KH rows of
    (16 - 1) * stride + KW pixels) copied once into the warp's shared memory with coalesced
    loads, zero outside the image, and its A fragments read from there
    (:meth:`StemMmaSource._stage_patch`); other m-tiles (a row's end, Wo not a multiple of
    16) gather from x as before. Why it was tried: the image gathers bound the kernel (s39);
    the patch is read ~3x fewer times than the gathers (ResNet's stem: 777 halves a tile
    against 2,352), with no bounds checks in the k loop."""
    from tftrt.env import env_bool  # standard library only
    return env_bool("TFTRT_STEM_MMA_STAGE", False)


def ldmatrix_default() -> bool:
    """``TFTRT_STEM_MMA_LDSM`` (default off; 1 turns it on): B fragments
    loaded with ``ldmatrix`` (:meth:`StemMmaSource._mmas`), one instruction per two n-tiles,
    instead of two 4-byte shared loads per n-tile. Why: Nsight Compute on ResNet's stem
    (H100, 2026-12-06, results/ncu_stem_mma_resnet_h100_2026-12-06s39a.txt) showed L1 / shared
    memory 87% busy, and of a lane's ~310 L1 operations an m-tile 160 were those B loads.
    Measured: no faster. H100, one call, twice each (results/stems_ldsm_h100_2026-12-06s39f.log,
    the conv alone, us, without / with): VGG 324-326 / 321, ResNet 257 / 258, MobileNet 66 /
    64-65, Inception 112 / 116, ConvNeXt 61 / 60; outputs identical, the GPU tests pass with
    it. The scattered 2-byte gathers of A bound the kernel, not B's loads; kept (off) for
    when a staged gather makes them matter. nvcc 13.0 (sm_90) gives the VGG stem with a SiLU
    epilogue a 12-byte spill with it (NVRTC on the H100: 64 registers, no local memory)."""
    from tftrt.env import env_bool  # standard library only
    return env_bool("TFTRT_STEM_MMA_LDSM", False)


def rows_default() -> str:
    """``TFTRT_STEM_MMA_ROWS``: "auto" (the default), "1" or "0". Row tiles
    (:class:`StemMmaSource`, ``rows``) -- a block stages the input rows of R_ROWS output rows
    in shared memory once, as float16 with the input channels padded to an even count, and
    every A fragment register is one aligned 4-byte shared load (a tap row's KW*Cp taps of a
    pixel are contiguous there), where the gathers read x two bytes at a time. "1": wherever
    they apply; "auto": where they apply and K = KH*KW*Cin is at least :data:`ROWS_MIN_K`
    (ResNet's and DenseNet's 7x7 stems); "0": never.

    Measured (H100, s52b, ``bench_stems.py --ways stem_mma-gather stem_mma-rows``, the conv
    alone, us, gathers / row tiles, two runs): ResNet 7x7/2 (K 147) 281-282 / 175-176, VGG
    3x3/1 (K 27) 336 / 333-334, MobileNet 3x3/2 (27) 71 / 77, Inception 3x3/2 (27) 123 /
    130 (ConvNeXt's 4x4/4, K 48, not reached; the first version of the row tiles lost there,
    176 against 69): they pay where each pixel has many taps to gather, and cost a little
    where it has few (their staging pass, and K padded to 48 over 4 channels instead of 32).
    Their first version (s52a), which staged one pixel a thread at a time, lost on all but
    ResNet's."""
    from tftrt.env import env_choice  # standard library only
    return env_choice("TFTRT_STEM_MMA_ROWS", ("auto", "1", "0"), "auto")


def enabled() -> bool:
    """``TFTRT_STEM_MMA`` (default on; 0 / false turns it off): the CuPy backend offers
    tactic ``stem_mma``, which the builder times against cuDNN, im2col and stem_direct, so it
    runs a stem only where it is the fastest there.

    On since the H200 run of 2026-12-02 (p): VGG16 through TensorFlow (FP16, Range profile)
    with it ran 0.394 / 0.728 / 7.491 ms at batch 1 / 8 / 128 against TF XLA's 0.872 / 1.090 /
    7.872 ms in the same run (1.05x at 128; without it 0.98x in run e) and VGG19 9.294 ms
    against 9.324; every zoo stem alone ran faster on it than on its earlier tactic
    (benchmarks/bench_stems.py, run o). Run o's slower small batches with it did not come
    back: they were other layers' cuDNN plans of that build."""
    from tftrt.env import env_bool  # standard library only
    return env_bool("TFTRT_STEM_MMA", True)


def padded_k(k: int) -> int:
    """Kp: K rounded up to the MMA's k of 16."""
    return -(-k // 16) * 16


def chunks(cout: int) -> List[Tuple[int, int]]:
    """(first channel, width) of each chunk of output channels whose accumulators a lane
    holds at once: Cout itself up to :data:`CHUNK`, else chunks of CHUNK and the rest."""
    return [(c0, min(CHUNK, cout - c0)) for c0 in range(0, cout, CHUNK)]


def row_words(width: int) -> int:
    """32-bit words of a shared-memory row of ``width`` halves (a multiple of 8): at least
    width / 2, and 4 mod 8, so that lanes (g, t) reading or writing word ``row(g) * words +
    t`` (+ a multiple of 4) hit 32 different banks, and rows stay 16-byte aligned."""
    w = width // 2
    return w if w % 8 == 4 else w + 4


def smem_bytes(cout: int, kp: int) -> int:
    """Shared memory of a block: the float16 filter, the k table (4 ints a k), the warps'
    float16 staging buffers of 16 pixels by the widest chunk."""
    widest = max(w for _, w in chunks(cout))
    return 4 * cout * row_words(kp) + 16 * kp + 4 * WARPS * 16 * row_words(widest)


class StemPool:
    """The max pool a row-tile stem kernel applies to its output before storing it: 3x3,
    stride 2, dilation 1, pads (1, 1, bottom, right) -- a Keras ResNet's or DenseNet's
    ZeroPadding2D + MaxPool2D after the stem, folded (passes/pad_folding), or ONNX's
    MaxPool(3, 2, pads 1) -- with the semantics of the pool kernel it replaces
    (cuda_source_move.PoolSource): NaN passes, ``pad_value`` in the pad cells (None: they
    are skipped), ``floor`` a float window's value with no number (None: -inf), an int8 pool
    of codes raised to ``code_floor``. The pool's output is what the kernel stores
    (``out_shape``: N, Hp, Wp, C); the conv's never reaches memory (a tile's rows are pooled
    in shared memory: :meth:`StemMmaSource._pool_rows`)."""

    def __init__(self, out_shape, pads, pad_value=None, floor=None, code_floor=None,
                 carry=None):
        self.carry = carry_default() if carry is None else bool(carry)
        self.out_shape = tuple(int(d) for d in out_shape)
        self.pads = tuple(int(p) for p in pads)
        self.pad_value = None if pad_value is None else float(pad_value)
        self.floor = None if floor is None else float(np.float32(floor))
        self.code_floor = None if code_floor is None else int(code_floor)

    def check(self, d: dict, out_dtype: str) -> None:
        """ValueError where the kernel does not pool this way: the shapes (conv dims ``d``)
        or the attributes."""
        if len(self.out_shape) != 4 or len(self.pads) != 4:
            raise ValueError(f"the stem kernel pools 2-D: an NHWC output and pads (top, left, "
                             f"bottom, right); not {list(self.out_shape)}, {list(self.pads)}")
        n, hp, wp, c = self.out_shape
        pt, pl, pb, pr = self.pads
        if (n, c) != (d["n"], d["cout"]) or (pt, pl) != (1, 1) or pb not in (0, 1, 2) or \
                pr not in (0, 1) or min(hp, wp) < 1:
            raise ValueError(f"the stem kernel pools 3x3 / 2 with pads (1, 1, <=2, <=1) over "
                             f"its own output; not pads {list(self.pads)} into "
                             f"{list(self.out_shape)}")
        if d["wo"] % 16 or wp != d["wo"] // 2 or hp != (d["ho"] + pt + pb - 3) // 2 + 1 or \
                wp != (d["wo"] + pl + pr - 3) // 2 + 1:
            raise ValueError(f"the stem kernel pools a conv output whose width is a multiple "
                             f"of 16 into half its width; not {d['ho']}x{d['wo']} into "
                             f"{hp}x{wp}")
        if self.pad_value is not None and math.isnan(self.pad_value):
            raise ValueError("the stem kernel's pool takes no NaN pad value")
        if out_dtype == "int8":
            if self.floor is not None:
                raise ValueError("an int8 pool of codes has no float floor")
            # codes fold four a word (_pool_rows): a pad or floor code must be one
            for what, v in (("pad code", self.pad_value), ("code floor", self.code_floor)):
                if v is not None and (v != int(v) or not -128 <= v <= 127):
                    raise ValueError(f"an int8 pool's {what} is an integer in [-128, 127], "
                                     f"not {v}")
        elif self.code_floor is not None:
            raise ValueError("a code floor belongs to an int8 pool")


class StemMmaSource:
    """The ``stem_mma`` kernel of one convolution layer for fixed shapes and dtypes.

    Args:
      x_shape, out_shape: NHWC shapes of x and y.
      k_hw, strides, pads: the filter's (kh, kw), (sh, sw) and pads (top, left, ...).
      in_dtype, out_dtype: float16 / float32 x; float16 y, or int8 y with ``out_scale``: the
        codes ``q_int8(v * (1 / out_scale))`` of the epilogue's float32 result v, as
        cuda_source_quant rounds them, a NaN v as ``nan_code`` (an INT8 model's stem feeding
        a max pool whose readers are INT8 layers: quantization.absorb_pool_requantization).
      epilogue: the layer's epilogue; operand_modes: layer input index -> ("vec" | "full",
        dtype) of each epilogue operand (per output channel, or of y's shape).
      mt: m-tiles (16 pixels) a warp takes per block tile.
      max_blocks: cap on the grid (blocks then loop over block tiles); None: one block per
        block tile.
      ldsm: load the filter's B fragments with ``ldmatrix`` (default
        :func:`ldmatrix_default`), else with 4-byte shared loads; stage: gather A from each
        m-tile's input patch staged in shared memory where the m-tile lies in one output row
        (default :func:`stage_default`; off where the patch passes :data:`STAGE_MAX` halves
        or the shared memory) -- the same answers.
      vec: gather A with one 8-byte load per pixel and k step (:meth:`_gather_vec`; default:
        where it applies, float16 x with input channels a multiple of 16, unstaged), K up to
        :data:`MAX_K_VEC`; the filter's k are then permuted within each step
        (:attr:`k_order`).
      pool: :class:`StemPool`'s arguments: the kernel (on row tiles) stores the max pool of
        its output, y of the pool's shape (:meth:`_pool_tile`, :meth:`_pool_rows`).

    Kernel ``stem_mma(x, wt, *operands, y)``: ``wt`` the filter as float16 [Cout, Kp] (the
    layer's [Cout, KH, KW, Cin] as ``w.reshape(Cout, -1)``, its columns in :attr:`k_order`,
    zero columns up to Kp: :func:`filter_matrix`), operands
    in :attr:`operands` order; launch :attr:`blocks` blocks of :attr:`threads` threads (any
    grid size computes every output).
    Raises:
      ValueError: what the kernel does not take (dtypes, Kp over :data:`MAX_K`, Cout not a
        multiple of 8 or over :data:`MAX_COUT`, shared memory over :data:`SMEM_LIMIT`).
    """

    def __init__(self, x_shape, k_hw, strides, pads, out_shape, in_dtype: str, out_dtype: str,
                 epilogue: Sequence[dict], operand_modes: Dict[int, Tuple[str, str]],
                 mt: int = MT, max_blocks=None, ldsm=None, stage=None, out_scale=None,
                 nan_code: int = 0, vec=None, rows=None, pool=None):
        n, h, w, cin, ho, wo, cout, kh, kw, sh, sw, ph, pw = ST.conv_geometry(
            x_shape, out_shape, k_hw, strides, pads)
        self.pool = None if pool is None else StemPool(**pool)
        self.in_dtype, self.out_dtype = np.dtype(in_dtype).name, np.dtype(out_dtype).name
        if self.in_dtype not in _FLOATS:
            raise ValueError(f"the tensor-core stem kernel takes float16 / float32 x, not "
                             f"{self.in_dtype}")
        if (self.out_dtype, out_scale is not None) not in (("float16", False), ("int8", True)):
            raise ValueError(f"the tensor-core stem kernel writes float16 y, or int8 codes of "
                             f"an output scale; not {self.out_dtype}"
                             f"{' with a scale' if out_scale is not None else ''}")
        self.out_scale = None if out_scale is None else float(np.float32(out_scale))
        self.nan_code = int(nan_code)  # an int8 store's code for NaN (0: q_int8's)
        self.k = kh * kw * cin
        self.kp = padded_k(self.k)
        if cout % 8 or cout > MAX_COUT:
            raise ValueError(f"the tensor-core stem kernel takes Cout a multiple of 8 up to "
                             f"{MAX_COUT}, not {cout}")
        self.n = n
        self.m = n * ho * wo
        self.dims = dict(n=n, h=h, w=w, cin=cin, ho=ho, wo=wo, cout=cout, kh=kh, kw=kw, sh=sh,
                         sw=sw, ph=ph, pw=pw)
        self.operands, params = conv_kernel_params(self.in_dtype, self.out_dtype,
                                                   operand_modes)
        # the filter is float16 here (conv_kernel_params declares the float32 filter of the
        # CUDA-core kernels)
        self.params = [("const unsigned short*" if nm == "wt" else ty, nm) for ty, nm in params]
        # the batch is an argument (:meth:`args`): the source is the same at every batch size
        # (of one index width), so an optimization profile's engines compile it once
        self.params.append(("long long", "nb"))
        self.ldsm = ldmatrix_default() if ldsm is None else bool(ldsm)
        if self.pool is not None:
            self.pool.check(self.dims, self.out_dtype)
            rows = True if rows is None else rows
            if not rows:
                raise ValueError("the stem kernel pools its output on row tiles only")
        self.rows = self._row_tiles()  # None where row tiles do not apply
        if rows is None:  # where they apply, but not where the vector gathers do
            staged = stage_default() if stage is None else stage
            mode = rows_default()
            rows = mode != "0" and (mode == "1" or self.k >= ROWS_MIN_K) and \
                self.rows is not None and not vec and not staged and \
                not (self.in_dtype == "float16" and cin % 16 == 0)
        if rows and self.rows is None:
            raise ValueError(f"the stem kernel's row tiles take KH*KW*Cin (Cin padded to "
                             f"even) up to {MAX_K_ROWS} and {R_ROWS} or fewer output rows' "
                             f"input in {ROW_SMEM_LIMIT} bytes of shared memory; not this "
                             f"{kh}x{kw} conv over {cin} channels, {wo} pixels wide")
        if rows:
            self.kp, self.vec, self.stage, self.mt = self.rows["kp"], False, False, 1
            self.k_order = np.arange(self.k)
            self.smem_bytes = self.rows["smem"]
            self.threads = ROW_WARPS * LANES
            self.tiles = n * self.rows["blocks_per_image"]
            self.blocks = min(self.tiles, int(max_blocks or self.tiles), 2 ** 31 - 1)
            self.source = self._source_rows(epilogue, operand_modes)
            return
        self.rows = None
        vec_ok = self.in_dtype == "float16" and cin % 16 == 0 and not stage
        self.vec = vec_ok if vec is None else bool(vec)
        if self.vec and not vec_ok:
            raise ValueError(f"the stem kernel's vector gathers take float16 x with input "
                             f"channels a multiple of 16, unstaged; not {self.in_dtype} x "
                             f"with {cin}")
        limit = MAX_K_VEC if self.vec else MAX_K
        if self.kp > limit:
            raise ValueError(f"KH*KW*Cin = {self.k} taps (padded to {self.kp}): the "
                             f"tensor-core stem kernel takes up to {limit}")
        # position -> k of the filter's columns: within each step of 16, the k a lane's
        # vector gather puts in each fragment position (_gather_vec), else k itself
        self.k_order = np.arange(self.k)
        if self.vec:
            step = np.array([4 * (p % 8 // 2) + p % 2 + 2 * (p // 8) for p in range(16)])
            self.k_order = (np.arange(self.k) // 16 * 16 + np.tile(step, self.k // 16))
        self.smem_bytes = smem_bytes(cout, self.kp)
        if self.smem_bytes > SMEM_LIMIT:
            raise ValueError(f"the tensor-core stem kernel's filter ({cout} x {self.kp} "
                             f"float16) and staging take {self.smem_bytes} bytes of shared "
                             f"memory, over {SMEM_LIMIT}")
        self.mt = int(mt)
        # the input patch of an m-tile within one output row, staged per warp (_stage_patch)
        self.patch_w = (16 - 1) * sw + kw            # its columns (pixels)
        self.patch = kh * self.patch_w * cin          # its halves
        # the warps' float16 patches and the staged gathers' int table of patch offsets
        staged_bytes = 2 * WARPS * (-(-self.patch // 8) * 8) + 4 * self.kp
        self.stage = (stage_default() if stage is None else bool(stage)) and \
            not self.vec and self.patch <= STAGE_MAX and \
            self.smem_bytes + staged_bytes <= SMEM_LIMIT
        # m-tiles that gather from x: all of them unstaged, the rows' ends where Wo is not
        # a multiple of 16 (else the x-offset table is left out)
        self.direct = not self.stage or wo % 16 != 0
        if self.stage:
            self.smem_bytes += staged_bytes - (0 if self.direct else 16 * self.kp)
        self.tiles = math.ceil(self.m / (WARPS * self.mt * 16))  # block tiles
        self.threads = WARPS * LANES
        self.blocks = min(self.tiles, int(max_blocks or self.tiles), 2 ** 31 - 1)
        self.source = self._source(epilogue, operand_modes)

    # --- pieces of the source ----------------------------------------------------------------
    def _pixels(self, it: str) -> str:
        """Statements decoding the lane's two pixels (fragment rows g, g + 8 of m-tile
        ``m0``): ``ih0_p``, ``iw0_p`` the window's corner, ``base_p`` its offset in x,
        ``pix_p`` the pixel (the last one for a pixel past M, which stays unstored and whose
        ``ih0_p`` puts every tap outside the image)."""
        d = self.dims
        hw_o = d["ho"] * d["wo"]
        out = []
        for p in (0, 1):
            out.append(f"""const {it} pp_{p} = m0 + g + {8 * p};
      const {it} pix_{p} = pp_{p} < m ? pp_{p} : m - 1;
      int ih0_{p}, iw0_{p};
      {it} base_{p};
      {{
        const {it} nb = pix_{p} / {hw_o};
        const int r = (int)(pix_{p} - nb * {hw_o});
        const int oh = r / {d['wo']}, ow = r - oh * {d['wo']};
        const int ih = oh * {d['sh']} - {d['ph']};
        iw0_{p} = ow * {d['sw']} - {d['pw']};
        ih0_{p} = pp_{p} < m ? ih : -(1 << 30);
        base_{p} = ((nb * {d['h']} + ih) * {d['w']} + iw0_{p}) * {d['cin']};
      }}""")
        return "\n      ".join(out)

    def _gather(self) -> str:
        """Statements filling ``a[4]``, the A fragment of k step ``ks``: each element read
        from x (zero where its tap leaves the image, for k >= K and pixels past M)."""
        offs = sorted({ko + h for _, ko in A_FRAG for h in (0, 1)})
        out = [f"const int4 kt{o} = ktab[ks + 2 * t + {o}];" for o in offs]
        for r, (ro, ko) in enumerate(A_FRAG):
            p = ro // 8   # the lane's pixel: row g (0) or g + 8 (1)
            lo, hi = (f"tap(ih0_{p}, iw0_{p}, base_{p}, kt{ko + h})" for h in (0, 1))
            if self.in_dtype == "float16":  # packed as stored (the low half: the lower k)
                out.append(f"a[{r}] = (unsigned){lo} | ((unsigned){hi} << 16);")
            else:
                out.append(f"a[{r}] = pack_h2({lo}, {hi});")
        return "\n          ".join(out)

    def _gather_vec(self) -> str:
        """Statements filling ``a[4]`` for k step ``ks`` where the step's 16 k are 16
        consecutive channels of one tap (Cin a multiple of 16): lane t loads channels 4t ..
        4t + 3 of each of its pixels as one 8-byte word pair (zero outside the image) --
        the first word is A's register at k 2t, 2t + 1, the second at 2t + 8, 2t + 9. The
        MMA sums over the step's k, so A and B only have to agree on which channel sits at
        which position: the filter's columns are permuted to match (:attr:`k_order`).
        Element loads where x is not 8-byte aligned."""
        out = ["const int4 e = ktab[ks];"]
        for p in (0, 1):
            out.append(f"""uint2 v{p} = {{0u, 0u}};
          if ((unsigned)(ih0_{p} + e.y) < {self.dims['h']}u &&
              (unsigned)(iw0_{p} + e.z) < {self.dims['w']}u) {{
            const unsigned short* q = x + base_{p} + e.x + 4 * t;
            if (xal) {{
              v{p} = *reinterpret_cast<const uint2*>(q);
            }} else {{
              v{p}.x = (unsigned)q[0] | ((unsigned)q[1] << 16);
              v{p}.y = (unsigned)q[2] | ((unsigned)q[3] << 16);
            }}
          }}""")
        regs = {(0, 0): "v0.x", (8, 0): "v1.x", (0, 8): "v0.y", (8, 8): "v1.y"}
        out += [f"a[{r}] = {regs[f]};" for r, f in enumerate(A_FRAG)]
        return "\n          ".join(out)

    def _gather_staged(self) -> str:
        """Statements filling ``a[4]`` for k step ``ks`` from the warp's staged patch
        ``pat``: the lane's pixels start ``poff_p`` halves in, a k is ``ktw[k]`` halves from
        there (two 8-byte reads of the int table a step, where the gathers read four 16-byte
        ``ktab`` entries); a k >= K (the last step only) reads zero."""
        out = ["const int2 kw0 = ktw2[(ks >> 1) + t], kw8 = ktw2[(ks >> 1) + t + 4];"]
        for r, (ro, ko) in enumerate(A_FRAG):
            p = ro // 8
            lo, hi = (f"(ks + 16 > {self.k} && ks + 2 * t + {ko + h} >= {self.k} ? 0u : "
                      f"(unsigned)pat[poff_{p} + kw{ko}.{'xy'[h]}])" for h in (0, 1))
            out.append(f"a[{r}] = {lo} | ({hi} << 16);")
        return "\n            ".join(out)

    def _stage_patch(self, it: str) -> str:
        """Statements deciding ``staged`` (the m-tile's pixels in one output row) and, if so,
        copying its input patch -- image rows oh * sh - ph .., KH of them, and
        :attr:`patch_w` pixels from ow0 * sw - pw, zero outside the image, float16 -- into
        ``pat`` with consecutive lanes on consecutive elements; ``poff_p`` the lane's pixels'
        offsets there."""
        d = self.dims
        hw_o, pwc, cin = d["ho"] * d["wo"], self.patch_w * d["cin"], d["cin"]
        val = "x[src]" if self.in_dtype == "float16" else "f2h(x[src])"
        return f"""const {it} nbt = m0 / {hw_o};
      const int rt = (int)(m0 - nbt * {hw_o});
      const int oht = rt / {d['wo']}, owt = rt - oht * {d['wo']};
      const bool staged = owt + rows <= {d['wo']};  // the same for the whole warp
      const int poff_0 = g * {d['sw'] * cin}, poff_1 = (g + 8) * {d['sw'] * cin};
      if (staged) {{
        const int ihb = oht * {d['sh']} - {d['ph']}, iwb = owt * {d['sw']} - {d['pw']};
        for (int i = lane; i < {self.patch}; i += {LANES}) {{
          const int ky = i / {pwc}, c = i - ky * {pwc};
          const int ih = ihb + ky, iw = iwb + c / {cin};
          unsigned short v = 0;
          if ((unsigned)ih < {d['h']}u && (unsigned)iw < {d['w']}u) {{
            const {it} src = ((nbt * {d['h']} + ih) * {d['w']} + iwb) * {cin} + c;
            v = {val};
          }}
          pat[i] = v;
        }}
        __syncwarp();
      }}"""

    def _mmas(self) -> str:
        """Statements issuing the chunk's MMAs of k step ``ks``, B from shared memory: with
        :attr:`ldsm`, one ``ldmatrix.x4`` per two n-tiles (lane L gives the address of row
        L % 8 of matrix L / 8: n-tile j + L / 16, k half (L / 8) % 2; the filter's rows are k
        contiguous, so matrix row g word t is B_FRAG's register of column g), ``.x2`` for an
        odd last n-tile; else two 4-byte loads per n-tile."""
        kw2 = row_words(self.kp)
        if self.ldsm:
            return (f"const unsigned short* brow = bsm + (c0 + 8 * (lane >> 4) + (lane & 7)) * "
                    f"{2 * kw2} + ks + 8 * ((lane >> 3) & 1);\n"
                    "          #pragma unroll\n"
                    "          for (int j = 0; j + 1 < NT; j += 2) {\n"
                    "            unsigned b[4];\n"
                    f"            ldsm_x4(b, brow + j * {16 * kw2});\n"
                    "            mma_16816(acc[j], a, b[0], b[1]);\n"
                    "            mma_16816(acc[j + 1], a, b[2], b[3]);\n"
                    "          }\n"
                    "          if (NT & 1) {\n"
                    "            unsigned b[2];\n"
                    f"            ldsm_x2(b, brow + (NT - 1) * {16 * kw2});\n"
                    "            mma_16816(acc[NT - 1], a, b[0], b[1]);\n"
                    "          }")
        return (f"const unsigned* bw = reinterpret_cast<const unsigned*>(bsm) +\n"
                f"                               ((c0 + g) * {2 * kw2} + ks + 2 * t) / 2;\n"
                "          #pragma unroll\n          for (int j = 0; j < NT; ++j)\n"
                "            mma_16816(acc[j], a, " +
                ", ".join(f"bw[j * {8 * kw2} + {bo // 2}]" for bo in B_FRAG) + ");")

    def _epilogue(self, epilogue, operand_modes, it: str) -> str:
        """Statements applying the epilogue to ``acc`` and staging the float16 results: per
        n-tile, the two rows of C_FRAG, each a pair of adjacent channels in one word."""
        cout = self.dims["cout"]
        epi = "\n              ".join(_dw_epilogue(epilogue, operand_modes, "a_", ""))
        # float16: a channel pair is a word of the staging row; int8: a 2-byte code pair at
        # the same index in halves (the row's first bytes)
        store = ("stg[(g + {ro}) * SW + 4 * j + t] = pack_h2(o0, o1);"
                 if self.out_scale is None else
                 f"reinterpret_cast<unsigned short*>(stg + (g + {{ro}}) * SW)[4 * j + t] = "
                 f"pack_q2(o0, o1, {S.float_literal(Q.inv_scale(self.out_scale))}, "
                 f"{self.nan_code});")
        rows: Dict[int, List[Tuple[int, int]]] = {}
        for r, (ro, co) in enumerate(C_FRAG):
            rows.setdefault(ro, []).append((r, co))
        out = []
        for ro, regs in sorted(rows.items()):
            assert [co for _, co in regs] == [0, 1], "a C row's registers: adjacent channels"
            vals = []
            for r, co in regs:
                vals.append(f"""{{
              const int k = k0 + {co};
              const {it} oidx = pix_{ro // 8} * {cout} + k;
              float a_ = acc[j][{r}];
              {epi}
              o{co} = a_;
              (void)k; (void)oidx;
            }}""")
            out.append(f"""{{
            float o0, o1;
            {vals[0]}
            {vals[1]}
            {store.format(ro=ro)}
          }}""")
        return "\n          ".join(out)

    def _copy_out(self, it: str) -> str:
        """Statements storing the warp's staged 16 x ``CW`` block at pixel ``m0``, channel
        ``c0`` of y: 16-byte stores where y is aligned to them, else 4 or 2 bytes."""
        cout = self.dims["cout"]
        ways = []
        vecs = (("uint4", 8), ("unsigned", 2), ("unsigned short", 1))
        if self.out_scale is not None:  # int8: 16 codes a uint4 where every row and chunk
            # start is 16-byte aligned with y, else 4 a word (Cout is a multiple of 8)
            vecs = (("uint4", 16), ("unsigned", 4), ("unsigned char", 1))
            if cout % 16 or any(c0 % 16 or cw % 16 for c0, cw in chunks(cout)):
                vecs = (("unsigned", 4), ("unsigned", 4), ("unsigned char", 1))
        for ty, per in vecs:
            ways.append(f"""{{
          #pragma unroll 4
          for (int v = lane; v < rows * (CW / {per}); v += {LANES}) {{
            const int row = v / (CW / {per}), c = v - row * (CW / {per});
            reinterpret_cast<{ty}*>(y + (m0 + row) * {cout} + c0)[c] =
                reinterpret_cast<const {ty}*>(stg + row * SW)[c];
          }}
        }}""")
        return (f"if ((ya & 15ull) == 0ull) {ways[0]} else if ((ya & 3ull) == 0ull) "
                f"{ways[1]} else {ways[2]}")

    def _stage_tile(self, epilogue, operand_modes, it: str) -> str:
        """Statements applying the epilogue to the m-tile's ``acc`` into the warp's staging
        buffer (:meth:`_epilogue`), every lane's results there once they end."""
        return f"""#pragma unroll
        for (int j = 0; j < NT; ++j) {{
          const int k0 = c0 + 8 * j + 2 * t;
          {self._epilogue(epilogue, operand_modes, it)}
        }}
        __syncwarp();"""

    def _store_tile(self, epilogue, operand_modes, it: str) -> str:
        """Statements applying the epilogue to the m-tile's ``acc`` (:meth:`_stage_tile`) and
        storing its rows through the warp's staging buffer (:meth:`_copy_out`)."""
        return f"""{self._stage_tile(epilogue, operand_modes, it)}
        const unsigned long long ya = reinterpret_cast<unsigned long long>(y);
        {self._copy_out(it)}
        __syncwarp();  // the staging buffer is free for the next m-tile / chunk"""

    # --- row tiles ----------------------------------------------------------------------------
    def _row_tiles(self):
        """The geometry of row tiles (module doc, :func:`rows_default`), or None where they do
        not apply: ``cp`` the input channels padded to even, ``g`` a tap row's KW * cp taps,
        ``kr`` = KH * g, ``kp`` kr padded to 16 (at most :data:`MAX_K_ROWS`), ``mtr`` m-tiles
        of an output row (its Wo padded to 16s), ``cols`` staged input columns, ``rs`` halves
        of a staged row, ``r`` output rows a tile (:data:`R_ROWS` or fewer, so that the
        shared memory fits :data:`ROW_SMEM_LIMIT`), ``ir`` its input rows, ``nm`` m-tiles a
        warp takes at once (2 where Cout <= 64: the B fragments of a k step serve both).
        Pooled (:class:`StemPool`): ``pr`` pool rows a tile (``r`` = 2 pr + 1), ``hr_row`` /
        ``bd_row`` bytes of a conv row pooled across / of its m-tiles' last pixels, and
        ``hr_u4`` / ``bd_u4`` those of a tile's rows in 16-byte units (0 unpooled)."""
        d = self.dims
        cp = d["cin"] + d["cin"] % 2
        g = d["kw"] * cp
        kr = d["kh"] * g
        kp = padded_k(kr)
        if kp > MAX_K_ROWS:
            return None
        mtr = -(-d["wo"] // 16)
        cols = (16 * mtr - 1) * d["sw"] + d["kw"]
        rs = -(-cols * cp // 8) * 8
        if rs // 2 % 32 == 0:  # consecutive rows on other banks
            rs += 8
        widest = max(w for _, w in chunks(d["cout"]))
        fixed = 4 * d["cout"] * row_words(kp) + 4 * ROW_WARPS * 16 * row_words(widest) + \
            2 * kp  # the filter, the warps' staging and the k offsets (int2 a k step and t)
        # (conv rows, pool rows) a tile: pooled, the conv rows of pr pool rows' windows, the
        # first one (2 P0 - 1) shared with the tile before (carried or computed again)
        hp = None if self.pool is None else self.pool.out_shape[1]
        tiles = [(r, 0) for r in range(min(R_ROWS, d["ho"]), 0, -1)] if hp is None else \
            [(2 * pr + 1, pr) for pr in range(min(POOL_ROWS, hp), 0, -1)]
        # pooled, in y's dtype: bytes of a conv row pooled across (Wo / 2 columns) and of a
        # row's m-tiles' last pixels (the next m-tile's first window reads each)
        esz = 1 if self.out_dtype == "int8" else 2
        hr_row, bd_row = (d["wo"] // 2) * d["cout"] * esz, mtr * d["cout"] * esz
        for r, pr in tiles:
            ir = (r - 1) * d["sh"] + d["kh"]
            hr_u4 = -(-r * hr_row // 16) if pr else 0
            bd_u4 = -(-r * bd_row // 16) if pr else 0
            smem = fixed + 16 * (-(-ir * rs // 8) + hr_u4 + bd_u4)
            if smem <= ROW_SMEM_LIMIT:
                return dict(cp=cp, g=g, kr=kr, kp=kp, mtr=mtr, cols=cols, rs=rs, r=r, ir=ir,
                            nm=2 if d["cout"] <= 64 else 1, smem=smem, pr=pr, hr_u4=hr_u4,
                            bd_u4=bd_u4, hr_row=hr_row, bd_row=bd_row,
                            blocks_per_image=-(-(hp or d["ho"]) // (pr or r)))
        return None

    def _stage_rows(self, it: str) -> str:
        """Statements staging tile (nimg, oh0)'s input rows in ``xs``: row i is image row
        oh0 * sh - ph + i, columns -pw .. cols - pw - 1, each column's cp channels as float16
        (zero outside the image and for the pad channel). A thread takes :data:`STAGE_UNROLL`
        pixels at once (fewer over more than 4 channels), consecutive threads on consecutive
        pixels (coalesced), and issues all their loads before it converts and stores any: the
        loads of a tile are in flight together, where one pixel a time left the block waiting
        on each (H100: ResNet's stem 275 us that way in s52a, 176 us this way in s52b;
        MobileNet's 135 and 77, against the gathers' 71)."""
        d, R = self.dims, self.rows
        cin, cp, cols = d["cin"], R["cp"], R["cols"]
        pixels = R["ir"] * cols
        val = (lambda e: e) if self.in_dtype == "float16" else (lambda e: f"f2h({e})")
        xt = ctype(self.in_dtype)
        u = max(1, min(STAGE_UNROLL, 16 // cin))  # at most 16 values a thread in flight
        loads = "\n        ".join(
            f"v[{j}][{c}] = ok{j} ? x[src{j} + {c}] : ({xt})0;" for j in range(u)
            for c in range(cin))
        words = [f"(unsigned){val(f'v[j][{2 * w}]')}" +
                 (f" | ((unsigned){val(f'v[j][{2 * w + 1}]')} << 16)" if 2 * w + 1 < cin
                  else "") if 2 * w < cin else "0u" for w in range(cp // 2)]
        if cp % 4 == 0:  # 8-byte stores (a column starts 8-byte aligned: rs and cp 4s)
            store = "\n          ".join(
                f"reinterpret_cast<uint2*>(dst)[{w // 2}] = make_uint2({words[w]}, "
                f"{words[w + 1]});" for w in range(0, cp // 2, 2))
        else:
            store = "\n          ".join(f"dst[{w}] = {words[w]};" for w in range(cp // 2))
        heads = []
        for j in range(u):
            heads.append(f"""const int q{j} = q + {j * ROW_WARPS * LANES};
        const int i{j} = q{j} / {cols}, col{j} = q{j} - i{j} * {cols};
        const int ih{j} = oh0 * {d['sh']} - {d['ph']} + i{j}, iw{j} = col{j} - {d['pw']};
        const bool ok{j} = q{j} < {pixels} && (unsigned)ih{j} < {d['h']}u &&
                           (unsigned)iw{j} < {d['w']}u;
        const {it} src{j} = ok{j} ? ((nimg * {d['h']} + ih{j}) * {d['w']} + iw{j}) * {cin} : 0;""")
        heads_src = "\n        ".join(heads)
        return f"""for (int q = threadIdx.x; q < {pixels}; q += {u * ROW_WARPS * LANES}) {{
        {xt} v[{u}][{cin}];
        {heads_src}
        {loads}
        #pragma unroll
        for (int j = 0; j < {u}; ++j) {{
          const int qj = q + j * {ROW_WARPS * LANES};
          if (qj >= {pixels}) break;
          const int ij = qj / {cols};
          unsigned* dst = reinterpret_cast<unsigned*>(xs + ij * {R['rs']} +
                                                      (qj - ij * {cols}) * {cp});
          {store}
        }}
      }}"""

    def _k_step_rows(self, ks: int, nt: int, nm: int) -> str:
        """Statements of k step ``ks``: the A fragments of the warp's ``nm`` m-tiles from the
        staged rows (a register's two k are two adjacent taps of one tap row: one aligned
        4-byte load at the pixel's ``xb<mi>_<p>`` plus the k's offset, zero for k past kr),
        B with ``ldmatrix`` (two n-tiles a load), ``nt`` n-tiles of MMAs a m-tile."""
        kr, kps = self.rows["kr"], 2 * row_words(self.rows["kp"])  # halves a filter row
        out = [f"const int2 oo = koff[{ks // 4} + t];  // k 2t and 2t + 8's offsets",
               "const int o0 = oo.x, o8 = oo.y;"]
        for mi in range(nm):
            for r, (ro, ko) in enumerate(A_FRAG):
                v = f"*reinterpret_cast<const unsigned*>(xs + xb{mi}_{ro // 8} + o{ko})"
                if ks + ko + 7 >= kr:
                    v = f"(ks_ok{ko} ? {v} : 0u)"
                out.append(f"a{mi}[{r}] = {v};")
        for o in (0, 8):
            if ks + o + 7 >= kr:
                out.insert(0, f"const bool ks_ok{o} = {ks} + 2 * t + {o} < {kr};")
        brow = f"brow + {ks}"
        for j in range(0, nt - 1, 2):
            out.append("{ unsigned b[4]; ldsm_x4(b, " + f"{brow} + {j * 8 * kps}); " +
                       " ".join(f"mma_16816(acc{mi}[{j}], a{mi}, b[0], b[1]); "
                                f"mma_16816(acc{mi}[{j + 1}], a{mi}, b[2], b[3]);"
                                for mi in range(nm)) + " }")
        if nt % 2:
            out.append("{ unsigned b[2]; ldsm_x2(b, " + f"{brow} + {(nt - 1) * 8 * kps}); " +
                       " ".join(f"mma_16816(acc{mi}[{nt - 1}], a{mi}, b[0], b[1]);"
                                for mi in range(nm)) + " }")
        return "\n          ".join(out)

    def _pool_tile(self, epilogue, operand_modes, it: str, mi: int) -> str:
        """Statements applying the epilogue to m-tile ``mt<mi>``'s ``acc`` into the warp's
        staging buffer (:meth:`_stage_tile`), then pooling its 16 pixels across into ``hr``:
        column q of 8 (pool column 8 mw + q) folds pixels 2q - 1, 2q, 2q + 1 (q = 0: 0 and 1;
        pixel -1 is the m-tile before's last, which goes to ``bd`` for the pass down,
        :meth:`_pool_rows`). In y's dtype: float16 pairs a word, int8 codes four."""
        d, R = self.dims, self.rows
        cout, wh, mtr = d["cout"], d["wo"] // 2, R["mtr"]
        per = 4 if self.out_dtype == "int8" else 2   # channels a word
        if per == 2:
            fold = """float lo = -(1.f/0.f), hi = -(1.f/0.f);
            if (q > 0) fold2(lo, hi, stg[(2 * q - 1) * SW + w]);
            fold2(lo, hi, stg[2 * q * SW + w]);
            fold2(lo, hi, stg[(2 * q + 1) * SW + w]);
            hw[q * HRW + w] = pack_h2(lo, hi);"""
        else:
            fold = """unsigned mx = 0x80808080u;  // -128 a code
            if (q > 0) mx = max_s8x4(mx, stg[(2 * q - 1) * SW + w]);
            mx = max_s8x4(mx, stg[2 * q * SW + w]);
            mx = max_s8x4(mx, stg[(2 * q + 1) * SW + w]);
            hw[q * HRW + w] = mx;"""
        return f"""{self._stage_tile(epilogue, operand_modes, it)}
        {{
          constexpr int HRW = {cout // per};  // words of a pooled column
          const int lr = mt{mi} / {mtr}, mw = mt{mi} - lr * {mtr};
          unsigned* hw = hrs + ((lr * {wh} + mw * 8) * {cout} + c0) / {per};
          #pragma unroll 2
          for (int v = lane; v < 8 * (CW / {per}); v += {LANES}) {{
            const int q = v / (CW / {per}), w = v - q * (CW / {per});
            {fold}
          }}
          unsigned* bw = bds + ((lr * {mtr} + mw) * {cout} + c0) / {per};
          for (int w = lane; w < CW / {per}; w += {LANES}) bw[w] = stg[15 * SW + w];
        }}
        __syncwarp();  // the staging buffer is free for the next m-tile / chunk"""

    def _pool_rows(self, it: str) -> str:
        """Statements of a pooled tile's pass down (after every warp's m-tiles): pool row P0 +
        pr, column Q folds conv rows 2P - 1 .. 2P + 1 (tile rows 2pr .. 2pr + 2) of ``hr``,
        each row's value first folded with its pixel 2Q - 1 where that lies in the m-tile
        before (Q a multiple of 8: ``bd``) or in the left pad, rows outside the conv as pad
        cells (``pad_value``) or skipped -- the order and values of the pool kernel's scan,
        so the same results. A thread takes 16 bytes of channels (8 of int8 codes where Cout
        is not 16s), reads each row as one vector (scalar reads of a thread's 16 bytes
        conflicted 4 ways: H100, s53a) and stores them at once; int8 codes fold four a word
        (a max of integers: any order)."""
        d, R, P = self.dims, self.rows, self.pool
        cout, mtr, wh = d["cout"], R["mtr"], d["wo"] // 2
        _, hp, wp, _ = P.out_shape
        i8 = self.out_dtype == "int8"
        vw = 8 if not i8 else (16 if cout % 16 == 0 else 8)   # channels a thread
        vt = "uint2" if i8 and vw == 8 else "uint4"
        et = "signed char" if i8 else "unsigned short"
        nw = vw // 4 if i8 else vw // 2                      # words of a vector
        cv = cout // vw
        if i8:
            def splat(v):
                return f"0x{(int(v) & 0xff) * 0x01010101:08x}u"
            pv = None if P.pad_value is None else splat(P.pad_value)
            decl = f"unsigned acc[{nw}], h[{nw}];"
            init_acc = f"for (int e = 0; e < {nw}; ++e) acc[e] = 0x80808080u;"
            init_h = f"for (int e = 0; e < {nw}; ++e) h[e] = 0x80808080u;"

            def fold_into(a, src):  # src: a vector union
                return f"for (int e = 0; e < {nw}; ++e) {a}[e] = max_s8x4({a}[e], {src}.w[e]);"

            def fold_pad(a):
                return "" if pv is None else \
                    f"for (int e = 0; e < {nw}; ++e) {a}[e] = max_s8x4({a}[e], {pv});"
            fold_row = f"for (int e = 0; e < {nw}; ++e) acc[e] = max_s8x4(acc[e], h[e]);"
            finish = (f"for (int e = 0; e < {nw}; ++e) o.w[e] = acc[e];" if P.code_floor is None
                      else f"for (int e = 0; e < {nw}; ++e) o.w[e] = max_s8x4(acc[e], "
                      f"{splat(P.code_floor)});")
        else:
            init = "-(1.f/0.f)" if P.floor is None else pad_literal(P.floor, True)
            pvf = None if P.pad_value is None else pad_literal(P.pad_value, True)
            decl = f"float acc[{vw}], h[{vw}];"
            init_acc = f"for (int e = 0; e < {vw}; ++e) acc[e] = {init};"
            init_h = f"for (int e = 0; e < {vw}; ++e) h[e] = -(1.f/0.f);"

            def fold_into(a, src):
                return (f"for (int e = 0; e < {vw}; ++e) {{ const float w_ = h2f({src}.e[e]); "
                        f"{a}[e] = w_ > {a}[e] ? w_ : {a}[e]; }}")

            def fold_pad(a):
                return "" if pvf is None else \
                    f"for (int e = 0; e < {vw}; ++e) {a}[e] = {pvf} > {a}[e] ? {pvf} : {a}[e];"
            fold_row = f"for (int e = 0; e < {vw}; ++e) acc[e] = h[e] > acc[e] ? h[e] : acc[e];"
            finish = f"for (int e = 0; e < {vw}; ++e) o.e[e] = f2h(acc[e]);"
        return f"""{{
      union Vec {{ {vt} u; unsigned w[{nw}]; {et} e[{vw}]; }};
      const bool yal = (reinterpret_cast<unsigned long long>(y) & {vw * (1 if i8 else 2) - 1}ull)
                       == 0ull;
      for (int v = threadIdx.x; v < {R['pr'] * wp * cv}; v += blockDim.x) {{
        const int pr = v / {wp * cv}, rem = v - pr * {wp * cv};
        const int Q = rem / {cv}, c = (rem - Q * {cv}) * {vw};
        const int P = p0 + pr;
        if (P >= {hp}) break;
        {decl}
        {init_acc}
        #pragma unroll
        for (int kr = 0; kr < 3; ++kr) {{
          const int lr = 2 * pr + kr, oh = oh0 + lr;
          if (oh < 0 || oh >= {d['ho']}) {{  // a pad row, or past the end pad (skipped)
            if (oh < {d['ho'] + P.pads[2]}) {{ {fold_pad("acc")} }}
            continue;
          }}
          {init_h}
          if ((Q & 7) == 0) {{
            if (Q == 0) {{ {fold_pad("h")} }} else {{
              Vec b;
              b.u = *reinterpret_cast<const {vt}*>(
                  reinterpret_cast<const {et}*>(bds) + (lr * {mtr} + (Q >> 3) - 1) * {cout} + c);
              {fold_into("h", "b")}
            }}
          }}
          Vec hv;
          hv.u = *reinterpret_cast<const {vt}*>(
              reinterpret_cast<const {et}*>(hrs) + (lr * {wh} + Q) * {cout} + c);
          {fold_into("h", "hv")}
          {fold_row}
        }}
        Vec o;
        {finish}
        const {it} yo = ((nimg * {hp} + P) * ({it}){wp} + Q) * {cout} + c;
        if (yal) {{
          *reinterpret_cast<{vt}*>(y + yo) = o.u;
        }} else {{
          for (int e = 0; e < {vw}; ++e) y[yo + e] = o.e[e];
        }}
      }}
    }}"""

    def _source_rows(self, epilogue, operand_modes) -> str:
        """The row-tile kernel: a block loops over tiles of R output rows of one image; it
        stages their input rows (:meth:`_stage_rows`), then each warp takes units of ``nm``
        m-tiles (16 pixels of one output row), runs the k steps (:meth:`_k_step_rows`) per
        chunk of channels, and applies the epilogue and stores as the gather kernel does."""
        d, R = self.dims, self.rows
        cout, kp, cp = d["cout"], R["kp"], R["cp"]
        it = "long long" if max(d["n"] * d["h"] * d["w"] * d["cin"],
                                self.m * cout) >= 2 ** 31 - 64 else "int"
        params = ", ".join(f"{ty} __restrict__ {nm}" if ty.endswith("*") else f"{ty} {nm}"
                           for ty, nm in self.params)
        kps = 2 * row_words(kp)
        widest = max(w for _, w in chunks(cout))
        sw = row_words(widest)
        nm, mtr, r = R["nm"], R["mtr"], R["r"]
        units = -(-r * mtr // nm)
        filt_u4 = cout * kps // 8
        xs_u4 = -(-R["ir"] * R["rs"] // 8)
        koff_u4 = filt_u4 + xs_u4 + ROW_WARPS * 16 * sw // 4
        total_u4 = koff_u4 + kp // 8 + R["hr_u4"] + R["bd_u4"]  # + koff (+ the pool's)
        pooled = self.pool is not None
        pixels = []
        for mi in range(nm):
            pixels.append(f"""const int mt{mi} = mt_base + u * {nm} + {mi};
        const int r{mi} = mt{mi} / {mtr} < {r} ? mt{mi} / {mtr} : {r - 1};
        const int w{mi} = (mt{mi} % {mtr}) * 16;
        const int xb{mi}_0 = r{mi} * {d['sh'] * R['rs']} + (w{mi} + g) * {d['sw'] * cp};
        const int xb{mi}_1 = xb{mi}_0 + {8 * d['sw'] * cp};""")
        chunk_src = []
        for c0, cw in chunks(cout):
            nt = cw // 8
            steps = "\n        ".join("{\n          " + self._k_step_rows(ks, nt, nm) +
                                      "\n        }" for ks in range(0, kp, 16))
            stores = []
            for mi in range(nm):
                # pooled: rows outside the conv (the first tile's row -1) stay unstored
                store = self._pool_tile(epilogue, operand_modes, it, mi) if pooled else \
                    self._store_tile(epilogue, operand_modes, it)
                stores.append(f"""{{
          const int oh = oh0 + mt{mi} / {mtr};
          const int rows = mt{mi} < {r * mtr} && oh >= 0 && oh < {d['ho']} ?
              ({d['wo']} - w{mi} < 16 ? {d['wo']} - w{mi} : 16) : 0;
          if (rows > 0) {{  // the same for the whole warp
            const {it} m0 = ((nimg * {d['ho']} + oh) * {d['wo']} + w{mi});
            const {it} pix_0 = m0 + (g < rows ? g : rows - 1);
            const {it} pix_1 = m0 + (g + 8 < rows ? g + 8 : rows - 1);
            float (&acc)[NT][4] = acc{mi};
            {store}
          }}
        }}""")
            accs = "\n        ".join(
                f"float acc{mi}[NT][4];\n        #pragma unroll\n        for (int j = 0; "
                f"j < NT; ++j) acc{mi}[j][0] = acc{mi}[j][1] = acc{mi}[j][2] = acc{mi}[j][3] "
                f"= 0.f;" for mi in range(nm))
            chunk_src.append(f"""{{
        constexpr int c0 = {c0}, CW = {cw}, NT = {nt};
        {accs}
        unsigned {', '.join(f'a{mi}[4]' for mi in range(nm))};
        const unsigned short* brow = bsm + (c0 + 8 * (lane >> 4) + (lane & 7)) * {kps} +
                                     8 * ((lane >> 3) & 1);
        {steps}
        {' '.join(stores)}
      }}""")
        chunks_src = "\n      ".join(chunk_src)
        pixels_src = "\n        ".join(pixels)
        tile_rows = f"const int oh0 = (int)(bt - nimg * {R['blocks_per_image']}) * {r};"
        tile_range = f"for ({it} bt = blockIdx.x; bt < tiles; bt += gridDim.x) {{"
        unit_range = f"constexpr int mt_base = 0, units = {units};"
        if pooled and self.pool.carry:
            # a block takes consecutive tiles; one of the same image as the tile before
            # finds its first conv row (the tile before's last) pooled across already
            tile_range = f"""const {it} t_beg = ({it})((long long)blockIdx.x * tiles / gridDim.x);
  const {it} t_end = ({it})((long long)(blockIdx.x + 1) * tiles / gridDim.x);
  for ({it} bt = t_beg; bt < t_end; ++bt) {{"""
            unit_range = (f"const bool carried = bt > t_beg && bt % {R['blocks_per_image']} "
                          f"!= 0;\n    const int mt_base = carried ? {mtr} : 0, units = "
                          f"carried ? {-(-(r - 1) * mtr // nm)} : {units};")
        pool_decl = pool_rows = ""
        if pooled:  # a tile: pool rows p0 .. p0 + pr - 1, conv rows 2 p0 - 1 .. 2 p0 + 2 pr - 1
            tile_rows = (f"const int p0 = (int)(bt - nimg * {R['blocks_per_image']}) * "
                         f"{R['pr']}, oh0 = 2 * p0 - 1;")
            hr_at = total_u4 - R["hr_u4"] - R["bd_u4"]
            pool_decl = f"""unsigned* hrs = reinterpret_cast<unsigned*>(dsm + {hr_at});
  unsigned* bds = reinterpret_cast<unsigned*>(dsm + {total_u4 - R['bd_u4']});"""
            pool_rows = "__syncthreads();  // every m-tile pooled across\n    " + \
                self._pool_rows(it)
            if self.pool.carry:  # the last conv row is the next tile's first (words)
                hr_row, bd_row = R["hr_row"] // 4, R["bd_row"] // 4
                pool_rows += f"""
    if (bt + 1 < t_end && (bt + 1) % {R['blocks_per_image']} != 0) {{
      __syncthreads();  // the pass down has read row 0
      for (int i = threadIdx.x; i < {hr_row}; i += blockDim.x) hrs[i] = hrs[{(r - 1) * hr_row} + i];
      for (int i = threadIdx.x; i < {bd_row}; i += blockDim.x) bds[i] = bds[{(r - 1) * bd_row} + i];
    }}"""
        return PRELUDE + MMA_HELPERS + (Q_HELPERS if self.out_scale is not None else "") + \
            (POOL_HELPERS if pooled else "") + f"""
#ifndef TFTRT_DYN_SMEM
#define TFTRT_DYN_SMEM(name, n) extern __shared__ uint4 name[]
#endif
extern "C" __global__ void __launch_bounds__({self.threads}, 2) {KERNEL}({params}) {{
  constexpr int SW = {sw};  // words of a staging row
  TFTRT_DYN_SMEM(dsm, {total_u4});
  const unsigned short* bsm = reinterpret_cast<const unsigned short*>(dsm);
  unsigned short* xs = reinterpret_cast<unsigned short*>(dsm + {filt_u4});
  // the filter, rows padded to {kps} halves
  for (int i = threadIdx.x; i < {cout * kp // 8}; i += blockDim.x) {{
    const int row = i / {kp // 8}, c = i - row * {kp // 8};
    dsm[row * {kps // 8} + c] = reinterpret_cast<const uint4*>(wt)[i];
  }}
  // per k step and lane t: the staged-row offsets of k = step + 2t and + 2t + 8 (a tap row
  // ky's taps start ky rows down; 0 past kr, where the loads are masked)
  int2* koff = reinterpret_cast<int2*>(dsm + {koff_u4});
  {pool_decl}
  for (int q = threadIdx.x; q < {kp // 4}; q += blockDim.x) {{
    const int k = q / 4 * 16 + 2 * (q % 4), k8 = k + 8;
    koff[q] = make_int2(k < {R['kr']} ? k + k / {R['g']} * {R['rs'] - R['g']} : 0,
                        k8 < {R['kr']} ? k8 + k8 / {R['g']} * {R['rs'] - R['g']} : 0);
  }}
  const int warp = threadIdx.x / {LANES}, lane = threadIdx.x % {LANES};
  const int g = lane >> 2, t = lane & 3;
  unsigned* stg = reinterpret_cast<unsigned*>(dsm + {filt_u4 + xs_u4}) + warp * 16 * SW;
  const {it} tiles = ({it})nb * {R['blocks_per_image']};
  {tile_range}
    const {it} nimg = bt / {R['blocks_per_image']};
    {tile_rows}
    __syncthreads();  // the last tile's rows are read (and the filter stored)
    {self._stage_rows(it)}
    __syncthreads();
    {unit_range}
    for (int u = warp; u < units; u += {ROW_WARPS}) {{
        {pixels_src}
      {chunks_src}
    }}
    {pool_rows}
  }}
}}
"""

    def _source(self, epilogue, operand_modes) -> str:
        d = self.dims
        cin, cout, kp = d["cin"], d["cout"], self.kp
        it = "long long" if max(d["n"] * d["h"] * d["w"] * cin,
                                self.m * cout) >= 2 ** 31 - 64 else "int"
        params = ", ".join(f"{ty} __restrict__ {nm}" if ty.endswith("*") else f"{ty} {nm}"
                           for ty, nm in self.params)
        kps, widest = 2 * row_words(kp), max(w for _, w in chunks(cout))
        sw = row_words(widest)
        def k_steps(gather: str) -> str:  # the MMAs of every k step, A filled by gather
            return f"""#pragma unroll
          for (int ks = 0; ks < {kp}; ks += 16) {{
            unsigned a[4];
            {gather}
            {self._mmas()}
          }}"""
        direct = k_steps(self._gather_vec() if self.vec else self._gather())
        k_loop = direct
        if self.stage:  # m-tiles in one output row read the staged patch
            k_loop = f"""if (staged) {{
          {k_steps(self._gather_staged())}
        }}""" + ("" if not self.direct else f""" else {{
          {direct}
        }}""")
        chunk_src = []
        for c0, cw in chunks(cout):
            chunk_src.append(f"""{{
        constexpr int c0 = {c0}, CW = {cw}, NT = {cw // 8};
        float acc[NT][4];
        #pragma unroll
        for (int j = 0; j < NT; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.f;
        {k_loop}
        {self._store_tile(epilogue, operand_modes, it)}
      }}""")
        chunks_src = "\n      ".join(chunk_src)
        pp = -(-self.patch // 8) * 8
        # the staged gathers' k table: each k's offset in the patch
        patch_decl = (f"  __shared__ uint4 patch4[{WARPS * pp // 8}];\n"
                      f"  __shared__ int2 ktw2[{kp // 2}];\n") if self.stage else ""
        ktab_decl = f"  __shared__ int4 ktab[{kp}];\n" if self.direct else ""
        fill = (["ktab[q] = e;"] if self.direct else []) + \
            (["reinterpret_cast<int*>(ktw2)[q] = e.w;"] if self.stage else [])
        ktab_fill = "\n    ".join(fill)
        patch_ptr = (f"  unsigned short* pat = reinterpret_cast<unsigned short*>(patch4) + "
                     f"warp * {pp};\n") if self.stage else ""
        stage_src = self._stage_patch(it) if self.stage else ""
        return PRELUDE + MMA_HELPERS + (Q_HELPERS if self.out_scale is not None else "") + f"""
extern "C" __global__ void __launch_bounds__({self.threads}) {KERNEL}({params}) {{
  constexpr int SW = {sw};  // words of a staging row
  __shared__ uint4 bsm4[{cout * kps // 8}];
{ktab_decl}  __shared__ uint4 stage4[{WARPS * 16 * sw // 4}];
{patch_decl}  const unsigned short* bsm = reinterpret_cast<const unsigned short*>(bsm4);
  // the filter, rows padded to {kps} halves
  for (int i = threadIdx.x; i < {cout * kp // 8}; i += blockDim.x) {{
    const int row = i / {kp // 8}, c = i - row * {kp // 8};
    bsm4[row * {kps // 8} + c] = reinterpret_cast<const uint4*>(wt)[i];
  }}
  // per k: x's offset from the window's corner pixel, ky, kx, its offset in a staged patch;
  // k >= K never inside the image
  for (int q = threadIdx.x; q < {kp}; q += blockDim.x) {{
    const int ky = q / {d['kw'] * cin}, kx = (q / {cin}) % {d['kw']}, ci = q % {cin};
    int4 e;
    e.x = q < {self.k} ? (ky * {d['w']} + kx) * {cin} + ci : 0;
    e.y = q < {self.k} ? ky : (1 << 24);
    e.z = kx; e.w = q < {self.k} ? (ky * {self.patch_w} + kx) * {cin} + ci : 0;
    {ktab_fill}
  }}
  __syncthreads();
  const int warp = threadIdx.x / {LANES}, lane = threadIdx.x % {LANES};
  const int g = lane >> 2, t = lane & 3;
  unsigned* stg = reinterpret_cast<unsigned*>(stage4) + warp * 16 * SW;
{patch_ptr}  // x at a tap of the window at (ih0, iw0), zero outside the image (and for k >= K)
  const auto tap = [&](int ih0, int iw0, {it} base, const int4& e) -> {ctype(self.in_dtype)} {{
    return (unsigned)(ih0 + e.y) < {d['h']}u && (unsigned)(iw0 + e.z) < {d['w']}u ?
        x[base + e.x] : ({ctype(self.in_dtype)})0;
  }};
  const bool xal = (reinterpret_cast<unsigned long long>(x) & 7ull) == 0ull;
  (void)xal;
  const {it} m = ({it})nb * {d['ho'] * d['wo']};  // M: the batch's output pixels
  const {it} tiles = (m + {WARPS * self.mt * 16 - 1}) / {WARPS * self.mt * 16};
  for ({it} bt = blockIdx.x; bt < tiles; bt += gridDim.x) {{
    for (int mi = 0; mi < {self.mt}; ++mi) {{
      const {it} m0 = ((bt * {WARPS} + warp) * {self.mt} + mi) * 16;
      if (m0 >= m) break;  // the same for the whole warp
      const int rows = (int)(m - m0 < 16 ? m - m0 : 16);
      // the lane's pixels (fragment rows g, g + 8): the window's corner, its offset in x;
      // a pixel past M is outside every window (its taps read nothing)
      {self._pixels(it)}
      {stage_src}
      {chunks_src}
    }}
  }}
}}
"""


def filter_matrix(w, src: "StemMmaSource", xp=np):
    """The kernel's filter ``wt``: [Cout, KH, KW, Cin] -> float16 [Cout, Kp], its columns in
    ``src.k_order``, zero past K (their products with the gathered zeros add nothing);
    ``xp``: numpy or cupy (``w``'s module)."""
    cout = w.shape[0]
    wt = xp.zeros((cout, src.kp), xp.float16)
    if src.rows:  # columns (ky, kx, c) with c padded to cp
        d, cp = src.dims, src.rows["cp"]
        w4 = xp.zeros((cout, d["kh"], d["kw"], cp), xp.float16)
        w4[..., :d["cin"]] = w.reshape(cout, d["kh"], d["kw"], d["cin"]).astype(xp.float16)
        wt[:, :src.rows["kr"]] = w4.reshape(cout, -1)
        return wt
    wmat = w.reshape(cout, -1).astype(xp.float16)
    wt[:, :src.k] = wmat if not src.vec else wmat[:, xp.asarray(src.k_order)]
    return wt


def layer_params(net, layer, pool=None) -> dict:
    """Keyword arguments of :class:`StemMmaSource` for a conv layer of ``net``
    (``cuda_source_stem.layer_params``: the same layers), with ``pool`` (a max pool layer
    reading its output) or the pool it took (pool_fusion) as :class:`StemPool`'s. Raises
    ValueError for what the kernel does not take."""
    from tftrt.engine import pool_fusion
    pair = pool_fusion.pool_layers(net, layer)
    if pair is not None:  # the conv as it was, and the pool after it
        net, layer, pool = pair
    if any(int(d) != 1 for d in layer.attrs.get("dilations", (1, 1))):
        raise ValueError(f"the tensor-core stem kernel takes dilation 1, not "
                         f"{list(layer.attrs['dilations'])}")
    params = ST.layer_params(net, layer)
    if layer.attrs.get("output_scale") is not None:  # int8 codes (module doc)
        params["out_scale"] = layer.attrs["output_scale"]
        params["nan_code"] = int(layer.attrs.get("output_nan_code", 0))
    if pool is not None:
        params["pool"] = pool_params(net, pool)
    return params


def pool_params(net, pool) -> dict:
    """Keyword arguments of :class:`StemPool` for a max pool layer of ``net``. Raises
    ValueError for a pool other than 3x3 / 2 with dilation 1."""
    a = pool.attrs
    if pool.kind != "pool" or a.get("mode") != "max" or \
            [int(k) for k in a.get("kernel", ())] != [3, 3] or \
            [int(s) for s in a.get("strides", ())] != [2, 2] or \
            any(int(d) != 1 for d in a.get("dilations", (1, 1))) or int(a.get("ceil_mode", 0)):
        raise ValueError("the stem kernel pools 3x3 / 2 max pools of dilation 1 only")
    floor = None
    if a.get("floor_program"):  # an activation moved before the pool (cupy_layers.Pool)
        if np.dtype(net.tensors[pool.inputs[0]].dtype).kind != "f":
            raise ValueError("a floor belongs to a float pool")
        from tftrt.engine.backends.numpy_ops import pool_floor
        floor = float(pool_floor(a["floor_program"], -np.inf, np.float32))
    return dict(out_shape=tuple(net.tensors[pool.outputs[0]].shape), pads=tuple(a["pads"]),
                pad_value=a.get("pad_value"), floor=floor, code_floor=a.get("code_floor"))


def unsupported(net, layer):
    """Why ``stem_mma`` cannot run ``layer``, or None. Generates the source only: no GPU
    work. A filter of a float type only (rounded to float16 for the MMA)."""
    if not enabled():
        return "off (TFTRT_STEM_MMA=0)"
    return ST.why_not(net, layer, layer_params, StemMmaSource)

