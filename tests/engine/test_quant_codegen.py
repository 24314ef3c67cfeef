"""The INT8 / FP8 kernels' CUDA source and host-side planning (backends/cuda_source_quant),
checked without a GPU: the generated quantize and epilogue kernels, built for the CPU with
small shims for the CUDA intrinsics, against quantization.py's numpy arithmetic (what the
numpy backend simulates), bit for bit; with nvcc on PATH every source compiles for sm_90
(the FP8 PTX conversion included); the weight layouts and padding the GPU layers plan.
"""

import importlib
import shutil
import subprocess

import numpy as np
import pytest

from tests.engine.test_cuda_codegen import HOST_SHIMS, _host_compiler, _host_library
from tftrt.engine import quantization as Q
from tftrt.engine.backends import cuda_source as C
from tftrt.engine.backends import cuda_source_quant as S

# Host stand-ins for the CUDA intrinsics the sources use; q_e4m3 (PTX cvt on the device) is
# an independent C rendering of round-to-nearest-even on the E4M3 grid with satfinite.
QUANT_SHIMS = r"""
#include <climits>
static inline float __int_as_float(unsigned int u) { float f; memcpy(&f, &u, 4); return f; }
static inline float __fmul_rn(float a, float b) { volatile float r = a * b; return r; }
static inline float __fadd_rn(float a, float b) { volatile float r = a + b; return r; }
static inline float __int2float_rn(int a) { return (float)a; }
static inline int __float2int_rn(float v) {
  if (v >= 2147483648.f) return INT_MAX;
  if (v <= -2147483648.f) return INT_MIN;
  return (int)nearbyintf(v); }
static inline unsigned char q_e4m3(float v) {
  if (v != v) return 0x7f;
  unsigned char s = signbit(v) ? 0x80 : 0;
  float a = fabsf(v);
  if (a >= 448.f) return s | 0x7e;
  if (a < 0.015625f) return s | (unsigned char)nearbyintf(a * 512.f);
  int e; frexpf(a, &e);
  float step = ldexpf(1.f, e - 4);
  float r = nearbyintf(a / step) * step;
  frexpf(r, &e);
  int man = (int)(r / ldexpf(1.f, e - 1) * 8.f) - 8;
  return s | (unsigned char)(((e - 1 + 7) << 3) | man); }
"""


def _strip(src: str) -> str:
    for block in (C.PRELUDE, S.INT8_HELPERS, S.FP8_HELPERS, S.E4M3_VALUE):
        src = src.replace(block, "")
    return src


def _host_source(sources) -> str:
    head = HOST_SHIMS + C.MATH_HELPERS + QUANT_SHIMS + S.INT8_HELPERS + S.E4M3_VALUE
    body = []
    for k, (src, name) in enumerate(sources):
        body.append(_strip(src).replace(f'extern "C" __global__ void {name}(',
                                        f'extern "C" __global__ void {name}_{k}('))
    return head + "\n".join(body)


def _run(so, name, k, work, *arrays):
    """Kernel ``name`` of source ``k`` on ``arrays``, then its work count (the last argument
    of the grid-stride kernels)."""
    fn = getattr(so, f"{name}_{k}")
    fn.restype = None
    import ctypes
    fn(*[ctypes.c_void_p(a.ctypes.data) for a in arrays], ctypes.c_longlong(work))


def _activation_input(rng, shape, dtype):
    """Values with ties for round-half-even after scaling by 1 / 0.5 (k + 0.25 -> 2k + 0.5),
    saturation, zeros of both signs, NaN and infinities."""
    x = rng.standard_normal(shape).astype(np.float32) * 40
    flat = x.reshape(-1)
    special = [0.0, -0.0, np.nan, np.inf, -np.inf, 1e6, -1e6, 0.25, 0.75, -0.25, -1.25, 63.75,
               -63.25, 224.0, 225.0, 3e-3, -7e-4, 1.0 / 512]
    flat[:len(special)] = special
    return x.astype(dtype)


QUANT_CASES = [  # (rows, c, cp, in dtype, mode, values dtype)
    (6, 3, 4, "float32", "int8", None), (6, 8, 8, "float16", "int8", None),
    (5, 5, 16, "float32", "e4m3", None), (4, 32, 32, "float16", "e4m3", None),
    (6, 3, 4, "float16", "int8_values", "float16"),
    (6, 7, 16, "float32", "e4m3_values", "float16"), (6, 3, 4, "int8", "int8", None),
    (6, 6, 8, "int8", "int8_values", "float32"), (5, 9, 9, "float16", "e4m3_values", "float32"),
]


