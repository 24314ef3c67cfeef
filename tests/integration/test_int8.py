"""INT8 / FP8 through TensorFlow on the numpy backend: calibration with TF-TRT's API (V2 and
TF1), the range methods, ranges stored and restored, quantization-aware (FakeQuant / QDQ)
models folded into INT8 layers, FP16 fallback, summary(), errors on bad calibration input, and
accuracy of trained models (a CNN, a transformer encoder) against FP32."""

import functools
import logging

import numpy as np
import onnx
import pytest
import tensorflow as tf

import tftrt
from tests.integration import models
from tftrt import compare
from tftrt import trt_convert as trt
from tftrt.calibration import QuantizedEngineOp
from tftrt.engine import quantization as Q

L = tf.keras.layers


@pytest.fixture(autouse=True)
def numpy_backend(monkeypatch):
    monkeypatch.setenv("TFTRT_BACKEND", "numpy")


def _engines(op):
    return [e for _, e in op.cache.items()]


def _gemm_precisions(engine):
    return [l.precision for l in engine.network.layers if l.kind in Q.GEMM_KINDS]


def _out(fn, x):
    (v,) = fn(tf.constant(x)).values()
    return v.numpy()


def _rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# --- a small CNN (random weights: workflow tests) --------------------------------------------

@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    tf.keras.utils.set_random_seed(0)
    inp = tf.keras.Input((12, 12, 3), name="image")
    x = L.Conv2D(8, 3, padding="same", activation="relu")(inp)
    y = L.Conv2D(8, 3, padding="same", bias_initializer="random_normal")(x)
    y = L.ReLU()(L.BatchNormalization()(y) + x)
    y = L.GlobalAveragePooling2D()(L.MaxPool2D()(y))
    model = tf.keras.Model(inp, L.Dense(5, bias_initializer="random_normal")(y))
    return models.save_keras(model, str(tmp_path_factory.mktemp("int8") / "cnn")), model


def batches(n, seed=0, shape=(8, 12, 12, 3)):
    rng = np.random.RandomState(seed)
    return [rng.rand(*shape).astype(np.float32) for _ in range(n)]


def calibrated(path, precision="INT8", data=None, **kw):
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=path, precision_mode=precision)
    data = batches(4) if data is None else data
    fn = conv.convert(calibration_input_fn=lambda: iter([(b,) for b in data]), **kw)
    return conv, fn


def test_calibrated_cnn_runs_int8_saves_and_loads(cnn, tmp_path):
    path, model = cnn
    conv, fn = calibrated(path)
    (op,) = conv.engine_ops.values()
    assert isinstance(op, QuantizedEngineOp) and op.spec.precision_mode == "INT8"
    table = op.quantization
    assert table["source"] == "calibration" and table["method"] == "entropy"
    assert table["batches"] == 4 and table["plan"]["quantized_share"] == 1.0
    assert max(table["layer_errors"].values()) < Q.MAX_LAYER_ERROR["INT8"]
    x = batches(1, seed=9)[0]
    got = _out(fn, x)
    (engine,) = _engines(op)
    assert _gemm_precisions(engine) == ["INT8", "INT8", "INT8"]
    assert _rel(got, model(x).numpy()) < 0.03
    lines = []
    conv.summary(print_fn=lines.append)
    text = "\n".join(lines)
    assert "[INT8] conv/GEMM layers: 3 INT8; 100.0% of their FLOPs in INT8" in text
    assert "INT8 / 1" in text

    conv.save(str(tmp_path / "with_plans"))
    conv.save(str(tmp_path / "no_plans"), save_gpu_specific_engines=False)
    loaded = tftrt.load(str(tmp_path / "with_plans"))
    (lop,) = loaded.engine_ops.values()
    assert lop.quantization == table
    np.testing.assert_array_equal(_out(loaded.signatures["serving_default"], x), got)
    assert lop.stats["builds"] == 0 and lop.stats["engine"] == 1
    # without plans the engine rebuilds at run time from the saved ranges: the same engine
    rebuilt = tftrt.load(str(tmp_path / "no_plans"))
    (rop,) = rebuilt.engine_ops.values()
    np.testing.assert_array_equal(_out(rebuilt.signatures["serving_default"], x), got)
    assert rop.stats["builds"] == 1 and _gemm_precisions(_engines(rop)[0]) == ["INT8"] * 3
    # plain TensorFlow still serves the saved model (native segments)
    native = tf.saved_model.load(str(tmp_path / "no_plans")).signatures["serving_default"]
    np.testing.assert_allclose(_out(native, x), model(x).numpy(), rtol=1e-5, atol=1e-5)


def test_ranges_live_in_the_segment_network(cnn):
    conv, _ = calibrated(cnn[0])
    (op,) = conv.engine_ops.values()
    lines = []
    conv.summary(print_fn=lines.append, detailed=False)  # before any engine: the plan
    assert "[INT8] conv/GEMM layers: 3 INT8; 100.0% of their FLOPs in INT8 (calibration " \
           "network for input shapes [[8, 12, 12, 3]])" in "\n".join(lines)
    model = onnx.load_from_string(op.spec.onnx_bytes)
    assert Q.table_from_model(model) == op.quantization
    # the network alone builds the same INT8 engine (e.g. `tftrt compare`, plans' digests)
    from tftrt.engine import BuilderConfig, build_engine
    engine = build_engine(model, {"TensorRTInputPH_0": (8, 12, 12, 3)},
                          BuilderConfig(precision="INT8"))
    x = batches(1, seed=3)[0]
    conv.build(lambda: iter([(x,)]))
    (built,) = _engines(op)
    np.testing.assert_array_equal(engine.execute([x])[0], built.execute([x])[0])


def test_calibration_methods(cnn, monkeypatch):
    data = batches(3)
    first_input = lambda op: [l for l in _engines(op)[0].network.layers  # noqa: E731
                              if l.kind == "conv"][0].inputs[0]
    x = data[0]
    conv, fn = calibrated(cnn[0], data=data, calibration_method="max")
    fn(tf.constant(x))
    (op,) = conv.engine_ops.values()
    name = first_input(op)
    assert op.quantization["method"] == "max"
    assert op.quantization["tensors"][name] == pytest.approx(max(float(b.max()) for b in data))
    monkeypatch.setenv("TFTRT_CALIBRATION_METHOD", "percentile:50")
    conv, fn = calibrated(cnn[0], data=data)
    (op,) = conv.engine_ops.values()
    assert op.quantization["method"] == "percentile" and op.quantization["percentile"] == 50
    # inputs are uniform in [0, 1): the median of |x| is near 0.5
    assert op.quantization["tensors"][name] == pytest.approx(0.5, abs=0.02)
    monkeypatch.delenv("TFTRT_CALIBRATION_METHOD")
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=cnn[0], precision_mode="INT8")
    with pytest.raises(ValueError, match="calibration method 'kl' is not supported"):
        conv.convert(calibration_input_fn=lambda: iter([(x,)]), calibration_method="kl")


