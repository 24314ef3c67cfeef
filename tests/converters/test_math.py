"""converters/math.py: binary, unary, Cast, comparisons, logic, selection vs TF."""

import numpy as np
import pytest
import tensorflow as tf

from tests.converters.harness import check_op, check_rejected

F32, F16, I32, I64 = np.float32, np.float16, np.int32, np.int64


def rand(shape, dtype=F32, lo=-3.0, hi=3.0, seed=0, avoid_zero=False):
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind in "iu":
        x = rng.integers(int(lo), int(hi) + 1, size=shape)
        if avoid_zero:
            x[x == 0] = 1
    else:
        x = rng.uniform(lo, hi, size=shape)
        if avoid_zero:
            x = np.where(np.abs(x) < 0.5, 0.5 + np.abs(x), x)
    return np.asarray(x).astype(dtype)


def tol(dtype):
    """float16 results of TF and onnxruntime may differ in the last bit."""
    return dict(rtol=2e-3, atol=2e-3) if dtype == F16 else {}


# --- binary --------------------------------------------------------------------------------------

def _raw(op):
    return lambda a, b: getattr(tf.raw_ops, op)(x=a, y=b)


# op -> (fn, dtypes, divisor must avoid zero, operand range)
BINARY = {
    "AddV2": (_raw("AddV2"), (F32, F16, I32, I64), False, 3),
    "Add": (_raw("Add"), (F32, F16, I32), False, 3),
    "Sub": (_raw("Sub"), (F32, F16, I32), False, 3),
    "Mul": (_raw("Mul"), (F32, F16, I32, I64), False, 3),
    "Div": (_raw("Div"), (F32, F16, I32, I64), True, 9),
    "RealDiv": (_raw("RealDiv"), (F32, F16), True, 3),
    "DivNoNan": (_raw("DivNoNan"), (F32, F16), False, 2),
    "FloorDiv": (_raw("FloorDiv"), (F32, F16, I32, I64), True, 9),
    "FloorMod": (_raw("FloorMod"), (F32, F16, I32, I64), True, 9),
    "Maximum": (_raw("Maximum"), (F32, F16, I32, I64), False, 3),
    "Minimum": (_raw("Minimum"), (F32, F16, I32), False, 3),
    "Pow": (_raw("Pow"), (F32, F16, I32), False, 3),
    "SquaredDifference": (_raw("SquaredDifference"), (F32, F16, I32), False, 3),
}
BINARY_CASES = [(op, dt) for op, (_, dts, _, _) in BINARY.items() for dt in dts]


def _binary_inputs(op, dtype, shape_a, shape_b):
    _, _, nonzero, r = BINARY[op]
    a = rand(shape_a, dtype, -r, r, seed=1)
    b = rand(shape_b, dtype, -r, r, seed=2, avoid_zero=nonzero)
    if op == "Pow":
        if np.dtype(dtype).kind == "f":
            a = np.abs(a) + np.asarray(0.1, dtype)
        else:
            b = np.abs(b)
    if op == "DivNoNan":
        b = np.where(np.abs(b) < 0.7, 0, b).astype(dtype)  # exercise the zero divisors
    return a, b


@pytest.mark.parametrize("op,dtype", BINARY_CASES, ids=[f"{o}-{np.dtype(d).name}"
                                                        for o, d in BINARY_CASES])
def test_binary_broadcast(op, dtype):
    a, b = _binary_inputs(op, dtype, (2, 1, 4), (3, 1))
    check_op(BINARY[op][0], [a, b], expect_tf_ops=[op], **tol(dtype))


@pytest.mark.parametrize("shapes", [((2, 3), (2, 3)), ((4,), ()), ((), (2, 2)),
                                    ((1, 3), (2, 1)), ((2, 3, 1, 5), (4, 1))],
                         ids=lambda s: f"{s[0]}x{s[1]}")
def test_binary_shapes(shapes):
    a, b = rand(shapes[0], seed=1), rand(shapes[1], seed=2)
    check_op(lambda x, y: x * y + y, [a, b], expect_tf_ops=["Mul", "AddV2"])


