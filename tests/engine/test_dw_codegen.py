"""The tiled depthwise kernel's CUDA source (backends/cuda_source_dw, tactic ``dw_tiled``),
checked without a GPU: it compiles for sm_90 with nvcc without register spills, and built for
the host it computes what the numpy backend computes (numpy_ops.conv_depthwise, then the
layer's epilogue as numpy_backend applies it) for 3x3 / 5x5 / 7x7 / 9x9 and non-square
kernels, strides 1 and 2, odd sizes, SAME / VALID / asymmetric pads, channel counts no vector
width divides, float16 and float32, bias / scale / residual / activation epilogues.

Host builds use tests/engine/test_cuda_codegen's shims with threads on top: each block runs
as the kernel's real number of threads (std::thread, threadIdx thread-local, shared memory a
static, __syncthreads a barrier that fails the run after 20 s instead of hanging), and again
as one thread per block (blockDim 1, the shims' own model). With FMA contraction off, the
host build does numpy's float32 steps in numpy's order: answers without a transcendental
activation must be bit-equal.
"""

import ctypes
import re
import shutil
import subprocess
import types

import numpy as np
import pytest

from tests.engine.test_cuda_codegen import HOST_SHIMS, _host_compiler, nvcc_compile
from tftrt.engine.backends import cuda_source as C
from tftrt.engine.backends import cuda_source_dw as DW
from tftrt.engine.backends import numpy_ops
from tftrt.engine.backends.numpy_backend import _epilogue

# (x shape, (kh, kw), (sh, sw), pads (top, left, bottom, right), x dtype, y dtype, epilogue,
#  vec (None: widest that divides C), tile: a Tile, or the SM count the plan assumes (1: as
#  for a large batch, several strips of rh x rw outputs; 132: an H200 at batch 1, small tiles))
CASES = [
    ((2, 9, 11, 16), (7, 7), (1, 1), (3, 3, 3, 3), "float16", "float16", "bias+relu", None, 1),
    ((1, 13, 10, 24), (5, 5), (2, 2), (2, 1, 2, 2), "float32", "float32", "bias+silu", None,
     1),                                                          # TF SAME, stride 2, odd H
    ((2, 8, 8, 12), (3, 3), (2, 2), (0, 0, 1, 1), "float16", "float16", "bias+relu6", None,
     1),                                                          # C=12: 8-byte loads
    ((1, 7, 9, 7), (3, 3), (1, 1), (0, 0, 0, 0), "float16", "float32", "bias+add+relu", None,
     132),                                                        # VALID, C=7: scalar
    ((1, 10, 10, 40), (7, 7), (2, 2), (2, 2, 3, 3), "float32", "float32", "bias+gelu", None,
     1),
    ((2, 6, 5, 20), (3, 3), (1, 1), (1, 1, 1, 1), "float32", "float32", "scale+bias", None,
     DW.Tile(cg=8, rh=2, rw=3, nsh=2, nsw=1)),                    # partial tiles, C tail
    ((1, 9, 9, 16), (5, 5), (1, 1), (2, 2, 2, 2), "float16", "float16", "bias+relu", 1,
     1),                                                          # the unaligned build
    ((1, 8, 11, 8), (3, 5), (1, 2), (1, 2, 1, 2), "float32", "float32", "", None, 1),
    ((1, 11, 11, 8), (9, 9), (1, 1), (4, 4, 4, 4), "float32", "float16", "bias", None, 1),
    ((1, 7, 7, 96), (7, 7), (1, 1), (3, 3, 3, 3), "float16", "float16", "bias+add", None,
     132),                                                        # ConvNeXt's last stage
    ((1, 12, 12, 32), (3, 3), (2, 2), (0, 0, 1, 1), "float16", "float16", "bias+relu", 8,
     DW.Tile(cg=16, rh=1, rw=2, nsh=3, nsw=2)),                   # several strips per block
    ((1, 3, 4, 16), (7, 7), (1, 1), (3, 3, 3, 3), "float32", "float32", "bias+relu", None,
     1),                                                          # map smaller than K
    # the zoo's planned tiles (cuda_source_dw.plan_tile at batch 128) on maps they do not
    # divide
    ((1, 13, 17, 32), (7, 7), (1, 1), (3, 3, 3, 3), "float16", "float16", "bias+relu", None,
     DW.Tile(cg=16, rh=4, rw=7, nsh=2, nsw=2)),
    ((1, 19, 23, 64), (5, 5), (2, 2), (1, 1, 2, 2), "float16", "float16", "bias+relu", None,
     DW.Tile(cg=32, rh=4, rw=7, nsh=1, nsw=2)),
    ((2, 15, 16, 48), (3, 3), (2, 2), (0, 0, 1, 1), "float32", "float32", "bias+relu6", None,
     DW.Tile(cg=16, rh=4, rw=7, nsh=2, nsw=2)),
    ((1, 9, 10, 40), (5, 5), (1, 1), (2, 2, 2, 2), "float32", "float32", "bias+relu", None,
     DW.Tile(cg=8, rh=4, rw=7, nsh=2, nsw=2)),
    ((1, 56, 56, 96), (7, 7), (1, 1), (3, 3, 3, 3), "float16", "float16", "bias", None,
     DW.Tile(cg=16, rh=4, rw=7, nsh=7, nsw=2)),                   # ConvNeXt stage 1, b128
]
# epilogues with a transcendental function: numpy's exp / tanh vs the C library's
INEXACT = ("silu", "gelu")


