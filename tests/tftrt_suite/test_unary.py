"""Port of TF-TRT's unary_test.py: chains of unary ops and squeezes on two inputs and a
constant branch of another batch size, all in one engine (TF-TRT's dynamic-shape result)."""

import numpy as np
import tensorflow as tf

from tests.tftrt_suite import base


def unary(x1, x2):
    q = tf.abs(x1) + 1.0
    q = tf.math.log(tf.exp(q))
    q = tf.squeeze(q, axis=-2)
    q = tf.math.rsqrt(tf.sqrt(tf.abs(q) + 2.2))
    q = tf.squeeze(-q, axis=3)
    a = tf.math.reciprocal(tf.abs(q) + 3.0)

    # A constant branch whose leading dimension (5) is not the inputs' batch.
    x = tf.constant(np.random.RandomState(0).randn(5, 8, 12), tf.float32)
    q = tf.math.log(tf.exp(tf.abs(x) + 2.0))
    q = tf.math.rsqrt(tf.sqrt(tf.abs(q) + 2.1))
    b = tf.math.reciprocal(tf.abs(-q) + 4.0)

    q = tf.exp(tf.abs(x2) + 5.0)
    q = tf.squeeze(q, axis=[-1, -2, 3])
    q = tf.abs(tf.math.log(q)) + 5.1
    q = tf.reshape(q, [12, 5, 1, 1, 8, 1, 12])
    q = tf.sqrt(tf.squeeze(q, axis=[5, 2, 3]))
    q = tf.math.rsqrt(tf.abs(q) + 5.2)
    c = tf.math.reciprocal(tf.abs(-q) + 5.3)
    return tf.squeeze(a * b / c, name="output_0")


def test_unary(tmp_path_factory):
    case = base.Case(unary, [[12, 5, 8, 1, 1, 12], [12, 5, 8, 1, 12, 1, 1]],
                     ["TRTEngineOp_000"], output_shapes=[[12, 5, 8, 12]])
    base.run_v2(case, base.saved(tmp_path_factory, case, "unary"))
