"""converters/array.py: reshape, slicing, concat/split, pad, gather, fill, shape queries vs TF."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tftrt import lowering
from tftrt.converters import registry
from tftrt.converters.slicing import strided_slice_plan
from tests.converters.harness import (assert_close, check_op, check_rejected, lower,
                                      run_engine, run_onnxruntime, trace, validation_reason)
from tests.integration import models

F32, F16, I32, I64, BOOL = np.float32, np.float16, np.int32, np.int64, np.bool_
DTYPES = [F32, F16, I32, BOOL]


def rand(shape, dtype=F32, seed=0):
    rng = np.random.default_rng(seed)
    if dtype == BOOL:
        return rng.integers(0, 2, size=shape).astype(bool)
    if np.dtype(dtype).kind in "iu":
        return rng.integers(-9, 10, size=shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


def x234(dtype=F32):
    return rand((2, 3, 4), dtype)


def check_dynamic(fn, inputs, **kwargs):
    """check_op with a None batch, then the same segment network at another batch size (6)
    against TF: a batch size hard-coded into the network would fail here."""
    low = check_op(fn, inputs, dynamic_batch=True, **kwargs)
    other = [np.concatenate([x] * 3)[:6] if np.ndim(x) else x for x in inputs]
    expected = [np.asarray(t) for t in tf.nest.flatten(fn(*[tf.constant(x) for x in other]))]
    assert_close(run_onnxruntime(low.net.model, other), expected, 1e-4, 1e-5, "batch 6")
    return low


def check(fn, inputs, dynamic=False, **kwargs):
    return check_dynamic(fn, inputs, **kwargs) if dynamic else check_op(fn, inputs, **kwargs)


def rejected_dynamic(fn, inputs, op_type, reason_contains):
    """check_rejected, traced with a None batch dim (validators that look at unknown dims)."""
    _, info = trace(fn, inputs, dynamic_batch=True)
    node = next(n for n in info.graph_def.node if n.op == op_type)
    reason = registry.validate_node(node, lowering.ValidationContext(info))
    assert reason and reason_contains.lower() in reason.lower(), reason


# --- reshape family ------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [[6, 4], [-1], [2, -1, 2], [4, 3, 2], [1, 24, 1]], ids=str)
def test_reshape_const(shape):
    check_op(lambda x: tf.reshape(x, shape), [x234()], expect_tf_ops=["Reshape"])


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_reshape_dtypes(dtype):
    check_op(lambda x: tf.reshape(x, [2, 12]), [x234(dtype)], expect_tf_ops=["Reshape"])


@pytest.mark.parametrize("case", ["minus_one", "shape_of_self", "flatten", "dim_moved",
                                  "other_tensor_batch"])
def test_reshape_dynamic_batch(case):
    fns = {
        "minus_one": lambda x, y: tf.reshape(x, [-1, 12]),
        "shape_of_self": lambda x, y: tf.reshape(x, [tf.shape(x)[0], 3, 2, 2]),
        "flatten": lambda x, y: keras.layers.Flatten()(x),
        # the batch dim moves: Shape + Gather at run time
        "dim_moved": lambda x, y: tf.reshape(x, [3, tf.shape(x)[0], 4]),
        # another tensor's batch dim, the only unknown entry: becomes -1
        "other_tensor_batch": lambda x, y: tf.reshape(x, [tf.shape(y)[0], 12]),
    }
    check_dynamic(fns[case], [x234(), rand((2, 5))], expect_tf_ops=["Reshape"])


@pytest.mark.parametrize("axis", [None, [2], [-1], [0, 2]], ids=str)
def test_squeeze(axis):
    x = rand((1, 3, 1))
    check_op(lambda t: tf.squeeze(t, axis), [x], expect_tf_ops=["Squeeze"])


def test_squeeze_dynamic_batch():
    check_dynamic(lambda t: tf.squeeze(t, [2]), [rand((2, 3, 1))],
                  expect_tf_ops=["Squeeze"])


@pytest.mark.parametrize("axis", [0, 1, 3, -1, -4])
def test_expand_dims(axis):
    check_dynamic(lambda t: tf.expand_dims(t, axis), [x234()],
                  expect_tf_ops=["ExpandDims"])


@pytest.mark.parametrize("perm", [[1, 0, 2], [2, 0, 1], [0, 2, 1]], ids=str)
@pytest.mark.parametrize("dynamic", [False, True])
def test_transpose(perm, dynamic):
    check(lambda t: tf.transpose(t, perm), [x234()], dynamic=dynamic,
          expect_tf_ops=["Transpose"])


def test_broadcast_to_and_reverse():
    x = rand((3, 1))
    check_op(lambda t: tf.broadcast_to(t, [2, 3, 4]), [x], expect_tf_ops=["BroadcastTo"])
    check_dynamic(lambda t: tf.reverse(t, [0, -1]), [x234()],
                  expect_tf_ops=["ReverseV2"])


def test_broadcast_to_a_shape_from_the_dynamic_batch():
    # A ViT's class token: broadcast_to(cls, [tf.shape(x)[0], 1, d]) before the tokens.
    cls = tf.constant(rand((1, 1, 4), seed=1))
    check_dynamic(lambda t: tf.concat([tf.broadcast_to(
        cls, tf.stack([tf.shape(t)[0], 1, 4])), t], axis=1), [x234()],
        expect_tf_ops=["BroadcastTo"])


# --- concat / split ------------------------------------------------------------------------------

@pytest.mark.parametrize("axis", [0, 1, -1])
@pytest.mark.parametrize("dynamic", [False, True])
def test_concat(axis, dynamic):
    a, b = x234(), rand((2, 3, 4), seed=1)
    check(lambda x, y: tf.concat([x, y, x], axis), [a, b], dynamic=dynamic,
          expect_tf_ops=["ConcatV2"])


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_concat_with_constant(dtype):
    c = rand((2, 3, 1), dtype, seed=2)
    check_op(lambda x: tf.concat([x, c], -1), [x234(dtype)], expect_tf_ops=["ConcatV2"])


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_pack_unpack(axis):
    a, b = rand((2, 3)), rand((2, 3), seed=1)
    check_op(lambda x, y: tf.stack([x, y, x], axis), [a, b], expect_tf_ops=["Pack"])
    check_op(lambda x: tf.unstack(x, axis=axis), [x234()], expect_tf_ops=["Unpack"])


def test_pack_unpack_dynamic_batch():
    a, b = rand((2, 3)), rand((2, 3), seed=1)
    check_dynamic(lambda x, y: tf.stack([x, y], 1), [a, b],
                  expect_tf_ops=["Pack"])
    check_dynamic(lambda x: tf.unstack(x, axis=2), [x234(I32)],
                  expect_tf_ops=["Unpack"])


@pytest.mark.parametrize("axis,num,dynamic", [(1, 3, False), (-1, 2, False), (2, 4, True),
                                              (0, 2, True)])
def test_split(axis, num, dynamic):
    x = rand((4, 3, 4))
    check(lambda t: tf.split(t, num, axis), [x], dynamic=dynamic,
          expect_tf_ops=["Split"])


@pytest.mark.parametrize("sizes,axis,dynamic", [([1, 2, 1], 2, False), ([1, -1, 1], -1, False),
                                                ([2, -1], 1, True), ([1, -1, 2], 0, True),
                                                ([-1, 1], 0, True), ([3, 1], 0, False)])
def test_split_v(sizes, axis, dynamic):
    x = rand((4, 3, 4))
    check(lambda t: tf.split(t, sizes, axis), [x], dynamic=dynamic,
          expect_tf_ops=["SplitV"])


# --- padding -------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [F32, F16, I32], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("dynamic", [False, True])
def test_pad(dtype, dynamic):
    p = [[0, 0], [1, 2], [2, 0]]
    check(lambda t: tf.pad(t, p), [x234(dtype)], dynamic=dynamic,
          expect_tf_ops=["Pad"])
    check(lambda t: tf.pad(t, p, constant_values=3), [x234(dtype)], dynamic=dynamic,
          expect_tf_ops=["PadV2"])


@pytest.mark.parametrize("mode", ["REFLECT", "SYMMETRIC"])
@pytest.mark.parametrize("dynamic", [False, True])
def test_mirror_pad(mode, dynamic):
    p = [[1, 1], [2, 1], [0, 3]] if mode == "SYMMETRIC" else [[1, 0], [2, 1], [0, 3]]
    check(lambda t: tf.pad(t, p, mode=mode), [x234()], dynamic=dynamic,
          expect_tf_ops=["MirrorPad"])


# --- slicing -------------------------------------------------------------------------------------

SLICES = {
    "range": lambda x: x[1:],
    "reverse": lambda x: x[:, ::-1],
    "reverse_partial": lambda x: x[:, :, 3:0:-2],
    "negative": lambda x: x[:, -3:-1],
    "shrink_last": lambda x: x[..., 0],
    "shrink_neg": lambda x: x[-1],
    "shrink_two": lambda x: x[1, :, -1],
    "new_axis": lambda x: x[:, tf.newaxis],
    "new_axis_ellipsis": lambda x: x[..., tf.newaxis, 1:3],
    "ellipsis_middle": lambda x: x[0, ..., ::2],
    "mixed": lambda x: x[::2, 1:3, tf.newaxis, ...],
    "beyond_bounds": lambda x: x[:, 1:100, -100:],
    "reverse_from_before_start": lambda x: x[:, -5::-1],  # TF: empty; ONNX alone: 1 element
    "all_masks": lambda x: x[tf.newaxis, -1, ..., ::-1],
}


@pytest.mark.parametrize("case", list(SLICES))
@pytest.mark.parametrize("dynamic", [False, True])
def test_strided_slice(case, dynamic):
    check(SLICES[case], [x234()], dynamic=dynamic, expect_tf_ops=["StridedSlice"])


@pytest.mark.parametrize("dtype", [F16, I32, BOOL], ids=lambda d: np.dtype(d).name)
def test_strided_slice_dtypes(dtype):
    check_op(lambda x: x[:, 1:, 0], [x234(dtype)], expect_tf_ops=["StridedSlice"])


@pytest.mark.parametrize("begin,size", [([0, 1, 1], [2, 2, 3]), ([1, 0, 2], [-1, -1, 2])],
                         ids=str)
@pytest.mark.parametrize("dynamic", [False, True])
def test_slice(begin, size, dynamic):
    check(lambda x: tf.slice(x, begin, size), [x234()], dynamic=dynamic,
          expect_tf_ops=["Slice"])


@pytest.mark.parametrize("axis", [0, 1, -1])
@pytest.mark.parametrize("index_dtype", [I32, I64], ids=lambda d: np.dtype(d).name)
def test_gather(axis, index_dtype):
    idx = np.array([[2, 0], [1, 1]], index_dtype)
    check_op(lambda x, i: tf.gather(x, i, axis=axis), [rand((3, 3, 4)), idx],
             expect_tf_ops=["GatherV2"])


def test_gather_weights_and_dynamic_batch():
    table = rand((10, 4), seed=3)  # an embedding table: params are weights
    ids = np.array([[1, 9, 0], [3, 3, 7]], I32)
    check_dynamic(lambda i: tf.gather(table, i), [ids],
                  expect_tf_ops=["GatherV2"])
    check_dynamic(lambda x: tf.gather(x, [2, 0], axis=2), [x234()],
                  expect_tf_ops=["GatherV2"])


@pytest.mark.parametrize("multiples", [[2, 1, 3], [1, 2, 1]], ids=str)
@pytest.mark.parametrize("dynamic", [False, True])
def test_tile(multiples, dynamic):
    check(lambda x: tf.tile(x, multiples), [x234()], dynamic=dynamic,
          expect_tf_ops=["Tile"])


# --- creation and shape queries ------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [F32, F16, I32, BOOL], ids=lambda d: np.dtype(d).name)
def test_fill(dtype):
    v = rand((), dtype, seed=4)
    check_op(lambda t: tf.fill([2, 3], t), [v], expect_tf_ops=["Fill"])


@pytest.mark.parametrize("out_type", [tf.int32, tf.int64], ids=str)
def test_fill_with_the_shape_of_a_dynamic_batch_tensor(out_type):
    """tf.fill(tf.shape(x), 1) (how ones_like of a dynamic-batch tensor traces, e.g. in
    Keras' masked attention) converts, and the batch stays dynamic."""
    check_dynamic(lambda x: tf.fill(tf.shape(x, out_type=out_type), 1.5) * x, [x234()],
                  expect_tf_ops=["Fill", "Shape"])


def test_fill_with_dims_computed_from_values_is_rejected():
    reason = check_rejected(lambda d: tf.fill(d * 2, 1.0), [np.array([2, 3], np.int32)],
                            "Fill", "Shape of a tensor")
    assert "computed at run time" in reason


def test_fill_with_the_shape_of_an_unknown_rank_tensor_is_rejected():
    """tf.fill(tf.shape(x), v) for x of unknown rank has an output of unknown rank, which a
    segment output cannot have (convert() failed in ONNX's checker): Fill stays native."""
    reason = validation_reason(lambda x: tf.fill(tf.shape(x * 1.0), 2.0),
                               [tf.TensorSpec(None, tf.float32)], "Fill")
    assert reason and "unknown length" in reason, reason


class UnknownRankFill(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec(None, tf.float32, name="x")])
    def __call__(self, x):
        return {"y": tf.fill(tf.shape(x * 1.0), 2.0) * x + 1.0}


