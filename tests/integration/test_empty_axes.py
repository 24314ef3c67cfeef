"""Reductions and softmax over an axis of length 0 while the batch has rows (helper hunt,
2026-12-01): the numpy engine raised ("zero-size array to reduction operation maximum") and
every such call fell back to TF with a warning. TF's answers are the reductions' identities
(-inf / +inf, False / True) and empty softmax rows; the engine now gives them itself."""

import logging

import numpy as np
import pytest
import tensorflow as tf

from tftrt import trt_convert as trt

OPS = {
    "max": lambda x: tf.reduce_max(x, 1),
    "min": lambda x: tf.reduce_min(x, 1),
    "logsumexp": lambda x: tf.reduce_logsumexp(x, 1),
    "any": lambda x: tf.cast(tf.reduce_any(x > 0.0, 1), tf.float32),
    "all": lambda x: tf.cast(tf.reduce_all(x > 0.0, 1), tf.float32),
    "softmax": lambda x: tf.reduce_sum(tf.nn.softmax(x, axis=1), 1),
    "int_max": lambda x: tf.cast(tf.reduce_max(tf.cast(x, tf.int32), 1), tf.float32),
}


@pytest.mark.parametrize("name", sorted(OPS))
def test_a_reduced_axis_of_length_0_is_served_by_the_engine(name, tmp_path, monkeypatch,
                                                            caplog):
    """(A segment whose every input is empty runs natively by design: batch 0.)"""
    monkeypatch.setenv("TFTRT_BACKEND", "numpy")
    op = OPS[name]

    class M(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, None, 3], tf.float32, name="x"),
                                      tf.TensorSpec([None, 3], tf.float32, name="y")])
        def __call__(self, x, y):
            return {"z": op(x * 2.0) + y}

    m = M()
    tf.saved_model.save(m, str(tmp_path / "m"), signatures=m.__call__)
    native = tf.saved_model.load(str(tmp_path / "m")).signatures["serving_default"]
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=str(tmp_path / "m"),
                                   minimum_segment_size=1)
    fn = conv.convert()
    x, y = tf.zeros((2, 0, 3)), tf.ones((2, 3))
    with caplog.at_level(logging.WARNING):
        got = fn(x=x, y=y)["z"].numpy()
    np.testing.assert_array_equal(got, native(x=x, y=y)["z"].numpy())
    assert not [r for r in caplog.records if "failed" in r.getMessage()], caplog.text
    stats = [dict(op.stats) for op in conv.engine_ops.values()]
    assert sum(s.get("engine", 0) for s in stats) >= 1, stats
