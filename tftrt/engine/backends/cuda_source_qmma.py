"""CUDA C source of the INT8 / FP8 tensor-core GEMM with its epilogue fused (tactic ``q_mma``),
strings only.

No CuPy here (tests compile it with nvcc and run it on the host with an emulated MMA);
``cupy_quant.QuantGemmMma`` compiles and launches it.

Why: a quantized 1x1 conv with few input channels is a GEMM too thin in K to be anything but
memory-bound, and the libraries do not run it at memory speed. ResNet50's stage-1 1x1 convs
(56 x 56, 64 -> 256 channels, int8 residual add, ReLU, requantized int8 output; batch 128)
took 203 us on cuDNN's int8 fusion engine on an H100 (2026-12-05), 1.1 TB/s, where cuBLASLt
ran the FP16 ones in 163 us at 2.8 TB/s; the projection shortcut 163 against FP16's 96 us. The
int8 bytes they move (25.7 MB in, 102.8 MB residual, 102.8 MB out) take ~70 us at 3.35 TB/s.
cuBLASLt's int8 kernels write an int32 accumulator that a second kernel must read back (the
per-channel dequantization of ``quantization.py`` is not an epilogue cuBLASLt has).

One kernel, ``qmma(x, w, *operands, y, m)``: ``y[r, n] = store(epilogue(sum_k q(x[r, k]) *
w[n, k]))`` for the M = ``m`` rows of x ([M, K], K-contiguous: a 1x1 / stride-1 conv's NHWC
input, or a matmul's), ``w`` the quantized weight [N, K] (int8, or E4M3 codes), ``m`` an
argument (every batch size has the same source, so an optimization profile's engines compile
it once). The arithmetic is ``cuda_source_quant``'s, bit for bit where it is exact: an x
stored as float16 / float32 is quantized on load exactly as ``QuantizeSource`` does (an int8
x is used as it is), the int32 accumulator (INT8, exact) converts once with
``__int2float_rn``, the epilogue is ``epilogue_statements``, the store
``QuantEpilogueSource``'s (float16 / float32, or int8 requantized with the output scale). FP8
accumulates in fp32 in the tensor cores' order, as cuBLASLt's FP8 GEMM does.

The grid's blocks each take one chunk of :attr:`QMmaSource.nc` output channels (block ``b``:
chunk ``b % chunks``) and loop over block tiles of rows; a block stages its chunk of the
weight in shared memory (rows padded so that lanes reading it with 16-byte loads hit
distinct banks), then each of its :data:`WARPS` warps takes ``mt`` m-tiles of 16 rows in
turn. Per m-tile and block of :data:`KB` k (K up to :data:`MAX_K`, in order) a lane loads
its two rows' A fragments straight from x -- 16-byte loads: the MMA sums over k, so the order
of k inside a k step only has to agree between A and B, and a lane takes, per 64 k, the 16
consecutive bytes ``[64c + 16t, 64c + 16t + 16)`` as the fragments of two k steps
(:func:`fragment_k`) and B's fragments from the same bytes of the weight row -- then issues
``mma.sync`` m16n8k32 (s8 x s8 -> s32, or e4m3 x e4m3 -> f32) for every n-tile of 8
channels into accumulators that stay in registers across the blocks. After the last block it
applies the epilogue per accumulator, stages the outputs in shared memory and stores the
warp's 16 rows with 16-byte stores where y is aligned to them.

The fragment layouts are :data:`A_FRAG`, :data:`B_FRAG` and :data:`C_FRAG`, from the PTX ISA
("Matrix Fragments for mma.m16n8k32"); the host tests emulate the MMA from the ISA's
per-element formulas, not from these tables, and the build-time validation of every layer
(``cupy_quant.Validator``) checks the kernel against the emulated path on the GPU.
"""

from __future__ import annotations

import math
from typing import Dict, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from tftrt.engine.backends import cuda_source_quant as S
from tftrt.engine.backends.cuda_source import PRELUDE, ctype, load_expr

KERNEL = "qmma"
MAX_K = 2048             # K: bytes of a weight row in shared memory (ResNet50's widest)
KB = 256                 # K a lane's A fragments cover at a time (16 words a row)
# K up to which the builder offers the tactic for a large GEMM: above it such a GEMM is
# compute-bound enough for the libraries. ResNet50 at batch 128 (2026-12-06, H100 and H200):
# the kernel ran the 1x1 convs of K 512 / 1024 / 2048 in 44 / 41 / 56 us, cuDNN's int8
# graphs each of those layers in under 35 us; of the stage-1 1x1 convs it took the five of K
# 64, and then the four of stage 2 (K 128) once residuals were staged. Offering it there only
# cost build time (a compile, a validation and a timing per layer). Small GEMMs (at most
# TACTIC_SMALL multiply-adds: batch 1) are latency-bound, where one kernel with its epilogue
# may beat a library call and its epilogue at any K, so it is offered to them at every K.
TACTIC_MAX_K = 256
TACTIC_SMALL = 1 << 28
# input channels up to which the builder offers the kernel for a conv with more than one tap
# (an implicit GEMM, :class:`ConvGeometry`) whatever its K: cuDNN's int8 fusion engine ran
# ResNet50's stage-1 3x3 convs (64 channels) slower than the FP16 ones (93 against 80 us,
# H100, batch 128, s41), its stage-2 ones (128) in under 31 us. INT8 only: cuDNN's FP8 convs
# are slow at every width (the stage-2 3x3 convs 172 us, against 92.6 us for this kernel's
# INT8 form of the same shape, H100, s37 / s43), so an FP8 conv is offered up to MAX_K.
TACTIC_CONV_MAX_C = 64
WARPS = 4                # a block: 128 threads
# the statements turning a lane's pair of int8 residual codes ``rp<i>`` into floats
# ``rf<i>_0``, ``rf<i>_1`` (:func:`res_cvt_default`); "byte" converts each where it is used
RES_CVT = {
    "byte": "",
    "half2": "float rf{i}_0, rf{i}_1;\n            bytes_float2(rp{i}, rf{i}_0, rf{i}_1);"
             "\n            ",
}
# a block of a layer with a staged residual: 256 threads. H100, 2026-12-06, same call
# (results/qmma_bench_h100_2026-12-06s36c.log): the stage-1 conv3 with its residual 154.6 us
# against 160.9 with 4 warps, the stage-2 one 89.3 against 95.4; without a residual 8 warps
# were as fast or slower (the projection 114.8 against 109.7).
RESIDUAL_WARPS = 8
# the next m-tile's int8 x (and residual) loaded during this one's epilogue where it applies
# (:attr:`QMmaSource.pipeline`). H200, 2026-12-06, same call (results/
# qmma_bench_h200_2026-12-06s37a.log): the stage-1 conv3 with its residual 141.7 us against
# 160.8 (8 warps, chunks of 64 where the double-buffered residual leaves room for them), the
# 1x1 256 -> 64 50.1 against 53.2; the stage-2 ones within 1%; with 4 warps and a residual
# the pipelined loop took 182 registers and 212 us.
PIPELINE = True
# blocks an SM must hold of a pipelined kernel with a staged residual and K <= 64 (its
# registers capped to match): the paired epilogue of :meth:`QMmaSource._epilogue` took 105
# registers for the stage-1 residual conv (2 blocks of 256 threads an SM) where the element
# one took 80 (3 blocks); capped at 3 blocks it takes 80 without spills (nvcc 13.0, sm_90).
# K 128 (stage 2) spills at 3 blocks and keeps its 100 registers, 2 blocks as before (122).
PIPELINE_MIN_BLOCKS = 3
LANES = 32
MT = 1                   # m-tiles of 16 rows a warp takes per block tile (the grid is capped
#                          at the blocks the GPU holds at once: warps stride over m-tiles)
NC_CHOICES = (128, 64, 32, 16, 8)   # output channels a block takes (the widest that fits)
SMEM_LIMIT = 48 * 1024   # static shared memory of one block
_X_DTYPES = ("int8", "float16", "float32")
_Y_DTYPES = ("int8", "float16", "float32")

# m16n8k32, 8-bit A / B; lane = 4 g + t (g = lane >> 2, t = lane & 3). A (16 x 32, row major):
# register r holds row g + A_FRAG[r][0], k = 4t + A_FRAG[r][1] + {0..3} (low byte: the lowest
# k). B (32 x 8, k x n): register r holds k = 4t + B_FRAG[r] + {0..3} of column n = g. C / D
# (16 x 8, s32 / f32): register r is row g + C_FRAG[r][0], column 2t + C_FRAG[r][1].
A_FRAG = ((0, 0), (8, 0), (0, 16), (8, 16))
B_FRAG = (0, 16)
C_FRAG = ((0, 0), (0, 1), (8, 0), (8, 1))


class ConvGeometry(NamedTuple):
    """A conv run as an implicit GEMM: the rows are y's pixels (image, ho, wo), K is its taps
    times its input channels in the KRSC weight's order (k = (dh * s + dw) * c + ci), and a
    lane reads x (NHWC, ``h`` x ``w`` x ``c`` an image) in place at the tap's pixel, zeros
    where it falls in the padding. ``c`` a multiple of 64: each 64-wide chunk of K lies in one
    tap (16-byte loads stay aligned)."""
    h: int
    w: int
    c: int
    r: int
    s: int
    stride_h: int
    stride_w: int
    pad_h: int   # the padding before (top / left); after it is what the output sizes leave
    pad_w: int
    ho: int
    wo: int