def test_entropy_calibration_of_inputs_far_from_zero(tmp_path):
    """A tabular MLP whose features lie in [10, 11]: the entropy method's least divergence
    clipped every input to 10.01, 6.4% off native at the output with every layer INT8 and
    nothing said (helper hunt, s48). It keeps at most calibrator.MAX_CLIPPED of the values
    clipped now: the input's range near 11, the output within 3% as max's."""
    tf.keras.utils.set_random_seed(0)
    inp = tf.keras.Input((16,), name="feat")
    h = L.Dense(32, activation="relu")(L.Dense(32, activation="relu")(inp))
    model = tf.keras.Model(inp, L.Dense(5)(h))
    path = models.save_keras(model, str(tmp_path / "mlp"))
    rng = np.random.RandomState(1)
    data = [(10 + rng.rand(64, 16)).astype(np.float32) for _ in range(10)]
    x = (10 + rng.rand(64, 16)).astype(np.float32)
    ref = model(x).numpy()
    conv, fn = calibrated(path, data=data)
    err = float(np.abs(_out(fn, x) - ref).max() / np.abs(ref).max())
    (op,) = conv.engine_ops.values()
    assert op.quantization["method"] == "entropy"
    (engine,) = _engines(op)
    assert _gemm_precisions(engine) == ["INT8"] * 3
    assert op.quantization["tensors"][engine.network.inputs[0]] > 10.9
    assert err < 3e-2, err


@pytest.mark.parametrize("data, message", [
    ([np.zeros((8, 12, 12), np.float32)], r"calibration_input_fn: batch 0: input 'image' from "
                                          r"calibration_input_fn has shape \(8, 12, 12\)"),
    ([np.zeros((8, 12, 12, 3), np.float64)], "has dtype float64"),
    ([np.ones((8, 12, 12, 3), np.float32), np.full((8, 12, 12, 3), np.nan, np.float32)],
     r"batch 1, input 'image' has 3456 NaN / Inf value\(s\)"),
    ([], r"calibration_input_fn yielded 0 batch\(es\); INT8 / FP8 calibration needs at least 1"),
    ([(np.ones((8, 12, 12, 3), np.float32), np.ones(3, np.float32))],
     r"yielded 2 input\(s\); the signature takes 1"),
])
def test_bad_calibration_input_is_a_clear_error(cnn, data, message):
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=cnn[0], precision_mode="INT8")
    with pytest.raises(ValueError, match=message):
        conv.convert(calibration_input_fn=lambda: iter([d if isinstance(d, tuple) else (d,)
                                                         for d in data]))
    # As in TF-TRT, convert() counts as done only once calibration succeeded.
    with pytest.raises(RuntimeError, match=r"Need to call convert\(\) before save\(\)"):
        conv.save("/tmp/never_written")


def test_two_threads_converting_one_converter_take_turns(cnn):
    """convert() from a second thread while the first calibrates waits for it, then raises
    as a second call in turn does; the converter keeps the first thread's ranges, which its
    function serves. Both used to get through (hunt, s42): each swapped the engine ops the
    other was calibrating, and one thread's function ran ranges save() did not hold."""
    from tests.integration.threads import second_call_during_first
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=cnn[0], precision_mode="INT8")
    data = batches(2)

    def first(hold):
        def slow_data():  # held until the second thread is inside convert()
            hold()
            yield from ((b,) for b in data)
        return conv.convert(calibration_input_fn=slow_data)

    fn, second = second_call_during_first(first, lambda: conv.convert(
        calibration_input_fn=lambda: iter([(b * 20,) for b in data])))
    assert second == "convert() was already called on this converter", second
    (op,) = conv.engine_ops.values()
    amax = max(op.quantization["tensors"].values())
    assert amax <= 1.5, amax  # the first thread's data (in [0, 1)), not the second's x 20
    x = batches(1, seed=5)[0]
    np.testing.assert_allclose(_out(fn, x), cnn[1](x).numpy(), rtol=0.1, atol=0.1)


def test_build_from_inside_convert_is_a_clear_error(cnn):
    """An input function that calls back into the converter gets an error, not a deadlock."""
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=cnn[0], precision_mode="INT8")
    data = batches(1)

    def calls_back():
        conv.build(lambda: iter([(data[0],)]))
        yield (data[0],)

    with pytest.raises(RuntimeError, match=r"build\(\) was called while convert\(\) is running "
                                           r"on this converter in the same thread"):
        conv.convert(calibration_input_fn=calls_back)
    conv.convert(calibration_input_fn=lambda: iter([(data[0],)]))  # and it stays usable
    conv.build(lambda: iter([(data[0],)]))


def test_empty_and_constant_calibration_batches_are_said(cnn, caplog):
    empty = np.zeros((0, 12, 12, 3), np.float32)
    with caplog.at_level(logging.WARNING, logger="tftrt.calibration"):
        conv, fn = calibrated(cnn[0], data=[empty] + batches(2))
    said = [r.getMessage() for r in caplog.records]
    assert any("yielded 1 empty batch(es) (0 samples); they were skipped" in m for m in said)
    assert not any("only constant data" in m for m in said)
    x = batches(1, seed=5)[0]
    np.testing.assert_allclose(_out(fn, x), cnn[1](x).numpy(), rtol=0.1, atol=0.1)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tftrt.calibration"):
        calibrated(cnn[0], data=[np.zeros((8, 12, 12, 3), np.float32)] * 2)
    assert any("yielded only constant data" in r.getMessage() for r in caplog.records)
    with pytest.raises(ValueError, match=r"yielded 0 batch\(es\)"):  # only empty batches
        calibrated(cnn[0], data=[empty])


@pytest.mark.parametrize("sizes, warned", [((8, 8, 8), 24), ((3,), 3), ((40, 40, 40), None)])
def test_few_calibration_samples_are_said(cnn, caplog, sizes, warned):
    """Ranges from a handful of samples clip later inputs while the layer errors measured on
    those samples look fine (helper hunt, s44): under FEW_CALIBRATION_SAMPLES rows in all,
    calibration says how many it saw and what to give; the empty batch counts none."""
    from tftrt import calibration
    data = [np.zeros((0, 12, 12, 3), np.float32)] + [
        b for i, n in enumerate(sizes) for b in batches(1, seed=i, shape=(n, 12, 12, 3))]
    with caplog.at_level(logging.WARNING, logger="tftrt.calibration"):
        calibrated(cnn[0], data=data)
    said = [r.getMessage() for r in caplog.records if "sample(s) in all" in r.getMessage()]
    assert calibration.FEW_CALIBRATION_SAMPLES == 100
    if warned is None:
        assert said == []
    else:
        assert said == [f"calibration_input_fn gave {warned} sample(s) in all (rows of the "
                        f"engines' inputs over {len(sizes)} batch(es)); ranges from so few "
                        f"can clip the values the model serves later, although each layer's "
                        f"error on them looks small: calibrate with a few hundred samples of "
                        f"real inputs (TensorRT suggests about 500)"], said


