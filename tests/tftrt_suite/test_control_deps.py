"""Port of TF-TRT's control_deps_test.py: control edges from native ops into two engines."""

import tensorflow as tf

from tests.tftrt_suite import base


def control_dependency(inp):
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


def test_control_dependency(tmp_path_factory):
    shape = [[2, 8, 8, 3]]  # TF-TRT: [2, 32, 32, 3]
    case = base.Case(control_dependency, shape, output_shapes=shape, grappler=False,
                     expected={"TRTEngineOp_000": ["c1", "add", "add1", "mul"],
                               "TRTEngineOp_001": ["c2", "add2", "add3", "mul1"]})
    base.run_v2(case, base.saved(tmp_path_factory, case, "control_deps"))
