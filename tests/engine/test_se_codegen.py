"""The ``se`` layer's CUDA source (backends/cuda_source_se), checked without a GPU: it compiles
for sm_90 with nvcc, and built for the host (tests/engine/test_cuda_codegen's shims: one
thread runs every grid-stride loop, and every block through the kernels' loops over block
tasks, with gridDim 1) its kernels compute what the numpy backend's ``se`` computes, on both
gate paths (a block per sample: se_fc; outputs spread over blocks: se_fc1 + se_fc2), for
EfficientNet's and MobileNetV3's blocks in FP32 / FP16, vector and scalar loads, several pool
slices, channel counts no vector width divides, split blocks with partly filled last blocks."""

import ctypes
import re
import shutil
import subprocess

import numpy as np
import pytest

from tests.engine.test_cuda_codegen import HOST_SHIMS, _host_compiler, _host_library
from tftrt.engine.backends import cuda_source as C
from tftrt.engine.backends import numpy_ops
from tftrt.engine.backends.cuda_source_se import THREADS, SeSource, split_default

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
    # MobileNetV3Large's largest block at batch 1 (split by default: 60 + 60 blocks)
    ("mobilenet_v3", 1, 3, 3, 960, 240, "float16", True, None, 132),
    ("efficientnet", 1, 2, 3, 1152, 48, "float32", False, None, 132),
    # split: 4 blocks of 16 hidden outputs (the last one half used), 4 of 64 channels
    ("mobilenet_v3", 2, 2, 2, 200, 50, "float32", True, None, 1),
]
PATHS = {"block per sample": False, "split": True}


def _source(case, split):
    style, n, h, w, c, cse, dt, bias, vec, sms = case
    return SeSource(n, h * w, c, cse, dt, dt, _attrs(style, dt), bias, bias, vec=vec, sms=sms,
                    split=split)


def _all_sources():
    """[(case, split, source, kernel suffix)] of every case on both paths."""
    return [(case, split, _source(case, split), 2 * i + int(split))
            for i, case in enumerate(CASES) for split in (False, True)]


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


