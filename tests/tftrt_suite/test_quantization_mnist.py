"""Port of TF-TRT's quantization_mnist_test.py: the quantization-aware MNIST network
(QuantizeAndDequantizeV2 ranges around convs and dense layers), frozen, converted by the TF1
converter in INT8 without calibration: one engine.

TF-TRT compared MNIST accuracy from a trained checkpoint; the port has neither the dataset nor
the checkpoint, so it uses seeded weights and compares with TF's simulated quantization
(tests/integration/test_int8.py measures accuracy on trained models)."""

import numpy as np
import tensorflow as tf

from tftrt import rewrite, trt_convert as trt
from tftrt.engine_op import TRTEngineOp
from tests.integration.models import session_run


def build(x, rng):
    def quantize(t, r):
        return tf.quantization.quantize_and_dequantize_v2(t, -r, r)

    def conv(t, cin, cout):
        w = tf.constant(rng.uniform(-0.3, 0.3, (3, 3, cin, cout)), tf.float32)
        t = tf.nn.conv2d(t, w, 1, "VALID")
        return tf.nn.relu6(tf.nn.bias_add(t, tf.constant(rng.randn(cout) * 0.1, tf.float32)))

    def dense(t, cin, cout, r):
        t = quantize(tf.matmul(t, tf.constant(rng.uniform(-0.3, 0.3, (cin, cout)),
                                              tf.float32)), r)
        return quantize(tf.nn.bias_add(t, tf.constant(rng.randn(cout) * 0.1, tf.float32)), r)

    x = quantize(x, 1)
    x = conv(conv(x, 1, 32), 32, 64)
    x = quantize(tf.reduce_mean(x, [1, 2]), 6)
    x = tf.nn.relu6(dense(x, 64, 512, 6))
    return tf.identity(dense(x, 512, 10, 25), name="output")


def frozen_graph():
    g = tf.Graph()
    with g.as_default():
        build(tf.compat.v1.placeholder(tf.float32, (None, 28, 28, 1), name="input"),
              np.random.RandomState(0))
    return g.as_graph_def()


def test_int8_without_calibration():
    """INT8 without calibration takes its ranges from the graph's QDQ ops: the layers reading
    a fake-quantized tensor run INT8, the ones reading an unquantized ReLU6 stay FP16."""
    gd = frozen_graph()
    conv = trt.TrtGraphConverter(input_graph_def=gd, nodes_denylist=["output"],
                                 max_batch_size=8, precision_mode="INT8",
                                 max_workspace_size_bytes=1 << 28, minimum_segment_size=2,
                                 use_calibration=False)
    converted = conv.convert()
    assert len([n for n in converted.node if rewrite.ENGINE_ATTR in n.attr]) == 1
    x = np.random.RandomState(1).uniform(-1, 1, (8, 28, 28, 1)).astype(np.float32)
    got, g = session_run(converted, x, fetch="output:0", feed="input:0")
    want, _ = session_run(gd, x, fetch="output:0", feed="input:0")
    # the same class for every image (TF-TRT compared accuracy)
    np.testing.assert_array_equal(got.argmax(1), want.argmax(1))
    # the op bound when the GraphDef was imported (the graph keeps it alive)
    (op,) = [o for o in g._py_funcs_used_in_graph if isinstance(o, TRTEngineOp)]
    assert op.stats["engine"] >= 1 and op.stats["native"] == 0
    ((_, entry),) = op.cache.items()  # a static engine: its batch-8 engine serves 1..8
    ((_, engine),) = entry.opt_engines()
    gemms = [(l.kind, l.precision) for l in engine.network.layers if l.kind in ("conv", "matmul")]
    assert gemms == [("conv", "INT8"), ("conv", "FP16"), ("matmul", "INT8"), ("matmul", "FP16")]
