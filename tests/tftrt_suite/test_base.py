"""Port of TF-TRT's base_test.py: single and multiple engines (its constant-input and
control-edge cases are test_const_inputs.py and test_control_deps.py, as upstream)."""

import numpy as np
import pytest
import tensorflow as tf

from tests.tftrt_suite import base


def simple_single_engine(inp):
    w = tf.constant([[[[1., 0.5, 4., 6., 0.5, 1.], [1., 0.5, 1., 1., 0.5, 1.]]]], name="weights")
    conv = tf.nn.conv2d(inp, w, strides=[1, 2, 2, 1], padding="SAME", name="conv")
    bias = tf.constant([4., 1.5, 2., 3., 5., 7.], name="bias")
    added = tf.nn.bias_add(conv, bias, name="bias_add")
    relu = tf.nn.relu(added, "relu")
    identity = tf.identity(relu, "identity")
    pool = tf.nn.max_pool2d(identity, [1, 2, 2, 1], [1, 2, 2, 1], "VALID", name="max_pool")
    return tf.squeeze(pool, name="output_0")


def simple_multi_engines(inp):
    rng = np.random.RandomState(0)
    w = tf.constant([[[[1., 0.5, 4., 6., 0.5, 1.], [1., 0.5, 1., 1., 0.5, 1.]]]], name="weights")
    conv = tf.nn.conv2d(inp, w, strides=[1, 2, 2, 1], padding="SAME", name="conv")
    c1 = base.const((12, 12, 6), name="c1", rng=rng)
    p = tf.multiply(conv, c1, name="mul")
    c2 = base.const((12, 12, 6), name="c2", rng=rng)
    q = tf.divide(conv, c2, name="div")
    edge = base.incompatible(q, name="incompatible")
    edge = tf.divide(edge, edge, name="div1")
    r = tf.add(edge, edge, name="add")
    p = tf.subtract(p, edge, name="sub")
    q = tf.multiply(q, edge, name="mul1")
    s = tf.add(p, q, name="add1")
    s = tf.subtract(s, r, name="sub1")
    return tf.squeeze(s, name="output_0")


CASES = {
    "SimpleSingleEngine": base.Case(
        simple_single_engine, [[4, 24, 24, 2]], output_shapes=[[4, 6, 6, 6]],
        expected={"TRTEngineOp_0": ["weights", "conv", "bias", "bias_add", "relu", "identity",
                                    "max_pool"]}),
    "SimpleMultiEngines": base.Case(
        simple_multi_engines, [[4, 24, 24, 2]], output_shapes=[[4, 12, 12, 6]],
        grappler=False,  # TF-TRT: the layout optimizer would add Transpose(Const, Const)
        expected={"TRTEngineOp_0": ["add", "add1", "c1", "div1", "mul", "mul1", "sub", "sub1"],
                  "TRTEngineOp_1": ["c2", "conv", "div", "weights"]}),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_case(name, tmp_path_factory):
    case = CASES[name]
    base.run_v2(case, base.saved(tmp_path_factory, case, name))