def _quant_want(x, cp, mode, inv, values_dtype):
    c = x.shape[-1]
    if x.dtype == np.int8:
        q = x.astype(np.float64)
    elif mode.startswith("int8"):
        q = Q.quantize_int8(x.astype(np.float32), inv).astype(np.float64)
    else:
        q = Q.round_e4m3(x.astype(np.float32) * inv).astype(np.float64)
    if mode == "e4m3":
        q = Q.e4m3_encode(x.astype(np.float32) * inv)
    out_dt = {"int8": np.int8, "e4m3": np.uint8}.get(mode, values_dtype)
    want = np.zeros(x.shape[:-1] + (cp,), out_dt)
    want[..., :c] = q.astype(out_dt) if mode != "e4m3" else q
    return want


@pytest.mark.skipif(_host_compiler() is None, reason="no host C++ compiler")
def test_quantize_kernels_match_numpy_on_the_host(tmp_path):
    """int8 / E4M3 codes / fp16 values of x * inv_scale with zero channel padding, and int8
    inputs copied, exactly what quantization.py computes (ties to even, +-127 / +-448
    saturation, NaN -> 0 in INT8 and NaN in FP8)."""
    rng = np.random.default_rng(0)
    inv = Q.inv_scale(0.5)
    srcs, inputs = [], []
    for rows, c, cp, dt, mode, vdt in QUANT_CASES:
        if dt == "int8":
            x = rng.integers(-127, 128, (rows, c)).astype(np.int8)
        else:
            x = _activation_input(rng, (rows, c), dt)
        src = S.QuantizeSource(rows, c, cp, dt, mode, float(inv), vdt or "float16")
        assert src.out_dtype == {"int8": "int8", "e4m3": "uint8"}.get(mode, vdt)
        assert src.work == rows * cp
        srcs.append((src.source, "quantize"))
        inputs.append((x, src))
    so = _host_library(_host_source(srcs), tmp_path, "quant")
    for k, ((x, src), case) in enumerate(zip(inputs, QUANT_CASES)):
        want = _quant_want(x, src.cp, src.mode, inv, src.out_dtype)
        out = np.full(want.shape, 77, want.dtype)
        xin = x.view(np.uint16) if x.dtype == np.float16 else x
        _run(so, "quantize", k, src.work, np.ascontiguousarray(xin),
             out.view(np.uint16) if out.dtype == np.float16 else out)
        if src.mode == "e4m3":
            np.testing.assert_array_equal(out, want, err_msg=str(case))
        else:
            np.testing.assert_array_equal(out.astype(np.float64), want.astype(np.float64),
                                          err_msg=str(case))


def test_numpy_e4m3_oracle_rounds_ties_to_even():
    """The oracle of the FP8 kernel tests: a midpoint between two neighbouring E4M3 values
    goes to the one with the even code (round half to even on the E4M3 grid)."""
    vals = np.sort(Q.E4M3_VALUES[np.isfinite(Q.E4M3_VALUES)])
    vals = vals[vals >= 0]
    mids = (vals[:-1] + vals[1:]) / 2
    codes = Q.e4m3_encode(mids)
    got = Q.e4m3_decode(codes)
    lo, hi = vals[:-1], vals[1:]
    lo_code_even = (Q.e4m3_encode(lo) & 1) == 0
    np.testing.assert_array_equal(got, np.where(lo_code_even, lo, hi))


def _epilogue_reference(acc, ld, n, epi, ops, out_dtype, out_scale):
    y = acc.reshape(-1, ld)[:, :n].astype(np.float32)
    for e in epi:
        if e["op"] == "scale":
            y = y * ops[e["input"]].astype(np.float32)
        elif e["op"] == "add" and "scale" in e:  # an int8 residual
            y = y + ops[e["input"]].astype(np.float32) * np.float32(e["scale"])
        elif e["op"] in ("bias", "add"):
            y = y + ops[e["input"]].astype(np.float32)
        else:
            from tftrt.engine.backends.numpy_ops import apply_activation
            y = apply_activation(y, e).astype(np.float32)
    if out_dtype == "int8":
        return Q.quantize_int8(y, Q.inv_scale(out_scale))
    return y.astype(out_dtype)