@pytest.mark.parametrize("op", ["AddV2", "FloorDiv", "FloorMod", "Maximum", "Pow"])
def test_binary_dynamic_batch(op):
    a, b = _binary_inputs(op, F32, (3, 4), (3, 4))
    check_op(BINARY[op][0], [a, b], dynamic_batch=True, expect_tf_ops=[op])


def test_floor_div_mod_negative_ints():
    # every sign combination, including exact multiples (remainder 0)
    a = np.array([-7, 7, -7, 7, -6, 6, 0, -1], I32)
    b = np.array([2, -2, -2, 2, 3, -3, 5, 4], I32)
    check_op(lambda x, y: (tf.math.floordiv(x, y), tf.math.floormod(x, y)), [a, b],
             expect_tf_ops=["FloorDiv", "FloorMod"])


def test_floor_mod_negative_floats():
    a = np.array([-7.5, 7.5, -7.5, 7.5, -6.0, 6.0, 0.0, 2.25], F32)
    b = np.array([2.0, -2.0, -2.0, 2.0, 3.0, -3.0, 5.0, -0.5], F32)
    check_op(lambda x, y: tf.math.floormod(x, y), [a, b], expect_tf_ops=["FloorMod"])


@pytest.mark.parametrize("dtype", [F32, F16, I32])
@pytest.mark.parametrize("n", [2, 3])
def test_add_n(dtype, n):
    xs = [rand((2, 3), dtype, seed=k) for k in range(n)]
    check_op(lambda *ts: tf.math.add_n(list(ts)), xs, expect_tf_ops=["AddN"], **tol(dtype))


# --- unary ---------------------------------------------------------------------------------------

# op -> (input range (lo, hi), accepts int32)
UNARY = {
    "Abs": ((-3, 3), True), "Neg": ((-3, 3), True), "Sign": ((-3, 3), True),
    "Square": ((-3, 3), True), "Round": ((-3, 3), False),
    "Ceil": ((-3, 3), False), "Floor": ((-3, 3), False),
    "Exp": ((-3, 3), False), "Expm1": ((-3, 3), False),
    "Log": ((0.1, 5), False), "Log1p": ((-0.9, 5), False),
    "Sqrt": ((0.1, 5), False), "Rsqrt": ((0.1, 5), False),
    "Reciprocal": ((0.5, 3), False), "Inv": ((0.5, 3), False), "Erf": ((-3, 3), False),
    "Erfc": ((-3, 3), False),
    "Sin": ((-3, 3), False), "Cos": ((-3, 3), False), "Tan": ((-1.2, 1.2), False),
    "Asin": ((-0.95, 0.95), False), "Acos": ((-0.95, 0.95), False), "Atan": ((-3, 3), False),
    "Sinh": ((-3, 3), False), "Cosh": ((-3, 3), False), "Asinh": ((-3, 3), False),
    "Acosh": ((1.05, 4), False), "Atanh": ((-0.9, 0.9), False), "IsNan": ((-3, 3), False),
}
UNARY_CASES = ([(op, F32) for op in UNARY] + [(op, F16) for op in UNARY]
               + [(op, I32) for op, (_, ints) in UNARY.items() if ints])


@pytest.mark.parametrize("op,dtype", UNARY_CASES, ids=[f"{o}-{np.dtype(d).name}"
                                                       for o, d in UNARY_CASES])
def test_unary(op, dtype):
    (lo, hi), _ = UNARY[op]
    x = rand((2, 5), dtype, lo, hi, seed=3)
    if op == "IsNan":
        x[0, 1] = np.nan
    if op == "Round" and dtype != I32:
        x[0] = np.array([0.5, 1.5, 2.5, -0.5, -2.5], dtype)  # ties go to even, as in TF
    check_op(lambda t: getattr(tf.raw_ops, op)(x=t), [x], expect_tf_ops=[op], **tol(dtype))


def test_unary_dynamic_batch():
    x = rand((3, 4), seed=4)
    check_op(lambda t: tf.math.rsqrt(tf.abs(t) + 1.0) * tf.math.sin(t), [x], dynamic_batch=True,
             expect_tf_ops=["Rsqrt", "Sin", "Abs"])


