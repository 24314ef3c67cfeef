"""Port of TF-TRT's vgg_block_nchw_test.py: the VGG block in NCHW (the TF reference runs the
same math through NHWC kernels, which TF's CPU kernels have without oneDNN)."""

import functools

import numpy as np
import tensorflow as tf

from tests.tftrt_suite import base


def vgg_block_nchw(x, reference=False):
    rng = np.random.RandomState(0)
    if reference:  # the NHWC block between transposes
        x = tf.transpose(x, [0, 2, 3, 1])
    fmt = "NHWC" if reference else "NCHW"
    x, _, _ = tf.compat.v1.nn.fused_batch_norm(x, [1.0, 1.0], [0.0, 0.0], mean=[0.5, 0.5],
                                                variance=[1.0, 1.0], data_format=fmt,
                                                is_training=False)
    w = tf.constant(rng.randn(1, 1, 2, 6), tf.float32, name="weights")
    strides = [1, 2, 2, 1] if reference else [1, 1, 2, 2]
    conv = tf.nn.conv2d(x, w, strides=strides, padding="SAME", data_format=fmt, name="conv")
    t = tf.nn.bias_add(conv, tf.constant(rng.randn(6), tf.float32, name="bias"),
                       data_format=fmt, name="biasAdd")
    idty = tf.identity(tf.nn.relu(t, "relu"), "ID")
    window = [1, 2, 2, 1] if reference else [1, 1, 2, 2]
    v = tf.nn.max_pool2d(idty, window, window, "VALID", data_format=fmt, name="max_pool")
    if reference:
        v = tf.transpose(v, [0, 3, 1, 2])
    return tf.squeeze(v, name="output_0")


def test_vgg_block_nchw(tmp_path_factory):
    case = base.Case(vgg_block_nchw, [[5, 2, 8, 8]], ["TRTEngineOp_000"],
                     output_shapes=[[5, 6, 2, 2]],
                     reference_fn=functools.partial(vgg_block_nchw, reference=True))
    base.run_v2(case, base.saved(tmp_path_factory, case, "vgg_block_nchw"))
