"""The GPU backend's CUDA source generator (backends/cuda_source), checked without a GPU.

Every pointwise op of the IR (``network.POINTWISE_OPS``) and every epilogue activation
(``network.ACTIVATIONS``) lowers to CUDA C; with nvcc on PATH the generated kernels compile
for the device; with a host C++ compiler they are built for the CPU (small shims for the CUDA
built-ins and the half conversions), run through ctypes, and must compute what the numpy
reference backend computes: both kernel variants (one element per thread, 16-byte vectors),
broadcast operands, float16 storage, integer and bool steps, NaN and infinities.
"""

import ctypes
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

from tftrt.engine.backends import cuda_source as C
from tftrt.engine.backends import cuda_source_move as M
from tftrt.engine.backends.numpy_ops import apply_activation, run_program
from tftrt.engine.network import ACTIVATIONS, COMPARISONS, LOGICAL, POINTWISE_OPS
from tftrt.engine.shapes import program_dtypes

# Params of the ops that take some (network.POINTWISE_OPS' doc); an op added to the IR with
# params of its own fails test_every_op_has_a_case until it gets them here.
PARAMS = {"leaky_relu": {"alpha": 0.1}, "elu": {"alpha": 0.7},
          "selu": {"alpha": 1.6732632423543772, "gamma": 1.0507009873554805},
          "hard_sigmoid": {"alpha": 1 / 6, "beta": 0.5}, "mod": {"fmod": 0},
          "cast": {"to": "int32"}}
# Domains where numpy and C agree on a finite value (log of a negative is NaN in both, but the
# test then compares NaNs only); None: the generic sweep with NaN and infinities.
DOMAIN = {"log": (0.05, 6), "sqrt": (0, 6), "asin": (-0.99, 0.99), "acos": (-0.99, 0.99),
          "atanh": (-0.99, 0.99), "acosh": (1, 6), "pow": (0.25, 3), "reciprocal": (0.25, 4),
          "mod": (0.5, 5), "div": (0.5, 5),
          "cast": (-100, 100)}  # NaN / inf to int is undefined (x86 and the GPU differ)
BOOL_OPS = set(LOGICAL) - {"isnan", "isinf"}
INT_OPS = {"identity", "neg", "abs", "relu", "sign", "add", "sub", "mul", "max", "min", "mod",
           "pow", "div", "cast", "where", "clip", "prelu"} | set(COMPARISONS)
SHAPE = (4, 18)  # 72 elements: every vector width divides it


def _values(op, dtype, seed):
    rng = np.random.default_rng(seed)
    n = int(np.prod(SHAPE))
    if dtype == "bool":
        return rng.integers(0, 2, SHAPE).astype(bool)
    if np.dtype(dtype).kind in "iu":
        v = rng.integers(-9, 10, SHAPE)
        if op in ("div", "mod", "pow"):
            v = np.where(v == 0, 3, np.abs(v) if op == "pow" else v)
        return v.astype(dtype)
    lo, hi = DOMAIN.get(op, (-5, 5))
    v = np.linspace(lo, hi, n) if seed == 0 else rng.uniform(lo, hi, n)
    if op not in DOMAIN:
        v[:6] = [0.0, -0.0, np.nan, np.inf, -np.inf, 40.0]
        v[6:9] = [-40.0, 1e-7, -1e-7]
        rng.shuffle(v)
    return v.reshape(SHAPE).astype(dtype)


def _case(op, dtype, layout="full"):
    """(program, inputs, output dtype) of one op on ``dtype`` operands."""
    arity = POINTWISE_OPS[op]
    params = dict(PARAMS.get(op, {}))
    if op in ("where", "clip"):
        dts = ["bool", dtype, dtype] if op == "where" else [dtype] * 3
    else:
        dts = [dtype] * arity
    xs = [_values(op, d, k) for k, d in enumerate(dts)]
    if op == "clip":  # bounds below / above each other on some elements
        xs[1], xs[2] = np.minimum(xs[1], xs[2]) - 1, np.maximum(xs[1], xs[2])
    if layout == "last" and arity >= 2:
        xs[1] = xs[1][0]
    elif layout == "general" and arity >= 2:
        xs[1] = xs[1][:, :1]
    prog = [dict(params, op=op, args=[f"${k}" for k in range(arity)], dtype=None)]
    out = program_dtypes(prog, dts)[-1]
    return prog, xs, out


def _cases():
    cases = []
    for op in sorted(POINTWISE_OPS):
        if op in BOOL_OPS:
            dtypes = ["bool"]
        else:
            dtypes = ["float32", "float16", "float64"] + (["int32"] if op in INT_OPS else [])
        for dt in dtypes:
            cases.append((op, dt, "full"))
        if POINTWISE_OPS[op] >= 2 and op not in BOOL_OPS:
            cases += [(op, "float32", "last"), (op, "float32", "general")]
    return cases


