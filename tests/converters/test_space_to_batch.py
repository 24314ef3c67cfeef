"""converters/space_batch.py: SpaceToBatchND / BatchToSpaceND vs TF, alone and in the dilated
convolutions that trace to them (tf.nn.atrous_conv2d, Keras Conv2D / DepthwiseConv2D with a
dilation_rate), the latter through TrtGraphConverterV2 as one engine."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tftrt import lowering, trt_convert as trt
from tftrt.converters import registry
from tests.converters.harness import (BOUNDARY_OPS, assert_close, check_op, check_rejected,
                                      run_engine, run_onnxruntime, trace, validation_reason)
from tests.integration import models
from tests.tolerances import MODEL_TOLERANCES

BLOCK_OPS = ("SpaceToBatchND", "BatchToSpaceND")


def rand(shape, dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind in "iu":
        return rng.integers(-9, 10, size=shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


def check_dynamic(fn, x, other_batch, **kwargs):
    """check_op with a None batch, then the same segment network at ``other_batch`` in
    onnxruntime and in a fresh engine against TF: a batch hard-coded into it would fail."""
    low = check_op(fn, [x], dynamic_batch=True, **kwargs)
    other = rand((other_batch,) + x.shape[1:], x.dtype, seed=1)
    expected = [np.asarray(t) for t in tf.nest.flatten(fn(tf.constant(other)))]
    assert_close(run_onnxruntime(low.net.model, [other]), expected, 1e-4, 1e-5, "onnxruntime")
    assert_close(run_engine(low.net.model, [other]), expected, 1e-4, 1e-5, "engine")
    return low


# --- the ops alone -------------------------------------------------------------------------------

S2B_CASES = [  # input shape, block_shape, paddings
    ((2, 4, 6, 3), [2, 2], [[0, 0], [0, 0]]),
    ((2, 5, 6, 3), [2, 3], [[1, 0], [0, 0]]),
    ((1, 7, 7, 2), [3, 3], [[1, 1], [0, 2]]),
    ((3, 4, 4, 1), [1, 1], [[0, 0], [0, 0]]),
    ((2, 6, 5, 2), [2, 1], [[0, 0], [1, 2]]),
    ((2, 9, 4), [3], [[2, 1]]),                      # 1-D (atrous conv1d: N, W, C)
    ((2, 6, 4, 3), [2], [[1, 1]]),                   # one block dim, two remaining dims
    ((2, 4, 6), [2, 3], [[0, 0], [0, 0]]),           # no remaining dim
    ((1, 4, 2, 6, 2), [2, 2, 3], [[0, 0], [1, 1], [0, 0]]),  # 3 block dims (NDHWC)
]


@pytest.mark.parametrize("shape,block,pads", S2B_CASES, ids=str)
def test_space_to_batch(shape, block, pads):
    check_op(lambda x: tf.space_to_batch_nd(x, block, pads), [rand(shape)],
             expect_tf_ops=["SpaceToBatchND"])


B2S_CASES = [  # input shape, block_shape, crops
    ((4, 2, 3, 3), [2, 2], [[0, 0], [0, 0]]),
    ((12, 3, 2, 3), [2, 3], [[1, 0], [0, 2]]),
    ((9, 3, 3, 2), [3, 3], [[1, 1], [0, 2]]),
    ((6, 4, 4, 1), [2, 1], [[0, 1], [2, 1]]),
    ((6, 3, 4), [3], [[2, 1]]),                      # 1-D
    ((4, 3, 4, 3), [2], [[1, 1]]),                   # one block dim, two remaining dims
    ((6, 2, 2), [2, 3], [[0, 1], [1, 0]]),           # no remaining dim
    ((12, 2, 2, 2, 2), [2, 2, 3], [[0, 0], [1, 1], [0, 3]]),  # 3 block dims
]


@pytest.mark.parametrize("shape,block,crops", B2S_CASES, ids=str)
def test_batch_to_space(shape, block, crops):
    check_op(lambda x: tf.batch_to_space(x, block, crops), [rand(shape)],
             expect_tf_ops=["BatchToSpaceND"])


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.int32, np.int64],
                         ids=lambda d: np.dtype(d).name)
def test_dtypes_round_trip(dtype):
    def fn(x):
        y = tf.space_to_batch_nd(x, [2, 2], [[1, 1], [0, 2]])
        return tf.batch_to_space(y, [2, 2], [[0, 1], [1, 0]])
    check_op(fn, [rand((2, 4, 4, 3), dtype)], expect_tf_ops=list(BLOCK_OPS))


def test_space_to_batch_dynamic_batch():
    check_dynamic(lambda x: tf.space_to_batch_nd(x, [2, 3], [[1, 0], [0, 2]]),
                  rand((2, 5, 4, 3)), 5, expect_tf_ops=["SpaceToBatchND"])


def test_batch_to_space_dynamic_batch():
    check_dynamic(lambda x: tf.batch_to_space(x, [2, 3], [[1, 0], [0, 2]]),
                  rand((6, 3, 2, 3)), 18, expect_tf_ops=["BatchToSpaceND"])


@pytest.mark.parametrize("rate,padding", [(2, "SAME"), (3, "VALID"), (4, "SAME")], ids=str)
def test_atrous_conv2d_segment(rate, padding):
    w = rand((3, 3, 3, 4), seed=2)
    check_dynamic(lambda x: tf.nn.atrous_conv2d(x, tf.constant(w), rate, padding),
                  rand((2, 13, 11, 3)), 3, expect_tf_ops=["Conv2D"] + list(BLOCK_OPS))


# --- refusals ------------------------------------------------------------------------------------

@pytest.mark.parametrize("op_type", BLOCK_OPS)
def test_rejects_block_shape_computed_at_run_time(op_type):
    def fn(x, block):
        if op_type == "SpaceToBatchND":
            return tf.space_to_batch_nd(x, block, [[0, 0], [0, 0]])
        return tf.batch_to_space(x, block, [[0, 0], [0, 0]])
    check_rejected(fn, [rand((4, 4, 4, 2)), np.array([2, 2], np.int32)], op_type,
                   "input 1 of " + op_type + " must be a constant")


def test_rejects_paddings_computed_at_run_time():
    check_rejected(lambda x, p: tf.space_to_batch_nd(x, [2, 2], p),
                   [rand((1, 4, 4, 2)), np.zeros((2, 2), np.int32)], "SpaceToBatchND",
                   "input 2 of SpaceToBatchND must be a constant")


def test_rejects_several_unknown_dims():
    spec = [tf.TensorSpec([None, None, None, 3], tf.float32)]
    reason = validation_reason(lambda x: tf.space_to_batch_nd(x, [2, 2], [[0, 0], [0, 0]]),
                               spec, "SpaceToBatchND")
    assert reason and "more than one unknown dim" in reason, reason
    reason = validation_reason(lambda x: tf.batch_to_space(x, [2, 2], [[0, 0], [0, 0]]),
                               spec, "BatchToSpaceND")
    assert reason and "more than one unknown dim" in reason, reason


def test_rejects_crops_past_the_block_on_an_unknown_dim():
    """Crops larger than the block fit only some sizes of an unknown dim: TF raises for the
    others ("cropped_shape[0]=-1 must be non-negative"), where the engine's Slice would clamp
    to an empty tensor. Crops up to the block fit every size >= 1 and convert."""
    spec = [tf.TensorSpec([8, None, 4, 3], tf.float32)]
    reason = validation_reason(lambda x: tf.batch_to_space(x, [2, 2], [[3, 0], [0, 1]]),
                               spec, "BatchToSpaceND")
    assert reason and "exceed block 2 on dim 1" in reason, reason
    assert validation_reason(lambda x: tf.batch_to_space(x, [2, 2], [[1, 1], [0, 1]]),
                             spec, "BatchToSpaceND") is None


@pytest.mark.parametrize("op_type", BLOCK_OPS)
def test_one_unknown_spatial_dim(op_type):
    """A known batch and one unknown spatial dim: Reshape infers it (-1), the crop's end counts
    from the end; the segment matches TF at two sizes of that dim."""
    def fn(x):
        if op_type == "SpaceToBatchND":
            return tf.space_to_batch_nd(x, [2, 3], [[1, 1], [0, 2]])
        return tf.batch_to_space(x, [2, 3], [[1, 0], [0, 2]])
    batch = 2 if op_type == "SpaceToBatchND" else 12
    concrete, info = trace(fn, (), specs=[tf.TensorSpec([batch, None, 4, 3], tf.float32)])
    ctx = lowering.ValidationContext(info)
    order = [n for n in info.topological_order() if info.nodes[n].op not in BOUNDARY_OPS]
    assert op_type in [info.nodes[n].op for n in order]
    assert not [n for n in order if registry.validate_node(info.nodes[n], ctx)]
    net = lowering.lower_segment(info, "segment", order, info.inputs, info.outputs)
    for h in (4, 6):
        x = rand((batch, h, 4, 3), seed=h)
        expected = [concrete(tf.constant(x)).numpy()]
        assert_close(run_onnxruntime(net.model, [x]), expected, 1e-6, 1e-6, "onnxruntime")
        assert_close(run_engine(net.model, [x]), expected, 1e-6, 1e-6, "engine")


# --- whole models through TrtGraphConverterV2 ----------------------------------------------------

def _convert(path, x, precision):
    """Converts the SavedModel at ``path`` (default minimum_segment_size), builds it for ``x``,
    and checks its outputs against native TF; returns the converter."""
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=path, precision_mode=precision)
    fn = conv.convert()
    name = next(iter(fn.structured_input_signature[1]))
    conv.build(lambda: iter([{name: x}]))
    ref = tf.saved_model.load(path).signatures["serving_default"](**{name: tf.constant(x)})
    got = fn(**{name: tf.constant(x)})
    rtol, atol = MODEL_TOLERANCES[precision]
    for k in ref:
        np.testing.assert_allclose(got[k].numpy().astype(np.float64),
                                   ref[k].numpy().astype(np.float64), rtol=rtol, atol=atol,
                                   err_msg=k)
    return conv


def _one_engine(conv):
    """The whole model is one engine that ran, and no SpaceToBatchND / BatchToSpaceND stayed
    native (they are in the graph: the test exercises them)."""
    ops = conv.engine_ops
    assert len(ops) == 1, sorted(ops)
    op = next(iter(ops.values()))
    assert op.stats["engine"] > 0 and op.stats.get("native", 0) == 0, dict(op.stats)
    unconverted = conv.segmentation.unconverted_reasons(conv.graph_info)
    assert not set(BLOCK_OPS) & set(unconverted), unconverted
    segmented = [conv.graph_info.nodes[n].op for s in conv.segmentation.segments
                 for n in s.nodes]
    for op_type in BLOCK_OPS:
        assert op_type in segmented, f"{op_type} not in the engine: {sorted(set(segmented))}"


class Atrous(tf.Module):
    def __init__(self):
        self.w1 = tf.constant(rand((3, 3, 3, 8), seed=3) * 0.3)
        self.w2 = tf.constant(rand((3, 3, 8, 4), seed=4) * 0.3)

    @tf.function(input_signature=[tf.TensorSpec([None, 16, 16, 3], tf.float32, name="x")])
    def __call__(self, x):
        y = tf.nn.relu(tf.nn.atrous_conv2d(x, self.w1, 2, "SAME") + 0.1)
        return {"y": tf.nn.atrous_conv2d(y, self.w2, 3, "VALID")}


@pytest.mark.parametrize("precision", ["FP32", "FP16"])
def test_atrous_conv2d_model_is_one_engine(tmp_path, precision):
    path = models.save_module(Atrous(), str(tmp_path / "atrous"))
    _one_engine(_convert(path, models.batch((2, 16, 16, 3)), precision))


def _keras_dilated():
    keras.utils.set_random_seed(0)
    inp = keras.Input((20, 18, 3))
    y = keras.layers.Conv2D(8, 3, dilation_rate=2, padding="same", activation="relu")(inp)
    y = keras.layers.DepthwiseConv2D(3, dilation_rate=2, padding="same")(y)
    y = keras.layers.BatchNormalization()(y)
    y = keras.layers.ReLU()(y)
    y = keras.layers.Conv2D(6, 3, dilation_rate=(2, 3), padding="valid")(y)
    y = keras.layers.DepthwiseConv2D(3, dilation_rate=(3, 2), padding="same")(y)
    return keras.Model(inp, y)


@pytest.mark.parametrize("precision", ["FP32", "FP16"])
def test_keras_dilated_model_is_one_engine(tmp_path, precision):
    path = models.save_keras(_keras_dilated(), str(tmp_path / "keras"))
    conv = _convert(path, models.batch((3, 20, 18, 3)), precision)
    _one_engine(conv)
    ops = [n.op for n in conv.graph_info.graph_def.node]
    assert ops.count("SpaceToBatchND") == 4 and ops.count("BatchToSpaceND") == 4, ops


class RuntimeBlock(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 2], tf.float32, name="x"),
                                  tf.TensorSpec([2], tf.int32, name="block")])
    def __call__(self, x, block):
        s = tf.space_to_batch_nd(tf.nn.relu(x * 2.0), block, [[0, 0], [0, 0]])
        return {"y": tf.tanh(tf.batch_to_space(s * 3.0 + 1.0, block, [[0, 0], [0, 0]]))}


def test_block_shape_computed_at_run_time_stays_native_and_correct(tmp_path):
    path = models.save_module(RuntimeBlock(), str(tmp_path / "runtime_block"))
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=path, minimum_segment_size=1)
    fn = conv.convert()
    unconverted = conv.segmentation.unconverted_reasons(conv.graph_info)
    for op_type in BLOCK_OPS:
        reasons = " ".join(unconverted.get(op_type, {}))
        assert "must be a constant" in reasons, unconverted
    x, block = models.batch((2, 8, 8, 2)), np.array([2, 4], np.int32)
    conv.build(lambda: iter([{"x": x, "block": block}]))
    assert conv.engine_ops and all(op.stats["engine"] > 0 for op in conv.engine_ops.values())
    args = {"x": tf.constant(x), "block": tf.constant(block)}
    ref = tf.saved_model.load(path).signatures["serving_default"](**args)
    np.testing.assert_allclose(fn(**args)["y"].numpy(), ref["y"].numpy(), rtol=1e-5, atol=1e-6)
