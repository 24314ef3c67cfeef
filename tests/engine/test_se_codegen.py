"""The ``se`` layer's CUDA source (backends/cuda_source_se), checked without a GPU: it compiles
for sm_90 with nvcc, and built for the host (tests/engine/test_cuda_codegen's shims: one
thread runs every grid-stride loop and block) its three kernels compute what the numpy
backend's ``se`` computes, for EfficientNet's and MobileNetV3's blocks in FP32 / FP16, vector
and scalar loads, several pool slices, channel counts no vector width divides."""

import ctypes
import re
import shutil
import subprocess

import numpy as np
import pytest

from tests.engine.test_cuda_codegen import HOST_SHIMS, _host_compiler, _host_library
from tftrt.engine.backends import cuda_source as C
from tftrt.engine.backends import numpy_ops
from tftrt.engine.backends.cuda_source_se import SeSource

EFFICIENTNET = {"axes": [1, 2], "act1": {"op": "act", "fn": "silu"},
                "act2": {"op": "act", "fn": "sigmoid"}}
MOBILENET_V3 = {"axes": [1, 2], "act1": {"op": "act", "fn": "relu"},
                "act2": {"op": "act", "fn": "clip", "min": 0.0, "max": 6.0}}
SCALE_BY_SIXTH = {"program": [
    {"op": "mul", "args": [0.1666666716337204, "$0"], "dtype": "float32"},
    {"op": "identity", "args": ["%0"], "dtype": "float32"}]}
CAST_HALF = {"program": [{"op": "cast", "args": ["$0"], "dtype": "float16", "to": "float16"}]}


def _attrs(style, dtype):
    a = dict(EFFICIENTNET if style == "efficientnet" else MOBILENET_V3)
    r = [{"round": dtype}]
    a["pool"] = [{"round": "float32"}] + ([CAST_HALF] if dtype == "float16" else []) + r
    a["hidden"] = list(r)
    a["gate"] = r + ([SCALE_BY_SIXTH] if style == "mobilenet_v3" else [
        {"program": [{"op": "identity", "args": ["$0"], "dtype": "float32"}]}])
    return a


# (style, N, H, W, C, Cse, dtype, biases, vec, sms): sms=1 makes se_pool split HW in slices
CASES = [
    ("efficientnet", 2, 8, 8, 32, 8, "float16", False, None, 132),
    ("efficientnet", 3, 9, 7, 96, 4, "float16", False, None, 1),
    ("mobilenet_v3", 2, 4, 4, 72, 24, "float16", True, None, 1),
    ("mobilenet_v3", 2, 5, 5, 40, 10, "float32", True, None, 132),
    ("efficientnet", 2, 6, 6, 48, 12, "float32", False, 1, 1),     # scalar loads
    ("mobilenet_v3", 1, 3, 5, 12, 3, "float16", True, None, 1),    # C=12: 8-byte loads
    ("efficientnet", 2, 3, 3, 7, 2, "float16", True, None, 132),   # C=7: scalar
]


def _source(case, k):
    style, n, h, w, c, cse, dt, bias, vec, sms = case
    return SeSource(n, h * w, c, cse, dt, dt, _attrs(style, dt), bias, bias, vec=vec, sms=sms)


def _rename(src: str, k: int) -> str:
    body = src.replace(C.PRELUDE, "")
    return re.sub(r'extern "C" __global__ void (\w+)\(', rf'extern "C" __global__ void \1_{k}(',
                  body)


def test_plan_covers_the_tensor():
    s = SeSource(128, 112 * 112, 32, 8, "float16", "float16", _attrs("efficientnet",
                                                                       "float16"), False, False)
    assert s.vec == 8 and s.cv == 4 and s.splits * s.rows >= s.hw > (s.splits - 1) * s.rows
    assert s.pool_work >= 132 * 1024  # enough threads for the GPU
    small = SeSource(1, 49, 1152, 48, "float16", "float16", _attrs("efficientnet", "float16"),
                     False, False)
    assert small.splits == 4 and small.rows == 16  # batch 1: still a thread per 16 rows
    assert small.kp * 48 <= 256 and small.smem <= 48 * 1024
    with pytest.raises(ValueError, match="shared memory"):
        SeSource(1, 4, 16384, 16, "float32", "float32", _attrs("efficientnet", "float32"),
                 False, False)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not on PATH")