@pytest.mark.parametrize("rows, warned", [(40, None), (8, 32)])
def test_a_scalar_engine_input_does_not_count_as_the_batch(tmp_path, caplog, rows, warned):
    """An engine reading a scalar beside the batch (x * t) counted one sample a batch: 4
    batches of 200 rows read as 4 samples and warned that they were too few (helper hunt,
    s54). The rows are those of the inputs whose first dimension is the batch."""
    rng = np.random.RandomState(0)

    class Scaled(tf.Module):
        def __init__(self):
            self.w = tf.Variable(rng.randn(16, 8).astype(np.float32))

        @tf.function(input_signature=[tf.TensorSpec([None, 16], tf.float32, name="x"),
                                      tf.TensorSpec([], tf.float32, name="t")])
        def __call__(self, x, t):
            return {"y": tf.nn.relu(tf.matmul(x * t, self.w))}
    path, module = str(tmp_path / "scaled"), Scaled()
    tf.saved_model.save(module, path)
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=path, precision_mode="INT8",
                                   minimum_segment_size=1)
    data = [{"x": rng.randn(rows, 16).astype(np.float32), "t": np.float32(0.5 + i / 4)}
            for i in range(4)]
    with caplog.at_level(logging.WARNING, logger="tftrt.calibration"):
        fn = conv.convert(calibration_input_fn=lambda: iter(data))
    (op,) = conv.engine_ops.values()
    assert sorted(op.spec.input_tensors) == ["t:0", "x:0"]
    said = [r.getMessage() for r in caplog.records if "sample(s) in all" in r.getMessage()]
    assert said == ([] if warned is None else [said[0]]) and \
        all(f"gave {warned} sample(s) in all" in m for m in said), said
    x = rng.randn(5, 16).astype(np.float32)
    want = np.maximum(x * 0.75 @ module.w.numpy(), 0)
    got = fn(x=tf.constant(x), t=tf.constant(0.75))["y"].numpy()
    assert _rel(got, want) < 5e-2


def test_calibration_on_the_gpu_is_a_switch_for_the_cupy_backend(monkeypatch, caplog):
    """Calibration builds its FP32 engines on the CuPy backend where CuPy is the backend
    (TFTRT_CALIBRATE_ON_GPU, default on; tests/gpu/test_int8_gpu.py checks them against the
    host's), on the host with TFTRT_CALIBRATE_ON_GPU=0 or another backend -- silently by
    default, with a warning where the variable asked for the GPU."""
    import logging
    from tftrt import calibration
    from tftrt.engine.calibrator import fp32_engine
    monkeypatch.delenv("TFTRT_CALIBRATE_ON_GPU", raising=False)
    with caplog.at_level(logging.WARNING, logger="tftrt.calibration"):
        assert calibration.calibration_builder() is None  # TFTRT_BACKEND=numpy here
    assert "needs the CuPy backend" not in caplog.text
    monkeypatch.setenv("TFTRT_CALIBRATE_ON_GPU", "1")
    with caplog.at_level(logging.WARNING, logger="tftrt.calibration"):
        assert calibration.calibration_builder() is None
    assert "needs the CuPy backend (TFTRT_BACKEND is numpy)" in caplog.text
    monkeypatch.setattr("tftrt.engine_op.resolve_backend", lambda: "cupy")
    for value in ("1", ""):  # asked for, and the default
        monkeypatch.setenv("TFTRT_CALIBRATE_ON_GPU", value)
        build = calibration.calibration_builder()
        assert build.func is fp32_engine and build.keywords == {"backend": "cupy"}
    monkeypatch.setenv("TFTRT_CALIBRATE_ON_GPU", "0")
    assert calibration.calibration_builder() is None


class OutOfMemoryError(Exception):
    """Named as CuPy's."""


def test_a_failure_of_gpu_calibration_moves_it_to_the_host(cnn, monkeypatch, caplog):
    """Calibrating on the GPU, a failure at an engine's first batch (out of memory here; a
    layer the GPU cannot build alike) calibrates that engine on the host instead, with a
    warning, and gives the host's table; an out-of-memory at a later batch (a new shape: a
    new FP32 engine) is a MemoryError that says what to change."""
    from tftrt import calibration
    from tftrt.engine.calibrator import fp32_engine
    want = calibrated(cnn[0])[0]
    calls = []

    def gpu_build(network, shapes):  # the GPU builder, failing from its n-th engine
        calls.append(shapes)
        if len(calls) >= fail_at:
            raise error
        return fp32_engine(network, shapes)

    monkeypatch.setattr(calibration, "calibration_builder", lambda: gpu_build)
    fail_at, error = 1, ValueError("Conv__3: no FP32 kernel takes it on this GPU")
    with caplog.at_level(logging.WARNING, logger="tftrt.calibration"):
        conv, _ = calibrated(cnn[0])
    assert "calibration on the GPU failed (ValueError: Conv__3: no FP32 kernel" in caplog.text
    calls.clear()
    error = OutOfMemoryError("Out of memory allocating 411,041,792 bytes")
    with caplog.at_level(logging.WARNING, logger="tftrt.calibration"):
        conv, _ = calibrated(cnn[0])
    assert "calibration on the GPU failed (OutOfMemoryError: Out of memory allocating " \
           "411,041,792 bytes); calibrating it on the host instead" in caplog.text
    (op,), (op_want,) = conv._engine_ops.values(), want._engine_ops.values()
    assert op.quantization["tensors"] == op_want.quantization["tensors"]
    assert len(calls) == 1   # the host took every batch after it
    calls.clear()
    fail_at = 2   # the second shape's engine
    data = batches(2) + batches(1, shape=(4, 12, 12, 3))
    with pytest.raises(MemoryError, match=r"calibration on the GPU ran out of memory at batch "
                                          r"2 \(OutOfMemoryError: .*\); calibrate on the host "
                                          r"with TFTRT_CALIBRATE_ON_GPU=0, or with smaller"):
        calibrated(cnn[0], data=data)


def test_calibration_input_fn_only_with_calibration(cnn):
    for precision, says in (("INT8", "INT8"), ("FP16", "INT8"), ("FP8", "FP8")):
        # TF-TRT's words for INT8 and the float precisions; FP8 says its own (helper hunt, s48)
        conv = trt.TrtGraphConverterV2(input_saved_model_dir=cnn[0], precision_mode=precision,
                                       use_calibration=False)
        with pytest.raises(ValueError, match=f"Should not specify calibration_input_fn because "
                                             f"{says} calibration is not needed"):
            conv.convert(calibration_input_fn=lambda: iter(batches(1)))
    for precision in ("INT8", "FP8"):
        conv = trt.TrtGraphConverterV2(input_saved_model_dir=cnn[0], precision_mode=precision)
        with pytest.raises(ValueError, match=f"Should specify calibration_input_fn because "
                                             f"{precision} calibration is needed"):
            conv.convert()