def _reference(prog, xs, out_dtype):
    with np.errstate(all="ignore"):
        ins = [x.astype(np.float32) if x.dtype == np.float16 else x for x in xs]
        return np.asarray(run_program(prog, ins)).astype(out_dtype)


def test_every_op_and_activation_lowers():
    """The registry, not a list here, says what must lower: every pointwise op in the dtypes
    it takes, and every activation as an epilogue step and as a conv epilogue expression."""
    for op, dt, layout in _cases():
        prog, xs, out = _case(op, dt, layout)
        src = C.PointwiseSource(prog, [x.shape for x in xs], [x.dtype.name for x in xs],
                                SHAPE, out)
        assert 'extern "C" __global__ void pw(' in src.sources[False], (op, dt)
    for fn in ACTIVATIONS:
        e = dict(PARAMS.get(fn, {}), op="act", fn=fn)
        if fn == "clip":
            e.update(min=0.0, max=6.0)
        assert "acc" in C.activation_expr(e, "acc")
        C.PointwiseSource(C.epilogue_program([e], {}), [SHAPE], ["float32"], SHAPE, "float16")


def test_every_op_has_a_case():
    ops = {op for op, _, _ in _cases()}
    assert ops == set(POINTWISE_OPS)
    assert set(ACTIVATIONS) - {"clip"} <= set(POINTWISE_OPS)


def test_unknown_op_fails_when_the_kernel_is_made():
    with pytest.raises(NotImplementedError, match="'nosuch' has no CUDA lowering"):
        C.PointwiseSource([{"op": "nosuch", "args": ["$0"], "dtype": "float32"}], [SHAPE],
                          ["float32"], SHAPE, "float32")


def test_literals_take_the_type_they_meet():
    """A literal in a comparison has the other operand's type (0.5, not 0, next to a float
    in a bool step); a fraction met by an int stays a double."""
    src = C.PointwiseSource([{"op": "greater", "args": ["$0", 0.5], "dtype": "bool"}],
                            [SHAPE], ["float32"], SHAPE, "bool").sources[False]
    assert "(x0 > 0.5f)" in src
    src = C.PointwiseSource([{"op": "mul", "args": ["$0", 0.5], "dtype": "int32"}],
                            [SHAPE], ["int32"], SHAPE, "int32").sources[False]
    assert "(x0 * 0.5)" in src


# --- compiling and running the generated sources ---------------------------------------------
HOST_SHIMS = r"""
#include <cmath>
#include <cstring>
using namespace std;
#define __device__
#define __forceinline__ inline
#define __global__
struct uint4 { unsigned int x, y, z, w; };
struct uint2 { unsigned int x, y; };
struct float4 { float x, y, z, w; };
#define __syncthreads()
struct host_dim3 { unsigned int x; };
static host_dim3 blockIdx = {0};  // a host driver sets it to run block after block
static const host_dim3 threadIdx = {0}, blockDim = {1}, gridDim = {1};
static inline float h2f(unsigned short h) { _Float16 f; memcpy(&f, &h, 2); return (float)f; }
static inline unsigned short f2h(float f) {
  _Float16 h = (_Float16)f; unsigned short u; memcpy(&u, &h, 2); return u; }
"""


def _rename(src: str, k: int) -> str:
    """A kernel source without its prelude, its kernels renamed ``<name>_<k>``."""
    body = src.replace(C.PRELUDE, "")
    return re.sub(r'extern "C" __global__ void (\w+)\(', rf'extern "C" __global__ void \1_{k}(',
                  body)


