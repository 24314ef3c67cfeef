"""The stem as space-to-depth (TFTRT_STEM_S2D=1, passes/stem_space_to_depth) through
TensorFlow on the zoo's models with a 7x7 / 2 stem (ResNet50's, as DenseNet121's: Keras
ZeroPadding2D(3) + VALID conv) and a 3x3 / 2 SAME one (MobileNetV2's): converted in FP32 and
FP16 with the pass on, each engine has one space_to_depth layer feeding a stride-1 conv over
16 channels, and answers as native TensorFlow does within the precision's tolerance; saved
and loaded with tftrt.load it answers the same again (numpy backend)."""

import numpy as np
import pytest
import tensorflow as tf

import tftrt
from tests.integration import models
from tests.tolerances import MODEL_TOLERANCES
from tftrt import trt_convert as trt, zoo
from tftrt.engine import BuilderConfig, build_engine

SIZE, BATCH = 32, 2


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ResNet50", "MobileNetV2"])  # (DenseNet121: ResNet's stem)
def test_zoo_stems_rearranged_match_native(name, tmp_path, monkeypatch):
    import onnx
    monkeypatch.setenv("TFTRT_STEM_S2D", "1")
    model = zoo.build(name, SIZE, small=True)
    path = models.save_keras(model, str(tmp_path / name))
    x = zoo.sample_input(name, BATCH, SIZE, small=True)
    want = np.asarray(model(tf.constant(x), training=False))
    for precision in ("FP32", "FP16"):
        conv = trt.TrtGraphConverterV2(input_saved_model_dir=path, precision_mode=precision)
        fn = conv.convert()
        key = next(iter(fn.structured_input_signature[1]))
        got = next(iter(fn(**{key: tf.constant(x)}).values())).numpy()
        rtol, atol = MODEL_TOLERANCES[precision]
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol * np.abs(want).max(),
                                   err_msg=precision)
        (op,) = conv.engine_ops.values()
        onnx_model = onnx.load_from_string(op.spec.onnx_bytes)
        engine = build_engine(onnx_model, {onnx_model.graph.input[0].name: x.shape},
                              BuilderConfig(precision=precision))
        layers = engine.network.layers
        s2d = [l for l in layers if l.kind == "space_to_depth"]
        assert len(s2d) == 1, [l.kind for l in layers][:6]
        stem = next(l for l in layers if l.inputs[0] == s2d[0].outputs[0])
        assert stem.kind == "conv" and stem.attrs["strides"] == [1, 1] and \
            engine.network.tensors[stem.inputs[0]].shape[-1] == 16
        if precision == "FP16":
            conv.save(str(tmp_path / f"{name}_{precision}"))
            loaded = tftrt.load(str(tmp_path / f"{name}_{precision}"))
            again = next(iter(loaded.signatures["serving_default"](
                **{key: tf.constant(x)}).values())).numpy()
            np.testing.assert_array_equal(again, got)
