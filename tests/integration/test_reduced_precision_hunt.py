"""float16 / bfloat16 models (bf16 hunt, 2026-12-07). Each case failed before its fix:

- a float16 FusedBatchNorm (T=half, U=float: tf.compat.v1 and Keras 2 mixed-precision
  models) ran its folded scale and shift in float16, where TF's kernel computes in float32
  and rounds once: a channel mean of 2000 left 3-5% of the output's largest value off TF, and
  a scale of 1e6 became inf (converters/nn.FusedBatchNorm);
- computing it in float32 between two casts must still fold into the conv before it (one
  layer, as before);
- a per-channel scale folded into float16 GEMM weights overflowed (W * 30000 > 65504): NaN
  outputs where TF's were finite (passes/vertical_fusion._scale_weights);
- a mixed-precision QAT model (fake quantization in float32, a cast to float16 before each
  conv) ran its convs FP16: the op's range did not cross the cast (quantization);
- bfloat16 inputs: the CLI could neither generate data for them nor read an .npz of them
  (np.savez stores bfloat16 as raw 2-byte voids; tftrt.inputs).

And a batch norm case of the Keras 2 hunt: a training-mode FusedBatchNorm in an inference
graph (Keras 2's LayerNormalization) stayed native."""

import contextlib
import io
import re

import ml_dtypes
import numpy as np
import pytest
import tensorflow as tf

from tftrt import inputs as I
from tftrt import trt_convert as trt

H = tf.float16


def _save(tmp_path, name, f, spec):
    class M(tf.Module):
        @tf.function(input_signature=[spec])
        def __call__(self, x):
            return f(x)
    path = str(tmp_path / name)
    tf.saved_model.save(M(), path)
    return path


def _converted(path, x, precision="FP32", **kw):
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=path, precision_mode=precision, **kw)
    fn = conv.convert()
    conv.build(input_fn=lambda: iter([(x,)]))
    key = list(fn.structured_outputs)[0]
    return conv, fn(x)[key].numpy()


def _summary(conv) -> str:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        conv.summary()
    return buf.getvalue()


def _native(path, x):
    return tf.saved_model.load(path)(x).numpy()


def _layers(conv):
    """(kind, epilogue) of every layer of the converter's engines."""
    out = []
    for op in conv._engine_ops.values():
        for _, engine in op.cache.items():
            out += [(l.kind, l.epilogue_summary()) for l in engine.network.layers]
    return out


