"""Older spellings of ops that graphs from earlier TF versions still carry."""

import numpy as np
import tensorflow as tf

from tests.converters.harness import check_op

RNG = np.random.RandomState(0)


def test_bias_add_v1():
    x, b = RNG.randn(2, 3, 4).astype(np.float32), RNG.randn(4).astype(np.float32)
    check_op(lambda t: tf.raw_ops.BiasAddV1(value=t, bias=tf.constant(b)), [x],
             expect_tf_ops=["BiasAddV1"])


def test_batch_matmul_v3():
    a, b = RNG.randn(2, 3, 4).astype(np.float32), RNG.randn(2, 4, 5).astype(np.float32)
    check_op(lambda x, y: tf.raw_ops.BatchMatMulV3(x=x, y=y, Tout=tf.float32, adj_y=False),
             [a, b], expect_tf_ops=["BatchMatMulV3"])