def test_unknown_rank_fill_model_converts_and_matches(tmp_path):
    """The model of the test above through convert(): it raised ONNX's ValidationError."""
    from tftrt import trt_convert as trt
    path = models.save_module(UnknownRankFill(), str(tmp_path / "fill"))
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=path, minimum_segment_size=1)
    fn = conv.convert()
    assert "Fill" in conv.segmentation.unconverted_reasons(conv.graph_info)
    x = np.random.RandomState(0).standard_normal((2, 3)).astype(np.float32)
    ref = tf.saved_model.load(path).signatures["serving_default"](x=tf.constant(x))["y"]
    np.testing.assert_allclose(fn(x=tf.constant(x))["y"].numpy(), ref.numpy(), rtol=1e-6)


class Affine(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="x")])
    def __call__(self, x):
        return {"y": tf.tanh(x * 2.0 + 1.0)}


def test_segment_network_onnx_refuses_stays_native(tmp_path, monkeypatch):
    """A segment network ONNX's checker refuses (a converter's mistake) is dropped with its
    reason; convert() goes on and the model answers natively."""
    import onnx
    from tftrt import trt_convert as trt

    def refuse(model):
        raise onnx.checker.ValidationError("Field 'shape' of 'type' is required")
    monkeypatch.setattr(onnx.checker, "check_model", refuse)
    path = models.save_module(Affine(), str(tmp_path / "affine"))
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=path, minimum_segment_size=1)
    fn = conv.convert()
    assert not conv.engine_ops
    reasons = " ".join(r for rs in conv.segmentation.unconverted_reasons(conv.graph_info)
                       .values() for r in rs)
    assert "is not valid ONNX" in reasons, reasons
    x = np.random.RandomState(0).standard_normal((2, 3)).astype(np.float32)
    np.testing.assert_allclose(fn(x=tf.constant(x))["y"].numpy(), np.tanh(2.0 * x + 1.0),
                               rtol=1e-6)