def test_int8_without_ranges_runs_fp16_with_a_warning(cnn, caplog):
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=cnn[0], precision_mode="INT8",
                                   use_calibration=False)
    with caplog.at_level(logging.WARNING, logger="tftrt.calibration"):
        fn = conv.convert()
    assert any("INT8 precision without calibration needs quantization ranges" in r.getMessage()
               and "runs in FP16" in r.getMessage() for r in caplog.records)
    (op,) = conv.engine_ops.values()
    assert op.spec.precision_mode == "FP16" and not isinstance(op, QuantizedEngineOp)
    x = batches(1)[0]
    np.testing.assert_allclose(_out(fn, x), cnn[1](x).numpy(), rtol=2e-2, atol=2e-2)


def test_fp8_calibrated_cnn(cnn):
    assert "FP8" in trt.TrtPrecisionMode.supported_precision_modes()
    assert trt.TrtPrecisionMode.supported_precision_modes()[:3] == ["FP32", "FP16", "INT8"]
    conv, fn = calibrated(cnn[0], precision="FP8")
    (op,) = conv.engine_ops.values()
    assert op.quantization["method"] == "max" and op.quantization["precision"] == "FP8"
    x = batches(1, seed=5)[0]
    got = _out(fn, x)
    (engine,) = _engines(op)
    assert _gemm_precisions(engine) == ["FP8"] * 3
    assert _rel(got, cnn[1](x).numpy()) < 0.06
    with pytest.raises(ValueError, match="It should be one of FP32, FP16, INT8, FP8"):
        trt.TrtGraphConverterV2(input_saved_model_dir=cnn[0], precision_mode="FP4")


def test_a_layer_over_the_error_limit_stays_fp16(cnn, monkeypatch):
    monkeypatch.setenv("TFTRT_QUANTIZATION_MAX_ERROR", "1e-9")
    conv, fn = calibrated(cnn[0])
    fn(tf.constant(batches(1)[0]))
    (op,) = conv.engine_ops.values()
    (engine,) = _engines(op)
    assert _gemm_precisions(engine) == ["FP16"] * 3
    lines = []
    conv.summary(print_fn=lines.append)
    text = "\n".join(lines)
    assert "[INT8] conv/GEMM layers: 3 FP16; 0.0% of their FLOPs in INT8" in text
    assert "differs from the FP32 one by" in text and "limit 1e-09" in text


# --- quantization-aware models: FakeQuant / QDQ ranges, folding ------------------------------

def conv_conv_dense_weights():
    """Seeded weights of a 3x3 conv (3 -> 8), a 3x3 conv (8 -> 8) and a dense (8 -> 4)."""
    rng = np.random.RandomState(0)
    return (tf.constant(rng.randn(3, 3, 3, 8).astype(np.float32) * 0.4),
            tf.constant(rng.randn(3, 3, 8, 8).astype(np.float32) * 0.3),
            tf.constant(rng.randn(8, 4).astype(np.float32)))


class QatModel(tf.Module):
    """conv -> relu -> FakeQuant(0, 6) -> conv -> FakeQuant(-8, 8) -> dense; the input is
    fake-quantized to [-1, 1] by QuantizeAndDequantizeV2 (range_given). One tensor (the pooled
    features) has no range."""

    def __init__(self):
        self.w1, self.w2, self.wd = conv_conv_dense_weights()

    @tf.function(input_signature=[tf.TensorSpec([None, 10, 10, 3], tf.float32, name="x")])
    def __call__(self, x):
        fq = tf.quantization.fake_quant_with_min_max_vars
        x = tf.quantization.quantize_and_dequantize_v2(x, -1.0, 1.0, range_given=True,
                                                       narrow_range=True)
        x = fq(tf.nn.relu(tf.nn.conv2d(x, self.w1, 1, "SAME")), 0.0, 6.0)
        x = fq(tf.nn.conv2d(x, self.w2, 1, "SAME"), -8.0, 8.0)
        x = tf.reduce_mean(tf.nn.relu(x), [1, 2])
        return tf.identity(tf.matmul(x, self.wd), name="output")


@pytest.fixture(scope="module")
def qat_dir(tmp_path_factory):
    return models.save_module(QatModel(), str(tmp_path_factory.mktemp("int8") / "qat"))


def test_fake_quant_ranges_fold_into_int8_layers(qat_dir):
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=qat_dir, precision_mode="INT8",
                                   use_calibration=False)
    fn = conv.convert()
    (op,) = conv.engine_ops.values()
    table = op.quantization
    assert table["source"] == "graph" and len(table["fake_quant"]) == 3
    # each op's range, on its output and its input; FakeQuant(-8, 8) nudges its zero point
    # to 128 of 255 levels, [-128, 127] * 16 / 255: its shorter side, 127 steps, so that
    # INT8's step is the op's own (s50; the longer side re-rounded every value)
    assert sorted(table["tensors"].values()) == pytest.approx(
        [1.0, 1.0, 6.0, 6.0, 127 * 16 / 255, 127 * 16 / 255])
    x = np.random.RandomState(1).uniform(-1.2, 1.2, (4, 10, 10, 3)).astype(np.float32)
    got = _out(fn, x)
    (engine,) = _engines(op)
    layers = engine.network.layers
    convs = [l for l in layers if l.kind == "conv"]
    assert [l.precision for l in convs] == ["INT8", "INT8"]
    assert all(l.attrs["quant"].get("folded") for l in convs)
    # the two fake-quant ops before the convs are gone (the convs read their inputs); the one
    # before the ReLU stays, as TF computes it (no INT8 layer reads it)
    folded = {f for f, src in table["fake_quant"].items()
              if src in [c.inputs[0] for c in convs]}
    assert len(folded) == 2
    assert not folded & {o for l in layers for o in l.outputs}
    assert convs[0].attrs["quant"]["input_scale"] == pytest.approx(1 / 127)
    assert convs[1].attrs["quant"]["input_scale"] == pytest.approx(6 / 127)
    (mm,) = [l for l in layers if l.kind == "matmul"]
    assert mm.precision == "FP16" and "no range" in mm.attrs["quant_fallback"]
    want = QatModel()(tf.constant(x)).numpy()  # TF runs the fake quantization itself
    assert _rel(got, want) < 0.05
    lines = []
    conv.summary(print_fn=lines.append)
    text = "\n".join(lines)
    assert "conv/GEMM layers: 1 FP16, 2 INT8" in text
    assert text.count("no range, so their readers stay FP16: ReduceMean_out") == 1


class FakeQuantBeside(tf.Module):
    """x -> FakeQuant(-2, 2) -> conv a; x -> conv b (the raw x); a + b."""

    def __init__(self):
        rng = np.random.RandomState(0)
        self.w1 = tf.constant(rng.randn(3, 3, 3, 8).astype(np.float32) * 0.4)
        self.w2 = tf.constant(rng.randn(3, 3, 3, 8).astype(np.float32) * 0.4)

    @tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 3], tf.float32, name="x")])
    def __call__(self, x):
        q = tf.quantization.fake_quant_with_min_max_vars(x, -2.0, 2.0, narrow_range=True)
        a = tf.nn.conv2d(q, self.w1, 1, "SAME")
        b = tf.nn.conv2d(x, self.w2, 1, "SAME")
        return {"a": a, "b": b, "y": a + b}