class Projection(NamedTuple):
    """A second quantized GEMM run inside the kernel whose int8 output is the layer's int8
    residual (a bottleneck's projection shortcut): per m-tile the kernel first sums ``x2``'s
    rows (or, with ``conv``, its taps at y's pixels: a strided 1x1 conv) against ``w2`` [N,
    ``k``], applies ``epilogue`` (per-channel ``operand_modes``, "vec" only) and requantizes
    with ``out_scale`` -- the projection layer's own arithmetic, the codes it would store --
    keeps the codes in registers, and the layer's epilogue takes them as its operand
    ``residual`` instead of reading them from memory."""
    k: int
    epilogue: Sequence[dict]
    operand_modes: Dict[int, Tuple[str, str]]
    out_scale: float
    residual: int
    conv: Optional[ConvGeometry] = None


class _Src(NamedTuple):
    """One GEMM's A side in the source: x's name, its row length ``kx`` and K (``k``: kx
    padded), the conv geometry, the shared weight array and the row variables' prefix."""
    x: str
    kx: int
    k: int
    conv: Optional[ConvGeometry]
    bsm: str
    rows: str


def _mma_helper(acc: str, types: str, reg: str) -> str:
    """``mma_16832(c, a0..a3, b0, b1)``: D = A B + C in place on the 4 accumulators ``c``."""
    return f"""
__device__ __forceinline__ void mma_16832({acc}* c, unsigned a0, unsigned a1, unsigned a2,
                                          unsigned a3, unsigned b0, unsigned b1) {{
  asm volatile("mma.sync.aligned.m16n8k32.row.col.{types} "
               "{{%0, %1, %2, %3}}, {{%4, %5, %6, %7}}, {{%8, %9}}, {{%0, %1, %2, %3}};"
               : "+{reg}"(c[0]), "+{reg}"(c[1]), "+{reg}"(c[2]), "+{reg}"(c[3])
               : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1)); }}
"""


# Integer <-> float conversions on the FMA and integer pipes instead of the conversion unit,
# which takes 16 a clock an SM on sm_80 / sm_90: a requantized conv with an int8 residual
# converts three times an output (the accumulator, the residual, the rounding), so that unit
# bounded ResNet50's stage-1 convs (102.8 M outputs each at batch 128: ~74 us on an H100).
# Both give the conversions' answers bit for bit (the host tests sweep them):
# small_int_float(v) is (float)v for |v| < 2**22 -- 1.5 * 2**23 has a unit last place, so
# adding v to its mantissa is exact -- and q_int8_fast(v) is q_int8(v): NaN -> 0, clamped to
# +-127, then rounded to nearest even by the same addition.
FAST_INT8 = r"""
__device__ __forceinline__ float small_int_float(int v) {
  return __fsub_rn(__int_as_float(v + 0x4B400000), 12582912.f);
}
__device__ __forceinline__ signed char q_int8_fast(float v) {
  const float c = v == v ? fminf(fmaxf(v, -127.f), 127.f) : 0.f;  // (this form: 40 fewer
  //                             registers than selecting v first, nvcc 13.0 sm_90)
  return (signed char)(__float_as_int(__fadd_rn(c, 12582912.f)) - 0x4B400000);
}
__device__ __forceinline__ unsigned prmt(unsigned a, unsigned b, unsigned s) {
#if defined(__CUDA_ARCH__)
  return __byte_perm(a, b, s);
#else  // __byte_perm: byte i of the result is byte (s >> 4i) & 7 of {b, a}. Bit 3 of a
  //       nibble is ignored: PTX prmt's sign replication is not __byte_perm's (a residual
  //       sign-extended that way answered wrong on an H100, s46)
  const unsigned long long v = ((unsigned long long)b << 32) | a;
  unsigned r = 0;
  for (int i = 0; i < 4; ++i) r |= (unsigned)((v >> (8 * ((s >> (4 * i)) & 7))) & 0xFF) << (8 * i);
  return r;
#endif
}
// (float) of byte co of p read as a signed char: its code + 128 (the sign bit flipped) is the
// low byte of the mantissa of 1.5 * 2**23 + code + 128, one PRMT, then one exact subtraction
__device__ __forceinline__ float byte_float(unsigned p, unsigned co) {
  return __fsub_rn(__int_as_float(prmt(p ^ 0x8080u, 0x4B400000u, 0x7640u | co)), 12583040.f);
}
// (float) of bytes 0 and 1 of p read as signed chars, through a half2: the PRMT spreads them
// to bytes 0 and 2 (its other operand zero, the selector an immediate), the XOR flips their
// sign bits and sets bytes 1 and 3 to 0x64, so that each half holds 1024 + code + 128
// exactly; one f16x2 subtraction of 1152 leaves the codes (exact in half precision) and each
// half converts to float exactly. Five instructions a pair, where byte_float's two take
// seven (each PRMT's selector in a register the compiler rematerializes, nvcc 13.0 sm_90).
__device__ __forceinline__ void bytes_float2(unsigned p, float& lo, float& hi) {
  const unsigned h = prmt(p, 0u, 0x4140u) ^ 0x64806480u;
#if defined(__CUDA_ARCH__)
  unsigned d;
  unsigned short l, u;
  asm("sub.rn.f16x2 %0, %1, %2;" : "=r"(d) : "r"(h), "r"(0x64806480u));
  asm("mov.b32 {%0, %1}, %2;" : "=h"(l), "=h"(u) : "r"(d));
  asm("cvt.f32.f16 %0, %1;" : "=f"(lo) : "h"(l));
  asm("cvt.f32.f16 %0, %1;" : "=f"(hi) : "h"(u));
#else  // the same arithmetic in the host's half type (every value here is exact)
  const unsigned short l = (unsigned short)(h & 0xFFFFu), u = (unsigned short)(h >> 16);
  _Float16 a, b;
  memcpy(&a, &l, 2);
  memcpy(&b, &u, 2);
  lo = (float)(_Float16)(a - (_Float16)1152.f);
  hi = (float)(_Float16)(b - (_Float16)1152.f);
#endif
}
"""
SMALL_INT = 1 << 22      # small_int_float is exact below it

# 16-byte global -> shared copies that run while the warp loads x and issues its MMAs
# (sm_80+; a plain copy elsewhere, the host tests' build included)
CP_ASYNC = r"""
__device__ __forceinline__ void cp_async16(void* s, const void* g) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const unsigned sa = (unsigned)__cvta_generic_to_shared(s);
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" :: "r"(sa), "l"(g) : "memory");
#else
  *reinterpret_cast<uint4*>(s) = *reinterpret_cast<const uint4*>(g);
#endif
}
__device__ __forceinline__ void cp_async_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_all;" ::: "memory");
#endif
}
__device__ __forceinline__ void cp_async_commit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;" ::: "memory");
#endif
}
__device__ __forceinline__ void cp_async_wait_prior() {  // all groups but the last committed
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group 1;" ::: "memory");
#endif
}
"""

# int8 x int8 -> int32 (exact), E4M3 x E4M3 -> fp32 (sm_89+)
MMA_HELPERS = {S.INT8: _mma_helper("int", "s32.s8.s8.s32", "r"),
               S.FP8: _mma_helper("float", "f32.e4m3.e4m3.f32", "f")}


def relu_int8_bits(v: str, inv: str) -> str:
    """C expression: the bits of 1.5 * 2**23 + the int8 code of relu(``v``) requantized with
    ``inv`` (a positive float literal), whose low byte is the code -- ``q_int8_fast(relu(v) *
    inv)``'s with one clamp: NaN and -0 give 0, as there (tests/engine/test_qmma_codegen)."""
    return (f"(unsigned)__float_as_int(__fadd_rn(fminf(__fmul_rn(fmaxf({v}, 0.f), {inv}), "
            f"127.f), 12582912.f))")


def fragment_k(k: int, kk: int) -> Tuple[int, int]:
    """(k step, k within the step's 32) at which the kernel feeds the MMA physical column ``k``
    of a GEMM with K = ``kk``: per 64-k chunk c, lane t loads the 16 bytes ``64c + 16t ..``,
    whose words 0, 1 are its registers of A_FRAG's k 4t.. and 16 + 4t.. in step 2c and words
    2, 3 the same in step 2c + 1; a last chunk of 32 (K = 32 mod 64) gives lane t the 8 bytes
    ``64c + 8t ..``, words 0, 1 of its one step. B's registers take the same bytes of the
    weight row, so each step sums the products of 32 columns (the host tests check that
    this is a bijection)."""
    c, o = divmod(int(k), 64)
    if c < int(kk) // 64:
        t, rest = divmod(o, 16)
        w, b = divmod(rest, 4)
        return 2 * c + w // 2, 4 * t + 16 * (w % 2) + b
    t, rest = divmod(o, 8)
    w, b = divmod(rest, 4)
    return 2 * c, 4 * t + 16 * w + b


