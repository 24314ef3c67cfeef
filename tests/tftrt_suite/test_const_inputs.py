"""Port of TF-TRT's const_inputs_test.py: one Const feeding a native op and engines."""

import pytest
import tensorflow as tf

from tests.tftrt_suite import base


def _chain(n, c, names):
    n = tf.add(n, c, name=names[0])
    n = tf.multiply(n, n, name=names[1])
    return tf.add(n, n, name=names[2])


def const_input(inp):
    """The Const also feeds a native op, so no engine may absorb it."""
    c = tf.constant(1.0, name="c")
    n = base.incompatible_binary(inp, c, name="incompatible")
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


SHAPE = [[2, 8, 8, 3]]  # TF-TRT: [2, 32, 32, 3]
# TF-TRT's conversion ran no arithmetic optimizer (tftrt's does: it would rewrite mul into
# Square and add1 into a Mul), so every case keeps Grappler's other optimizers off.
CASES = {
    "ConstInput": base.Case(
        const_input, SHAPE, output_shapes=SHAPE, grappler=False,
        expected={"TRTEngineOp_000": ["add", "add1", "mul"],
                  "TRTEngineOp_001": ["add2", "add3", "mul1"]}),
    "ConstDataInputSingleEngine": base.Case(
        const_data_input_single, SHAPE, output_shapes=SHAPE, grappler=False,
        expected={"TRTEngineOp_000": ["c", "add", "add1", "mul"]}),
    "ConstDataInputMultipleEngines": base.Case(
        const_data_input_multiple, SHAPE, output_shapes=SHAPE, grappler=False,
        expected={"TRTEngineOp_000": ["add2", "add3", "mul1"],
                  "TRTEngineOp_001": ["add", "add1", "mul"]}),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_case(name, tmp_path_factory):
    base.run_v2(CASES[name], base.saved(tmp_path_factory, CASES[name], name))