def test_a_fake_quant_range_does_not_clip_the_raw_inputs_other_readers(tmp_path):
    """The fake-quant op's range was also recorded on its input, so a conv reading the raw
    input beside it was quantized with that range and clipped to it: 11% off TF on data in
    +-2.6 with [-2, 2], and no warning (INT8 hunt, 2026-12-04). Only what reads the
    fake-quant output takes its range; the other reader has none and stays FP16."""
    path = models.save_module(FakeQuantBeside(), str(tmp_path / "m"))
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=path, precision_mode="INT8",
                                   use_calibration=False)
    fn = conv.convert()
    x = np.random.RandomState(1).uniform(-2.6, 2.6, (4, 8, 8, 3)).astype(np.float32)
    got = fn(x=tf.constant(x))
    want = tf.saved_model.load(path).signatures["serving_default"](x=tf.constant(x))
    assert _rel(got["b"].numpy(), want["b"].numpy()) < 2e-3  # FP16, unclipped (was 0.11)
    assert _rel(got["a"].numpy(), want["a"].numpy()) < 0.02  # INT8 with the folded range
    (op,) = conv.engine_ops.values()
    (engine,) = _engines(op)
    convs = sorted((l for l in engine.network.layers if l.kind == "conv"),
                   key=lambda l: l.precision)
    assert [l.precision for l in convs] == ["FP16", "INT8"]
    assert "no range" in convs[0].attrs["quant_fallback"]
    assert convs[1].attrs["quant"].get("folded")


class TinyUnits(tf.Module):
    """conv -> relu -> conv -> relu -> mean -> dense, no biases: fed values of 1e-8 (raw
    physical units), every activation is below float16's normal range."""

    def __init__(self):
        self.w1, self.w2, self.wd = conv_conv_dense_weights()

    @tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 3], tf.float32, name="x")])
    def __call__(self, x):
        h = tf.nn.relu(tf.nn.conv2d(x, self.w1, 1, "SAME"))
        h = tf.nn.relu(tf.nn.conv2d(h, self.w2, 1, "SAME"))
        return {"y": tf.matmul(tf.reduce_mean(h, [1, 2]), self.wd)}


@pytest.mark.parametrize("precision,bar", [("INT8", 0.03), ("FP8", 0.08)])
def test_tensors_calibrated_below_float16s_range_keep_float32(tmp_path, precision, bar):
    """Calibrated and served with values of 1e-8, INT8 engines answered 26% and FP8 95% off
    TF: the quantized layers' outputs were stored as float16 and flushed to zero, and the
    per-layer check blamed the quantization (INT8 hunt, 2026-12-04). Tensors calibrated
    below float16's normal range now keep float32 around the quantized layers, as those
    past half of its range did."""
    path = models.save_module(TinyUnits(), str(tmp_path / "m"))
    rng = np.random.RandomState(0)
    data = [(rng.randn(4, 8, 8, 3) * 1e-8).astype(np.float32) for _ in range(3)]
    conv, fn = calibrated(path, precision, data=data)
    x = (np.random.RandomState(9).randn(4, 8, 8, 3) * 1e-8).astype(np.float32)
    want = tf.saved_model.load(path).signatures["serving_default"](x=tf.constant(x))
    got = fn(x=tf.constant(x))["y"].numpy()
    assert _rel(got, want["y"].numpy()) < bar
    (op,) = conv.engine_ops.values()
    (engine,) = _engines(op)
    assert _gemm_precisions(engine) == [precision] * 3


def test_fp8_on_fake_quant_ranges_warns_that_it_cannot_hold_the_int8_grid(qat_dir, caplog):
    """FP8 folded the model's 8-bit fake-quant ranges silently and came out 4-9 steps of
    their grid off TF (helper hunt, 2026-12-04); it now says so, once, and names INT8. The
    INT8 conversion of the same model says nothing of it."""
    import logging
    x = np.random.RandomState(1).uniform(-1.2, 1.2, (4, 10, 10, 3)).astype(np.float32)
    want = QatModel()(tf.constant(x)).numpy()
    errors = {}
    for mode in ("INT8", "FP8"):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="tftrt"):
            conv = trt.TrtGraphConverterV2(input_saved_model_dir=qat_dir, precision_mode=mode,
                                           use_calibration=False)
            fn = conv.convert()
            errors[mode] = _rel(_out(fn, x), want)
        said = [r.getMessage() for r in caplog.records if "E4M3 cannot hold" in r.getMessage()]
        assert len(said) == (1 if mode == "FP8" else 0), said
        if said:
            assert "precision_mode='INT8'" in said[0]
    assert errors["INT8"] < 0.05 and errors["FP8"] < 0.15, errors


def test_calibration_keeps_the_graph_ranges(qat_dir):
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=qat_dir, precision_mode="INT8")
    data = [np.random.RandomState(k).uniform(-3, 3, (4, 10, 10, 3)).astype(np.float32)
            for k in range(3)]
    fn = conv.convert(calibration_input_fn=lambda: iter([(d,) for d in data]))
    (op,) = conv.engine_ops.values()
    table = op.quantization
    assert table["source"] == "calibration+graph"
    fn(tf.constant(data[0]))
    (engine,) = _engines(op)
    convs = [l for l in engine.network.layers if l.kind == "conv"]
    # the graph's ranges win over calibration (inputs reach 3, the QDQ op says 1)
    assert convs[0].attrs["quant"]["input_scale"] == pytest.approx(1 / 127)
    # calibration gave the pooled features a range: the dense layer is INT8 too
    assert _gemm_precisions(engine) == ["INT8"] * 3


# --- TF1 -------------------------------------------------------------------------------------

def tf1_graph():
    g = tf.Graph()
    rng = np.random.RandomState(2)
    with g.as_default():
        x = tf.compat.v1.placeholder(tf.float32, (None, 8, 8, 2), name="x")
        y = tf.nn.relu(tf.nn.conv2d(x, tf.constant(rng.randn(3, 3, 2, 6), tf.float32), 1,
                                    "SAME"))
        y = tf.reduce_mean(y, [1, 2])
        tf.identity(tf.matmul(y, tf.constant(rng.randn(6, 3), tf.float32)), name="out")
    return g.as_graph_def()


