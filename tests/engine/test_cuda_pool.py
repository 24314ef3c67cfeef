"""The CuPy backend's pool kernel source (cuda_source_move.PoolSource), checked without a GPU:
built for the CPU with test_cuda_codegen's shims and run against the numpy reference
(numpy_ops.pool), and compiled with nvcc where it is on PATH. Max and average pools, float32
/ float16 (16-byte vectors) / int8, ceil mode, NaN in the windows, and the ``pad_value`` a
folded zero pad gives a max pool (passes/pad_folding): its pads are values, not skipped."""

import ctypes
import shutil

import numpy as np
import pytest

from tests.engine.test_cuda_codegen import (HOST_SHIMS, _host_compiler, _host_library,
                                             _rename, nvcc_compile)
from tftrt.engine.backends import cuda_source as C
from tftrt.engine.backends import cuda_source_move as M
from tftrt.engine.backends import numpy_ops

# (x shape NHWC, mode, kernel, strides, pads, ceil_mode, count_include_pad, dtype, pad_value)
CASES = [
    ((2, 7, 7, 3), "max", [3, 3], [2, 2], [1, 1, 1, 1], 0, 0, "float32", 0.0),
    ((2, 7, 7, 3), "max", [3, 3], [2, 2], [1, 1, 1, 1], 0, 0, "float32", None),
    ((2, 8, 6, 16), "max", [3, 3], [2, 2], [1, 1, 1, 1], 0, 0, "float16", 0.0),  # vectors
    ((1, 6, 9, 8), "max", [3, 2], [2, 2], [0, 1, 2, 0], 0, 0, "float16", 0.0),  # asymmetric
    ((2, 7, 7, 5), "max", [3, 3], [2, 2], [1, 1, 1, 1], 0, 0, "int8", 0.0),
    ((2, 7, 7, 5), "max", [3, 3], [2, 2], [1, 1, 0, 0], 1, 0, "float32", 0.0),  # ceil mode
    ((2, 7, 7, 3), "avg", [3, 3], [2, 2], [1, 1, 1, 1], 0, 1, "float32", None),
    ((2, 7, 7, 3), "avg", [3, 3], [2, 2], [1, 1, 1, 1], 0, 0, "float32", None),
]