def test_split_path_is_taken_for_few_samples_and_covers_the_outputs():
    # MobileNetV3Large's largest block: split up to half the SMs' count of samples
    assert split_default(1, 960, 240, 132) and split_default(66, 960, 240, 132)
    assert not split_default(67, 960, 240, 132) and not split_default(128, 960, 240, 132)
    # EfficientNetB0's first block (32 x 8 weights): one block does both FCs quickly
    assert not split_default(1, 32, 8, 132)
    a = _attrs("mobilenet_v3", "float16")
    s = SeSource(1, 49, 960, 240, "float16", "float16", a, True, True)
    assert s.split and s.kernel_names == ("se_pool", "se_fc1", "se_fc2", "se_scale")
    assert (s.kp1, s.j1, s.fc1_tasks, s.kp2, s.j2, s.fc2_tasks) == (64, 4, 60, 16, 16, 60)
    for n, c, cse in ((1, 960, 240), (3, 200, 50), (2, 7, 2), (1, 1152, 48), (5, 72, 24)):
        s = SeSource(n, 9, c, cse, "float32", "float32", a, True, True, split=True)
        for kp, j, tasks, outs, length in ((s.kp1, s.j1, s.fc1_tasks, cse, c),
                                           (s.kp2, s.j2, s.fc2_tasks, c, cse)):
            assert kp & (kp - 1) == 0 and kp * j == THREADS, (n, c, cse)
            assert kp == 1 or length // kp >= 8  # at least 8 products a thread
            per = tasks // n  # blocks per sample cover the outputs, the last one used
            assert tasks % n == 0 and (per - 1) * j < outs <= per * j, (n, c, cse)
        # scratch: part, gate, hidden at 256-byte offsets, none overlapping
        assert s.gate_offset % 256 == 0 and s.gate_offset >= s.part_bytes
        assert s.hidden_offset % 256 == 0 and s.hidden_offset >= s.gate_offset + s.gate_bytes
        assert s.hidden_bytes == 4 * n * cse and s.workspace == s.hidden_offset + s.hidden_bytes
    s = SeSource(128, 49, 960, 240, "float16", "float16", a, True, True)
    assert not s.split and s.kernel_names == ("se_pool", "se_fc", "se_scale")
    assert s.hidden_bytes == 0 and s.workspace == s.gate_offset + s.gate_bytes


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not on PATH")
def test_se_kernels_compile_for_sm90_with_nvcc(tmp_path):
    text = C.PRELUDE + "\n".join(_rename(src.source, k) for _, _, src, k in _all_sources())
    cu = tmp_path / "se.cu"
    cu.write_text(text)
    r = subprocess.run(["nvcc", "-c", "-arch=sm_90", "-std=c++14", "-o", str(tmp_path / "se.o"),
                        str(cu)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]


def _raw(a):
    a = np.ascontiguousarray(a)
    return ctypes.c_void_p((a.view(np.uint16) if a.dtype == np.float16 else a).ctypes.data)


@pytest.fixture(scope="module")
def host_library(tmp_path_factory):
    """Every case's kernels on both paths, built for the host: (library, sources)."""
    if _host_compiler() is None:
        pytest.skip("no host C++ compiler")
    srcs = _all_sources()
    text = HOST_SHIMS + "#define __shared__ static\n" + C.MATH_HELPERS + "\n".join(
        _rename(src.source, k) for _, _, src, k in srcs)
    return _host_library(text, tmp_path_factory.mktemp("se"), "se"), srcs


def _call(so, name, k, args, work=None):
    """Kernel ``name`` of case ``k`` on ``args`` (and its work count, for the grid-stride
    kernels that take one)."""
    fn = getattr(so, f"{name}_{k}")
    fn.restype = None
    fn(*[_raw(a) for a in args], *([] if work is None else [ctypes.c_longlong(work)]))


@pytest.mark.parametrize("path", list(PATHS))
def test_se_kernels_match_numpy_on_the_host(host_library, path):
    so, srcs = host_library
    rng = np.random.default_rng(3)
    for case, split, src, k in srcs:
        if split != PATHS[path]:
            continue
        style, n, h, w, c, cse, dt, bias, vec, sms = case
        x = (rng.standard_normal((n, h, w, c)) + 0.5).astype(dt)
        w1 = (rng.standard_normal((cse, c)) / np.sqrt(c)).astype(dt)
        w2 = (rng.standard_normal((c, cse)) / np.sqrt(cse)).astype(dt)
        b1 = rng.standard_normal(cse).astype(np.float32) if bias else None
        b2 = (rng.standard_normal(c) + 3).astype(np.float32) if bias else None
        w1t, w2t = (np.ascontiguousarray(v.T.astype(np.float32)) for v in (w1, w2))
        want, want_g = numpy_ops.se(x.astype(np.float32), w1t, b1, w2t, b2, src.attrs)
        a = src.attrs
        want_h = numpy_ops.se_stages(numpy_ops.se_fc(numpy_ops.se_stages(
            numpy_ops.reduce(x.astype(np.float32), "mean", a["axes"], 0), a["pool"]), w1t, b1,
            a["act1"]),
            a["hidden"])
        part = np.full((n, src.splits, c), np.nan, np.float32)
        gate = np.full((n, c), np.nan, np.float32)
        hidden = np.full((n, cse), np.nan, np.float32)
        y = np.zeros((n, h, w, c), dt)
        zero = np.zeros(max(c, cse), np.float32)
        b1, b2 = (b1, b2) if bias else (zero, zero)
        _call(so, "se_pool", k, [x, part], src.pool_work)
        if split:  # the weights [Cout, Cin], the hidden vector through memory
            _call(so, "se_fc1", k, [part, w1.astype(np.float32), b1, hidden])
            _call(so, "se_fc2", k, [hidden, w2.astype(np.float32), b2, gate])
        else:
            _call(so, "se_fc", k, [part, w1t, b1, w2t, b2, gate])
        _call(so, "se_scale", k, [x, gate, y], src.scale_work)
        what = f"{path}: case {case}"
        assert src.split == split, what
        np.testing.assert_allclose(part.sum(axis=1), x.astype(np.float64).sum(axis=(1, 2)),
                                   rtol=1e-5, atol=1e-4, err_msg=what)
        # The gate: the same float32 steps, a different summation order (a few ulps; a fp16
        # stage may round the other way on a tie-near value: one half ulp then)
        gtol = 2e-3 if dt == "float16" else 1e-5
        if split:
            np.testing.assert_allclose(hidden, want_h, rtol=gtol, atol=gtol, err_msg=what)
        np.testing.assert_allclose(gate, want_g, rtol=gtol, atol=gtol, err_msg=what)
        np.testing.assert_allclose(y.astype(np.float64), want.astype(dt).astype(np.float64),
                                   rtol=gtol, atol=gtol, err_msg=what)
        if dt == "float16":  # fp16 storage absorbs the summation order almost everywhere
            exact = np.mean(y == want.astype(dt))
            assert exact > 0.9, f"{what}: only {exact:.1%} of y bit-equal to numpy"
