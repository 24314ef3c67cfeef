"""Port of TF-TRT's neighboring_engine_test.py and multi_connection_neighbor_engine_test.py:
engines that feed each other directly and through native ops (NCHW convolution)."""

import functools

import numpy as np
import pytest
import tensorflow as tf

from tests.tftrt_suite import base


def neighboring(x, reference=False):
    rng = np.random.RandomState(0)
    e = tf.constant(rng.normal(0.3, 0.05, [3, 2, 3, 4]), tf.float32, name="weights")
    conv = base.conv2d_nchw(x, e, padding="VALID", reference=reference, name="conv")
    b = tf.constant(rng.normal(1.0, 1.0, [1, 4, 1, 1]), tf.float32, name="bias")
    t = tf.multiply(conv, b, name="mul")
    e = base.incompatible(conv, name="incompatible")
    return tf.squeeze(tf.subtract(t, e, name="sub"), name="output_0")


def multi_connection(x, reference=False):
    rng = np.random.RandomState(0)
    e = tf.constant(rng.normal(0.05, 0.005, [3, 2, 3, 4]), tf.float32, name="weights")
    conv = base.conv2d_nchw(x, e, padding="VALID", reference=reference, name="conv")
    t = conv + tf.constant(rng.normal(2.0, 1.0, [1, 4, 1, 1]), tf.float32, name="bias")
    q = conv - tf.constant(rng.normal(5.0, 1.0, [1, 4, 1, 1]), tf.float32, name="bias")
    edge = base.incompatible(q)
    d = tf.constant(rng.normal(5.0, 1.0, [1, 4, 1, 1]), tf.float32, name="bias") + conv
    edge3 = base.incompatible(d)
    edge1 = base.incompatible(conv)
    t = t - edge1
    q = q + edge
    t = t + q
    t = t + d
    t = t - edge3
    return tf.squeeze(t, name="output_0")


CASES = {
    "Neighboring": base.Case(
        neighboring, [[2, 3, 7, 5]], output_shapes=[[2, 4, 5, 4]],
        reference_fn=functools.partial(neighboring, reference=True),
        expected={"TRTEngineOp_000": ["bias", "mul", "sub"],
                  "TRTEngineOp_001": ["weights", "conv"]}),
    "MultiConnection": base.Case(
        multi_connection, [[2, 3, 7, 5]], ["TRTEngineOp_000", "TRTEngineOp_001"],
        output_shapes=[[2, 4, 5, 4]],
        reference_fn=functools.partial(multi_connection, reference=True)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_case(name, tmp_path_factory):
    base.run_v2(CASES[name], base.saved(tmp_path_factory, CASES[name], name))