def _kernels():
    """[(name, PointwiseSource-ish kernel description, inputs, reference)] of every case
    and of an epilogue per activation."""
    out = []
    for op, dt, layout in _cases():
        prog, xs, out_dt = _case(op, dt, layout)
        src = C.PointwiseSource(prog, [x.shape for x in xs], [x.dtype.name for x in xs],
                                SHAPE, out_dt)
        out.append((f"{op}/{dt}/{layout}", src, xs, _reference(prog, xs, out_dt)))
    # integer pow is exact and wraps on overflow (as TF's): 3**39 in int64 has more digits
    # than a double holds, 7**30 wraps in int32; negative exponents take the float path
    rng = np.random.default_rng(11)
    for dt in ("int64", "int32"):
        a = rng.integers(-9, 10, SHAPE).astype(dt)
        e = rng.integers(-2, 41, SHAPE).astype(dt)
        a.flat[:3], e.flat[:3] = (3, 7, -2), (39, 30, 63)
        prog = [{"op": "pow", "args": ["$0", "$1"], "dtype": dt}]
        src = C.PointwiseSource(prog, [SHAPE, SHAPE], [dt, dt], SHAPE, dt)
        want = _reference(prog, [a, e], dt)
        if dt == "int64":
            assert want.flat[0] == 3 ** 39  # the exact value, not float64's
        out.append((f"pow/{dt}/exact", src, [a, e], want))
    # integers wrap at every step as numpy's and TF's do (helper hunt, 2026-12-01): narrow
    # ints were computed in int and narrowed only on the store, int32 overflow was undefined
    # (the compilers folded x * x < 0 to false), an int base met a float exponent as an int
    n = int(np.prod(SHAPE))
    wraps = [
        ("uint8 x-128 to float", [0, 10, 200, 255, 127, 128], "uint8",
         [{"op": "sub", "args": ["$0", 128]}, {"op": "cast", "args": ["%0"], "to": "float32"}]),
        ("int8 x+x > 0", [100, -100, 127, -128, 1, 0], "int8",
         [{"op": "add", "args": ["$0", "$0"]}, {"op": "greater", "args": ["%0", 0]}]),
        ("int16 x+x to int32", [30000, -30000, 1, 32767, -32768, 0], "int16",
         [{"op": "add", "args": ["$0", "$0"]}, {"op": "cast", "args": ["%0"], "to": "int32"}]),
        ("uint8 -x to int32", [10, 0, 255, 1, 128, 200], "uint8",
         [{"op": "neg", "args": ["$0"]}, {"op": "cast", "args": ["%0"], "to": "int32"}]),
        ("int32 x*x < 0", [46341, 65536, -65536, 3, 2 ** 31 - 1, -2 ** 31], "int32",
         [{"op": "mul", "args": ["$0", "$0"]}, {"op": "less", "args": ["%0", 0]}]),
        ("int32 x+1, -x, |x|", [2 ** 31 - 1, -2 ** 31, 5, -7, 0, 1], "int32",
         [{"op": "add", "args": ["$0", 1]}, {"op": "neg", "args": ["$0"]},
          {"op": "abs", "args": ["$0"]}, {"op": "sub", "args": ["%0", "%1"]},
          {"op": "add", "args": ["%3", "%2"]}]),
        ("int64 x*3 - x", [2 ** 62, -2 ** 62, 2 ** 63 - 1, 1, -1, 0], "int64",
         [{"op": "mul", "args": ["$0", 3]}, {"op": "sub", "args": ["%0", "$0"]}]),
        ("int32 x ** 0.5", [4, 9, 16, 10, 0, 1], "int32",
         [{"op": "pow", "args": ["$0", 0.5]}]),
        ("int32 2.5 ** x", [4, 3, 0, 1, 2, 5], "int32",
         [{"op": "pow", "args": [2.5, "$0"]}]),
        # a whole float (a float32 constant inlined as 2.0) is spelled 2 but is still a float:
        # numpy's float64 power, not the exact integer one (94906267**2 differs past 2**53)
        ("int64 x ** 2.0", [94906267, 3, -5, 0, 7, 1], "int64",
         [{"op": "pow", "args": ["$0", 2.0]}]),
        ("int32 prelu", [-2 ** 31, -5, 7, 0, -1, 2 ** 30], "int32",
         [{"op": "prelu", "args": ["$0", 3]}]),
    ]
    for what, vals, dt, prog in wraps:
        x = np.resize(np.array(vals, dtype=np.int64), n).astype(dt).reshape(SHAPE)
        out_dt = program_dtypes(prog, [dt])[-1]
        src = C.PointwiseSource(prog, [SHAPE], [dt], SHAPE, out_dt)
        out.append((f"{what}/{dt}/wrap", src, [x], _reference(prog, [x], out_dt)))
    # a float cast to int8 / uint8 saturates as TF's CPU kernel and the numpy backend do
    # (helper hunt, 2026-12-05: a C cast of an out-of-range float is undefined; nvcc and g++
    # wrapped), NaN to the type's minimum (past int32 the two follow their TF: the CPU's
    # INT_MIN gives the minimum, the GPU saturates)
    xf = np.resize(np.array([-100.0, 300.0, np.nan, 255.9, -0.9, 127.5, -128.7, 7e4],
                            np.float32), n).reshape(SHAPE)
    for to in ("uint8", "int8"):
        prog = [{"op": "cast", "args": ["$0"], "to": to}]
        src = C.PointwiseSource(prog, [SHAPE], ["float32"], SHAPE, to)
        want = _reference(prog, [xf], to)
        assert want.flat[1] == (255 if to == "uint8" else 127)
        out.append((f"float to {to} saturates", src, [xf], want))
    # a float16 program rounds each step to half precision, as TF does: erf(2.9) is 1.0 in
    # float16 (0.99996 kept in float32), and the floor after it tells the two apart
    xh = np.linspace(2.9, 3.5, int(np.prod(SHAPE))).astype(np.float16).reshape(SHAPE)
    prog = [{"op": "erf", "args": ["$0"], "dtype": "float16"},
            {"op": "floor", "args": ["%0"], "dtype": "float16"}]
    src = C.PointwiseSource(prog, [SHAPE], ["float16"], SHAPE, "float16")
    want = _reference(prog, [xh], "float16")
    assert want.min() == 1  # the rounding is what this case is about
    out.append(("floor(erf) float16 steps", src, [xh], want))
    rng = np.random.default_rng(7)
    y = np.linspace(-6, 6, int(np.prod(SHAPE)), dtype=np.float32).reshape(SHAPE)
    bias = rng.standard_normal(SHAPE[-1]).astype(np.float32)
    for fn in ACTIVATIONS:
        e = dict(PARAMS.get(fn, {}), op="act", fn=fn)
        if fn == "clip":
            e.update(min=0.0, max=6.0)
        for approx in (("none", "tanh") if fn == "gelu" else (None,)):
            if approx:
                e["approximate"] = approx
            epi = [{"op": "bias", "input": 2}, dict(e)]
            prog = C.epilogue_program(epi, {2: 1})
            src = C.PointwiseSource(prog, [SHAPE, bias.shape], ["float32", "float32"], SHAPE,
                                    "float16")
            want = apply_activation(y + bias, e).astype(np.float16)
            out.append((f"epilogue bias+{fn}{'/' + approx if approx else ''}", src, [y, bias],
                        want))
    return out


