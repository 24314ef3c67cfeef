"""Port of TF-TRT's memory_alignment_test.py: two 1x1 VALID convolutions."""

import numpy as np
import tensorflow as tf

from tests.tftrt_suite import base


def graph(x):
    rng = np.random.RandomState(0)
    e1 = base.const((1, 1, 3, 5), name="kernel_1", rng=rng)
    e2 = base.const((1, 1, 5, 10), name="kernel_2", rng=rng)
    conv = tf.nn.conv2d(x, e1, 1, "VALID", name="conv")
    return tf.squeeze(tf.nn.conv2d(conv, e2, 1, "VALID", name="conv_2"), name="output_0")


def test_memory_alignment(tmp_path_factory):
    case = base.Case(graph, [[2, 15, 15, 3]], ["TRTEngineOp_000"],
                     output_shapes=[[2, 15, 15, 10]])
    base.run_v2(case, base.saved(tmp_path_factory, case, "memory_alignment"))
