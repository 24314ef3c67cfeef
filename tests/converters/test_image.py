"""Converters of converters/image.py: DepthToSpace, SpaceToDepth, the resize family,
CombinedNonMaxSuppression."""

import numpy as np
import pytest
import tensorflow as tf

from tests.converters import harness
from tests.converters.harness import check_op, check_rejected
from tftrt import lowering
from tftrt.converters import registry
from tftrt.converters.image import tf_nearest_indices


def rand(*shape, dtype=np.float32, seed=0):
    r = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "i":
        return r.integers(-50, 50, shape).astype(dtype)
    return r.standard_normal(shape).astype(dtype)


@pytest.mark.parametrize("op,xs,bs,dtype", [
    ("DepthToSpace", (2, 3, 4, 8), 2, np.float32),
    ("DepthToSpace", (1, 2, 2, 18), 3, np.float32),
    ("DepthToSpace", (1, 2, 3, 8), 2, np.float16),
    ("SpaceToDepth", (2, 4, 6, 3), 2, np.float32),
    ("SpaceToDepth", (1, 6, 3, 2), 3, np.float16),
])
def test_depth_space_nhwc(op, xs, bs, dtype):
    fn = tf.nn.depth_to_space if op == "DepthToSpace" else tf.nn.space_to_depth
    check_op(lambda x: fn(x, bs), [rand(*xs, dtype=dtype)], dynamic_batch=True,
             expect_tf_ops=[op])


@pytest.mark.parametrize("op,xs", [("DepthToSpace", (2, 8, 3, 4)), ("SpaceToDepth", (1, 3, 4, 6))])
def test_depth_space_nchw(op, xs):
    """TF has no CPU kernel for NCHW: compare with the NHWC op between transposes."""
    fn = tf.nn.depth_to_space if op == "DepthToSpace" else tf.nn.space_to_depth
    x = rand(*xs)
    _, info = harness.trace(lambda x: fn(x, 2, data_format="NCHW"), [x])
    order = [n for n in info.topological_order()
             if info.nodes[n].op not in harness.BOUNDARY_OPS]
    ctx = lowering.ValidationContext(info)
    assert all(registry.validate_node(info.nodes[n], ctx) is None for n in order)
    net = lowering.lower_segment(info, "seg", order, info.inputs, info.outputs)
    ref = np.transpose(fn(np.transpose(x, (0, 2, 3, 1)), 2).numpy(), (0, 3, 1, 2))
    harness.assert_close(harness.run_onnxruntime(net.model, [x]), [ref], 0, 0, "onnxruntime")
    harness.assert_close(harness.run_engine(net.model, [x]), [ref], 0, 0, "engine")


def test_space_to_depth_rejects_int():
    check_rejected(lambda x: tf.nn.space_to_depth(x, 2), [rand(1, 4, 4, 2, dtype=np.int32)],
                   "SpaceToDepth", "int32")


def _boxes(b, n, seed=0):
    r = np.random.default_rng(seed)
    yx = r.uniform(-0.1, 0.9, (b, n, 1, 2))
    hw = r.uniform(0.05, 0.4, (b, n, 1, 2))
    return np.concatenate([yx, yx + hw], axis=-1).astype(np.float32)


@pytest.mark.parametrize("per_class,total,pad_per_class,clip", [
    (3, 6, False, True), (5, 20, False, False), (2, 50, True, True), (4, 40, False, True)])
def test_combined_nms(per_class, total, pad_per_class, clip):
    boxes = _boxes(2, 12)
    scores = np.random.default_rng(1).uniform(0, 1, (2, 12, 3)).astype(np.float32)
    check_op(lambda b, s: tf.image.combined_non_max_suppression(
        b, s, per_class, total, iou_threshold=0.3, score_threshold=0.2,
        pad_per_class=pad_per_class, clip_boxes=clip), [boxes, scores], dynamic_batch=True,
        expect_tf_ops=["CombinedNonMaxSuppression"])


def test_combined_nms_rejects_per_class_boxes():
    check_rejected(lambda b, s: tf.image.combined_non_max_suppression(b, s, 3, 6),
                   [np.tile(_boxes(1, 5), (1, 1, 2, 1)), rand(1, 5, 2)],
                   "CombinedNonMaxSuppression", "per-class boxes")