@pytest.fixture(scope="module")
def kernels():
    return _kernels()


def _source_file(kernels, host: bool) -> str:
    parts = [HOST_SHIMS + C.MATH_HELPERS if host else C.PRELUDE]
    for k, (_, src, _, _) in enumerate(kernels):
        for vec, text in src.sources.items():
            parts.append(_rename(text, k))
    return "\n".join(parts)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not on PATH")
def test_generated_kernels_compile_with_nvcc(kernels, tmp_path):
    """Every kernel (both variants) of every op and epilogue is valid CUDA C++ for nvcc, plus
    depthwise convolutions with each activation fused and the NMS kernels."""
    text = _source_file(kernels, host=False)
    for k, fn in enumerate(ACTIVATIONS):
        e = dict(PARAMS.get(fn, {}), op="act", fn=fn)
        if fn == "clip":
            e.update(min=0.0, max=6.0)
        dw = C.DepthwiseConvSource((2, 9, 9, 8), (3, 3), (1, 1), (1, 1), (1, 1, 1, 1),
                                   (2, 9, 9, 8), 1, "float16", "float16",
                                   [{"op": "bias", "input": 2}, e], {2: ("vec", "float32")})
        text += "\n" + _rename(dw.source, 10000 + k) + "\n" + _rename(dw.vec_source, 10000 + k)
    from tftrt.engine.backends.cuda_source_nms import nms_source
    for k, (center, max_out, _, _) in enumerate(NMS_CASES):
        text += "\n" + _rename(nms_source(1000, 80, max_out, bool(center)), 20000 + k)
    nvcc_compile(text, tmp_path, "kernels")


def nvcc_compile(text: str, tmp_path, name: str, *flags: str):
    """Compiles CUDA source ``text`` with nvcc for sm_90 (an H200), ``flags`` added (e.g.
    ``-Xptxas -v``, whose report is in the result's stderr); fails the test with nvcc's
    messages when it does not compile."""
    cu = tmp_path / f"{name}.cu"
    cu.write_text(text)
    r = subprocess.run(["nvcc", "-c", "-x", "cu", "-std=c++14", "-arch=sm_90", *flags, "-o",
                        str(tmp_path / f"{name}.o"), str(cu)], capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]
    return r


