"""Squeeze-and-excitation fusion on the Keras models that have it (numpy backend): every SE
block of EfficientNetB0 (16) and MobileNetV3Small (9) becomes one ``se`` layer in the
converted engine, whose output matches native TensorFlow and the same engine built with the
blocks left unfused."""

import numpy as np
import onnx
import pytest
import tensorflow as tf

from tests.integration import models
from tests.tolerances import MODEL_TOLERANCES
from tftrt import trt_convert as trt, zoo
from tftrt.engine import BuilderConfig, build_engine
from tftrt.engine.backends.numpy_backend import NumpyBackend

SE_BLOCKS = {"EfficientNetB0": 16, "MobileNetV3Small": 9}
SIZE, BATCH = 32, 2


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SE_BLOCKS))
def test_every_se_block_fuses_and_matches(name, tmp_path, monkeypatch):
    model = zoo.build(name, SIZE, small=True)
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=models.save_keras(
        model, str(tmp_path / name)))
    fn = conv.convert()
    x = zoo.sample_input(name, BATCH, SIZE, small=True)
    got = fn(**{next(iter(fn.structured_input_signature[1])): tf.constant(x)})
    got = next(iter(got.values())).numpy()
    want = np.asarray(model(tf.constant(x), training=False))
    rtol, atol = MODEL_TOLERANCES["FP32"]
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol * np.abs(want).max())

    (op,) = conv.engine_ops.values()
    onnx_model = onnx.load_from_string(op.spec.onnx_bytes)
    (inp,) = onnx_model.graph.input
    shapes = {inp.name: x.shape}
    for precision in ("FP32", "FP16"):
        fused = build_engine(onnx_model, shapes, BuilderConfig(precision=precision))
        kinds = [l.kind for l in fused.network.layers]
        assert kinds.count("se") == SE_BLOCKS[name], (precision, kinds.count("se"))
        assert kinds.count("reduce") == 1  # the head's global pool only
        with monkeypatch.context() as m:
            m.setattr(NumpyBackend, "accepts_layer", lambda self, net, layer: False,
                      raising=False)
            unfused = build_engine(onnx_model, shapes, BuilderConfig(precision=precision))
        assert "se" not in [l.kind for l in unfused.network.layers]
        a, b = (np.asarray(e.execute([x])[0], np.float64) for e in (fused, unfused))
        rtol, atol = MODEL_TOLERANCES[precision]
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol * np.abs(b).max(),
                                   err_msg=precision)
        if precision == "FP32":
            np.testing.assert_allclose(a, want, rtol=rtol, atol=atol * np.abs(want).max())
