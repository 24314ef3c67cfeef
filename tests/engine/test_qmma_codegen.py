"""The INT8 / FP8 tensor-core GEMM's CUDA source (backends/cuda_source_qmma, tactic ``q_mma``),
checked without a GPU: it compiles for sm_90 with nvcc without register spills for ResNet50's
1x1 convs, and built for the host it computes what the numpy backend computes (x quantized as
``quantization.py`` does, the exact integer GEMM, the float32 epilogue of
``test_quant_codegen``'s reference, int8 requantization) bit for bit in INT8 and within
fp32 summation order in FP8, for int8 / float16 / float32 x, int8 / float16 / float32 y, K
with and without a last 32-wide chunk, chunks of channels of which the last is partial, row
counts no tile divides, a capped grid that loops, and x / y not 16-byte aligned -- also
in a build whose uint4 / uint2 are aligned as in CUDA with every misaligned access trapped
(x86 loads any address; the GPU faults) -- and, from a network's layer, what
``cupy_quant.QuantGemmMma`` passes the kernel (matmul with and without transpose_b, a 1-D x,
a 1x1 conv) against the numpy backend.

Host builds run each block as its 128 threads (tests/engine/test_dw_codegen's thread shims)
with ``mma_16832`` emulated by a warp exchange (tests/engine/test_stem_mma_codegen's warp
barrier): each lane assembles A and B from all 32 lanes' registers with the PTX ISA's
per-element formulas for m16n8k32 with 8-bit types, written here from the ISA, independently
of the generator's tables.
"""

import importlib
import multiprocessing
import re
import shutil
import subprocess

import numpy as np
import pytest

from tests.engine.test_cuda_codegen import HOST_SHIMS, _host_compiler, nvcc_compile
from tests.engine.test_dw_codegen import THREAD_SHIMS, _build, _run_host
from tests.engine.test_quant_codegen import QUANT_SHIMS, _epilogue_reference
from tests.engine.test_stem_mma_codegen import MMA_SHIMS, _driver
from tftrt.engine import quantization as Q
from tftrt.engine.backends import cuda_source as C
from tftrt.engine.backends import cuda_source_qmma as QM
from tftrt.engine.backends import cuda_source_quant as S


# --- the fragment layout -----------------------------------------------------------------------
# PTX ISA, "Matrix Fragments for mma.m16n8k32" (.s8 / .u8 / .e4m3): lane = 4 g + t; per element
# i of a thread's fragment (4 a byte register, low byte first), its (row, column).
def _isa_a(i, g, t):   # A, 16 x 32: a0..a15 in four registers
    row = g if i < 4 or 8 <= i < 12 else g + 8
    return row, 4 * t + (i & 3) + (16 if i >= 8 else 0)


def _isa_b(i, g, t):   # B, 32 x 8 (k, n): b0..b7 in two registers
    return 4 * t + (i & 3) + (16 if i >= 4 else 0), g


def _isa_c(i, g, t):   # C / D, 16 x 8: c0..c3
    return (g if i < 2 else g + 8), 2 * t + (i & 1)


def test_the_generators_fragment_tables_are_the_isas():
    for lane in range(32):
        g, t = lane >> 2, lane & 3
        for r, (ro, ko) in enumerate(QM.A_FRAG):
            assert [_isa_a(4 * r + b, g, t) for b in range(4)] == \
                [(g + ro, 4 * t + ko + b) for b in range(4)]
        for r, ko in enumerate(QM.B_FRAG):
            assert [_isa_b(4 * r + b, g, t) for b in range(4)] == \
                [(4 * t + ko + b, g) for b in range(4)]
        for r, (ro, co) in enumerate(QM.C_FRAG):
            assert _isa_c(r, g, t) == (g + ro, 2 * t + co)


