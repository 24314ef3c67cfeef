"""End to end on the GPU through TensorFlow (needs TF's GPU build, CuPy and a GPU).

Keras ResNet50, MobileNetV2 and a transformer encoder converted with the public API in FP32 and
FP16, engines built for batches 1 and 8, saved, loaded with tftrt.load: GPU tensors in, GPU
tensors out, same answers as native TF, no rebuild on load; the stream-order hazard; 4 threads
on one loaded model.
"""

import os
import threading

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
pytestmark = pytest.mark.gpu

if not tf.config.list_physical_devices("GPU"):
    pytest.skip("TensorFlow sees no GPU", allow_module_level=True)

import tftrt  # noqa: E402
from tftrt import trt_convert as trt, zoo  # noqa: E402

@pytest.fixture()
def exact_fp32():
    """TF32 off in TensorFlow (and so in the engines, which follow TF's switch): FP32 results
    are then compared at FP32 tolerances, not at TF32's ~1e-3."""
    before = tf.config.experimental.tensor_float_32_execution_enabled()
    tf.config.experimental.enable_tensor_float_32_execution(False)
    yield
    tf.config.experimental.enable_tensor_float_32_execution(before)


# Small inputs keep the test quick; the benchmark uses the full sizes. The encoder keeps its
# width (hidden 768, 12 heads, seq 128) with 2 of its 12 blocks: converting all 12 (a 340 MB
# frozen graph, twice) took most of a 10-minute call on the GPU host.
CASES = {"resnet50": 64, "mobilenet_v2": 64, "encoder": None}
ENCODER_LAYERS = 2


def _convert(tmp_path, name, precision):
    make, _ = zoo.MODELS[name]
    if name == "encoder":
        model = make(layers=ENCODER_LAYERS)
    else:
        model = make() if CASES[name] is None else make(CASES[name])
    src = str(tmp_path / f"{name}_src")
    model.export(src, verbose=False)
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=src, precision_mode=precision,
                                   maximum_cached_engines=2)
    conv.convert()
    rng = np.random.RandomState(0)
    shapes = [zoo.input_shape(name, b, CASES[name]) for b in (1, 8)]
    conv.build(lambda: iter([(rng.rand(*s).astype(np.float32),) for s in shapes]))
    dst = str(tmp_path / f"{name}_{precision}")
    conv.save(dst)
    return src, dst, shapes


@pytest.mark.parametrize("precision", ["FP32", "FP16"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_converted_model_on_gpu(tmp_path, name, precision, exact_fp32):
    os.environ["TFTRT_BACKEND"] = "cupy"
    src, dst, shapes = _convert(tmp_path, name, precision)
    native = tf.saved_model.load(src).signatures["serving_default"]
    loaded = tftrt.load(dst)
    sig = loaded.signatures["serving_default"]
    arg_name = next(iter(native.structured_input_signature[1]))
    for shape in shapes:
        with tf.device("/GPU:0"):
            x = tf.constant(np.random.RandomState(1).rand(*shape).astype(np.float32))
        assert "GPU" in x.device
        ref = native(**{arg_name: x})
        got = sig(**{arg_name: x})
        for k in ref:
            assert "GPU" in got[k].device, f"output {k} came back on {got[k].device}"
            r, g = ref[k].numpy(), got[k].numpy()
            if precision == "FP32":
                np.testing.assert_allclose(g, r, rtol=1e-3, atol=1e-4)
            else:
                assert np.max(np.abs(g - r)) <= 2e-2 * np.max(np.abs(r)) + 1e-4
    assert sum(op.stats["builds"] for op in loaded.engine_ops.values()) == 0
    assert sum(op.stats["native"] for op in loaded.engine_ops.values()) == 0


def test_stream_order_engine_sees_finished_tf_values(tmp_path):
    """An engine reading a tensor a long TF matmul chain just produced sees final values."""
    os.environ["TFTRT_BACKEND"] = "cupy"

    class Scale(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 2048], tf.float32, name="x")])
        def __call__(self, x):
            return {"y": tf.nn.relu(x * 2.0 + 1.0) - tf.tanh(x)}

    src = str(tmp_path / "scale")
    tf.saved_model.save(Scale(), src, signatures=Scale().__call__)
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=src)
    conv.convert()
    conv.save(str(tmp_path / "scale_trt"))
    loaded = tftrt.load(str(tmp_path / "scale_trt"))
    sig = loaded.signatures["serving_default"]
    with tf.device("/GPU:0"):
        a = tf.random.normal([2048, 2048], seed=1) / 45.0
        for trial in range(20):
            h = a
            for _ in range(30):   # long GPU work queued right before the engine reads h
                h = tf.matmul(h, a)
            got = sig(x=h)["y"]
            expect = tf.nn.relu(h * 2.0 + 1.0) - tf.tanh(h)
            np.testing.assert_allclose(got.numpy(), expect.numpy(), rtol=1e-5, atol=1e-6,
                                       err_msg=f"trial {trial}")
    # the engine, not the native segment, read h every time
    assert [(op.stats["engine"], op.stats["native"]) for op in loaded.engine_ops.values()] == \
        [(20, 0)]