@pytest.mark.parametrize("dynamic", [False, True])
def test_tf1_calibrate(dynamic):
    gd = tf1_graph()
    conv = trt.TrtGraphConverter(input_graph_def=gd, nodes_denylist=["out"],
                                 precision_mode="INT8", is_dynamic_op=dynamic, max_batch_size=4,
                                 minimum_segment_size=2)
    first = conv.convert()
    from tftrt import activation
    (node,) = [n for n in first.node if activation.SPEC_ATTR in n.attr]
    assert not node.attr[activation.PLANS_ATTR].list.s  # static engines wait for calibration
    data = [np.random.RandomState(k).randn(4, 8, 8, 2).astype(np.float32) for k in range(3)]
    feeds = iter(data)
    out = conv.calibrate(["out:0"], num_runs=3, feed_dict_fn=lambda: {"x:0": next(feeds)})
    (node,) = [n for n in out.node if activation.SPEC_ATTR in n.attr]
    table = Q.table_from_model(onnx.load_from_string(node.attr[activation.ONNX_ATTR].s))
    assert table["batches"] == 3 and table["plan"]["quantized_share"] == 1.0
    assert bool(node.attr[activation.PLANS_ATTR].list.s) == (not dynamic)
    x = np.random.RandomState(7).randn(4, 8, 8, 2).astype(np.float32)
    got, g = models.session_run(out, x, fetch="out:0", feed="x:0")
    want, _ = models.session_run(gd, x, fetch="out:0", feed="x:0")
    assert _rel(got, want) < 0.03
    (op,) = [o for o in g._py_funcs_used_in_graph if isinstance(o, QuantizedEngineOp)]
    assert op.stats["engine"] == 1 and op.stats["builds"] == (1 if dynamic else 0)
    assert _gemm_precisions(_engines(op)[0]) == ["INT8", "INT8"]


def test_tf1_calibrate_errors():
    conv = trt.TrtGraphConverter(input_graph_def=tf1_graph(), nodes_denylist=["out"],
                                 precision_mode="INT8", is_dynamic_op=True,
                                 minimum_segment_size=2)
    conv.convert()
    nan = np.full((2, 8, 8, 2), np.nan, np.float32)
    with pytest.raises(ValueError, match=r"calibrate\(\): batch 0, input 'x:0' has 256 NaN"):
        conv.calibrate(["out:0"], 1, feed_dict_fn=lambda: {"x:0": nan})
    with pytest.raises(ValueError, match="num_runs should be a positive integer; got 0"):
        conv.calibrate(["out:0"], 0, feed_dict_fn=lambda: {})
    with pytest.raises(ValueError, match=r"fetch_names: 'nope:0' is not in the graph"):
        conv.calibrate(["nope:0"], 1, feed_dict_fn=lambda: {})
    with pytest.raises(ValueError, match="run 0 failed"):
        conv.calibrate(["out:0"], 1, feed_dict_fn=lambda: {"x:0": np.zeros((2, 3), np.float32)})
    # input_map_fn: the data comes from tensors of the calibration graph
    x = np.random.RandomState(3).randn(2, 8, 8, 2).astype(np.float32)
    out = conv.calibrate(["out:0"], 2, input_map_fn=lambda: {"x:0": tf.constant(x)})
    assert out is not None


# --- accuracy of trained models ----------------------------------------------------------------

def pattern_data(n, seed, size=12, classes=10, noise=0.35):
    """Images of ``classes`` fixed smooth random patterns (seeded), each sample shifted by up
    to 4 pixels, scaled by 0.6-1.4 and with Gaussian noise: learnable, not trivial (the small
    CNN below reaches ~99 %, as a digits classifier does; at noise 0.7, 85 %)."""
    protos = np.random.RandomState(1234).randn(classes, size + 4, size + 4)
    k = np.outer([1, 4, 6, 4, 1.0], [1, 4, 6, 4, 1.0])
    k /= k.sum()
    smooth = np.zeros_like(protos)
    for c in range(classes):
        p = np.pad(protos[c], 2, mode="wrap")
        smooth[c] = sum(k[i, j] * p[i:i + size + 4, j:j + size + 4]
                        for i in range(5) for j in range(5))
    smooth = (smooth - smooth.mean((1, 2), keepdims=True)) / smooth.std((1, 2), keepdims=True)
    rng = np.random.RandomState(seed)
    y = rng.randint(0, classes, n)
    dx, dy = rng.randint(0, 5, n), rng.randint(0, 5, n)
    x = np.stack([smooth[c, a:a + size, b:b + size] for c, a, b in zip(y, dx, dy)])
    x = x * rng.uniform(0.6, 1.4, (n, 1, 1)) + noise * rng.randn(n, size, size)
    return x[..., None].astype(np.float32), y


def sequence_data(n, seed, length=16, dim=12, classes=4, noise=1.3):
    """Sequences of Gaussian vectors in which 3 to 5 positions carry the direction of the
    class plus a class-specific follow-up at the next position; the class is learnable only
    by finding those positions (seeded; the encoder below reaches ~96 %)."""
    dirs = np.random.RandomState(99).randn(2, classes, dim)
    rng = np.random.RandomState(seed)
    y = rng.randint(0, classes, n)
    x = noise * rng.randn(n, length, dim)
    for i in range(n):
        for p in rng.choice(length - 1, rng.randint(3, 6), replace=False):
            x[i, p] += dirs[0, y[i]]
            x[i, p + 1] += 0.5 * dirs[1, y[i]]
    return x.astype(np.float32), y


def train(model, x, y, epochs):
    model.compile(tf.keras.optimizers.Adam(3e-3),
                  tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=64, epochs=epochs, verbose=0)
    return model


def small_cnn():
    inp = tf.keras.Input((12, 12, 1), name="image")
    x = L.Conv2D(16, 3, padding="same", activation="relu")(inp)
    x = L.ReLU()(L.BatchNormalization()(L.Conv2D(16, 3, padding="same")(x)))
    x = L.Conv2D(32, 3, padding="same", activation="relu")(L.MaxPool2D()(x))
    return tf.keras.Model(inp, L.Dense(10)(L.GlobalAveragePooling2D()(x)))


