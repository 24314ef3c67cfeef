"""Input shapes native TF refuses (two inputs whose batches do not broadcast), where build()
reads shapes without running its inputs and where a call would build an engine for them
(helper hunt, 2026-12-03): TF's error, as native TF and TF-TRT give it, and no engine built,
evicted or lost for them."""

import threading

import numpy as np
import pytest
import tensorflow as tf

from tftrt import progress, trt_convert as trt
from tests.tolerances import MODEL_TOLERANCES


class Two(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="a"),
                                  tf.TensorSpec([None, 4], tf.float32, name="b")])
    def __call__(self, a, b):
        return {"y": tf.nn.relu(a * 2.0 + b) - 1.0}


class Folded(tf.Module):
    """Whose impossible broadcast shows only once the engine network's run-time shapes are
    folded (the einsum's Reshape): the build went on past the failing folding pass, made an
    engine that failed at its first run and evicted build()'s."""
    w1 = tf.constant(np.random.RandomState(1).randn(4, 8).astype(np.float32))
    w2 = tf.constant(np.random.RandomState(2).randn(4, 8).astype(np.float32))

    @tf.function(input_signature=[tf.TensorSpec([None, None, 4], tf.float32, name="a"),
                                  tf.TensorSpec([None, 4], tf.float32, name="b")])
    def __call__(self, a, b):
        h = tf.einsum("btc,cd->btd", a, self.w1) + (b @ self.w2)[:, None, :]
        return {"y": tf.cos(tf.tanh(h))}


@pytest.fixture(scope="module")
def folded_dir(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("folded") / "model")
    m = Folded()
    tf.saved_model.save(m, d, signatures=m.__call__)
    return d


@pytest.fixture(scope="module")
def two_dir(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("two") / "model")
    m = Two()
    tf.saved_model.save(m, d, signatures=m.__call__)
    return d


def pair(a, b, seed=0):
    rng = np.random.RandomState(seed)
    return (rng.randn(a, 4).astype(np.float32), rng.randn(b, 4).astype(np.float32))


def check(fn, native, a, b):
    got = fn(a=tf.constant(a), b=tf.constant(b))["y"].numpy()
    rtol, atol = MODEL_TOLERANCES["FP32"]
    np.testing.assert_allclose(got, native(a=a, b=b)["y"].numpy(), rtol=rtol, atol=atol)


def test_build_raises_for_an_input_tf_refuses(two_dir, monkeypatch):
    """build() took the shapes (8, 4) and (5, 4) without running them: the profile built
    from them failed, build() returned, and every later call ran natively."""
    monkeypatch.setenv("TFTRT_BACKEND", "numpy")
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=two_dir, use_dynamic_shape=True,
                                   minimum_segment_size=1, allow_build_at_runtime=False)
    fn = conv.convert()
    with pytest.raises(tf.errors.InvalidArgumentError, match="Incompatible shapes"):
        conv.build(lambda: iter([pair(2, 2), pair(8, 5)]))
    assert not [t for t in threading.enumerate() if t.name == "tftrt-check"]
    conv.build(lambda: iter([pair(2, 2), pair(8, 8)]))  # the user fixes the input
    (op,) = conv.engine_ops.values()
    native = tf.saved_model.load(two_dir).signatures["serving_default"]
    for b in (2, 5, 8):
        check(fn, native, *pair(b, b, seed=b))
    assert op.stats["native"] == 0 and op.stats["engine"] >= 3


