"""Tactic ``im2col`` (backends/cuda_source_im2col, cupy_im2col) checked without a GPU: the copy
kernel's CUDA source compiles with nvcc, and built for the host it writes, byte for byte, the
patches the numpy backend's convolution multiplies (numpy_ops.im2col: kernel positions in
row-major order, then channels), zero past KH*KW*Cin and in the padding, for strides,
dilations, asymmetric pads, float16 and float32 inputs, in chunks of rows; the patches times
the zero-padded filter give the numpy engine's convolution; the chunk plan; which layers the
tactic is offered for.
"""

import ctypes
import re
import shutil

import numpy as np
import pytest
from onnx import helper

from tests.engine.harness import make_model, rand
from tests.engine.test_cuda_codegen import (HOST_SHIMS, _host_compiler, _host_library,
                                             _rename, nvcc_compile)
from tftrt.engine import BuilderConfig, build_engine
from tftrt.engine.backends import cuda_source as C
from tftrt.engine.backends import cuda_source_im2col as I2C
from tftrt.engine.backends import numpy_ops

# (x shape NHWC, (kh, kw), strides, dilations, pads (top, left, bottom, right), x dtype)
CASES = [
    ((2, 9, 11, 3), (3, 3), (1, 1), (1, 1), (1, 1, 1, 1), "float16"),     # VGG's stem, K 27
    ((1, 15, 14, 3), (7, 7), (2, 2), (1, 1), (3, 3, 3, 3), "float16"),    # ResNet's, K 147
    ((2, 13, 12, 3), (3, 3), (2, 2), (1, 1), (0, 0, 1, 1), "float32"),    # TF SAME, fp32 in
    ((1, 16, 16, 3), (4, 4), (4, 4), (1, 1), (0, 0, 0, 0), "float16"),    # ConvNeXt patchify
    ((1, 10, 9, 5), (3, 2), (1, 2), (2, 1), (2, 0, 1, 3), "float32"),     # dilated, odd
    ((3, 6, 7, 1), (5, 5), (1, 1), (1, 1), (2, 2, 2, 2), "float16"),      # one channel
    ((1, 4, 5, 12), (1, 1), (1, 1), (1, 1), (0, 0, 0, 0), "float16"),     # K 12: 2 groups
]


def _out_hw(xs, k, s, d, pads):
    return tuple(numpy_ops.conv_out_spatial(xs[1:3], k, s, d, pads[:2] + pads[2:]))


def _want(x, k, s, d, pads):
    """numpy's patches [rows, kpad] (float16), zero-padded past K."""
    oh, ow = _out_hw(x.shape, k, s, d, pads)
    xp = numpy_ops._pad_spatial(x, list(pads[:2]) + list(pads[2:]))
    cols = numpy_ops.im2col(xp, k, s, d, (oh, ow)).reshape(x.shape[0] * oh * ow, -1)
    out = np.zeros((cols.shape[0], I2C.kpad(cols.shape[1])), np.float16)
    out[:, :cols.shape[1]] = cols.astype(np.float16)
    return out


def _sources():
    return [I2C.Im2colSource(xs, k, s, d, p, _out_hw(xs, k, s, d, p), dt)
            for xs, k, s, d, p, dt in CASES]


@pytest.mark.skipif(_host_compiler() is None, reason="no host C++ compiler")
@pytest.mark.parametrize("chunk", [None, 7])
def test_the_copy_writes_numpys_patches_on_the_host(tmp_path, chunk):
    """All rows in one launch, and in chunks of 7 rows (the last shorter) at their row0."""
    srcs = _sources()
    so = _host_library("\n".join([HOST_SHIMS + C.MATH_HELPERS] +
                                 [_rename(s.source, k) for k, s in enumerate(srcs)]),
                       tmp_path, "im2col")
    for k, ((xs, kk, s, d, p, dt), src) in enumerate(zip(CASES, srcs)):
        x = (np.random.default_rng(k).standard_normal(xs) * 3).astype(dt)
        want = _want(x, kk, s, d, p)
        rows = want.shape[0]
        assert src.k == int(np.prod(kk)) * xs[-1] and src.kpad == want.shape[1]
        fn = getattr(so, f"{I2C.KERNEL}_{k}")
        fn.restype = None
        got = np.full(want.shape, 0x7e00, np.uint16)  # NaN everywhere it does not write
        xv = x.view(np.uint16) if dt == "float16" else x
        for r0, n in I2C.chunks(rows, chunk or rows):
            out = np.full((n, want.shape[1]), 0x7e00, np.uint16)
            fn(ctypes.c_void_p(xv.ctypes.data), ctypes.c_void_p(out.ctypes.data),
               ctypes.c_longlong(r0), ctypes.c_longlong(src.work(n)))
            got[r0:r0 + n] = out
        np.testing.assert_array_equal(got, want.view(np.uint16), err_msg=str(CASES[k]))


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not on PATH")
def test_the_copy_compiles_with_nvcc_without_spills(tmp_path):
    srcs = _sources()
    text = "\n".join([C.PRELUDE] + [_rename(s.source, k) for k, s in enumerate(srcs)])
    r = nvcc_compile(text, tmp_path, "im2col", "-Xptxas", "-v")
    spills = [int(b) for b in re.findall(r"(\d+) bytes spill stores", r.stderr)]
    assert len(spills) == len(srcs) and not any(spills), r.stderr[-4000:]


