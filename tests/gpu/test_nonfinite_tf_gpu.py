"""NaN and +-inf through CuPy engines against TensorFlow's own GPU kernels (issue 12, item 5).

The reference for the CuPy backend is TF on the same device: each reduction / pool / softmax
op alone in a tiny model, converted (minimum_segment_size=1) and run on inputs holding NaN,
+inf and -inf, must give what native TF gives on the GPU, NaN for NaN.
"""

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
pytestmark = pytest.mark.gpu

if not tf.config.list_physical_devices("GPU"):
    pytest.skip("TensorFlow sees no GPU", allow_module_level=True)

from tftrt import trt_convert as trt  # noqa: E402
from tftrt.engine_op import resolve_backend  # noqa: E402

OPS = {
    "max_pool": lambda x: tf.nn.max_pool2d(x, 2, 2, "VALID"),
    "max_pool_same": lambda x: tf.nn.max_pool2d(x, 3, 2, "SAME"),
    "avg_pool": lambda x: tf.nn.avg_pool2d(x, 2, 2, "VALID"),
    "reduce_max": lambda x: tf.reduce_max(x, axis=[1, 2]),
    "reduce_min": lambda x: tf.reduce_min(x, axis=[1, 2]),
    # over the trailing axes: ReduceKernel's row mode (one block a row), whose block-wide max
    # skipped NaN (helper hunt, 2026-12-01); axes [1, 2] take the column mode
    "reduce_max_rows": lambda x: tf.reduce_max(x, axis=[2, 3]),
    "reduce_min_rows": lambda x: tf.reduce_min(x, axis=[2, 3]),
    # TF's GPU MaxPool3D skips NaN as its 2-D MaxPool does (H200, 2026-12-01); x[0, 2:4, 2:4]
    # channels 1 and 3 make one of its windows all NaN
    "max_pool3d": lambda x: tf.nn.max_pool3d(tf.reshape(x, [-1, 6, 6, 2, 2]), 2, 2, "VALID"),
    "reduce_sum": lambda x: tf.reduce_sum(x, axis=[1, 2]),
    "reduce_mean": lambda x: tf.reduce_mean(x, axis=[1, 2]),
    "argmax": lambda x: tf.math.argmax(x, axis=-1, output_type=tf.int64),
    "softmax": lambda x: tf.nn.softmax(x, axis=-1),
    "log_softmax": lambda x: tf.nn.log_softmax(x, axis=-1),
}


def nonfinite_input():
    x = np.random.RandomState(0).standard_normal((2, 6, 6, 4)).astype(np.float32)
    x[0, 0, 0, 0] = np.nan                 # one NaN in a window / row
    x[0, 2:4, 2:4, 1] = np.nan             # a whole pooling window of NaN
    x[0, 2:4, 2:4, 3] = np.nan             # with channel 1: a whole MaxPool3D window
    x[1, 1, 1, 2] = np.inf
    x[1, 4, 4, 3] = -np.inf
    x[1, 5, 5, :] = -np.inf                # a softmax row of -inf
    x[0, 5, 0, :] = [np.nan, np.inf, -np.inf, 1.0]
    return x


@pytest.fixture()
def cupy_backend(monkeypatch):
    """Engines on CuPy (tests/conftest.py makes numpy the default)."""
    monkeypatch.setenv("TFTRT_BACKEND", "cupy")
    assert resolve_backend() == "cupy"


@pytest.mark.parametrize("name", sorted(OPS))
def test_cupy_engine_matches_tf_gpu_on_nonfinite_inputs(name, tmp_path, cupy_backend):
    op = OPS[name]

    class M(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 6, 6, 4], tf.float32, name="x")])
        def __call__(self, x):
            return {"y": op(x * 1.0)}

    src = str(tmp_path / name)
    m = M()
    tf.saved_model.save(m, src, signatures=m.__call__)
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=src, minimum_segment_size=1)
    fn = conv.convert()
    with tf.device("/GPU:0"):
        x = tf.constant(nonfinite_input())
        want = tf.saved_model.load(src).signatures["serving_default"](x=x)["y"].numpy()
    got = fn(x=x)["y"].numpy()
    assert conv.engine_ops and all(o.stats["engine"] == 1 and o.stats["native"] == 0
                                   for o in conv.engine_ops.values())
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg="NaN positions")
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, equal_nan=True)


@pytest.mark.parametrize("act", ["relu", "sigmoid", "elu"])
def test_an_activation_moved_before_a_max_pool_keeps_tf_gpus_floor(act, tmp_path,
                                                                  cupy_backend):
    """conv -> max pool -> activation with pool windows of only NaN / -inf: the engine moves
    the activation before the pool (passes/activation_motion) and the pool's floor goes
    through it (the CuPy pool's floor_program); TF's GPU MaxPool gives -inf there."""
    f = {"relu": tf.nn.relu, "sigmoid": tf.sigmoid, "elu": tf.nn.elu}[act]
    w = np.ones([1, 1, 4, 2], np.float32)
    w[..., 1] = -1.0

    class M(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 6, 6, 4], tf.float32, name="x")])
        def __call__(self, x):
            return {"y": f(tf.nn.max_pool2d(tf.nn.conv2d(x, w, 1, "VALID"), 2, 2, "SAME"))}

    src = str(tmp_path / act)
    m = M()
    tf.saved_model.save(m, src, signatures=m.__call__)
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=src, minimum_segment_size=1)
    fn = conv.convert()
    x = nonfinite_input()
    x[1, 0:2, 0:2, :] = -np.inf            # a window of -inf in every channel
    with tf.device("/GPU:0"):
        x = tf.constant(x)
        want = tf.saved_model.load(src).signatures["serving_default"](x=x)["y"].numpy()
    got = fn(x=x)["y"].numpy()
    assert conv.engine_ops and all(o.stats["engine"] == 1 and o.stats["native"] == 0
                                   for o in conv.engine_ops.values())
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg="NaN positions")
    np.testing.assert_array_equal(np.isinf(got), np.isinf(want), err_msg="inf positions")
    # TF's GPU convolution runs in TF32 (H200, 2026-12-02: 2.5e-3 relative), the engine's not
    np.testing.assert_allclose(got, want, rtol=5e-3, atol=1e-3, equal_nan=True)


def test_a_gather_index_out_of_range_gives_zeros_as_tf_gpu(tmp_path, cupy_backend):
    """tf.gather with a runtime index outside [0, n) (-1, n): TF's GPU kernel gives zeros
    there; the CuPy engine's gather does too (it counted -1 from the end before)."""
    class M(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([3, 4], tf.float32, name="x"),
                                      tf.TensorSpec([3], tf.int32, name="i")])
        def __call__(self, x, i):
            return {"y": tf.gather(x * 2.0, i, axis=1) + 1.0}

    src = str(tmp_path / "gather")
    m = M()
    tf.saved_model.save(m, src, signatures=m.__call__)
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=src, minimum_segment_size=1)
    fn = conv.convert()
    with tf.device("/GPU:0"):
        x = tf.constant(np.arange(12, dtype=np.float32).reshape(3, 4))
        i = tf.constant([0, -1, 4], tf.int32)
        want = tf.saved_model.load(src).signatures["serving_default"](x=x, i=i)["y"].numpy()
    got = fn(x=x, i=i)["y"].numpy()
    assert sum(o.stats["engine"] for o in conv.engine_ops.values()) >= 1
    np.testing.assert_array_equal(want[:, 1:], 1.0)    # TF GPU: zeros, then + 1
    np.testing.assert_array_equal(got, want)