@pytest.mark.parametrize("op", ["Log1p", "Expm1"])
def test_log1p_expm1_small_values_keep_precision(op):
    # a plain Log(1 + x) / Exp(x) - 1 would be off by ~1e-3 relative here
    x = np.array([1e-7, -3e-7, 1e-5, 2e-4, -1e-4, 0.0, 0.3, -0.4], F32)
    check_op(lambda t: getattr(tf.raw_ops, op)(x=t), [x], rtol=1e-5, atol=0,
             expect_tf_ops=[op])


# --- ClipByValue, Cast ---------------------------------------------------------------------------

def _clip(t, lo, hi):
    # tf.clip_by_value itself now emits Minimum + Maximum; the fused op still appears in graphs
    return tf.raw_ops.ClipByValue(t=t, clip_value_min=lo, clip_value_max=hi)


@pytest.mark.parametrize("dtype", [F32, F16, I32])
def test_clip_const_bounds(dtype):
    x = rand((2, 6), dtype, -5, 5, seed=5)
    check_op(lambda t: _clip(t, np.asarray(-2, dtype), np.asarray(3, dtype)), [x],
             expect_tf_ops=["ClipByValue"], **tol(dtype))


def test_clip_tensor_bounds_and_min_above_max():
    # bounds: same shape as the input, or run-time scalars
    x, lo, hi = rand((2, 6), seed=6), rand((2, 6), seed=7, hi=0), rand((2, 6), seed=8, lo=-1)
    check_op(lambda t, a, b: _clip(t, a, b), [x, lo, hi], expect_tf_ops=["ClipByValue"])
    check_op(lambda t, a, b: _clip(t, a, b), [x, np.float32(-1), np.float32(0.5)],
             expect_tf_ops=["ClipByValue"])
    # min > max: TF returns min
    check_op(lambda t: _clip(t, 2.0, -1.0), [x], expect_tf_ops=["ClipByValue"])


def test_clip_dynamic_batch():
    check_op(lambda t: _clip(t, -1.0, 1.0), [rand((3, 4), seed=9)],
             dynamic_batch=True, expect_tf_ops=["ClipByValue"])


CASTS = [(F32, I32), (F32, F16), (F16, F32), (I32, F32), (F32, np.bool_), (np.bool_, F32),
         (I32, I64), (I64, I32), (I32, np.bool_), (F16, I32)]


@pytest.mark.parametrize("src,dst", CASTS, ids=[f"{np.dtype(s).name}-{np.dtype(d).name}"
                                                for s, d in CASTS])
def test_cast(src, dst):
    if src == np.bool_:
        x = np.array([[True, False, True], [False, False, True]])
    else:
        # fractions and negatives: float -> int truncates toward zero in TF
        x = np.array([[-2.7, -0.5, 0.0], [0.4, 1.5, 3.9]]).astype(src)
    check_op(lambda t: tf.cast(t, dst), [x], expect_tf_ops=["Cast"])


EIGHT_BIT_CASTS = [(np.uint8, F32), (np.uint8, F16), (np.uint8, I32), (np.int8, F32),
                   (np.int8, I64), (F32, np.uint8), (I32, np.int8), (np.uint8, np.bool_)]


@pytest.mark.parametrize("src,dst", EIGHT_BIT_CASTS,
                         ids=[f"{np.dtype(s).name}-{np.dtype(d).name}" for s, d in EIGHT_BIT_CASTS])
def test_cast_8_bit(src, dst):
    """uint8 images cast to float (the first op of most image models served with uint8
    input: "SrcT=uint8 is not supported" left it native, image hunt 2026-12-04), int8, and
    values in range the other way (float -> uint8 truncates)."""
    if src == np.uint8:
        x = np.array([[0, 1, 127], [128, 254, 255]], np.uint8)
    elif src == np.int8:
        x = np.array([[-128, -1, 0], [1, 100, 127]], np.int8)
    elif src == F32:
        x = np.array([[0.0, 0.9, 127.5], [128.2, 254.99, 255.0]], np.float32)
    else:
        x = np.array([[-128, -1, 0], [1, 100, 127]], I32)
    check_op(lambda t: tf.cast(t, dst), [x], expect_tf_ops=["Cast"])