EPI_CASES = [  # (acc dtype, ld, out dtype, out scale, activation, residual dtype)
    ("int32", 12, "float16", None, {"op": "act", "fn": "relu"}, "float16"),
    ("int32", 16, "int8", 0.05, {"op": "act", "fn": "relu"}, None),
    ("int32", 12, "int8", 0.02, {"op": "act", "fn": "clip", "min": 0.0, "max": 6.0}, "float16"),
    ("float32", 12, "float16", None, {"op": "act", "fn": "leaky_relu", "alpha": 0.1}, None),
    ("float32", 16, "float32", None, None, "float32"),
    # a ResNet block's last conv: its residual, the block input, is int8 of its own scale
    ("int32", 12, "int8", 0.04, {"op": "act", "fn": "relu"}, "int8"),
    ("int32", 16, "float16", None, None, "int8"),
]


@pytest.mark.skipif(_host_compiler() is None, reason="no host C++ compiler")
def test_epilogue_kernels_match_numpy_on_the_host(tmp_path):
    """float(acc) * dequant[c] + bias[c] (+ residual), activation, then fp16 / fp32 / int8
    requantized: the numpy backend's float32 steps bit for bit, a padded row stride (N
    padded for cuBLASLt) read correctly, NaN / saturation on requantization."""
    rng = np.random.default_rng(1)
    rows, n = 7, 12
    srcs, cases = [], []
    for acc_dt, ld, out_dt, out_scale, act, res_dt in EPI_CASES:
        if acc_dt == "int32":
            acc = rng.integers(-2 ** 20, 2 ** 20, (rows, ld)).astype(np.int32)
            acc.reshape(-1)[:3] = [2 ** 31 - 1, -2 ** 31, 2 ** 24 + 1]  # rounding to float32
        else:
            acc = (rng.standard_normal((rows, ld)) * 1e4).astype(np.float32)
        dq = (rng.uniform(1e-5, 1e-3, n)).astype(np.float32)
        bias = rng.standard_normal(n).astype(np.float32)
        epi = [{"op": "scale", "input": 2}, {"op": "bias", "input": 3}]
        ops = {2: dq, 3: bias}
        modes = {2: ("vec", "float32"), 3: ("vec", "float32")}
        if res_dt == "int8":
            ops[4] = rng.integers(-127, 128, (rows, n)).astype(np.int8)
            modes[4] = ("full", res_dt)
            epi.append({"op": "add", "input": 4, "scale": 0.0371})
        elif res_dt:
            ops[4] = rng.standard_normal((rows, n)).astype(res_dt)
            modes[4] = ("full", res_dt)
            epi.append({"op": "add", "input": 4})
        if act:
            epi.append(act)
        src = S.QuantEpilogueSource(rows, n, ld, acc_dt, epi, modes, out_dt, out_scale)
        assert src.operands == sorted(ops)
        srcs.append((src.source, "qepi"))
        cases.append((acc, ld, epi, ops, out_dt, out_scale, src.work))
    so = _host_library(_host_source(srcs), tmp_path, "qepi")
    for k, (acc, ld, epi, ops, out_dt, out_scale, work) in enumerate(cases):
        want = _epilogue_reference(acc, ld, n, epi, ops, out_dt, out_scale)
        out = np.zeros((rows, n), out_dt)
        args = [acc] + [ops[i].view(np.uint16) if ops[i].dtype == np.float16 else ops[i]
                        for i in sorted(ops)]
        args.append(out.view(np.uint16) if out.dtype == np.float16 else out)
        _run(so, "qepi", k, work, *[np.ascontiguousarray(a) for a in args])
        np.testing.assert_array_equal(out, want, err_msg=str(EPI_CASES[k]))


@pytest.mark.skipif(_host_compiler() is None, reason="no host C++ compiler")
def test_requantize_kernel_of_the_fused_cudnn_variant_on_the_host(tmp_path):
    """cupy_quant's "fused_requant" cuDNN variant writes the fused epilogue's fp32 output and
    an epilogue source with no ops requantizes it to int8: numpy's q(y * inv_scale), ties to
    even, +-127 saturation, NaN -> 0."""
    rng = np.random.default_rng(2)
    rows, n, scale = 9, 8, 0.05
    y = (rng.standard_normal((rows, n)) * 4).astype(np.float32)
    y.reshape(-1)[:6] = [np.nan, np.inf, -np.inf, 0.025, 0.075, -0.125]  # ties at scale 0.05
    src = S.QuantEpilogueSource(rows, n, n, "float32", [], {}, "int8", scale)
    assert src.operands == []
    so = _host_library(_host_source([(src.source, "qepi")]), tmp_path, "requant")
    out = np.full((rows, n), 77, np.int8)
    _run(so, "qepi", 0, src.work, np.ascontiguousarray(y), out)
    want = Q.quantize_int8(y, Q.inv_scale(scale))
    np.testing.assert_array_equal(out, want)
    assert list(out.reshape(-1)[:3]) == [0, 127, -127]


