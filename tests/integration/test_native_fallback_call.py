"""An engine's native fallback (conversion.NativeSegmentCaller) calls its segment function
through the flat signature. A positional call of the pruned function first tried its structured
signature, whose TypeError formatted every input tensor before TF retried the flat one: 0.3 to
5.7 ms per fallback call, and with the native backend (a CPU-only machine's default, where every
engine falls back) a 20-engine model ran at 44x native TF's time (scaling hunt, 2026-12-04).
"""

import numpy as np
import pytest
import tensorflow as tf

from tftrt import conversion


@pytest.fixture()
def caller():
    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32),
                                  tf.TensorSpec([None, 4], tf.int32)])
    def seg(a, k):
        return tf.tanh(a) * tf.cast(k, tf.float32), a + 1.0
    fdef = seg.get_concrete_function().function_def
    return conversion.NativeSegmentCaller(
        fdef, [(np.dtype(np.float32), [None, 4]), (np.dtype(np.int32), [None, 4])],
        [np.dtype(np.float32), np.dtype(np.float32)])


def test_tensors_of_the_segments_dtypes_take_the_flat_call(caller, monkeypatch):
    a = np.random.RandomState(0).standard_normal((3, 4)).astype(np.float32)
    k = np.arange(12, dtype=np.int32).reshape(3, 4)
    want = caller(tf.constant(a), tf.constant(k))  # warm (the function is made here)
    fn = caller.function

    def checked_call(*args, **kwargs):
        raise AssertionError("the structured (checked) call ran")
    monkeypatch.setattr(type(fn), "_call_impl", checked_call)
    got = caller(tf.constant(a), tf.constant(k))
    assert isinstance(got, list) and len(got) == 2
    np.testing.assert_allclose(got[0].numpy(), np.tanh(a) * k, rtol=1e-6)
    np.testing.assert_allclose(got[1].numpy(), a + 1.0, rtol=1e-6)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g.numpy(), w.numpy())
    # anything else (a wrong dtype, a missing input) takes the checked call and its error
    with pytest.raises(AssertionError, match="checked"):
        caller(tf.constant(a), tf.constant(k.astype(np.int64)))
    with pytest.raises(AssertionError, match="checked"):
        caller(tf.constant(a))
