"""Port of TF-TRT's dynamic_input_shapes_test.py: batch, height and width all change between
runs of one engine op (conv, bias, relu, conv, bias), up to ten cached engines."""

import numpy as np
import tensorflow as tf

from tests.tftrt_suite import base


def two_convs(x):
    rng = np.random.RandomState(0)
    x = tf.nn.conv2d(x, tf.constant(np.ones([3, 3, 1, 8]), tf.float32, name="weights1"),
                     1, "SAME", name="conv")
    x = tf.nn.relu(tf.nn.bias_add(x, tf.constant(rng.randn(8), tf.float32)))
    x = tf.nn.conv2d(x, tf.constant(np.ones([3, 3, 8, 1]), tf.float32, name="weights2"),
                     1, "SAME", name="conv")
    x = tf.nn.bias_add(x, tf.constant(rng.randn(1), tf.float32))
    return tf.identity(x, name="output")


def test_dynamic_input_shapes(tmp_path_factory):
    # TF-TRT's list, its 224-pixel images made smaller for this machine.
    shapes = [[[1, 5, 5, 1]], [[10, 5, 5, 1]], [[3, 5, 5, 1]], [[1, 5, 5, 1]],
              [[1, 3, 1, 1]], [[2, 9, 9, 1]], [[1, 48, 48, 1]], [[1, 32, 48, 1]]]
    case = base.Case(two_convs, shapes[0], ["TRTEngineOp_000"], output_shapes=shapes[0],
                     input_masks=[[False, False, False, True]], extra_inputs=shapes[1:],
                     extra_outputs=shapes[1:], conversion=dict(maximum_cached_engines=10),
                     grappler=False, rtol=1e-3, atol=1e-3)
    conv = base.run_v2(case, base.saved(tmp_path_factory, case, "dynamic_input_shapes"))
    (op,) = conv.engine_ops.values()
    assert op.stats["builds"] == 7  # one engine per distinct shape; [1, 5, 5, 1] came back
    assert len(op.cache) == 7


def test_dynamic_input_shapes_with_profiles(tmp_path_factory):
    """TF-TRT's dynamic-shape run: one engine whose profiles (one per distinct input shape,
    ImplicitBatchModeCompatible) serve all eight calls; saved and loaded, nothing rebuilt."""
    shapes = [[[1, 5, 5, 1]], [[10, 5, 5, 1]], [[3, 5, 5, 1]], [[1, 5, 5, 1]],
              [[1, 3, 1, 1]], [[2, 9, 9, 1]], [[1, 48, 48, 1]], [[1, 32, 48, 1]]]
    case = base.Case(two_convs, shapes[0], ["TRTEngineOp_000"], output_shapes=shapes[0],
                     input_masks=[[False, False, False, True]], extra_inputs=shapes[1:],
                     extra_outputs=shapes[1:], conversion=dict(maximum_cached_engines=10),
                     grappler=False, rtol=1e-3, atol=1e-3)
    conv, ops = base.run_v2_dynamic(
        case, base.saved(tmp_path_factory, case, "dynamic_input_shapes_profiles"),
        str(tmp_path_factory.mktemp("tftrt_suite") / "dynamic_input_shapes_out"),
        profiles={"TRTEngineOp_000": 7})
    (op,) = conv.engine_ops.values()
    assert op.stats["tuned_builds"] == 7  # each profile's opt shape (its own shape) is tuned
