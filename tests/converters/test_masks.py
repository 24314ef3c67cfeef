"""converters/masks.py (OneHot, MatrixBandPart, IsFinite, IsInf), converters/scan.py (Cumsum)
and array.py's Fill with dims built at run time (tf.ones([tf.shape(x)[0], 16])): each op alone
vs TF (attributes, dtypes, non-finite values, a dynamic batch), the refusals, and one small
model per op through TrtGraphConverterV2 as one engine (FP32 and FP16)."""

import numpy as np
import pytest
import tensorflow as tf

from tftrt import trt_convert as trt
from tests.converters.harness import assert_close, check_op, check_rejected, run_engine, \
    run_onnxruntime, validation_reason
from tests.integration import models
from tests.tolerances import MODEL_TOLERANCES

F32, F16, I32, I64, BOOL = np.float32, np.float16, np.int32, np.int64, np.bool_
NON_FINITE = np.array([1.5, np.inf, -np.inf, np.nan, 3e38, -1e-40, 0.0, -7.25], np.float32)


def rand(shape, dtype=F32, seed=0):
    rng = np.random.default_rng(seed)
    if np.dtype(dtype) == BOOL:
        return rng.integers(0, 2, size=shape).astype(bool)
    if np.dtype(dtype).kind in "iu":
        return rng.integers(-9, 10, size=shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


def indices(shape, depth, dtype=I32, seed=0):
    """Indices in [-2, depth + 2): negative and too large ones included."""
    return np.random.default_rng(seed).integers(-2, depth + 2, size=shape).astype(dtype)


def check_dynamic(fn, inputs, other, **kwargs):
    """check_op with a None batch, then the same segment network on ``other`` inputs (another
    batch) in onnxruntime and in a fresh engine against TF: a hard-coded batch would fail."""
    low = check_op(fn, inputs, dynamic_batch=True, **kwargs)
    expected = [np.asarray(t) for t in tf.nest.flatten(fn(*[tf.constant(x) for x in other]))]
    assert_close(run_onnxruntime(low.net.model, other), expected, 1e-4, 1e-5, "onnxruntime")
    assert_close(run_engine(low.net.model, other), expected, 1e-4, 1e-5, "engine")
    return low


# --- OneHot --------------------------------------------------------------------------------------

@pytest.mark.parametrize("axis", [-1, 0, 1, 2])
@pytest.mark.parametrize("index_dtype", [I32, I64], ids=lambda d: np.dtype(d).name)
def test_one_hot_axes(axis, index_dtype):
    """Every axis of a rank-2 index tensor; negative and too large indices give off_value."""
    idx = indices((3, 4), 5, index_dtype)
    assert (idx < 0).any() and (idx >= 5).any()
    low = check_op(lambda i: tf.one_hot(i, 5, on_value=2.5, off_value=-1.0, axis=axis), [idx],
                   expect_tf_ops=["OneHot"])
    assert "OneHot" not in low.onnx_ops  # lowered to Equal / Where, no new layer kind


@pytest.mark.parametrize("dtype", [F32, F16, I32, I64, BOOL], ids=lambda d: np.dtype(d).name)
def test_one_hot_value_dtypes(dtype):
    on, off = (True, False) if dtype == BOOL else (3, -2)
    check_op(lambda i: tf.one_hot(i, 4, on_value=tf.constant(on, dtype),
                                  off_value=tf.constant(off, dtype)),
             [indices((2, 3), 4, seed=1)], expect_tf_ops=["OneHot"])


@pytest.mark.parametrize("dtype", [F32, F16, I64, BOOL], ids=lambda d: np.dtype(d).name)
def test_one_hot_on_off_values_computed_at_run_time(dtype):
    on, off = (np.bool_(True), np.bool_(False)) if dtype == BOOL else (dtype(3), dtype(-2))
    check_op(lambda i, a, b: tf.one_hot(i, 6, on_value=a, off_value=b, axis=0),
             [indices((5,), 6, seed=2), on, off], expect_tf_ops=["OneHot"])
    check_op(lambda i, a: tf.one_hot(i, 6, on_value=a, off_value=tf.constant(off)),
             [indices((5,), 6, seed=2), on], expect_tf_ops=["OneHot"])


@pytest.mark.parametrize("dtype", [F32, F16, I32], ids=lambda d: np.dtype(d).name)
def test_one_hot_depth_one(dtype):
    check_op(lambda i: tf.one_hot(i, 1, on_value=tf.constant(7, dtype),
                                  off_value=tf.constant(-1, dtype)),
             [np.array([[0, 1, -1]], np.int32)], expect_tf_ops=["OneHot"])


def test_one_hot_dynamic_batch_and_fp16_engine():
    fn = lambda i: tf.one_hot(i, 7, axis=1)  # noqa: E731
    check_dynamic(fn, [indices((2, 3), 7, seed=3)], [indices((5, 3), 7, seed=4)],
                  expect_tf_ops=["OneHot"])
    check_op(fn, [indices((2, 3), 7, seed=3)], precision="FP16", expect_tf_ops=["OneHot"])


# --- IsFinite / IsInf ----------------------------------------------------------------------------

@pytest.mark.parametrize("op", ["IsFinite", "IsInf"])
@pytest.mark.parametrize("dtype", [F32, F16], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("precision", ["FP32", "FP16"])
def test_finite_predicates(op, dtype, precision):
    """Exact on inf, -inf, NaN, the largest floats and subnormals; an FP16 engine too (3e38
    is a network input, which keeps its float32 dtype)."""
    fn = tf.math.is_finite if op == "IsFinite" else tf.math.is_inf
    with np.errstate(over="ignore"):  # 3e38 is inf in float16
        x = np.stack([NON_FINITE, -NON_FINITE]).astype(dtype)
    low = check_op(lambda v: fn(v), [x], precision=precision, expect_tf_ops=[op])
    assert not {"IsInf", "IsNaN"} & set(low.onnx_ops), low.onnx_ops


@pytest.mark.parametrize("op", ["IsFinite", "IsInf"])
def test_finite_predicates_dynamic_batch(op):
    fn = tf.math.is_finite if op == "IsFinite" else tf.math.is_inf
    x = np.tile(NON_FINITE, (3, 1))
    check_dynamic(lambda v: fn(v * 2.0), [x], [np.tile(NON_FINITE[::-1], (5, 1))],
                  expect_tf_ops=[op])


# --- MatrixBandPart ------------------------------------------------------------------------------

BANDS = [(0, 0), (-1, 0), (0, -1), (1, 2), (-1, -1), (2, -1), (3, 4), (0, 4)]


@pytest.mark.parametrize("lower,upper", BANDS, ids=str)
def test_band_part(lower, upper):
    check_op(lambda x: tf.linalg.band_part(x, lower, upper), [rand((2, 3, 4, 5))],
             expect_tf_ops=["MatrixBandPart"])


@pytest.mark.parametrize("dtype", [F32, F16, I32, I64, BOOL], ids=lambda d: np.dtype(d).name)
def test_band_part_dtypes(dtype):
    check_op(lambda x: tf.linalg.band_part(x, 1, 0), [rand((4, 4), dtype, seed=1)],
             expect_tf_ops=["MatrixBandPart"])


def test_band_part_zeroes_non_finite_values_outside_the_band():
    """inf and NaN outside the band become 0 (a Mul by the mask would make NaN)."""
    x = np.resize(NON_FINITE, (2, 4, 4))
    check_op(lambda v: tf.linalg.band_part(v, 0, 1), [x], expect_tf_ops=["MatrixBandPart"])


def test_band_part_dynamic_batch_and_int64_bounds():
    def fn(x):
        return tf.linalg.band_part(x, tf.constant(1, tf.int64), tf.constant(-1, tf.int64))
    check_dynamic(fn, [rand((2, 5, 3))], [rand((6, 5, 3), seed=2)],
                  expect_tf_ops=["MatrixBandPart"])


# --- Cumsum --------------------------------------------------------------------------------------

@pytest.mark.parametrize("axis", [0, 1, 2, -1])
@pytest.mark.parametrize("exclusive", [False, True], ids=["inclusive", "exclusive"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_cumsum(axis, exclusive, reverse):
    low = check_op(lambda x: tf.cumsum(x, axis, exclusive=exclusive, reverse=reverse),
                   [rand((3, 5, 9))], expect_tf_ops=["Cumsum"])
    assert not {"CumSum", "MatMul"} & set(low.onnx_ops), low.onnx_ops


@pytest.mark.parametrize("exclusive", [False, True], ids=["inclusive", "exclusive"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_cumsum_non_finite_values_spread_as_in_tf(exclusive, reverse):
    """inf and NaN reach only the sums that include them (a triangular MatMul's 0 * inf made
    the whole row NaN); inf + -inf is NaN from there on."""
    x = np.stack([NON_FINITE, NON_FINITE[::-1], np.where(np.isnan(NON_FINITE), 1, NON_FINITE)])
    check_op(lambda v: tf.cumsum(v, 1, exclusive=exclusive, reverse=reverse), [x],
             expect_tf_ops=["Cumsum"])


@pytest.mark.parametrize("length", [1, 2, 3, 8, 33])
@pytest.mark.parametrize("exclusive", [False, True], ids=["inclusive", "exclusive"])
def test_cumsum_lengths(length, exclusive):
    check_op(lambda x: tf.cumsum(x, 1, exclusive=exclusive), [rand((2, length, 3), seed=3)],
             expect_tf_ops=["Cumsum"])


def test_cumsum_longest_axis():
    """No L x L constant: the longest axis converted (4096) is 12 steps."""
    check_op(lambda x: tf.cumsum(x, 1, reverse=True), [rand((2, 4096), seed=4)],
             rtol=1e-4, atol=1e-4, expect_tf_ops=["Cumsum"])


@pytest.mark.parametrize("exclusive", [False, True], ids=["inclusive", "exclusive"])
def test_cumsum_in_an_fp16_engine_keeps_running_sums_past_float16s_range(exclusive):
    """A CDF, cumsum(w) / sum(w), of 1,000 weights up to 400: the running sums pass 65504.
    The scan's steps were stored as float16 in an FP16 engine: inf in 1,349 of 2,000 answers
    that TF has in [0, 1] (FP16 hunt, s48). They run in FP32 now (precision._scan_steps)."""
    w = (rand((2, 1000), seed=6) + 3.0) * 100.0
    check_op(lambda v: tf.cumsum(v, -1, exclusive=exclusive) /
             tf.reduce_sum(v, -1, keepdims=True), [w], precision="FP16",
             expect_tf_ops=["Cumsum"])


@pytest.mark.parametrize("precision", ["FP32", "FP16"])
def test_cumsum_float16(precision):
    """float16 data: TF sums left to right, the scan in a tree order, each step rounded."""
    check_op(lambda x: tf.cumsum(x, -1, exclusive=True), [rand((3, 20), F16, seed=5)],
             precision=precision, rtol=1e-2, atol=1e-2, expect_tf_ops=["Cumsum"])


def test_cumsum_dynamic_batch_and_fp16_engine():
    fn = lambda x: tf.cumsum(x, axis=1, reverse=True)  # noqa: E731
    check_dynamic(fn, [rand((2, 6, 4))], [rand((7, 6, 4), seed=6)], expect_tf_ops=["Cumsum"])
    check_op(fn, [rand((2, 6, 4))], precision="FP16", expect_tf_ops=["Cumsum"])


# --- Fill with dims built at run time ------------------------------------------------------------

FILLS = {
    "fill_stack": lambda x: tf.fill(tf.stack([tf.shape(x)[0], 16]), 1.5) + tf.reduce_sum(x),
    "ones": lambda x: tf.ones([tf.shape(x)[0], 16]) * tf.reduce_max(x),
    "zeros_concat": lambda x: tf.zeros(tf.concat([tf.shape(x)[:-1], [7]], 0)) + x[..., :1],
}


@pytest.mark.parametrize("name", sorted(FILLS))
def test_fill_with_dims_built_from_the_dynamic_batch(name):
    """Pack / ConcatV2 of StridedSlices of Shape and constants: the batch stays dynamic."""
    low = check_dynamic(FILLS[name], [rand((2, 3, 5))], [rand((6, 3, 5), seed=7)],
                        expect_tf_ops=["Fill", "Shape"])
    assert "Expand" in low.onnx_ops


def test_fill_with_dims_built_at_run_time_int64_value_tensor():
    def fn(x, v):
        return tf.fill(tf.stack([tf.shape(x)[0], 2, tf.shape(x)[1]]), v * 3)
    check_dynamic(fn, [rand((2, 4)), np.int64(5)], [rand((5, 4), seed=8), np.int64(-2)],
                  expect_tf_ops=["Fill", "Pack"])


# --- refusals ------------------------------------------------------------------------------------

def test_refuses_one_hot_with_depth_computed_at_run_time():
    check_rejected(lambda i, d: tf.one_hot(i, d), [indices((3,), 4), np.int32(4)], "OneHot",
                   "input 1 of OneHot must be a constant")


def test_refuses_one_hot_with_uint8_indices():
    check_rejected(lambda i: tf.one_hot(i, 4), [np.array([1, 2], np.uint8)], "OneHot",
                   "indices of type uint8 are not supported")


def test_refuses_band_part_with_bounds_computed_at_run_time():
    check_rejected(lambda x, n: tf.linalg.band_part(x, n, 0), [rand((3, 3)), np.int64(1)],
                   "MatrixBandPart", "input 1 of MatrixBandPart must be a constant")


def test_refuses_band_part_on_matrices_of_unknown_size():
    reason = validation_reason(lambda x: tf.linalg.band_part(x, 1, 0),
                               [tf.TensorSpec([2, None, 4], tf.float32)], "MatrixBandPart")
    assert reason and "last two dims must be static" in reason, reason


def test_refuses_band_part_bounds_larger_than_the_matrix():
    check_rejected(lambda x: tf.linalg.band_part(x, 5, 0), [rand((2, 3, 3))],
                   "MatrixBandPart", "exceed the 3 x 3 matrices")


@pytest.mark.parametrize("dtype", [I32, I64], ids=lambda d: np.dtype(d).name)
def test_refuses_integer_cumsum(dtype):
    check_rejected(lambda x: tf.cumsum(x, 1), [rand((2, 3), dtype)], "Cumsum",
                   f"T={np.dtype(dtype).name} is not supported")


def test_refuses_cumsum_with_axis_computed_at_run_time():
    check_rejected(lambda x, a: tf.cumsum(x, a), [rand((2, 3)), np.int32(1)], "Cumsum",
                   "input 1 of Cumsum must be a constant")


def test_refuses_cumsum_along_a_dim_of_unknown_size():
    """Along the dynamic batch: the number of scan steps would depend on it."""
    reason = validation_reason(lambda x: tf.cumsum(x, 0),
                               [tf.TensorSpec([None, 3], tf.float32)], "Cumsum")
    assert reason and "Cumsum along dim 0 of unknown size" in reason, reason


def test_refuses_cumsum_along_an_axis_longer_than_4096():
    check_rejected(lambda x: tf.cumsum(x, 1), [rand((2, 4097))], "Cumsum",
                   "Cumsum along dim 1 of size 4097 > 4096")


def test_refuses_float64_finite_predicates():
    check_rejected(lambda x: tf.math.is_finite(x), [np.ones(3, np.float64)], "IsFinite",
                   "IsFinite with T=float64 is not supported")


# --- small models through TrtGraphConverterV2: one engine, the op inside -------------------------

W = rand((8, 8), seed=11) * 0.3


class OneHotModel(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None, 8], tf.float32, name="x")])
    def __call__(self, x):
        # argmax of the input (float32 in every precision: no float16 near-ties)
        hot = tf.one_hot(tf.argmax(x, axis=-1), 8, on_value=1.0, off_value=0.0)
        return {"y": tf.matmul(hot + tf.nn.relu(tf.matmul(x, W) + 0.1), W)}


class FiniteModel(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None, 8], tf.float32, name="x")])
    def __call__(self, x):
        clean = tf.where(tf.math.is_finite(x), x, tf.zeros_like(x))
        infs = tf.cast(tf.math.is_inf(x), tf.float32)
        return {"y": tf.matmul(clean, W) + infs * 2.0}


