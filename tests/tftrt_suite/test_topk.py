"""Port of TF-TRT's topk_test.py: TopKV2 with a constant k is an engine of its own."""

import pytest
import tensorflow as tf

from tests.tftrt_suite import base


def topk(x):
    values, indices = tf.math.top_k(x, tf.constant(5, tf.int32, name="Const"), name="TopK")
    return tf.identity(values, name="output_0"), tf.identity(indices, name="output_1")


def topk_reshape(x):
    values, indices = tf.math.top_k(x, tf.constant(5, tf.int32, name="Const"), name="TopK")
    indices = tf.reshape(indices, [20, 1, 5], name="Reshape")
    return tf.identity(values, name="output_0"), tf.identity(indices, name="output_1")


CASES = {
    "TopK": base.Case(topk, [[20, 30]], {"TRTEngineOp_0": ["Const", "TopK"]},
                      output_shapes=[[20, 5], [20, 5]]),
    "TopKOutputType": base.Case(
        topk_reshape, [[20, 30]], {"TRTEngineOp_0": ["Const", "TopK", "Reshape", "Reshape/shape"]},
        output_shapes=[[20, 5], [20, 1, 5]]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_case(name, tmp_path_factory):
    base.run_v2(CASES[name], base.saved(tmp_path_factory, CASES[name], name))
