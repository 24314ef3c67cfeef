"""The tensor-core few-channel convolution's CUDA source (backends/cuda_source_stem_mma, tactic
``stem_mma``), checked without a GPU: it compiles for sm_90 with nvcc without register spills
for the zoo's stems at batch 128, and built for the host it computes what the numpy backend
computes (numpy_ops' im2col GEMM of the float16-rounded image and filter, then the layer's
epilogue) for the zoo's stem geometries, SAME / VALID / asymmetric pads, pixel counts no
tile divides, two chunks of channels, a capped grid, float16 and float32 x, bias / scale /
residual / activation epilogues, and each store width (y aligned to 16, 4 and 2 bytes).

Host builds run each block as its 128 threads (tests/engine/test_dw_codegen's thread shims)
with ``mma_16816`` emulated by a warp exchange: the 32 lanes of a warp post their fragment
registers, meet at a warp barrier, and each lane computes its accumulators from the whole
A and B, which it assembles with the PTX ISA's per-element formulas for m16n8k16 (written
here from the ISA, independently of the generator's tables). So the generator's use of the
fragment layout (which lane gathers which pixel and tap, which register holds which output)
is checked against the ISA; whether the ISA text matches the hardware is for the GPU tests.
"""

import re
import shutil

import numpy as np
import pytest

from tests.engine.test_cuda_codegen import HOST_SHIMS, _host_compiler, nvcc_compile
from tests.engine.test_dw_codegen import THREAD_SHIMS, _build, _epilogue_spec, _out_hw, \
    _run_host
from tests.engine.test_stem_codegen import _reference
from tftrt.engine.backends import cuda_source as C
from tftrt.engine.backends import cuda_source_stem_mma as SM
from tftrt.engine.errors import EngineBuildError

# (x shape, (kh, kw), (sh, sw), pads (top, left, bottom, right), Cout, x dtype, y dtype,
#  epilogue, y offset in elements (16-byte stores at 0 and 8, 4-byte at 2, 2-byte at 1),
#  generator options)
CASES = [
    ((2, 9, 37, 3), (3, 3), (1, 1), (1, 1, 1, 1), 64, "float32", "float16", "bias+relu", 0,
     {}),                                                         # VGG
    ((1, 13, 10, 3), (3, 3), (2, 2), (0, 0, 1, 1), 32, "float16", "float16", "bias+silu", 0,
     {}),                                                         # MobileNet, TF SAME
    ((2, 8, 9, 3), (4, 4), (4, 4), (0, 0, 0, 0), 96, "float32", "float16", "bias", 8,
     {}),                                                         # ConvNeXt patchify
    ((1, 7, 33, 5), (3, 3), (1, 1), (0, 0, 0, 0), 16, "float16", "float16", "bias+add+relu", 0,
     {}),                                                         # VALID, residual, Kp 48
    ((1, 12, 11, 3), (7, 7), (2, 2), (3, 3, 3, 3), 64, "float16", "float16", "bias+relu6", 0,
     {}),                                                         # ResNet: Kp 160
    ((1, 5, 6, 3), (3, 3), (1, 1), (1, 1, 1, 1), 136, "float32", "float16", "bias+relu", 2,
     {}),                                                         # chunks 128 + 8, 4 bytes
    ((1, 6, 7, 3), (3, 3), (1, 1), (1, 1, 1, 1), 24, "float16", "float16", "scale+bias+gelu",
     1, {}),                                                      # 2-byte stores
    ((2, 17, 17, 3), (3, 3), (2, 2), (1, 1, 1, 1), 40, "float32", "float16", "bias+silu", 0,
     dict(mt=1, max_blocks=2)),                                   # EfficientNet, grid loop
    ((1, 3, 3, 1), (3, 3), (1, 1), (1, 1, 1, 1), 8, "float32", "float16", "", 0,
     {}),                                                         # 9 pixels: one part tile
    ((2, 6, 50, 9), (1, 7), (1, 3), (0, 3, 0, 3), 192, "float16", "float16", "bias+relu", 0,
     dict(mt=2)),                                                 # 1x7 / (1, 3), chunks 128 + 64
    # Cin a multiple of 16 (vector gathers where row tiles are off): ResNet's stem rearranged
    # (passes/stem_space_to_depth: 4x4 / 1 over 16 channels, K 256), a padded 32-channel one
    ((2, 9, 10, 16), (4, 4), (1, 1), (0, 0, 0, 0), 64, "float16", "float16", "bias+relu", 0,
     dict(rows=True)),
    ((1, 7, 6, 32), (2, 2), (1, 1), (1, 0, 1, 1), 24, "float16", "float16", "bias+add+relu6",
     2, dict(mt=1, max_blocks=2, rows=True)),
]


def _source(case) -> SM.StemMmaSource:
    """A case's kernel: row tiles unless its options say otherwise (or stage)."""
    xs, k, s, pads, cout, dt, dt_out, epi, _, opts = case
    if "stage" not in opts:
        opts = dict(dict(rows=True), **opts)
    ho, wo = _out_hw(xs, k, s, pads)
    epilogue, modes = _epilogue_spec(epi, dt_out)
    return SM.StemMmaSource(xs, k, s, pads, (xs[0], ho, wo, cout), dt, dt_out, epilogue, modes,
                            **opts)


def _inputs(case, seed):
    """Layer inputs [x, w, bias, scale, residual] of a case (w: [Cout, kh, kw, Cin],
    float16 as an FP16 engine stores it)."""
    xs, k, s, pads, cout, dt, dt_out, epi, _, _ = case
    rng = np.random.default_rng(seed)
    ho, wo = _out_hw(xs, k, s, pads)
    return [rng.uniform(-1, 1, xs).astype(dt),
            (rng.standard_normal((cout,) + tuple(k) + (xs[3],)) / 3).astype(np.float16),
            rng.standard_normal(cout).astype(np.float32),
            rng.uniform(0.5, 1.5, cout).astype(np.float32),
            rng.standard_normal((xs[0], ho, wo, cout)).astype(dt_out)]


def _wt(w, src):
    """The kernel's filter: [Cout, KH, KW, Cin] -> float16 [Cout, Kp] (what
    cupy_stem_mma.StemMma makes on the GPU)."""
    return SM.filter_matrix(w, src)


# --- the fragment layout -----------------------------------------------------------------------
# PTX ISA, "Matrix Fragments for mma.m16n8k16 with floating point type": lane = 4 g + t; per
# element i of a thread's fragment, its (row, column) of the matrix.
def _isa_a(i, g, t):   # A, 16 x 16, .f16: a0..a7, two a register
    return (g if i < 2 or 4 <= i < 6 else g + 8), 2 * t + (i & 1) + (8 if i >= 4 else 0)


