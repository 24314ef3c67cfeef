"""The tiled depthwise kernel in its quantized mode (backends/cuda_source_dw ``Quant``, tactic
``q_dw``), checked without a GPU: built for the host it computes what the numpy backend
computes for an INT8 / FP8 depthwise conv (``numpy_backend._quantized_gemm``: x quantized, or
int8 as it is, an exact sum over the weight's codes, the float32 epilogue, int8
requantization) -- INT8 bit for bit, FP8 within fp32 summation order -- for 3x3 / 5x5
kernels, strides 1 and 2, SAME's asymmetric pads, channel counts that take 16-, 8-byte and
scalar loads, float32 / float16 / int8 x, float32 / float16 / int8 y, a bias, ReLU6 and an
int8 residual; it compiles for sm_90 without spills; the tactic offers it for quantized
depthwise convs only, never for a float one, and not with TFTRT_QUANT_DW=0.

Host builds run each block as its threads (tests/engine/test_dw_codegen's shims), the
quantization helpers as tests/engine/test_quant_codegen's host versions.
"""

import ctypes
import importlib
import re
import shutil

import numpy as np
import pytest

from tests.engine.test_cuda_codegen import HOST_SHIMS, _host_compiler, nvcc_compile
from tests.engine.test_dw_codegen import THREAD_SHIMS, _build, _driver, _run_host
from tests.engine.test_quant_codegen import QUANT_SHIMS
from tftrt.engine import quantization as Q
from tftrt.engine.backends import cuda_source as C
from tftrt.engine.backends import cuda_source_dw as DW
from tftrt.engine.backends import cuda_source_quant as S

# (x shape, kernel, strides, pads (top, left, bottom, right), precision, x dtype, y dtype,
#  int8 residual, activation)
CASES = [
    ((2, 7, 6, 32), 3, 1, (1, 1, 1, 1), "INT8", "int8", "float32", False, "clip"),  # 16-byte
    ((1, 9, 8, 24), 3, 2, (0, 0, 1, 1), "INT8", "int8", "int8", False, "clip"),  # SAME, s2
    ((2, 6, 6, 16), 5, 1, (2, 2, 2, 2), "INT8", "float16", "int8", True, "relu"),
    ((1, 5, 7, 12), 3, 1, (1, 1, 1, 1), "INT8", "int8", "float16", False, None),  # 4-byte loads
    ((1, 6, 5, 7), 3, 2, (1, 1, 1, 1), "INT8", "float32", "int8", False, "relu"),  # scalar
    ((2, 7, 6, 32), 3, 1, (1, 1, 1, 1), "FP8", "float16", "float16", False, "clip"),
    ((1, 8, 8, 16), 5, 2, (1, 1, 2, 2), "FP8", "float32", "float32", False, None),
]
ACTS = {"relu": {"op": "act", "fn": "relu"},
        "clip": {"op": "act", "fn": "clip", "min": 0.0, "max": 6.0}}
OUT_SCALE, RES_SCALE = 0.05, 0.04


