"""Port of TF-TRT's reshape_transpose_test.py."""

import pytest
import tensorflow as tf

from tests.tftrt_suite import base


def reshape(inp):
    outs = []
    for shape in [[2, 50, 4, 4, 2], [-1, 50, 4, 4, 2], [2, 50, -1, 4, 2]]:
        back = tf.reshape(tf.reshape(inp, shape), [-1, 4, 4, 2])
        outs.append(base.incompatible(tf.abs(back)))
    r = tf.reshape(inp, [-1, 4 * 4, 2], name="reshape-0")
    r = tf.reshape(r, [100, 4, -1], name="reshape-1")
    r = tf.reshape(r, [100, 4 * 2, 4], name="reshape-2")
    r = tf.reshape(r, [-1, 4, 4 * 2], name="reshape-3")
    r = tf.reshape(r, [-1, 2, 2, 4, 2], name="reshape-4")
    r = tf.reshape(r, [-1, 2, 2, 2, 2, 2, 1], name="reshape-5")
    r = tf.reshape(r, [-1, 4, 4, 2], name="reshape-6")
    outs.append(base.incompatible(tf.abs(r)))
    return tf.add_n(outs, name="output_0")


def transpose(inp):
    t = tf.transpose(inp, [0, 3, 1, 2], name="transpose-1")
    return tf.identity(tf.transpose(t, [0, 2, 3, 1], name="transposeback"), name="output_0")


def incompatible_transpose(inp):
    t = tf.transpose(inp, [2, 1, 0, 3], name="transpose-2")
    return tf.identity(tf.transpose(t, [0, 2, 3, 1], name="transpose-3"), name="output_0")


CASES = {
    # TF-TRT (implicit batch) kept the three batch-changing reshape pairs native; tftrt
    # converts them too, into the same engine as the compatible chain.
    "Reshape": base.Case(reshape, [[100, 4, 4, 2]], ["TRTEngineOp_0"],
                         output_shapes=[[100, 4, 4, 2]], grappler=False),
    "Transpose": base.Case(
        transpose, [[100, 8, 8, 2]], output_shapes=[[100, 8, 8, 2]], grappler=False,
        expected={"TRTEngineOp_0": ["transpose-1", "transpose-1/perm", "transposeback",
                                    "transposeback/perm"]}),
    # TF-TRT: no engine, TensorRT (implicit batch) could not move the batch dimension.
    "IncompatibleTranspose": base.Case(incompatible_transpose, [[100, 8, 8, 2]],
                                       ["TRTEngineOp_0"], output_shapes=[[8, 100, 2, 8]],
                                       grappler=False),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_case(name, tmp_path_factory):
    base.run_v2(CASES[name], base.saved(tmp_path_factory, CASES[name], name))
