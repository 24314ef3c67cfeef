"""Conv, matmul, normalization, pooling, reduction and softmax ops vs onnxruntime."""

import numpy as np
import pytest

from tests.engine.harness import check_node, rand
from tests.tolerances import TOLERANCES

CONV_CASES = [
    # (x shape NCHW, w shape, attrs)
    ((2, 3, 8, 8), (4, 3, 3, 3), {"pads": [1, 1, 1, 1]}),
    ((1, 3, 9, 7), (5, 3, 3, 2), {"strides": [2, 1], "pads": [0, 1, 2, 0]}),
    ((1, 4, 9, 9), (6, 2, 3, 3), {"group": 2, "dilations": [2, 2]}),
    ((2, 4, 8, 8), (8, 1, 3, 3), {"group": 4, "pads": [1, 1, 1, 1]}),           # depthwise x2
    ((2, 6, 7, 7), (6, 1, 5, 5), {"group": 6, "strides": [2, 2], "auto_pad": "SAME_UPPER"}),
    ((2, 5, 6, 6), (7, 5, 1, 1), {}),                                            # 1x1
    ((1, 5, 7, 7), (7, 5, 1, 1), {"strides": [2, 2]}),
    ((1, 3, 8, 8), (4, 3, 3, 3), {"auto_pad": "SAME_LOWER", "strides": [2, 2]}),
    ((1, 3, 8, 8), (4, 3, 2, 2), {"auto_pad": "VALID"}),
    ((2, 3, 10), (4, 3, 3), {"pads": [1, 1]}),                                   # 1-D
    ((1, 2, 5, 6, 6), (3, 2, 3, 3, 3), {"pads": [1] * 6, "strides": [1, 2, 2]}),  # 3-D
]


@pytest.mark.parametrize("xs,ws,attrs", CONV_CASES)
@pytest.mark.parametrize("bias", [False, True])
def test_conv(xs, ws, attrs, bias):
    consts = {"w": rand(*ws, seed=1)}
    if bias:
        consts["b"] = rand(ws[0], seed=2)
    check_node("Conv", {"x": rand(*xs)}, consts, **attrs)


@pytest.mark.parametrize("xs,ws,attrs", [CONV_CASES[k] for k in (0, 2, 3, 5, 9)])
def test_conv_fp16(xs, ws, attrs):
    check_node("Conv", {"x": rand(*xs)}, {"w": rand(*ws, seed=1), "b": rand(ws[0], seed=2)},
               precision="FP16", **attrs)


@pytest.mark.parametrize("op,attrs", [("MatMul", {}), ("Gemm", {"transB": 1}),
                                      ("ConvTranspose", {"strides": [2, 2]}),
                                      ("MaxPool", {"kernel_shape": [2, 2]}),
                                      ("AveragePool", {"kernel_shape": [3, 3], "pads": [1] * 4})])
def test_fp16_ops(op, attrs):
    if op in ("MatMul", "Gemm"):
        w = rand(5, 4, seed=1) if attrs.get("transB") else rand(4, 5, seed=1)
        check_node(op, {"a": rand(3, 4)}, {"w": w}, precision="FP16", **attrs)
    elif op == "ConvTranspose":
        check_node(op, {"x": rand(1, 3, 4, 4)}, {"w": rand(3, 2, 3, 3, seed=1)},
                   precision="FP16", **attrs)
    else:
        check_node(op, {"x": rand(2, 3, 6, 6)}, precision="FP16", **attrs)


CONVT_CASES = [
    ((1, 3, 5, 5), (3, 4, 3, 3), {}),
    ((2, 4, 4, 4), (4, 2, 3, 3), {"strides": [2, 2], "pads": [1, 1, 1, 1],
                                  "output_padding": [1, 1]}),
    ((1, 4, 3, 5), (4, 3, 2, 2), {"strides": [2, 2], "group": 2}),
    ((1, 2, 4, 4), (2, 3, 3, 3), {"strides": [2, 2], "output_shape": [8, 8]}),
    ((1, 2, 4, 4), (2, 3, 3, 3), {"strides": [2, 2], "auto_pad": "SAME_UPPER"}),
    ((1, 2, 4, 4), (2, 2, 3, 3), {"dilations": [2, 2]}),
    ((1, 3, 6), (3, 2, 4), {"strides": [2]}),
]


@pytest.mark.parametrize("xs,ws,attrs", CONVT_CASES)
def test_conv_transpose(xs, ws, attrs):
    cout = ws[1] * attrs.get("group", 1)
    check_node("ConvTranspose", {"x": rand(*xs)}, {"w": rand(*ws, seed=1),
                                                    "b": rand(cout, seed=2)}, **attrs)


@pytest.mark.parametrize("a,b,const_b", [((3, 4), (4, 5), True), ((2, 3, 4), (4, 5), True),
                                         ((2, 3, 4), (2, 4, 5), False), ((4,), (4, 5), True),
                                         ((3, 4), (4,), False), ((2, 1, 3, 4), (5, 4, 2), False)])