@pytest.mark.parametrize("model", ["two", "folded"])
@pytest.mark.parametrize("dynamic", [True, False])
def test_a_call_tf_refuses_builds_and_evicts_nothing(two_dir, folded_dir, monkeypatch,
                                                     dynamic, model):
    monkeypatch.setenv("TFTRT_BACKEND", "numpy")
    src = two_dir if model == "two" else folded_dir

    def inputs(a, b, seed=0):
        x, y = pair(a, b, seed)
        return (x, y) if model == "two" else (np.stack([x] * 3, 1), y)
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=src, use_dynamic_shape=dynamic,
                                   minimum_segment_size=1, maximum_cached_engines=1)
    fn = conv.convert()
    conv.build(lambda: iter([inputs(4, 4)]))
    (op,) = conv.engine_ops.values()
    keys, builds = op.cache.keys(), op.stats["builds"]
    bad = inputs(8, 5)
    for _ in range(2):
        with pytest.raises(tf.errors.InvalidArgumentError, match="Incompatible shapes"):
            fn(a=tf.constant(bad[0]), b=tf.constant(bad[1]))
    assert op.cache.keys() == keys and op.stats["builds"] == builds
    assert op.stats.get("evictions", 0) == 0
    native = tf.saved_model.load(src).signatures["serving_default"]
    check(fn, native, *inputs(4, 4, seed=3))
    assert op.stats["builds"] == builds


@pytest.mark.parametrize("value, delay", [("inf", 86400.0), ("1e300", 86400.0), ("nan", 2.0),
                                          ("-1", 0.0), ("x", 2.0), ("0.5", 0.5)])
def test_progress_delay_values(monkeypatch, value, delay):
    """TFTRT_PROGRESS_DELAY=inf printed an OverflowError traceback from the progress thread."""
    monkeypatch.setenv("TFTRT_PROGRESS_DELAY", value)
    assert progress._delay() == delay
    task = progress.task("a task").start()  # its thread waits without overflowing
    task.close()


def test_a_bad_engine_device_names_the_variable(two_dir, monkeypatch):
    monkeypatch.setenv("TFTRT_BACKEND", "numpy")
    monkeypatch.setenv("TFTRT_ENGINE_DEVICE", "gpu0")
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=two_dir, minimum_segment_size=1)
    with pytest.raises(ValueError, match="TFTRT_ENGINE_DEVICE='gpu0' is not a TensorFlow"):
        conv.convert()


@pytest.mark.parametrize("dynamic", [False, True])
@pytest.mark.parametrize("mode", ["REFLECT", "SYMMETRIC"])
def test_mirror_pad_of_a_dim_too_small_raises_as_tf(tmp_path, mode, dynamic):
    """Mirror padding of a dim unknown at conversion (audio's centred frames): a run-time dim
    too small for the paddings raises TF's error. The edges were reversed Slices, which
    clamped: REFLECT of 3 frames by (3, 2) gave 7 frames where TF raises (audio hunt,
    2026-12-05). Now they gather constant indices, which the engine build checks."""
    m = tf.Module()
    m.f = tf.function(lambda x: {"y": tf.pad(x * 2.0, [[0, 0], [3, 2], [0, 0]], mode=mode)
                                 + 1.0},
                      input_signature=[tf.TensorSpec([None, None, 4], tf.float32, name="x")])
    src = str(tmp_path / "m")
    tf.saved_model.save(m, src, signatures={"serving_default": m.f})
    native = tf.saved_model.load(src).signatures["serving_default"]
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=src, minimum_segment_size=2,
                                   use_dynamic_shape=dynamic)
    fn = conv.convert()
    conv.build(lambda: iter([{"x": tf.ones((1, 10, 4))}]))
    (op,) = conv._engine_ops.values()  # pylint: disable=protected-access
    smallest_valid = 4 if mode == "REFLECT" else 3
    for t in (10, smallest_valid, 7):
        x = tf.constant(np.arange(t * 4, dtype=np.float32).reshape(1, t, 4))
        np.testing.assert_array_equal(fn(x=x)["y"].numpy(), native(x=x)["y"].numpy())
    engine_calls = op.stats["engine"]
    assert engine_calls >= 3, dict(op.stats)
    for t in (smallest_valid - 1, 1):
        x = tf.constant(np.ones((1, t, 4), np.float32))
        why = "paddings must be (less|no greater) than the dimension size"
        with pytest.raises(tf.errors.InvalidArgumentError, match=why):
            native(x=x)
        with pytest.raises(tf.errors.InvalidArgumentError, match=why):
            fn(x=x)
    assert op.stats["engine"] == engine_calls, dict(op.stats)
