"""Port of TF-TRT's biasadd_matmul_test.py: MatMul (transposed operands) and BiasAdd of rank
2 to 5 in NHWC and NCHW, all in one engine between native ops."""

import numpy as np
import tensorflow as tf

from tests.tftrt_suite import base


def graph(x):
    rng = np.random.RandomState(0)
    c = lambda *s: base.const(s, rng=rng)  # noqa: E731
    rows, cols = 4, 144
    x1 = tf.matmul(x, c(cols, 4)) + c(1, 4)
    x2 = base.incompatible(x)
    x2 = tf.reshape(tf.matmul(x2, c(rows, 144), transpose_a=True), [4, -1])
    x2 = base.incompatible(x2)
    x3 = tf.matmul(x, c(4, cols), transpose_b=True)
    x4 = base.incompatible(x)
    x4 = tf.reshape(tf.matmul(x4, c(16, rows), transpose_a=True, transpose_b=True), [4, -1])
    x4 = base.incompatible(x4)
    x5 = tf.reshape(tf.nn.bias_add(tf.matmul(x, c(cols, 48)), c(48)), [4, -1])
    outs = [x1, x2, x3, x4, x5]
    for shape, fmt, n in [([4, 24, 6], "NHWC", 6), ([4, 12, 4, 3], "NHWC", 3),
                          ([4, 4, 3, 2, 6], "NHWC", 6), ([4, 12, 3, 2, 2], "NCHW", 12),
                          ([4, 3, 4, 12], "NCHW", 3), ([4, 6, 24], "NCHW", 6)]:
        outs.append(tf.reshape(tf.nn.bias_add(tf.reshape(x, shape), c(n), data_format=fmt),
                               [4, -1]))
    return tf.squeeze(tf.concat(outs, axis=-1), name="output_0")


# TF-TRT built one engine: its MatMul converter could not transpose the batch dimension of a
# tensor operand (TensorRT implicit batch), so x2 and x4 stayed native. tftrt engines take the
# transposed MatMuls between the native ops: two more engines (docs/differences.md).
CASE = base.Case(graph, [[4, 144]], ["TRTEngineOp_0", "TRTEngineOp_1", "TRTEngineOp_2"], output_shapes=[[4, 6680]],
                 grappler=False, rtol=1e-4, atol=1e-3)


def test_biasadd_matmul(tmp_path_factory):
    base.run_v2(CASE, base.saved(tmp_path_factory, CASE, "biasadd_matmul"))