def test_matmul(a, b, const_b):
    if const_b:
        check_node("MatMul", {"a": rand(*a)}, {"b": rand(*b, seed=1)})
    else:
        check_node("MatMul", {"a": rand(*a), "b": rand(*b, seed=1)})


@pytest.mark.parametrize("attrs", [{}, {"transA": 1}, {"transB": 1, "alpha": 0.5},
                                   {"beta": 2.0}, {"transA": 1, "transB": 1, "beta": 0.0}])
@pytest.mark.parametrize("c_shape", [None, (5,), (1, 5), (3, 5), (3, 1)])
def test_gemm(attrs, c_shape):
    a = rand(4, 3) if attrs.get("transA") else rand(3, 4)
    b = rand(5, 4, seed=1) if attrs.get("transB") else rand(4, 5, seed=1)
    consts = {"b": b}
    if c_shape is not None:
        consts["c"] = rand(*c_shape, seed=2)
    check_node("Gemm", {"a": a}, consts, **attrs)


def test_gemm_runtime_c_fp16():
    check_node("Gemm", {"a": rand(3, 4), "c": rand(3, 5, seed=2)}, {"b": rand(4, 5, seed=1)},
               inputs=["a", "b", "c"], beta=0.5)
    check_node("Gemm", {"a": rand(3, 4)}, {"b": rand(4, 5, seed=1), "c": rand(5, seed=2)},
               precision="FP16")


@pytest.mark.parametrize("eq,shapes", [("ij,jk->ik", [(3, 4), (4, 5)]),
                                       ("bij,bjk->bik", [(2, 3, 4), (2, 4, 5)]),
                                       ("bhqd,bhkd->bhqk", [(1, 2, 3, 4), (1, 2, 5, 4)]),
                                       ("ii->i", [(4, 4)]), ("ij->ji", [(3, 4)]),
                                       ("...ij,...jk", [(2, 3, 4), (2, 4, 2)]),
                                       ("i,i", [(5,), (5,)])])
def test_einsum(eq, shapes):
    feeds = {f"x{k}": rand(*s, seed=k) for k, s in enumerate(shapes)}
    check_node("Einsum", feeds, equation=eq)


@pytest.mark.parametrize("shape", [(2, 3, 4, 4), (2, 3), (1, 3, 5)])
def test_batchnorm(shape):
    c = shape[1]
    consts = {"s": rand(c, seed=1), "b": rand(c, seed=2), "m": rand(c, seed=3),
              "v": rand(c, low=0.5, high=2.0, seed=4)}
    check_node("BatchNormalization", {"x": rand(*shape)}, consts, epsilon=1e-3)


def test_batchnorm_runtime_stats():
    feeds = {"x": rand(2, 3, 4, 4), "s": rand(3, seed=1), "b": rand(3, seed=2),
             "m": rand(3, seed=3), "v": rand(3, low=0.5, high=2.0, seed=4)}
    check_node("BatchNormalization", feeds)