def test_se_kernels_compile_for_sm90_with_nvcc(tmp_path):
    text = C.PRELUDE + "\n".join(_rename(_source(case, k).source, k)
                                 for k, case in enumerate(CASES))
    cu = tmp_path / "se.cu"
    cu.write_text(text)
    r = subprocess.run(["nvcc", "-c", "-arch=sm_90", "-std=c++14", "-o", str(tmp_path / "se.o"),
                        str(cu)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]


def _raw(a):
    a = np.ascontiguousarray(a)
    return ctypes.c_void_p((a.view(np.uint16) if a.dtype == np.float16 else a).ctypes.data)


@pytest.mark.skipif(_host_compiler() is None, reason="no host C++ compiler")
def test_se_kernels_match_numpy_on_the_host(tmp_path):
    srcs = [_source(case, k) for k, case in enumerate(CASES)]
    text = HOST_SHIMS + "#define __shared__ static\n" + C.MATH_HELPERS + "\n".join(
        _rename(s.source, k) for k, s in enumerate(srcs))
    so = _host_library(text, tmp_path, "se")
    rng = np.random.default_rng(3)
    for k, (case, src) in enumerate(zip(CASES, srcs)):
        style, n, h, w, c, cse, dt, bias, vec, sms = case
        x = (rng.standard_normal((n, h, w, c)) + 0.5).astype(dt)
        w1 = (rng.standard_normal((cse, c)) / np.sqrt(c)).astype(dt)
        w2 = (rng.standard_normal((c, cse)) / np.sqrt(cse)).astype(dt)
        b1 = rng.standard_normal(cse).astype(np.float32) if bias else None
        b2 = (rng.standard_normal(c) + 3).astype(np.float32) if bias else None
        want, want_g = numpy_ops.se(x.astype(np.float32), w1.T.astype(np.float32), b1,
                                    w2.T.astype(np.float32), b2, src.attrs)
        part = np.full((n, src.splits, c), np.nan, np.float32)
        gate = np.full((n, c), np.nan, np.float32)
        y = np.zeros((n, h, w, c), dt)
        w1t = np.ascontiguousarray(w1.T.astype(np.float32))
        w2t = np.ascontiguousarray(w2.T.astype(np.float32))
        zero = np.zeros(max(c, cse), np.float32)
        for name, args in (("se_pool", [x, part]),
                           ("se_fc", [part, w1t, b1 if bias else zero, w2t,
                                      b2 if bias else zero, gate]),
                           ("se_scale", [x, gate, y])):
            fn = getattr(so, f"{name}_{k}")
            fn.restype = None
            fn(*[_raw(a) for a in args])
        what = f"case {k} {case}"
        np.testing.assert_allclose(part.sum(axis=1), x.astype(np.float64).sum(axis=(1, 2)),
                                   rtol=1e-5, atol=1e-4, err_msg=what)
        # The gate: the same float32 steps, a different summation order (a few ulps; a fp16
        # stage may round the other way on a tie-near value: one half ulp then)
        gtol = 2e-3 if dt == "float16" else 1e-5
        np.testing.assert_allclose(gate, want_g, rtol=gtol, atol=gtol, err_msg=what)
        np.testing.assert_allclose(y.astype(np.float64), want.astype(dt).astype(np.float64),
                                   rtol=gtol, atol=gtol, err_msg=what)
        if dt == "float16":  # fp16 storage absorbs the summation order almost everywhere
            exact = np.mean(y == want.astype(dt))
            assert exact > 0.9, f"{what}: only {exact:.1%} of y bit-equal to numpy"
