"""Signature input keys that are no Python identifiers survive conversion (helper hunt,
2026-12-02): the saved signature's input keys (what TF Serving's clients send) are the
original's, and every way of calling the model takes the keys native TF takes."""

import os

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

import tftrt
from tftrt import trt_convert as trt
from tests.tolerances import MODEL_TOLERANCES


def signature_def_inputs(path: str):
    sm = saved_model_pb2.SavedModel()
    with open(os.path.join(path, "saved_model.pb"), "rb") as f:
        sm.ParseFromString(f.read())
    return sorted(sm.meta_graphs[0].signature_def["serving_default"].inputs)


def assert_native(got, want):
    rtol, atol = MODEL_TOLERANCES["FP32"]
    assert sorted(got) == sorted(want)
    for k in want:
        np.testing.assert_allclose(np.asarray(got[k]), want[k].numpy(), rtol=rtol, atol=atol)


class Dashed(tf.Module):
    """A TF2 signature whose spec names are no identifiers: TF's keywords are x_a, img_pix,
    its SignatureDef keys x-a, img/pix."""

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x-a"),
                                  tf.TensorSpec([None, 4], tf.float32, name="img/pix")])
    def __call__(self, a, b):
        return {"y": tf.nn.relu(a * 2.0 + b) - 0.5, "z": tf.tanh(b - a)}


def tf1_model(path: str) -> str:
    """A TF1 SavedModel whose signature keys are no identifiers ("in-put/0", "2ids"): native
    TF's loaded signature takes them as they are."""
    g = tf.Graph()
    with g.as_default():
        a = tf.compat.v1.placeholder(tf.float32, [None, 4], name="a")
        b = tf.compat.v1.placeholder(tf.float32, [None, 4], name="b")
        y = tf.nn.relu(a * 2.0 + b) - 0.5
        info = tf.compat.v1.saved_model.build_tensor_info
        builder = tf.compat.v1.saved_model.Builder(path)
        with tf.compat.v1.Session(graph=g) as sess:
            builder.add_meta_graph_and_variables(sess, ["serve"], signature_def_map={
                "serving_default": tf.compat.v1.saved_model.build_signature_def(
                    inputs={"in-put/0": info(a), "2ids": info(b)}, outputs={"y": info(y)},
                    method_name="tensorflow/serving/predict")})
        builder.save()
    return path


@pytest.mark.parametrize("direct", ["1", "0"])
def test_a_tf2_signatures_input_keys_are_kept(tmp_path, monkeypatch, direct):
    """The saved signature's input keys were the keywords (x_a, img_pix) instead of the
    original's (x-a, img/pix)."""
    monkeypatch.setenv("TFTRT_BACKEND", "numpy")
    monkeypatch.setenv("TFTRT_DIRECT_CALL", direct)
    src = str(tmp_path / "dashed")
    m = Dashed()
    tf.saved_model.save(m, src, signatures=m.__call__)
    kw = {"x_a": tf.constant(np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)),
          "img_pix": tf.constant(np.linspace(1, -2, 12, dtype=np.float32).reshape(3, 4))}
    want = tf.saved_model.load(src).signatures["serving_default"](**kw)
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=src, minimum_segment_size=1)
    assert_native(conv.convert()(**kw), want)
    dst = str(tmp_path / "converted")
    conv.save(dst)
    assert signature_def_inputs(dst) == signature_def_inputs(src) == ["img/pix", "x-a"]
    assert_native(tftrt.load(dst).signatures["serving_default"](**kw), want)
    assert_native(tf.saved_model.load(dst).signatures["serving_default"](**kw), want)


@pytest.mark.parametrize("direct", ["1", "0"])
def test_a_tf1_signatures_keys_that_are_no_identifiers_call_the_converted_model(
        tmp_path, monkeypatch, direct):
    """convert()'s function, build()'s input_fn dicts and tftrt.load's signature refused the
    original keys ("expected inputs ['tensor_2ids', 'in_put_0']"), plain TF's load of the
    saved model wanted tensor_2ids, and the saved keys were in_put_0 and tensor_2ids."""
    monkeypatch.setenv("TFTRT_BACKEND", "numpy")
    monkeypatch.setenv("TFTRT_DIRECT_CALL", direct)
    src = tf1_model(str(tmp_path / "tf1"))
    kw = {"in-put/0": np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4),
          "2ids": np.linspace(2, -1, 8, dtype=np.float32).reshape(2, 4)}
    want = tf.saved_model.load(src).signatures["serving_default"](**kw)
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=src, minimum_segment_size=1)
    assert_native(conv.convert()(**kw), want)
    conv.build(lambda: iter([kw]))
    dst = str(tmp_path / "converted")
    conv.save(dst)
    assert signature_def_inputs(dst) == signature_def_inputs(src) == ["2ids", "in-put/0"]
    assert_native(tftrt.load(dst).signatures["serving_default"](**kw), want)
    assert_native(tf.saved_model.load(dst).signatures["serving_default"](**kw), want)