class BandModel(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None, 6, 8], tf.float32, name="x")])
    def __call__(self, x):
        q = tf.matmul(x, W)
        scores = tf.matmul(q, x, transpose_b=True) * 0.1
        return {"y": tf.matmul(tf.linalg.band_part(scores, -1, 0), x) + 1.0}


class CumsumModel(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None, 8], tf.float32, name="x")])
    def __call__(self, x):
        h = tf.tanh(tf.matmul(x, W))
        c = tf.cumsum(h, axis=1, exclusive=True) + tf.cumsum(h, axis=-1, reverse=True)
        return {"y": c * 0.5 + h}


class FillModel(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None, 8], tf.float32, name="x")])
    def __call__(self, x):
        ones = tf.ones([tf.shape(x)[0], 4])
        return {"y": tf.matmul(tf.concat([tf.nn.relu(x), ones], 1), rand((12, 8), seed=12))}


MODELS = {"OneHot": (OneHotModel, (3, 8)), "IsFinite": (FiniteModel, (4, 8)),
          "MatrixBandPart": (BandModel, (2, 6, 8)), "Cumsum": (CumsumModel, (3, 8)),
          "Fill": (FillModel, (5, 8))}


def _model_input(op, shape):
    x = models.batch(shape)
    if op == "IsFinite":  # the model also checks IsInf
        x[0, :4] = [np.inf, -np.inf, np.nan, 2.5]
    return x


