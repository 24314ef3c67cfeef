"""Port of TF-TRT's concatenation_test.py: broadcast binary ops with weights, concatenated."""

import numpy as np
import tensorflow as tf

from tests.tftrt_suite import base


def graph(x):
    rng = np.random.RandomState(0)
    c = lambda *s: base.const(s, rng=rng)  # noqa: E731
    r = [x / c(3, 1, 1), c(3, 1, 1) / x, c(1, 3, 1) + x, x * c(1, 3, 1), x - c(3, 1, 1),
         c(3, 1, 1) - x, x - c(3, 1), c(3, 1) - x, tf.maximum(x, c(3, 1, 1)),
         tf.minimum(c(3, 1), x), x * c(3), c(1) * x]
    concat1 = tf.concat(r[:6], axis=-1)
    concat2 = tf.concat(r[6:], axis=3)
    return tf.reshape(tf.concat([concat1, concat2], axis=-1), [2, -1], name="output_0")


def test_concatenation(tmp_path_factory):
    case = base.Case(graph, [[2, 3, 3, 1]], ["TRTEngineOp_0"], output_shapes=[[2, 126]],
                     rtol=1e-4, atol=1e-4)
    base.run_v2(case, base.saved(tmp_path_factory, case, "concatenation"))