@pytest.mark.parametrize("dst", [np.uint8, np.int8])
def test_cast_float_out_of_range_saturates_as_tf(dst):
    """Out-of-range floats to a narrow integer: TF's CPU kernel saturates (its vectorized
    path; NaN and values past int32 give the type's 0 / minimum); the numpy backend wrapped,
    so a GAN's ``tf.cast(tanh(y) * 255, tf.uint8)`` differed in half its pixels (helper hunt,
    2026-12-05). 64 values: TF's scalar tail, which wraps, never runs. (ONNX leaves such a
    Cast undefined: onnxruntime wraps, so it is not compared.)"""
    v = np.array([-100.0, 300.0, np.nan, 1e10, -1e10, 255.9, -0.9, 127.5, -128.7, 70000.0,
                  -40000.0, 65535.5, np.inf, -np.inf, 32767.9, -32768.9], np.float32)
    check_op(lambda t: tf.cast(t, dst), [np.tile(v, 4).reshape(8, 8)], expect_tf_ops=["Cast"],
             onnxruntime=False)


def test_cast_dynamic_batch():
    check_op(lambda t: tf.cast(t, tf.int32), [rand((3, 4), seed=10)], dynamic_batch=True,
             expect_tf_ops=["Cast"])


# --- comparisons, logic, select ------------------------------------------------------------------

COMPARE = ["Equal", "NotEqual", "Greater", "GreaterEqual", "Less", "LessEqual"]


@pytest.mark.parametrize("dtype", [F32, F16, I32])
@pytest.mark.parametrize("op", COMPARE)
def test_compare(op, dtype):
    a, b = rand((2, 1, 4), dtype, -2, 2, seed=11), rand((3, 1), dtype, -2, 2, seed=12)
    if np.dtype(dtype).kind == "f":  # make ties happen for the *Equal ops
        a, b = np.round(a), np.round(b)
    check_op(_raw(op), [a, b], expect_tf_ops=[op])


def test_compare_bool_and_dynamic_batch():
    a, b = rand((3, 4), I32, 0, 1, seed=13).astype(bool), rand((4,), I32, 0, 1).astype(bool)
    check_op(lambda x, y: (tf.equal(x, y), tf.not_equal(x, y)), [a, b], dynamic_batch=True,
             expect_tf_ops=["Equal", "NotEqual"])


def test_logical():
    a = rand((2, 3), I32, 0, 1, seed=14).astype(bool)
    b = rand((3,), I32, 0, 1, seed=15).astype(bool)
    check_op(lambda x, y: (tf.logical_and(x, y), tf.logical_or(x, y), tf.logical_not(x)),
             [a, b], expect_tf_ops=["LogicalAnd", "LogicalOr", "LogicalNot"])


def test_logical_dynamic_batch():
    a = rand((3, 4), I32, 0, 1, seed=16).astype(bool)
    check_op(lambda x: tf.logical_not(x), [a], dynamic_batch=True, expect_tf_ops=["LogicalNot"])


@pytest.mark.parametrize("dtype", [F32, F16, I32, np.bool_])
@pytest.mark.parametrize("shapes", [((2, 3), (2, 3), (2, 3)), ((3,), (2, 3), (1,)),
                                    ((2, 1), (), (1, 4))], ids=lambda s: "x".join(map(str, s)))
def test_select_v2(shapes, dtype):
    c = rand(shapes[0], I32, 0, 1, seed=17).astype(bool)
    x, y = rand(shapes[1], dtype, seed=18), rand(shapes[2], dtype, seed=19)
    check_op(lambda c, x, y: tf.where(c, x, y), [c, x, y], expect_tf_ops=["SelectV2"])


@pytest.mark.parametrize("cond_shape", [(2, 3, 4), (2,), ()], ids=str)
def test_select_v1(cond_shape):
    c = rand(cond_shape, I32, 0, 1, seed=20).astype(bool)
    x, y = rand((2, 3, 4), seed=21), rand((2, 3, 4), seed=22)
    check_op(lambda c, x, y: tf.raw_ops.Select(condition=c, x=x, y=y), [c, x, y],
             expect_tf_ops=["Select"])


