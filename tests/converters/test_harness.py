"""The converter harness itself: it must catch a wrong dtype and keep a test's tolerance."""

import numpy as np
import pytest
import tensorflow as tf

from tests.converters import harness

X = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)


def test_assert_close_rejects_another_dtype():
    with pytest.raises(AssertionError, match="dtype float64 != TF float32"):
        harness.assert_close([X.astype(np.float64)], [X], 0, 0, "engine")


def test_assert_close_requires_nan_where_tf_has_nan():
    nan = np.array([np.nan, 1.0], np.float32)
    harness.assert_close([nan.copy()], [nan], 0, 0, "engine")
    with pytest.raises(AssertionError):
        harness.assert_close([np.array([0.0, 1.0], np.float32)], [nan], 0, 0, "engine")


@pytest.mark.parametrize("runtime", ["run_engine", "run_onnxruntime"])
def test_check_op_keeps_the_tolerance_a_test_gives(monkeypatch, runtime):
    """A result off by 1e-6 relative passes the default FP32 tolerance, not rtol=1e-8."""
    real = getattr(harness, runtime)
    monkeypatch.setattr(harness, runtime,
                        lambda *a, **k: [o * np.float32(1 + 1e-6) for o in real(*a, **k)])
    harness.check_op(lambda x: tf.nn.relu(x) + 1.0, [X])
    with pytest.raises(AssertionError, match=runtime.replace("run_", "")):
        harness.check_op(lambda x: tf.nn.relu(x) + 1.0, [X], rtol=1e-8, atol=0)