def _rel(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert np.isfinite(want).all()
    assert np.isfinite(got).all(), f"{int((~np.isfinite(got)).sum())} non-finite outputs"
    return np.abs(got - want).max() / np.abs(want).max()


RNG = np.random.RandomState(0)
K = (RNG.randn(3, 3, 4, 4) * 0.5).astype(np.float16)


def _bn(h, scale, offset, mean, var, eps):
    y, _, _ = tf.compat.v1.nn.fused_batch_norm(
        h, tf.constant(scale, tf.float32), tf.constant(offset, tf.float32),
        tf.constant(mean, tf.float32), tf.constant(var, tf.float32), epsilon=eps,
        is_training=False)
    return y


BN_CASES = {
    # a large channel mean: x * scale (~200) rounded in float16 before the shift cancels it
    "large_mean": (lambda h: _bn(h, [1, 1, 1, 1], [0, 0, 0, 0], [2000, 500, 100, 0],
                                 [100, 25, 4, 1], 1e-3),
                   np.array([2000, 500, 100, 0], np.float32), np.array([10, 5, 2, 1],
                                                                      np.float32)),
    # a folded scale of 1e6: inf in float16
    "huge_scale": (lambda h: _bn(tf.nn.conv2d(h, tf.constant(K), 1, "SAME"),
                                 [1e4, 1, 3e3, 50], [0, 1, 2, 3], [0, 0, 0, 0],
                                 [1e-4, 1, 1e-4, 1e-6], 1e-6),
                   np.zeros(4, np.float32), np.full(4, 1e-3, np.float32)),
}


@pytest.mark.parametrize("case", sorted(BN_CASES))
@pytest.mark.parametrize("precision", ["FP32", "FP16"])
def test_a_float16_batch_norm_computes_in_float32_as_tf_does(tmp_path, case, precision):
    f, mean, std = BN_CASES[case]
    path = _save(tmp_path, case, lambda x: tf.cast(f(tf.cast(x, H)), tf.float32),
                 tf.TensorSpec([None, 4, 4, 4], tf.float32, name="x"))
    x = tf.constant((mean + np.random.RandomState(1).randn(2, 4, 4, 4) * std)
                    .astype(np.float32))
    _, got = _converted(path, x, precision)
    # float16's rounding of the folded weights (huge_scale: TF rounds the conv's output
    # to float16 before its float32 batch norm, the fused conv does not)
    assert _rel(got, _native(path, x)) < 2e-3


@pytest.mark.parametrize("precision", ["FP32", "FP16"])
def test_a_float16_conv_and_batch_norm_stay_one_layer(tmp_path, precision):
    rng = np.random.RandomState(2)
    k = (rng.randn(3, 3, 8, 8) * 0.2).astype(np.float16)
    params = [rng.uniform(0.5, 2, 8), rng.randn(8), rng.randn(8), rng.uniform(0.5, 2, 8)]

    def f(x):
        h = tf.nn.conv2d(x, tf.constant(k), 1, "SAME")
        return tf.nn.relu(_bn(h, *[p.astype(np.float32) for p in params], 1e-3))
    path = _save(tmp_path, "conv_bn", f, tf.TensorSpec([None, 8, 8, 8], H, name="x"))
    x = tf.constant(rng.randn(2, 8, 8, 8).astype(np.float16))
    conv, got = _converted(path, x, precision)
    assert _layers(conv) == [("conv", "bias+relu")]
    assert _rel(got, _native(path, x)) < 2e-3


def test_a_scale_too_large_for_float16_weights_stays_in_the_epilogue(tmp_path):
    rng = np.random.RandomState(3)
    w = (rng.randn(16, 8) * 3).astype(np.float16)
    s = np.array([30000, 1, 20000, 2, 1, 1, 1, 1], np.float16)
    path = _save(tmp_path, "scaled", lambda x: tf.matmul(x, tf.constant(w)) * tf.constant(s),
                 tf.TensorSpec([None, 16], H, name="x"))
    x = tf.constant((rng.randn(4, 16) * 1e-3).astype(np.float16))
    conv, got = _converted(path, x)
    assert _layers(conv) == [("matmul", "scale")]  # one layer still, the scale in float32
    assert _rel(got, _native(path, x)) < 2e-3


def _qat(dtype):
    rng = np.random.RandomState(4)
    k1 = (rng.randn(3, 3, 4, 8) * 0.3).astype(np.float32)
    k2 = (rng.randn(3, 3, 8, 8) * 0.2).astype(np.float32)

    def wq(k):
        a = np.abs(k).max((0, 1, 2))
        return tf.cast(tf.quantization.fake_quant_with_min_max_vars_per_channel(
            tf.constant(k), -a, a, narrow_range=True), dtype)

    def f(x):
        q = tf.quantization.fake_quant_with_min_max_vars(x, -3.0, 3.0)
        y = tf.nn.relu(tf.cast(tf.nn.conv2d(tf.cast(q, dtype), wq(k1), 1, "SAME"),
                               tf.float32))
        y = tf.quantization.fake_quant_with_min_max_vars(y, 0.0, 6.0)
        return tf.cast(tf.nn.conv2d(tf.cast(y, dtype), wq(k2), 1, "SAME"), tf.float32)
    return f


def test_a_fake_quant_range_crosses_a_cast_to_float16(tmp_path, monkeypatch):
    """The float16 variant quantizes both convs as the float32 one does (float16 moves a value
    on a fake-quant grid by 0.06 of a step at most) and is as close to TF as it: INT8's
    answers, not exact ones, since the unsigned [0, 6] fake quantization has a grid finer
    than INT8's and the signed one's lowest code saturates (docs/differences.md)."""
    monkeypatch.setenv("TFTRT_QUANTIZE_STEM", "1")
    x = tf.constant(np.random.RandomState(5).randn(4, 8, 8, 4).astype(np.float32))
    got = {}
    for dtype in ("float32", "float16"):
        path = _save(tmp_path, "qat_" + dtype, _qat(getattr(tf, dtype)),
                     tf.TensorSpec([None, 8, 8, 4], tf.float32, name="x"))
        conv, got[dtype] = _converted(path, x, "INT8", use_calibration=False)
        text = _summary(conv)
        line = next(l for l in text.splitlines() if "conv/GEMM layers" in l)
        assert "2 INT8" in line and "100.0% of their FLOPs in INT8" in line, (dtype, line)
        assert "no range" not in text
        got[dtype] = _rel(got[dtype], _native(path, x))
    assert got["float16"] < 1.5 * got["float32"] + 2e-3 and got["float32"] < 1.5e-2, got


def test_bfloat16_inputs_are_generated_and_read_from_an_npz(tmp_path):
    specs = {"x": (tf.bfloat16.as_numpy_dtype, [None, 16])}
    data = I.generate(specs, {"x": (3, 16)})
    assert data["x"].dtype == np.dtype(ml_dtypes.bfloat16) and data["x"].shape == (3, 16)
    assert np.isfinite(data["x"].astype(np.float32)).all()
    x = np.random.RandomState(6).randn(4, 16).astype(ml_dtypes.bfloat16)
    np.savez(tmp_path / "bf16.npz", x=x)
    with np.load(tmp_path / "bf16.npz") as d:
        assert d["x"].dtype.kind == "V"  # what np.savez makes of bfloat16
    got = I.load_npz(str(tmp_path / "bf16.npz"), specs)["x"]
    assert got.dtype == np.dtype(ml_dtypes.bfloat16)
    np.testing.assert_array_equal(got.astype(np.float32), x.astype(np.float32))
    # a void array of another size is no bfloat16: refused with the dtypes named
    np.savez(tmp_path / "v4.npz", x=np.zeros((4, 16), "V4"))
    with pytest.raises(I.InputError, match=re.escape("is |V4; the input is bfloat16")):
        I.load_npz(str(tmp_path / "v4.npz"), specs)


def _training_bn(fmt, dtype, read_mean=False):
    rng = np.random.RandomState(7)
    scale, offset = rng.uniform(0.5, 2, 3).astype(np.float32), rng.randn(3).astype(np.float32)

    def f(x):
        h = tf.cast(x * 3.0 + 1.0, dtype)
        if fmt == "NCHW":
            h = tf.transpose(h, [0, 3, 1, 2])
        y, mean, _ = tf.compat.v1.nn.fused_batch_norm(
            h, tf.constant(scale), tf.constant(offset), epsilon=1e-3, data_format=fmt,
            is_training=True)
        out = tf.nn.relu(tf.cast(y, tf.float32)) * 2.0
        return out + tf.reduce_sum(mean) if read_mean else out
    return f


@pytest.mark.parametrize("fmt,dtype", [("NHWC", "float32"), ("NCHW", "float32"),
                                       ("NHWC", "float16")])
def test_a_training_mode_batch_norm_in_an_inference_graph_converts(tmp_path, fmt, dtype):
    """is_training=True normalizes with the batch's own statistics (Keras 2's LayerNorm is
    such a batch norm over a reshape): converted as TF computes y, where it stayed native and
    split the engines around it (Keras 2 hunt, 2026-12-07)."""
    path = _save(tmp_path, "bn_" + fmt + dtype, _training_bn(fmt, getattr(tf, dtype)),
                 tf.TensorSpec([None, 6, 5, 3], tf.float32, name="x"))
    x = tf.constant(np.random.RandomState(8).randn(2, 6, 5, 3).astype(np.float32))
    conv, got = _converted(path, x)
    assert "FusedBatchNorm" not in _summary(conv).split("Ops left native")[-1]
    assert _rel(got, _native(path, x)) < (1e-5 if dtype == "float32" else 2e-3)


def test_a_training_mode_batch_norm_whose_batch_statistics_are_read_stays_native(tmp_path):
    path = _save(tmp_path, "bn_read", _training_bn("NHWC", tf.float32, read_mean=True),
                 tf.TensorSpec([None, 6, 5, 3], tf.float32, name="x"))
    x = tf.constant(np.random.RandomState(9).randn(2, 6, 5, 3).astype(np.float32))
    conv, got = _converted(path, x)
    assert "is_training=True with its batch statistics (output(s) [1]) read" in _summary(conv)
    assert _rel(got, _native(path, x)) < 1e-5
