"""INT8 / FP8 engines on the CuPy backend while it has no int8 / fp8 kernels (issue 15): such an
engine builds with FP16 layers and one warning, and answers as the FP16 engine does; FP8 on a
GPU below sm_89 fails by name. A calibrated Keras CNN through TensorFlow: the engine runs on
the GPU (no native fallback), matching the numpy backend's FP16 engine.

Skipped without a GPU (tests/conftest.py). On the GPU machine:
``CUDA_VISIBLE_DEVICES=0 python -m pytest tests/gpu/test_int8_gpu.py -q``.
"""

import logging

import numpy as np
import onnx
import pytest

from tests.engine.harness import make_model
from tftrt.engine import BuilderConfig, EngineBuildError, build_engine, network_from_onnx
from tftrt.engine import builder as builder_mod
from tftrt.engine import quantization as Q
from tftrt.engine.calibrator import EngineCalibrator

cp = pytest.importorskip("cupy")
pytestmark = pytest.mark.gpu

F32 = np.float32


def _calibrated_model(rng):
    from onnx import helper
    consts = {"w1": (rng.randn(16, 3, 3, 3) * 0.3).astype(F32),
              "b1": (rng.randn(16) * 0.1).astype(F32),
              "w2": (rng.randn(16, 16, 3, 3) * 0.2).astype(F32),
              "wd": rng.randn(16, 4).astype(F32)}
    N = helper.make_node
    nodes = [N("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]), N("Relu", ["c1"], ["r1"]),
             N("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1]), N("Relu", ["c2"], ["r2"]),
             N("GlobalAveragePool", ["r2"], ["g"]), N("Flatten", ["g"], ["f"]),
             N("MatMul", ["f", "wd"], ["y"])]
    model = make_model(nodes, {"x": np.zeros((8, 3, 16, 16), F32)}, consts)
    cal = EngineCalibrator(network_from_onnx(model))
    for _ in range(4):
        cal.observe([rng.randn(8, 3, 16, 16).astype(F32)])
    Q.set_table(model, cal.table("INT8"))
    return model


def _sm() -> tuple:
    p = cp.cuda.runtime.getDeviceProperties(cp.cuda.runtime.getDevice())
    return p["major"], p["minor"]


def test_int8_engine_builds_fp16_layers_with_one_warning(monkeypatch, caplog):
    rng = np.random.RandomState(0)
    model = _calibrated_model(rng)
    x = rng.randn(8, 3, 16, 16).astype(F32)
    monkeypatch.setattr(builder_mod, "_WARNED_PRECISIONS", set())
    with caplog.at_level(logging.WARNING, logger="tftrt.engine"):
        gpu = build_engine(model, {"x": x.shape}, BuilderConfig(precision="INT8",
                                                                backend="cupy"))
        build_engine(model, {"x": x.shape}, BuilderConfig(precision="INT8", backend="cupy"))
    warned = [r.getMessage() for r in caplog.records if "has no INT8 kernels" in r.getMessage()]
    assert len(warned) == 1 and "cupy backend" in warned[0]
    assert gpu.precision == "FP16"
    assert {l.precision for l in gpu.network.layers if l.kind in Q.GEMM_KINDS} == {"FP16"}
    ref = build_engine(model, {"x": x.shape}, BuilderConfig(precision="FP16", backend="numpy"))
    got = cp.asnumpy(gpu.execute([cp.asarray(x)])[0])
    np.testing.assert_allclose(got, ref.execute([x])[0], rtol=2e-2, atol=2e-2)


def test_fp8_needs_a_gpu_with_fp8():
    rng = np.random.RandomState(1)
    model = _calibrated_model(rng)
    config = BuilderConfig(precision="FP8", backend="cupy")
    if _sm() < (8, 9):
        with pytest.raises(EngineBuildError, match="precision FP8 needs an NVIDIA GPU with FP8"):
            build_engine(model, {"x": (8, 3, 16, 16)}, config)
    else:  # Ada / Hopper: builds (FP16 layers until the FP8 kernels exist)
        engine = build_engine(model, {"x": (8, 3, 16, 16)}, config)
        assert engine.precision == "FP16"


def test_calibrated_keras_cnn_through_tensorflow(tmp_path, monkeypatch):
    tf = pytest.importorskip("tensorflow")
    if not tf.config.list_physical_devices("GPU"):
        pytest.skip("TensorFlow sees no GPU")
    import tftrt
    from tftrt import trt_convert as trt
    monkeypatch.setenv("TFTRT_BACKEND", "cupy")
    L = tf.keras.layers
    tf.keras.utils.set_random_seed(0)
    inp = tf.keras.Input((32, 32, 3))
    x = L.Conv2D(16, 3, padding="same", activation="relu")(inp)
    x = L.Conv2D(32, 3, padding="same", activation="relu")(L.MaxPool2D()(x))
    model = tf.keras.Model(inp, L.Dense(10)(L.GlobalAveragePooling2D()(x)))
    path = str(tmp_path / "cnn")
    model.export(path, verbose=False)
    rng = np.random.RandomState(0)
    data = [rng.rand(16, 32, 32, 3).astype(F32) for _ in range(4)]
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=path, precision_mode="INT8")
    fn = conv.convert(calibration_input_fn=lambda: iter([(d,) for d in data]))
    (op,) = conv.engine_ops.values()
    assert op.quantization["plan"]["quantized_share"] == 1.0  # calibrated on numpy
    x = rng.rand(16, 32, 32, 3).astype(F32)
    (got,) = fn(tf.constant(x)).values()
    assert op.stats["engine"] == 1 and op.stats["native"] == 0
    np.testing.assert_allclose(got.numpy(), model(x).numpy(), rtol=3e-2, atol=3e-2)
    conv.save(str(tmp_path / "int8"))
    loaded = tftrt.load(str(tmp_path / "int8"))
    (again,) = loaded.signatures["serving_default"](tf.constant(x)).values()
    np.testing.assert_array_equal(again.numpy(), got.numpy())
    assert onnx.load_from_string(op.spec.onnx_bytes).metadata_props