@pytest.mark.parametrize("per_class,iou,reason", [
    (0, 0.5, "max_output_size_per_class [0] is not positive"),
    (3, 1.5, "iou_threshold [1.5] is not in [0, 1]"),
    (3, -0.5, "iou_threshold [-0.5] is not in [0, 1]"),
    (3, float("nan"), "is not in [0, 1]")])
def test_combined_nms_leaves_values_tf_raises_for_to_tensorflow(per_class, iou, reason):
    """TF's kernel raises for these at every call; the engine answered them (zeros, or four
    boxes for an IoU threshold of 1.5: detection hunt, 2026-12-04). They stay native."""
    check_rejected(lambda b, s: tf.image.combined_non_max_suppression(
        b, s, per_class, 6, iou_threshold=iou), [_boxes(1, 5), rand(1, 5, 2)],
        "CombinedNonMaxSuppression", reason)
    with pytest.raises(tf.errors.InvalidArgumentError):
        tf.image.combined_non_max_suppression(_boxes(1, 5), rand(1, 5, 2), per_class, 6,
                                              iou_threshold=iou)


# --- resize -------------------------------------------------------------------------------------
RESIZE_FLAGS = [(False, False), (True, False), (False, True)]  # (align_corners, half_pixel)
RESIZE_SIZES = [((4, 6), (8, 12)),   # up x2
                ((9, 7), (4, 3)),    # down, non-integer ratios
                ((5, 6), (7, 11)),   # up, non-integer ratios
                ((6, 5), (1, 5))]    # a single output row; width kept


def _resize(op, size, align_corners, half_pixel):
    fn = tf.raw_ops.ResizeBilinear if op == "ResizeBilinear" else tf.raw_ops.ResizeNearestNeighbor
    return lambda x: fn(images=x, size=size, align_corners=align_corners,
                        half_pixel_centers=half_pixel)


@pytest.mark.parametrize("op", ["ResizeBilinear", "ResizeNearestNeighbor"])
@pytest.mark.parametrize("align_corners,half_pixel", RESIZE_FLAGS)
@pytest.mark.parametrize("in_hw,out_hw", RESIZE_SIZES)
def test_resize(op, align_corners, half_pixel, in_hw, out_hw):
    x = rand(2, *in_hw, 3)
    low = check_op(_resize(op, out_hw, align_corners, half_pixel), [x], dynamic_batch=True,
                   expect_tf_ops=[op])
    if op == "ResizeNearestNeighbor":  # picking pixels: exact
        harness.assert_close(harness.run_engine(low.net.model, [x]), low.tf_outputs, 0, 0,
                             "engine")


@pytest.mark.parametrize("op", ["ResizeBilinear", "ResizeNearestNeighbor"])
@pytest.mark.parametrize("align_corners,half_pixel", RESIZE_FLAGS)
@pytest.mark.parametrize("precision", ["FP32", "FP16"])
def test_resize_fp16(op, align_corners, half_pixel, precision):
    """float16 images: bilinear casts to float32 first (TF's output is float32), nearest keeps
    float16; under FP16 precision too."""
    x = rand(2, 5, 7, 4, dtype=np.float16)
    low = check_op(_resize(op, (8, 4), align_corners, half_pixel), [x], precision=precision,
                   dynamic_batch=True, expect_tf_ops=[op])
    want = np.float32 if op == "ResizeBilinear" else np.float16
    assert low.tf_outputs[0].dtype == want


@pytest.mark.parametrize("op,align_corners,half_pixel", [
    ("ResizeNearestNeighbor", False, True), ("ResizeBilinear", False, True),
    ("ResizeNearestNeighbor", False, False)])
