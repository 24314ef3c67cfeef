"""Converters of converters/image.py: DepthToSpace, SpaceToDepth, CombinedNonMaxSuppression."""

import numpy as np
import pytest
import tensorflow as tf

from tests.converters import harness
from tests.converters.harness import check_op, check_rejected
from tftrt import lowering
from tftrt.converters import registry


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
