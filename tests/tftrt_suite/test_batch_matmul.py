"""Port of TF-TRT's batch_matmul_test.py: BatchMatMul of two tensors and with a weight."""

import numpy as np
import pytest
import tensorflow as tf

from tests.tftrt_suite import base


def two_tensors(a, b):
    x = tf.matmul(a, b, name="matmul")
    return tf.identity(tf.nn.relu(x, name="relu"), name="output_0")


def weight_broadcast(shape):
    def fn(x):
        k = base.const(shape, name="kernel", rng=np.random.RandomState(0))
        return tf.identity(tf.matmul(x, k, name="matmul"), name="output_0")
    return fn


CASES = {
    "TwoTensor": base.Case(two_tensors, [[4, 5, 8, 12], [4, 5, 12, 7]],
                           {"TRTEngineOp_0": ["matmul", "relu"]}, output_shapes=[[4, 5, 8, 7]]),
    "WeightBroadcast": base.Case(weight_broadcast((1, 5, 7)), [[12, 9, 5]],
                                 {"TRTEngineOp_0": ["matmul", "kernel"]},
                                 output_shapes=[[12, 9, 7]]),
    "WeightBroadcastDims2": base.Case(weight_broadcast((5, 7)), [[12, 9, 5]],
                                      {"TRTEngineOp_0": ["matmul", "kernel"]},
                                      output_shapes=[[12, 9, 7]]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_case(name, tmp_path_factory):
    base.run_v2(CASES[name], base.saved(tmp_path_factory, CASES[name], name))
