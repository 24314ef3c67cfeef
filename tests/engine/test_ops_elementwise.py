"""Elementwise ONNX ops: engine (numpy backend) vs onnxruntime, FP32 and FP16."""

import numpy as np
import pytest

from tests.engine.harness import check_node, rand

UNARY = ["Abs", "Neg", "Exp", "Floor", "Ceil", "Round", "Sign", "Sin", "Cos", "Tan", "Atan",
         "Sinh", "Cosh", "Asinh", "Erf", "Relu", "Sigmoid", "Tanh", "Softplus", "Softsign"]
POSITIVE = ["Log", "Sqrt", "Reciprocal", "Acosh"]   # domain x > 1 for acosh
UNIT = ["Asin", "Acos", "Atanh"]                     # domain |x| < 1


@pytest.mark.parametrize("op", UNARY + POSITIVE + UNIT)
@pytest.mark.parametrize("shape", [(2, 3, 4), (5,)])
def test_unary(op, shape):
    if op in POSITIVE:
        x = rand(*shape, low=1.1, high=3.0)
    elif op in UNIT:
        x = rand(*shape, low=-0.9, high=0.9)
    else:
        x = rand(*shape)
    check_node(op, {"x": x})


@pytest.mark.parametrize("op", ["Relu", "Sigmoid", "Tanh", "Exp", "Erf"])
def test_unary_fp16(op):
    check_node(op, {"x": rand(2, 8, 3)}, precision="FP16")


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div", "Max", "Min"])
@pytest.mark.parametrize("shapes", [((2, 3, 4), (2, 3, 4)), ((2, 3, 4), (4,)),
                                    ((2, 1, 4), (3, 1)), ((1,), (2, 5))])
def test_binary(op, shapes):
    a, b = rand(*shapes[0]), rand(*shapes[1], low=0.5, high=2.0, seed=1)
    check_node(op, {"a": a, "b": b})


@pytest.mark.parametrize("op", ["Add", "Mul", "Sub", "Div"])
def test_binary_const_and_fp16(op):
    check_node(op, {"a": rand(2, 4, 4, 3)}, {"c": rand(3, low=0.5, high=1.5, seed=2)},
               precision="FP16")


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div", "Max", "Min"])
def test_binary_int(op):
    a = rand(3, 4, dtype=np.int64, low=-20, high=20)
    b = rand(3, 4, dtype=np.int64, low=1, high=6, seed=3) * np.where(rand(3, 4) > 0, 1, -1)
    check_node(op, {"a": a, "b": b})


def test_int32_div_truncates_at_int_min():
    """C truncation as onnxruntime (and TF's TruncateDiv): INT_MIN / 2 is -2**30, 1 / INT_MIN
    is 0 (the reference divided absolute values, and abs(INT_MIN) stays negative)."""
    lo = np.iinfo(np.int32).min
    a = np.array([[lo, lo, 1, -7, 7, lo + 1]], np.int32)
    b = np.array([[2, 3, lo, 2, -2, lo]], np.int32)
    check_node("Div", {"a": a, "b": b})


def test_float64_to_float16_cast_rounds_through_float32():
    """As TF's cast (and the CUDA lowering): 65519.99999999 is inf in float16 through float32,
    65504 rounded once."""
    tf = pytest.importorskip("tensorflow")
    from tftrt.engine.backends import numpy_ops
    d = np.array([65519.99999999, 1 + 2.0 ** -11 + 2.0 ** -40, 3.0, -65519.99999999, 1e-8])
    got = numpy_ops.PW["cast"]({"to": "float16"}, d)
    want = tf.cast(tf.constant(d, tf.float64), tf.float16).numpy()
    np.testing.assert_array_equal(got, want)
    assert np.isinf(got[0])


def test_pow():
    check_node("Pow", {"a": rand(3, 4, low=0.5, high=2.0)}, {"b": np.array(2.5, np.float32)})
    check_node("Pow", {"a": rand(3, 4), "b": np.array([2.0, 3.0, 1.0, 0.0], np.float32)})


