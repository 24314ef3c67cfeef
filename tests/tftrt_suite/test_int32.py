"""Port of TF-TRT's int32_test.py: int32 MatMul + BiasAdd, and a calibration case."""

import numpy as np
import tensorflow as tf

from tests.tftrt_suite import base


def matmul_bias(x):
    rng = np.random.RandomState(0)
    x = tf.matmul(x, base.const((4, 10), tf.int32, rng=rng))
    x = tf.nn.bias_add(x, base.const((10,), tf.int32, rng=rng))
    return tf.identity(x, name="output_0")


def test_exclude_unsupported_int32(tmp_path_factory):
    # MatMul and BiasAdd take float types only, as in TF-TRT: nothing converts.
    case = base.Case(matmul_bias, [[100, 4]], [], output_shapes=[[100, 10]],
                     dtype=tf.int32, grappler=False)
    base.run_v2(case, base.saved(tmp_path_factory, case, "int32"))


def test_calibration_int32_support(tmp_path_factory):
    case = base.Case(lambda x: tf.identity(tf.transpose(x, [0, 3, 2, 1]), name="output_0"),
                     [[3, 4, 5, 6]], ["TRTEngineOp_000"], dtype=tf.int32,
                     conversion=dict(precision_mode="INT8", use_calibration=True))
    base.run_v2(case, base.saved(tmp_path_factory, case, "int32_calib"))