@pytest.mark.parametrize("precision", ["FP32", "FP16"])
@pytest.mark.parametrize("op", sorted(MODELS))
def test_model_is_one_engine(tmp_path, op, precision):
    module, shape = MODELS[op]
    path = models.save_module(module(), str(tmp_path / op))
    x = _model_input(op, shape)
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=path, precision_mode=precision)
    fn = conv.convert()
    conv.build(lambda: iter([{"x": x}]))
    ref = tf.saved_model.load(path).signatures["serving_default"](x=tf.constant(x))["y"]
    rtol, atol = MODEL_TOLERANCES[precision]
    np.testing.assert_allclose(fn(x=tf.constant(x))["y"].numpy().astype(np.float64),
                               ref.numpy().astype(np.float64), rtol=rtol, atol=atol)
    ops = conv.engine_ops
    assert len(ops) == 1, sorted(ops)
    stats = dict(next(iter(ops.values())).stats)
    assert stats["engine"] > 0 and stats.get("native", 0) == 0, stats
    ours = {op, "IsInf"} if op == "IsFinite" else {op}
    unconverted = conv.segmentation.unconverted_reasons(conv.graph_info)
    assert not ours & set(unconverted), unconverted
    segmented = {conv.graph_info.nodes[n].op for s in conv.segmentation.segments
                 for n in s.nodes}
    assert ours <= segmented, f"{ours} not in the engine: {sorted(segmented)}"
