"""Port of TF-TRT's cast_test.py: an FP16 Mul between Casts, then an FP32 Add, one engine."""

import numpy as np
import tensorflow as tf

from tests.tftrt_suite import base


def graph(x):
    rng = np.random.RandomState(0)
    xf = tf.cast(x, tf.float16) * base.const((1, 10), tf.float16, rng=rng)
    xf = tf.cast(xf, tf.float32) + base.const((1, 10), tf.float32, rng=rng)
    return tf.identity(xf, name="output_0")


def test_cast_int32_to_fp32(tmp_path_factory):
    case = base.Case(graph, [[1, 10]], ["TRTEngineOp_000"],
                     output_shapes=[[1, 10]], rtol=1e-3, atol=1e-3)
    conv = base.run_v2(case, base.saved(tmp_path_factory, case, "cast"))
    # TF-TRT lists the op types of its one engine: AddV2, Cast, Const, Mul.
    (seg,) = conv.segmentation.segments
    assert seg.op_histogram(conv.graph_info) == {"Cast": 2, "Const": 2, "AddV2": 1, "Mul": 1}