def test_sources_refuse_what_they_cannot_do():
    with pytest.raises(ValueError, match="an int8 input feeds only an INT8 layer"):
        S.QuantizeSource(2, 4, 4, "int8", "e4m3", 1.0)
    with pytest.raises(ValueError, match="padded channels 2 < channels 4"):
        S.QuantizeSource(2, 4, 2, "float16", "int8", 1.0)
    with pytest.raises(ValueError, match="needs its output scale"):
        S.QuantEpilogueSource(2, 4, 4, "int32", [], {}, "int8")
    with pytest.raises(ValueError, match="row stride 2 < columns 4"):
        S.QuantEpilogueSource(2, 4, 2, "int32", [], {}, "float16")
    with pytest.raises(ValueError, match="does not broadcast"):
        S.epilogue_operand_modes([{"op": "add", "input": 2}], {2: (3, 1)}, {2: "float16"},
                                 (3, 4))


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not on PATH")
def test_sources_compile_for_sm90_with_nvcc(tmp_path):
    """Every quantize mode and epilogue variant is valid CUDA for nvcc, and the FP8 PTX
    conversion assembles for sm_90 (ptxas runs: -c builds the object)."""
    parts = [C.PRELUDE, S.INT8_HELPERS, S.FP8_HELPERS, S.E4M3_VALUE]
    k = 0
    for rows, c, cp, dt, mode, vdt in QUANT_CASES:
        src = S.QuantizeSource(rows, c, cp, dt, mode, 2.0, vdt or "float16").source
        parts.append(_strip(src).replace("void quantize(", f"void quantize_{k}("))
        k += 1
    for acc_dt, ld, out_dt, out_scale, act, _ in EPI_CASES:
        epi = [{"op": "scale", "input": 2}] + ([act] if act else [])
        src = S.QuantEpilogueSource(5, 12, ld, acc_dt, epi, {2: ("vec", "float32")}, out_dt,
                                    out_scale).source
        parts.append(_strip(src).replace("void qepi(", f"void qepi_{k}("))
        k += 1
    cu = tmp_path / "quant.cu"
    cu.write_text("\n".join(parts))
    r = subprocess.run(["nvcc", "-c", "-arch=sm_90", "-std=c++14", "-o", str(tmp_path / "q.o"),
                        str(cu)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]


# --- planning -----------------------------------------------------------------------------------
def test_channel_padding_and_weight_layouts():
    assert [S.padded_channels(c, S.INT8) for c in (3, 4, 5, 64)] == [4, 4, 8, 64]
    assert [S.padded_channels(c, S.FP8) for c in (3, 16, 17)] == [16, 16, 32]
    rng = np.random.default_rng(2)
    w = rng.integers(-127, 128, (8, 3, 3, 3)).astype(np.int8)  # KRSC, C = 3
    wp = S.conv_weight(w, 4)
    assert wp.shape == (8, 3, 3, 4) and wp.dtype == np.int8
    np.testing.assert_array_equal(wp[..., :3], w)
    assert not wp[..., 3].any()
    # matmul [K, N] -> [Np, Kp] K-contiguous; transposed [N, K] kept; 1x1 conv [N, 1, 1, K]
    wk = rng.integers(-127, 128, (6, 10)).astype(np.int8)
    g = S.gemm_weight(wk, "matmul", False, 8, 12)
    assert g.shape == (12, 8) and g.flags.c_contiguous
    np.testing.assert_array_equal(g[:10, :6], wk.T)
    assert not g[10:].any() and not g[:, 6:].any()
    np.testing.assert_array_equal(S.gemm_weight(wk.T, "matmul", True, 8, 12), g)
    conv1 = wk.T.reshape(10, 1, 1, 6)
    np.testing.assert_array_equal(S.gemm_weight(conv1, "conv", False, 8, 12), g)


def test_weight_values_are_exact_in_fp16():
    codes = np.arange(256, dtype=np.uint8)
    v = S.weight_values(codes, S.FP8).astype(np.float32)
    ref = Q.e4m3_decode(codes)
    finite = np.isfinite(ref)
    np.testing.assert_array_equal(v[finite], ref[finite])
    assert np.isnan(v[~finite]).all()
    i8 = np.arange(-127, 128, dtype=np.int8)
    np.testing.assert_array_equal(S.weight_values(i8, S.INT8).astype(np.int32), i8)


def test_gemm_dims():
    conv = {"group": 1, "strides": [1, 1], "pads": [0, 0, 0, 0], "dilations": [1, 1]}
    assert S.gemm_dims("conv", (2, 7, 7, 64), (256, 1, 1, 64), conv) == (98, 64, 256)
    assert S.gemm_dims("conv", (2, 7, 7, 64), (256, 3, 3, 64), conv) is None
    assert S.gemm_dims("conv", (2, 7, 7, 64), (256, 1, 1, 64),
                       dict(conv, strides=[2, 2])) is None
    assert S.gemm_dims("matmul", (4, 9, 32), (32, 10), {}) == (36, 32, 10)
    assert S.gemm_dims("matmul", (4, 32), (10, 32), {"transpose_b": True}) == (4, 32, 10)
    assert S.gemm_dims("matmul", (32, 4), (32, 10), {"transpose_a": True}) is None


def test_operand_modes():
    modes = S.epilogue_operand_modes(
        [{"op": "scale", "input": 2}, {"op": "bias", "input": 3}, {"op": "add", "input": 4},
         {"op": "act", "fn": "relu"}],
        {2: (8,), 3: (1, 1, 1, 8), 4: (2, 5, 5, 8)},
        {2: "float32", 3: "float32", 4: "float16"}, (2, 5, 5, 8))
    assert modes == {2: ("vec", "float32"), 3: ("vec", "float32"), 4: ("full", "float16")}


# --- the backend's tactics and the report ----------------------------------------------------
def _quantized_net(kind):
    from tftrt.engine.network import Network
    from tftrt.engine.precision import apply_precision
    rng = np.random.RandomState(0)
    net = Network(kind)
    net.inputs, net.outputs = ["x"], ["y"]
    if kind == "depthwise":
        net.add_tensor("x", "float32", (1, 6, 6, 8))
        w = net.add_weight(rng.randn(8, 3, 3, 1).astype(np.float32), "w")
        net.add_layer("conv", ["x", w], ["y"], {"strides": [1, 1], "dilations": [1, 1],
                                                "pads": [1, 1, 1, 1], "group": 8})
        net.tensors["y"].dtype, net.tensors["y"].shape = "float32", (1, 6, 6, 8)
    else:
        net.add_tensor("x", "float32", (4, 16))
        w = net.add_weight(rng.randn(16, 8).astype(np.float32), "w")
        net.add_layer("matmul", ["x", w], ["y"], {})
        net.tensors["y"].dtype, net.tensors["y"].shape = "float32", (4, 8)
    return apply_precision(net, "INT8", Q.new_table(tensors={"x": 2.0}))


@pytest.mark.parametrize("kind", ["depthwise", "matmul"])
def test_float_tactics_never_take_a_quantized_layer(kind):
    """The CuPy backend's fp16 / fp32 tactics (the direct depthwise kernel, cupy.matmul,
    cuDNN / cuBLASLt float paths) refuse a layer whose weight is int8 / E4M3 codes: only the
    q_* tactics (cupy_quant) may run it. Checked without CuPy: the float predicates only."""
    importlib.import_module("tftrt.engine.backends.cupy_backend")  # registers the tactics
    from tftrt.engine.tactics import _REGISTRY
    net = _quantized_net(kind)
    (layer,) = net.layers
    assert layer.precision == "INT8" and "quant" in layer.attrs
    layer_kind = "conv" if kind == "depthwise" else "matmul"
    tactics = {t.name: t for t in _REGISTRY[("cupy", layer_kind)]}
    assert {"q_cudnn", "q_lt_1x1", "q_emulated"} <= set(tactics) if layer_kind == "conv" \
        else {"q_lt", "q_emulated"} <= set(tactics)
    float_tactics = [n for n in tactics if not n.startswith("q_")]
    assert float_tactics
    for name in float_tactics:
        if name in ("cudnn", "lt_1x1", "lt"):
            continue  # these import cupy_dnn; their dtype checks are the float-weight tests
        assert not tactics[name].applies(net, layer), name


def test_precision_report_names_the_kernel():
    net = _quantized_net("matmul")
    (layer,) = net.layers
    assert Q.precision_report(net)["layers"][0]["kernel"] is None
    layer.tactic = "q_lt"
    layer.attrs["_cupy"] = {"q_lt": {"algo": 0, "kernel": "cuBLASLt INT8 GEMM"}}
    assert Q.layer_kernel(layer) == "cuBLASLt INT8 GEMM"
    assert Q.precision_report(net)["layers"][0]["kernel"] == "cuBLASLt INT8 GEMM"