def _isa_b(i, g, t):   # B, 16 x 8 (k, n), .f16: b0..b3
    return 2 * t + (i & 1) + (8 if i >= 2 else 0), g


def _isa_c(i, g, t):   # C / D, 16 x 8, .f32: c0..c3
    return (g if i < 2 else g + 8), 2 * t + (i & 1)


def test_the_generators_fragment_tables_are_the_isas():
    for lane in range(32):
        g, t = lane >> 2, lane & 3
        for r, (ro, ko) in enumerate(SM.A_FRAG):
            assert [_isa_a(2 * r + h, g, t) for h in (0, 1)] == \
                [(g + ro, 2 * t + ko + h) for h in (0, 1)]
        for r, ko in enumerate(SM.B_FRAG):
            assert [_isa_b(2 * r + h, g, t) for h in (0, 1)] == \
                [(2 * t + ko + h, g) for h in (0, 1)]
        for r, (ro, co) in enumerate(SM.C_FRAG):
            assert _isa_c(r, g, t) == (g + ro, 2 * t + co)


# the ISA formulas above, as C for the host build's MMA
MMA_SHIMS = r"""
#define TFTRT_DYN_SMEM(name, n) static uint4 name[n]
struct int4 { int x, y, z, w; };
struct alignas(8) int2 { int x, y; };
static int2 make_int2(int x, int y) { return int2{x, y}; }
static uint2 make_uint2(unsigned x, unsigned y) { return uint2{x, y}; }
static host_dim3 mt_gridDim = {1};
#define gridDim mt_gridDim
// a barrier of the 32 lanes of the calling thread's warp (blocks of whole warps)
static std::mutex wp_mutex[32];
static std::condition_variable wp_cv[32];
static unsigned wp_count[32], wp_gen[32];
static void wp_barrier() {
  const unsigned w = threadIdx.x / 32;
  std::unique_lock<std::mutex> lock(wp_mutex[w]);
  if (mt_broken) return;
  const unsigned gen = wp_gen[w];
  if (++wp_count[w] == 32) { wp_count[w] = 0; ++wp_gen[w]; wp_cv[w].notify_all(); return; }
  if (!wp_cv[w].wait_for(lock, std::chrono::seconds(20),
                         [&] { return gen != wp_gen[w] || mt_broken; })) {
    mt_broken = true;
    wp_cv[w].notify_all();
  }
}
#define __syncwarp() wp_barrier()
static unsigned pack_h2(float lo, float hi) {
  return (unsigned)f2h(lo) | ((unsigned)f2h(hi) << 16); }
static float half_of(unsigned reg, int i) { return h2f((unsigned short)(reg >> (16 * (i & 1)))); }
static unsigned wp_a[32][32][4], wp_b[32][32][2];
static void mma_16816(float* c, const unsigned* a, unsigned b0, unsigned b1) {
  const unsigned w = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int r = 0; r < 4; ++r) wp_a[w][lane][r] = a[r];
  wp_b[w][lane][0] = b0; wp_b[w][lane][1] = b1;
  wp_barrier();
  float A[16][16], B[16][8];
  for (int l = 0; l < 32; ++l) {
    const int g = l >> 2, t = l & 3;
    for (int i = 0; i < 8; ++i) {
      const int row = (i < 2 || (i >= 4 && i < 6)) ? g : g + 8;
      const int col = 2 * t + (i & 1) + (i >= 4 ? 8 : 0);
      A[row][col] = half_of(wp_a[w][l][i / 2], i);
    }
    for (int i = 0; i < 4; ++i) B[2 * t + (i & 1) + (i >= 2 ? 8 : 0)][g] =
        half_of(wp_b[w][l][i / 2], i);
  }
  const int g = lane >> 2, t = lane & 3;
  for (int i = 0; i < 4; ++i) {
    const int row = i < 2 ? g : g + 8, col = 2 * t + (i & 1);
    float s = c[i];
    for (int kk = 0; kk < 16; ++kk) s += A[row][kk] * B[kk][col];
    c[i] = s;
  }
  wp_barrier();  // every lane has read the exchange before the next MMA writes it
}
// ldmatrix.m8n8.b16 (PTX ISA, "Warp-level matrix load instruction: ldmatrix"): lanes 8i..8i+7
// give the addresses of rows 0..7 of matrix i (16 bytes each; .x2: lanes 0..15 only), and
// lane L receives in register i the 32 bits of row L / 4 of matrix i at columns 2 (L % 4),
// 2 (L % 4) + 1
static const void* wp_p[32][32];
static void ldsm_x(unsigned* r, const unsigned short* p, int n) {
  const unsigned w = threadIdx.x / 32, lane = threadIdx.x % 32;
  wp_p[w][lane] = p;
  wp_barrier();
  for (int i = 0; i < n; ++i)
    memcpy(&r[i], (const char*)wp_p[w][8 * i + lane / 4] + 4 * (lane % 4), 4);
  wp_barrier();
}
static void ldsm_x4(unsigned* r, const unsigned short* p) { ldsm_x(r, p, 4); }
static void ldsm_x2(unsigned* r, const unsigned short* p) { ldsm_x(r, p, 2); }
"""


def _rename(src: str, k) -> str:
    body = src.replace(C.PRELUDE, "").replace(SM.MMA_HELPERS, "")
    return re.sub(rf"\b{SM.KERNEL}\(", f"{SM.KERNEL}_{k}(", body)


def _driver(src, k: int, kernel: str = SM.KERNEL) -> str:
    """``run_<k>(args, blocks, threads)``: every block of the grid of ``kernel``'s case ``k``
    (renamed ``<kernel>_<k>``; ``src.params`` its parameters), one host thread per block
    thread (``gridDim`` the block count); returns 1 when a barrier timed out. The tensor-core
    kernels' drivers (stem_mma, qmma): the warp barrier is reset too."""
    call = ", ".join(f"({ty})a[{j}]" for j, (ty, _) in enumerate(src.params))
    return f"""
extern "C" int run_{k}(void** a, int blocks, int threads) {{
  mt_blockDim.x = threads; mt_size = threads; mt_count = 0; mt_broken = false;
  mt_gridDim.x = blocks;
  for (int w = 0; w < 32; ++w) wp_count[w] = 0;
  std::vector<std::thread> ts;
  for (int t = 0; t < threads; ++t) ts.emplace_back([=] {{
    mt_threadIdx.x = t;
    for (int b = 0; b < blocks; ++b) {{
      mt_blockIdx.x = b;
      {kernel}_{k}({call});
      mt_barrier();  // the block's end: its shared memory is free for the next
    }}
  }});
  for (auto& t : ts) t.join();
  return mt_broken ? 1 : 0;
}}"""