@pytest.mark.parametrize("dtype", [F32, I32, BOOL], ids=lambda d: np.dtype(d).name)
def test_zeros_ones_like(dtype):
    check_dynamic(lambda x: (tf.zeros_like(x), tf.ones_like(x)), [x234(dtype)],
                  expect_tf_ops=["ZerosLike", "OnesLike"])


@pytest.mark.parametrize("out_type", [tf.int32, tf.int64], ids=str)
def test_shape_size_dynamic(out_type):
    check_dynamic(lambda x: (tf.shape(x, out_type=out_type), tf.size(x, out_type=out_type)),
                  [x234()], expect_tf_ops=["Shape", "Size"])


def test_shape_size_rank_static():
    # tf.shape() and Grappler would fold these to constants; the converters do the same
    check_op(lambda x: (tf.raw_ops.Shape(input=x), tf.raw_ops.Size(input=x),
                        tf.raw_ops.Rank(input=x)), [x234()], grappler=False,
             expect_tf_ops=["Shape", "Size", "Rank"])


def test_shape_feeds_computation():
    # shape arithmetic inside a segment: batch size of a dynamic input, as float
    check_dynamic(lambda x: x / tf.cast(tf.shape(x)[0], tf.float32), [x234()],
                  expect_tf_ops=["Shape", "StridedSlice", "Cast"])