@pytest.mark.parametrize("shape,axis", [((2, 5, 8), -1), ((2, 3, 4, 5), 2), ((3, 6), 1)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_layernorm(shape, axis, with_bias):
    norm = shape[axis % len(shape):]
    consts = {"s": rand(*norm, seed=1)}
    if with_bias:
        consts["b"] = rand(*norm, seed=2)
    check_node("LayerNormalization", {"x": rand(*shape)}, consts, axis=axis, epsilon=1e-5)


def test_layernorm_stats_outputs_and_fp16():
    check_node("LayerNormalization", {"x": rand(2, 5, 8)}, {"s": rand(8, seed=1),
                                                            "b": rand(8, seed=2)}, n_out=3)
    check_node("LayerNormalization", {"x": rand(2, 5, 8)}, {"s": rand(8, seed=1)},
               precision="FP16")


@pytest.mark.parametrize("shape", [(2, 3, 5, 5), (1, 4, 7)])
def test_instancenorm(shape):
    check_node("InstanceNormalization", {"x": rand(*shape)},
               {"s": rand(shape[1], seed=1), "b": rand(shape[1], seed=2)}, epsilon=1e-4)


POOL_CASES = [
    {"kernel_shape": [2, 2], "strides": [2, 2]},
    {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]},
    {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1},
    {"kernel_shape": [3, 2], "strides": [1, 2], "auto_pad": "SAME_UPPER"},
    {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "count_include_pad": 1},
    {"kernel_shape": [2, 2], "strides": [2, 2], "pads": [0, 0, 1, 1], "ceil_mode": 1,
     "count_include_pad": 1},
]


@pytest.mark.parametrize("op", ["MaxPool", "AveragePool"])
@pytest.mark.parametrize("attrs", POOL_CASES)
def test_pool(op, attrs):
    if op == "MaxPool":
        attrs = {k: v for k, v in attrs.items() if k != "count_include_pad"}
    check_node(op, {"x": rand(2, 3, 9, 8)}, **attrs)


def test_pool_dilated_1d_3d():
    check_node("MaxPool", {"x": rand(1, 2, 9, 9)}, kernel_shape=[2, 2], dilations=[2, 2])
    check_node("AveragePool", {"x": rand(1, 2, 10)}, kernel_shape=[3], strides=[2])
    check_node("MaxPool", {"x": rand(1, 2, 4, 6, 6)}, kernel_shape=[2, 2, 2],
               strides=[2, 2, 2])


@pytest.mark.parametrize("op", ["GlobalAveragePool", "GlobalMaxPool"])
def test_global_pool(op):
    check_node(op, {"x": rand(2, 3, 5, 4)})
    check_node(op, {"x": rand(2, 3, 5, 4)}, precision="FP16")


REDUCES = ["ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL2",
           "ReduceLogSumExp", "ReduceL1", "ReduceSumSquare"]


@pytest.mark.parametrize("op", REDUCES)
@pytest.mark.parametrize("axes,keepdims", [([1], 1), ([0, 2], 0), (None, 1), ([-1], 0)])
def test_reduce(op, axes, keepdims):
    attrs = {"keepdims": keepdims}
    if axes is not None:
        attrs["axes"] = axes
    x = rand(2, 3, 4, low=0.5, high=1.5)
    check_node(op, {"x": x}, **attrs)


@pytest.mark.parametrize("axes,keepdims,noop", [([1], 1, 0), ([0, -1], 0, 0), (None, 0, 0),
                                                (None, 1, 1)])
def test_reduce_sum(axes, keepdims, noop):
    consts = {} if axes is None else {"axes": np.array(axes, np.int64)}
    check_node("ReduceSum", {"x": rand(2, 3, 4)}, consts, keepdims=keepdims,
               noop_with_empty_axes=noop)


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
@pytest.mark.parametrize("axis", [-1, 1, 0])
def test_softmax(op, axis):
    check_node(op, {"x": rand(2, 3, 5, low=-5, high=5)}, axis=axis)


def test_softmax_fp16():
    check_node("Softmax", {"x": rand(4, 10, low=-5, high=5)}, precision="FP16")


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
def test_softmax_rows_of_minus_inf(op, dtype):
    """A row of -inf is NaN in float32, as in TF. Stored in fp16 it is uniform: masked scores
    (-2.4e38 in Keras) become -inf in fp16, and a row with every key masked stands for
    all-equal finite values. A partly masked row is 0 where masked either way."""
    from onnx import helper
    from tests.engine.harness import make_model, run_engine
    x = rand(3, 6, low=-5, high=5).astype(dtype)
    x[0, :] = -np.inf
    x[1, 2:] = -np.inf
    y = run_engine(make_model([helper.make_node(op, ["x"], ["y"], axis=-1)], {"x": x}),
                   {"x": x})[0]
    x32 = x[1:].astype(np.float32)
    e = np.exp(x32 - x32.max(-1, keepdims=True))
    dead = np.full((1, 6), 1 / 6 if dtype == np.float16 else np.nan)
    want = np.concatenate([dead, e / e.sum(-1, keepdims=True)])
    if op == "LogSoftmax":
        want = np.log(want)
    assert y.dtype == dtype
    rtol, atol = (1e-5, 1e-6) if dtype == np.float32 else TOLERANCES["FP16"]
    np.testing.assert_allclose(y.astype(np.float32), want, rtol=rtol, atol=atol)


@pytest.mark.parametrize("op", ["ArgMax", "ArgMin"])
@pytest.mark.parametrize("attrs", [{}, {"axis": -1, "keepdims": 0}, {"axis": 1,
                                                                     "select_last_index": 1}])
def test_argreduce(op, attrs):
    x = rand(3, 4, 5, dtype=np.int64, low=0, high=3).astype(np.float32)  # ties
    check_node(op, {"x": x}, **attrs)


@pytest.mark.parametrize("k,attrs", [(2, {}), (3, {"axis": 0, "largest": 0}),
                                     (1, {"axis": 1})])
def test_topk(k, attrs):
    check_node("TopK", {"x": rand(4, 5, 6)}, {"k": np.array([k], np.int64)}, n_out=2, **attrs)


@pytest.mark.parametrize("attrs", [{}, {"exclusive": 1}, {"reverse": 1},
                                   {"exclusive": 1, "reverse": 1}])
@pytest.mark.parametrize("axis", [0, -1])
def test_cumsum(attrs, axis):
    check_node("CumSum", {"x": rand(3, 4)}, {"axis": np.array(axis, np.int64)}, **attrs)
    check_node("CumSum", {"x": rand(3, 4, dtype=np.int32, low=-5, high=5)},
               {"axis": np.array(axis, np.int32)}, **attrs)