@pytest.fixture(scope="module")
def host_kernels(tmp_path_factory):
    if _host_compiler() is None:
        pytest.skip("no host C++ compiler")
    srcs = [_source(case) for case in CASES]
    return srcs, _host_build(srcs, tmp_path_factory.mktemp("stem_mma"), "stem_mma")


def _check_host(so, k, src, case, seed, batch=None, edit=None):
    """Runs case ``k``'s kernel (``src`` built into ``so``), its blocks of 128 threads with
    the emulated MMA, at ``batch`` (default the case's) and checks it against the numpy
    backend on the float16-rounded image and filter: every output written (no NaN: the
    cases' epilogues give none), nothing before y, within one float16 rounding (the kernel
    sums in float32, numpy in float64). ``edit(ins)`` may change the inputs first."""
    xs, kk, s, pads, cout, dt, dt_out, epi, offset, opts = case
    if batch is not None:
        case = ((batch,) + tuple(xs[1:]), kk, s, pads, cout, dt, dt_out, epi, offset, opts)
    ins = _inputs(case, seed=seed)
    if edit is not None:
        edit(ins)
    ref_ins = [ins[0].astype(np.float16).astype(np.float32), ins[1].astype(np.float32)] + \
        ins[2:]
    want = _reference(case[:8] + (offset,), ref_ins)
    operands = {2: ins[2], 3: ins[3], 4: ins[4]}
    buf = np.full(want.size + offset, np.nan, dt_out)  # every output must be written
    y = buf[offset:].reshape(want.shape)
    args = [ins[0], _wt(ins[1], src)] + [operands[i] for i in src.operands] + \
        [y, case[0][0]]
    _run_host(so, k, args, src.blocks if batch is None else _source(case).blocks, src.threads)
    what = f"case {k} {case}, batch {case[0][0]}"
    got = y.astype(np.float64)
    assert not np.isnan(got).any(), f"{what}: outputs not written"
    assert np.isnan(buf[:offset]).all(), f"{what}: wrote before y"
    inf = ~np.isfinite(want)  # infinite where numpy's is (an infinite pixel in a window)
    assert (got[inf] == want[inf]).all(), f"{what}: infinities differ"
    got, want = got[~inf], want[~inf]
    tol = np.abs(want) * 2.0 ** -10 + 1e-4 * np.abs(want).max()
    bad = np.flatnonzero(np.abs(got - want) > tol)
    assert not len(bad), f"{what}: {len(bad)} of {y.size} differ, e.g. " \
        f"{got.ravel()[bad[:3]].tolist()} vs {want.ravel()[bad[:3]].tolist()}"


def _host_build(srcs, tmp_path, name):
    """The kernels of ``srcs`` with their drivers, built for the host."""
    text = HOST_SHIMS + THREAD_SHIMS + MMA_SHIMS + C.MATH_HELPERS + "\n".join(
        _rename(s.source, k) + _driver(s, k) for k, s in enumerate(srcs))
    return _build(text, tmp_path, name)


@pytest.mark.parametrize("k", range(len(CASES)))
def test_host_build_matches_numpy(host_kernels, k):
    """A case's kernel (row tiles, the default where they apply: every case here) against
    the numpy backend (_check_host)."""
    srcs, so = host_kernels
    assert srcs[k].rows
    _check_host(so, k, srcs[k], CASES[k], seed=k)


def _gather(case):
    """``case`` with row tiles off: the gather kernel."""
    return case[:9] + (dict(case[9], rows=False),)


def test_the_gather_kernel_matches_numpy(tmp_path):
    """rows=False (each lane gathers its A fragments from x; the kernel where row tiles do
    not apply) computes every case as the numpy backend does."""
    if _host_compiler() is None:
        pytest.skip("no host C++ compiler")
    cases = [_gather(c) for c in CASES]
    srcs = [_source(c) for c in cases]
    assert not any(s.rows for s in srcs) and all("int4 ktab" in s.source for s in srcs)
    so = _host_build(srcs, tmp_path, "stem_mma_gather")
    for k, (case, src) in enumerate(zip(cases, srcs)):
        _check_host(so, k, src, case, seed=k)


