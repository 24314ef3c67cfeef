"""Port of TF-TRT's const_broadcast_test.py: filters made by broadcasting a scalar Const."""

import tensorflow as tf

from tests.tftrt_suite import base


def graph(x):
    y = x
    for k, cin in enumerate([2, 1, 1], start=1):
        f = tf.constant(0.3, shape=(3, 3, cin, 1), dtype=x.dtype, name=f"filt{k}")
        y = tf.nn.relu(tf.nn.conv2d(y, f, strides=1, padding="SAME", name=f"y{k}"),
                       name="output_0" if k == 3 else f"z{k}")
    return y


def test_const_broadcast(tmp_path_factory):
    case = base.Case(graph, [[5, 12, 12, 2]], ["TRTEngineOp_000"],
                     output_shapes=[[5, 12, 12, 1]])
    base.run_v2(case, base.saved(tmp_path_factory, case, "const_broadcast"))