def _mbconv(x, cin, cout, stride):
    """An inverted residual block as MobileNetV2 / EfficientNet build it: 1x1 expansion,
    depthwise 3x3, squeeze-and-excitation (sigmoid gate), swish, 1x1 projection, residual."""
    h = L.Activation("swish")(L.BatchNormalization()(L.Conv2D(4 * cin, 1, use_bias=False)(x)))
    h = L.DepthwiseConv2D(3, stride, padding="same", use_bias=False)(h)
    h = L.Activation("swish")(L.BatchNormalization()(h))
    g = L.GlobalAveragePooling2D(keepdims=True)(h)
    g = L.Conv2D(4 * cin, 1, activation="sigmoid")(L.Conv2D(cin // 4, 1, activation="swish")(g))
    h = L.BatchNormalization()(L.Conv2D(cout, 1, use_bias=False)(L.Multiply()([h, g])))
    return L.Add()([x, h]) if stride == 1 and cin == cout else h


def small_efficient():
    inp = tf.keras.Input((12, 12, 1), name="image")
    x = L.Conv2D(16, 3, padding="same", use_bias=False)(inp)
    x = L.Activation("swish")(L.BatchNormalization()(x))
    x = _mbconv(_mbconv(_mbconv(x, 16, 16, 1), 16, 24, 2), 24, 24, 1)
    x = L.Activation("swish")(L.BatchNormalization()(L.Conv2D(64, 1, use_bias=False)(x)))
    return tf.keras.Model(inp, L.Dense(10)(L.GlobalAveragePooling2D()(x)))


def small_encoder():
    inp = tf.keras.Input((16, 12), name="sequence")
    x = L.Dense(32)(inp)
    x = L.LayerNormalization()(x + L.MultiHeadAttention(2, 16)(x, x))
    h = L.Dense(64, activation="gelu")(x)
    x = L.LayerNormalization()(x + L.Dense(32)(h))
    return tf.keras.Model(inp, L.Dense(4)(L.GlobalAveragePooling1D()(x)))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """name -> (saved model, test inputs, test labels, FP32 predictions). "efficient": the
    MobileNet / EfficientNet family's blocks (depthwise, squeeze-and-excitation, swish) on
    noisier patterns (99.5 % after 12 epochs), where entropy calibration's logits are furthest
    from FP32's of the three methods (relative 0.040 against max's 0.028, s42) and random-
    weight EfficientNets lose most to INT8."""
    out = {}
    noisy = functools.partial(pattern_data, noise=0.8)
    for name, make, data, epochs in (("cnn", small_cnn, pattern_data, 4),
                                     ("encoder", small_encoder, sequence_data, 4),
                                     ("efficient", small_efficient, noisy, 12)):
        tf.keras.utils.set_random_seed(0)
        xtr, ytr = data(6000, seed=1)
        xte, yte = data(2000, seed=2)
        model = train(make(), xtr, ytr, epochs=epochs)
        path = models.save_keras(model, str(tmp_path_factory.mktemp("trained") / name))
        native = tf.saved_model.load(path).signatures["serving_default"]
        fp32 = np.concatenate([_out(native, xte[k:k + 500]) for k in range(0, 2000, 500)])
        out[name] = (path, xtr[:512], xte, yte, fp32)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cnn", "encoder", "efficient"])
@pytest.mark.parametrize("precision", ["INT8", "FP8"])
def test_trained_model_accuracy(trained, name, precision):
    """2000 test samples: top-1 agrees with FP32 on >= 99 % of them, accuracy drops by at most
    0.5 points; (nearly) every conv / GEMM FLOP runs quantized."""
    path, cal, xte, yte, fp32 = trained[name]
    conv, fn = calibrated(path, precision=precision,
                          data=[cal[k:k + 64] for k in range(0, 512, 64)])
    got = np.concatenate([_out(fn, xte[k:k + 500]) for k in range(0, 2000, 500)])
    agree = float(np.mean(got.argmax(1) == fp32.argmax(1)))
    acc32 = float(np.mean(fp32.argmax(1) == yte))
    acc = float(np.mean(got.argmax(1) == yte))
    assert acc32 > 0.8, f"{name} trained to {acc32:.3f} only"
    assert agree >= 0.99, f"{name} {precision}: top-1 agrees on {agree:.4f}"
    assert acc32 - acc <= 0.005, f"{name} {precision}: accuracy {acc:.4f} vs FP32 {acc32:.4f}"
    (op,) = conv.engine_ops.values()
    (engine,) = _engines(op)
    report = Q.precision_report(engine.network)
    # the encoder's fused attention (its activation x activation GEMMs stay FP16) counts in
    # the FLOPs since 2026-12-01: 89% of the encoder's run quantized, every conv/GEMM with a
    # weight does
    attention = [r for r in report["layers"] if r["kind"] == "attention"]
    assert report["quantized_share"] >= (0.85 if attention else 0.9), report
    assert all(r["precision"] == precision for r in report["layers"] if r["kind"] != "attention")


def test_dynamic_shape_profile_serves_other_batches_int8(cnn, tmp_path):
    """use_dynamic_shape: one engine per profile; the profile's other shapes are INT8 too
    (made from the opt engine's network, with its quantized layers), before and after load."""
    path, model = cnn
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=path, precision_mode="INT8",
                                   use_dynamic_shape=True)
    fn = conv.convert(calibration_input_fn=lambda: iter([(b,) for b in batches(3)]))
    conv.build(lambda: iter([(b,) for b in batches(1, shape=(2, 12, 12, 3)) +
                             batches(1, shape=(8, 12, 12, 3))]))
    (op,) = conv.engine_ops.values()
    x = batches(1, seed=4, shape=(5, 12, 12, 3))[0]
    got = _out(fn, x)
    assert op.stats["native"] == 0 and op.stats["builds"] == 1
    assert _rel(got, model(x).numpy()) < 0.03
    ((_, pe),) = op.cache.items()
    engine = pe.engine_for(((5, 12, 12, 3),))
    assert _gemm_precisions(engine) == ["INT8"] * 3
    conv.save(str(tmp_path / "dyn"))
    loaded = tftrt.load(str(tmp_path / "dyn"))
    np.testing.assert_array_equal(_out(loaded.signatures["serving_default"], x), got)
    (lop,) = loaded.engine_ops.values()
    assert lop.stats["builds"] == 0 and lop.stats["native"] == 0


@pytest.mark.parametrize("dynamic", [False, True])
def test_an_int8_engine_that_kept_fp16_loads_from_its_plan(cnn, tmp_path, monkeypatch, caplog,
                                                            dynamic):
    """Timed precision keeping the FP16 engine for an INT8 request (the GPU's answer for
    MobileNetV2, s43): the saved plan serves the loaded INT8 op. Before, it was refused as
    'built in precision FP16' (another conversion's) and rebuilt -- calibrated ranges,
    three engines timed: minutes on a GPU -- at every load."""
    monkeypatch.setenv("TFTRT_QUANT_TIMED_PRECISION", "1")
    from tftrt.engine import builder as builder_mod
    monkeypatch.setattr(builder_mod, "layer_times", lambda e: {
        l.name: (30e-6 if "quant" in l.attrs else 10e-6) for l in e.network.layers})
    monkeypatch.setattr(builder_mod, "engine_seconds",
                        lambda e: 0.9e-3 if e.precision == "FP16" else 1.0e-3)
    path, model = cnn
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=path, precision_mode="INT8",
                                   use_dynamic_shape=dynamic)
    fn = conv.convert(calibration_input_fn=lambda: iter([(b,) for b in batches(3)]))
    x = batches(1, seed=4, shape=(5, 12, 12, 3))[0]
    conv.build(lambda: iter([(b,) for b in batches(1, shape=(2, 12, 12, 3)) +
                             batches(1, shape=(8, 12, 12, 3))]))
    got = _out(fn, x)
    (op,) = conv.engine_ops.values()
    engine = _engines(op)[0]
    engine = engine.engine_for(((5, 12, 12, 3),)) if dynamic else engine
    assert engine.precision == "FP16" and _gemm_precisions(engine) == ["FP16"] * 3
    # build()'s check holds FP16 engines to FP16's bar, not INT8's looser one
    check = conv._build_check
    assert check["precision"] == "FP16" and check["bar"] == compare.BUILD_CHECK_WARN["FP16"]
    assert _rel(got, model(x).numpy()) < 0.03
    conv.save(str(tmp_path / "saved"))
    caplog.clear()
    caplog.set_level(logging.WARNING)
    loaded = tftrt.load(str(tmp_path / "saved"))
    np.testing.assert_array_equal(_out(loaded.signatures["serving_default"], x), got)
    (lop,) = loaded.engine_ops.values()
    assert lop.stats["builds"] == 0 and lop.stats["native"] == 0, (lop.stats, caplog.text)
    assert "was built in precision" not in caplog.text
    # `tftrt inspect` says why an INT8 engine op's saved plan is FP16
    from tftrt import inspect_model
    lines = []
    inspect_model.format_description(inspect_model.describe(str(tmp_path / "saved")),
                                     lines.append, layers=False)
    assert "numpy on cpu, FP16 (kept for the INT8 request: FP16 measured faster on the " \
           "device that built it)" in "\n".join(lines), lines
    # an FP16 conversion of the same model still refuses that plan (built for INT8)
    fp16 = trt.TrtGraphConverterV2(input_saved_model_dir=path, precision_mode="FP16",
                                   use_dynamic_shape=dynamic)
    fp16.convert()
    (fop,) = fp16.engine_ops.values()
    ((key, saved),) = lop.cache.items()
    saved = saved.engine_for(((5, 12, 12, 3),)) if dynamic else saved
    assert "but this engine op converts in 'FP16'" in fop._saved_engine_mismatch(key, saved)


