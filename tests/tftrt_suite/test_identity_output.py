"""Port of TF-TRT's identity_output_test.py: one tensor returned three times via Identity."""

import tensorflow as tf

from tests.tftrt_suite import base


def graph(x):
    x1 = tf.exp(x) + x
    i = tf.identity(x1)
    return [tf.identity(x1, name="output_0"), tf.identity(x1, name="output_1"),
            tf.identity(i, name="output_2")]


def test_identity_output(tmp_path_factory):
    case = base.Case(graph, [[10, 32]], ["TRTEngineOp_000"], output_shapes=[[10, 32]] * 3)
    base.run_v2(case, base.saved(tmp_path_factory, case, "identity_output"))