@pytest.mark.parametrize("kk", [32, 64, 96, 256])
def test_every_column_of_k_feeds_one_place_of_one_mma(kk):
    """fragment_k maps K's columns one to one onto (k step, k of the step): each product is
    summed once."""
    places = [QM.fragment_k(k, kk) for k in range(kk)]
    assert len(set(places)) == kk
    assert {s for s, _ in places} == set(range(kk // 32))
    assert all(0 <= j < 32 for _, j in places)


# the ISA formulas above, as C for the host build's MMA (int8 and E4M3; the warp exchange and
# barrier of test_stem_mma_codegen)
MMA8_SHIMS = r"""
static unsigned q8_a[32][32][4], q8_b[32][32][2];
static void q8_post(unsigned a0, unsigned a1, unsigned a2, unsigned a3, unsigned b0,
                    unsigned b1) {
  const unsigned w = threadIdx.x / 32, lane = threadIdx.x % 32;
  q8_a[w][lane][0] = a0; q8_a[w][lane][1] = a1; q8_a[w][lane][2] = a2; q8_a[w][lane][3] = a3;
  q8_b[w][lane][0] = b0; q8_b[w][lane][1] = b1;
  wp_barrier();
}
static unsigned q8_byte(unsigned reg, int i) { return (reg >> (8 * (i & 3))) & 0xffu; }
template <typename T, typename F> static void q8_mma(T* c, F value) {
  const unsigned w = threadIdx.x / 32, lane = threadIdx.x % 32;
  double A[16][32], B[32][8];
  for (int l = 0; l < 32; ++l) {
    const int g = l >> 2, t = l & 3;
    for (int i = 0; i < 16; ++i) {
      const int row = (i < 4 || (i >= 8 && i < 12)) ? g : g + 8;
      A[row][4 * t + (i & 3) + (i >= 8 ? 16 : 0)] = value(q8_byte(q8_a[w][l][i / 4], i));
    }
    for (int i = 0; i < 8; ++i)
      B[4 * t + (i & 3) + (i >= 4 ? 16 : 0)][g] = value(q8_byte(q8_b[w][l][i / 4], i));
  }
  const int g = lane >> 2, t = lane & 3;
  for (int i = 0; i < 4; ++i) {
    const int row = i < 2 ? g : g + 8, col = 2 * t + (i & 1);
    double s = 0;
    for (int k = 0; k < 32; ++k) s += A[row][k] * B[k][col];
    c[i] = (T)(c[i] + (T)s);
  }
  wp_barrier();  // every lane has read the exchange before the next MMA writes it
}
static void mma_16832(int* c, unsigned a0, unsigned a1, unsigned a2, unsigned a3,
                      unsigned b0, unsigned b1) {
  q8_post(a0, a1, a2, a3, b0, b1);
  q8_mma(c, [](unsigned v) { return (double)(signed char)v; });
}
static void mma_16832(float* c, unsigned a0, unsigned a1, unsigned a2, unsigned a3,
                      unsigned b0, unsigned b1) {
  q8_post(a0, a1, a2, a3, b0, b1);
  q8_mma(c, [](unsigned v) { return (double)e4m3_value((unsigned char)v); });
}
"""

FAST_SHIMS = r"""
static inline int __float_as_int(float f) { int i; memcpy(&i, &f, 4); return i; }
static inline float __fsub_rn(float a, float b) { volatile float r = a - b; return r; }
"""


def test_the_fast_conversions_are_the_conversions(tmp_path):
    """q_int8_fast is q_int8 and small_int_float is (float) below 2**22, bit for bit, over
    every rounding tie and boundary, NaN, infinities, signed zeros and a million random
    floats / ints."""
    if _host_compiler() is None:
        pytest.skip("no host C++ compiler")
    text = (HOST_SHIMS + C.MATH_HELPERS + QUANT_SHIMS + S.INT8_HELPERS + FAST_SHIMS +
            QM.FAST_INT8 + r"""
extern "C" long long qcheck(const float* v, long long n, const int* iv, long long ni) {
  long long bad = 0;
  for (long long i = 0; i < n; ++i) bad += q_int8_fast(v[i]) != q_int8(v[i]);
  for (long long i = 0; i < ni; ++i) {
    const float a = small_int_float(iv[i]), b = (float)iv[i];
    bad += memcmp(&a, &b, 4) != 0;
  }
  return bad;
}""")
    import ctypes
    lib = _build(text, tmp_path, "fastconv")
    lib.qcheck.restype = ctypes.c_longlong
    rng = np.random.default_rng(3)
    ties = np.arange(-300, 301, dtype=np.float32) / np.float32(2)
    near = np.concatenate([np.nextafter(ties, np.float32(np.inf)),
                           np.nextafter(ties, np.float32(-np.inf))])
    special = np.array([np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0, 126.5, 127.5, -127.5,
                        -128.5, 1e30, -1e30, 2.0 ** 31, -(2.0 ** 31), 1e-40, -1e-40],
                       np.float32)
    v = np.concatenate([ties, near, special, (rng.standard_normal(10 ** 6) * 80)
                        .astype(np.float32)]).astype(np.float32)
    iv = np.concatenate([np.arange(-(1 << 22) + 1, -(1 << 22) + 1000),
                         np.arange(-5000, 5000), np.arange((1 << 22) - 1000, 1 << 22),
                         rng.integers(-(1 << 22) + 1, 1 << 22, 10 ** 6)]).astype(np.int32)
    ptr = lambda a: a.ctypes.data_as(ctypes.c_void_p)  # noqa: E731
    assert lib.qcheck(ptr(v), len(v), ptr(iv), len(iv)) == 0
    # and it can fail: (float) of 2**22 + 1 is not what the trick gives past its range
    big = np.array([(1 << 22) + 1, -(1 << 22) - 3], np.int32)
    assert lib.qcheck(ptr(v[:0]), 0, ptr(big), 2) == 2


def test_the_paired_epilogue_helpers_are_the_conversions(tmp_path):
    """byte_float is (float)(signed char) of either byte of every 2-byte pair, prmt(q0, q1,
    0x40) packs the two codes' low bytes, and relu_int8_bits is q_int8_fast of relu(v) times
    the inverse scale, bit for bit, over every rounding tie, NaN, infinities, signed zeros
    and a million random floats."""
    if _host_compiler() is None:
        pytest.skip("no host C++ compiler")
    inv = S.float_literal(np.float32(25.0))
    text = (HOST_SHIMS + C.MATH_HELPERS + QUANT_SHIMS + S.INT8_HELPERS + FAST_SHIMS +
            QM.FAST_INT8 + r"""
extern "C" long long pcheck(const float* v, long long n) {
  long long bad = 0;
  for (unsigned p = 0; p < 65536u; ++p) {
    for (unsigned co = 0; co < 2; ++co) {
      const float a = byte_float(p, co), b = (float)(signed char)(p >> (8 * co));
      bad += memcmp(&a, &b, 4) != 0;
    }
    const unsigned q0 = 0x4B400000u | (p & 0xFF), q1 = 0x4B400000u | (p >> 8);
    bad += (prmt(q0, q1, 0x40u) & 0xFFFFu) != p;
  }
  for (long long i = 0; i < n; ++i) {
    const float x = v[i], r = x < 0 ? 0.f : x;   // the kernels' relu: NaN stays NaN
    const signed char want = q_int8_fast(__fmul_rn(r, """ + inv + r"""));
    bad += (signed char)(""" + QM.relu_int8_bits("x", inv) + r""" & 0xFFu) != want;
  }
  return bad;
}""")
    import ctypes
    lib = _build(text, tmp_path, "paircheck")
    lib.pcheck.restype = ctypes.c_longlong
    ties = np.arange(-600, 601, dtype=np.float32) / np.float32(50)   # codes' halves / 25
    special = np.array([np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0, 5.1, 5.08, 1e30, -1e30,
                        1e-40, -1e-40], np.float32)
    rng = np.random.default_rng(5)
    v = np.concatenate([ties, np.nextafter(ties, np.float32(np.inf)),
                        np.nextafter(ties, np.float32(-np.inf)), special,
                        (rng.standard_normal(10 ** 6) * 4).astype(np.float32)])
    v = np.ascontiguousarray(v, np.float32)
    assert lib.pcheck(v.ctypes.data_as(ctypes.c_void_p), len(v)) == 0


def test_the_residual_pair_conversions_are_the_conversions(tmp_path):
    """Every way of turning a lane's 2-byte pair of int8 residual codes into floats ahead of
    the epilogue (:data:`QM.RES_CVT`: bytes_float2's half2) gives (float)(signed char) of
    each byte, bit for bit, for all 65,536 pairs; the host PRMT, like ``__byte_perm``, takes
    a selector nibble's low 3 bits only."""
    if _host_compiler() is None:
        pytest.skip("no host C++ compiler")
    ways = {name: stmt.format(i=4) for name, stmt in QM.RES_CVT.items() if stmt}
    assert set(ways) == {"half2"}
    body = "".join(f"""
    {{
      const unsigned rp4 = p;
      {stmt}
      const float want0 = (float)(signed char)p, want1 = (float)(signed char)(p >> 8);
      bad[{k}] += memcmp(&rf4_0, &want0, 4) != 0 || memcmp(&rf4_1, &want1, 4) != 0;
    }}""" for k, stmt in enumerate(ways.values()))
    text = (HOST_SHIMS + C.MATH_HELPERS + QUANT_SHIMS + S.INT8_HELPERS + FAST_SHIMS +
            QM.FAST_INT8 + r"""
extern "C" void rcheck(long long* bad) {
  for (unsigned p = 0; p < 65536u; ++p) {""" + body + r"""
  }
  bad[1] = prmt(0x80u, 0u, 0x8880u) != 0x80808080u || prmt(0x8100u, 0u, 0x9991u) != 0x81818181u;
}""")
    import ctypes
    lib = _build(text, tmp_path, "rescvt")
    bad = (ctypes.c_longlong * 2)()
    lib.rcheck(bad)
    assert list(bad) == [0, 0], dict(zip(list(ways) + ["prmt"], bad))


RES = {"op": "add", "input": 4, "scale": 0.0371}
# (M, N, K, fmt, x dtype, y dtype, epilogue ("res8": an int8 residual, "res": one of y's float
#  dtype), activation, x / y offset in elements (0: 16-byte aligned), max blocks)
CASES = [
    (37, 256, 64, S.INT8, "int8", "int8", "res8", "relu", 0, None),     # stage-1 conv3
    (50, 64, 256, S.INT8, "float16", "int8", "", "relu", 0, None),      # stage-1 conv1
    (21, 24, 96, S.INT8, "float32", "float16", "res", "clip", 0, None),  # tail k, 16 + 8
    (40, 256, 64, S.INT8, "float16", "int8", "", None, 0, 2),           # projection, looping
    (19, 16, 128, S.INT8, "int8", "int8", "res8", "relu", 1, None),     # unaligned x and y
    (23, 40, 32, S.FP8, "float16", "float16", "", "gelu", 0, None),     # FP8, one k step
    (33, 136, 64, S.FP8, "float32", "float32", "res", None, 3, None),   # FP8, 128 + 8
    (1, 8, 32, S.INT8, "int8", "int8", "res8", None, 0, None),          # one row, N 8
    (70, 48, 224, S.INT8, "float16", "int8", "res8", "relu", 0, 1),     # int8 uint4 stores, 32+16
    (17, 200, 256, S.INT8, "float32", "float32", "res", "relu", 0, None),  # K 256: 64-wide chunks
    (29, 40, 544, S.INT8, "float16", "int8", "res8", "relu", 0, None),  # two K blocks + 32
    (18, 24, 320, S.FP8, "float32", "float16", "", "gelu", 1, None),    # FP8, K blocks 256 + 64
    (35, 64, 2048, S.INT8, "int8", "int8", "", "relu", 0, 3),           # stage-4 conv1's K
    # thin K (MobileNetV2's expansions of 16 / 24 channels): one zero-padded step of 32
    (41, 96, 16, S.INT8, "int8", "int8", "", "clip", 0, None),
    (27, 144, 24, S.INT8, "float16", "int8", "", "clip", 0, 2),
    (30, 40, 24, S.INT8, "int8", "float16", "res8", "relu", 1, None),   # rows 8-byte aligned only
    (19, 16, 8, S.FP8, "float32", "float32", "", None, 0, None),
    (37, 48, 144, S.INT8, "int8", "int8", "", "clip", 0, None),         # 2 chunks + 16 of 32
    (33, 24, 112, S.INT8, "float16", "int8", "res8", None, 0, None),    # 48 of the last chunk
    (21, 32, 240, S.INT8, "int8", "float16", "", "relu", 0, 2),         # in a block of 256
    (25, 40, 80, S.FP8, "float16", "float16", "", "gelu", 0, None),
    (26, 24, 48, S.FP8, "float32", "float32", "", None, 0, None),       # 48 of one chunk
]
ACTS = {"relu": {"op": "act", "fn": "relu"},
        "clip": {"op": "act", "fn": "clip", "min": 0.0, "max": 6.0},
        "gelu": {"op": "act", "fn": "gelu", "approximate": "tanh"}}


def _spec(case):
    """(epilogue, operand modes) of a case: dequantization scale and bias per channel, then
    its residual and activation."""
    m, n, k, fmt, xdt, ydt, res, act, _, _ = case
    epi = [{"op": "scale", "input": 2}, {"op": "bias", "input": 3}]
    modes = {2: ("vec", "float32"), 3: ("vec", "float32")}
    if res == "res8":
        epi.append(dict(RES))
        modes[4] = ("full", "int8")
    elif res:
        epi.append({"op": "add", "input": 4})
        modes[4] = ("full", ydt)
    if act:
        epi.append(dict(ACTS[act]))
    return epi, modes


INV_X, OUT_SCALE = 4.0, 0.05


def _source(case, pipeline=False) -> QM.QMmaSource:
    """The plain loop unless ``pipeline`` (the pipelined one has its own tests)."""
    m, n, k, fmt, xdt, ydt, *_ = case
    epi, modes = _spec(case)
    return QM.QMmaSource(n, k, fmt, xdt, ydt, epi, modes, INV_X,
                         OUT_SCALE if ydt == "int8" else None, pipeline=pipeline)


def _inputs(case, seed):
    """x (spanning the quantized range, some saturating), the weight codes [N, K], and the
    epilogue operands {index: array}."""
    m, n, k, fmt, xdt, ydt, res, *_ = case
    rng = np.random.default_rng(seed)
    if xdt == "int8":
        x = rng.integers(-127, 128, (m, k)).astype(np.int8)
    else:
        x = (rng.uniform(-1.05, 1.05, (m, k)) * 127 / INV_X).astype(xdt)
        if fmt == S.FP8:
            x = (rng.standard_normal((m, k)) * 8).astype(xdt)
    if fmt == S.INT8:
        w = rng.integers(-127, 128, (n, k)).astype(np.int8)
    else:
        w = Q.e4m3_encode(rng.standard_normal((n, k)).astype(np.float32) * 4)
    ops = {2: rng.uniform(1e-4, 1e-3, n).astype(np.float32),
           3: rng.standard_normal(n).astype(np.float32)}
    if res == "res8":
        ops[4] = rng.integers(-127, 128, (m, n)).astype(np.int8)
    elif res:
        ops[4] = rng.standard_normal((m, n)).astype(ydt)
    return x, w, ops


def _want(case, x, w, ops):
    m, n, k, fmt, xdt, ydt, *_ = case
    epi, _ = _spec(case)
    if fmt == S.INT8:
        q = x.astype(np.int64) if xdt == "int8" else \
            Q.quantize_int8(x.astype(np.float32), INV_X).astype(np.int64)
        acc = (q @ w.astype(np.int64).T).astype(np.int32)
    else:
        q = Q.round_e4m3(x.astype(np.float32) * np.float32(INV_X)).astype(np.float64)
        acc = (q @ Q.e4m3_decode(w).astype(np.float64).T).astype(np.float32)
    return _epilogue_reference(acc, n, n, epi, ops, ydt,
                               OUT_SCALE if ydt == "int8" else None)


def _strip(src: str, k: int) -> str:
    for block in (C.PRELUDE, S.INT8_HELPERS, S.FP8_HELPERS, QM.CP_ASYNC, QM.FAST_INT8) + \
            tuple(QM.MMA_HELPERS.values()):
        src = src.replace(block, "")
    src = re.sub(r"\bspan(16|8)\(", rf"span\1_{k}(", src)
    return re.sub(rf"\b{QM.KERNEL}\(", f"{QM.KERNEL}_{k}(", src)


def _host_text(srcs=None) -> str:
    """Kernels and drivers (``run_<k>``) of ``srcs`` (default: every case's) with the host
    shims, as one C++ source."""
    srcs = [_source(case) for case in CASES] if srcs is None else srcs
    return (HOST_SHIMS + THREAD_SHIMS + MMA_SHIMS + C.MATH_HELPERS + QUANT_SHIMS +
            S.INT8_HELPERS + S.E4M3_VALUE + MMA8_SHIMS + QM.CP_ASYNC + FAST_SHIMS +
            QM.FAST_INT8 +
            "\n".join(_strip(s.source, k) + _driver(s, k, QM.KERNEL)
                      for k, s in enumerate(srcs)))


@pytest.fixture(scope="module")
def host_kernels(tmp_path_factory):
    if _host_compiler() is None:
        pytest.skip("no host C++ compiler")
    return [_source(case) for case in CASES], _build(_host_text(),
                                                     tmp_path_factory.mktemp("qmma"), "qmma")


def _offset_view(a: np.ndarray, offset: int, fill) -> np.ndarray:
    """``a``'s values in a buffer ``offset`` elements past a 16-byte boundary."""
    buf = np.full(a.size + offset + 16, fill, a.dtype)
    start = (-buf.ctypes.data % 16) // a.itemsize + offset
    v = buf[start:start + a.size].reshape(a.shape)
    v[...] = a
    return v


def _run(so, k, src, case, m, seed):
    case = (m,) + tuple(case[1:])
    x, w, ops = _inputs(case, seed)
    offset, max_blocks = case[8], case[9]
    x = _offset_view(x, offset, 0)
    want = _want(case, x, w, ops)
    poison = -128 if src.y_dtype == "int8" else np.nan
    y = _offset_view(np.zeros(want.shape, src.y_dtype), offset, poison)
    y[...] = poison
    if src.k > w.shape[1]:  # a thin K: the weight zero-padded to the kernel's step
        w = np.pad(w, ((0, 0), (0, src.k - w.shape[1])))
    args = [x, w] + [ops[i] for i in src.operands] + [y, m]
    blocks = src.grid(m, max_blocks)
    _run_host(so, k, args, blocks, src.threads)
    return y, want, blocks


@pytest.mark.parametrize("k", range(len(CASES)))
def test_host_build_matches_numpy(host_kernels, k):
    """A case's kernel, its blocks of 128 threads with the emulated MMA, against the numpy
    arithmetic: every output written; INT8 bit for bit; FP8 within fp32 summation order."""
    srcs, so = host_kernels
    case, src = CASES[k], srcs[k]
    y, want, blocks = _run(so, k, src, case, case[0], seed=k)
    what = f"case {k} {case}, {blocks} blocks"
    if src.y_dtype == "int8":
        assert (y != -128).all(), f"{what}: outputs not written"
    else:
        assert not np.isnan(y.astype(np.float64)).any(), f"{what}: outputs not written"
    _assert_matches(src, y, want, what)


def _assert_matches(src, y, want, what) -> None:
    """INT8 bit for bit; FP8 within fp32 summation order."""
    if src.fmt == S.INT8:
        np.testing.assert_array_equal(y, want, err_msg=what)
    else:
        got, ref = y.astype(np.float64), want.astype(np.float64)
        tol = 2.0 ** -10 * np.abs(ref) + 1e-5 * np.abs(ref).max()
        assert (np.abs(got - ref) <= tol).all(), what


@pytest.mark.parametrize("k,m", [(0, 5), (1, 129), (3, 300)])
def test_one_source_serves_every_row_count(host_kernels, k, m):
    """M is the kernel's argument: one source (an optimization profile's engines compile it
    once) computes any row count, a part tile and several block tiles."""
    srcs, so = host_kernels
    y, want, _ = _run(so, k, srcs[k], CASES[k], m, seed=50 + k)
    np.testing.assert_array_equal(y, want)


# The host shims' uint4 / uint2 are 4-byte aligned and x86 loads anything, so the cases whose x /
# y sit off a 16-byte boundary could not catch a 16-byte vector access at a misaligned address,
# which faults on the GPU. This build gives them CUDA's alignment (16 / 8) and traps every
# misaligned access (-fsanitize=alignment), in a child process: the trap aborts it.
def _aligned_build(text: str, tmp_path):
    text = text.replace("struct uint4 { unsigned int x, y, z, w; };",
                        "struct alignas(16) uint4 { unsigned int x, y, z, w; };")
    text = text.replace("struct uint2 { unsigned int x, y; };",
                        "struct alignas(8) uint2 { unsigned int x, y; };")
    assert "alignas(16) uint4" in text and "alignas(8) uint2" in text
    cpp, lib = tmp_path / "qmma_aligned.cpp", tmp_path / "qmma_aligned.so"
    cpp.write_text(text)
    r = subprocess.run([_host_compiler(), "-O1", "-std=c++17", "-shared", "-fPIC", "-pthread",
                        "-ffp-contract=off", "-Wno-unknown-pragmas", "-fsanitize=alignment",
                        "-fno-sanitize-recover=alignment", "-o", str(lib), str(cpp)],
                       capture_output=True, text=True, timeout=900)
    return lib if r.returncode == 0 else None


def _run_aligned(lib: str, queue) -> None:
    import ctypes
    so = ctypes.CDLL(lib)
    bad = []
    for k, case in enumerate(CASES):
        src = _source(case)
        y, want, _ = _run(so, k, src, case, case[0], seed=100 + k)
        if src.fmt == S.INT8 and not np.array_equal(y, want):
            bad.append(k)
    queue.put(bad)


def test_no_vector_access_is_misaligned(tmp_path):
    """Every case (x / y 16-byte aligned or not) with uint4 / uint2 aligned as in CUDA and
    every misaligned access trapped: the kernel takes its 16- / 8-byte paths only where the
    addresses allow them."""
    if _host_compiler() is None:
        pytest.skip("no host C++ compiler")
    lib = _aligned_build(_host_text(), tmp_path)
    if lib is None:
        pytest.skip("the host compiler has no alignment sanitizer")
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    p = ctx.Process(target=_run_aligned, args=(str(lib), queue))
    p.start()
    p.join(600)
    assert p.exitcode == 0, "a misaligned vector access (the sanitizer's report is above)"
    assert queue.get(timeout=5) == []


# --- the layer -> kernel path of QuantGemmMma, on the host ------------------------------------
# What cupy_quant.QuantGemmMma passes the kernel for a network's layer -- layer_source's source,
# gemm_weight's [N, K] weight (transpose_b or not, a 1x1 conv's KRSC), the epilogue operands in
# source order, the rows of every leading dim -- against the numpy backend's _quantized_gemm.
def _gemm_net(kind, x_shape, k, n, precision, transpose_b=False, residual=False):
    from tftrt.engine.network import Network
    from tftrt.engine.precision import apply_precision
    rng = np.random.RandomState(1)
    net = Network("gemm")
    net.inputs, net.outputs = ["x"] + (["r"] if residual else []), ["y"]
    y_shape = tuple(x_shape[:-1]) + (n,)
    net.add_tensor("x", "float32", x_shape)
    if residual:
        net.add_tensor("r", "float32", y_shape)
    if kind == "conv":
        w = net.add_weight(rng.randn(n, 1, 1, k).astype(np.float32), "w")
        attrs = {"strides": [1, 1], "dilations": [1, 1], "pads": [0, 0, 0, 0], "group": 1}
    else:
        w = net.add_weight(rng.randn(*((n, k) if transpose_b else (k, n))).astype(np.float32),
                           "w")
        attrs = {"transpose_b": transpose_b}
    b = net.add_weight(rng.randn(n).astype(np.float32), "b")
    layer = net.add_layer(kind, ["x", w, b] + (["r"] if residual else []), ["y"], attrs)
    layer.epilogue = [{"op": "bias", "input": 2}] + \
        ([{"op": "add", "input": 3}] if residual else []) + [{"op": "act", "fn": "relu"}]
    net.tensors["y"].dtype, net.tensors["y"].shape = "float32", y_shape
    return apply_precision(net, precision, Q.new_table(tensors={"x": 2.0}))


GEMM_NETS = [("matmul", (4, 7, 64), 64, 32, False, False),
             ("matmul", (4, 7, 64), 64, 32, True, True),
             ("matmul", (96,), 96, 40, True, False),      # a 1-D x: one row
             ("conv", (2, 5, 3, 96), 96, 136, False, True),
             ("matmul", (3, 128), 128, 24, False, False),
             ("conv", (2, 7, 3, 24), 24, 144, False, False)]   # a thin K: padded to 32


@pytest.mark.parametrize("precision", ["INT8", "FP8"])
def test_the_layers_kernel_computes_what_the_numpy_backend_does(tmp_path, precision,
                                                               monkeypatch):
    monkeypatch.setenv("TFTRT_QUANT_MMA", "1")
    if _host_compiler() is None:
        pytest.skip("no host C++ compiler")
    nets = [_gemm_net(kind, xs, k, n, precision, tb, res) for kind, xs, k, n, tb, res in GEMM_NETS]
    srcs = []
    for net in nets:
        (layer,) = net.layers
        assert QM.unsupported(net, layer) is None
        srcs.append(QM.layer_source(net, layer))
    for net, src in zip(nets, srcs):   # src.k: K padded to the kernel's steps
        assert src.kx == S.gemm_dims(net.layers[0].kind, net.tensors["x"].shape,
                                     net.tensors[net.layers[0].inputs[1]].shape,
                                     net.layers[0].attrs)[1]
    _layers_match_numpy(_build(_host_text(srcs), tmp_path, "qmma_layers"), nets, srcs,
                        precision, GEMM_NETS, seed=5)


def _layers_match_numpy(so, nets, srcs, precision, labels, seed):
    """Each one-layer ``nets[k]``'s kernel (case ``k`` of host build ``so``), given what
    QuantGemmMma gives it -- gemm_weight's [N, K] rows padded to ``src.k``, the epilogue
    operands in source order, the output's rows -- against the numpy backend: INT8 bit for
    bit, FP8 within fp32 summation order."""
    from tftrt.engine.backends import numpy_backend as NB
    rng = np.random.default_rng(seed)
    for k, (net, src) in enumerate(zip(nets, srcs)):
        (layer,) = net.layers
        ins = [np.asarray(net.weights[t]) if t in net.weights else
               rng.standard_normal(net.tensors[t].shape).astype(net.tensors[t].dtype)
               for t in layer.inputs]
        want = NB._quantized_gemm(net, layer, net.weights)(ins)[0]
        w = S.gemm_weight(net.weights[layer.inputs[1]], layer.kind,
                          bool(layer.attrs.get("transpose_b")), src.k, src.n)
        m = int(np.prod(want.shape[:-1]))
        y = np.full(want.shape, np.nan, want.dtype)
        _run_host(so, k, [ins[0], w] + [ins[i] for i in src.operands] + [y, m], src.grid(m),
                  src.threads)
        what = f"{precision} {labels[k]}"
        if precision == "INT8":
            np.testing.assert_array_equal(y, want, err_msg=what)
        else:
            np.testing.assert_allclose(y, want, rtol=2.0 ** -10,
                                       atol=1e-5 * float(np.abs(want).max()), err_msg=what)


def test_cases_cover_what_the_kernel_takes():
    srcs = [_source(case) for case in CASES]
    assert {s.x_dtype for s in srcs} == set(QM._X_DTYPES)
    assert {s.y_dtype for s in srcs} == set(QM._Y_DTYPES)
    assert {s.fmt for s in srcs} == {S.INT8, S.FP8}
    assert {s.k % 64 for s in srcs} == {0, 32}
    assert any(s.chunks > 1 and s.n % s.nc for s in srcs)   # a partial last chunk
    assert any(c[9] for c in CASES) and any(c[8] for c in CASES)
    assert any(c[0] % 16 for c in CASES)
    assert {s.k // QM.KB for s in srcs} >= {0, 1, 2, QM.MAX_K // QM.KB}   # blocks of K
    assert any(s.k > QM.KB and s.k % QM.KB for s in srcs)


def test_what_the_kernel_refuses():
    ok = dict(n=64, k=64, fmt=S.INT8, x_dtype="int8", y_dtype="float16", epilogue=[],
              operand_modes={})
    QM.QMmaSource(**ok)
    for change, match in [
            (dict(k=40), "K of 8, 16, 24 or a multiple of 16 up to 2048, not 40"),
            (dict(k=12), "K of 8, 16, 24 or a multiple of 16 up to 2048, not 12"),
            (dict(k=2080), "K of 8, 16, 24 or a multiple of 16 up to 2048, not 2080"),
            (dict(n=12), "N a multiple of 8, not 12"),
            (dict(fmt=S.FP8), "int8 x in INT8"),
            (dict(x_dtype="float64"), "not float64"),
            (dict(y_dtype="int8"), "needs its output scale"),
            (dict(operand_modes={2: ("general", "float32")}), "broadcast 'general'")]:
        with pytest.raises(ValueError, match=match):
            QM.QMmaSource(**dict(ok, **change))


def test_shared_memory_rows_are_bank_conflict_free_and_fit():
    for k in range(32, QM.MAX_K + 1, 32):
        r = QM.smem_row(k)
        assert r >= k and r % 128 == 64
        for ydt in QM._Y_DTYPES:
            nc = QM.chunk_width(256, k, ydt)
            assert nc in QM.NC_CHOICES and QM.smem_bytes(nc, k, ydt) <= QM.SMEM_LIMIT


# --- compiling -------------------------------------------------------------------------------
# ResNet50's quantized 1x1 convs (K, N, x dtype, y dtype, residual) at batch 128
RESNET = [(64, 256, "int8", "int8", True), (64, 256, "float16", "int8", False),
          (256, 64, "int8", "int8", False), (128, 512, "int8", "int8", True),
          (64, 64, "float16", "int8", False), (512, 128, "int8", "int8", False),
          (1024, 256, "int8", "int8", False), (2048, 512, "int8", "int8", False)]


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not on PATH")
def test_sources_compile_for_sm90_without_spills(tmp_path):
    parts = [C.PRELUDE, S.INT8_HELPERS, S.FP8_HELPERS, QM.CP_ASYNC, QM.FAST_INT8]
    srcs = []
    for k, (kk, n, xdt, ydt, res) in enumerate(RESNET):
        case = (128 * 56 * 56, n, kk, S.INT8, xdt, ydt, "res8" if res else "", "relu", 0, None)
        srcs.append(_source(case))
    srcs.append(_source(CASES[5]))
    srcs.append(_source(CASES[6]))
    for kk, n, xdt, ydt, res in RESNET[:4]:   # the pipelined loop (int8 x only)
        epi, modes = _spec((0, n, kk, S.INT8, xdt, ydt, "res8" if res else "", "relu", 0, None))
        src = QM.QMmaSource(n, kk, S.INT8, xdt, ydt, epi, modes, INV_X, OUT_SCALE,
                            pipeline=True)
        if src.pipeline:
            srcs.append(src)
    srcs += [s for s in (_source(case) for case in CASES) if s.kx < s.k]   # padded K
    for c, n in ((64, 64), (128, 128)):   # the stage-1 / stage-2 3x3 convs, implicit GEMMs
        epi, modes = _spec((0, n, 9 * c, S.INT8, "int8", "int8", "", "relu", 0, None))
        srcs.append(QM.QMmaSource(n, 9 * c, S.INT8, "int8", "int8", epi, modes, INV_X,
                                  OUT_SCALE, conv=QM.ConvGeometry(56, 56, c, 3, 3, 1, 1, 1, 1,
                                                                  56, 56)))
    body = []
    for k, s in enumerate(srcs):
        body.append(_strip(s.source, k))
    text = "\n".join(parts + list(QM.MMA_HELPERS.values()) + body)
    r = nvcc_compile(text, tmp_path, "qmma", "-Xptxas", "-v")
    _assert_no_spills(r.stderr, srcs)


# Bytes of local memory ptxas (nvcc 13.0, sm_90) may give the one kernel measured faster with
# them: the stage-1 residual 1x1 conv with its MMAs interleaved (TFTRT_QUANT_MMA_INTERLEAVE's
# "auto") spills 8 bytes at the 80 registers of its three blocks an SM, and ran 107.1 us
# against 112.6 without the interleave (H100, s47, five runs of five faster). Every other
# kernel: none.
INTERLEAVED_CAPPED_SPILL = 8


def _assert_no_spills(stderr: str, srcs) -> None:
    """Each ``qmma_<k>`` function in ptxas' -v output spills nothing -- but an interleaved
    kernel under a register cap (``srcs[k].interleave and srcs[k].min_threads``), at most
    :data:`INTERLEAVED_CAPPED_SPILL` bytes."""
    found = re.findall(r"Function properties for qmma_(\d+)\s+(\d+) bytes stack frame, "
                       r"(\d+) bytes spill stores", stderr)
    assert len(found) == len(srcs), stderr[-3000:]
    for k, _, spill in found:
        src = srcs[int(k)]
        limit = INTERLEAVED_CAPPED_SPILL if src.interleave and src.min_threads else 0
        assert int(spill) <= limit, f"qmma_{k} (N {src.n}, K {src.k}): {spill} bytes " \
            f"spilled\n{stderr[-3000:]}"


# --- the tactic ------------------------------------------------------------------------------
def _matmul_net(k, n, precision="INT8"):
    from tftrt.engine.network import Network
    from tftrt.engine.precision import apply_precision
    rng = np.random.RandomState(0)
    net = Network("mm")
    net.inputs, net.outputs = ["x"], ["y"]
    net.add_tensor("x", "float32", (4, 7, k))
    w = net.add_weight(rng.randn(k, n).astype(np.float32), "w")
    net.add_layer("matmul", ["x", w], ["y"], {})
    net.tensors["y"].dtype, net.tensors["y"].shape = "float32", (4, 7, n)
    return apply_precision(net, precision, Q.new_table(tensors={"x": 2.0}))


def test_the_tactic_takes_the_quantized_gemms_the_kernel_takes(monkeypatch):
    """``q_mma`` is registered for conv and matmul layers on CuPy; it applies to a quantized
    GEMM whose K is 8, 16, 24 or a multiple of 16 (up to TACTIC_MAX_K in a large GEMM, up to
    MAX_K in a small one) and N of 8 unless TFTRT_QUANT_MMA=0, never to a float layer or a depthwise
    conv; the source it would compile is the layer's (rows of all leading dims, the input
    scale's reciprocal)."""
    importlib.import_module("tftrt.engine.backends.cupy_backend")  # registers the tactics
    from tests.engine.test_quant_codegen import _quantized_net
    from tftrt.engine.tactics import _REGISTRY
    for kind in ("conv", "matmul"):
        assert "q_mma" in [t.name for t in _REGISTRY[("cupy", kind)]]
    monkeypatch.delenv("TFTRT_QUANT_MMA", raising=False)
    net = _matmul_net(64, 32)
    (layer,) = net.layers
    assert QM.unsupported(net, layer) is None   # on by default
    src = QM.layer_source(net, layer)
    assert (src.k, src.n, src.x_dtype, src.y_dtype) == (64, 32, "float32", "float32")
    assert src.inv_x == pytest.approx(float(Q.inv_scale(layer.attrs["quant"]["input_scale"])))
    assert src.grid(28) == src.chunks
    monkeypatch.setenv("TFTRT_QUANT_MMA", "0")
    assert QM.unsupported(net, layer) == "off (TFTRT_QUANT_MMA=0)"
    monkeypatch.setenv("TFTRT_QUANT_MMA", "1")
    net = _matmul_net(40, 32)
    assert "K of 8, 16, 24 or a multiple of 16" in QM.unsupported(net, net.layers[0])
    net = _matmul_net(48, 32)   # a multiple of 16: zero-padded to 64
    assert QM.layer_source(net, net.layers[0]).k == 64 and QM.unsupported(net, net.layers[0]) \
        is None
    net = _matmul_net(QM.TACTIC_MAX_K + 32, 32)   # a small GEMM: offered at any K
    assert QM.unsupported(net, net.layers[0]) is None
    monkeypatch.setattr(QM, "TACTIC_SMALL", 4 * 7 * (QM.TACTIC_MAX_K + 32) * 32 - 1)
    assert QM.layer_source(net, net.layers[0]).k == QM.TACTIC_MAX_K + 32   # the kernel takes it
    assert "compute-bound" in QM.unsupported(net, net.layers[0])          # the tactic does not
    net = _matmul_net(QM.TACTIC_MAX_K, 32)
    assert QM.unsupported(net, net.layers[0]) is None
    net = _matmul_net(64, 12)
    assert "N a multiple of 8" in QM.unsupported(net, net.layers[0])
    net = _matmul_net(64, 32, precision="FP16")
    assert QM.unsupported(net, net.layers[0]) == "not a quantized layer"
    net = _quantized_net("depthwise")
    assert "no groups or dilations" in QM.unsupported(net, net.layers[0])


def test_the_impl_chain_falls_back_on_the_gpu():
    """What runs tactic ``q_mma``: the kernel, then cuBLASLt, cuDNN (convs) and the emulated
    path (all on the GPU) when it cannot."""
    pytest.importorskip("cupy")
    from tftrt.engine.backends import cupy_backend
    try:
        table = cupy_backend.impl_table()
    except Exception as e:  # a CuPy that cannot load its CUDA libraries here
        pytest.skip(f"CuPy backend modules do not import here: {e}")
    assert [c.__name__ for c in table["conv"]["q_mma"]] == \
        ["QuantGemmMma", "QuantGemmLt", "QuantConvCudnn", "QuantEmulated"]
    assert [c.__name__ for c in table["matmul"]["q_mma"]] == \
        ["QuantGemmMma", "QuantGemmLt", "QuantEmulated"]


def test_the_grid_is_what_the_gpu_holds_at_once():
    """resident_blocks follows CUDA's occupancy rules (H100 / H200 properties): 128 threads of
    128 registers -> 4 blocks an SM, of 175 -> 2, shared memory and threads cap it too; the
    grid covers every chunk and caps the block tiles at it."""
    props = {"regsPerMultiprocessor": 65536, "sharedMemPerMultiprocessor": 233472,
             "maxThreadsPerMultiProcessor": 2048}
    assert QM.resident_blocks(128, 17408, 128, props) == 4
    assert QM.resident_blocks(175, 41984, 128, props) == 2
    assert QM.resident_blocks(40, 47000, 128, props) == 4      # shared memory: 233472 / 48024
    assert QM.resident_blocks(16, 1024, 128, props) == 16      # threads: 2048 / 128
    src = _source(CASES[0])                                     # N 256: two chunks
    assert src.chunks == 2 and src.grid(37) == 2
    assert src.grid(128 * 56 * 56, max_blocks=132 * 4) == 132 * 4
    assert src.grid(100, max_blocks=1) == 2                     # never fewer than the chunks


def test_the_pipelined_loop_computes_the_same(tmp_path):
    """pipeline=True (the next m-tile's int8 x and residual loading during this one's
    epilogue, the residual double-buffered) answers every int8-x case bit for bit, with
    grids that loop over many m-tiles a warp and a last partial tile; where it cannot apply
    (a float x, K over one block, mt 2) the source is the plain loop's."""
    if _host_compiler() is None:
        pytest.skip("no host C++ compiler")
    runs = []
    for case in CASES:
        if case[4] != "int8" or case[2] > QM.KB:
            continue
        epi, modes = _spec(case)
        for stage in (True, False):
            src = QM.QMmaSource(case[1], case[2], case[3], case[4], case[5], epi, modes, INV_X,
                                OUT_SCALE if case[5] == "int8" else None, pipeline=True,
                                stage_full=stage)
            assert src.pipeline
            assert ("cp_async_wait_prior();" in src.source) == bool(src.full)
            runs.append((case, src))
    assert len(runs) >= 4 and any(src.full for _, src in runs)
    so = _build(_host_text([src for _, src in runs]), tmp_path, "qmma_pipe")
    for k, (case, src) in enumerate(runs):
        for m, blocks in ((16 * 7 + 5, 1), (3, None), (16 * 40, 2)):
            c = (m,) + tuple(case[1:9]) + (blocks,)
            y, want, _ = _run(so, k, src, c, m, seed=k + m)
            np.testing.assert_array_equal(y, want, err_msg=f"{case} m {m} blocks {blocks}")
    for change in (dict(x_dtype="float16"), dict(k=288), dict(mt=2)):
        args = dict(n=64, k=64, fmt=S.INT8, x_dtype="int8", y_dtype="float16", epilogue=[],
                    operand_modes={}, pipeline=True)
        plain = QM.QMmaSource(**dict(args, **change))
        assert not plain.pipeline
        assert plain.source == QM.QMmaSource(**dict(args, pipeline=False, **change)).source


def test_the_benchmark_knobs_compute_the_same(tmp_path):
    """Warps a block, channels a block, the residual's staging, the conversions, the launch
    bounds and the paired epilogue (bench_qmma.py's knobs) change the tiling, the loads and
    the instructions only: 8 warps with chunks of 64, paired or element by element, 4 warps
    with chunks of 16, and the residual read from global memory with the conversion unit's
    conversions answer case 0 bit for bit."""
    if _host_compiler() is None:
        pytest.skip("no host C++ compiler")
    case = CASES[0]
    epi, modes = _spec(case)
    srcs = [QM.QMmaSource(case[1], case[2], case[3], case[4], case[5], epi, modes, INV_X,
                          OUT_SCALE, warps=w, nc=nc, stage_full=st, fast_int=f, min_threads=mn,
                          pipeline=False, paired=pr)
            for w, nc, st, f, mn, pr in ((8, 64, True, True, 0, True),
                                         (4, 16, True, True, 0, True),
                                         (4, None, False, False, 512, True),
                                         (8, 64, True, True, 0, False))]
    assert [(s.threads, s.nc, s.chunks, bool(s.full)) for s in srcs] == \
        [(256, 64, 4, True), (128, 16, 16, True), (128, 128, 2, False), (256, 64, 4, True)]
    assert "cp_async16(" in srcs[0].source and "cp_async16(" not in srcs[2].source
    assert "q_int8_fast(" in srcs[0].source and "q_int8_fast(" not in srcs[2].source
    assert "__launch_bounds__(128, 4)" in srcs[2].source
    # paired: the residual read as 2-byte pairs (converted as one half2 by default), two
    # codes staged a store, ReLU in the clamp
    assert "bytes_float2(rp4, rf4_0, rf4_1)" in srcs[0].source and \
        "prmt(q0, q1" in srcs[0].source
    assert "fmaxf(v, 0.f)" in srcs[0].source
    assert "byte_float(rp4" not in srcs[3].source and "fmaxf(v, 0.f)" not in srcs[3].source
    so = _build(_host_text(srcs), tmp_path, "qmma_knobs")
    for k, src in enumerate(srcs):
        y, want, _ = _run(so, k, src, case, 45, seed=9)
        np.testing.assert_array_equal(y, want, err_msg=f"warps {src.warps} nc {src.nc}")


def _every_case(**knobs):
    """Every case's source with ``knobs``, the pipelined loop on the int8-x ones."""
    return [QM.QMmaSource(case[1], case[2], case[3], case[4], case[5], *_spec(case), INV_X,
                          OUT_SCALE if case[5] == "int8" else None,
                          pipeline=case[4] == "int8", **knobs) for case in CASES]


def _cases_match_numpy(srcs, tmp_path, name, seed, what):
    so = _build(_host_text(srcs), tmp_path, name)
    for k, (case, src) in enumerate(zip(CASES, srcs)):
        y, want, blocks = _run(so, k, src, case, case[0], seed=seed + k)
        _assert_matches(src, y, want, f"case {k} {case}, {blocks} blocks, {what}")


def _residual_convs_compile_without_spills(tmp_path, name, **knobs):
    """ResNet50's residual 1x1 convs (stages 1-3) with ``knobs`` compile for sm_90 without
    register spills (:func:`_assert_no_spills`; nothing checked where nvcc is missing)."""
    if shutil.which("nvcc") is None:
        return
    parts = [C.PRELUDE, S.INT8_HELPERS, S.FP8_HELPERS, QM.CP_ASYNC, QM.FAST_INT8]
    res = []
    for kk, n in ((64, 256), (128, 512), (256, 1024)):
        epi, modes = _spec((0, n, kk, S.INT8, "int8", "int8", "res8", "relu", 0, None))
        res.append(QM.QMmaSource(n, kk, S.INT8, "int8", "int8", epi, modes, INV_X, OUT_SCALE,
                                 **knobs))
    text = "\n".join(parts + list(QM.MMA_HELPERS.values()) +
                     [_strip(s.source, k) for k, s in enumerate(res)])
    r = nvcc_compile(text, tmp_path, name, "-Xptxas", "-v")
    _assert_no_spills(r.stderr, res)


def test_staged_per_channel_operands_compute_the_same(tmp_path, monkeypatch):
    """stage_vecs (TFTRT_QUANT_MMA_STAGE_VECS: the scale and bias staged in shared memory once
    a block) reads the same values: every case, with the pipelined loop on the residual
    ones, answers as the numpy arithmetic does; ResNet50's residual 1x1 convs with it
    compile for sm_90 without spills (their m-tile loop issues fewer instructions)."""
    if _host_compiler() is None:
        pytest.skip("no host C++ compiler")
    srcs = _every_case(stage_vecs=True)
    assert all(s.vecs == [2, 3] and "__shared__ float vsm2[" in s.source for s in srcs)
    assert any(s.pipeline for s in srcs)
    monkeypatch.setenv("TFTRT_QUANT_MMA_STAGE_VECS", "0")
    assert _source(CASES[0]).vecs == [] and "vsm" not in _source(CASES[0]).source
    monkeypatch.delenv("TFTRT_QUANT_MMA_STAGE_VECS")   # on by default, for an int8 x only
    assert _source(CASES[0]).vecs == [2, 3] and _source(CASES[1]).vecs == []
    _cases_match_numpy(srcs, tmp_path, "qmma_vecs", 70, "staged vecs")
    _residual_convs_compile_without_spills(tmp_path, "qmma_vecs", stage_vecs=True)


@pytest.mark.parametrize("i2f,res_cvt", [(True, "byte"), (False, "half2"), (False, "byte")])
def test_the_epilogues_conversion_knobs_compute_the_same(tmp_path, monkeypatch, caplog, i2f,
                                                          res_cvt):
    """i2f (TFTRT_QUANT_MMA_I2F: the accumulator through I2F, on by default) and res_cvt
    (TFTRT_QUANT_MMA_RES_CVT: the residual's codes through a half2, the default) change the
    instructions only: every case answers as the numpy arithmetic does, the pipelined loop
    on the int8-x ones; the switches are read from the environment, a bad value warns and
    keeps the default; ResNet50's residual 1x1 convs compile for sm_90 without spills."""
    if _host_compiler() is None:
        pytest.skip("no host C++ compiler")
    srcs = _every_case(i2f=i2f, res_cvt=res_cvt)
    res8 = [s for s, case in zip(srcs, CASES) if case[6] == "res8" and case[3] == S.INT8]
    assert res8 and all("byte_float(rp4" not in s.source for s in res8) == (res_cvt != "byte")
    if res_cvt == "half2":
        assert all("bytes_float2(rp4, rf4_0, rf4_1)" in s.source for s in res8)
    int8 = [s for s in srcs if s.fmt == S.INT8]
    assert all(("= __int2float_rn(acc[j]" in s.source) == i2f or s.k * 128 * 127 >= QM.SMALL_INT
               for s in int8)
    monkeypatch.setenv("TFTRT_QUANT_MMA_I2F", "1" if i2f else "0")
    monkeypatch.setenv("TFTRT_QUANT_MMA_RES_CVT", res_cvt.upper())
    assert (_source(CASES[0]).i2f, _source(CASES[0]).res_cvt) == (i2f, res_cvt)
    monkeypatch.setenv("TFTRT_QUANT_MMA_RES_CVT", "nibble")
    from tftrt import env
    env._warned.discard(("TFTRT_QUANT_MMA_RES_CVT", "nibble"))
    with caplog.at_level("WARNING", logger="tftrt.env"):
        assert QM.res_cvt_default() == "half2" and QM.res_cvt_default() == "half2"
    warning = "TFTRT_QUANT_MMA_RES_CVT='nibble': one of byte, half2; using half2"
    assert caplog.text.count(warning) == 1   # once, however many layers ask
    with pytest.raises(ValueError, match="res_cvt 'nibble': one of byte, half2"):
        QM.QMmaSource(256, 64, S.INT8, "int8", "int8", *_spec(CASES[0]), INV_X, OUT_SCALE,
                      res_cvt="nibble")
    _cases_match_numpy(srcs, tmp_path, f"qmma_cvt_{res_cvt}", 90,
                       f"i2f {i2f} res {res_cvt}")
    _residual_convs_compile_without_spills(tmp_path, "qmma_cvt", stage_vecs=True, i2f=i2f,
                                           res_cvt=res_cvt)


# --- a conv as an implicit GEMM (ConvGeometry) -----------------------------------------------
# (batch, H, W, C, N, R, S, strides, pads (top, left, bottom, right), fmt, x dtype, y dtype,
#  epilogue, activation, max blocks)
CONV_CASES = [
    (2, 6, 5, 64, 40, 3, 3, (1, 1), (1, 1, 1, 1), S.INT8, "int8", "int8", "", "relu", None),
    (1, 8, 7, 64, 24, 3, 3, (2, 2), (0, 0, 1, 1), S.INT8, "float16", "int8", "res8", "relu",
     None),                                                   # stride 2 with SAME's pads
    (2, 5, 9, 128, 16, 1, 3, (1, 1), (0, 1, 0, 1), S.FP8, "float32", "float16", "", "gelu",
     None),                                                   # FP8, one row of taps
    (1, 4, 4, 128, 8, 3, 3, (1, 1), (1, 1, 1, 1), S.INT8, "int8", "float32", "res", None, 1),
    (3, 3, 3, 64, 64, 2, 2, (1, 1), (0, 0, 0, 0), S.INT8, "float32", "float16", "", None, 2),
]


def _conv_out(case):
    b, h, w, c, n, r, s, (sh, sw), (pt, pl, pb, pr) = case[:9]
    return b, (h + pt + pb - r) // sh + 1, (w + pl + pr - s) // sw + 1


def _conv_source(case) -> QM.QMmaSource:
    b, h, w, c, n, r, s, (sh, sw), pads, fmt, xdt, ydt, res, act, _ = case
    _, ho, wo = _conv_out(case)
    geo = QM.ConvGeometry(h, w, c, r, s, sh, sw, pads[0], pads[1], ho, wo)
    epi, modes = _spec((0, n, r * s * c, fmt, xdt, ydt, res, act, 0, None))
    return QM.QMmaSource(n, r * s * c, fmt, xdt, ydt, epi, modes, INV_X,
                         OUT_SCALE if ydt == "int8" else None, conv=geo)


def _im2col(x, case):
    """[rows of y, taps x C] of NHWC ``x`` in the KRSC weight's order, zeros in the padding."""
    b, h, w, c, n, r, s, (sh, sw), (pt, pl, pb, pr) = case[:9]
    _, ho, wo = _conv_out(case)
    xp = np.zeros((b, h + pt + pb + r, w + pl + pr + s, c), x.dtype)
    xp[:, pt:pt + h, pl:pl + w] = x
    cols = [xp[:, dh:dh + sh * (ho - 1) + 1:sh, dw:dw + sw * (wo - 1) + 1:sw]
            for dh in range(r) for dw in range(s)]
    return np.concatenate(cols, axis=-1).reshape(b * ho * wo, r * s * c)


def test_a_conv_runs_as_an_implicit_gemm_on_the_host(tmp_path):
    """A conv with taps, strides and padding (ConvGeometry): the kernel gathers each tap's
    channels at its pixel itself, zeros in the padding, and answers what the same GEMM over
    im2col's rows answers -- INT8 bit for bit with int8 / float x, FP8 within fp32 summation
    order -- for 3x3 (stride 1, and stride 2 with TF SAME's bottom / right padding), 1x3, 2x2
    unpadded, K over several blocks, residuals, a looping grid."""
    if _host_compiler() is None:
        pytest.skip("no host C++ compiler")
    srcs = [_conv_source(case) for case in CONV_CASES]
    assert all(not s.pipeline for s in srcs) and {s.k // QM.KB for s in srcs} == {1, 2, 4}
    _convs_match_numpy(srcs, tmp_path, "qmma_conv", 200, "")


def _convs_match_numpy(srcs, tmp_path, name: str, seed: int, what: str) -> None:
    """The kernels ``srcs`` of CONV_CASES, built for the host, answer as the same GEMM over
    im2col's rows does (:func:`_assert_matches`)."""
    so = _build(_host_text(srcs), tmp_path, name)
    for k, (case, src) in enumerate(zip(CONV_CASES, srcs)):
        b, h, w, c, n = case[:5]
        _, ho, wo = _conv_out(case)
        m = b * ho * wo
        gemm = (m, n, src.k, case[9], case[10], case[11], case[12], case[13], 0, case[14])
        x = _inputs((b * h * w, n, c) + gemm[3:], seed=seed + k)[0].reshape(b, h, w, c)
        _, wq, ops = _inputs(gemm, seed=seed + 100 + k)  # [N, taps x C], y-sized residual
        want = _want(gemm, _im2col(x, case), wq, ops)
        poison = -128 if src.y_dtype == "int8" else np.nan
        y = np.full(want.shape, poison, src.y_dtype)
        _run_host(so, k, [x, wq] + [ops[i] for i in src.operands] + [y, m],
                  src.grid(m, case[14]), src.threads)
        _assert_matches(src, y, want, f"conv case {k} {case}{what}")


def _conv_net(x_shape, r, s, n, strides, pads, precision, residual=False, group=1,
              dilations=(1, 1)):
    from tftrt.engine.network import Network
    from tftrt.engine.precision import apply_precision
    rng = np.random.RandomState(2)
    b, h, w, c = x_shape
    ho = (h + pads[0] + pads[2] - r) // strides[0] + 1
    wo = (w + pads[1] + pads[3] - s) // strides[1] + 1
    y_shape = (b, ho, wo, n)
    net = Network("conv")
    net.inputs, net.outputs = ["x"] + (["r"] if residual else []), ["y"]
    net.add_tensor("x", "float32", x_shape)
    if residual:
        net.add_tensor("r", "float32", y_shape)
    wt = net.add_weight(rng.randn(n, r, s, c // group).astype(np.float32), "w")
    bias = net.add_weight(rng.randn(n).astype(np.float32), "b")
    layer = net.add_layer("conv", ["x", wt, bias] + (["r"] if residual else []), ["y"],
                          {"strides": list(strides), "dilations": list(dilations),
                           "pads": list(pads), "group": group})
    layer.epilogue = [{"op": "bias", "input": 2}] + \
        ([{"op": "add", "input": 3}] if residual else []) + [{"op": "act", "fn": "relu"}]
    net.tensors["y"].dtype, net.tensors["y"].shape = "float32", y_shape
    return apply_precision(net, precision, Q.new_table(tensors={"x": 2.0}))


CONV_NETS = [((2, 6, 5, 64), 3, 3, 40, (1, 1), (1, 1, 1, 1), False),
             ((1, 7, 8, 64), 3, 3, 24, (2, 2), (1, 0, 1, 1), True),
             ((2, 4, 5, 128), 1, 3, 16, (1, 1), (0, 1, 0, 1), False)]


@pytest.mark.parametrize("precision", ["INT8", "FP8"])
def test_a_conv_layers_implicit_gemm_computes_what_the_numpy_backend_does(tmp_path, precision,
                                                                         monkeypatch):
    """What cupy_quant.QuantGemmMma passes the kernel for a conv with taps (layer_source's
    ConvGeometry, gemm_weight's KRSC rows, y's pixels as the rows) against the numpy
    backend's quantized conv."""
    monkeypatch.setenv("TFTRT_QUANT_MMA", "1")
    if _host_compiler() is None:
        pytest.skip("no host C++ compiler")
    nets = [_conv_net(xs, r, s, n, st, p, precision, res) for xs, r, s, n, st, p, res in
            CONV_NETS]
    srcs = [QM.layer_source(net, net.layers[0]) for net in nets]
    assert all(src.conv is not None for src in srcs)
    _layers_match_numpy(_build(_host_text(srcs), tmp_path, "qmma_conv_layers"), nets, srcs,
                        precision, CONV_NETS, seed=6)


def test_the_tactic_takes_the_convs_the_implicit_gemm_takes(monkeypatch):
    """``q_mma`` applies to a quantized conv with taps of up to TACTIC_CONV_MAX_C input
    channels (a multiple of 64) at any K, to a wider INT8 one only when small (batch 1), to
    an FP8 one of any width up to MAX_K; never to a grouped or dilated conv or one of
    channels not a multiple of 64."""
    monkeypatch.setenv("TFTRT_QUANT_MMA", "1")
    big = (128, 56, 56)
    net = _conv_net(big + (64,), 3, 3, 64, (1, 1), (1, 1, 1, 1), "INT8")
    assert QM.unsupported(net, net.layers[0]) is None
    src = QM.layer_source(net, net.layers[0])
    assert (src.k, src.n, src.conv.ho, src.conv.wo) == (576, 64, 56, 56)
    net = _conv_net((128, 28, 28, 128), 3, 3, 128, (1, 1), (1, 1, 1, 1), "INT8")
    assert "TACTIC_CONV_MAX_C" in QM.unsupported(net, net.layers[0])
    net = _conv_net((128, 28, 28, 128), 3, 3, 128, (1, 1), (1, 1, 1, 1), "FP8")
    assert QM.unsupported(net, net.layers[0]) is None              # cuDNN's FP8 convs: slow
    net = _conv_net((128, 14, 14, 256), 3, 3, 256, (1, 1), (1, 1, 1, 1), "FP8")
    assert "up to 2048, not 2304" in QM.unsupported(net, net.layers[0])   # K over MAX_K
    net = _conv_net((1, 28, 28, 128), 3, 3, 128, (1, 1), (1, 1, 1, 1), "INT8")
    assert QM.unsupported(net, net.layers[0]) is None              # batch 1: small
    for kw, match in ((dict(group=2), "no groups or dilations"),
                      (dict(dilations=(2, 2)), "no groups or dilations")):
        net = _conv_net((1, 9, 9, 128), 3, 3, 64, (1, 1), (1, 1, 1, 1), "INT8", **kw)
        assert match in QM.unsupported(net, net.layers[0])
    net = _conv_net((1, 9, 9, 96), 3, 3, 64, (1, 1), (1, 1, 1, 1), "INT8")
    assert "multiple of 64, not 96" in QM.unsupported(net, net.layers[0])
    net = _conv_net(big + (64,), 3, 3, 64, (1, 1), (1, 1, 1, 1), "INT8")
    monkeypatch.setenv("TFTRT_QUANT_MMA_CONV", "0")
    assert QM.unsupported(net, net.layers[0]) == \
        "off for convs with taps (TFTRT_QUANT_MMA_CONV=0)"
    net = _matmul_net(64, 32)
    assert QM.unsupported(net, net.layers[0]) is None             # GEMMs keep it
    net = _conv_net((1, 9, 9, 64), 3, 3, 64, (1, 1), (1, 1, 1, 1), "FP16")
    assert QM.unsupported(net, net.layers[0]) == "not a quantized layer"


@pytest.mark.parametrize("kx,kp", [(8, 32), (48, 64)])
def test_a_padded_k_reads_only_its_own_row(host_kernels, kx, kp):
    """A K zero-padded to the kernel's steps (8 -> one step of 32, the last step's lanes; 48
    -> one chunk of 64, its last lane): lanes whose columns lie past the row load zero codes
    instead of the next row's elements -- a NaN there (E4M3's NaN code times a zero weight
    is NaN) would spoil this row's outputs -- and never read past x's end."""
    srcs, so = host_kernels
    k = next(i for i, c in enumerate(CASES) if c[2] == kx and c[3] == S.FP8)
    case, src = CASES[k], srcs[k]
    assert (src.kx, src.k) == (kx, kp)
    m = case[0]
    x, w, ops = _inputs(case, seed=77)
    x[5, 3] = np.nan
    want = _want(case, x, w, ops)
    y = np.full(want.shape, np.nan, src.y_dtype)
    wp = np.pad(w, ((0, 0), (0, src.k - w.shape[1])))
    _run_host(so, k, [x, wp] + [ops[i] for i in src.operands] + [y, m], src.grid(m),
              src.threads)
    assert np.isnan(y[5]).all() and np.isnan(want[5]).all()
    rest = np.arange(m) != 5
    assert np.isfinite(y[rest]).all(), "a row read its neighbour's NaN"
    np.testing.assert_allclose(y[rest], want[rest], rtol=2.0 ** -10,
                               atol=1e-5 * float(np.abs(want[rest]).max()))


def test_mmas_in_the_order_of_k_compute_the_same(tmp_path, monkeypatch):
    """interleave (TFTRT_QUANT_MMA_INTERLEAVE: a chunk's MMAs issue k first, n-tiles
    interleaved) sums the same products in the same order per accumulator: every case (the
    pipelined loop on the int8-x ones, a last 32 of K) and the conv cases answer as the numpy
    arithmetic does; the switch is read from the environment, "auto" (the default) on for
    the pipelined kernels of K <= 64."""
    if _host_compiler() is None:
        pytest.skip("no host C++ compiler")
    srcs = _every_case(interleave=True)
    assert all("uint2 bz[NT];" in s.source for s in srcs if s.k >= 64)
    # auto (the default): on for the pipelined kernels of K <= 64 over an int8 x
    assert "bz[" not in _source(CASES[0]).source
    assert _source(CASES[0], pipeline=True).interleave      # K 64, int8 x, pipelined
    assert not _source(CASES[1], pipeline=True).interleave  # a float16 x
    assert not _source(CASES[12], pipeline=True).interleave  # K 2048
    monkeypatch.setenv("TFTRT_QUANT_MMA_INTERLEAVE", "0")
    assert not _source(CASES[0], pipeline=True).interleave
    monkeypatch.setenv("TFTRT_QUANT_MMA_INTERLEAVE", "1")
    assert _source(CASES[0]).interleave
    _cases_match_numpy(srcs, tmp_path, "qmma_interleave", 140, "interleave")
    convs = [_conv_source(case) for case in CONV_CASES]
    assert all(s.interleave for s in convs)
    _convs_match_numpy(convs, tmp_path, "qmma_interleave_conv", 800, ", interleave")