def test_per_layer_compare_builds_the_engines_precisions(tmp_path):
    """`tftrt compare --per-layer` marks the values of an engine's network as outputs. It
    marked a mean's element count too (Shape -> ReduceProd, constants in the engine): kept
    as a layer, it made the Dense after the mean's reshape data dependent, and that layer
    was checked in FP16 where the engine runs it in INT8 (helper hunt, s44). Values
    computed from constants and shapes alone are no longer marked."""
    from tftrt.engine import BuilderConfig, build_engine
    tf.keras.utils.set_random_seed(2)
    inp = tf.keras.Input((10, 16), name="x")
    x = L.LayerNormalization()(inp + L.MultiHeadAttention(2, 8)(inp, inp))
    x = L.LayerNormalization()(x + L.Dense(16)(L.Dense(32, activation="gelu")(x)))
    model = tf.keras.Model(inp, L.Dense(4)(L.GlobalAveragePooling1D()(x)))
    path = models.save_keras(model, str(tmp_path / "m"))
    data = batches(3, shape=(4, 10, 16))
    conv, _ = calibrated(path, data=data)
    (op,) = conv.engine_ops.values()
    shapes = {"TensorRTInputPH_0": (4, 10, 16)}

    def precisions(net_model, **kw):
        engine = build_engine(net_model, shapes, BuilderConfig(precision="INT8", keep_fp16={},
                                                               **kw))
        return {l.name: l.precision for l in engine.network.layers
                if l.kind in Q.GEMM_KINDS}
    marked, ops = compare.marked_network(op.spec.onnx_bytes)
    assert ops and not any("Shape" in v or "ReduceProd" in v for v in ops), ops
    checked = precisions(marked, probe_outputs=tuple(ops))
    built = precisions(onnx.load_from_string(op.spec.onnx_bytes))
    # (the attention's matmuls, unfused when marked, are no layers of the engine)
    assert {n: checked[n] for n in built} == built, (checked, built)
    assert set(built.values()) == {"INT8"}, built  # the Dense after the mean among them
    conv.build(lambda: iter([(data[0],)]))
    conv.save(str(tmp_path / "saved"))
    report = compare.compare_saved_model(str(tmp_path / "saved"), [{"x": data[0]}],
                                         rtol=3e-2, atol=3e-2, per_layer=True)
    assert report.layers and all(r.passed for _, r in report.outputs), report.outputs
    assert not any(r.error for _, _, _, r in report.layers), report.layers


class Embed(tf.Module):
    """Integer ids in, a float computation on their embeddings out."""

    def __init__(self):
        self.table = tf.constant(np.random.RandomState(0).randn(200, 8).astype(np.float32))
        self.w = tf.constant(np.random.RandomState(1).randn(8, 4).astype(np.float32))

    @tf.function(input_signature=[tf.TensorSpec([None, 6], tf.int32, name="ids")])
    def __call__(self, ids):
        e = tf.reduce_mean(tf.gather(self.table, ids), axis=1)
        return {"y": tf.nn.relu(tf.matmul(e, self.w))}


def test_varied_integer_inputs_are_not_called_constant(tmp_path, caplog):
    """A model whose only input is integer ids: every calibration was warned about as
    "only constant data" (no float input to vary; helper hunt, 2026-12-02). Varied ids give
    no warning; one id everywhere does."""
    path = models.save_module(Embed(), str(tmp_path / "embed"))
    rng = np.random.RandomState(2)
    for data, warned in (([rng.randint(0, 200, (8, 6)).astype(np.int32) for _ in range(2)],
                          False), ([np.full((8, 6), 7, np.int32)] * 2, True)):
        caplog.clear()
        conv = trt.TrtGraphConverterV2(input_saved_model_dir=path, precision_mode="INT8",
                                       minimum_segment_size=1)
        with caplog.at_level(logging.WARNING, logger="tftrt.calibration"):
            conv.convert(calibration_input_fn=lambda: iter([(d,) for d in data]))
        assert any("only constant data" in r.getMessage() for r in caplog.records) == warned


class Flatten(tf.Module):
    """x (~1e6) -> Reshape -> MatMul -> ReLU: the Reshape and the ReLU are no quantized
    layers; their values are far past float16's range."""

    def __init__(self):
        self.w = tf.constant(np.random.RandomState(0).randn(192, 10).astype(np.float32) * 0.1)

    @tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 3], tf.float32, name="x")])
    def __call__(self, x):
        return {"y": tf.nn.relu(tf.matmul(tf.reshape(x, [-1, 192]), self.w)) + 1.0}


@pytest.mark.parametrize("precision", ["INT8", "FP8"])
def test_layers_around_quantized_ones_keep_float32_where_calibration_saw_large_values(
        tmp_path, precision):
    """A Reshape calibrated to 3.6e6 before an INT8 / FP8 GEMM was stored in float16: inf,
    saturated to the largest code, and the answer was 3.2x off without a word (helper
    hunt, 2026-12-02). Tensors calibrated past half of float16's range stay float32 in the
    layers around the quantized ones, as the quantized layers' own outputs did."""
    path = models.save_module(Flatten(), str(tmp_path / "flat"))
    rng = np.random.RandomState(3)
    data = [(rng.standard_normal((16, 8, 8, 3)) * 1e6).astype(np.float32) for _ in range(4)]
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=path, precision_mode=precision,
                                   minimum_segment_size=1)
    fn = conv.convert(calibration_input_fn=lambda: iter([(d,) for d in data]))
    x = (rng.standard_normal((16, 8, 8, 3)) * 1e6).astype(np.float32)
    want = tf.saved_model.load(path).signatures["serving_default"](x=tf.constant(x))["y"]
    got = fn(tf.constant(x))["y"].numpy()
    assert np.all(np.isfinite(got))
    assert _rel(got, want.numpy()) < (0.05 if precision == "INT8" else 0.08)
