"""The CuPy backend's resize kernel source (cuda_source_move.ResizeSource), checked without a GPU:
built for the CPU with test_cuda_codegen's shims and run against the numpy reference
(numpy_ops.resize), and compiled with nvcc where it is on PATH."""

import ctypes
import shutil

import numpy as np
import pytest

from tests.engine.test_cuda_codegen import (HOST_SHIMS, _host_compiler, _host_library,
                                             _rename, nvcc_compile)
from tftrt.engine.backends import cuda_source as C
from tftrt.engine.backends import cuda_source_move as M
from tftrt.engine.backends import numpy_ops

# (x shape, output sizes, mode, coordinate_transformation_mode, nearest_mode, in, out dtype)
CASES = [
    ((2, 5, 6, 3), (2, 7, 9, 3), "linear", "half_pixel", None, "float32", "float32"),    # NHWC
    ((2, 3, 5, 6), (2, 3, 10, 12), "linear", "align_corners", None, "float32", "float32"),  # NCHW
    ((1, 9, 7, 4), (1, 4, 3, 4), "linear", "asymmetric", None, "float16", "float16"),
    ((2, 5, 6, 3), (2, 7, 9, 3), "linear", "half_pixel", None, "float16", "float32"),
    ((2, 14, 9, 3), (2, 9, 14, 3), "nearest", "half_pixel", "round_prefer_ceil", "float32",
     "float32"),
    ((2, 3, 4, 6), (2, 3, 8, 12), "nearest", "asymmetric", "floor", "float16", "float16"),
    ((1, 6, 5, 2), (1, 11, 3, 2), "nearest", "align_corners", "round_prefer_ceil", "float32",
     "float16"),
    ((3, 8, 4), (3, 5, 4), "linear", "pytorch_half_pixel", None, "float32", "float32"),  # 1 axis
    ((2, 4, 6), (2, 4, 9), "nearest", "asymmetric", "floor", "float32", "float32"),  # last axis
]


def _attrs(x_shape, sizes, mode, ctm, nearest):
    r = len(x_shape)
    return {"mode": mode, "coordinate_transformation_mode": ctm,
            "nearest_mode": nearest or "round_prefer_floor", "cubic_coeff_a": -0.75,
            "exclude_outside": 0, "extrapolation_value": 0.0, "sizes": list(sizes),
            "scales": [s / x for s, x in zip(sizes, x_shape)], "roi": [0.0] * r + [1.0] * r}


def _sources():
    out = []
    for xs, sizes, mode, ctm, nearest, dt, odt in CASES:
        a = _attrs(xs, sizes, mode, ctm, nearest)
        src = M.ResizeSource.plan(xs, a, dt, odt)
        assert src is not None, (xs, sizes, mode, ctm)
        out.append((src, xs, a, dt, odt))
    return out


def test_plan_declines_what_the_kernel_does_not_do():
    xs = (1, 4, 4, 4)
    assert M.ResizeSource.plan(xs, _attrs(xs, (1, 8, 8, 4), "cubic", "half_pixel", None),
                               "float32", "float32") is None
    assert M.ResizeSource.plan(xs, _attrs(xs, (1, 8, 8, 4), "linear", "tf_crop_and_resize",
                                          None), "float32", "float32") is None
    assert M.ResizeSource.plan(xs, _attrs(xs, (1, 8, 4, 8), "linear", "half_pixel", None),
                               "float32", "float32") is None  # axes 1 and 3: not adjacent
    assert M.ResizeSource.plan(xs, _attrs(xs, (1, 8, 8, 4), "nearest", "asymmetric", "floor"),
                               "int32", "int32") is None


@pytest.mark.skipif(_host_compiler() is None, reason="no host C++ compiler")
def test_resize_kernel_matches_numpy_on_the_host(tmp_path):
    srcs = _sources()
    so = _host_library(HOST_SHIMS + C.MATH_HELPERS + "\n".join(
        _rename(s.source, k) for k, (s, *_) in enumerate(srcs)), tmp_path, "resize")
    rng = np.random.default_rng(0)
    for k, (src, xs, a, dt, odt) in enumerate(srcs):
        x = rng.standard_normal(xs).astype(dt)
        want = numpy_ops.resize(x, a).astype(odt)
        out = np.zeros(tuple(a["sizes"]), odt)
        args = [x.view(np.uint16) if dt == "float16" else x, *src.tables,
                out.view(np.uint16) if odt == "float16" else out]
        fn = getattr(so, f"resize_{k}")
        fn.restype = None
        fn(*[ctypes.c_void_p(np.ascontiguousarray(v).ctypes.data) for v in args],
           ctypes.c_longlong(src.work))
        if a["mode"] == "nearest":
            np.testing.assert_array_equal(out, want, err_msg=str(CASES[k]))
        else:
            tol = 1e-6 if odt == "float32" else 1e-3
            np.testing.assert_allclose(out.astype(np.float64), want.astype(np.float64),
                                       rtol=tol, atol=tol, err_msg=str(CASES[k]))


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not on PATH")
def test_resize_kernels_compile_with_nvcc(tmp_path):
    text = C.PRELUDE + "\n".join(_rename(s.source, k) for k, (s, *_) in enumerate(_sources()))
    nvcc_compile(text, tmp_path, "resize")