def _out_hw(xs, k, s, pads):
    return tuple((xs[1 + d] + pads[d] + pads[2 + d] - k[d]) // s[d] + 1 for d in (0, 1))


def _epilogue_spec(epi: str, dt_out: str):
    """(epilogue list, operand modes) of a case; operands are layer inputs 2 (bias), 3
    (scale), 4 (residual)."""
    epilogue, modes = [], {}
    for part in filter(None, epi.split("+")):
        if part in ("bias", "scale"):
            i = 2 if part == "bias" else 3
            epilogue.append({"op": part, "input": i})
            modes[i] = ("vec", "float32")
        elif part == "add":
            epilogue.append({"op": "add", "input": 4})
            modes[4] = ("full", dt_out)
        elif part == "relu6":
            epilogue.append({"op": "act", "fn": "clip", "min": 0.0, "max": 6.0})
        elif part == "gelu":
            epilogue.append({"op": "act", "fn": "gelu", "approximate": "tanh"})
        else:
            epilogue.append({"op": "act", "fn": part})
    return epilogue, modes


def _source(case) -> DW.DwTiledSource:
    xs, k, s, pads, dt, dt_out, epi, vec, tile = case
    ho, wo = _out_hw(xs, k, s, pads)
    epilogue, modes = _epilogue_spec(epi, dt_out)
    plan = dict(tile=tile) if isinstance(tile, DW.Tile) else dict(sms=tile)
    return DW.DwTiledSource(xs, k, s, pads, (xs[0], ho, wo, xs[3]), dt, dt_out, epilogue,
                            modes, vec=vec, **plan)


def _inputs(case, seed):
    """Layer inputs [x, w, bias, scale, residual] of a case (w: [C, kh, kw, 1])."""
    xs, k, s, pads, dt, dt_out, epi, vec, tile = case
    rng = np.random.default_rng(seed)
    ho, wo = _out_hw(xs, k, s, pads)
    c = xs[3]
    return [rng.standard_normal(xs).astype(dt),
            (rng.standard_normal((c,) + tuple(k) + (1,)) / k[0]).astype(np.float32),
            rng.standard_normal(c).astype(np.float32),
            (rng.uniform(0.5, 1.5, c)).astype(np.float32),
            rng.standard_normal((xs[0], ho, wo, c)).astype(dt_out)]


def _reference(case, ins):
    """The numpy backend's answer: conv_depthwise, then its epilogue, stored as y's dtype."""
    xs, k, s, pads, dt, dt_out, epi, vec, tile = case
    c = xs[3]
    wdw = ins[1].reshape(c, -1).T[:, :, None]  # [kh * kw, C, multiplier 1]
    y = numpy_ops.conv_depthwise(ins[0], wdw, list(k), list(s), [1, 1], list(pads))
    epilogue, _ = _epilogue_spec(epi, dt_out)
    y = _epilogue(types.SimpleNamespace(epilogue=epilogue, name="dw"))(y, ins)
    return np.asarray(y).astype(dt_out)


# --- planning and what the kernel refuses --------------------------------------------------
ZOO = [  # (N, H, W, C, K, stride): ConvNeXtTiny, EfficientNetB0, MobileNetV3Large convs
    (128, 56, 56, 96, 7, 1), (128, 28, 28, 192, 7, 1), (128, 14, 14, 384, 7, 1),
    (128, 7, 7, 768, 7, 1), (1, 56, 56, 96, 7, 1), (1, 7, 7, 768, 7, 1),
    (128, 112, 112, 32, 3, 1), (128, 112, 112, 96, 3, 2), (128, 56, 56, 144, 5, 2),
    (128, 28, 28, 240, 5, 1), (128, 14, 14, 672, 5, 2), (128, 7, 7, 1152, 5, 1),
    (128, 112, 112, 16, 3, 1), (1, 112, 112, 32, 3, 1), (128, 28, 28, 72, 5, 2)]


def _zoo_sources(dtype, vec=None):
    for n, h, w, c, k, s in ZOO:
        ho, wo = -(-h // s), -(-w // s)
        total = [max((o - 1) * s + k - i, 0) for o, i in ((ho, h), (wo, w))]
        pads = (total[0] // 2, total[1] // 2, total[0] - total[0] // 2,
                total[1] - total[1] // 2)
        yield DW.DwTiledSource((n, h, w, c), (k, k), (s, s), pads, (n, ho, wo, c), dtype,
                               dtype, [{"op": "bias", "input": 2}, {"op": "act", "fn": "relu"}],
                               {2: ("vec", dtype)}, vec=vec)


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_planned_tiles_fit_and_cover_the_output(dtype):
    srcs = list(_zoo_sources(dtype))
    if dtype == "float16":  # the host cases run the tile planned for ConvNeXt at batch 128
        assert srcs[0].tile == CASES[-1][-1], f"the plan changed: make CASES[-1] {srcs[0].tile}"
    for src in srcs:
        g, t = src.geometry, src.tile
        ih, iw = g.in_tile(t)
        assert src.smem_bytes == 4 * ih * iw * t.cg <= 48 * 1024, (g, t)
        assert 32 <= src.threads <= 512 and t.cg % src.vec == 0, (g, t)
        assert src.vec == 16 // np.dtype(dtype).itemsize  # zoo channels take 16-byte loads
        # the grid covers every output exactly once: no tile starts past the map
        nth, ntw, ncg = src.grid
        assert (nth - 1) * t.th < g.ho <= nth * t.th and (ntw - 1) * t.tw < g.wo <= ntw * t.tw
        assert (ncg - 1) * t.cg < g.c <= ncg * t.cg
        assert src.blocks == g.n * nth * ntw * ncg
    # batch 1 of ConvNeXt's last stage still spreads over a large GPU's SMs
    small = DW.DwTiledSource((1, 7, 7, 768), (7, 7), (1, 1), (3, 3, 3, 3), (1, 7, 7, 768),
                             dtype, dtype, [], {})
    assert small.blocks >= 66


def test_what_the_kernel_refuses():
    ok = dict(x_shape=(1, 8, 8, 16), k_hw=(3, 3), strides=(1, 1), pads=(1, 1, 1, 1),
              out_shape=(1, 8, 8, 16), in_dtype="float16", out_dtype="float16", epilogue=[],
              operand_modes={})
    DW.DwTiledSource(**ok)
    for change, match in [
            (dict(strides=(3, 3), out_shape=(1, 3, 3, 16)), "strides 1 and 2"),
            (dict(k_hw=(11, 11), pads=(5, 5, 5, 5)), "more than 81 taps"),
            (dict(in_dtype="int8"), "float16 / float32"),
            (dict(out_shape=(1, 8, 8, 32)), "multiplier 1"),
            (dict(x_shape=(1, 8, 8, 12), out_shape=(1, 8, 8, 12), vec=8), "does not divide"),
            (dict(k_hw=(9, 9), pads=(4, 4, 4, 4), x_shape=(1, 64, 64, 512),
                  out_shape=(1, 64, 64, 512), tile=DW.Tile(64, 4, 8, 4, 2)), "shared memory")]:
        with pytest.raises(ValueError, match=match):
            DW.DwTiledSource(**dict(ok, **change))


def _depthwise_layer(attrs, c=16, ws=None):
    """A numpy engine's network with one depthwise conv (+ bias, ReLU) and that layer."""
    from onnx import helper

    from tests.engine.harness import make_model, rand
    from tftrt.engine import BuilderConfig, build_engine
    ws = ws or (c, 1, 3, 3)
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["t", "w", "b"], ["c"], **attrs),
             helper.make_node("Transpose", ["c"], ["h"], perm=[0, 2, 3, 1]),
             helper.make_node("Relu", ["h"], ["y"])]
    feeds = {"x": rand(2, 9, 9, c)}
    model = make_model(nodes, feeds, {"w": rand(*ws, seed=1), "b": rand(ws[0], seed=2)})
    eng = build_engine(model, {"x": feeds["x"].shape},
                       BuilderConfig(backend="numpy", tactic_timing=False))
    (conv,) = [l for l in eng.network.layers if l.kind == "conv"]
    return eng.network, conv


def test_the_tactic_applies_only_when_switched_on(monkeypatch):
    """``dw_tiled`` is registered for conv layers on CuPy; it applies by default to the
    depthwise convs the kernel takes, and never with TFTRT_DW_TILED=0."""
    from tftrt.engine import tactics
    from tftrt.engine.backends import cupy_backend
    assert "dw_tiled" in [t.name for t in tactics._REGISTRY[("cupy", "conv")]]
    net, conv = _depthwise_layer({"group": 16, "pads": [1, 1, 1, 1]})
    assert conv.epilogue and DW.tiled_unsupported(net, conv) is None
    monkeypatch.delenv("TFTRT_DW_TILED", raising=False)
    assert cupy_backend._dw_tiled(net, conv)
    monkeypatch.setenv("TFTRT_DW_TILED", "0")
    assert not cupy_backend._dw_tiled(net, conv)
    monkeypatch.setenv("TFTRT_DW_TILED", "yes")  # not a boolean: the default, with a warning
    assert cupy_backend._dw_tiled(net, conv)
    monkeypatch.setenv("TFTRT_DW_TILED", "False")
    assert not cupy_backend._dw_tiled(net, conv)
    monkeypatch.setenv("TFTRT_DW_TILED", "1")
    assert cupy_backend._dw_tiled(net, conv)
    p = DW.layer_params(net, conv)
    assert p["k_hw"] == (3, 3) and p["out_shape"] == (2, 9, 9, 16)
    assert [m for m, _ in p["operand_modes"].values()] == ["vec"]
    net, conv = _depthwise_layer({"group": 16, "pads": [2, 2, 2, 2], "dilations": [2, 2]})
    assert "dilation 1" in DW.tiled_unsupported(net, conv)
    assert not cupy_backend._dw_tiled(net, conv)
    net, conv = _depthwise_layer({"group": 16, "pads": [1, 1, 1, 1]}, ws=(32, 1, 3, 3))
    assert "multiplier 1" in DW.tiled_unsupported(net, conv)
    assert not cupy_backend._dw_tiled(net, conv)
    net, conv = _depthwise_layer({"pads": [1, 1, 1, 1]}, ws=(16, 16, 3, 3))  # not depthwise
    assert not cupy_backend._dw_tiled(net, conv)


# --- compiling -------------------------------------------------------------------------------
def _rename(src: str, k) -> str:
    return re.sub(rf"\b{DW.KERNEL}\(", f"{DW.KERNEL}_{k}(", src.replace(C.PRELUDE, ""))


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not on PATH")
def test_kernels_compile_for_sm90_without_spills(tmp_path):
    """Every case and the zoo's planned kernels (vector and scalar builds) compile for sm_90;
    ptxas spills no registers (a thread keeps its channel's weights, accumulators and one
    input row in registers)."""
    srcs = [_source(case) for case in CASES]
    for dt in ("float16", "float32"):
        srcs += list(_zoo_sources(dt)) + list(_zoo_sources(dt, vec=1))
    text = C.PRELUDE + "\n".join(_rename(s.source, k) for k, s in enumerate(srcs))
    r = nvcc_compile(text, tmp_path, "dw", "-Xptxas", "-v")
    spills = [int(b) for b in re.findall(r"(\d+) bytes spill stores", r.stderr)]
    assert len(spills) == len(srcs) and not any(spills), r.stderr[-4000:]


# --- running on the host ---------------------------------------------------------------------
# Block threads as host threads, on top of HOST_SHIMS (its blockIdx / threadIdx / blockDim are
# shadowed by thread-local ones; its empty __syncthreads becomes a barrier).
THREAD_SHIMS = r"""
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>
static thread_local host_dim3 mt_threadIdx = {0}, mt_blockIdx = {0};
static host_dim3 mt_blockDim = {1};
static std::mutex mt_mutex;
static std::condition_variable mt_cv;
static unsigned mt_count = 0, mt_gen = 0, mt_size = 1;
static bool mt_broken = false;
static void mt_barrier() {
  std::unique_lock<std::mutex> lock(mt_mutex);
  if (mt_broken) return;
  const unsigned gen = mt_gen;
  if (++mt_count == mt_size) { mt_count = 0; ++mt_gen; mt_cv.notify_all(); return; }
  if (!mt_cv.wait_for(lock, std::chrono::seconds(20),
                      [&] { return gen != mt_gen || mt_broken; })) {
    mt_broken = true;  // a thread never arrived: fail the run instead of hanging
    mt_cv.notify_all();
  }
}
#undef __syncthreads
#define __syncthreads() mt_barrier()
#define threadIdx mt_threadIdx
#define blockIdx mt_blockIdx
#define blockDim mt_blockDim
#define __shared__ static
#define __launch_bounds__(...)
"""


def _driver(src: DW.DwTiledSource, k: int, kernel: str = DW.KERNEL) -> str:
    """``run_<k>(args, blocks, threads)``: every block of the grid of ``kernel``'s renamed
    case ``k`` (``src.params`` its parameters), one host thread per block thread; returns 1
    when a barrier timed out."""
    call = ", ".join(f"({ty})a[{j}]" for j, (ty, _) in enumerate(src.params))
    return f"""
extern "C" int run_{k}(void** a, int blocks, int threads) {{
  mt_blockDim.x = threads; mt_size = threads; mt_count = 0; mt_broken = false;
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


def _build(text: str, tmp_path, name: str):
    cpp = tmp_path / f"{name}.cpp"
    cpp.write_text(text)
    lib = tmp_path / f"{name}.so"
    r = subprocess.run([_host_compiler(), "-O1", "-std=c++17", "-shared", "-fPIC", "-pthread",
                        "-ffp-contract=off", "-Wno-unknown-pragmas", "-o", str(lib), str(cpp)],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]
    return ctypes.CDLL(str(lib))


def _raw(a):
    return a.view(np.uint16) if a.dtype == np.float16 else a


def _run_host(so, k: int, args, blocks: int, threads: int) -> None:
    """Runs case ``k`` of a host build (``run_<k>`` of :func:`_driver`) on ``args`` (numpy
    arrays, the kernel's parameters in order; an int is passed as an integer parameter): ``blocks`` blocks of ``threads`` host threads;
    fails when a barrier timed out."""
    ptrs = (ctypes.c_void_p * len(args))(*[a if isinstance(a, int) else _raw(a).ctypes.data
                                           for a in args])
    fn = getattr(so, f"run_{k}")
    fn.restype = ctypes.c_int
    assert fn(ptrs, blocks, threads) == 0, "a barrier timed out: threads diverged"


@pytest.fixture(scope="module")
def host_kernels(tmp_path_factory):
    if _host_compiler() is None:
        pytest.skip("no host C++ compiler")
    srcs = [_source(case) for case in CASES]
    text = HOST_SHIMS + THREAD_SHIMS + C.MATH_HELPERS + "\n".join(
        _rename(s.source, k) + _driver(s, k) for k, s in enumerate(srcs))
    return srcs, _build(text, tmp_path_factory.mktemp("dw"), "dw")


@pytest.mark.parametrize("k", range(len(CASES)))
@pytest.mark.parametrize("threads", ["block", "one"])
def test_host_build_matches_numpy(host_kernels, k, threads):
    """A case's kernel with its block's threads (or one thread per block) against the numpy
    backend: bit-equal, or within float rounding where the epilogue calls exp / tanh."""
    srcs, so = host_kernels
    case, src = CASES[k], srcs[k]
    xs, kk, s, pads, dt, dt_out, epi, vec, tile = case
    ins = _inputs(case, seed=k)
    want = _reference(case, ins)
    wt = np.ascontiguousarray(ins[1].reshape(xs[3], -1).T)  # [kh * kw, C] float32
    operands = {2: ins[2], 3: ins[3], 4: ins[4]}
    y = np.full(want.shape, np.nan, dt_out)  # every output must be written
    args = [ins[0], wt] + [operands[i] for i in src.operands] + [y]
    n_threads = src.threads if threads == "block" else 1
    _run_host(so, k, args, src.blocks, n_threads)
    what = f"case {k} {case} tile {src.tile} vec {src.vec}, {n_threads} threads"
    assert not np.isnan(y.astype(np.float32)).any(), f"{what}: outputs not written"
    if any(f in epi for f in INEXACT):
        tol = 2e-3 if "float16" in (dt, dt_out) else 1e-5
        np.testing.assert_allclose(y.astype(np.float64), want.astype(np.float64), rtol=tol,
                                   atol=tol, err_msg=what)
    else:
        bad = np.flatnonzero(y != want)
        assert not len(bad), f"{what}: {len(bad)} of {y.size} differ, e.g. " \
            f"{y.ravel()[bad[:3]].tolist()} vs {want.ravel()[bad[:3]].tolist()}"


def test_cases_cover_what_the_kernel_takes():
    """The host cases exercise each load width, both strides, every tested kernel size, a
    partial channel group and tiles of several strips (guards edits of CASES)."""
    srcs = [_source(case) for case in CASES]
    assert {(s.in_dtype, s.vec) for s in srcs} >= {("float16", 8), ("float16", 4),
                                                    ("float16", 1), ("float32", 4)}
    assert {s.geometry.sh for s in srcs} == {1, 2} and {s.geometry.sw for s in srcs} == {1, 2}
    assert {s.geometry.kh for s in srcs} >= {3, 5, 7, 9}
    assert any(s.geometry.c % s.tile.cg for s in srcs)
    assert any(s.tile.nsh * s.tile.nsw > 1 for s in srcs)
    assert any(s.geometry.ho % s.tile.th or s.geometry.wo % s.tile.tw for s in srcs)
    assert any(s.tile.rh > 1 and s.geometry.sh == 2 for s in srcs)
    assert any(s.tile.rw > 1 and s.geometry.sw == 2 for s in srcs)
    assert any(s.tile.rh * s.tile.rw > 1 and s.geometry.kh == 7 for s in srcs)
