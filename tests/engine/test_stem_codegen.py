"""The direct few-channel convolution's CUDA source (backends/cuda_source_stem, tactic
``stem_direct``), checked without a GPU: it compiles for sm_90 with nvcc without register
spills, and built for the host it computes what the numpy backend computes (numpy_ops'
im2col GEMM, then the layer's epilogue) for the zoo's stems (VGG's 3x3 / 1, the 3x3 / 2 of
MobileNet / EfficientNet / Inception, ConvNeXt's 4x4 / 4 patches), SAME / VALID / asymmetric
pads, maps no tile divides, float16 and float32, bias / scale / residual / activation
epilogues, aligned and unaligned outputs.

Host builds run each block as its real number of threads and again as one thread per block
(tests/engine/test_dw_codegen's thread shims). The kernel sums in float32 in the filter's
order, numpy's GEMM in its own: answers agree within float32 rounding (float32 outputs) or
one float16 rounding (float16 outputs).
"""

import re
import shutil
import types

import numpy as np
import pytest

from tests.engine.test_cuda_codegen import HOST_SHIMS, _host_compiler, nvcc_compile
from tests.engine.test_dw_codegen import (THREAD_SHIMS, _build, _driver, _epilogue_spec,
                                          _out_hw, _run_host)
from tftrt.engine.backends import cuda_source as C
from tftrt.engine.backends import cuda_source_stem as ST
from tftrt.engine.backends import numpy_ops
from tftrt.engine.backends.numpy_backend import _epilogue

# (x shape, (kh, kw), (sh, sw), pads (top, left, bottom, right), Cout, x dtype, y dtype,
#  epilogue, y offset in elements (an output not aligned to 16 bytes: the scalar stores))
CASES = [
    ((2, 9, 37, 3), (3, 3), (1, 1), (1, 1, 1, 1), 64, "float32", "float16", "bias+relu", 0),
    ((1, 13, 10, 3), (3, 3), (2, 2), (0, 0, 1, 1), 32, "float16", "float16", "bias+silu", 0),
    ((1, 11, 12, 3), (3, 3), (2, 2), (1, 1, 1, 1), 16, "float32", "float32", "bias+relu6", 0),
    ((2, 8, 9, 3), (4, 4), (4, 4), (0, 0, 0, 0), 96, "float32", "float16", "bias", 0),
    ((1, 7, 33, 5), (3, 3), (1, 1), (0, 0, 0, 0), 12, "float16", "float32", "bias+add+relu", 0),
    ((1, 6, 40, 3), (3, 3), (1, 1), (1, 1, 1, 1), 64, "float32", "float16", "scale+bias+gelu",
     8),
    ((1, 5, 6, 1), (5, 5), (1, 2), (2, 2, 2, 2), 8, "float32", "float32", "", 4),
    ((1, 10, 35, 3), (3, 3), (1, 1), (1, 1, 1, 1), 20, "float16", "float16", "bias+relu", 0),
    # stride 3 (tile slots stored stride-permuted), and a 1x7 over 9 channels at stride (1, 3)
    ((1, 11, 40, 3), (3, 3), (3, 3), (1, 1, 1, 1), 8, "float16", "float16", "bias+relu", 0),
    ((2, 6, 50, 9), (1, 7), (1, 3), (0, 3, 0, 3), 12, "float32", "float32", "bias", 0),
]
INEXACT = ("silu", "gelu")


def _source(case) -> ST.StemSource:
    xs, k, s, pads, cout, dt, dt_out, epi, _ = case
    ho, wo = _out_hw(xs, k, s, pads)
    epilogue, modes = _epilogue_spec(epi, dt_out)
    return ST.StemSource(xs, k, s, pads, (xs[0], ho, wo, cout), dt, dt_out, epilogue, modes)


def _inputs(case, seed):
    """Layer inputs [x, w, bias, scale, residual] of a case (w: [Cout, kh, kw, Cin])."""
    xs, k, s, pads, cout, dt, dt_out, epi, _ = case
    rng = np.random.default_rng(seed)
    ho, wo = _out_hw(xs, k, s, pads)
    return [rng.uniform(0, 1, xs).astype(dt),
            (rng.standard_normal((cout,) + tuple(k) + (xs[3],)) / 3).astype(np.float32),
            rng.standard_normal(cout).astype(np.float32),
            rng.uniform(0.5, 1.5, cout).astype(np.float32),
            rng.standard_normal((xs[0], ho, wo, cout)).astype(dt_out)]


