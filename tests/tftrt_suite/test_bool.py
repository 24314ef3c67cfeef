"""Port of TF-TRT's bool_test.py: logical ops on bool tensors in one engine."""

import tensorflow as tf

from tests.tftrt_suite import base


def graph(x1, x2):
    x = tf.logical_or(tf.logical_and(x1, x2), x2)
    return tf.identity(tf.logical_not(tf.not_equal(x, x2)), name="output_0")


def test_bool(tmp_path_factory):
    shape = [2, 8, 8, 3]
    case = base.Case(graph, [shape, shape], ["TRTEngineOp_000"], output_shapes=[shape],
                     dtype=tf.bool)
    base.run_v2(case, base.saved(tmp_path_factory, case, "bool"))
