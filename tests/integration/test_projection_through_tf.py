"""A bottleneck with a projection shortcut through TF-TRT's API in INT8, with the backend
fusing the projection into the residual conv (the numpy backend offering it as the CuPy
backend's q_mma does): the converted model answers as the unfused conversion bit for bit,
keeps the fusion through save() / tftrt.load(), and `tftrt inspect` and summary() name the
projection (inspect named it nowhere: regression hunt, s51)."""

import contextlib
import io

import numpy as np
import tensorflow as tf

import tftrt
from tftrt import inspect_model
from tftrt import trt_convert as trt
from tftrt.engine.backends.numpy_backend import NumpyBackend

RNG = np.random.RandomState(0)
K0 = (RNG.randn(3, 3, 4, 16) * 0.3).astype(np.float32)
KA = (RNG.randn(1, 1, 16, 8) * 0.3).astype(np.float32)
KB = (RNG.randn(3, 3, 8, 8) * 0.3).astype(np.float32)
KC = (RNG.randn(1, 1, 8, 32) * 0.3).astype(np.float32)
KP = (RNG.randn(1, 1, 16, 32) * 0.3).astype(np.float32)


def _conv(x, k, stride=1):
    return tf.nn.conv2d(x, tf.constant(k), stride, "SAME")


class Block(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 4], tf.float32, name="x")])
    def __call__(self, x):
        x2 = tf.nn.relu(_conv(x, K0))
        b = tf.nn.relu(_conv(tf.nn.relu(_conv(x2, KA, 2)), KB))
        return tf.nn.relu(_conv(b, KC) + _conv(x2, KP, 2))


def _convert(path, out, x, cal):
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=path, precision_mode="INT8",
                                   use_calibration=True)
    fn = conv.convert(calibration_input_fn=lambda: iter([(c,) for c in cal]))
    conv.build(input_fn=lambda: iter([(x,)]))
    got = fn(x=x)["output_0"].numpy()
    conv.save(out)
    return conv, got


def test_a_fused_projection_through_the_api(tmp_path, monkeypatch):
    monkeypatch.setenv("TFTRT_QUANTIZE_STEM", "1")
    path = str(tmp_path / "block")
    tf.saved_model.save(Block(), path)
    x = tf.constant(np.random.RandomState(1).randn(4, 8, 8, 4).astype(np.float32))
    cal = [np.random.RandomState(s).randn(4, 8, 8, 4).astype(np.float32) for s in (2, 3)]
    monkeypatch.setenv("TFTRT_QUANT_MMA_PROJECTION", "0")
    _, want = _convert(path, str(tmp_path / "plain"), x, cal)
    monkeypatch.setenv("TFTRT_QUANT_MMA_PROJECTION", "1")
    monkeypatch.setattr(NumpyBackend, "fuses_projection", lambda self, net, m, p: True,
                        raising=False)
    conv, got = _convert(path, str(tmp_path / "fused"), x, cal)
    np.testing.assert_array_equal(got, want)
    native = tf.saved_model.load(path)(x).numpy()
    # INT8 with entropy-calibrated ranges from two batches: close in the bulk
    assert np.linalg.norm(got - native) < 3e-2 * np.linalg.norm(native)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        conv.summary(detailed=True)
    assert "fused into" in buf.getvalue(), buf.getvalue()
    loaded = tftrt.load(str(tmp_path / "fused"))
    np.testing.assert_array_equal(loaded.signatures["serving_default"](x=x)["output_0"].numpy(),
                                  want)
    (op,) = loaded.engine_ops.values()
    assert op.stats["builds"] == 0
    info = inspect_model.describe(str(tmp_path / "fused"))
    rows = [r for e in info["json"]["engines"] for p in e["plans"] for r in p["layers"]]
    fused = [r for r in rows if r.get("projection")]
    assert len(fused) == 1 and fused[0]["projection"]["precision"] == "INT8", rows
    lines = []
    inspect_model.format_description(info, lines.append)
    assert any(f"(+ projection {fused[0]['projection']['name']})" in l for l in lines), lines
