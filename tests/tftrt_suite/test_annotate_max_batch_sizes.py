"""Port of TF-TRT's annotate_max_batch_sizes_test.py.

TF-TRT ran these static-engine (implicit batch) tests only: each batch-changing Reshape ended an
engine, so it built four, with the max batch sizes the ``_tftrt_op_max_batch_size`` attributes
gave. tftrt's engines are explicit batch: the reshapes convert and the graph is one engine
(docs/differences.md); the numerics are still TF's."""

import pytest
import tensorflow as tf
from tensorflow.core.framework import attr_value_pb2

from tests.tftrt_suite import base

SHAPES = [[1, 512, 1, 1], [64, 2, 2, 2], [32, 4, 2, 2], [16, 8, 2, 2]]


def _max_batch(i):
    attr = attr_value_pb2.AttrValue(i=SHAPES[i][0])
    return tf.compat.v1.get_default_graph()._attr_scope({"_tftrt_op_max_batch_size": attr})


def annotated(inp):
    t = tf.reshape(inp * 2.0, [-1] + SHAPES[1][1:])
    with _max_batch(1):
        t = t + 3.0
    t = tf.reshape(t, [-1] + SHAPES[2][1:])
    with _max_batch(2):
        t = t * 4.0
    t = tf.reshape(t, [-1] + SHAPES[3][1:])
    with _max_batch(3):
        t += t + 5.0
    return tf.identity(t, name="output_0")


def static_batch(inp):
    t = tf.reshape(inp * 2.0, SHAPES[1]) + 3.0
    t = tf.reshape(t, SHAPES[2]) * 4.0
    t = tf.reshape(t, SHAPES[3])
    t += t + 5.0
    return tf.identity(t, name="output_0")


CASES = {
    "AnnotateMaxBatchSizes": base.Case(annotated, [SHAPES[0]], ["TRTEngineOp_000"],
                                       output_shapes=[SHAPES[3]]),
    # the fixed reshapes need the batch TF-TRT fed (1)
    "StaticBatchSize": base.Case(static_batch, [SHAPES[0]], ["TRTEngineOp_000"],
                                 output_shapes=[SHAPES[3]], input_masks=[[True] * 4]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_case(name, tmp_path_factory):
    base.run_v2(CASES[name], base.saved(tmp_path_factory, CASES[name], name))