def resident_blocks(num_regs: int, smem: int, threads: int, props: dict) -> int:
    """Blocks of a kernel (``num_regs`` registers a thread, ``smem`` bytes of static shared
    memory, ``threads`` a block) that one SM holds at once, from the device properties
    (CUDA's occupancy rules: registers allocated 256 a warp, 1 KiB of shared memory reserved
    a block)."""
    warps = -(-int(threads) // 32)
    per_warp = -(-max(int(num_regs), 1) * 32 // 256) * 256
    by_regs = int(props["regsPerMultiprocessor"]) // (per_warp * warps)
    by_smem = int(props["sharedMemPerMultiprocessor"]) // (int(smem) + 1024)
    by_threads = int(props["maxThreadsPerMultiProcessor"]) // int(threads)
    return max(1, min(by_regs, by_smem, by_threads, 32))


def smem_row(k: int) -> int:
    """Bytes of a shared-memory weight row: at least K, and 64 mod 128, so that the 8 lanes of
    a 16-byte load phase (rows g, g + 1; t = 0..3) hit 8 different 16-byte bank groups."""
    return int(k) + (64 - int(k) % 128) % 128


def stage_row(nc: int, y_dtype: str) -> int:
    """Bytes of a warp's staging row (nc outputs), padded by 16 (16-byte aligned rows)."""
    return nc * np.dtype(y_dtype).itemsize + 16


def smem_bytes(nc: int, k: int, y_dtype: str, warps: int = WARPS,
               full_dtypes: Sequence[str] = (), vecs: int = 0, k2: int = 0) -> int:
    """Shared memory of a block: its weight rows (and a :class:`Projection`'s of K ``k2``),
    the chunk's values of ``vecs`` per-channel epilogue operands (float32), then per warp the
    staging of 16 rows of outputs and of each full-size epilogue operand (a residual)."""
    stage = stage_row(nc, y_dtype) + sum(stage_row(nc, d) for d in full_dtypes)
    rows = nc * (smem_row(k) + (smem_row(k2) if k2 else 0))
    return rows + 4 * nc * int(vecs) + warps * 16 * stage


def chunk_width(n: int, k: int, y_dtype: str, warps: int = WARPS,
                full_dtypes: Sequence[str] = (), vecs: int = 0,
                k2: int = 0) -> Optional[int]:
    """The widest chunk of output channels (:data:`NC_CHOICES`, at most N rounded up to 8)
    whose weight rows and staging fit :data:`SMEM_LIMIT`, or None."""
    for nc in NC_CHOICES:
        if nc <= max(8, -(-n // 8) * 8) and \
                smem_bytes(nc, k, y_dtype, warps, full_dtypes, vecs, k2) <= SMEM_LIMIT:
            return nc
    return None


class QMmaSource:
    """The ``qmma`` kernel of one quantized GEMM layer for fixed N, K, dtypes and epilogue.

    Args:
      n, k: the GEMM's N (output channels, a multiple of 8) and K (a multiple of 32, at most
        :data:`MAX_K`).
      fmt: "int8" or "fp8_e4m3" (``quantization.FORMAT``).
      x_dtype: int8 (INT8 only: a requantizing producer's output), float16 or float32 (then
        quantized on load with ``inv_x``, the input scale's reciprocal).
      y_dtype: int8 (with ``out_scale``), float16 or float32.
      epilogue, operand_modes: as ``cuda_source_quant.QuantEpilogueSource``'s.
      mt: m-tiles a warp takes per block tile; warps: warps a block (default
        :data:`RESIDUAL_WARPS` with a staged residual, else :data:`WARPS`);
        nc: output channels a block takes (default: :func:`chunk_width`); stage_full: False
        reads full-size operands element by element from global memory instead of staging
        them (:meth:`_copy_in`); pipeline (default :data:`PIPELINE`): load the next m-tile's
        x and residual while the epilogue of this one runs (int8 x, K up to :data:`KB`, ``mt``
        1; else ignored: see :attr:`pipeline`); fast_int: False converts with the conversion unit
        (``q_int8``, ``__int2float_rn``) instead of :data:`FAST_INT8`'s; min_threads: threads
        an SM must hold at once (``__launch_bounds__``' minimum of blocks: it caps the
        registers; 0: :data:`PIPELINE_MIN_BLOCKS` blocks where that applies, else none);
        paired: False runs the epilogue element by element, s37's way, instead of
        :meth:`_epilogue`'s pairs and ReLU tail; stage_vecs, i2f, res_cvt: see
        :func:`stage_vecs_default`, :func:`i2f_default`, :func:`res_cvt_default` (None:
        their defaults) -- benchmark knobs, the same answers.
      conv: a :class:`ConvGeometry` where the layer is a conv with more than one tap (or a
        stride, or padding): the kernel's rows are then y's pixels and it gathers x's taps
        itself (K = r * s * c; no pipeline).
      interleave: the MMAs k first (None: :func:`interleave_default`) -- a benchmark knob, the
        same answers.
      projection: a :class:`Projection` computing the int8 residual operand it names (INT8,
        int8 x and residual, the paired epilogue; no pipeline).

    Kernel ``qmma(x, w, *operands, y, m)`` (operands in :attr:`operands` order, ``m`` a long
    long), with a projection ``qmma(x, w, *operands, x2, w2, *proj_operands, y, m)`` (the
    residual it computes is not among the operands); :meth:`grid` gives the launch. Raises
    ValueError for what the kernel does not take.
    """

    def __init__(self, n: int, k: int, fmt: str, x_dtype: str, y_dtype: str,
                 epilogue: Sequence[dict], operand_modes: Dict[int, Tuple[str, str]],
                 inv_x: float = 1.0, out_scale: Optional[float] = None, mt: int = MT,
                 warps: Optional[int] = None, nc: Optional[int] = None, stage_full: bool = True,
                 fast_int: bool = True, min_threads: int = 0, pipeline: bool = PIPELINE,
                 paired: bool = True, conv: Optional[ConvGeometry] = None,
                 stage_vecs: Optional[bool] = None, i2f: Optional[bool] = None,
                 res_cvt: Optional[str] = None, interleave: Optional[bool] = None,
                 projection: Optional[Projection] = None):
        self.n, self.k, self.fmt = int(n), int(k), fmt
        # x's row length: K itself, but a K of 8 / 16 / 24, or a multiple of 16 (MobileNet /
        # EfficientNet channel counts: 16, 24, 80, 112, 144, 240), runs over a weight
        # zero-padded to a multiple of 32, each lane loading its 16 (8 in a last step of 32)
        # columns of x only where they are in the row (a granule is wholly in or out)
        self.kx = self.k
        if conv is None and self.k % 32 and (self.k in (8, 16, 24) or self.k % 16 == 0):
            self.k = -(-self.k // 32) * 32
        self.conv = conv
        if conv is not None:
            if conv.c % 64 or conv.c <= 0:
                raise ValueError(f"the tensor-core quantized conv takes input channels a "
                                 f"multiple of 64, not {conv.c}")
            if conv.r * conv.s * conv.c != self.k:
                raise ValueError(f"K {self.k} is not the conv's taps x channels "
                                 f"({conv.r} x {conv.s} x {conv.c})")
            pipeline = False  # (the pipelined loop reads x's rows as a GEMM's)
        self.x_dtype, self.y_dtype = np.dtype(x_dtype).name, np.dtype(y_dtype).name
        if fmt not in (S.INT8, S.FP8):
            raise ValueError(f"quantized format {fmt!r}")
        if self.x_dtype not in _X_DTYPES or (self.x_dtype == "int8" and fmt != S.INT8):
            raise ValueError(f"the tensor-core quantized GEMM takes float16 / float32 x (or "
                             f"int8 x in INT8), not {self.x_dtype} in {fmt}")
        if self.y_dtype not in _Y_DTYPES:
            raise ValueError(f"a quantized layer's output is float16, float32 or int8, not "
                             f"{self.y_dtype}")
        if (self.y_dtype == "int8") != (out_scale is not None):
            raise ValueError("an int8 output needs its output scale (and only it)")
        if self.k % 32 or not 0 < self.k <= MAX_K:
            raise ValueError(f"the tensor-core quantized GEMM takes K of 8, 16, 24 or a "
                             f"multiple of 16 up to {MAX_K}, not {self.kx}")
        if self.n % 8 or self.n <= 0:
            raise ValueError(f"the tensor-core quantized GEMM takes N a multiple of 8, not "
                             f"{self.n}")
        for i, (mode, _) in operand_modes.items():
            if mode not in ("vec", "full"):
                raise ValueError(f"epilogue operand {i}: broadcast {mode!r} not supported")
        self.projection = projection
        if projection is not None:
            self._check_projection(projection, epilogue, operand_modes, fast_int, paired)
            pipeline = False  # (the pipelined loop has one GEMM)
        fused = projection.residual if projection is not None else None
        # full-size operands (residuals) are staged in shared memory per m-tile
        self.full = {i: np.dtype(dt).name for i, (mode, dt) in operand_modes.items()
                     if mode == "full" and stage_full and i != fused}
        self.warps = int(warps or (RESIDUAL_WARPS if self.full else WARPS))
        # the next m-tile's x and residual loaded while this one's epilogue runs: one block
        # of K of int8 x (a float x is quantized as it arrives), one m-tile a block tile
        self.pipeline = bool(pipeline) and int(mt) == 1 and self.k <= KB and \
            self.x_dtype == "int8"
        # the MMAs in the order of k first, n-tiles interleaved (:func:`interleave_default`)
        if interleave is None:
            way = interleave_default()
            interleave = way == "1" or (way == "auto" and self.pipeline and self.k <= 64)
        self.interleave = bool(interleave)
        fdt = tuple(self.full.values()) * (2 if self.pipeline else 1)
        # per-channel float operands (the dequantization scale, the bias) staged once a block
        # in shared memory as float32 (stage_vecs; default :func:`stage_vecs_default`, for an
        # int8 x: timed there, and a float x's kernels spill with it)
        if stage_vecs is None:
            stage_vecs = stage_vecs_default() and self.x_dtype == "int8"
        self.vecs = [i for i, (mode, dt) in sorted(operand_modes.items())
                     if mode == "vec" and np.dtype(dt).name in ("float16", "float32")] \
            if stage_vecs else []
        # a projection's per-channel operands, staged as the layer's are
        self.proj_vecs = [i for i, (_, dt) in sorted(projection.operand_modes.items())
                          if np.dtype(dt).name in ("float16", "float32")] \
            if projection is not None and stage_vecs else []
        nv = len(self.vecs) + len(self.proj_vecs)
        k2 = projection.k if projection is not None else 0
        nc = nc or chunk_width(self.n, self.k, self.y_dtype, self.warps, fdt, nv, k2)
        if nc is None or nc % 16 and nc != 8 or \
                smem_bytes(nc, self.k, self.y_dtype, self.warps, fdt, nv, k2) > SMEM_LIMIT:
            raise ValueError(f"the tensor-core quantized GEMM's weight rows ({self.k} bytes) "
                             f"and staging do not fit {SMEM_LIMIT} bytes of shared memory")
        self.nc = nc
        self.chunks = -(-self.n // nc)
        self.mt = int(mt)
        self.threads = self.warps * LANES
        self.inv_x, self.out_scale = float(inv_x), out_scale
        self.fast_int, self.min_threads = bool(fast_int), int(min_threads)
        self.paired = bool(paired)
        self.i2f = i2f_default() if i2f is None else bool(i2f)
        self.res_cvt = res_cvt_default() if res_cvt is None else str(res_cvt)
        if self.res_cvt not in RES_CVT:
            raise ValueError(f"res_cvt {self.res_cvt!r}: one of {', '.join(RES_CVT)}")
        if not self.min_threads and self.pipeline and self.full and self.k <= 64:
            self.min_threads = PIPELINE_MIN_BLOCKS * self.threads
        self.operands = [i for i in sorted(operand_modes) if i != fused]
        self.proj_operands = sorted(projection.operand_modes) if projection is not None else []
        proj_params = [] if projection is None else (
            [("const signed char*", "x2"), ("const unsigned char*", "w2")] +
            [(f"const {ctype(projection.operand_modes[i][1])}*", f"p{i}")
             for i in self.proj_operands])
        self.params = ([(f"const {ctype(self.x_dtype)}*", "x"), ("const unsigned char*", "w")] +
                       [(f"const {ctype(operand_modes[i][1])}*", f"e{i}")
                        for i in self.operands] + proj_params +
                       [(f"{ctype(self.y_dtype)}*", "y"), ("long long", "m")])
        self._main = _Src("x", self.kx, self.k, self.conv, "bsm4", "row")
        self._proj = None if projection is None else \
            _Src("x2", projection.k, projection.k, projection.conv, "bsp4", "prow")
        self.source = self._source(epilogue, operand_modes)

    def _check_projection(self, proj: Projection, epilogue, operand_modes, fast_int: bool,
                          paired: bool) -> None:
        """ValueError unless ``proj`` is what the kernel fuses: an INT8 layer over an int8 x
        whose epilogue adds the int8 residual ``proj.residual`` (read as pairs: ``fast_int``
        and ``paired``), and a projection of int8 codes with per-channel operands only."""
        res = proj.residual
        if self.fmt != S.INT8 or self.x_dtype != "int8" or not (fast_int and paired):
            raise ValueError("a fused projection takes an INT8 layer over int8 x with the "
                             "fast, paired epilogue")
        if operand_modes.get(res) != ("full", "int8") or \
                not any(e.get("op") == "add" and e.get("input") == res for e in epilogue):
            raise ValueError(f"a fused projection replaces an int8 residual added in the "
                             f"epilogue; operand {res} is not one")
        k2 = int(proj.k)
        if proj.conv is not None:
            g = proj.conv
            if g.c % 64 or g.r * g.s * g.c != k2:
                raise ValueError(f"the projection's conv takes input channels a multiple of "
                                 f"64 and K its taps x channels, not K {k2}, C {g.c}")
        elif k2 % 32 or not 0 < k2 <= MAX_K:
            raise ValueError(f"the projection's K is a multiple of 32 up to {MAX_K}, not {k2}")
        if any(mode != "vec" for mode, _ in proj.operand_modes.values()) or \
                any("input" in e and e["input"] not in proj.operand_modes
                    for e in proj.epilogue):
            raise ValueError("the projection's epilogue takes per-channel operands only")
        if proj.out_scale is None:
            raise ValueError("the projection requantizes: it needs its output scale")

    def grid(self, m: int, max_blocks: Optional[int] = None) -> int:
        """Blocks of a launch over ``m`` rows: every chunk times the block tiles (capped at
        ``max_blocks`` rounded down to whole chunks; blocks then loop)."""
        tiles = max(1, math.ceil(int(m) / (self.warps * self.mt * 16)))
        if max_blocks:
            tiles = max(1, min(tiles, int(max_blocks) // self.chunks))
        return tiles * self.chunks

    # --- pieces of the source ----------------------------------------------------------------
    @property
    def _q_int8(self) -> str:
        return "q_int8_fast" if self.fast_int else "q_int8"

    def _quantize(self, v: str) -> str:
        """C expression: the float ``v`` quantized to its 8-bit code (an unsigned)."""
        inv = S.float_literal(np.float32(self.inv_x))
        q = f"__fmul_rn({v}, {inv})"
        if self.fmt == S.INT8:
            return f"(unsigned)(unsigned char){self._q_int8}({q})"
        return f"(unsigned)q_e4m3({q})"

    def _span_loader(self, elems: int) -> str:
        """Device function ``span<elems>(p, al, o)``: the 8-bit codes of x's ``elems``
        consecutive elements at ``p`` packed 4 a word into ``o`` (the lowest k in the low
        byte); vector loads when ``al`` (x 16-byte aligned), else element by element."""
        xt, es = ctype(self.x_dtype), np.dtype(self.x_dtype).itemsize
        nbytes = elems * es
        words = elems // 4
        if self.x_dtype == "int8":
            vec = ("const uint4 v = *reinterpret_cast<const uint4*>(p);\n"
                   "    o[0] = v.x; o[1] = v.y; o[2] = v.z; o[3] = v.w;" if nbytes == 16 else
                   "const uint2 v = *reinterpret_cast<const uint2*>(p);\n"
                   "    o[0] = v.x; o[1] = v.y;")
            scalar = (f"for (int i = 0; i < {words}; ++i)\n"
                      f"      o[i] = (unsigned)(unsigned char)p[4 * i] |\n"
                      f"          ((unsigned)(unsigned char)p[4 * i + 1] << 8) |\n"
                      f"          ((unsigned)(unsigned char)p[4 * i + 2] << 16) |\n"
                      f"          ((unsigned)(unsigned char)p[4 * i + 3] << 24);")
            return (f"__device__ __forceinline__ void span{elems}(const {xt}* p, bool al, "
                    f"unsigned* o) {{\n  if (al) {{\n    {vec}\n  }} else {{\n    {scalar}\n"
                    f"  }}\n}}\n")
        val = load_expr(self.x_dtype, "e[i]")
        return f"""__device__ __forceinline__ void span{elems}(const {xt}* p, bool al, unsigned* o) {{
  uint4 u[{nbytes // 16}];
  if (al) {{
    for (int i = 0; i < {nbytes // 16}; ++i) u[i] = reinterpret_cast<const uint4*>(p)[i];
  }} else {{
    {xt}* d = reinterpret_cast<{xt}*>(u);
    for (int i = 0; i < {elems}; ++i) d[i] = p[i];
  }}
  const {xt}* e = reinterpret_cast<const {xt}*>(u);
  for (int w = 0; w < {words}; ++w) {{
    unsigned r = 0;
    for (int b = 0; b < 4; ++b) {{
      const int i = 4 * w + b;
      r |= {self._quantize(val)} << (8 * b);
    }}
    o[w] = r;
  }}
}}
"""

    def _epilogue(self, epilogue, operand_modes, it: str) -> str:
        """Statements applying the epilogue to each accumulator of n-tile ``j`` and staging
        the results (rows g, g + 8 of the m-tile; columns 2t, 2t + 1 of the tile).

        A lane's two columns of a row are adjacent, so with :data:`FAST_INT8`'s conversions
        (``fast_int``) a staged int8 residual is read as one 2-byte pair (``byte_float``
        converts each byte with one PRMT and one subtraction) and an int8 output is staged as
        one: ResNet50's stage-1 residual conv issued 28.6 instructions an output, at 68% of
        the issue slots, with memory at 44% (Nsight Compute, H100, 2026-12-06). An int8
        output whose epilogue ends in ReLU (:meth:`_relu_tail`) clamps once: max(v, 0), then
        min(v / scale, 127), the same codes as relu then ``q_int8`` (NaN and -0 give 0).
        H100, same call (results/qmma_paired_h100_2026-12-06s39b.log, paired against element
        by element): the stage-1 residual conv 124.0-131.2 us against 141.5-142.5, the
        stage-2 one 72.9-73.3 against 89.0-89.3; ResNet50 INT8 at batch 128 2.838 ms against
        FP16's 3.629 (1.28x; s38: 1.18x)."""
        fast8 = self.fast_int and self.fmt == S.INT8 and self.paired
        pairs = {i for i, dt in self.full.items() if dt == "int8" and fast8}
        fused = self.projection.residual if self.projection is not None else None
        if fused is not None:
            pairs.add(fused)
        loads = {}
        for i in self.operands + ([fused] if fused is not None else []):
            mode, dt = operand_modes[i]
            if i in pairs:
                loads[i] = f"byte_float(rp{i}, @CO@u)" if self.res_cvt == "byte" else \
                    f"rf{i}_@CO@"
                continue
            if i in self.vecs:  # staged as float32 (the same value)
                e = f"vsm{i}[cc]"
            elif mode == "vec":
                e = load_expr(dt, f"e{i}[col]")
            elif i in self.full:
                e = load_expr(dt, f"reinterpret_cast<const {ctype(dt)}*>(rs{i} + (g + @RO@) * "
                                  f"RS{i})[cc]")
            else:  # stage_full off (a benchmark knob): element loads from global memory
                e = load_expr(dt, f"e{i}[row@R8@ * {self.n} + col]")
            if np.dtype(dt) in (np.int8, np.uint8, np.int16, np.uint16) and self.fast_int:
                e = f"small_int_float((int){e})"
            elif np.dtype(dt) not in (np.float16, np.float32):
                e = f"(float){e}"
            loads[i] = e
        relu_tail = self.paired and self._relu_tail(epilogue)
        body = epilogue[:-1] if relu_tail else epilogue
        stmts = "\n            ".join(S.epilogue_statements(body, loads, "v"))
        conv = ""
        if self.fmt == S.INT8:  # |acc| <= K * 128 * 127 (codes of +-127; -128 in an x)
            conv = "small_int_float" if self.k * 128 * 127 < SMALL_INT and self.fast_int \
                and not self.i2f else "__int2float_rn"
        pair_out = self.y_dtype == "int8" and self.fast_int and self.paired
        if self.y_dtype == "int8":
            inv = S.float_literal(S.output_scale_inverse(self.out_scale))
            store = f"{self._q_int8}(__fmul_rn(v, {inv}))"
            if relu_tail:
                store = relu_int8_bits("v", inv)
            elif pair_out:
                store = f"(unsigned)(unsigned char){store}"
        elif self.y_dtype == "float16":
            store = "f2h(v)"
        else:
            store = "v"
        yt = ctype(self.y_dtype)
        rows: Dict[int, list] = {}
        for r, (ro, co) in enumerate(C_FRAG):
            rows.setdefault(ro, []).append((r, co))
        out = []
        for ro, regs in sorted(rows.items()):
            assert [co for _, co in regs] == [0, 1], "a C row's registers: adjacent columns"
            pre = "".join((f"const unsigned rp{i} = pr[j] >> {16 * (ro // 8)};\n            "
                           if i == fused else
                           f"const unsigned rp{i} = *reinterpret_cast<const unsigned short*>("
                           f"rs{i} + (g + {ro}) * RS{i} + 8 * j + 2 * t);\n            ") +
                          RES_CVT[self.res_cvt].format(i=i) for i in sorted(pairs))
            vals = []
            for r, co in regs:
                body_src = stmts.replace("@RO@", str(ro)).replace("@R8@", str(ro // 8)) \
                    .replace("@CO@", str(co))
                keep = f"q{co} = {store};" if pair_out else \
                    f"reinterpret_cast<{yt}*>(stg + (g + {ro}) * SR)[cc] = {store};"
                vals.append(f"""{{
              const int cc = 8 * j + 2 * t + {co}, col = n0 + cc;
              float v = {conv}(acc[j][{r}]);
              {body_src}
              {keep}
              (void)col; (void)cc;
            }}""")
            head = tail = ""
            if pair_out:  # the two codes' low bytes as one 2-byte store
                head = "unsigned q0, q1;\n            "
                tail = ("\n            *reinterpret_cast<unsigned short*>(stg + (g + {ro}) * "
                        "SR + 8 * j + 2 * t) = (unsigned short)prmt(q0, q1, 0x40u);"
                        ).format(ro=ro)
            out.append(f"""{{
            {pre}{head}{vals[0]}
            {vals[1]}{tail}
          }}""")
        return "\n          ".join(out)

    def _relu_tail(self, epilogue) -> bool:
        """Whether the epilogue ends in a plain ReLU before an int8 store with the fast
        conversions and a positive output scale, which :meth:`_epilogue` folds into the
        requantization's clamp."""
        return bool(epilogue) and dict(epilogue[-1]) == {"op": "act", "fn": "relu"} and \
            self.y_dtype == "int8" and self.fast_int and \
            0 < float(S.output_scale_inverse(self.out_scale)) < float("inf")

    def _copy_in(self, m0: str = "m0", rows: str = "rows", buf: str = "rs") -> str:
        """Statements staging the m-tile's rows ``m0 ..`` and the chunk's channels of each
        full-size operand (a residual) in the warp's shared rows ``rs<i>``: 16-byte
        asynchronous copies (``cp.async``, waited for before the epilogue) where the operand
        and its rows are aligned to them, else element copies. The epilogue then reads them
        from shared memory: a lane's own elements of a row are 2 bytes apart in 8 rows, which
        from global memory cost the load unit a line per row and instruction."""
        out = []
        for i, dt in self.full.items():
            ct, es = ctype(dt), np.dtype(dt).itemsize
            vec_ok = (self.n * es) % 16 == 0 and (self.nc * es) % 16 == 0
            elem = f"""{{
          for (int v = lane; v < {rows} * cw; v += {LANES}) {{
            const int row = v / cw, c = v - row * cw;
            reinterpret_cast<{ct}*>({buf}{i} + row * RS{i})[c] =
                e{i}[({m0} + row) * {self.n} + n0 + c];
          }}
        }}"""
            if not vec_ok:
                out.append(elem)
                continue
            per = 16 // es
            out.append(f"""if ((reinterpret_cast<unsigned long long>(e{i}) & 15ull) == 0ull) {{
          const int per_row = cw / {per};
          for (int v = lane; v < {rows} * per_row; v += {LANES}) {{
            const int row = v / per_row, c = v - row * per_row;
            cp_async16({buf}{i} + row * RS{i} + 16 * c,
                       e{i} + ({m0} + row) * {self.n} + n0 + {per} * c);
          }}
        }} else {elem}""")
        return "\n      ".join(out)

    def _copy_out(self, it: str) -> str:
        """Statements storing the warp's staged ``rows`` x ``cw`` block at row ``m0``, channel
        ``n0`` of y: 16-byte stores where y and the rows allow them, else element stores."""
        yt, es = ctype(self.y_dtype), np.dtype(self.y_dtype).itemsize
        vec_ok = (self.n * es) % 16 == 0 and (self.nc * es) % 16 == 0
        ways = []
        for ty, per in ((("uint4", 16 // es),) if vec_ok else ()) + ((yt, 1),):
            ways.append(f"""{{
          const int per_row = cw / {per};
          for (int v = lane; v < rows * per_row; v += {LANES}) {{
            const int row = v / per_row, c = v - row * per_row;
            reinterpret_cast<{ty}*>(y + (m0 + row) * {self.n} + n0)[c] =
                reinterpret_cast<const {ty}*>(stg + row * SR)[c];
          }}
        }}""")
        if len(ways) == 1:
            return ways[0]
        return f"if ((ya & 15ull) == 0ull) {ways[0]} else {ways[1]}"

    def _k_loads(self, chunks: int, tail: int, off: str, dst: str = "a",
                 rows: str = "row", src: Optional[_Src] = None) -> str:
        """Statements loading the lane's A fragments of its rows ``<rows>0`` / ``<rows>1``
        into ``<dst>0`` / ``<dst>1`` for ``chunks`` 64-wide chunks of K from column ``off``
        (a C expression), and a last 32 where ``tail``; ``src`` the GEMM (default the
        layer's own, else its projection's)."""
        src = src or self._main
        k, x = src.kx, src.x  # x's row length
        if src.conv is not None:
            return self._conv_loads(chunks, off, dst, rows, src)
        padded = src.kx < src.k  # lanes whose columns are past the row's end: zero codes
        loads = []
        for p in (0, 1):
            if chunks:
                load = (f"span16({x} + {rows}{p} * {k} + {off} + 64 * c + 16 * t, {x}al, "
                        f"{dst}{p} + 4 * c);")
                if padded:
                    load = (f"{{ if ({off} + 64 * c + 16 * t < {k}) {load}\n          else "
                            f"{dst}{p}[4 * c] = {dst}{p}[4 * c + 1] = {dst}{p}[4 * c + 2] = "
                            f"{dst}{p}[4 * c + 3] = 0u; }}")
                loads.append(f"for (int c = 0; c < {chunks}; ++c) {load}")
            if tail:
                w = 4 * chunks
                load = (f"span8({x} + {rows}{p} * {k} + {off} + {64 * chunks} + 8 * t, "
                        f"{x}al, {dst}{p} + {w});")
                if padded:
                    load = (f"if ({off} + {64 * chunks} + 8 * t < {k}) {load}\n        "
                            f"else {dst}{p}[{w}] = {dst}{p}[{w + 1}] = 0u;")
                loads.append(load)
        return "\n        ".join(loads)

    def _conv_rows(self, rows: str = "row", g: Optional[ConvGeometry] = None) -> str:
        """Statements locating the lane's rows ``<rows>0`` / ``<rows>1`` (y's pixels) in x for
        :meth:`_conv_loads`: ``<rows>px<p>``, the image's first element, and ``<rows>hb<p>``
        / ``<rows>wb<p>``, the top-left tap's pixel (negative in the padding); ``g`` the
        geometry (default the layer's)."""
        g = g or self.conv
        out = []
        for p in (0, 1):
            r = f"{rows}{p}"
            out.append(f"""const unsigned {r}u = (unsigned){r};
      const unsigned {r}i = {r}u / {g.ho * g.wo}u, {r}q = {r}u - {r}i * {g.ho * g.wo}u;
      const int {rows}hb{p} = (int)({r}q / {g.wo}u) * {g.stride_h} - {g.pad_h};
      const int {rows}wb{p} = (int)({r}q % {g.wo}u) * {g.stride_w} - {g.pad_w};
      const long long {rows}px{p} = (long long){r}i * {g.h * g.w * g.c}ll;""")
        return "\n      ".join(out)

    def _conv_loads(self, chunks: int, off: str, dst: str, rows: str, src: _Src) -> str:
        """:meth:`_k_loads` of an implicit GEMM: chunk ``c``'s 64 columns are one tap's 64
        channels; a lane reads its 16 bytes of them at the tap's pixel of each of its rows,
        or zeros (the code of 0) where that pixel is in the padding."""
        g, x = src.conv, src.x
        loads = []
        for p in (0, 1):
            loads.append(f"""{{
          const int hi = {rows}hb{p} + dh, wi = {rows}wb{p} + dw;
          if ((unsigned)hi < {g.h}u && (unsigned)wi < {g.w}u)
            span16({x} + {rows}px{p} + ((long long)hi * {g.w} + wi) * {g.c} + ci + 16 * t,
                   {x}al, {dst}{p} + 4 * c);
          else
            {dst}{p}[4 * c] = {dst}{p}[4 * c + 1] = {dst}{p}[4 * c + 2] = {dst}{p}[4 * c + 3] = 0u;
        }}""")
        body = "\n        ".join(loads)
        return f"""#pragma unroll
        for (int c = 0; c < {chunks}; ++c) {{
          const int kc = {off} + 64 * c, tap = kc / {g.c}, ci = kc - tap * {g.c};
          const int dh = tap / {g.s}, dw = tap - dh * {g.s};
          {body}
        }}"""

    def _k_mmas(self, chunks: int, tail: int, off: str, src: Optional[_Src] = None) -> str:
        """Every n-tile's MMAs over the fragments in ``a0`` / ``a1`` of the chunks at ``off``,
        accumulating in ``acc``: n-tile first, each n-tile's MMAs back to back -- or, where
        :attr:`interleave`, k first: per chunk every n-tile's MMA of its first 32 k (B's 16
        bytes loaded, the second 8 kept in ``bz``), then every n-tile's of its second 32, so
        that two MMAs into one accumulator are NT MMAs apart instead of adjacent. The same sums
        in the same order per accumulator either way. ``src``: as :meth:`_k_loads`'."""
        src = src or self._main
        kr, bsm = smem_row(src.k), src.bsm

        def mma(w: int, b: str) -> str:
            return f"mma_16832(acc[j], a0[{w}], a1[{w}], a0[{w + 1}], a1[{w + 1}], {b});"

        def chunk_b(c: int) -> str:
            return (f"const uint4 b = {bsm}[((8 * j + g) * {kr} + {off} + {64 * c} + 16 * t) "
                    f"/ 16];")

        def loop(*body: str) -> str:
            stmts = "\n          ".join(body)
            return f"""#pragma unroll
        for (int j = 0; j < NT; ++j) {{
          {stmts}
        }}"""
        tail_b = (f"const uint2 b = reinterpret_cast<const uint2*>({bsm})[\n"
                  f"              ((8 * j + g) * {kr} + {off} + {64 * chunks} + 8 * t) / 8];")
        tail_src = (tail_b, mma(4 * chunks, "b.x, b.y")) if tail else ()
        if not self.interleave:
            bodies = [f"""{{
            {chunk_b(c)}
            {mma(4 * c, "b.x, b.y")}
            {mma(4 * c + 2, "b.z, b.w")}
          }}""" for c in range(chunks)]
            if tail:
                bodies.append("{\n            " + "\n            ".join(tail_src) +
                              "\n          }")
            return loop(*bodies)
        out = [f"""{{
        uint2 bz[NT];
        {loop(chunk_b(c), mma(4 * c, "b.x, b.y"), "bz[j].x = b.z; bz[j].y = b.w;")}
        {loop(mma(4 * c + 2, "bz[j].x, bz[j].y"))}
        }}""" for c in range(chunks)]
        if tail:
            out.append(loop(*tail_src))
        return "\n        ".join(out)

    def _k_block(self, chunks: int, tail: int, off: str, src: Optional[_Src] = None) -> str:
        """A block of K at column ``off`` (a C expression): the lane's A fragments of its two
        rows for ``chunks`` 64-wide chunks (and a last 32 where ``tail``), then every n-tile's
        MMAs over them, accumulating in ``acc``. Blocks run in the order of k, so each
        accumulator sums its chunks in the same order whatever the block width."""
        src = src or self._main
        return f"""{{
        {self._k_loads(chunks, tail, off, rows=src.rows, src=src)}
        {self._k_mmas(chunks, tail, off, src)}
      }}"""

    def _k_src(self, src: _Src) -> Tuple[str, int]:
        """The K loop of GEMM ``src`` (blocks of :data:`KB`, then the rest) and the A words a
        lane holds a row."""
        full_blocks, rest = divmod(src.k, KB)
        rest_chunks, tail = divmod(rest, 64)
        tail = tail // 32
        blocks = []
        if full_blocks:
            unroll = "#pragma unroll 1\n      " if full_blocks > 1 else ""
            blocks.append(f"{unroll}for (int kb = 0; kb < {KB * full_blocks}; kb += {KB}) " +
                          self._k_block(KB // 64, 0, "kb", src))
        if rest_chunks or tail:
            blocks.append(self._k_block(rest_chunks, tail, str(KB * full_blocks), src))
        words = 4 * (KB // 64) if full_blocks else 4 * rest_chunks + 2 * tail
        return "\n      ".join(blocks), words

    def _weight_fill(self, w: str, src: _Src) -> str:
        """The block's loop copying its chunk's rows of weight ``w`` (of GEMM ``src``) into
        shared memory (``src.bsm``, rows of :func:`smem_row`), zero rows past N."""
        k, nc, kr = src.k, self.nc, smem_row(src.k)
        return f"""for (int i = threadIdx.x; i < {nc * k // 16}; i += blockDim.x) {{
    const int r = i / {k // 16}, c = i - r * {k // 16};
    uint4 v = {{0u, 0u, 0u, 0u}};
    if (r < cw) v = reinterpret_cast<const uint4*>({w} + (long long)(n0 + r) * {k})[c];
    {src.bsm}[r * {kr // 16} + c] = v;
  }}"""

    def _projection_parts(self, acc_zero: str) -> Dict[str, object]:
        """The source of :attr:`projection` (empty strings without one): ``arrays`` (its
        weight rows and staged per-channel operands in shared memory), ``fill`` (the block
        filling them), ``align`` (x2's alignment flag), ``body`` (per m-tile: its K loop into
        ``acc``, its epilogue into the residual codes ``pr[j]`` -- byte 2 (ro / 8) + co is
        row g + ro, column 8 j + 2 t + co, as :meth:`_epilogue` reads a pair -- then ``acc``
        zeroed for the layer's own GEMM) and ``words`` (A words a lane holds a row)."""
        proj, src = self.projection, self._proj
        if proj is None:
            return {"arrays": "", "fill": "", "align": "", "body": "", "words": 0}
        nc, k2 = self.nc, src.k
        kr2 = smem_row(k2)
        arrays = f"\n  __shared__ uint4 bsp4[{nc * kr2 // 16}];" + "".join(
            f"\n  __shared__ float psm{i}[{nc}];" for i in self.proj_vecs)
        fill = "".join(
            f"\n  for (int c = threadIdx.x; c < {nc}; c += blockDim.x) "
            f"psm{i}[c] = c < cw ? {load_expr(proj.operand_modes[i][1], f'p{i}[n0 + c]')} : 0.f;"
            for i in self.proj_vecs)
        fill += "\n  " + self._weight_fill("w2", src)
        align = "\n  const bool x2al = (reinterpret_cast<unsigned long long>(x2) & 15ull) == 0ull;"
        loads = {}
        for i in self.proj_operands:
            dt = proj.operand_modes[i][1]
            loads[i] = f"psm{i}[cc]" if i in self.proj_vecs else load_expr(dt, f"p{i}[col]")
        stmts = "\n              ".join(S.epilogue_statements(list(proj.epilogue), loads, "v"))
        conv = "small_int_float" if k2 * 128 * 127 < SMALL_INT and not self.i2f \
            else "__int2float_rn"
        inv = S.float_literal(S.output_scale_inverse(proj.out_scale))
        vals = "\n            ".join(f"""{{
              const int cc = 8 * j + 2 * t + {co}, col = n0 + cc;
              float v = {conv}(acc[j][{r}]);
              {stmts}
              code |= (unsigned)(unsigned char)q_int8_fast(__fmul_rn(v, {inv}))
                  << {8 * (2 * (ro // 8) + co)};
              (void)col; (void)cc;
            }}""" for r, (ro, co) in enumerate(C_FRAG))
        k_src, words = self._k_src(src)
        rows = "const long long prow0 = row0, prow1 = row1;"
        if src.conv is not None:
            rows += "\n      " + self._conv_rows("prow", src.conv)
        body = f"""// the projection: its GEMM, its requantized codes kept as the residual
      {rows}
      unsigned pr[NT];
      {k_src}
      #pragma unroll
      for (int j = 0; j < NT; ++j) {{
        unsigned code = 0u;
        if (8 * j < cw) {{
            {vals}
        }}
        pr[j] = code;
      }}
      {acc_zero}"""
        return {"arrays": arrays, "fill": fill, "align": align, "body": body, "words": words}

    def _source(self, epilogue, operand_modes) -> str:
        n, k, nc = self.n, self.k, self.nc
        kr = smem_row(k)
        sr = stage_row(nc, self.y_dtype)
        # the K loop and the A words a lane holds per row: one block of K at a time
        k_src, words = self._k_src(self._main)
        ks = [k] + ([self._proj.k] if self._proj is not None else [])
        it = "long long"  # m is an argument: rows * N may pass 2**31 at a large batch
        params = ", ".join(f"{ty} __restrict__ {nm}" if ty.endswith("*") else f"{ty} {nm}"
                           for ty, nm in self.params)
        acc_t = "int" if self.fmt == S.INT8 else "float"
        helpers = FAST_INT8 if self.fast_int else S.INT8_HELPERS
        bounds = f"{self.threads}, {self.min_threads // self.threads}" \
            if self.min_threads >= self.threads else f"{self.threads}"
        if self.fmt == S.FP8:
            helpers += S.FP8_HELPERS
        loaders = (self._span_loader(16) if any(v >= 64 for v in ks) else "") + \
            (self._span_loader(8) if any(v % 64 for v in ks) else "")
        nt = nc // 8
        arrays, decls = [], []
        bufs = 2 if self.pipeline else 1
        for i, dt in self.full.items():
            rs = stage_row(nc, dt)
            arrays.append(f"__shared__ uint4 res{i}4[{bufs * self.warps * 16 * rs // 16}];")
            decls.append(f"constexpr int RS{i} = {rs};\n  unsigned char* rs{i} = "
                         f"reinterpret_cast<unsigned char*>(res{i}4) + warp * 16 * RS{i};")
            if self.pipeline:
                decls.append(f"unsigned char* rsn{i} = reinterpret_cast<unsigned char*>"
                             f"(res{i}4) + ({self.warps} + warp) * 16 * RS{i};")
        full_arrays, full_decl = "\n  ".join(arrays), "\n  ".join(decls)
        # the chunk's per-channel operands, float32 (0 past N: never stored)
        vec_arrays = "".join(f"\n  __shared__ float vsm{i}[{nc}];" for i in self.vecs)
        vec_fill = "\n  ".join(
            f"for (int c = threadIdx.x; c < {nc}; c += blockDim.x) "
            f"vsm{i}[c] = c < cw ? {load_expr(operand_modes[i][1], f'e{i}[n0 + c]')} : 0.f;"
            for i in self.vecs)
        wait = "cp_async_wait();\n      __syncwarp();" if self.full else ""
        if self.full:
            helpers += CP_ASYNC
        epi_src = f"""#pragma unroll
      for (int j = 0; j < NT; ++j) {{
        if (8 * j < cw) {{
          {self._epilogue(epilogue, operand_modes, it)}
        }}
      }}
      __syncwarp();
      {self._copy_out(it)}
      __syncwarp();  // the staging buffer is free for the next m-tile"""
        acc_zero = """#pragma unroll
      for (int j = 0; j < NT; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0;"""
        acc_init = f"{acc_t} acc[NT][4];\n      {acc_zero}"
        proj = self._projection_parts(acc_zero)
        if proj["words"]:
            words = max(words, proj["words"])
        rows_of = lambda m0, r: (  # noqa: E731
            f"const int {r}rows = (int)(m - {m0} < 16 ? m - {m0} : 16);\n"
            f"      const {it} {r}row0 = {m0} + g < m ? {m0} + g : m - 1;\n"
            f"      const {it} {r}row1 = {m0} + g + 8 < m ? {m0} + g + 8 : m - 1;")
        if not self.pipeline:
            tile_rows = self.warps * self.mt * 16
            loop = f"""const {it} tiles = (m + {tile_rows - 1}) / {tile_rows};
  const {it} stride = gridDim.x / {self.chunks};
  for ({it} bt = blockIdx.x / {self.chunks}; bt < tiles; bt += stride) {{
    for (int mi = 0; mi < {self.mt}; ++mi) {{
      const {it} m0 = ((bt * {self.warps} + warp) * {self.mt} + mi) * 16;
      if (m0 >= m) break;  // the same for the whole warp
      // the lane's rows g, g + 8 (a row past M reads the last one: never stored)
      {rows_of("m0", "")}
      {self._conv_rows() if self.conv is not None else ""}
      {self._copy_in()}
      unsigned a0[{words}], a1[{words}];
      {acc_init}
      {proj["body"]}
      {k_src}
      {wait}
      {epi_src}
    }}
  }}"""
        else:
            chunks, tl = divmod(k, 64)
            tl //= 32
            swaps = "\n        ".join(
                f"{{ unsigned char* p = rs{i}; rs{i} = rsn{i}; rsn{i} = p; }}"
                for i in self.full)
            commit = "cp_async_commit();" if self.full else ""
            wait_prior = "cp_async_wait_prior();\n      __syncwarp();" if self.full else ""
            loop = f"""// an m-tile a warp at a time, the next one loading meanwhile
  const {it} step = (gridDim.x / {self.chunks}) * {self.warps * 16};
  {it} m0 = ((blockIdx.x / {self.chunks}) * {self.warps} + warp) * 16;
  unsigned a0[{words}], a1[{words}];
  if (m0 < m) {{
      {rows_of("m0", "")}
      {self._copy_in()}
      {commit}
      {self._k_loads(chunks, tl, "0")}
  }}
  for (; m0 < m; m0 += step) {{
      {rows_of("m0", "")}
      {acc_init}
      {self._k_mmas(chunks, tl, "0")}
      const {it} m1 = m0 + step;
      unsigned b0[{words}], b1[{words}];
      if (m1 < m) {{
        {rows_of("m1", "n")}
        {self._copy_in("m1", "nrows", "rsn")}
        {self._k_loads(chunks, tl, "0", "b", "nrow")}
      }}
      {commit}
      {wait_prior}
      {epi_src}
      if (m1 < m) {{
        #pragma unroll
        for (int i = 0; i < {words}; ++i) {{ a0[i] = b0[i]; a1[i] = b1[i]; }}
        {swaps}
      }}
  }}"""
        return PRELUDE + helpers + MMA_HELPERS[self.fmt] + loaders + f"""
extern "C" __global__ void __launch_bounds__({bounds}) {KERNEL}({params}) {{
  constexpr int SR = {sr}, NT = {nt};
  __shared__ uint4 bsm4[{nc * kr // 16}];
  __shared__ uint4 stage4[{self.warps * 16 * sr // 16}];
  {full_arrays}{vec_arrays}{proj["arrays"]}
  const int chunk = (int)(blockIdx.x % {self.chunks});
  const int n0 = chunk * {nc};
  const int cw = {n} - n0 < {nc} ? {n} - n0 : {nc};  // this chunk's channels
  {vec_fill}{proj["fill"]}
  // the chunk's weight rows, zero rows past N (their products are never stored)
  {self._weight_fill("w", self._main)}
  __syncthreads();
  const int warp = threadIdx.x / {LANES}, lane = threadIdx.x % {LANES};
  const int g = lane >> 2, t = lane & 3;
  unsigned char* stg = reinterpret_cast<unsigned char*>(stage4) + warp * 16 * SR;
  {full_decl}
  const bool xal = (reinterpret_cast<unsigned long long>(x) & 15ull) == 0ull;{proj["align"]}
  const unsigned long long ya = reinterpret_cast<unsigned long long>(y);
  (void)ya;
  {loop}
}}
"""


def stage_vecs_default() -> bool:
    """``TFTRT_QUANT_MMA_STAGE_VECS`` (default on for kernels over an int8 x, where it was
    timed; 0 turns it off; a float x's kernels keep the global loads, two of them spilled
    with it): each block copies its chunk of the per-channel float epilogue operands (the
    dequantization scale, the bias) into shared memory once, and the epilogue reads a lane's
    pair of channels with one shared load per operand and n-tile, for both of its rows, where
    it read each value from global memory per row (4 loads and their address arithmetic per
    n-tile and operand) in every m-tile. The same values. Why: the kernel is bound by its issue
    slots in ResNet50's residual 1x1 convs (Nsight Compute, s39: 28.6 instructions an
    output); compiled for sm_90 (nvcc 13.0, s45), the stage-1 residual conv's m-tile loop
    has 1,146 instructions against 1,206 (32 outputs a lane), global loads 40 against 72.
    ptxas then gives two rarer sources (a float16-x 64 -> 64 conv, an FP8 one) a 4-byte
    spill at 64 / 72 registers. H100, s46 (results/qmma_knobs_h100_2026-12-07s46a.log): the
    stage-1 residual conv 111.1 us against 129.7, the projection 81.2 against 92.7 (139
    registers against 174: 3 blocks an SM), the stage-2 residual conv 68.4 against 73.0;
    with :func:`i2f_default`'s conversions, on by default with it, see there."""
    from tftrt.env import env_bool  # standard library only
    return env_bool("TFTRT_QUANT_MMA_STAGE_VECS", True)


def interleave_default() -> str:
    """``TFTRT_QUANT_MMA_INTERLEAVE``: "auto" (the default), "1" or "0". Where on, the MMAs of
    a block of K issue k first -- per 64-k chunk, every n-tile's MMA of the first 32 k, then
    every n-tile's of the second -- where they issue n-tile first, each n-tile's MMAs over the
    block back to back into one accumulator. The same sums in the same order. "auto": on for
    the pipelined kernels of K up to 64 (an int8 x), where it was timed faster. H100, s47,
    the same call, five runs each (results/qmma_ablate_h100_2026-12-07s47c.log): ResNet50's
    stage-1 residual 1x1 conv 107.1 us against 112.6 (79 registers either way; nvcc 13.0's
    ptxas spills 8 bytes there at the 80 registers of its three blocks an SM), and 5-8%
    faster in each of the four ablated runs; the stage-3 residual conv 58.4 against 58.1;
    the projection 86.7 against 84.3, the stage-1 3x3 conv 87.9 against 85.6 (134
    registers against 126: 3 blocks an SM). Why it was tried: Nsight Compute on the 3x3 conv
    (s47: "wait", a fixed-latency dependency, is its top stall) and its SASS (nvcc 13.0,
    sm_90), whose IMMAs often take the accumulator of the IMMA just before."""
    from tftrt.env import env_choice  # standard library only
    return env_choice("TFTRT_QUANT_MMA_INTERLEAVE", ("auto", "1", "0"), "auto")


def i2f_default() -> bool:
    """``TFTRT_QUANT_MMA_I2F`` (default on; 0 turns it off): an INT8
    epilogue converts its int32 accumulator with the conversion unit's I2F (one instruction)
    instead of :data:`FAST_INT8`'s ``small_int_float`` (an integer and a float addition on
    the FMA pipes). The same value (exact either way below 2**22). Why: the residual 1x1
    convs issue ~16 instructions an output in their epilogue (sm_90 SASS, nvcc 13.0, s46),
    and one conversion an output keeps the conversion unit (16 a clock an SM) under a
    quarter of ResNet50's stage-1 residual conv's time; s36's three conversions an output
    bounded it. Measured with :func:`res_cvt_default`'s half2 and the staged vectors (H100,
    s46, results/qmma_knobs_h100_2026-12-07s46a.log): the stage-1 residual conv 105.4 us
    against 111.1 with the vectors alone and 129.7 with neither, the stage-3 one 57.9 against
    69.2 and 58.3 (the vectors alone cost it a register: 129, one block an SM); ResNet50
    INT8 at batch 128 2.571 ms against 2.684 (all three off)."""
    from tftrt.env import env_bool  # standard library only
    return env_bool("TFTRT_QUANT_MMA_I2F", True)


def res_cvt_default() -> str:
    """``TFTRT_QUANT_MMA_RES_CVT`` (:data:`RES_CVT`; default "half2"): how a lane's pair of
    int8 residual codes (one 2-byte shared load) becomes two floats. "byte": two
    ``byte_float`` (a PRMT and a subtraction each, plus the PRMT selectors' registers nvcc
    rematerializes: seven instructions a pair, sm_90 SASS, nvcc 13.0); "half2": one
    ``bytes_float2`` (five a pair: a PRMT, an XOR, an f16x2 subtraction, two half -> float
    conversions). The same values. Timed with :func:`i2f_default` (its docstring has the
    numbers). A third way, each code sign-extended by PRMT's sign replication and converted
    by I2F, answered wrong on the GPU (``__byte_perm`` ignores the replication bit) and was
    no faster when it ran (107.1 us against 105.4): removed."""
    from tftrt.env import env_choice  # standard library only
    return env_choice("TFTRT_QUANT_MMA_RES_CVT", tuple(RES_CVT), "half2")


def enabled() -> bool:
    """``TFTRT_QUANT_MMA`` (default on; 0 turns it off): the CuPy backend offers tactic
    ``q_mma`` for the quantized GEMM layers the kernel takes, which the builder times against
    cuBLASLt and cuDNN (``q_lt`` / ``q_lt_1x1`` / ``q_cudnn``), so it runs a layer only where
    it is the fastest there, and only once the build-time validation passed. On since its
    first GPU runs (2026-12-06, H100 and H200: every output of ten ResNet50 1x1 convs at batch
    128 bit for bit the integer arithmetic's, its INT8 / FP8 GPU tests; ResNet50 INT8 at
    batch 128 on an H100 3.146 ms with it against 3.407 without it (2026-12-05), on an H200
    2.931 ms with residuals staged, FP16 2.978)."""
    from tftrt.env import env_bool  # standard library only
    return env_bool("TFTRT_QUANT_MMA", True)


def conv_geometry(x_shape, w_shape, y_shape, attrs) -> ConvGeometry:
    """The :class:`ConvGeometry` of a 2-D conv (x NHWC, w KRSC), or ValueError for one the
    implicit GEMM does not take (grouped, dilated, not 2-D, channels not a multiple of 64)."""
    x_shape, w_shape, y_shape = tuple(x_shape), tuple(w_shape), tuple(y_shape)
    if len(x_shape) != 4 or len(w_shape) != 4 or len(y_shape) != 4:
        raise ValueError("the tensor-core quantized conv takes 2-D convs")
    if attrs["group"] != 1 or any(d != 1 for d in attrs["dilations"]):
        raise ValueError("the tensor-core quantized conv takes no groups or dilations")
    _, h, w, c = (int(d) for d in x_shape)
    if int(w_shape[-1]) != c or c % 64:
        raise ValueError(f"the tensor-core quantized conv takes input channels a multiple of "
                         f"64, not {c}")
    (sh, sw), pads = (int(v) for v in attrs["strides"]), [int(v) for v in attrs["pads"]]
    return ConvGeometry(h, w, c, int(w_shape[1]), int(w_shape[2]), sh, sw, pads[0], pads[1],
                        int(y_shape[1]), int(y_shape[2]))


def conv_enabled() -> bool:
    """``TFTRT_QUANT_MMA_CONV`` (default on; 0 turns it off): the kernel also takes convs with
    taps as implicit GEMMs (:class:`ConvGeometry`)."""
    from tftrt.env import env_bool  # standard library only
    return env_bool("TFTRT_QUANT_MMA_CONV", True)


def _gemm_shape(net, layer, y_shape) -> Tuple[int, int, Optional[ConvGeometry]]:
    """(K, N, geometry) of a quantized layer's GEMM: one over its input's rows (geometry
    None), or a conv's implicit GEMM over y's pixels; ValueError for what the kernel does not
    take."""
    shape = lambda name: tuple(net.tensors[name].shape)  # noqa: E731
    x, w = layer.inputs[0], layer.inputs[1]
    dims = S.gemm_dims(layer.kind, shape(x), shape(w), layer.attrs)
    if dims is not None:
        return dims[1], dims[2], None
    if layer.kind != "conv":
        raise ValueError("not one GEMM over the input's rows (a transpose_a matmul)")
    geometry = conv_geometry(shape(x), shape(w), y_shape, layer.attrs)
    return geometry.r * geometry.s * geometry.c, int(shape(w)[0]), geometry


def layer_source(net, layer, proj=None) -> QMmaSource:
    """The :class:`QMmaSource` of a quantized conv / matmul layer of ``net``: one GEMM over
    its input's rows (a matmul without transpose_a, a 1x1 / stride-1 / unpadded conv), or a
    conv as an implicit GEMM (:func:`conv_geometry`); ValueError for what the kernel does not
    take (a transpose_a matmul, a grouped or dilated conv; K, N, dtypes).

    With a projection shortcut -- ``proj``, the layer of ``net`` whose int8 output ``layer``
    adds (quantization.fuse_projections asks before it fuses), or the one ``layer`` took
    (``attrs["projection"]``) -- the source runs it too (:class:`Projection`)."""
    from tftrt.engine import quantization as Q
    q = layer.attrs.get("quant")
    if q is None:
        raise ValueError("not a quantized layer")
    x, y = layer.inputs[0], layer.outputs[0]
    y_shape = tuple(net.tensors[y].shape)
    k, n, geometry = _gemm_shape(net, layer, y_shape)
    res, pnet = None, net
    if proj is not None:
        res = layer.inputs.index(proj.outputs[0])
    elif "projection" in layer.attrs:  # its input res names x2 now
        pnet, proj = Q.projection_layer(net, layer)
        res = int(layer.attrs["projection"]["residual"])
    projection = None
    if proj is not None:
        pq = proj.attrs.get("quant") or {}
        k2, n2, g2 = _gemm_shape(pnet, proj, y_shape)
        if n2 != n:
            raise ValueError(f"the projection's N {n2} is not the layer's {n}")
        projection = Projection(k2, proj.epilogue, S.layer_operand_modes(pnet, proj, y_shape),
                                pq.get("output_scale"), res, g2)
    dtype = lambda name: np.dtype(net.tensors[name].dtype).name  # noqa: E731
    return QMmaSource(n, k, q["format"], dtype(x), dtype(y), layer.epilogue,
                      S.layer_operand_modes(net, layer, y_shape),
                      float(Q.inv_scale(q["input_scale"])), q.get("output_scale"),
                      conv=geometry, projection=projection)


def packed_weights(layer, src: QMmaSource, weight) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """The kernel's weight [N, K] bytes of ``layer`` (``weight(name)``: a weight's host array)
    and, with a projection shortcut, the projection's [N, K2]."""
    w = S.gemm_weight(weight(layer.inputs[1]), layer.kind,
                      bool(layer.attrs.get("transpose_b")), src.k, src.n)
    d = layer.attrs.get("projection")
    if src.projection is None or d is None:
        return w, None
    w2 = S.gemm_weight(weight(layer.inputs[d["inputs_at"][1]]), d["kind"],
                       bool(d["attrs"].get("transpose_b")), src.projection.k, src.n)
    return w, w2


def launch_args(layer, src: QMmaSource, ins, w, w2, y) -> list:
    """The kernel's arguments in order: ``ins`` the layer's inputs by index (arrays), ``w`` /
    ``w2`` from :func:`packed_weights`, ``y`` the output; the projection's x2 and operands
    are among the layer's inputs where ``attrs["projection"]["inputs_at"]`` says."""
    args = [ins[0], w] + [ins[i] for i in src.operands]
    if src.projection is not None:
        at = layer.attrs["projection"]["inputs_at"]
        args += [ins[at[0]], w2] + [ins[at[j]] for j in src.proj_operands]
    return args + [y, np.int64(int(np.prod(y.shape[:-1])))]


def unsupported(net, layer) -> Optional[str]:
    """Why ``q_mma`` cannot run ``layer``, or None. Generates the source only: no GPU work."""
    if "quant" not in layer.attrs:
        return "not a quantized layer"
    if not enabled():
        return "off (TFTRT_QUANT_MMA=0)"
    try:
        src = layer_source(net, layer)
    except (ValueError, KeyError) as e:
        return str(e)
    y = net.tensors[layer.outputs[0]].shape
    macs = int(np.prod([int(d) for d in y[:-1]])) * src.k * src.n  # rows x K x N
    if src.conv is not None:
        if not conv_enabled():
            return "off for convs with taps (TFTRT_QUANT_MMA_CONV=0)"
        if src.conv.c > TACTIC_CONV_MAX_C and macs > TACTIC_SMALL and src.fmt == S.INT8:
            return (f"{src.conv.c} input channels > {TACTIC_CONV_MAX_C} in a conv of "
                    f"{macs:.3g} multiply-adds: cuDNN's int8 convs are fast there "
                    f"(TACTIC_CONV_MAX_C)")
    elif src.k > TACTIC_MAX_K and macs > TACTIC_SMALL:
        return (f"K {src.k} > {TACTIC_MAX_K} in a GEMM of {macs:.3g} multiply-adds: "
                f"compute-bound enough for cuDNN / cuBLASLt (TACTIC_MAX_K)")
    return None