def test_resize_size_from_the_input_shape(op, align_corners, half_pixel):
    """tf.shape(x)[1:3] * 2 on a dynamic batch (as Keras UpSampling2D builds it) converts."""
    fn = tf.raw_ops.ResizeBilinear if op == "ResizeBilinear" else tf.raw_ops.ResizeNearestNeighbor
    low = check_op(lambda x: fn(images=x, size=tf.shape(x)[1:3] * 2, align_corners=align_corners,
                                half_pixel_centers=half_pixel),
                   [rand(3, 4, 5, 2)], dynamic_batch=True, expect_tf_ops=[op, "Shape", "Mul"])
    assert "Resize" in low.onnx_ops


def test_resize_nearest_uses_tf_indices_where_onnx_rounds_differently():
    """14 -> 9 with half_pixel_centers: TF's float32 (x + 0.5) * 14/9 and ONNX's quotient
    pick different pixels at x = 4; the converter gathers TF's indices instead."""
    x = rand(2, 14, 9, 3)
    fn = _resize("ResizeNearestNeighbor", (9, 14), False, True)
    low = check_op(fn, [x], dynamic_batch=True, rtol=0, atol=0)
    assert "Resize" not in low.onnx_ops and "Gather" in low.onnx_ops
    # Where ONNX agrees, it stays one Resize.
    low = check_op(_resize("ResizeNearestNeighbor", (7, 18), False, True), [x], rtol=0, atol=0)
    assert low.onnx_ops.count("Resize") == 1 and "Gather" not in low.onnx_ops


@pytest.mark.parametrize("align_corners,half_pixel", RESIZE_FLAGS)
def test_tf_nearest_indices_match_tf(align_corners, half_pixel):
    """The converter's model of TF's nearest-neighbour indexing, against TF, for every pair of
    sizes up to 24."""
    for n_in in range(1, 25):
        img = np.arange(n_in, dtype=np.float32).reshape(1, n_in, 1, 1)
        for n_out in range(1, 25):
            got = tf.raw_ops.ResizeNearestNeighbor(
                images=img, size=[n_out, 1], align_corners=align_corners,
                half_pixel_centers=half_pixel).numpy().reshape(-1)
            np.testing.assert_array_equal(
                tf_nearest_indices(n_in, n_out, align_corners, half_pixel), got,
                err_msg=f"{n_in} -> {n_out}")


def test_resize_rejects():
    x = rand(1, 4, 4, 2)
    check_rejected(_resize("ResizeBilinear", (8, 8), True, True), [x], "ResizeBilinear",
                   "cannot both be true")
    check_rejected(lambda x: tf.raw_ops.ResizeBicubic(images=x, size=(8, 8),
                                                      half_pixel_centers=True),
                   [x], "ResizeBicubic", "1/1024")
    check_rejected(lambda x: tf.raw_ops.ResizeArea(images=x, size=(2, 2)), [x], "ResizeArea",
                   "not supported")


def test_resize_rejects_size_computed_at_run_time():
    """tf.shape(x)[1:3] * 2 with H and W unknown: the engine needs the size at conversion."""
    reason = harness.validation_reason(
        lambda x: tf.image.resize(x, tf.shape(x)[1:3] * 2),
        [tf.TensorSpec([None, None, None, 2], tf.float32)], "ResizeBilinear")
    assert reason and "known at conversion time" in reason


def test_keras_upsampling_and_resizing_one_engine(tmp_path):
    """Keras UpSampling2D (bilinear: ResizeBilinear; nearest: tf.repeat) and Resizing (bilinear
    and nearest) on a dynamic batch: one engine, which runs, and matches Keras."""
    keras = pytest.importorskip("keras")
    from tests.integration import models
    keras.utils.set_random_seed(0)
    inp = keras.Input((6, 8, 3))
    h = keras.layers.Conv2D(4, 3, padding="same")(inp)
    h = keras.layers.UpSampling2D(2, interpolation="bilinear")(h)
    h = keras.layers.UpSampling2D((1, 2), interpolation="nearest")(h)
    h = keras.layers.Resizing(9, 20, interpolation="nearest")(h)
    h = keras.layers.Resizing(5, 7)(h)
    path = models.save_keras(keras.Model(inp, keras.layers.Conv2D(2, 1)(h)), str(tmp_path / "m"))
    kinds = models.one_engine_layer_kinds(path, models.batch((3, 6, 8, 3)))
    assert kinds.count("resize") >= 2, kinds
