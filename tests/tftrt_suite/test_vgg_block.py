"""Port of TF-TRT's vgg_block_test.py: batch norm, 1x1 strided conv, bias, relu, max pool."""

import numpy as np
import tensorflow as tf

from tests.tftrt_suite import base


def vgg_block(x):
    rng = np.random.RandomState(0)
    x, _, _ = tf.compat.v1.nn.fused_batch_norm(x, [1.0, 1.0], [0.0, 0.0], mean=[0.5, 0.5],
                                                variance=[1.0, 1.0], is_training=False)
    w = tf.constant(rng.randn(1, 1, 2, 6), tf.float32, name="weights")
    conv = tf.nn.conv2d(x, w, strides=[1, 2, 2, 1], padding="SAME", name="conv")
    t = tf.nn.bias_add(conv, tf.constant(rng.randn(6), tf.float32, name="bias"),
                       name="biasAdd")
    idty = tf.identity(tf.nn.relu(t, "relu"), "ID")
    v = tf.nn.max_pool2d(idty, [1, 2, 2, 1], [1, 2, 2, 1], "VALID", name="max_pool")
    return tf.squeeze(v, name="output_0")


def test_vgg_block(tmp_path_factory):
    case = base.Case(vgg_block, [[5, 8, 8, 2]], ["TRTEngineOp_000"],
                     output_shapes=[[5, 2, 2, 6]])
    base.run_v2(case, base.saved(tmp_path_factory, case, "vgg_block"))