@pytest.mark.parametrize("fmod", [0, 1])
def test_mod(fmod):
    b = np.array([3, -3, 5, 7], np.int32)
    if fmod:
        check_node("Mod", {"a": rand(3, 4, low=-9, high=9), "b": b.astype(np.float32)},
                   fmod=1)
    else:
        check_node("Mod", {"a": rand(3, 4, dtype=np.int32, low=-9, high=9), "b": b}, fmod=0)


@pytest.mark.parametrize("op", ["Sum", "Mean", "Max", "Min"])
@pytest.mark.parametrize("n", [1, 3])
def test_variadic(op, n):
    feeds = {f"x{k}": rand(2, 3, seed=k) for k in range(n)}
    check_node(op, feeds)


@pytest.mark.parametrize("op,attrs", [("LeakyRelu", {"alpha": 0.3}), ("Elu", {"alpha": 0.7}),
                                      ("Selu", {}), ("HardSigmoid", {"alpha": 0.3, "beta": 0.4}),
                                      ("LeakyRelu", {})])
def test_param_activations(op, attrs):
    check_node(op, {"x": rand(2, 3, 5)}, **attrs)


@pytest.mark.parametrize("bounds", [(-1.0, 1.0), (0.0, 6.0), (None, 0.5), (0.2, None)])
def test_clip(bounds):
    consts, inputs = {}, ["x"]
    for name, b in zip(("lo", "hi"), bounds):
        if b is None:
            inputs.append("")
        else:
            consts[name] = np.array(b, np.float32)
            inputs.append(name)
    while inputs[-1] == "":
        inputs.pop()
    check_node("Clip", {"x": rand(4, 5, low=-3, high=8)}, consts, inputs=inputs)


def test_clip_runtime_bounds():
    check_node("Clip", {"x": rand(4, 5), "lo": np.array(-0.5, np.float32),
                        "hi": np.array(0.7, np.float32)})


@pytest.mark.parametrize("slope_shape", [(1,), (4,), (3, 1, 1)])
def test_prelu(slope_shape):
    check_node("PRelu", {"x": rand(2, 3, 4, 4)}, {"s": rand(*slope_shape, seed=4)})


@pytest.mark.parametrize("op", ["Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual"])
def test_compare(op):
    a = rand(3, 4, dtype=np.int64, low=0, high=3)
    b = rand(4, dtype=np.int64, low=0, high=3, seed=5)
    check_node(op, {"a": a, "b": b})
    check_node(op, {"a": rand(3, 4).round(), "b": rand(3, 4, seed=6).round()})


@pytest.mark.parametrize("op", ["And", "Or", "Xor"])
def test_logical(op):
    check_node(op, {"a": rand(3, 4, dtype=bool), "b": rand(4, dtype=bool, seed=7)})


def test_not_isnan_where():
    check_node("Not", {"a": rand(3, 4, dtype=bool)})
    x = rand(3, 4)
    x[0, 1] = np.nan
    check_node("IsNaN", {"x": x})
    check_node("Where", {"c": rand(3, 4, dtype=bool), "a": rand(3, 4), "b": rand(4, seed=8)})


@pytest.mark.parametrize("to,src", [(1, np.int64), (7, np.float32), (6, np.float32),
                                    (9, np.float32), (10, np.float32), (1, np.bool_)])
def test_cast(to, src):
    x = rand(3, 4, low=-5, high=5).astype(src)
    check_node("Cast", {"x": x}, to=to)


def test_identity_and_constant():
    from onnx import helper, numpy_helper
    from tests.engine.harness import check_model, make_model
    c = numpy_helper.from_array(np.arange(4, dtype=np.float32), "c")
    nodes = [helper.make_node("Constant", [], ["k"], value=c),
             helper.make_node("Identity", ["x"], ["i"]),
             helper.make_node("Add", ["i", "k"], ["y"]),
             helper.make_node("Identity", ["x"], ["y2"])]
    check_model(make_model(nodes, {"x": rand(3, 4)}, outputs=["y", "y2"]), {"x": rand(3, 4)})