def _host_library(text: str, tmp_path, name: str):
    cpp = tmp_path / f"{name}.cpp"
    cpp.write_text(text)
    lib = tmp_path / f"{name}.so"
    r = subprocess.run([_host_compiler(), "-O1", "-std=c++17", "-shared", "-fPIC",
                        "-ffp-contract=off", "-Wno-unknown-pragmas", "-o", str(lib), str(cpp)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    return ctypes.CDLL(str(lib))


def _host_compiler():
    for cc in (os.environ.get("CXX"), "g++", "clang++"):
        if cc and shutil.which(cc):
            return cc
    return None


@pytest.mark.skipif(_host_compiler() is None, reason="no host C++ compiler")
def test_generated_kernels_match_numpy_on_the_host(kernels, tmp_path):
    """The generated sources, built for the CPU, against numpy_ops.run_program: float32 / 64
    to a few ulps, float16 to one half ulp of rounding, ints and bools exactly, NaN where
    numpy has NaN."""
    so = _host_library(_source_file(kernels, host=True), tmp_path, "kernels")
    bad = []
    for k, (what, src, xs, want) in enumerate(kernels):
        ins = [np.ascontiguousarray(xs[i]).view(np.uint16) if xs[i].dtype == np.float16 else
               np.ascontiguousarray(xs[i]) for i in src.used]
        for vec in src.sources:
            out = np.full(SHAPE, 0, want.dtype)
            fn = getattr(so, f"{src.kernel_name(vec)}_{k}")
            fn.restype = None
            fn(*[ctypes.c_void_p(a.ctypes.data) for a in ins + [out]],
               ctypes.c_longlong(src.work(vec)))
            err = _mismatch(out, want, what.split("/")[0])
            if err:
                bad.append(f"{what} ({'vector' if vec else 'scalar'} kernel): {err}")
    assert not bad, "\n".join(bad)


# numpy_ops.erf (the reference's, without scipy) is good to 1.2e-7 relative: float64 results
# that go through it are compared at that accuracy.
ERF_OPS = ("erf", "gelu")


def _mismatch(got, want, op):
    if want.dtype.kind in "biu":
        diff = np.flatnonzero(got != want)
    else:
        g, w = got.astype(np.float64).ravel(), want.astype(np.float64).ravel()
        tol = {np.float16: (2e-3, 1e-3), np.float32: (1e-5, 1e-6),
               np.float64: (3e-7, 1e-9) if op in ERF_OPS else (1e-12, 1e-13)}[want.dtype.type]
        with np.errstate(invalid="ignore"):
            same = (np.isnan(g) & np.isnan(w)) | (g == w) | \
                (np.abs(g - w) <= tol[1] + tol[0] * np.abs(w))
        diff = np.flatnonzero(~same)
    if not len(diff):
        return None
    i = diff[:3]
    return f"{len(diff)} of {got.size} differ, e.g. at {list(i)}: got " \
           f"{got.ravel()[i].tolist()}, want {want.ravel()[i].tolist()}"


# --- non-max suppression -----------------------------------------------------------------------
NMS_CASES = [  # (center_point_box, max_out, iou_thr, score_thr)
    (0, 5, 0.5, 0.3), (0, 100, 0.3, None), (1, 7, 0.6, 0.1), (1, 100, 0.0, 0.5)]


def _nms_inputs(center, seed=0, b=2, n=40, c=3):
    rng = np.random.default_rng(seed)
    if center:
        boxes = np.concatenate([rng.uniform(0, 1, (b, n, 2)), rng.uniform(0.05, 0.5, (b, n, 2))],
                               -1)
    else:  # either corner first, as ONNX allows
        boxes = rng.uniform(0, 1, (b, n, 4))
    scores = np.round(rng.uniform(0, 1, (b, c, n)), 1)  # ties: the index order decides
    return boxes.astype(np.float32), scores.astype(np.float32)


def _nms_order(scores, score_thr):
    """What nms_select computes on the device before the kernel (numpy's stable argsort)."""
    b, c, n = scores.shape
    s = scores.reshape(b * c, n)
    cand = s > np.float32(score_thr) if score_thr is not None else np.ones(s.shape, bool)
    order = np.argsort(np.where(cand, -s, np.float32(np.inf)), axis=-1, kind="stable")
    return order.astype(np.int32), cand.sum(-1).astype(np.int32)


@pytest.mark.skipif(_host_compiler() is None, reason="no host C++ compiler")
def test_nms_kernel_keeps_what_numpy_keeps(tmp_path):
    """The NMS kernel's greedy pass (cuda_source_nms), built for the host, selects exactly the
    boxes numpy_ops.nms selects, in its order: corner and center boxes, a score threshold
    or none, max_out cutting a row short or not, IoU threshold 0."""
    from tftrt.engine.backends.cuda_source_nms import nms_source
    from tftrt.engine.backends.numpy_ops import nms
    parts, b, c, n = [HOST_SHIMS + C.MATH_HELPERS], 2, 3, 40
    for k, (center, max_out, _, _) in enumerate(NMS_CASES):
        parts.append(_rename(nms_source(n, c, min(max_out, n), bool(center)), k))
        parts.append(f"""
extern "C" void drive_{k}(const float* bx, const int* order, const int* ncand, float thr,
                          unsigned char* removed, long long* keep, int* count, int rows) {{
  for (int r = 0; r < rows; ++r) {{ blockIdx.x = r; nms_{k}(bx, order, ncand, thr, removed,
                                                           keep, count); }}
}}""")
    so = _host_library("\n".join(parts), tmp_path, "nms")
    for k, (center, max_out, iou, score_thr) in enumerate(NMS_CASES):
        boxes, scores = _nms_inputs(center, seed=k)
        order, ncand = _nms_order(scores, score_thr)
        m = min(max_out, n)
        removed = np.zeros((b * c, n), np.uint8)
        keep = np.full((b * c, m), -1, np.int64)
        count = np.zeros(b * c, np.int32)
        args = [boxes, order, ncand]
        fn = getattr(so, f"drive_{k}")
        fn.restype = None
        fn(*[ctypes.c_void_p(a.ctypes.data) for a in args], ctypes.c_float(iou),
           *[ctypes.c_void_p(a.ctypes.data) for a in (removed, keep, count)],
           ctypes.c_int(b * c))
        rows, slot = np.nonzero(np.arange(m)[None, :] < count[:, None])
        got = np.stack([rows // c, rows % c, keep[rows, slot]], axis=1)
        want = nms(boxes, scores, np.array([max_out]), np.array([iou], np.float32),
                   None if score_thr is None else np.array([score_thr], np.float32), center)
        assert len(want) > b * c, "the case should keep several boxes per row"
        np.testing.assert_array_equal(got, want, err_msg=f"case {k}")


CONCAT_CASES = [  # (input shapes, axis, dtype): the vector width each gets is checked too
    ([(2, 3, 3, 24), (2, 3, 3, 8)], -1, "float16", 16),     # DenseNet-like channel concat
    ([(2, 3, 3, 24), (2, 3, 3, 8), (2, 3, 3, 16)], 3, "float32", 16),
    ([(2, 5, 3), (2, 5, 1)], -1, "float32", 4),            # odd rows: one element a thread
    ([(2, 5, 3), (2, 5, 1)], -1, "float16", 2),
    ([(4, 6), (1, 6), (0, 6)], 0, "int64", 16),              # axis 0, an empty input
    ([(3, 2, 4), (3, 1, 4)], 1, "bool", 4),
    ([(7,), (9,)], 0, "int32", 4),
]


@pytest.mark.skipif(_host_compiler() is None, reason="no host C++ compiler")
def test_concat_kernel_matches_numpy_on_the_host(tmp_path):
    """The one-pass concat kernel (cuda_source_move.ConcatSource), built for the host, gives
    np.concatenate byte for byte, with the vector width its rows allow."""
    parts = [HOST_SHIMS + C.MATH_HELPERS]
    srcs = []
    for k, (shapes, axis, dt, vb) in enumerate(CONCAT_CASES):
        src = M.ConcatSource(shapes, axis, dt)
        assert src.vec_bytes == vb, (shapes, dt)
        srcs.append(src)
        parts.append(_rename(src.source, k))
    so = _host_library("\n".join(parts), tmp_path, "concat")
    rng = np.random.default_rng(0)
    for k, ((shapes, axis, dt, _), src) in enumerate(zip(CONCAT_CASES, srcs)):
        xs = [(rng.standard_normal(s) * 100).astype(dt) for s in shapes]
        want = np.concatenate(xs, axis=axis)
        out = np.zeros_like(want)
        fn = getattr(so, f"concat_{k}")
        fn.restype = None
        fn(*[ctypes.c_void_p(np.ascontiguousarray(a).ctypes.data) for a in xs + [out]],
           ctypes.c_longlong(src.work))
        np.testing.assert_array_equal(out, want, err_msg=str((shapes, axis, dt)))


S2D_CASES = [  # (x shape, block, pads [top, left, bottom, right], channels, x dtype, y dtype)
    ((2, 10, 10, 3), 2, (3, 3, 3, 3), 4, "float32", "float16"),   # ResNet's 7x7 stem, shrunk
    ((2, 10, 12, 3), 2, (0, 0, 2, 0), 4, "float16", "float16"),   # uneven pads, W != H
    ((1, 6, 6, 4), 2, (1, 1, 1, 1), 4, "float32", "float32"),
    ((1, 6, 6, 2), 3, (0, 0, 0, 0), 5, "float16", "float32"),     # block 3, widened to 5
]


@pytest.mark.skipif(_host_compiler() is None, reason="no host C++ compiler")
def test_space_to_depth_kernel_matches_numpy_on_the_host(tmp_path):
    """The padded, widening, converting space-to-depth kernel (cuda_source_move.
    SpaceToDepthSource; a stem's float32 image to its float16 rearranged input) built for the
    host writes numpy_ops.space_to_depth's values rounded to y's dtype, byte for byte, on
    images of two batch sizes from one source."""
    from tftrt.engine.backends import numpy_ops as ops
    parts, srcs = [HOST_SHIMS + C.MATH_HELPERS], []
    for k, (shape, b, pads, ch, xd, yd) in enumerate(S2D_CASES):
        srcs.append(M.SpaceToDepthSource(shape, b, pads, ch, xd, yd))
        parts.append(_rename(srcs[-1].source, k))
    so = _host_library("\n".join(parts), tmp_path, "s2d")
    rng = np.random.default_rng(0)
    for k, ((shape, b, pads, ch, xd, yd), src) in enumerate(zip(S2D_CASES, srcs)):
        for n in (shape[0], 3):
            x = (rng.standard_normal((n,) + shape[1:]) * 10).astype(xd)
            want = ops.space_to_depth(x, b, list(pads), ch).astype(yd)
            assert want.shape[1:] == src.out_image, (want.shape, src.out_image)
            out = np.full_like(want, 7)  # every element must be written
            fn = getattr(so, f"space_to_depth_{k}")
            fn.restype = None
            fn(ctypes.c_void_p(x.ctypes.data), ctypes.c_void_p(out.ctypes.data),
               ctypes.c_longlong(n * src.per_image))
            np.testing.assert_array_equal(out, want, err_msg=str(S2D_CASES[k]))
    with pytest.raises(ValueError, match="multiple of block 2"):
        M.SpaceToDepthSource((1, 5, 5, 3), 2, (0, 0, 0, 0), 4, "float32", "float16")


CHANNEL_CASES = [  # (data dtype, per-channel operand dtype, channels): BN-style x * s + b, relu
    ("float16", "float16", 32), ("float16", "float32", 16), ("float32", "float16", 8),
    ("float32", "float32", 12), ("float16", "float16", 12),  # 12: no vector per-channel load
]


@pytest.mark.skipif(_host_compiler() is None, reason="no host C++ compiler")
def test_per_channel_operands_load_as_vectors_on_the_host(tmp_path):
    """relu(x * s + b) with per-channel s, b: when the vector width divides the channels, the
    vector kernel loads s and b as vectors at the thread's first channel (PointwiseSource's
    ``vec_last``); both kernels give numpy's answer."""
    prog = [{"op": "mul", "args": ["$0", "$1"], "dtype": "float32"},
            {"op": "add", "args": ["%0", "$2"], "dtype": "float32"},
            {"op": "relu", "args": ["%1"], "dtype": "float32"}]
    parts, srcs, rng = [HOST_SHIMS + C.MATH_HELPERS], [], np.random.default_rng(3)
    for k, (dt, pdt, ch) in enumerate(CHANNEL_CASES):
        shape = (4, 6, ch)
        src = C.PointwiseSource(prog, [shape, (ch,), (ch,)], [dt, pdt, pdt], shape, dt)
        assert src.vectorizable
        assert src.vec_last == ({1, 2} if ch % src.vec == 0 else set()), (dt, pdt, ch)
        srcs.append((src, shape))
        for text in src.sources.values():
            parts.append(_rename(text, k))
    so = _host_library("\n".join(parts), tmp_path, "channels")
    for k, ((dt, pdt, ch), (src, shape)) in enumerate(zip(CHANNEL_CASES, srcs)):
        x = rng.standard_normal(shape).astype(dt)
        s, b = rng.uniform(0.5, 1.5, ch).astype(pdt), rng.normal(0, 0.5, ch).astype(pdt)
        want = np.maximum(x.astype(np.float32) * s.astype(np.float32) + b.astype(np.float32),
                          0).astype(dt)
        ins = [a.view(np.uint16) if a.dtype == np.float16 else a for a in (x, s, b)]
        for vec in src.sources:
            out = np.zeros(shape, dt)
            fn = getattr(so, f"{src.kernel_name(vec)}_{k}")
            fn.restype = None
            fn(*[ctypes.c_void_p(a.ctypes.data) for a in ins + [out.view(np.uint16)
                                                                if dt == "float16" else out]],
               ctypes.c_longlong(src.work(vec)))
            np.testing.assert_array_equal(out, want, err_msg=f"{dt}/{pdt}/{ch} vec={vec}")


DW_CASES = [  # (x shape, kernel, strides, dilations, pad, dtype, epilogue)
    ((2, 9, 9, 16), (3, 3), (1, 1), (1, 1), 1, "float16", "bias+relu"),
    ((1, 11, 10, 8), (7, 7), (1, 1), (1, 1), 3, "float16", "bias"),      # ConvNeXt's 7x7
    ((2, 12, 12, 8), (5, 5), (2, 2), (1, 1), 2, "float32", "bias+relu"),  # MBConv's 5x5 s2
    ((1, 10, 10, 4), (3, 3), (1, 1), (2, 2), 2, "float32", "residual"),   # dilated
    ((1, 6, 7, 12), (3, 3), (1, 1), (1, 1), 1, "float16", "none"),       # 12 % 8: scalar only
]


def _dw_reference(x, w, strides, dil, pad, ho, wo):
    """Depthwise conv NHWC in float64: w [kh, kw, C]."""
    xp = np.pad(x.astype(np.float64), [(0, 0), (pad, pad), (pad, pad), (0, 0)])
    kh, kw, _ = w.shape
    y = np.zeros((x.shape[0], ho, wo, x.shape[3]))
    for a in range(kh):
        for b in range(kw):
            sl = xp[:, a * dil[0]: a * dil[0] + (ho - 1) * strides[0] + 1: strides[0],
                    b * dil[1]: b * dil[1] + (wo - 1) * strides[1] + 1: strides[1], :]
            y += sl * w[a, b]
    return y


@pytest.mark.skipif(_host_compiler() is None, reason="no host C++ compiler")
def test_depthwise_kernels_match_numpy_on_the_host(tmp_path):
    """Both depthwise kernels (one channel per thread; V channels per thread with 16-byte
    loads, DepthwiseConvSource.vec_source), built for the host, against a float64 reference:
    3x3, ConvNeXt's 7x7, a 5x5 stride 2, dilation 2, with bias / ReLU / residual epilogues."""
    from tftrt.engine.backends.numpy_ops import apply_activation
    parts, built, rng = [HOST_SHIMS + C.MATH_HELPERS], [], np.random.default_rng(5)
    for k, (xs, kk, st, dl, pad, dt, epi) in enumerate(DW_CASES):
        n, h, w, c = xs
        ho = (h + 2 * pad - dl[0] * (kk[0] - 1) - 1) // st[0] + 1
        wo = (w + 2 * pad - dl[1] * (kk[1] - 1) - 1) // st[1] + 1
        ys = (n, ho, wo, c)
        epilogue, modes = [], {}
        if epi.startswith("bias"):
            epilogue.append({"op": "bias", "input": 2})
            modes[2] = ("vec", "float32")
        if epi == "residual":
            epilogue.append({"op": "add", "input": 3})
            modes[3] = ("full", dt)
        if epi.endswith("relu"):
            epilogue.append({"op": "act", "fn": "relu"})
        src = C.DepthwiseConvSource(xs, kk, st, dl, (pad, pad, pad, pad), ys, 1, dt, dt,
                                    epilogue, modes)
        assert (src.vec_source is not None) == (c % (16 // np.dtype(dt).itemsize) == 0)
        built.append((src, ys, epilogue))
        parts.append(_rename(src.source, k))
        if src.vec_source:
            parts.append(_rename(src.vec_source, k))
    so = _host_library("\n".join(parts), tmp_path, "dwconv")
    for k, ((xs, kk, st, dl, pad, dt, epi), (src, ys, epilogue)) in enumerate(
            zip(DW_CASES, built)):
        x = rng.standard_normal(xs).astype(dt)
        w = (rng.standard_normal(kk + (xs[3],)) * 0.3).astype(np.float32)
        bias = rng.standard_normal(xs[3]).astype(np.float32)
        res = rng.standard_normal(ys).astype(dt)
        want = _dw_reference(x.astype(np.float32), w, st, dl, pad, ys[1], ys[2])
        if "bias" in epi:
            want = want + bias
        if epi == "residual":
            want = want + res.astype(np.float64)
        if epi.endswith("relu"):
            want = apply_activation(want, {"fn": "relu"})
        wt = np.ascontiguousarray(w.reshape(-1, xs[3]))  # [kh*kw, K] float32
        operands = [bias if i == 2 else res for i in src.operands]
        raw = lambda a: a.view(np.uint16) if a.dtype == np.float16 else a  # noqa: E731
        for name in ["dwconv"] + (["dwconv_vec"] if src.vec_source else []):
            out = np.zeros(ys, dt)
            fn = getattr(so, f"{name}_{k}")
            fn.restype = None
            fn(*[ctypes.c_void_p(raw(a).ctypes.data) for a in [x, wt] + operands + [out]],
               ctypes.c_longlong(src.vec_work if name == "dwconv_vec" else src.work))
            tol = 2e-3 if dt == "float16" else 1e-5
            np.testing.assert_allclose(out.astype(np.float64), want, rtol=tol, atol=tol,
                                       err_msg=f"{name} case {k} {xs} {kk} {dt} {epi}")


def test_sources_do_not_depend_on_the_batch_size():
    """The grid-stride kernels take their work count as an argument (cuda_source.WORK_PARAM),
    so the engines of one profile's batch sizes compile each kernel once (CuPy caches modules
    by source): a pointwise epilogue (bias, residual, ReLU; scalar and vector kernels), a
    channel concat, a bilinear resize and a depthwise conv (scalar and vector kernels)
    generate the same source at batch 1, 8 and 128, and their work counts follow the batch."""
    from tests.engine.test_cuda_resize import _attrs
    prog = C.epilogue_program([{"op": "bias", "input": 2}, {"op": "add", "input": 3},
                               {"op": "act", "fn": "relu"}], {2: 1, 3: 2})

    def made(batch):
        y = (batch, 7, 7, 64)
        dw = C.DepthwiseConvSource((batch, 14, 14, 64), (3, 3), (2, 2), (1, 1), [1, 1, 1, 1],
                                   y, 1, "float16", "float16", [{"op": "act", "fn": "relu"}],
                                   {})
        pw = C.PointwiseSource(prog, [y, (64,), y], ["float32", "float16", "float16"], y,
                               "float16")
        cat = M.ConcatSource([(batch, 14, 14, 96), (batch, 14, 14, 32)], 3, "float16")
        rs = M.ResizeSource.plan((batch, 8, 8, 16),
                                 _attrs((batch, 8, 8, 16), (batch, 16, 16, 16), "linear",
                                        "half_pixel", None), "float16", "float16")
        return pw, cat, rs, dw

    (pw1, cat1, rs1, dw1), *rest = [made(b) for b in (1, 8, 128)]
    assert set(pw1.sources) == {False, True} and dw1.vec_source
    for b, (pw, cat, rs, dw) in zip((8, 128), rest):
        assert pw.sources == pw1.sources and cat.source == cat1.source and \
            rs.source == rs1.source and (dw.source, dw.vec_source) == \
            (dw1.source, dw1.vec_source), f"a source changed with the batch size ({b})"
        assert pw.work(False) == b * pw1.work(False) and pw.work(True) == b * pw1.work(True)
        assert cat.work == b * cat1.work and rs.work == b * rs1.work
        assert dw.work == b * dw1.work and dw.vec_work == b * dw1.vec_work
