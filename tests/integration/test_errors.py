"""Bad input gets a clear error that says what was wrong and what to do."""

import numpy as np
import pytest
import tensorflow as tf

from tftrt import trt_convert as trt
from tests.integration import models


@pytest.fixture(scope="module")
def mlp_dir(tmp_path_factory):
    return models.save_module(models.MLP(), str(tmp_path_factory.mktemp("m") / "mlp"))


def test_unknown_precision_mode_names_value_and_modes(mlp_dir):
    with pytest.raises(ValueError, match=r"precision mode 'FP64' is not supported.*FP32, FP16, INT8"):
        trt.TrtGraphConverterV2(input_saved_model_dir=mlp_dir, precision_mode="FP64")


def test_lowercase_precision_is_accepted(mlp_dir):
    trt.TrtGraphConverterV2(input_saved_model_dir=mlp_dir, precision_mode="fp16")


def test_minimum_segment_size_zero_is_rejected(mlp_dir):
    with pytest.raises(ValueError, match="minimum segment size should be positive or -1"):
        trt.TrtGraphConverterV2(input_saved_model_dir=mlp_dir, minimum_segment_size=0)


def test_missing_directory_names_path(tmp_path):
    missing = str(tmp_path / "nope")
    with pytest.raises(ValueError, match=r"does not exist") as e:
        trt.TrtGraphConverterV2(input_saved_model_dir=missing)
    assert missing in str(e.value)


def test_directory_without_saved_model(tmp_path):
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(ValueError, match="is not a SavedModel directory"):
        trt.TrtGraphConverterV2(input_saved_model_dir=str(tmp_path))


def test_corrupt_saved_model_names_path(tmp_path):
    (tmp_path / "saved_model.pb").write_bytes(b"\x00garbage\xff" * 10)
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=str(tmp_path))
    with pytest.raises(ValueError, match="could not load the SavedModel") as e:
        conv.convert()
    assert str(tmp_path) in str(e.value)


def test_empty_saved_model_pb_says_the_model_was_not_fully_written(mlp_dir, tmp_path):
    """A 0-byte saved_model.pb (an interrupted copy) was reported as a tags mismatch with
    "available tags '[]'" and the advice to pass other tags (API hunt, s49)."""
    import shutil
    import tftrt
    d = tmp_path / "copy"
    shutil.copytree(mlp_dir, d)
    (d / "saved_model.pb").write_bytes(b"")
    for call in (lambda: trt.TrtGraphConverterV2(input_saved_model_dir=str(d)),
                 lambda: tftrt.load(str(d))):
        with pytest.raises(ValueError, match=r"saved_model.pb' is empty \(0 bytes\): the "
                                             r"SavedModel was not fully written") as e:
            call()
        assert "input_saved_model_tags" not in str(e.value)


def test_tags_no_metagraph_has_say_which_tags_to_pass(mlp_dir):
    # the directory is fine: no "is the directory complete" hint (helper hunt, 2026-12-05)
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=mlp_dir,
                                   input_saved_model_tags=["serve", "gpu"])
    with pytest.raises(ValueError, match=r"with tags \['serve', 'gpu'\].*tags \['serve'\]"
                       r".*pass input_saved_model_tags matching one of them") as e:
        conv.convert()
    assert "written by TensorFlow" not in str(e.value)


def test_unknown_signature_lists_available(mlp_dir):
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=mlp_dir,
                                   input_saved_model_signature_key="predict")
    with pytest.raises(ValueError, match=r"signature 'predict' not found.*serving_default"):
        conv.convert()


def test_build_before_convert(mlp_dir):
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=mlp_dir)
    with pytest.raises(RuntimeError, match=r"Need to call convert\(\) before build\(\)"):
        conv.build(lambda: iter([]))


def test_save_before_convert(mlp_dir, tmp_path):
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=mlp_dir)
    with pytest.raises(RuntimeError, match=r"Need to call convert\(\) before save\(\)"):
        conv.save(str(tmp_path / "out"))


def test_summary_before_convert_and_short_line(mlp_dir):
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=mlp_dir)
    with pytest.raises(RuntimeError, match="convert"):
        conv.summary()
    conv.convert()
    with pytest.raises(ValueError, match="Minimum: 160"):
        conv.summary(line_length=100)


def test_int8_calibration_needs_input_fn(mlp_dir):
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=mlp_dir, precision_mode="INT8",
                                   use_calibration=True)
    with pytest.raises(ValueError, match="Should specify calibration_input_fn"):
        conv.convert()


def test_calibration_fn_without_int8(mlp_dir):
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=mlp_dir)
    with pytest.raises(ValueError, match="Should not specify calibration_input_fn"):
        conv.convert(calibration_input_fn=lambda: iter([]))


@pytest.fixture()
def converted(mlp_dir):
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=mlp_dir, minimum_segment_size=2)
    conv.convert()
    return conv


def test_input_fn_wrong_number_of_inputs(converted):
    x = models.batch((2, 8))
    with pytest.raises(ValueError, match=r"yielded 2 input\(s\); the signature takes 1"):
        converted.build(lambda: iter([(x, x)]))


def test_input_fn_wrong_dtype(converted):
    with pytest.raises(ValueError, match="has dtype int32; the signature expects float32"):
        converted.build(lambda: iter([(np.ones((2, 8), np.int32),)]))


def test_input_fn_none_and_build_twice(converted):
    with pytest.raises(RuntimeError, match="input_fn is None"):
        converted.build(None)
    converted.build(lambda: iter([(models.batch((2, 8)),)]))
    with pytest.raises(NotImplementedError, match="build\\(\\) is already called"):
        converted.build(lambda: iter([(models.batch((2, 8)),)]))


def test_save_to_non_empty_non_savedmodel_dir(converted, tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="exists, is not empty and is not a SavedModel"):
        converted.save(str(tmp_path))
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_unknown_backend_env(converted, monkeypatch):
    monkeypatch.setenv("TFTRT_BACKEND", "tensorrt")
    fn = converted._converted_func
    with pytest.raises(Exception, match="TFTRT_BACKEND='tensorrt' is not supported"):
        fn(x=tf.constant(models.batch((2, 8))))


def test_an_unsupported_dtype_is_named_as_tensorflow_names_it(tmp_path):
    """summary() says why an op stays native in TF's words: a Shape of a string input read
    "T=object" (numpy's name of strings; hunt, 2026-12-02)."""
    class M(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="s"),
                                      tf.TensorSpec([None, 4], tf.float32, name="x")])
        def __call__(self, s, x):
            n = tf.cast(tf.shape(s)[0], tf.float32)
            return {"y": tf.nn.relu(x * 2.0 + 1.0) * n}
    path = models.save_module(M(), str(tmp_path / "m"))
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=path, minimum_segment_size=1)
    conv.convert()
    lines = []
    conv.summary(print_fn=lines.append)
    reason = [line for line in lines if "Shape with T=" in line]
    assert reason and "T=string is not supported" in reason[0], lines