def test_select_dynamic_batch():
    c = rand((3, 4), I32, 0, 1, seed=23).astype(bool)
    x, y = rand((3, 4), seed=24), rand((3, 4), seed=25)
    check_op(lambda c, x, y: tf.where(c, x, y), [c, x, y], dynamic_batch=True,
             expect_tf_ops=["SelectV2"])
    check_op(lambda c, x, y: tf.raw_ops.Select(condition=c[:, 0], x=x, y=y), [c, x, y],
             dynamic_batch=True, expect_tf_ops=["Select"])


# --- rejections ----------------------------------------------------------------------------------

def test_rejects_integer_real_div_and_reciprocal():
    a, b = rand((2, 3), I32, 1, 3), rand((2, 3), I32, 1, 3)
    check_rejected(_raw("RealDiv"), [a, b], "RealDiv", "int32 is not supported")
    check_rejected(lambda x: tf.raw_ops.Reciprocal(x=x), [a], "Reciprocal",
                   "int32 is not supported")
    # TF 2.21's own integer Round returns zeros; integer Round stays native
    check_rejected(lambda x: tf.raw_ops.Round(x=x), [a], "Round", "int32 is not supported")
    # the reason names the op's own dtypes: integers are not offered to float-only functions
    # (they were listed, dtype hunt 2026-12-04)
    h = rand((2, 3)).astype(tf.bfloat16.as_numpy_dtype)
    for op, fn in (("Erfc", tf.math.erfc), ("Sqrt", tf.sqrt)):
        reason = check_rejected(fn, [h], op, "bfloat16 is not supported")
        assert reason.endswith("(supported: float32, float16)"), reason
    reason = check_rejected(lambda t: tf.abs(t), [h], "Abs", "bfloat16")
    assert reason.endswith("(supported: float32, float16, int32, int64)"), reason
    reason = check_rejected(_raw("RealDiv"), [a, b], "RealDiv", "int32 is not supported")
    assert reason.endswith("(supported: float32, float16)"), reason


def test_rejects_float64():
    x = rand((2, 3)).astype(np.float64)
    check_rejected(lambda t: tf.sin(t), [x], "Sin", "float64")
    check_rejected(lambda t, u: t + u, [x, x], "AddV2", "float64")


def test_rejects_cast_types():
    x = rand((2, 3))
    check_rejected(lambda t: tf.cast(t, tf.float64), [x], "Cast", "DstT=float64")
    check_rejected(lambda t: tf.cast(t, tf.uint16), [x], "Cast", "DstT=uint16")
    check_rejected(lambda t: tf.cast(tf.cast(t, tf.int16), tf.float32), [x], "Cast", "int16")
    check_rejected(lambda t: tf.raw_ops.Cast(x=t, DstT=tf.float16, Truncate=True), [x], "Cast",
                   "Truncate=True")


def test_rejects_compare_without_shape_error():
    a, b = rand((2, 3)), rand((4,))
    check_rejected(lambda x, y: tf.raw_ops.Equal(x=x, y=y, incompatible_shape_error=False),
                   [a, b], "Equal", "incompatible_shape_error=False")


@pytest.mark.parametrize("bound_shape", [(6,), (1, 6), (2, 1)], ids=str)
def test_clip_rejects_bounds_neither_scalar_nor_the_inputs_shape(bound_shape):
    """TF raises for them; broadcasting them answered (helper hunt, 2026-12-02)."""
    x = rand((2, 6), seed=6)
    lo = np.full(bound_shape, -0.5, np.float32)
    check_rejected(lambda t: _clip(t, lo, np.float32(0.5)), [x], "ClipByValue",
                   "TensorFlow raises")


def test_select_v1_rejects_a_length_one_condition_for_an_unknown_row_count():
    """Select's rank-1 condition holds one value per row: TF raises on another length, where
    a length-1 condition broadcast over the rows (helper hunt, 2026-12-02). Known lengths
    that differ fail TF's own tracing; a condition of length 1 against a dynamic batch is
    left native."""
    from tests.converters.harness import trace
    from tftrt import lowering
    from tftrt.converters import registry
    _, info = trace(lambda x: tf.raw_ops.Select(condition=tf.constant([True]), x=x, y=-x),
                    [rand((2, 5, 6), seed=21)], dynamic_batch=True)
    (node,) = [n for n in info.graph_def.node if n.op == "Select"]
    reason = registry.validate_node(node, lowering.ValidationContext(info))
    assert reason and "one condition per row" in reason, reason
