"""Quantization-aware models in INT8 without calibration, where every value lies on INT8's grid
(helper hunt, 2026-12-07): the engine must reproduce TF to float rounding, not to an INT8
step. Each case was off before its fix:

- a QAT chain conv -> relu -> fake quant -> conv stored float16 between the convs (the folded
  op's dead layer still counted as a reader when outputs were requantized): 2.1e-3 of the
  largest output off TF; without the relu, the op's clamp was fused into the first conv and
  the fold's source, named as the ONNX model named it, was gone from the network (2.0e-3);
- a signed QDQ / FakeQuant op without narrow_range was folded with the amax of its longer,
  negative side (128 steps): every value re-rounded onto a grid 1/127 coarser, 6.3e-3 off;
- a conv or GEMM reading a fake-quant output through a max pool, a reshape or a transpose
  had no range and stayed FP16 (TF-TRT carried the range across them)."""

import numpy as np
import pytest
import tensorflow as tf

from tftrt import trt_convert as trt

RNG = np.random.RandomState(0)
_w = RNG.randn(3, 3, 16, 16).astype(np.float32) * 0.2
_s = np.abs(_w).max(axis=(0, 1, 2)) / 127
W = (np.rint(_w / _s) * _s).astype(np.float32)     # weights on their per-channel INT8 grid
WD = (RNG.randn(4 * 4 * 16, 10) * 0.05).astype(np.float32)
_sd = np.abs(WD).max(axis=0) / 127
WD = (np.rint(WD / _sd) * _sd).astype(np.float32)
X = np.random.RandomState(1).uniform(-2.0, 2.0, (4, 8, 8, 16)).astype(np.float32)


def _qdq(t, a, narrow=True):
    return tf.quantization.quantize_and_dequantize_v2(t, -a, a, range_given=True,
                                                      narrow_range=narrow)


def _conv(t):
    return tf.nn.conv2d(t, tf.constant(W), 1, "SAME")


CASES = {
    "qat_chain": lambda x: _conv(_qdq(tf.nn.relu(_conv(_qdq(x, 2.0))), 4.0)),
    "qat_chain_no_activation": lambda x: _conv(_qdq(_conv(_qdq(x, 2.0)), 4.0)),
    "qdq_not_narrow": lambda x: _conv(_qdq(x, 2.0, narrow=False)),
    "fake_quant_not_narrow": lambda x: _conv(
        tf.quantization.fake_quant_with_min_max_args(x, -2.0, 2.0)),
    "fq_max_pool_conv": lambda x: _conv(tf.nn.max_pool2d(_qdq(x, 2.0), 2, 2, "VALID")),
    "fq_max_pool_reshape_matmul": lambda x: tf.matmul(
        tf.reshape(tf.nn.max_pool2d(_qdq(x, 2.0), 2, 2, "VALID"), [-1, 256]),
        tf.constant(WD)),
    "fq_transpose_conv": lambda x: _conv(tf.transpose(_qdq(x, 2.0), [0, 2, 1, 3])),
}


def _save(tmp_path, name, f):
    class M(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 16], tf.float32, name="x")])
        def __call__(self, x):
            return f(x)
    path = str(tmp_path / name)
    tf.saved_model.save(M(), path)
    return path


def _engine_layers(converter):
    out = []
    for op in converter.engine_ops.values():
        for _, engine in op.cache.items():
            out += [(l, engine.network) for l in engine.network.layers]
    return out


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_qat_model_on_int8s_grid_is_reproduced_to_float_rounding(tmp_path, name):
    f = CASES[name]

    path = _save(tmp_path, name, lambda x: {"y": f(x)})
    want = tf.saved_model.load(path).signatures["serving_default"](x=tf.constant(X))["y"]
    want = want.numpy()
    c = trt.TrtGraphConverterV2(input_saved_model_dir=path, precision_mode="INT8",
                                use_calibration=False)
    got = np.asarray(c.convert()(x=tf.constant(X))["y"])
    gemms = [(l, n) for l, n in _engine_layers(c) if l.kind in ("conv", "matmul")]
    assert gemms and all(l.precision == "INT8" for l, _ in gemms), \
        [(l.name, l.precision, l.attrs.get("quant_fallback")) for l, _ in gemms]
    if name.startswith("qat_chain"):  # the first conv stores int8 codes for the second
        first, net = gemms[0]
        assert net.tensors[first.outputs[0]].dtype == "int8"
        assert [l.kind for l, _ in _engine_layers(c)] == ["conv", "conv"]
    err = np.abs(got - want).max() / np.abs(want).max()
    assert err < 2e-6, f"{name}: {err:.2e} of the largest output off TF"