def _reference(case, ins):
    """The numpy backend's answer in float64: conv as im2col GEMM, then its epilogue."""
    xs, k, s, pads, cout, dt, dt_out, epi, _ = case
    wmat = ins[1].astype(np.float64).reshape(cout, -1).T[None]
    y = numpy_ops.conv_im2col(ins[0].astype(np.float64), wmat, list(k), list(s), [1, 1],
                              list(pads), 1, cout)
    epilogue, _ = _epilogue_spec(epi, dt_out)
    ins64 = [None, None] + [a.astype(np.float64) for a in ins[2:]]
    return np.asarray(_epilogue(types.SimpleNamespace(epilogue=epilogue, name="stem"))(y, ins64))


# --- planning and what the kernel refuses --------------------------------------------------
# (x shape, k, stride, Cout): the zoo's stems at batch 128 (VGG, MobileNet / EfficientNet,
# Inception / Xception, ConvNeXt, MobileNetV3's 16 channels)
ZOO = [((128, 224, 224, 3), 3, 1, 64), ((128, 224, 224, 3), 3, 2, 32),
       ((128, 299, 299, 3), 3, 2, 32), ((128, 224, 224, 3), 4, 4, 96),
       ((128, 224, 224, 3), 3, 2, 16), ((1, 224, 224, 3), 3, 1, 64)]


def _zoo_sources(dtype):
    for xs, k, s, cout in ZOO:
        h = xs[1]
        ho = -(-h // s)
        total = max((ho - 1) * s + k - h, 0)
        pads = (total // 2, total // 2, total - total // 2, total - total // 2)
        yield ST.StemSource(xs, (k, k), (s, s), pads, (xs[0], ho, ho, cout), "float32", dtype,
                            [{"op": "bias", "input": 2}, {"op": "act", "fn": "relu"}],
                            {2: ("vec", "float32")})


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_zoo_stems_plan_within_shared_memory_and_cover_the_output(dtype):
    for src in _zoo_sources(dtype):
        d, p = src.dims, src.plan
        assert src.smem_bytes <= ST.SMEM_LIMIT and 32 <= src.threads <= 1024, (d, p)
        assert p.cc * p.ncg == d["cout"] and p.cc in (16, 8, 4)
        nth, ntw = src.grid  # every output exactly once: no tile starts past the map
        assert (nth - 1) * p.th < d["ho"] <= nth * p.th
        assert (ntw - 1) * ST.LANES < d["wo"] <= ntw * ST.LANES
        assert src.blocks == d["n"] * nth * ntw
    vgg = next(_zoo_sources(dtype))
    assert vgg.plan == ST.Plan(cc=16, ncg=4, px=4, rw=2) and vgg.threads == 256


def test_what_the_kernel_refuses():
    ok = dict(x_shape=(1, 8, 8, 3), k_hw=(3, 3), strides=(1, 1), pads=(1, 1, 1, 1),
              out_shape=(1, 8, 8, 16), in_dtype="float32", out_dtype="float16", epilogue=[],
              operand_modes={})
    ST.StemSource(**ok)
    for change, match in [
            (dict(x_shape=(1, 8, 8, 8)), "KH\\*KW\\*Cin = 72 taps"),
            (dict(k_hw=(7, 7), pads=(3, 3, 3, 3)), "147 taps"),
            (dict(out_shape=(1, 8, 8, 18)), "multiple of 4"),
            (dict(out_shape=(1, 8, 8, 260)), "multiple of 4 up to 256"),
            (dict(out_shape=(1, 8, 8, 132)), "33 warps of 4\\) would pass 1024 threads"),
            (dict(in_dtype="int8"), "float16 / float32"),
            (dict(out_shape=(2, 8, 8, 16)), "not a conv"),
            (dict(k_hw=(4, 4), strides=(16, 16), pads=(0, 0, 0, 0), out_shape=(1, 1, 1, 256)),
             "shared memory")]:
        with pytest.raises(ValueError, match=match):
            ST.StemSource(**dict(ok, **change))


def _conv_layer(cin=3, cout=16, ks=3, attrs=None, seed=1):
    """A numpy engine's network with one conv (+ bias, ReLU) on NHWC x, and that layer."""
    from onnx import helper

    from tests.engine.harness import make_model, rand
    from tftrt.engine import BuilderConfig, build_engine
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["t", "w", "b"], ["c"],
                              **(attrs or {"pads": [1, 1, 1, 1]})),
             helper.make_node("Transpose", ["c"], ["h"], perm=[0, 2, 3, 1]),
             helper.make_node("Relu", ["h"], ["y"])]
    feeds = {"x": rand(2, 9, 9, cin)}
    model = make_model(nodes, feeds, {"w": rand(cout, cin, ks, ks, seed=seed),
                                      "b": rand(cout, seed=2)})
    eng = build_engine(model, {"x": feeds["x"].shape},
                       BuilderConfig(backend="numpy", tactic_timing=False))
    (conv,) = [l for l in eng.network.layers if l.kind == "conv"]
    return eng.network, conv


