"""Const and the identity family (Identity, Snapshot, StopGradient, PreventGradient)."""

import numpy as np
import pytest
import tensorflow as tf

from tests.converters.harness import check_op

X = np.random.RandomState(0).randn(2, 3, 4).astype(np.float32)

IDENTITIES = {
    "Identity": tf.identity,
    "Snapshot": lambda x: tf.raw_ops.Snapshot(input=x),
    "StopGradient": tf.stop_gradient,
    "PreventGradient": lambda x: tf.raw_ops.PreventGradient(input=x),
}


@pytest.mark.parametrize("op", sorted(IDENTITIES))
@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.int32])
def test_identity_family(op, dtype):
    low = check_op(lambda x: IDENTITIES[op](x) * 2, [X.astype(dtype)], grappler=False,
                   expect_tf_ops=[op, "Mul"])
    assert "Identity" in low.onnx_ops


@pytest.mark.parametrize("value", [np.arange(12, dtype=np.float32).reshape(3, 4),
                                   np.array(3, np.int32), np.ones((4,), np.float16)])
def test_const_becomes_initializer(value):
    x = np.ones(value.shape, value.dtype)
    low = check_op(lambda x: x + tf.constant(value), [x], grappler=False,
                   expect_tf_ops=["Const", "AddV2"])
    inits = {i.name for i in low.net.model.graph.initializer}
    assert inits, "the constant did not become an initializer"