@pytest.mark.parametrize("args,dtype", [((0, 5, 1), tf.int32), ((2, -7, -3), tf.int64),
                                        ((0.5, 2.0, 0.25), tf.float32)], ids=str)
def test_range(args, dtype):
    x = np.zeros((), dtype.as_numpy_dtype)
    check_op(lambda t: t + tf.range(*args, dtype=dtype), [x], grappler=False,
             expect_tf_ops=["Range"])


# --- rejections ----------------------------------------------------------------------------------

def test_tile_to_the_batch_of_another_tensor():
    """A class token tiled to the batch (ViT: tf.tile(cls, [tf.shape(x)[0], 1, 1]), then
    concatenated before the tokens), with a constant multiple beside the run-time one; the
    batch dynamic."""
    cls = rand((1, 1, 4), seed=7)
    check_dynamic(lambda x: tf.concat([tf.tile(cls, [tf.shape(x)[0], 1, 1]), x], axis=1),
                  [x234()], expect_tf_ops=["Tile"])
    check_dynamic(lambda x: tf.concat([tf.tile(cls * 2.0, [tf.shape(x)[0] // 2, 2, 1]),
                                       x[::2] + x[1::2]], axis=1), [x234()],
                  expect_tf_ops=["Tile"])
    assert "not 1" in validation_reason(
        lambda x: tf.tile(x, [tf.shape(x)[0], 1, 1]),
        [tf.TensorSpec([None, 3, 4])], "Tile")


def test_rejects_runtime_shape_arguments():
    x = x234()
    check_rejected(lambda t, s: tf.reshape(t, s), [x, np.array([6, 4], I32)], "Reshape",
                   "computed at run time")
    check_rejected(lambda t, m: tf.tile(t, m), [x, np.array([1, 2, 1], I32)], "Tile",
                   "computed at run time")
    check_rejected(lambda t, b: tf.strided_slice(t, b, [2, 3, 4]), [x, np.zeros(3, I32)],
                   "StridedSlice", "must be a constant")
    check_rejected(lambda n: tf.range(n), [np.int32(4)], "Range",
                   "computed at run time from values")


def test_rejects_reshape_zero_dim():
    check_rejected(lambda t: tf.reshape(t, [0, 5]), [np.zeros((0, 5), F32)], "Reshape",
                   "zero-sized")


def test_rejects_dynamic_cases():
    rejected_dynamic(lambda t: tf.squeeze(t), [rand((2, 1, 3))], "Squeeze", "unknown dims")


def test_reshape_to_another_tensors_dims_next_to_minus_one():
    # Read from the other tensor inside the segment (Shape + Gather), not rejected.
    check_dynamic(lambda t, u: tf.reshape(t, [tf.shape(u)[0], -1, 3]),
                  [rand((2, 6)), rand((2, 2))], expect_tf_ops=["Reshape"])


def test_rejects_gather_batch_dims_and_where_and_mirror_pad():
    x, idx = rand((2, 3)), np.array([[0, 1], [2, 2]], I32)
    check_rejected(lambda t, i: tf.gather(t, i, batch_dims=1, axis=1), [x, idx], "GatherV2",
                   "batch_dims=1")
    check_rejected(lambda t: tf.where(t > 0), [x], "Where", "data-dependent")
    # constant indices outside [0, n): TF's CPU kernel raises, ONNX would count -1 from the end
    check_rejected(lambda t: tf.gather(t, [0, -1], axis=1), [x], "GatherV2", "outside [0, 3)")
    check_rejected(lambda t: tf.gather(t, [3], axis=1), [x], "GatherV2", "outside [0, 3)")
    check_rejected(lambda t: tf.pad(t, [[0, 0], [3, 0]], mode="REFLECT"), [x], "MirrorPad",
                   "too large")


@pytest.mark.parametrize("kwargs,reason", [
    (dict(begin=[0, 0], end=[1, 1], strides=[1, 1], ellipsis_mask=3), "ellipsis_mask"),
    (dict(begin=[0], end=[1], strides=[-1], shrink_axis_mask=1), "shrink_axis_mask"),
    (dict(begin=[0], end=[1], strides=[0]), "contain 0"),
    (dict(begin=[0, 0, 0], end=[1, 1, 1], strides=[1, 1, 1]), "dimensions of a rank-2"),
    (dict(begin=[0, -2], end=[1, 0], strides=[1, -1]), "negative stride -1 on unknown dim"),
], ids=["two_ellipses", "shrink_negative_stride", "zero_stride", "too_many_indices",
        "negative_begin_and_stride_on_unknown_dim"])
def test_strided_slice_plan_rejects(kwargs, reason):
    # TF's own shape inference refuses these at trace time; the validator still says why
    got = strided_slice_plan((3, None), **kwargs)
    assert isinstance(got, str) and reason in got, got


def test_reshape_of_a_computed_shape_uses_the_static_result():
    # Keras Dense on 3-D inputs reshapes to [prod(batch, seq), features]: the product is
    # computed at run time, TF's static result [None, 4] has one unknown dim.
    x = rand((2, 3, 4))
    low = check_dynamic(lambda t: tf.reshape(t, tf.stack([tf.reduce_prod(tf.shape(t)[:2]), 4])),
                        [x], expect_tf_ops=["Reshape", "Prod"])
    assert "Reshape" in low.onnx_ops


def test_keras_dense_on_sequences_converts():
    keras.utils.set_random_seed(0)
    dense = keras.layers.Dense(5, activation="gelu")
    check_dynamic(lambda t: dense(t), [rand((2, 3, 4))], expect_tf_ops=["Reshape"], rtol=1e-4,
                  atol=1e-5)


@pytest.mark.parametrize("begin,size", [([0, 3], [-1, 4]), ([1, 0], [2, 5])], ids=str)
def test_slice_rejects_running_past_a_known_dimension(begin, size):
    """TF raises; ONNX Slice clamps, and the engine answered 2 columns for [-1, 4] from
    column 3 of 5 (helper hunt, 2026-12-02). Left native."""
    check_rejected(lambda x: tf.slice(x * 2.0, begin, size), [np.ones((2, 5), np.float32)],
                   "Slice", "TensorFlow raises")


def test_slice_past_an_unknown_dimension_fails_the_engine_build():
    """A positive size on a dim unknown at conversion goes through a Gather of constant
    indices: the engine for a dim large enough answers as TF; one for a dim too small fails
    to build (TF raises there), where a Slice answered a shorter tensor (helper hunt,
    2026-12-05: [0, 0] size [3, -1] at batch 2 answered 2 rows)."""
    from tftrt.engine import EngineBuildError

    def fn(x):
        return tf.slice(x * 2.0, [1, 0], [2, -1])
    big = rand((4, 5))
    low = lower(fn, [big], dynamic_batch=True)
    assert "Gather" in [n.op_type for n in low.net.model.graph.node]
    assert_close(run_engine(low.net.model, [big])[0], fn(big).numpy(), 1e-6, 1e-6, "slice")
    with pytest.raises(EngineBuildError, match="out of range|outside"):
        run_engine(low.net.model, [rand((2, 5))])
    with pytest.raises(tf.errors.InvalidArgumentError):
        tf.function(fn)(tf.constant(rand((2, 5))))


def test_padv2_with_a_run_time_constant_value_is_left_native():
    """The engine's pad takes its value at build; such a segment failed on its first run
    (KeyError 'pads') and ran natively with its ops counted as converted (helper hunt,
    2026-12-05)."""
    check_rejected(lambda x: tf.pad(x, [[1, 1], [0, 2]], constant_values=tf.reduce_min(x)),
                   [rand((2, 3))], "PadV2", "computed at run time")


# --- gather_nd ------------------------------------------------------------------------------------

@pytest.mark.parametrize("params_shape,index_rows", [
    ((4, 3, 2), [[[1, 2], [3, 0]], [[0, 0], [2, 1]]]),   # K=2 of 3: rows of 2 values
    ((4, 3, 2), [[3, 2, 1], [0, 1, 0]]),                  # K=3: scalars
    ((5, 3), [[4], [0], [2]]),                            # K=1: whole rows
], ids=["k2", "k3", "k1"])
@pytest.mark.parametrize("index_dtype", [I32, I64], ids=lambda d: np.dtype(d).name)
def test_gather_nd(params_shape, index_rows, index_dtype):
    idx = np.array(index_rows, index_dtype)
    check_op(lambda x, i: tf.gather_nd(x, i), [rand(params_shape), idx],
             expect_tf_ops=["GatherNd"])


def test_gather_nd_dynamic_batch_and_batch_dims():
    """Rows (b, position) into [B, L, D] params with the batch dynamic, and tf.gather_nd's
    batch_dims=1."""
    x = rand((2, 5, 3), seed=4)
    rows = np.array([[1, 4], [0, 2]], I32)
    check_dynamic(lambda t, i: tf.gather_nd(t, i), [x, rows], expect_tf_ops=["GatherNd"])
    idx = np.array([[[1], [4]], [[0], [0]]], I32)
    check_op(lambda t, i: tf.gather_nd(t, i, batch_dims=1), [x, idx],  # Range: static batch
             expect_tf_ops=["GatherNd"])


def test_gather_nd_rows_outside_params_read_no_other_element():
    """(0, 5) into [4, 3] params merged to row 1's third column if taken as a linear index:
    TF's CPU kernel raises, its GPU kernel reads zeros. The engine's linear index for such a
    row is out of range: the numpy engine fails (tftrt runs the op natively then, TF
    raises), as for GatherV2's negative indices."""
    low = lower(lambda x, i: tf.gather_nd(x, i), [rand((4, 3)), np.array([[0, 1], [1, 1]], I32)])
    for bad in ([0, 5], [0, -1], [4, 0], [-1, 2], [2 ** 31 - 1, 0]):
        with pytest.raises(Exception, match="out of range|outside|index"):
            run_engine(low.net.model, [rand((4, 3)), np.array([[1, 1], bad], I32)])
    # a good row next to the bad ones still reads its element (the row's check is its own)
    x = rand((4, 3))
    out, = run_engine(low.net.model, [x, np.array([[3, 2], [0, 0]], I32)])
    np.testing.assert_array_equal(out, x[[3, 0], [2, 0]])


def test_rejects_gather_nd_unknown_dims_and_error_policy():
    assert "after the 1 indexed ones to be known" in validation_reason(
        lambda t, i: tf.gather_nd(t, i),
        [tf.TensorSpec([None, None, 3]), tf.TensorSpec([None, 1], tf.int32)], "GatherNd")
    assert validation_reason(  # the indexed dims may be known only at run time
        lambda t, i: tf.gather_nd(t, i),
        [tf.TensorSpec([None, None, 3]), tf.TensorSpec([None, 2], tf.int32)], "GatherNd") \
        is None
    assert "known last dim" in validation_reason(
        lambda t, i: tf.gather_nd(t, i),
        [tf.TensorSpec([None, 4, 3]), tf.TensorSpec([None, None], tf.int32)], "GatherNd")
    check_rejected(lambda t: tf.gather_nd(t, [[0, 3]]), [rand((2, 3))], "GatherNd",
                   "outside params' dims")
    check_rejected(lambda t, i: tf.raw_ops.GatherNd(params=t, indices=i,
                                                    bad_indices_policy="ERROR"),
                   [rand((2, 3)), np.array([[0, 1]], I32)], "GatherNd", "left to TensorFlow")


def test_range_to_a_run_time_dim_and_what_stays_native():
    spec = [tf.TensorSpec([None, None, 4])]
    assert validation_reason(lambda x: tf.range(tf.shape(x)[1]), spec, "Range") is None
    assert validation_reason(lambda x: tf.range(-2, tf.shape(x)[1], 3), spec, "Range") is None
    assert "start <= 0 and delta > 0" in validation_reason(
        lambda x: tf.range(2, tf.shape(x)[1]), spec, "Range")      # TF raises for L < 2
    assert "start <= 0 and delta > 0" in validation_reason(
        lambda x: tf.range(0, tf.shape(x)[1], -1), spec, "Range")
    assert "not a tensor's dim" in validation_reason(
        lambda x: tf.range(tf.shape(x)[1] - 1), spec, "Range")      # TF raises for L = 0
    assert "from values" in validation_reason(
        lambda x: tf.range(tf.cast(tf.reduce_max(x), tf.int32)), spec, "Range")
    assert "of floats" in validation_reason(
        lambda x: tf.range(0.0, tf.cast(tf.shape(x)[1], tf.float32)), spec, "Range")


def test_gather_nd_of_params_with_an_empty_dim():
    """params [4, 2, 0] merged to [-1, 0] took the 0 as "keep dim 1" (ONNX Reshape's
    default): the output was (0, 2) for TF's (0, 0), and onnxruntime refused the network;
    with index rows TF raises ("params is empty") where the engine answered an empty slice
    (review hunt, 2026-12-04). Params empty after the indexed dims stay native; a merged dim
    of 0 rows is 0, not "keep the dim"."""
    assert "left to TensorFlow" in validation_reason(
        lambda t, i: tf.gather_nd(t, i),
        [tf.TensorSpec([None, 2, 0]), tf.TensorSpec([None, 2], tf.int32)], "GatherNd")
    check_op(lambda t, i: tf.gather_nd(t, i), [np.zeros((0, 3, 2), F32),
                                               np.zeros((0, 2), I32)],
             expect_tf_ops=["GatherNd"])
    check_dynamic(lambda t, i: tf.gather_nd(t, i), [rand((2, 3, 2)), np.zeros((2, 0, 2), I32)],
                  expect_tf_ops=["GatherNd"])