def test_an_int8_engine_with_no_quantized_layer_says_so(tmp_path, caplog):
    """Graph ranges none of whose readers is a conv / GEMM (a tanh between): the engine runs
    FP16, and a warning says why (it said nothing above INFO)."""
    path = _save(tmp_path, "m", lambda x: {"y": _conv(tf.tanh(_qdq(x, 2.0)))})
    c = trt.TrtGraphConverterV2(input_saved_model_dir=path, precision_mode="INT8",
                                use_calibration=False)
    with caplog.at_level("WARNING"):
        fn = c.convert()
        fn(x=tf.constant(X))
        fn(x=tf.constant(X[:2]))
    lines = [r.getMessage() for r in caplog.records
             if "none of its 1 conv/GEMM layers runs in INT8" in r.getMessage()]
    assert len(lines) == 1 and "no range for tensor" in lines[0], lines


def test_a_fake_quant_output_that_is_also_a_signature_output_still_folds(tmp_path):
    """The op's output leaves the engine too (a segment output, named after a placeholder in
    the network): the conv reading it still takes its range (it stayed FP16, and summary()
    named the placeholder as the tensor without a range)."""
    path = _save(tmp_path, "m", lambda x: (lambda q: {"q": q, "y": _conv(q)})(_qdq(x, 2.0)))
    want = tf.saved_model.load(path).signatures["serving_default"](x=tf.constant(X))
    c = trt.TrtGraphConverterV2(input_saved_model_dir=path, precision_mode="INT8",
                                use_calibration=False)
    got = c.convert()(x=tf.constant(X))
    (conv,) = [l for l, _ in _engine_layers(c) if l.kind == "conv"]
    assert conv.precision == "INT8", conv.attrs.get("quant_fallback")
    for k in ("q", "y"):
        w = want[k].numpy()
        assert np.abs(np.asarray(got[k]) - w).max() <= 2e-6 * np.abs(w).max(), k
    lines = []
    c.summary(print_fn=lines.append)
    assert "TensorRTOutputPH" not in "\n".join(lines)


def _conv_inputs(converter):
    return {l.name: (l.precision, (l.attrs.get("quant") or {}).get("input_scale"))
            for l, _ in _engine_layers(converter) if l.kind == "conv"}


def test_a_raw_tensor_behind_a_no_op_reshape_keeps_no_fake_quant_range(tmp_path):
    """conv(fq(reshape(x))) + conv(x), the reshape a no-op: the range graph_table gives the
    reshape's output (only fake quantization reads it) must not reach x when the pass removing
    the reshape leaves x in its place: the raw conv was clipped to it (QAT hunt, s50: 0.29 of
    the largest output off TF)."""
    w3 = tf.constant(np.roll(W, 1, axis=-1))
    path = _save(tmp_path, "m", lambda x: {
        "y": _conv(_qdq(tf.reshape(x, [-1, 8, 8, 16]), 1.0)) + tf.nn.conv2d(x, w3, 1, "SAME")})
    x = np.random.RandomState(1).uniform(-1.9, 1.9, X.shape).astype(np.float32)
    want = tf.saved_model.load(path).signatures["serving_default"](x=tf.constant(x))["y"]
    c = trt.TrtGraphConverterV2(input_saved_model_dir=path, precision_mode="INT8",
                                use_calibration=False)
    got = np.asarray(c.convert()(x=tf.constant(x))["y"])
    precisions = sorted(p for p, _ in _conv_inputs(c).values())
    assert precisions == ["FP16", "INT8"], _conv_inputs(c)
    err = np.abs(got - want.numpy()).max() / np.abs(want.numpy()).max()
    assert err < 2e-3, f"{err:.2e}: the raw conv was clipped"


def test_a_carried_fake_quant_range_wins_over_a_calibrated_one(tmp_path):
    """conv(max_pool(fq(x, 1.9))) with calibration data in [-1, 1]: the conv behind the pool
    takes the fake-quant op's range, as a direct reader does ("the graph's ranges win"), not
    the pool output's calibrated 1.0 (0.36 off TF on data in [-2, 2]; QAT hunt, s50)."""
    path = _save(tmp_path, "m", lambda x: {
        "y": _conv(tf.nn.max_pool2d(_qdq(x, 1.9), 2, 2, "VALID"))})
    x = np.random.RandomState(1).uniform(-2, 2, X.shape).astype(np.float32)
    want = tf.saved_model.load(path).signatures["serving_default"](x=tf.constant(x))["y"]

    def calibration():
        for i in range(3):
            yield (tf.constant(np.random.RandomState(10 + i).uniform(-1, 1, X.shape)
                               .astype(np.float32)),)
    c = trt.TrtGraphConverterV2(input_saved_model_dir=path, precision_mode="INT8",
                                use_calibration=True)
    got = np.asarray(c.convert(calibration_input_fn=calibration)(x=tf.constant(x))["y"])
    ((prec, scale),) = _conv_inputs(c).values()
    assert prec == "INT8" and scale == pytest.approx(1.9 / 127)
    assert np.abs(got - want.numpy()).max() <= 2e-6 * np.abs(want.numpy()).max()