def test_four_threads_share_one_loaded_model(tmp_path, exact_fp32):
    os.environ["TFTRT_BACKEND"] = "cupy"
    src, dst, shapes = _convert(tmp_path, "mobilenet_v2", "FP32")
    native = tf.saved_model.load(src).signatures["serving_default"]
    loaded = tftrt.load(dst)
    sig = loaded.signatures["serving_default"]
    arg_name = next(iter(native.structured_input_signature[1]))
    inputs = [np.random.RandomState(s).rand(*shapes[1]).astype(np.float32) for s in range(4)]
    refs = [native(**{arg_name: tf.constant(x)}) for x in inputs]
    errors = []

    def worker(k):
        try:
            for _ in range(10):
                out = sig(**{arg_name: tf.constant(inputs[k])})
                for key in out:
                    np.testing.assert_allclose(out[key].numpy(), refs[k][key].numpy(),
                                               rtol=1e-3, atol=1e-4)
        except Exception as e:  # collected and reported below
            errors.append((k, e))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    ops = list(loaded.engine_ops.values())
    assert ops and all(op.stats["engine"] > 0 and op.stats["native"] == 0 for op in ops), \
        [dict(op.stats) for op in ops]


def _python_without_growth_setting(code: str):
    """Runs ``code`` in a fresh interpreter whose environment does not set memory growth
    (the GPU host's env.sh sets TF_FORCE_GPU_ALLOW_GROWTH=true; users usually do not)."""
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k != "TF_FORCE_GPU_ALLOW_GROWTH"}
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=240)


def test_tensorflow_and_engines_share_the_gpu_with_no_settings():
    """`import tensorflow; import tftrt` with nothing else set: TF grows its memory instead
    of reserving the GPU, so an engine-sized CuPy allocation succeeds after TF has run."""
    code = """
import tensorflow as tf
import tftrt
import cupy as cp
gpu = tf.config.list_physical_devices("GPU")[0]
x = tf.random.normal([2048, 2048])
tf.matmul(x, x).numpy()
assert tf.config.experimental.get_memory_growth(gpu), "memory growth is off"
free, total = cp.cuda.runtime.memGetInfo()
block = cp.empty(int(total * 0.5), cp.uint8)
block[:1] = 1
cp.cuda.runtime.deviceSynchronize()
print("shared", round(free / total, 2))
"""
    r = _python_without_growth_setting(code)
    assert r.returncode == 0 and "shared" in r.stdout, r.stderr[-3000:]


def test_tensorflow_that_took_the_gpu_first_gets_advice():
    """TF initialised its GPU (and reserved the memory) before tftrt was imported: tftrt says
    what to set instead of letting engines fail later with a bare out-of-memory."""
    code = """
import logging
logging.basicConfig()
import tensorflow as tf
tf.matmul(tf.ones([2, 2]), tf.ones([2, 2])).numpy()
import tftrt
"""
    r = _python_without_growth_setting(code)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "TensorFlow initialised its GPUs before tftrt" in r.stderr
    assert "TF_FORCE_GPU_ALLOW_GROWTH=true" in r.stderr
