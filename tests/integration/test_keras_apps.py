"""Keras applications convert almost entirely and match native TensorFlow (numpy backend)."""

import numpy as np
import pytest
import tensorflow as tf

from tftrt import trt_convert as trt, zoo
from tests.integration import models

APPS = {
    # name: (constructor, input shape); weights=None, seeded, logits, random batch-norm
    # statistics (zoo), small inputs where the architecture allows.
    "ResNet50": (lambda: zoo.resnet50(32), (2, 32, 32, 3)),
    "MobileNetV2": (lambda: zoo.mobilenet_v2(32), (2, 32, 32, 3)),
    "InceptionV3": (lambda: zoo.inception_v3(75), (2, 75, 75, 3)),
    "VGG16": (lambda: zoo.vgg16(32), (2, 32, 32, 3)),
    # A small transformer encoder (attention, layer norm, Dense+gelu on sequences).
    "Encoder": (lambda: zoo.encoder(layers=2, hidden=64, heads=4, seq=16, ffn=128),
                (2, 16, 64)),
}


def converted_fraction(conv) -> float:
    info = conv.graph_info
    non_const = [n for n, node in info.nodes.items() if node.op != "Const"]
    inside = {n for op in conv.engine_ops.values() for n in op.spec.member_nodes}
    return sum(1 for n in non_const if n in inside) / len(non_const)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(APPS))
def test_keras_application_converts_and_matches(name, tmp_path):
    import keras
    keras.utils.set_random_seed(0)
    make, shape = APPS[name]
    path = models.save_keras(make(), str(tmp_path / name))
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=path)
    fn = conv.convert()
    frac = converted_fraction(conv)
    assert frac > 0.9, f"only {frac:.1%} of non-Const nodes are inside engines"
    x = np.random.RandomState(1).uniform(0, 1, shape).astype(np.float32)
    arg = {next(iter(fn.structured_input_signature[1])): tf.constant(x)}
    ref = tf.saved_model.load(path).signatures["serving_default"](**arg)
    got = fn(**arg)
    for k in ref:
        r = ref[k].numpy()
        assert r.std() > 1e-3 * np.abs(r).max(), "degenerate model output: checks nothing"
        np.testing.assert_allclose(got[k].numpy(), r, rtol=1e-3, atol=1e-4 * np.abs(r).max())
    assert all(op.stats["engine"] == 1 and op.stats["native"] == 0
               for op in conv.engine_ops.values())