def test_ldmatrix_loads_compute_the_same(tmp_path):
    """ldsm=True (B fragments with ldmatrix.x4 per two n-tiles, .x2 for an odd last one,
    emulated on the host from the ISA's description) computes every case as the numpy
    backend does: even and odd n-tile counts (Cout 24, 40, 136 = 128 + 8), two chunks."""
    if _host_compiler() is None:
        pytest.skip("no host C++ compiler")
    srcs = [_source(case[:9] + (dict(case[9], ldsm=True, rows=False),)) for case in CASES]
    assert all("ldsm_x4(b, brow" in s.source for s in srcs)
    assert any("ldsm_x2(b, brow" in s.source and (s.dims["cout"] // 8) % 2 for s in srcs)
    assert "ldsm_x4(b, brow" not in _source(CASES[0][:9] + (dict(ldsm=False, rows=False),)).source
    so = _host_build(srcs, tmp_path, "stem_mma_ldsm")
    for k, (case, src) in enumerate(zip(CASES, srcs)):
        _check_host(so, k, src, case, seed=k)


# cases whose m-tiles lie in one output row (Wo a multiple of 16: every tile staged) or some
# of them (Wo 40: the third tile of a row crosses it and gathers directly), for stage=True
STAGE_CASES = [
    ((1, 9, 64, 3), (7, 7), (2, 2), (3, 3, 3, 3), 64, "float16", "float16", "bias+relu", 0,
     {}),                                                         # ResNet, Wo 32
    ((2, 5, 40, 3), (3, 3), (1, 1), (1, 1, 1, 1), 136, "float32", "float16", "bias+silu", 2,
     {}),                                                         # VGG, Wo 40, two chunks
    ((1, 7, 64, 3), (3, 3), (2, 2), (0, 0, 1, 1), 32, "float32", "float16", "bias+add+relu",
     0, dict(mt=1, max_blocks=1)),                                # SAME s2, Wo 32, grid loop
    ((2, 8, 128, 3), (4, 4), (4, 4), (0, 0, 0, 0), 96, "float16", "float16", "bias", 8,
     {}),                                                         # patchify, Wo 32
]


def test_staged_patches_compute_the_same(tmp_path):
    """stage=True (each m-tile in one output row gathers A from its input patch staged in
    shared memory, zero outside the image; the rest from x directly) computes every case as
    the numpy backend does: tiles all staged (Wo 32), mixed (Wo 37, 40), none (Wo < 16),
    padding on every side, k past K, float16 / float32 x, two chunks, a looping grid."""
    if _host_compiler() is None:
        pytest.skip("no host C++ compiler")
    cases = STAGE_CASES + [c for c in CASES if c[0][3] % 16]  # (vector gathers: unstaged)
    srcs = [_source(case[:9] + (dict(case[9], stage=True),)) for case in cases]
    # the last case's filter (192 x 64) and staging leave no room for the patches
    assert [s.stage for s in srcs] == [True] * (len(srcs) - 1) + [False]
    assert all(("if (staged)" in s.source) == s.stage for s in srcs)
    assert not _source(CASES[0][:9] + (dict(stage=False),)).stage
    so = _host_build(srcs, tmp_path, "stem_mma_stage")
    for k, (case, src) in enumerate(zip(cases, srcs)):
        _check_host(so, k, src, case, seed=50 + k)


def test_an_infinite_pixel_gives_what_numpy_gives(tmp_path):
    """An image with +-inf pixels (ResNet's 147 taps padded to 160: the last k step holds
    taps past K, whose filter columns are zero): the outputs of windows that read them are
    what numpy gives (inf, or 0 after the ReLU), with no NaN, staged or not -- a tap past K
    must read zero, not a pixel (0 x inf is NaN)."""
    if _host_compiler() is None:
        pytest.skip("no host C++ compiler")
    case = STAGE_CASES[0]
    srcs = [_source(case[:9] + (opts,)) for opts in (dict(stage=True), dict(rows=False),
                                                     dict(rows=True))]
    assert [s.stage for s in srcs] == [True, False, False] and srcs[2].rows["kp"] == 208 > \
        srcs[2].rows["kr"]  # row tiles: taps (ky, kx, c) with c padded to 4, 196 past K
    so = _host_build(srcs, tmp_path, "stem_mma_inf")

    def poke(ins):  # two windows' first taps (odd rows and columns: 2 o - 3) and others
        ins[0][0, 3, 5, 0] = np.inf
        ins[0][0, 7, 41, 0] = -np.inf
        ins[0][0, 4, 17, 1] = np.inf

    for k, src in enumerate(srcs):
        _check_host(so, k, src, case, seed=7, edit=poke)


# int8 stores (an INT8 model's stem before its int8 max pool): (case of CASES' form with an
# int8 y, out_scale and nan_code in its options)
INT8_CASES = [
    ((1, 12, 11, 3), (7, 7), (2, 2), (3, 3, 3, 3), 64, "float16", "int8", "bias+relu", 0,
     dict(out_scale=0.02, nan_code=-128)),                        # ResNet: 16-byte stores
    ((1, 5, 6, 3), (3, 3), (1, 1), (1, 1, 1, 1), 136, "float32", "int8", "bias", 4,
     dict(out_scale=0.01, nan_code=-128)),                        # chunks 128 + 8: 4 bytes
    ((2, 9, 37, 3), (3, 3), (1, 1), (1, 1, 1, 1), 64, "float32", "int8", "bias", 1,
     dict(out_scale=0.01)),                                       # byte stores; NaN -> 0
]


def test_int8_stores_give_the_codes_of_the_float_results(tmp_path):
    """With ``out_scale`` the kernel stores ``q_int8(v * (1 / out_scale))`` of its float32
    results (round half to even, +-127: quantization.quantize_int8), a NaN result as
    ``nan_code``: against numpy's results quantized the same way, one step off at most where
    the float32 and float64 sums fall on two sides of a rounding boundary, and every output
    written, nothing before y; NaN pixels make NaN results (NaN x 0 taps too)."""
    from tests.engine.test_qmma_codegen import FAST_SHIMS
    from tests.engine.test_quant_codegen import QUANT_SHIMS
    from tftrt.engine import quantization as Q
    if _host_compiler() is None:
        pytest.skip("no host C++ compiler")
    cases = INT8_CASES + [_gather(c) for c in INT8_CASES]
    srcs = [_source(case) for case in cases]
    assert [bool(s.rows) for s in srcs] == [True] * 3 + [False] * 3
    assert all("pack_q2(o0, o1" in s.source for s in srcs)
    text = HOST_SHIMS + THREAD_SHIMS + MMA_SHIMS + C.MATH_HELPERS + QUANT_SHIMS + FAST_SHIMS + \
        SM.Q_HELPERS + "\n".join(_rename(s.source.replace(SM.Q_HELPERS, ""), k) +
                                  _driver(s, k) for k, s in enumerate(srcs))
    so = _build(text, tmp_path, "stem_mma_int8")
    for k, (case, src) in enumerate(zip(cases, srcs)):
        xs, kk, st, pads, cout, dt, _, epi, offset, opts = case
        ins = _inputs(case, seed=90 + k)
        ins[0][0, 2, 3, :] = np.nan
        ref_ins = [ins[0].astype(np.float16).astype(np.float32), ins[1].astype(np.float32)] + \
            ins[2:]
        want_f = _reference(case[:6] + ("float32", epi, offset), ref_ins)
        want = Q.quantize_int8(want_f, Q.inv_scale(opts["out_scale"])).astype(np.int64)
        want[np.isnan(want_f)] = opts.get("nan_code", 0)
        buf = np.full(want.size + offset, 99, np.int8)  # 99: never a code here (scales)
        y = buf[offset:].reshape(want.shape)
        args = [ins[0], _wt(ins[1], src)] + [{2: ins[2], 3: ins[3]}[i]
                                                for i in src.operands] + [y, xs[0]]
        _run_host(so, k, args, src.blocks, src.threads)
        what = f"int8 case {k}"
        assert (buf[:offset] == 99).all(), f"{what}: wrote before y"
        assert np.isnan(want_f).any() and (want == opts.get("nan_code", 0)).any()
        d = np.abs(y.astype(np.int64) - want)
        assert d.max() <= 1 and np.mean(d > 0) < 0.01, f"{what}: {np.count_nonzero(d)} of " \
            f"{d.size} codes off, max {d.max()}"
        assert np.array_equal(y[np.isnan(want_f)], want[np.isnan(want_f)]), f"{what}: NaN"


def test_pack_q2_is_quantize_int8_bit_for_bit(tmp_path):
    """The stem's int8 store helper (FAST_INT8's form, no conversion unit) gives
    quantization.quantize_int8's codes of v * inv for both channels of a pair, NaN as the
    NaN code, over every rounding tie and its neighbours, infinities, signed zeros, values
    past +-127 and a million random floats; a wrong rounding would fail it."""
    import ctypes

    from tests.engine.test_qmma_codegen import FAST_SHIMS
    from tests.engine.test_quant_codegen import QUANT_SHIMS
    from tftrt.engine import quantization as Q
    if _host_compiler() is None:
        pytest.skip("no host C++ compiler")
    inv = np.float32(1.0) / np.float32(0.0371)
    text = HOST_SHIMS + C.MATH_HELPERS + QUANT_SHIMS + FAST_SHIMS + SM.Q_HELPERS + r"""
extern "C" void pack(const float* v, long long n, float inv, unsigned short* out) {
  for (long long i = 0; i + 1 < n; i += 2) out[i / 2] = pack_q2(v[i], v[i + 1], inv, -128);
}"""
    lib = _build(text, tmp_path, "pack_q2")
    ties = (np.arange(-300, 301, dtype=np.float32) / np.float32(2)) / inv
    near = np.concatenate([np.nextafter(ties, np.float32(np.inf)),
                           np.nextafter(ties, np.float32(-np.inf))])
    special = np.array([np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0, 1e30, -1e30, 1e-40,
                        np.nan], np.float32)
    rng = np.random.default_rng(5)
    v = np.concatenate([ties, near, special, (rng.standard_normal(10 ** 6) * 3)
                        .astype(np.float32)]).astype(np.float32)
    v = v[:len(v) // 2 * 2]
    out = np.zeros(len(v) // 2, np.uint16)
    lib.pack(v.ctypes.data_as(ctypes.c_void_p), ctypes.c_longlong(len(v)), ctypes.c_float(inv),
             out.ctypes.data_as(ctypes.c_void_p))
    want = Q.quantize_int8(v, inv)
    want[np.isnan(v)] = -128
    got = out.view(np.int8).reshape(-1)  # little-endian: the low byte (lower channel) first
    np.testing.assert_array_equal(got, want)


def test_an_int8_store_needs_a_scale_and_a_float16_store_none():
    with pytest.raises(ValueError, match="int8 codes of an output scale"):
        _source(INT8_CASES[0][:9] + ({},))
    with pytest.raises(ValueError, match="with a scale"):
        _source(CASES[0][:9] + (dict(out_scale=0.5),))


def test_staging_applies_where_the_patch_fits():
    """The zoo's stems stage (ResNet's patch: 7 rows of 37 pixels of 3 channels); a patch over
    STAGE_MAX halves, or one the shared memory cannot hold, keeps the direct gathers."""
    resnet = SM.StemMmaSource((1, 224, 224, 3), (7, 7), (2, 2), (3, 3, 3, 3),
                              (1, 112, 112, 64), "float32", "float16", [], {}, stage=True)
    assert resnet.stage and resnet.patch == 7 * 37 * 3 and resnet.patch_w == 37
    # Wo 112: every m-tile staged, so no x-offset table (the compile test checks the bytes)
    assert not resnet.direct and "int4 ktab" not in resnet.source
    mixed = _source(STAGE_CASES[1][:9] + (dict(stage=True),))   # Wo 40
    assert mixed.stage and mixed.direct and "int4 ktab" in mixed.source
    assert resnet.smem_bytes <= SM.SMEM_LIMIT
    assert "if (staged)" in resnet.source and "} else {" not in resnet.source.split(
        "if (staged) {")[1].split("#pragma unroll")[0]
    wide = SM.StemMmaSource((1, 64, 256, 2), (8, 8), (4, 4), (0, 0, 0, 0), (1, 15, 63, 16),
                            "float32", "float16", [], {}, stage=True)   # 8 x 68 x 2 = 1088
    assert wide.stage
    too_big = SM.StemMmaSource((1, 200, 64, 1), (160, 1), (1, 4), (0, 0, 0, 0),
                               (1, 41, 16, 8), "float32", "float16", [], {}, stage=True)
    assert too_big.patch > SM.STAGE_MAX and not too_big.stage
    assert "if (staged)" not in too_big.source


@pytest.mark.parametrize("k,batch", [(0, 5), (4, 3), (7, 1)])
def test_one_source_serves_every_batch_size(host_kernels, k, batch):
    """The batch is the kernel's argument ``nb``: a case's source at another batch size is
    the same text (an optimization profile's engines compile it once), and the kernel built
    from the case's source computes that batch (its own grid, ``nb`` = the batch)."""
    srcs, so = host_kernels
    xs, kk, st, pads, cout, dt, dt_out, epi, offset, opts = CASES[k]
    case = ((batch,) + tuple(xs[1:]), kk, st, pads, cout, dt, dt_out, epi, offset, opts)
    src = _source(case)
    assert src.source == srcs[k].source and src.n == batch != srcs[k].n
    _check_host(so, k, srcs[k], CASES[k], seed=100 + k, batch=batch)


def test_cases_cover_what_the_kernel_takes():
    """The host cases exercise both x dtypes, strides 1 to 4, Kp from 16 to 160, one and two
    chunks, pixel counts no block tile divides (and one under a single m-tile), a capped grid
    that loops, and each store width (guards edits of CASES); with row tiles, one and two
    m-tiles a warp (and a tile whose last unit's second m-tile is past it), taps past K, a
    padded input channel, output rows no tile divides and several tiles a block."""
    rows = [_source(case).rows for case in CASES]
    assert {r["nm"] for r in rows} == {1, 2}
    assert any(r["nm"] == 2 and r["r"] * r["mtr"] % 2 for r in rows)
    assert any(r["kp"] > r["kr"] for r in rows) and any(r["kp"] == r["kr"] for r in rows)
    assert any(c[0][3] % 2 for c in CASES) and any(c[0][3] % 2 == 0 for c in CASES)
    assert any(c[0][1] > r["r"] for c, r in zip(CASES, rows))
    assert any(_source(c).blocks < _source(c).tiles for c in CASES)
    srcs = [_source(_gather(case)) for case in CASES]
    assert {s.in_dtype for s in srcs} == {"float16", "float32"}
    assert {s.dims["sh"] for s in srcs} >= {1, 2, 4} and any(s.dims["sw"] == 3 for s in srcs)
    assert {s.kp for s in srcs} >= {16, 32, 48, 160, 256}
    assert [s.vec for s in srcs].count(True) == 2 and all(
        s.vec == (s.dims["cin"] % 16 == 0) for s in srcs)
    assert {len(SM.chunks(s.dims["cout"])) for s in srcs} == {1, 2}
    assert any(s.m % (SM.WARPS * s.mt * 16) for s in srcs) and any(s.m < 16 for s in srcs)
    assert any(s.blocks < s.tiles for s in srcs)
    assert {c[8] % 8 for c in CASES} == {0, 1, 2}


# --- what the kernel refuses -----------------------------------------------------------------
def test_what_the_kernel_refuses():
    ok = dict(x_shape=(1, 8, 8, 3), k_hw=(3, 3), strides=(1, 1), pads=(1, 1, 1, 1),
              out_shape=(1, 8, 8, 16), in_dtype="float32", out_dtype="float16", epilogue=[],
              operand_modes={})
    SM.StemMmaSource(**ok)
    gather = dict(rows=False)
    for change, match in [
            (dict(rows=True, x_shape=(1, 8, 8, 16), in_dtype="float16", k_hw=(5, 5),
                  pads=(2, 2, 2, 2)), "row tiles take KH\\*KW\\*Cin .*up to 256.*not this "
                                      "5x5 conv over 16 channels"),
            (dict(rows=True, x_shape=(1, 8, 4000, 3), out_shape=(1, 8, 4000, 256)),
             "row tiles"),
            (dict(out_dtype="float32"), "writes float16 y, or int8 codes .*; not float32"),
            (dict(out_dtype="int8"), "int8 codes of an output scale; not int8$"),
            (dict(gather, x_shape=(1, 8, 8, 4), k_hw=(7, 7), pads=(3, 3, 3, 3)),
             "196 taps \\(padded to 208\\).*up to 160"),
            (dict(out_shape=(1, 8, 8, 12)), "multiple of 8 up to 256, not 12"),
            (dict(vec=True), "vector gathers take float16 x with input channels a multiple "
                             "of 16, unstaged; not float32 x with 3"),
            (dict(x_shape=(1, 8, 8, 16), in_dtype="float16", k_hw=(5, 5), pads=(2, 2, 2, 2)),
             "400 taps \\(padded to 400\\).*up to 256"),
            (dict(out_shape=(1, 8, 8, 264)), "multiple of 8 up to 256, not 264"),
            (dict(in_dtype="int8"), "float16 / float32 x"),
            (dict(out_shape=(2, 8, 8, 16)), "not a conv"),
            (dict(gather, x_shape=(1, 8, 8, 3), k_hw=(7, 7), pads=(3, 3, 3, 3),
                  out_shape=(1, 8, 8, 256)), "shared memory")]:
        with pytest.raises(ValueError, match=match):
            SM.StemMmaSource(**dict(ok, **change))


def _conv_layer(cin=3, cout=16, ks=3, attrs=None, precision="FP16"):
    """A numpy engine's network with one conv (+ bias, ReLU) on NHWC x whose output is cast to
    float16 (so that an FP16 build stores the conv's y as float16), and that layer."""
    from onnx import TensorProto, helper

    from tests.engine.harness import make_model, rand
    from tftrt.engine import BuilderConfig, build_engine
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["t", "w", "b"], ["c"],
                              **(attrs or {"pads": [1, 1, 1, 1]})),
             helper.make_node("Transpose", ["c"], ["h"], perm=[0, 2, 3, 1]),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Cast", ["r"], ["y"], to=TensorProto.FLOAT16)]
    feeds = {"x": rand(2, 9, 9, cin)}
    model = make_model(nodes, feeds, {"w": rand(cout, cin, ks, ks, seed=1),
                                      "b": rand(cout, seed=2)})
    eng = build_engine(model, {"x": feeds["x"].shape},
                       BuilderConfig(backend="numpy", precision=precision,
                                     tactic_timing=False))
    (conv,) = [l for l in eng.network.layers if l.kind == "conv"]
    return eng.network, conv


def test_the_tactic_applies_to_few_channel_float16_convs_unless_switched_off(monkeypatch):
    """``stem_mma`` is registered for conv layers on CuPy and applies to group-1 convs of
    unaligned few input channels with a float16 output, unless TFTRT_STEM_MMA=0 (on by
    default), never to aligned channels, a float32 output, too many taps or a dilated conv."""
    from tftrt.engine import tactics
    from tftrt.engine.backends import cupy_backend
    assert "stem_mma" in [t.name for t in tactics._REGISTRY[("cupy", "conv")]]
    monkeypatch.delenv("TFTRT_STEM_MMA", raising=False)
    net, conv = _conv_layer()
    assert SM.unsupported(net, conv) is None                        # the default: on
    assert net.tensors[conv.outputs[0]].dtype == "float16"
    assert conv.epilogue and cupy_backend._stem_mma(net, conv), SM.unsupported(net, conv)
    p = SM.layer_params(net, conv)
    assert p["k_hw"] == (3, 3) and p["out_shape"] == (2, 9, 9, 16)
    assert [m for m, _ in p["operand_modes"].values()] == ["vec"]
    monkeypatch.setenv("TFTRT_STEM_MMA", "0")
    assert not cupy_backend._stem_mma(net, conv)
    assert SM.unsupported(net, conv) == "off (TFTRT_STEM_MMA=0)"
    monkeypatch.setenv("TFTRT_STEM_MMA", "1")
    assert not cupy_backend._stem_mma(*_conv_layer(cin=8))          # aligned channels
    net, conv = _conv_layer(precision="FP32")                         # float32 y
    assert "writes float16 y, or int8 codes" in SM.unsupported(net, conv)
    assert not cupy_backend._stem_mma(net, conv)
    net, conv = _conv_layer(cin=3, ks=7, attrs={"pads": [3, 3, 3, 3]})   # ResNet's 147 taps
    assert SM.unsupported(net, conv) is None and cupy_backend._stem_mma(net, conv)
    net, conv = _conv_layer(cin=5, ks=7, attrs={"pads": [3, 3, 3, 3]})   # 245 taps
    assert "245 taps" in SM.unsupported(net, conv)
    net, conv = _conv_layer(attrs={"pads": [2, 2, 2, 2], "dilations": [2, 2]})
    assert "dilation 1" in SM.unsupported(net, conv)
    net, conv = _conv_layer(cout=12)
    assert "multiple of 8" in SM.unsupported(net, conv)


def test_the_tactic_takes_a_stem_rearranged_by_space_to_depth(monkeypatch):
    """A 7x7 / 2 stem rearranged by passes/stem_space_to_depth (4x4 / 1 over 16 channels, K
    256) is offered stem_mma with vector gathers; another conv over 16 channels is not (the
    libraries' aligned convs), nor the rearranged one with TFTRT_STEM_MMA=0."""
    from tftrt.engine.backends import cupy_backend
    monkeypatch.delenv("TFTRT_STEM_MMA", raising=False)
    monkeypatch.setenv("TFTRT_STEM_S2D", "1")
    net, conv = _conv_layer(cin=3, ks=7, attrs={"pads": [3, 3, 3, 3], "strides": [2, 2]})
    assert conv.attrs["space_to_depth"] == {"stride": 2, "kernel": [7, 7]}
    assert cupy_backend._stem_mma(net, conv), SM.unsupported(net, conv)
    src = SM.StemMmaSource(**SM.layer_params(net, conv))
    assert src.vec and src.kp == 256 and src.dims["cin"] == 16
    assert sorted(src.k_order.tolist()) == list(range(256))
    monkeypatch.setenv("TFTRT_STEM_S2D", "0")
    net16, conv16 = _conv_layer(cin=16)
    assert SM.unsupported(net16, conv16) is None and not cupy_backend._stem_mma(net16, conv16)
    monkeypatch.setenv("TFTRT_STEM_MMA", "0")
    assert not cupy_backend._stem_mma(net, conv)


def test_the_impl_chain_falls_back_on_the_gpu():
    """What runs tactic ``stem_mma``: the kernel, then cuDNN and im2col (both on the GPU)
    when it cannot."""
    pytest.importorskip("cupy")
    from tftrt.engine.backends import cupy_backend
    try:
        chain = cupy_backend.impl_table()["conv"]["stem_mma"]
    except Exception as e:  # a CuPy that cannot load its CUDA libraries here
        pytest.skip(f"CuPy backend modules do not import here: {e}")
    assert [c.__name__ for c in chain] == ["StemMma", "ConvCudnn", "ConvIm2col"]


# --- compiling -------------------------------------------------------------------------------
def _same(h, k, s):
    ho = -(-h // s)
    total = max((ho - 1) * s + k - h, 0)
    return ho, (total // 2, total // 2, total - total // 2, total - total // 2)


# (name, x shape, k, stride, pads (None: TF SAME), Cout): the zoo's stems at batch 128
ZOO = [("vgg", (128, 224, 224, 3), 3, 1, 1, 64),
       ("resnet", (128, 224, 224, 3), 7, 2, 3, 64),
       ("mobilenet", (128, 224, 224, 3), 3, 2, None, 32),
       ("inception", (128, 299, 299, 3), 3, 2, 0, 32),
       ("convnext", (128, 224, 224, 3), 4, 4, 0, 96),
       ("efficientnet", (128, 300, 300, 3), 3, 2, None, 40)]
ZOO_EPILOGUES = ["bias+relu", "bias+silu", "bias+relu6", "bias+add+relu"]


def _zoo_sources():
    """Every zoo stem with float16 and float32 x: bias + ReLU, and one other epilogue each
    (in turn), as (name, source)."""
    for z, (name, xs, k, s, p, cout) in enumerate(ZOO):
        if p is None:
            ho, pads = _same(xs[1], k, s)
        else:
            ho, pads = (xs[1] + 2 * p - k) // s + 1, (p,) * 4
        for dt in ("float16", "float32"):
            for epi in dict.fromkeys(["bias+relu", ZOO_EPILOGUES[1 + z % 3]]):
                epilogue, modes = _epilogue_spec(epi, "float16")
                yield f"{name} {dt} {epi}", SM.StemMmaSource(
                    xs, (k, k), (s, s), pads, (xs[0], ho, ho, cout), dt, "float16", epilogue,
                    modes)
            epilogue, modes = _epilogue_spec("bias+relu", "float16")
            for rows in (True, False):
                yield f"{name} {dt} bias+relu rows={rows}", SM.StemMmaSource(
                    xs, (k, k), (s, s), pads, (xs[0], ho, ho, cout), dt, "float16", epilogue,
                    modes, rows=rows)
            yield f"{name} {dt} bias+relu staged", SM.StemMmaSource(
                xs, (k, k), (s, s), pads, (xs[0], ho, ho, cout), dt, "float16", epilogue, modes,
                stage=True)
            yield f"{name} {dt} bias+relu int8", SM.StemMmaSource(
                xs, (k, k), (s, s), pads, (xs[0], ho, ho, cout), dt, "int8", epilogue, modes,
                out_scale=0.05, nan_code=-128)
    # ResNet's and MobileNet's stems rearranged (passes/stem_space_to_depth): vector gathers
    epilogue, modes = _epilogue_spec("bias+relu", "float16")
    for name, xs, k, ho, cout in (("resnet s2d", (128, 115, 115, 16), 4, 112, 64),
                                  ("mobilenet s2d", (128, 113, 113, 16), 2, 112, 32)):
        src = SM.StemMmaSource(xs, (k, k), (1, 1), (0,) * 4, (xs[0], ho, ho, cout), "float16",
                               "float16", epilogue, modes)
        assert src.vec
        yield f"{name} float16 bias+relu", src


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not on PATH")
def test_kernels_compile_for_sm90_without_spills(tmp_path):
    """The zoo's stems (and the host cases) compile for sm_90; ptxas spills no registers (a
    lane holds 4 accumulators per 8 channels of a chunk, up to 64), and the shared memory
    ptxas reports is what ``smem_bytes`` counts against SMEM_LIMIT (staged patches and
    their offset table included). Prints the register counts (pytest -s)."""
    named = list(_zoo_sources()) + [(f"case {k}", _source(c)) for k, c in enumerate(CASES)]
    text = C.PRELUDE + SM.MMA_HELPERS + SM.Q_HELPERS + "\n".join(
        _rename(s.source.replace(SM.Q_HELPERS, ""), k) for k, (_, s) in enumerate(named))
    r = nvcc_compile(text, tmp_path, "stem_mma", "-Xptxas", "-v")
    found = []  # per function: its number, spilled bytes, registers, static shared memory
    for part in r.stderr.split("Compiling entry function ")[1:]:
        k = re.match(rf"'{SM.KERNEL}_(\d+)'", part).group(1)
        smem = re.search(r"(\d+) bytes smem", part)  # none for dynamic shared memory only
        found.append((k, re.search(r"(\d+) bytes spill stores", part).group(1),
                      re.search(r"Used (\d+) registers", part).group(1),
                      smem.group(1) if smem else "0"))
    assert len(found) == len(named), r.stderr[-4000:]
    for k, spills, regs, smem in sorted(found, key=lambda f: int(f[0])):
        print(f"[stem_mma] {named[int(k)][0]}: {regs} registers, {spills} bytes spilled")
        src = named[int(k)][1]  # row tiles: dynamic shared memory, which ptxas leaves out
        assert int(smem) == (0 if src.rows else src.smem_bytes), (named[int(k)][0], smem)
        assert src.smem_bytes <= (SM.ROW_SMEM_LIMIT if src.rows else SM.SMEM_LIMIT)
    assert not any(int(s) for _, s, _, _ in found), r.stderr[-4000:]


def _fake_chain(monkeypatch, flag: str, pool: bool = False):
    """cupy_backend with an impl_table of two stand-in implementation classes, one whose
    ``flag`` (a make_impl guard's class attribute) is True and one whose is False: conv
    tactic stem_mma tries the False one first, cudnn has only it (``pool``: pools the True
    one). Returns (cupy_backend, the True class, the False class); no CuPy needed."""
    import sys
    import types
    from tftrt.engine.backends import cupy_backend
    # make_impl records the workspace under cupy_layers.signature
    monkeypatch.setitem(sys.modules, "tftrt.engine.backends.cupy_layers", types.SimpleNamespace(
        signature=lambda net, layer: layer.name))
    monkeypatch.setattr(cupy_backend, "_WORKSPACE", {})

    def init(self, net, layer, weights, opts):
        pass
    yes = type("Yes" if flag == "int8_store" else "Reads", (), {
        flag: True, "workspace": 0, "__init__": init})
    no = type("Floats" if flag == "int8_store" else "Halves", (yes,), {flag: False})
    table = {"conv": {"stem_mma": (no, yes), "cudnn": (no,)}}
    if pool:
        table["pool"] = {"default": (yes,)}
    monkeypatch.setattr(cupy_backend, "impl_table", lambda: table)
    return cupy_backend, yes, no


def test_only_implementations_that_store_int8_take_a_layer_storing_codes(monkeypatch):
    """make_impl: a float layer with an ``output_scale`` (a stem storing its max pool's
    codes, a pool storing its readers') goes only to implementations that store int8
    (``int8_store``): the tactic's chain skips the others, saying why, and fails when none
    does -- a cuDNN conv would write its float results into the int8 tensor."""
    cupy_backend, Stores, Floats = _fake_chain(monkeypatch, "int8_store", pool=True)
    net, conv = _conv_layer()
    conv.tactic = "stem_mma"
    assert type(cupy_backend.make_impl(net, conv, {}, {})) is Floats  # float output
    conv.attrs["output_scale"] = 0.05
    impl = cupy_backend.make_impl(net, conv, {}, {})
    assert type(impl) is Stores and "Floats: does not store int8 codes" in impl.fallback
    conv.tactic = "cudnn"
    with pytest.raises(EngineBuildError, match="does not store int8 codes"):
        cupy_backend.make_impl(net, conv, {}, {})
    pool = net.add_layer("pool", [conv.outputs[0]], ["p"], {"output_scale": 0.05})
    pool.tactic = "default"
    assert type(cupy_backend.make_impl(net, pool, {}, {})) is Stores
    # the real implementations that store codes say so: the pool, stem_mma
    import pathlib
    import re as re_
    root = pathlib.Path(cupy_backend.__file__).parent
    for path, cls in (("cupy_layers.py", "Pool"), ("cupy_stem_mma.py", "StemMma")):
        body = (root / path).read_text().split(f"class {cls}(Impl):")[1].split("\nclass ")[0]
        assert re_.search(r"^    int8_store = True", body, re_.M), cls


def test_only_implementations_that_read_float32_x_take_a_conv_reading_it(monkeypatch):
    """make_impl: an FP16 conv reading the float32 image itself (attrs["float32_x"],
    precision.absorb_input_casts) goes only to implementations that read it rounding to
    float16 (``float32_x``: stem_mma): the chain skips the others, saying why, and fails
    when none does -- cuDNN's FP16 graph would be handed a float32 tensor. The backend's
    hook offers only stem_mma's FP16 convs."""
    cupy_backend, Reads, Halves = _fake_chain(monkeypatch, "float32_x")
    net, conv = _conv_layer()
    conv.tactic = "stem_mma"
    assert type(cupy_backend.make_impl(net, conv, {}, {})) is Halves
    conv.attrs["float32_x"] = True
    impl = cupy_backend.make_impl(net, conv, {}, {})
    assert type(impl) is Reads and "Halves: does not read float32 x" in impl.fallback
    conv.tactic = "cudnn"
    with pytest.raises(EngineBuildError, match="does not read float32 x"):
        cupy_backend.make_impl(net, conv, {}, {})
    hook = cupy_backend.CupyBackend.reads_float32
    for tactic, precision, quant, want in (("stem_mma", "FP16", False, True),
                                           ("cudnn", "FP16", False, False),
                                           ("stem_mma", "FP32", False, False),
                                           ("stem_mma", "INT8", True, False)):
        conv.tactic, conv.precision = tactic, precision
        conv.attrs.pop("quant", None)
        if quant:
            conv.attrs["quant"] = {}
        assert hook(None, net, conv) is want, (tactic, precision, quant)
    import pathlib
    body = (pathlib.Path(cupy_backend.__file__).parent / "cupy_stem_mma.py").read_text()
    assert "\n    float32_x = True" in body.split("class StemMma(Impl):")[1]


def test_row_tiles_follow_their_switch_where_they_apply(monkeypatch):
    """TFTRT_STEM_MMA_ROWS picks row tiles or gathers for a stem both take: by default
    ("auto") row tiles for ResNet's 7x7 over 3 channels (K 147) and gathers for MobileNet's
    3x3 (K 27), "1" row tiles for both, "0" gathers; float16 x over 16 channels keeps the
    vector gathers either way, and the staged patches' switch (TFTRT_STEM_MMA_STAGE=1) the
    staged gathers."""
    resnet = ((1, 224, 224, 3), (7, 7), (2, 2), (3, 3, 3, 3), (1, 112, 112, 64), "float32",
              "float16", [], {})
    mobilenet = ((1, 224, 224, 3), (3, 3), (2, 2), (0, 0, 1, 1), (1, 112, 112, 32),
                 "float32", "float16", [], {})
    s2d = ((1, 115, 115, 16), (4, 4), (1, 1), (0,) * 4, (1, 112, 112, 64), "float16",
           "float16", [], {})
    monkeypatch.delenv("TFTRT_STEM_MMA_ROWS", raising=False)
    assert SM.StemMmaSource(*resnet).rows and SM.StemMmaSource(*mobilenet).rows is None
    monkeypatch.setenv("TFTRT_STEM_MMA_ROWS", "1")
    assert SM.StemMmaSource(*mobilenet).rows
    assert SM.StemMmaSource(*resnet).rows["r"] == 8 and SM.StemMmaSource(*s2d).vec
    monkeypatch.setenv("TFTRT_STEM_MMA_STAGE", "1")
    assert SM.StemMmaSource(*resnet).stage
    monkeypatch.delenv("TFTRT_STEM_MMA_STAGE")
    monkeypatch.setenv("TFTRT_STEM_MMA_ROWS", "0")
    src = SM.StemMmaSource(*resnet)
    assert src.rows is None and not src.stage and "int4 ktab" in src.source
