"""Port of TF-TRT's base_test.py: single and multiple engines, constant inputs, control edges."""

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


def _chain(n, c, names):
    n = tf.add(n, c, name=names[0])
    n = tf.multiply(n, n, name=names[1])
    return tf.add(n, n, name=names[2])


def const_input(inp):
    """TF-TRT's ConstInputTest: a Const feeding a native op and two engines."""
    c = tf.constant(1.0, name="c")
    n = base.incompatible_binary(inp, c + 0.0 * inp, name="incompatible") if False else \
        base.incompatible_binary(tf.broadcast_to(c, tf.shape(inp)), inp, name="incompatible")
    n = _chain(n, c, ["add", "mul", "add1"])
    n = base.incompatible(n, name="incompatible1")
    n = _chain(n, c, ["add2", "mul1", "add3"])
    return tf.squeeze(n, name="output_0")


def const_data_input_single(inp):
    c = tf.constant(1.0, name="c")
    return tf.squeeze(_chain(inp, c, ["add", "mul", "add1"]), name="output_0")


def const_data_input_multiple(inp):
    c = tf.constant(1.0, name="c")
    n = _chain(inp, c, ["add", "mul", "add1"])
    n = base.incompatible(n, name="incompatible1")
    n = _chain(n, c, ["add2", "mul1", "add3"])
    return tf.squeeze(n, name="output_0")


def control_dependency(inp):
    """TF-TRT's control_deps_test: control edges from native ops into both engines."""
    c1 = tf.constant(1.0, name="c1")
    c2 = tf.constant(2.0, name="c2")
    d1 = base.incompatible(inp, name="d1")
    d2 = base.incompatible_binary(inp, inp, name="d2")
    with tf.control_dependencies([d1]):
        add = tf.add(inp, c1, name="add")
    mul = tf.multiply(add, add, name="mul")
    add1 = tf.add(mul, mul, name="add1")
    edge = base.incompatible(add1, name="incompatible")
    with tf.control_dependencies([d1, d2, add1]):
        add2 = tf.add(edge, c2, name="add2")
    mul1 = tf.multiply(add2, add2, name="mul1")
    add3 = tf.add(mul1, mul1, name="add3")
    inc1 = base.incompatible_binary(d1, add3, name="incompatible1")
    inc2 = base.incompatible_binary(d2, inc1, name="incompatible2")
    return tf.squeeze(inc2, name="output_0")


SHAPE = [[2, 8, 8, 3]]
CASES.update({
    "ConstInput": base.Case(
        const_input, SHAPE, output_shapes=SHAPE, grappler=False,
        expected={"TRTEngineOp_000": ["add", "add1", "mul"],
                  "TRTEngineOp_001": ["add2", "add3", "mul1"]}),
    "ConstDataInputSingleEngine": base.Case(
        const_data_input_single, SHAPE, output_shapes=SHAPE,
        expected={"TRTEngineOp_000": ["c", "add", "add1", "mul"]}),
    "ConstDataInputMultipleEngines": base.Case(
        const_data_input_multiple, SHAPE, output_shapes=SHAPE,
        expected={"TRTEngineOp_000": ["add2", "add3", "mul1"],
                  "TRTEngineOp_001": ["add", "add1", "mul"]}),
    "ControlDependency": base.Case(
        control_dependency, SHAPE, output_shapes=SHAPE, grappler=False,
        expected={"TRTEngineOp_000": ["c1", "add", "add1", "mul"],
                  "TRTEngineOp_001": ["c2", "add2", "add3", "mul1"]}),
})