def test_patches_times_the_padded_filter_is_the_convolution():
    """The column order is the filter's [Cout, KH, KW, Cin] flattened: the GEMM the tactic runs
    (patches x zero-padded filter) gives numpy_ops' convolution."""
    for xs, k, s, d, p, _ in CASES:
        x = np.random.default_rng(1).standard_normal(xs)
        w = np.random.default_rng(2).standard_normal((6,) + tuple(k) + (xs[-1],))
        kp = I2C.kpad(w[0].size)
        wpad = np.zeros((6, kp))
        wpad[:, :w[0].size] = w.reshape(6, -1)
        cols = _want(x, k, s, d, p).astype(np.float64)
        got = cols @ wpad.T
        wmat = w.reshape(6, -1).T[None]
        want = numpy_ops.conv_im2col(x.astype(np.float16).astype(np.float64), wmat, k, s, d,
                                     list(p[:2]) + list(p[2:]), 1, 6)
        np.testing.assert_allclose(got.reshape(want.shape), want, rtol=1e-12, atol=1e-12)


def test_chunks_divide_the_rows_and_fit_the_cap():
    mb = 1 << 20
    for rows, kp, cap in [(128 * 224 * 224, 32, 16 * mb), (127 * 224 * 224, 32, 16 * mb),
                          (128 * 112 * 112, 152, 16 * mb), (224 * 224, 32, 16 * mb),
                          (7 * 7, 152, 16 * mb), (1000003, 32, mb), (97 * 3, 8, 64)]:
        per = I2C.chunk_rows(rows, kp, 2, cap)
        assert 1 <= per <= rows
        assert per * kp * 2 <= cap or per == 1, (rows, kp, per)
        parts = I2C.chunks(rows, per)
        assert sum(n for _, n in parts) == rows and parts[0][0] == 0
        assert all(a + n == b for (a, n), (b, _) in zip(parts, parts[1:]))
        if rows * kp * 2 <= cap:
            assert per == rows
        fit = cap // (kp * 2)
        assert per * 8 >= min(fit, rows) or rows % per, (rows, kp, per)
    # a batch of 128 224 x 224 images: equal chunks, each within 16 MB
    per = I2C.chunk_rows(128 * 224 * 224, 32, 2, 16 * mb)
    assert (128 * 224 * 224) % per == 0 and per * 64 <= 16 * mb and per * 64 > 8 * mb
    # a prime row count: chunks of the cap, the last shorter
    assert I2C.chunk_rows(1000003, 32, 2, mb) == mb // 64


def _stem(cin, ws=None, group=1, precision="FP16"):
    ws = ws or (16, cin // group, 3, 3)
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["t", "w", "b"], ["c"], pads=[1, 1, 1, 1], group=group),
             helper.make_node("Transpose", ["c"], ["h"], perm=[0, 2, 3, 1]),
             helper.make_node("Relu", ["h"], ["y"])]
    feeds = {"x": rand(2, 12, 12, cin)}
    model = make_model(nodes, feeds, {"w": rand(*ws, seed=1), "b": rand(ws[0], seed=2)})
    eng = build_engine(model, {"x": feeds["x"].shape},
                       BuilderConfig(backend="numpy", precision=precision, tactic_timing=False))
    (conv,) = [l for l in eng.network.layers if l.kind == "conv"]
    return eng.network, conv


def test_the_tactic_is_offered_for_unaligned_half_precision_convs(monkeypatch):
    from tftrt.engine import tactics
    from tftrt.engine.backends import cupy_backend  # noqa: F401 (registers the cupy tactics)
    assert "im2col" in [t.name for t in tactics._REGISTRY[("cupy", "conv")]]
    assert I2C.applies(*_stem(3))                   # an image stem in FP16
    assert I2C.applies(*_stem(5))
    assert not I2C.applies(*_stem(8))               # aligned: cuDNN's fast kernels take it
    assert not I2C.applies(*_stem(3, precision="FP32"))   # float32 filter
    assert not I2C.applies(*_stem(6, group=3))      # grouped
    assert not I2C.applies(*_stem(117, ws=(16, 117, 3, 3)))  # K 1053 > MAX_K
    monkeypatch.setenv("TFTRT_IM2COL", "0")
    assert not I2C.applies(*_stem(3))


def test_the_copy_refuses_what_it_cannot_read():
    with pytest.raises(ValueError, match="float16 or float32"):
        I2C.Im2colSource((1, 4, 4, 3), (3, 3), (1, 1), (1, 1), (1, 1, 1, 1), (4, 4), "int8")