def test_the_tactic_applies_to_few_channel_convs_unless_switched_off(monkeypatch):
    """``stem_direct`` is registered for conv layers on CuPy and applies to group-1 convs of
    unaligned few input channels the kernel takes; never with TFTRT_STEM_DIRECT=0, never to
    aligned channels (tensor-core paths), too many taps or a dilated conv."""
    from tftrt.engine import tactics
    from tftrt.engine.backends import cupy_backend
    assert "stem_direct" in [t.name for t in tactics._REGISTRY[("cupy", "conv")]]
    monkeypatch.delenv("TFTRT_STEM_DIRECT", raising=False)
    net, conv = _conv_layer()
    assert conv.epilogue and cupy_backend._stem_direct(net, conv)
    p = ST.layer_params(net, conv)
    assert p["k_hw"] == (3, 3) and p["out_shape"] == (2, 9, 9, 16)
    assert [m for m, _ in p["operand_modes"].values()] == ["vec"]
    monkeypatch.setenv("TFTRT_STEM_DIRECT", "0")
    assert not cupy_backend._stem_direct(net, conv)
    assert ST.unsupported(net, conv) == "TFTRT_STEM_DIRECT=0"
    monkeypatch.setenv("TFTRT_STEM_DIRECT", "1")
    net, conv = _conv_layer(cin=8)                     # aligned channels
    assert not cupy_backend._stem_direct(net, conv)
    net, conv = _conv_layer(cin=3, ks=7, attrs={"pads": [3, 3, 3, 3]})   # 147 taps
    assert "147 taps" in ST.unsupported(net, conv) and not cupy_backend._stem_direct(net, conv)
    net, conv = _conv_layer(attrs={"pads": [2, 2, 2, 2], "dilations": [2, 2]})
    assert "dilation 1" in ST.unsupported(net, conv)
    net, conv = _conv_layer(cout=18)
    assert "multiple of 4" in ST.unsupported(net, conv)


def test_the_impl_chain_falls_back_on_the_gpu():
    """What runs tactic ``stem_direct``: the kernel, then cuDNN and im2col (both on the GPU)
    when it cannot."""
    pytest.importorskip("cupy")
    from tftrt.engine.backends import cupy_backend
    try:
        chain = cupy_backend.impl_table()["conv"]["stem_direct"]
    except Exception as e:  # a CuPy that cannot load its CUDA libraries here
        pytest.skip(f"CuPy backend modules do not import here: {e}")
    assert [c.__name__ for c in chain] == ["StemDirect", "ConvCudnn", "ConvIm2col"]


