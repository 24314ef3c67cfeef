"""Engines and GPUs (issue 17, item 2): an engine is never run with inputs on another GPU.

The CuPy backend does not place engines per device yet: an engine's weights, arena, stream
and CUDA graphs live on the GPU where it was built or loaded. A call whose inputs are on
another GPU (a second Triton instance, a user's ``tf.device('/GPU:1')``) must not hand that
GPU's pointers to the engine: the engine op runs the native segment for it, with one warning
that says what to do, and the answers equal TensorFlow's. Needs two GPUs.
"""

import logging

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
cp = pytest.importorskip("cupy")
pytestmark = pytest.mark.gpu

if len(tf.config.list_physical_devices("GPU")) < 2:
    pytest.skip("needs two GPUs", allow_module_level=True)

from tests.integration import models  # noqa: E402
from tftrt import trt_convert as trt  # noqa: E402


@pytest.fixture()
def cupy_backend(monkeypatch):
    monkeypatch.setenv("TFTRT_BACKEND", "cupy")


def test_inputs_on_another_gpu_run_natively_with_one_warning(cupy_backend, tmp_path, caplog):
    src = models.save_module(models.TwoInputs(), str(tmp_path / "src"))
    native = tf.saved_model.load(src).signatures["serving_default"]
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=src, minimum_segment_size=2)
    fn = conv.convert()
    rng = np.random.RandomState(0)
    a, b = (rng.standard_normal((4, 4)).astype(np.float32) for _ in range(2))
    with tf.device("/GPU:0"):
        conv.build(lambda: iter([(a, b)]))
    (op,) = conv.engine_ops.values()
    want = native(a=tf.constant(a), b=tf.constant(b))["out"].numpy()
    with tf.device("/GPU:0"):
        got0 = fn(a=tf.constant(a), b=tf.constant(b))["out"]
    np.testing.assert_allclose(got0.numpy(), want, rtol=1e-5, atol=1e-5)
    assert op.stats["native"] == 0 and op.stats["engine"] >= 1
    caplog.set_level(logging.WARNING, logger="tftrt")
    for _ in range(3):
        with tf.device("/GPU:1"):
            got1 = fn(a=tf.constant(a), b=tf.constant(b))["out"]
        np.testing.assert_allclose(got1.numpy(), want, rtol=1e-5, atol=1e-5)
    assert op.stats["native"] == 3, op.stats
    warnings = [r.getMessage() for r in caplog.records if "is on GPU 1" in r.getMessage()]
    assert len(warnings) == 1 and "one GPU per process" in warnings[0], warnings


def test_engines_land_on_the_engine_nodes_gpu_whatever_the_threads_device(cupy_backend,
                                                                         tmp_path):
    """TensorFlow leaves the thread that set up its GPUs on the last one. On a 2-GPU H200
    (2026-12-04) tftrt.load in that thread put the engine's weights on GPU 1 while TF gave the
    engine node (on GPU:0) GPU 0's tensors: every call ran the native segment (WrongDevice),
    and the serving benchmark timed native TF. The CuPy backend is now pinned to the engine
    nodes' GPU (conversion.engine_device); this thread's device set to 1 changes nothing."""
    src = models.save_module(models.TwoInputs(), str(tmp_path / "src"))
    native = tf.saved_model.load(src).signatures["serving_default"]
    rng = np.random.RandomState(0)
    a, b = (rng.standard_normal((4, 4)).astype(np.float32) for _ in range(2))
    want = native(a=tf.constant(a), b=tf.constant(b))["out"].numpy()
    before = cp.cuda.runtime.getDevice()
    cp.cuda.runtime.setDevice(1)
    try:
        conv = trt.TrtGraphConverterV2(input_saved_model_dir=src, minimum_segment_size=2)
        conv.convert()
        conv.build(lambda: iter([(a, b)]))
        conv.save(str(tmp_path / "trt"))
        import tftrt
        loaded = tftrt.load(str(tmp_path / "trt"))
        got = loaded.signatures["serving_default"](a=tf.constant(a), b=tf.constant(b))["out"]
    finally:
        cp.cuda.runtime.setDevice(before)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-5)
    for ops in (conv.engine_ops, loaded.engine_ops):
        (op,) = ops.values()
        assert op.stats["native"] == 0 and op.stats["engine"] >= 1, op.describe()
        engine = next(e for _, e in op.cache.items())
        weights = [w for w in engine.weights.values() if isinstance(w, cp.ndarray)]
        assert weights and {w.device.id for w in weights} == {0}