def _out_sp(xs, kernel, strides, pads, ceil):
    nsp = len(kernel)
    out = []
    for i in range(nsp):
        span = xs[1 + i] + pads[i] + pads[nsp + i] - kernel[i]
        out.append((-(-span // strides[i]) if ceil else span // strides[i]) + 1)
    return out


def _sources():
    out = []
    for xs, mode, k, s, pads, ceil, cip, dt, pv in CASES:
        osp = _out_sp(xs, k, s, pads, ceil)
        ys = (xs[0], *osp, xs[-1])
        src = M.PoolSource(xs, ys, mode, k, s, [1] * len(k), pads, cip, dt, dt, None, pv)
        out.append((src, xs, ys, osp))
    return out


def _input(xs, dt, rng):
    if dt == "int8":
        return rng.integers(-128, 128, xs).astype(np.int8)
    x = rng.standard_normal(xs).astype(dt)
    x[0, 0, :2, :] = np.nan  # a corner window: NaN and pads only
    x[0, 0, :, 0] = -5.0     # a row of negatives at the top edge: the pads' 0 wins
    return x


@pytest.mark.skipif(_host_compiler() is None, reason="no host C++ compiler")
def test_pool_kernel_matches_numpy_on_the_host(tmp_path):
    srcs = _sources()
    so = _host_library(HOST_SHIMS + C.MATH_HELPERS + "\n".join(
        _rename(s.source, k) for k, (s, *_) in enumerate(srcs)), tmp_path, "pool")
    rng = np.random.default_rng(0)
    assert srcs[2][0].vec == 8, "the float16 case should take the 16-byte vector path"
    for k, (src, xs, ys, osp) in enumerate(srcs):
        _, mode, kern, s, pads, ceil, cip, dt, pv = CASES[k]
        x = _input(xs, dt, rng)
        want = numpy_ops.pool(x, mode, kern, s, [1] * len(kern), pads, ceil, cip, osp, dt,
                              None, pv)
        out = np.zeros(ys, dt)
        fn = getattr(so, f"pool_{k}")
        fn.restype = None
        args = [x.view(np.uint16) if dt == "float16" else x,
                out.view(np.uint16) if dt == "float16" else out]
        fn(*[ctypes.c_void_p(np.ascontiguousarray(v).ctypes.data) for v in args],
           ctypes.c_longlong(src.work))
        if mode == "max" and dt != "int8":
            # both skip NaN; an all-NaN window without pads is the floor: -inf on the GPU,
            # float's lowest in the reference (TF's CPU kernel): compare those as equal
            lo = np.finfo(dt).min
            out = np.where(out == -np.inf, lo, out)
        np.testing.assert_allclose(out.astype(np.float64), want.astype(np.float64),
                                   rtol=1e-6, atol=1e-6, err_msg=str(CASES[k]))


def test_a_zero_pad_value_is_the_pad_then_the_pool():
    """The reference itself: pad_value 0 pools exactly what an explicit zero pad before a
    pool with no pads gives, NaN windows and negative edges included."""
    rng = np.random.default_rng(1)
    x = _input((2, 7, 7, 3), "float32", rng)
    explicit = numpy_ops.pool(numpy_ops._pad_spatial(x, [1, 1, 1, 1], 0.0), "max", [3, 3],
                              [2, 2], [1, 1], [0, 0, 0, 0], 0, 0, [4, 4])
    folded = numpy_ops.pool(x, "max", [3, 3], [2, 2], [1, 1], [1, 1, 1, 1], 0, 0, [4, 4],
                            pad_value=0.0)
    unpadded = numpy_ops.pool(x, "max", [3, 3], [2, 2], [1, 1], [1, 1, 1, 1], 0, 0, [4, 4])
    np.testing.assert_array_equal(folded, explicit)
    assert folded[0, 0, 0, 0] == 0.0 and unpadded[0, 0, 0, 0] != 0.0  # the NaN corner


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not on PATH")
def test_pool_kernels_compile_with_nvcc(tmp_path):
    text = C.PRELUDE + "\n".join(_rename(s.source, k) for k, (s, *_) in enumerate(_sources()))
    nvcc_compile(text, tmp_path, "pool")


# requantizing max pools (quantization._requantize_pools): (x shape, dtype, pads, scale)
REQUANT_CASES = [
    ((2, 8, 6, 16), "float16", [1, 1, 1, 1], 0.5),   # 16-byte loads, 8-byte int8 stores
    ((2, 7, 7, 8), "float32", [1, 1, 1, 1], 0.25),   # 16-byte loads, 4-byte stores
    ((2, 7, 7, 5), "float16", [0, 1, 1, 0], 0.5),    # element by element
    ((1, 6, 6, 8), "float32", [1, 1, 1, 1], 1e-3),   # saturation both ways
]


def _requant_sources():
    out = []
    for xs, dt, pads, scale in REQUANT_CASES:
        osp = _out_sp(xs, [3, 3], [2, 2], pads, 0)
        ys = (xs[0], *osp, xs[-1])
        src = M.PoolSource(xs, ys, "max", [3, 3], [2, 2], [1, 1], pads, 0, dt, "int8",
                           out_scale=scale)
        out.append((src, xs, ys, osp))
    return out


def _requant_text(srcs) -> str:
    """The sources with the int8 helpers once (each source carries them)."""
    from tftrt.engine.backends import cuda_source_quant as S
    return "\n".join(_rename(s.source.replace(S.INT8_HELPERS, ""), k)
                     for k, (s, *_) in enumerate(srcs))


@pytest.mark.skipif(_host_compiler() is None, reason="no host C++ compiler")
def test_requantizing_pool_matches_the_readers_quantization_on_the_host(tmp_path):
    """A max pool storing int8 codes gives, per output, what its INT8 readers computed from
    the float pool's output: quantization.quantize_int8 (round half to even, +-127, NaN ->
    0) of the float max -- NaN skipped, a window of NaN / -inf only -127, ties and
    saturation included -- with the 16-byte vector loads and 8 / 4-byte stores."""
    from tests.engine.test_quant_codegen import QUANT_SHIMS
    from tftrt.engine import quantization as Q
    from tftrt.engine.backends import cuda_source_quant as S
    srcs = _requant_sources()
    assert [s.vec for s, *_ in srcs] == [8, 4, 1, 4]
    so = _host_library(HOST_SHIMS + C.MATH_HELPERS + QUANT_SHIMS + S.INT8_HELPERS +
                       _requant_text(srcs), tmp_path, "qpool")
    rng = np.random.default_rng(2)
    for k, (src, xs, ys, osp) in enumerate(srcs):
        _, dt, pads, scale = REQUANT_CASES[k]
        x = _input(xs, dt, rng)
        flat = x.reshape(-1)
        ties = np.array([(j + 0.5) * scale for j in range(-6, 6)], np.float32)
        flat[-ties.size:] = ties.astype(dt)  # exact halves after * (1 / scale)
        x[-1, 2, 3, :] = -np.inf
        want = Q.quantize_int8(numpy_ops.pool(x, "max", [3, 3], [2, 2], [1, 1], pads, 0, 0,
                                              osp, dt), Q.inv_scale(scale))
        out = np.full(ys, 99, np.int8)
        fn = getattr(so, f"pool_{k}")
        fn.restype = None
        args = [x.view(np.uint16) if dt == "float16" else x, out]
        fn(*[ctypes.c_void_p(np.ascontiguousarray(v).ctypes.data) for v in args],
           ctypes.c_longlong(src.work))
        np.testing.assert_array_equal(out, want, err_msg=str(REQUANT_CASES[k]))
        if scale == 1e-3:  # the saturation case saturates both ways
            assert (want == -127).any() and (want == 127).any()


def test_a_requantizing_pool_is_a_float_max_pool_to_int8():
    for mode, dt, out in (("avg", "float16", "int8"), ("max", "int8", "int8"),
                          ("max", "float16", "float16")):
        with pytest.raises(ValueError, match="requantizing pool"):
            M.PoolSource((1, 4, 4, 8), (1, 2, 2, 8), mode, [2, 2], [2, 2], [1, 1],
                         [0, 0, 0, 0], 0, dt, out, out_scale=0.5)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not on PATH")
def test_requantizing_pool_kernels_compile_with_nvcc(tmp_path):
    from tftrt.engine.backends import cuda_source_quant as S
    text = C.PRELUDE + S.INT8_HELPERS + _requant_text(_requant_sources())
    nvcc_compile(text, tmp_path, "qpool")


@pytest.mark.skipif(_host_compiler() is None, reason="no host C++ compiler")
def test_int8_max_pool_of_codes_with_a_nan_floor_on_the_host(tmp_path):
    """An int8 max pool of codes (a stem that stores them, quantization.NAN_CODE -128 for
    NaN): 16 codes a 16-byte load where C allows, else one by one; the result raised to
    ``code_floor`` -127 (a window of NaN only), as numpy's pool then the floor. With a folded
    zero pad's code as ``pad_value`` (ResNet50's pool1_pad) the pads hold that code, 16 a
    load too: a window of NaN and pad cells is the pad's code."""
    cases = [((2, 8, 6, 32), [1, 1, 1, 1], None), ((1, 7, 7, 5), [0, 1, 1, 0], None),
             ((2, 8, 6, 32), [1, 1, 1, 1], 0.0), ((1, 7, 7, 5), [0, 1, 1, 0], -3.0)]
    srcs = []
    for xs, pads, pv in cases:
        osp = _out_sp(xs, [3, 3], [2, 2], pads, 0)
        srcs.append((M.PoolSource(xs, (xs[0], *osp, xs[-1]), "max", [3, 3], [2, 2], [1, 1],
                                  pads, 0, "int8", "int8", pad_value=pv, code_floor=-127),
                     xs, osp))
    assert [s.vec for s, *_ in srcs] == [16, 1, 16, 1]
    so = _host_library(HOST_SHIMS + C.MATH_HELPERS + "\n".join(
        _rename(s.source, k) for k, (s, *_) in enumerate(srcs)), tmp_path, "cpool")
    rng = np.random.default_rng(3)
    for k, ((src, xs, osp), (_, pads, pv)) in enumerate(zip(srcs, cases)):
        x = rng.integers(-127, 128, xs).astype(np.int8)
        x[0, :3, :3, :] = -128  # a NaN corner: the first window holds NaN only
        x[-1, 4, 4, :2] = -128
        want = np.maximum(numpy_ops.pool(x, "max", [3, 3], [2, 2], [1, 1], pads, 0, 0, osp,
                                         "int8", pad_value=pv), -127).astype(np.int8)
        out = np.zeros((xs[0], *osp, xs[-1]), np.int8)
        fn = getattr(so, f"pool_{k}")
        fn.restype = None
        fn(*[ctypes.c_void_p(np.ascontiguousarray(v).ctypes.data) for v in (x, out)],
           ctypes.c_longlong(src.work))
        np.testing.assert_array_equal(out, want)
        # the NaN corner's first window: -127 with no pad value, else the pad's code
        assert (want[0, 0, 0] == (-127 if pv is None or not (pads[0] or pads[1]) else pv)).all()
    with pytest.raises(ValueError, match="code floor"):
        M.PoolSource((1, 4, 4, 8), (1, 2, 2, 8), "max", [2, 2], [2, 2], [1, 1], [0, 0, 0, 0], 0,
                     "float16", "float16", code_floor=-127)