def _net(case):
    """A one-layer network: the depthwise conv (+ bias, int8 residual, activation) made INT8 /
    FP8 by apply_precision, then x / y / the residual given the case's dtypes (what a
    requantizing producer and an INT8 reader make of them)."""
    from tftrt.engine.network import Network
    from tftrt.engine.precision import apply_precision
    xs, k, s, pads, precision, xdt, ydt, res, act = case
    rng = np.random.RandomState(3)
    n, h, w, c = xs
    ys = (n, (h + pads[0] + pads[2] - k) // s + 1, (w + pads[1] + pads[3] - k) // s + 1, c)
    net = Network("qdw")
    net.inputs, net.outputs = ["x"] + (["r"] if res else []), ["y"]
    net.add_tensor("x", "float32", xs)
    if res:
        net.add_tensor("r", "float32", ys)
    wt = net.add_weight(rng.randn(c, k, k, 1).astype(np.float32), "w")
    b = net.add_weight(rng.randn(c).astype(np.float32), "b")
    layer = net.add_layer("conv", ["x", wt, b] + (["r"] if res else []), ["y"],
                          {"strides": [s, s], "dilations": [1, 1], "pads": list(pads),
                           "group": c})
    layer.epilogue = [{"op": "bias", "input": 2}] + \
        ([{"op": "add", "input": 3}] if res else []) + ([dict(ACTS[act])] if act else [])
    net.tensors["y"].dtype, net.tensors["y"].shape = "float32", ys
    net = apply_precision(net, precision, Q.new_table(tensors={"x": 2.0}))
    (layer,) = net.layers
    net.tensors["x"].dtype = xdt
    if ydt == "int8":
        layer.attrs["quant"]["output_scale"] = OUT_SCALE
    net.tensors["y"].dtype = ydt
    if res:  # an int8 residual: its codes, dequantized by the epilogue's add
        net.tensors["r"].dtype = "int8"
        (add,) = [e for e in layer.epilogue if e["op"] == "add"]
        add["scale"] = RES_SCALE
    return net, layer


def _inputs(net, layer, rng):
    ins = []
    for t in layer.inputs:
        if t in net.weights:
            ins.append(np.asarray(net.weights[t]))
            continue
        spec = net.tensors[t]
        if spec.dtype == "int8":
            ins.append(rng.integers(-127, 128, spec.shape).astype(np.int8))
        else:  # spanning x's quantized range (scale 2 / 127), some saturating
            ins.append((rng.uniform(-2.2, 2.2, spec.shape)).astype(spec.dtype))
    return ins


def _strip(src: str, k: int) -> str:
    for block in (C.PRELUDE, S.INT8_HELPERS, S.FP8_HELPERS, S.E4M3_VALUE):
        src = src.replace(block, "")
    return re.sub(rf"\b{DW.KERNEL}\(", f"{DW.KERNEL}_{k}(", src)


def _host(srcs, tmp_path, name):
    text = HOST_SHIMS + THREAD_SHIMS + C.MATH_HELPERS + QUANT_SHIMS + S.INT8_HELPERS + \
        S.E4M3_VALUE + "\n".join(_strip(s.source, k) + _driver(s, k)
                                 for k, s in enumerate(srcs))
    return _build(text, tmp_path, name)


def _expected(net, layer, ins):
    """(the numpy backend's output, stored in y's dtype as its engine stores it; the
    kernels' float32 filter [taps, C] of the weight's code values, as cupy_quant gives it)."""
    from tftrt.engine.backends import numpy_backend as NB
    want = NB._quantized_gemm(net, layer, net.weights)(ins)[0].astype(net.tensors["y"].dtype)
    wv = S.weight_values(ins[1], layer.attrs["quant"]["format"]).astype(np.float32)
    return want, np.ascontiguousarray(wv.reshape(wv.shape[0], -1).T)


def _assert_matches(case, y, want, what) -> None:
    """INT8 bit for bit; FP8 within fp32 summation order (and float16's rounding)."""
    if case[4] == "INT8":
        np.testing.assert_array_equal(y, want, err_msg=what)
    else:
        got, ref = y.astype(np.float64), want.astype(np.float64)
        tol = 2.0 ** -10 * np.abs(ref) + 1e-5 * np.abs(ref).max() + \
            (1e-3 * np.abs(ref) if want.dtype == np.float16 else 0)
        assert (np.abs(got - ref) <= tol).all(), what


@pytest.mark.parametrize("threads", ["block", "one"])
def test_the_quantized_kernel_computes_what_the_numpy_backend_does(tmp_path, threads):
    if _host_compiler() is None:
        pytest.skip("no host C++ compiler")
    nets = [_net(case) for case in CASES]
    srcs = [DW.DwTiledSource(**DW.layer_params(net, layer, quantized=True))
            for net, layer in nets]
    assert {s.vec for s in srcs} == {16, 8, 4, 1} and all(s.quant for s in srcs)
    so = _host(srcs, tmp_path, f"qdw_{threads}")
    rng = np.random.default_rng(11)
    for k, ((net, layer), src) in enumerate(zip(nets, srcs)):
        ins = _inputs(net, layer, rng)
        want, wt = _expected(net, layer, ins)
        poison = -128 if src.out_dtype == "int8" else np.nan
        y = np.full(want.shape, poison, src.out_dtype)
        _run_host(so, k, [ins[0], wt] + [ins[i] for i in src.operands] + [y], src.blocks,
                  src.threads if threads == "block" else 1)
        what = f"case {k} {CASES[k]} tile {src.tile} vec {src.vec}"
        if src.out_dtype == "int8":
            assert (y != -128).all(), f"{what}: outputs not written"
            assert len(np.unique(y)) > 20, what   # the codes span the range
        _assert_matches(CASES[k], y, want, what)


def test_the_quantized_tile_plan_counts_the_loads_in_flight():
    """The quantized mode's tile model bounds the staging's bandwidth by the loads its
    resident warps keep in flight: MobileNetV2's 112 x 112 x 96 stride-2 depthwise conv
    (batch 128, int8 x) took 223 us on an H200 on one-warp blocks (s45); it now gets blocks of
    4 warps, priced lower under that bound. A float conv's plan (tactic dw_tiled, FP16's) is
    the one it was, and so is a stride-1 quantized one's."""
    g = DW.Geometry(128, 112, 112, 96, 56, 56, 3, 3, 2, 2, 0, 0)
    vec = DW.vector_width(96, "int8")
    before = DW.plan_tile(g, vec, 1, 1, 3, 132)
    after = DW.plan_tile(g, vec, 1, 1, 3, 132, True)
    assert before.threads == 32 and after.threads >= 128, (before, after)
    cost = lambda t: DW.tile_cost(g, t, vec, 1, 1, 3, 132, True)  # noqa: E731
    assert cost(after) < 0.5 * cost(before)
    assert DW.tile_cost(g, before, vec, 1, 1, 3, 132) < cost(before)   # the bound binds
    f16 = DW.plan_tile(g, DW.vector_width(96, "float16"), 2, 2, 3, 132)
    assert f16 == DW.Tile(32, 2, 8, 4, 1)
    src = DW.DwTiledSource((128, 112, 112, 96), (3, 3), (2, 2), (0, 0, 1, 1),
                           (128, 56, 56, 96), "int8", "int8", [], {},
                           quant=DW.Quant(S.INT8, 1.0, 1.0))
    assert src.tile == after
    g1 = DW.Geometry(128, 56, 56, 144, 56, 56, 3, 3, 1, 1, 1, 1)
    v1 = DW.vector_width(144, "int8")
    assert DW.plan_tile(g1, v1, 1, 1, 3, 132, True) == DW.plan_tile(g1, v1, 1, 1, 3, 132)


def test_the_direct_kernel_in_quantized_mode_computes_what_the_numpy_backend_does(tmp_path):
    """The direct depthwise kernel (``cuda_source.DepthwiseConvSource``, tactic
    ``q_dw_direct``) with ``quant``: its one-channel and its 16-byte vector builds, each
    case against the numpy backend as above."""
    from tests.engine.test_cuda_codegen import _host_library
    if _host_compiler() is None:
        pytest.skip("no host C++ compiler")
    nets = [_net(case) for case in CASES]
    srcs = [C.DepthwiseConvSource(**DW.direct_params(net, layer)) for net, layer in nets]
    assert sum(s.vec_source is not None for s in srcs) >= 4
    parts = [HOST_SHIMS, C.MATH_HELPERS, QUANT_SHIMS, S.INT8_HELPERS, S.E4M3_VALUE]
    for k, src in enumerate(srcs):
        for text in (src.source, src.vec_source):
            if text:
                parts.append(re.sub(r"\bdwconv(_vec)?\(",
                                    lambda m: f"dwconv{m.group(1) or ''}_{k}(", _strip(text, k)))
    so = _host_library("\n".join(parts), tmp_path, "qdw_direct")
    rng = np.random.default_rng(12)
    for k, ((net, layer), src) in enumerate(zip(nets, srcs)):
        ins = _inputs(net, layer, rng)
        want, wt = _expected(net, layer, ins)
        for name in ["dwconv"] + (["dwconv_vec"] if src.vec_source else []):
            poison = -128 if want.dtype == np.int8 else np.nan
            y = np.full(want.shape, poison, want.dtype)
            args = [ins[0], wt] + [ins[i] for i in src.operands] + [y]
            fn = getattr(so, f"{name}_{k}")
            fn.restype = None
            fn(*[ctypes.c_void_p((a.view(np.uint16) if a.dtype == np.float16 else a)
                                 .ctypes.data) for a in args],
               ctypes.c_longlong(src.vec_work if name == "dwconv_vec" else src.work))
            _assert_matches(CASES[k], y, want, f"{name} case {k} {CASES[k]}")


def test_what_the_quantized_kernel_refuses():
    net, layer = _net(CASES[0])
    p = DW.layer_params(net, layer, quantized=True)
    for change, match in [
            (dict(in_dtype="int8", quant=DW.Quant(S.FP8, 1.0)), "int8 x in INT8"),
            (dict(out_dtype="int8"), "int8 y with its output scale"),
            (dict(quant=DW.Quant(S.INT8, 1.0, 0.1)), "int8 y with its output scale"),
            (dict(quant=DW.Quant("int4", 1.0)), "quantized format"),
            (dict(quant=None, in_dtype="int8"), "float16 / float32 x and y")]:
        with pytest.raises(ValueError, match=match):
            DW.DwTiledSource(**dict(p, **change))
    with pytest.raises(ValueError, match="a quantized layer"):
        DW.layer_params(net, layer)


def test_the_tactic_takes_quantized_depthwise_convs(monkeypatch):
    """``q_dw`` is registered for conv layers on CuPy; it applies to a quantized depthwise
    conv the kernel takes unless TFTRT_QUANT_DW=0, never to a float one (dw_tiled's) or to
    a grouped conv that is not depthwise."""
    importlib.import_module("tftrt.engine.backends.cupy_backend")  # registers the tactics
    from tests.engine.test_dw_codegen import _depthwise_layer
    from tftrt.engine.tactics import _REGISTRY
    assert {"q_dw", "q_dw_direct"} <= {t.name for t in _REGISTRY[("cupy", "conv")]}
    monkeypatch.delenv("TFTRT_QUANT_DW", raising=False)
    net, layer = _net(CASES[1])
    assert DW.quant_unsupported(net, layer) is None
    monkeypatch.setenv("TFTRT_QUANT_DW", "0")
    assert DW.quant_unsupported(net, layer) == "off (TFTRT_QUANT_DW=0)"
    monkeypatch.setenv("TFTRT_QUANT_DW", "1")
    fnet, fconv = _depthwise_layer({"group": 16, "pads": [1, 1, 1, 1]})
    assert DW.quant_unsupported(fnet, fconv) == "not a quantized layer"
    from tests.engine.test_qmma_codegen import _conv_net
    gnet = _conv_net((1, 9, 9, 128), 3, 3, 64, (1, 1), (1, 1, 1, 1), "INT8", group=2)
    assert "multiplier 1" in DW.quant_unsupported(gnet, gnet.layers[0])


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not on PATH")
def test_the_quantized_kernels_compile_for_sm90_without_spills(tmp_path):
    srcs = [DW.DwTiledSource(**DW.layer_params(*_net(case), quantized=True))
            for case in CASES]
    # MobileNetV2's widest INT8 depthwise convs at batch 128 (int8 x and y)
    for hw, c, s in ((112, 96, 2), (56, 144, 1), (14, 576, 1), (7, 960, 1)):
        g = S.INT8
        srcs.append(DW.DwTiledSource((128, hw, hw, c), (3, 3), (s, s), (1, 1, 1, 1),
                                     (128, hw // s, hw // s, c), "int8", "int8",
                                     [{"op": "scale", "input": 2}, {"op": "bias", "input": 3},
                                      dict(ACTS["clip"])],
                                     {2: ("vec", "float32"), 3: ("vec", "float32")},
                                     quant=DW.Quant(g, 63.5, 0.05)))
    parts = [C.PRELUDE, S.INT8_HELPERS, S.FP8_HELPERS, S.E4M3_VALUE]
    texts = [_strip(s.source, k) for k, s in enumerate(srcs)]
    # the direct kernel's quantized builds (one channel a thread, and 16 int8 channels)
    for k, src in enumerate(srcs):
        g = src.geometry
        d = C.DepthwiseConvSource((g.n, g.h, g.w, g.c), (g.kh, g.kw), (g.sh, g.sw), (1, 1),
                                  (g.ph, g.pw, 1, 1), (g.n, g.ho, g.wo, g.c), 1, src.in_dtype,
                                  src.out_dtype,
                                  [{"op": "scale", "input": 2}, {"op": "bias", "input": 3}],
                                  {2: ("vec", "float32"), 3: ("vec", "float32")},
                                  quant=src.quant)
        for text in (d.source, d.vec_source):
            if text:
                texts.append(re.sub(r"\bdwconv(_vec)?\(",
                                    lambda m: f"dwconv{m.group(1) or ''}_{k}(",
                                    _strip(text, k)))
    text = "\n".join(parts + texts)
    r = nvcc_compile(text, tmp_path, "qdw", "-Xptxas", "-v")
    spills = [int(b) for b in re.findall(r"(\d+) bytes spill stores", r.stderr)]
    assert len(spills) == len(texts) and not any(spills), r.stderr[-4000:]
