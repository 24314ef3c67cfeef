"""A model that reads asset files keeps reading them once converted and moved (helper hunt,
2026-12-03): freezing made the asset's path a constant naming the input model's file, so the
converted model failed as soon as the input model was moved or deleted."""

import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

import tftrt
from tftrt import trt_convert as trt
from tests.tolerances import MODEL_TOLERANCES


class ReadsAsset(tf.Module):
    def __init__(self, path):
        self.asset = tf.saved_model.Asset(path)

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
    def __call__(self, x):
        text = tf.strings.strip(tf.io.read_file(self.asset.asset_path))
        scale = tf.strings.to_number(tf.strings.split(text, " "))
        return {"y": tf.nn.relu(x * 2.0 - 1.0) * scale + 0.5}


@pytest.mark.parametrize("direct", ["1", "0"])
def test_a_converted_model_reads_its_own_copy_of_the_assets(tmp_path, monkeypatch, direct):
    monkeypatch.setenv("TFTRT_BACKEND", "numpy")
    monkeypatch.setenv("TFTRT_DIRECT_CALL", direct)
    scale = tmp_path / "scale.txt"
    scale.write_text("0.5 1.5 2.5 3.5\n")
    m = ReadsAsset(str(scale))
    src, dst = str(tmp_path / "model"), str(tmp_path / "out" / "converted")
    tf.saved_model.save(m, src, signatures=m.__call__)
    os.remove(scale)
    x = tf.constant(np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4))
    want = tf.saved_model.load(src).signatures["serving_default"](x=x)["y"].numpy()
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=src, minimum_segment_size=1)
    conv.convert()
    conv.build(lambda: iter([(x,)]))
    assert conv.engine_ops  # the float ops became an engine
    conv.save(dst)
    assert "scale.txt" in os.listdir(os.path.join(dst, "assets"))
    shutil.rmtree(src)  # the converted model shipped alone, moved too
    moved = str(tmp_path / "moved")
    shutil.move(dst, moved)
    rtol, atol = MODEL_TOLERANCES["FP32"]
    loaded = tftrt.load(moved)
    assert loaded.engine_ops  # tftrt.load used the engines, not the plain SavedModel
    for model in (loaded, tf.saved_model.load(moved)):
        got = model.signatures["serving_default"](x=x)["y"].numpy()
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)