def test_an_output_after_a_tf1_while_loop_keeps_its_static_shape(tmp_path, monkeypatch):
    """An output computed after a classic TF1 while_loop (control flow v1) came back of
    unknown rank from the imported graph: convert()'s function and the saved signature said
    TensorSpec(shape=<unknown>) where the original says (None, 4) (helper hunt,
    2026-12-02). The values were right, and are."""
    monkeypatch.setenv("TFTRT_BACKEND", "numpy")
    src = str(tmp_path / "loop")
    g = tf.Graph()
    with g.as_default():
        v2 = tf.compat.v1.control_flow_v2_enabled()
        tf.compat.v1.disable_control_flow_v2()  # what TF1 wrote
        try:
            x = tf.compat.v1.placeholder(tf.float32, [None, 4], name="x")
            w = tf.constant(np.eye(4, dtype=np.float32) * 0.5)
            _, z = tf.compat.v1.while_loop(lambda i, a: i < 3, lambda i, a: (
                i + 1, tf.tanh(tf.matmul(a, w)) + a), [0, x])
            out = tf.nn.relu(z * 3.0 + 1.0) - 2.0
        finally:
            if v2:
                tf.compat.v1.enable_control_flow_v2()
        info = tf.compat.v1.saved_model.build_tensor_info
        builder = tf.compat.v1.saved_model.Builder(src)
        with tf.compat.v1.Session(graph=g) as sess:
            builder.add_meta_graph_and_variables(sess, ["serve"], signature_def_map={
                "serving_default": tf.compat.v1.saved_model.build_signature_def(
                    inputs={"x": info(x)}, outputs={"out": info(out)},
                    method_name="tensorflow/serving/predict")})
        builder.save()
    native = tf.saved_model.load(src).signatures["serving_default"]
    assert native.structured_outputs["out"].shape.as_list() == [None, 4]
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=src, minimum_segment_size=1)
    fn = conv.convert()
    assert fn.structured_outputs["out"].shape.as_list() == [None, 4]
    dst = str(tmp_path / "converted")
    conv.save(dst)
    saved = tf.saved_model.load(dst).signatures["serving_default"]
    assert saved.structured_outputs["out"].shape.as_list() == [None, 4]
    xs = np.linspace(-2, 2, 12, dtype=np.float32).reshape(3, 4)
    for f in (fn, saved, tftrt.load(dst).signatures["serving_default"]):
        assert_native(f(x=tf.constant(xs)), native(x=tf.constant(xs)))


class Capitals(tf.Module):
    """Spec names with capitals: TF's loaded signature lower-cases its spec names ("big"),
    while its SignatureDef keys and keywords keep them ("Big"; "X-a" has the keyword X_a)."""

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="X-a"),
                                  tf.TensorSpec([None, 4], tf.float32, name="Big")])
    def __call__(self, a, b):
        return {"y": tf.nn.relu(a * 2.0 + b) - 0.5}


def tf1_capitals(path: str) -> str:
    g = tf.Graph()
    with g.as_default():
        a = tf.compat.v1.placeholder(tf.float32, [None, 4], name="a")
        b = tf.compat.v1.placeholder(tf.float32, [None, 4], name="b")
        info = tf.compat.v1.saved_model.build_tensor_info
        builder = tf.compat.v1.saved_model.Builder(path)
        with tf.compat.v1.Session(graph=g) as sess:
            builder.add_meta_graph_and_variables(sess, ["serve"], signature_def_map={
                "serving_default": tf.compat.v1.saved_model.build_signature_def(
                    inputs={"X": info(a), "Extra_In": info(b)},
                    outputs={"y": info(tf.nn.relu(a * 2.0 + b) - 0.5)},
                    method_name="tensorflow/serving/predict")})
        builder.save()
    return path


def keras_image(path: str) -> str:
    import keras
    i = keras.Input((4,), name="Image")
    keras.Model(i, keras.layers.Dense(2)(i)).export(path, verbose=False)
    return path


@pytest.mark.parametrize("model", ["tf2", "tf1", "keras"])
def test_input_keys_with_capitals_are_kept(tmp_path, monkeypatch, model):
    """Keys with capitals came out of save() lower-cased ("Image" -> "image", "X" -> "x"):
    clients sending the original keys to the converted model failed (helper hunt,
    2026-12-03)."""
    monkeypatch.setenv("TFTRT_BACKEND", "numpy")
    src = str(tmp_path / model)
    x = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
    if model == "tf2":
        m = Capitals()
        tf.saved_model.save(m, src, signatures=m.__call__)
        keys, kw = ["Big", "X-a"], {"X_a": x, "Big": x[::-1].copy()}
    elif model == "tf1":
        tf1_capitals(src)
        keys, kw = ["Extra_In", "X"], {"X": x, "Extra_In": x[::-1].copy()}
    else:
        keras_image(src)
        keys, kw = ["Image"], {"Image": x}
    assert signature_def_inputs(src) == keys
    kw = {k: tf.constant(v) for k, v in kw.items()}
    want = tf.saved_model.load(src).signatures["serving_default"](**kw)
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=src, minimum_segment_size=1)
    assert_native(conv.convert()(**kw), want)
    dst = str(tmp_path / "converted")
    conv.save(dst)
    assert signature_def_inputs(dst) == keys
    assert_native(tftrt.load(dst).signatures["serving_default"](**kw), want)
    assert_native(tf.saved_model.load(dst).signatures["serving_default"](**kw), want)