# --- compiling -------------------------------------------------------------------------------
def _rename(src: str, k) -> str:
    return re.sub(rf"\b{ST.KERNEL}\(", f"{ST.KERNEL}_{k}(", src.replace(C.PRELUDE, ""))


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not on PATH")
def test_kernels_compile_for_sm90_without_spills(tmp_path):
    """Every case and the zoo's stems compile for sm_90; ptxas spills no registers (a lane
    keeps px x cc accumulators and a tap's cc weights)."""
    srcs = [_source(case) for case in CASES]
    for dt in ("float16", "float32"):
        srcs += list(_zoo_sources(dt))
    text = C.PRELUDE + "\n".join(_rename(s.source, k) for k, s in enumerate(srcs))
    r = nvcc_compile(text, tmp_path, "stem", "-Xptxas", "-v")
    spills = [int(b) for b in re.findall(r"(\d+) bytes spill stores", r.stderr)]
    assert len(spills) == len(srcs) and not any(spills), r.stderr[-4000:]


# --- running on the host ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def host_kernels(tmp_path_factory):
    if _host_compiler() is None:
        pytest.skip("no host C++ compiler")
    srcs = [_source(case) for case in CASES]
    text = HOST_SHIMS + THREAD_SHIMS + C.MATH_HELPERS + "\n".join(
        _rename(s.source, k) + _driver(s, k, ST.KERNEL) for k, s in enumerate(srcs))
    return srcs, _build(text, tmp_path_factory.mktemp("stem"), "stem")


@pytest.mark.parametrize("k", range(len(CASES)))
@pytest.mark.parametrize("threads", ["block", "one"])
def test_host_build_matches_numpy(host_kernels, k, threads):
    """A case's kernel with its block's threads (or one thread per block) against the numpy
    backend, every output written, within one rounding of the output's dtype."""
    srcs, so = host_kernels
    case, src = CASES[k], srcs[k]
    xs, kk, s, pads, cout, dt, dt_out, epi, offset = case
    ins = _inputs(case, seed=k)
    want = _reference(case, ins)
    wt = np.ascontiguousarray(ins[1].reshape(cout, -1).T)  # [K, Cout] float32
    operands = {2: ins[2], 3: ins[3], 4: ins[4]}
    buf = np.full(want.size + offset, np.nan, dt_out)  # every output must be written
    y = buf[offset:].reshape(want.shape)
    args = [ins[0], wt] + [operands[i] for i in src.operands] + [y]
    n_threads = src.threads if threads == "block" else 1
    _run_host(so, k, args, src.blocks, n_threads)
    what = f"case {k} {case} plan {src.plan}, {n_threads} threads"
    got = y.astype(np.float64)
    assert not np.isnan(got).any(), f"{what}: outputs not written"
    scale = np.abs(want).max()
    if dt_out == "float16":  # one float16 rounding of the float32 sum (and of gelu's tanh)
        tol = np.abs(want) * 2.0 ** -10 + 1e-5 * scale
    else:
        tol = np.abs(want) * (1e-5 if not any(f in epi for f in INEXACT) else 1e-4) + \
            1e-6 * scale
    bad = np.flatnonzero(np.abs(got - want) > tol)
    assert not len(bad), f"{what}: {len(bad)} of {y.size} differ, e.g. " \
        f"{got.ravel()[bad[:3]].tolist()} vs {want.ravel()[bad[:3]].tolist()}"


def test_cases_cover_what_the_kernel_takes():
    """The host cases exercise each channel width per warp, strides 1 / 2 / 4, float16 and
    float32 on both sides, a partial last tile in both directions, fewer rows per lane than
    4, and both store paths (guards edits of CASES)."""
    srcs = [_source(case) for case in CASES]
    assert {s.plan.cc for s in srcs} == {16, 8, 4}
    assert {s.dims["sh"] for s in srcs} >= {1, 2, 4}
    assert {(s.in_dtype, s.out_dtype) for s in srcs} >= {
        ("float32", "float16"), ("float16", "float16"), ("float32", "float32"),
        ("float16", "float32")}
    assert any(s.dims["ho"] % s.plan.th for s in srcs)
    assert any(s.dims["wo"] % ST.LANES for s in srcs) and any(s.dims["wo"] > ST.LANES
                                                              for s in srcs)
    assert any(s.plan.rw > 1 for s in srcs)
    assert any(c[-1] for c in CASES) and any(not c[-1] for c in CASES)
