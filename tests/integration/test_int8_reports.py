"""What summary() and build()'s check say about INT8 engines matches what runs (numpy
backend): a fused attention's GEMMs count in the FLOP share after build() as before it, a
check names the engines' own precision when INT8 fell back to FP16, and a profile's report
names the engine it comes from. (Hunt of 2026-12-01.)"""

import re

import numpy as np
import pytest
import tensorflow as tf

from tftrt import trt_convert as trt
from tests.integration import models


def _lines(conv):
    lines = []
    conv.summary(print_fn=lines.append)
    return "\n".join(lines)


def _share(text):
    (share,) = re.findall(r"([\d.]+)% of their FLOPs in INT8", text)
    return float(share)


class Attn(tf.Module):
    def __init__(self):
        tf.keras.utils.set_random_seed(0)
        inp = tf.keras.Input((64, 8))
        layers = tf.keras.layers
        self.m = tf.keras.Model(inp, layers.Dense(6)(layers.Attention()([inp, inp])))

    @tf.function(input_signature=[tf.TensorSpec([None, 64, 8], tf.float32, name="x")])
    def __call__(self, x):
        return {"out": self.m(x)}


def test_a_fused_attention_counts_in_the_int8_flop_share_after_build(tmp_path):
    path = models.save_module(Attn(), str(tmp_path / "attn"))
    data = np.random.RandomState(0).rand(2, 64, 8).astype(np.float32)
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=path, precision_mode="INT8")
    conv.convert(calibration_input_fn=lambda: iter([(data,)]))
    before = _share(_lines(conv))
    conv.build(lambda: iter([(data,)]))
    text = _lines(conv)
    after = _share(text)
    assert before < 50 and abs(after - before) < 0.5, (before, after, text)
    (op,) = conv.engine_ops.values()
    ((_, engine),) = op.cache.items()
    assert [l.kind for l in engine.network.layers if l.kind == "attention"] == ["attention"]


class Cnn(tf.Module):
    """conv -> relu -> conv (``mean``: then the spatial mean)."""

    def __init__(self, mean: bool = False):
        rng = np.random.RandomState(0)
        self.w1 = tf.constant(rng.randn(3, 3, 3, 8).astype(np.float32) * 0.4)
        self.w2 = tf.constant(rng.randn(3, 3, 8, 4).astype(np.float32) * 0.3)
        self.mean = mean

    @tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 3], tf.float32, name="x")])
    def __call__(self, x):
        h = tf.nn.relu(tf.nn.conv2d(x, self.w1, 1, "SAME"))
        y = tf.nn.conv2d(h, self.w2, 1, "SAME")
        return {"y": tf.reduce_mean(y, [1, 2]) if self.mean else y}


def _x(b):
    return np.random.RandomState(b).rand(b, 8, 8, 3).astype(np.float32)


def test_the_build_check_names_fp16_when_int8_fell_back(tmp_path):
    path = models.save_module(Cnn(), str(tmp_path / "cnn"))
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=path, precision_mode="INT8",
                                   use_calibration=False)
    conv.convert()  # no fake-quant ops: FP16 engines, with a warning
    conv.build(lambda: iter([(_x(2),)]))
    (op,) = conv.engine_ops.values()
    assert op.spec.precision_mode == "FP16"
    check = conv._build_check
    assert check["precision"] == "FP16" and check["bar"] == 5e-2, check
    assert "(INT8)" not in _lines(conv)


def test_a_profiles_int8_report_names_its_opt_engine(tmp_path):
    path = models.save_module(Cnn(), str(tmp_path / "cnn"))
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=path, precision_mode="INT8",
                                   use_dynamic_shape=True)
    conv.convert(calibration_input_fn=lambda: iter([(_x(b),) for b in (1, 2, 4, 8)]))
    conv.build(lambda: iter([(_x(1),), (_x(8),)]))
    text = _lines(conv)
    assert "engine for input shapes [[8, 8, 8, 3]]" in text, text
    assert "engine for input shapes [[1, 8, 8, 3]]" not in text


class TwoInputs(tf.Module):
    """y = (x + table[ids]) @ w: two inputs that must agree on the batch, an index that must
    fall in the table."""

    def __init__(self):
        rng = np.random.RandomState(0)
        self.w = tf.constant(rng.randn(16, 8).astype(np.float32))
        self.table = tf.constant(rng.randn(50, 16).astype(np.float32))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int32, name="ids"),
                                  tf.TensorSpec([None, 16], tf.float32, name="x")])
    def __call__(self, ids, x):
        return {"y": tf.matmul(x + tf.gather(self.table, ids), self.w)}


@pytest.mark.parametrize("bad,why", [
    ("batches 8 and 3", "do not broadcast"),
    ("index 100 of 50", "out of range"),
])
def test_calibration_data_the_model_cannot_run_names_its_batch(tmp_path, bad, why):
    """Calibration batches whose inputs are each fine but do not fit together failed deep in
    the engine build or a numpy kernel, without the batch (helper hunt, 2026-12-02): now a
    ValueError names calibration_input_fn's batch and what failed, and a good batch after a
    failed conversion converts."""
    path = models.save_module(TwoInputs(), str(tmp_path / "m"))
    rng = np.random.RandomState(1)
    ids, x = np.arange(8, dtype=np.int32), rng.randn(8, 16).astype(np.float32)
    batch = (ids, x[:3]) if bad.startswith("batches") else (ids + 100, x)
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=path, precision_mode="INT8")
    with pytest.raises(ValueError, match=r"calibration_input_fn: batch 0: the model cannot "
                                         rf"run it \(.*{why}"):
        conv.convert(calibration_input_fn=lambda: iter([batch]))
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=path, precision_mode="INT8")
    fn = conv.convert(calibration_input_fn=lambda: iter([(ids, x)]))
    native = tf.saved_model.load(path).signatures["serving_default"]
    got = fn(ids=tf.constant(ids), x=tf.constant(x))["y"].numpy()
    want = native(ids=tf.constant(ids), x=tf.constant(x))["y"].numpy()
    assert np.abs(got - want).max() <= 0.05 * np.abs(want).max()


@pytest.mark.parametrize("precision,tol", [("INT8", 0.03), ("FP8", 0.1)])
def test_calibrated_activations_past_float16_keep_float32(tmp_path, precision, tol):
    """A quantized layer's output is stored in float16 unless calibration saw it past half
    of float16's range: activations of 3e5 stored as float16 were inf, and the engine
    answered NaN (FP8) or 0 (INT8) where TF is finite (helper hunt, 2026-12-02)."""
    path = models.save_module(Cnn(mean=True), str(tmp_path / "m"))  # on inputs near 1e5:
    # activations of 3e5-7e5
    rng = np.random.RandomState(0)
    cal = [rng.rand(4, 8, 8, 3).astype(np.float32) * 1e5 for _ in range(3)]
    x = tf.constant(rng.rand(4, 8, 8, 3).astype(np.float32) * 1e5)
    want = tf.saved_model.load(path).signatures["serving_default"](x=x)["y"].numpy()
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=path, precision_mode=precision)
    got = conv.convert(calibration_input_fn=lambda: iter([(a,) for a in cal]))(x=x)["y"]
    got = got.numpy()
    assert np.isfinite(got).all(), got
    assert np.abs(got - want).max() <= tol * np.abs(want).max(), (got, want)
    (op,) = conv.engine_ops.values()
    assert op.stats["native"] == 0


class DataRangedQdq(tf.Module):
    """QuantizeAndDequantizeV2 with range_given=False around a GEMM: TF quantizes with the
    data's range, TF-TRT (and tftrt's INT8 engines) with input_min / input_max."""

    def __init__(self):
        self.w = tf.constant(np.random.RandomState(0).randn(16, 8).astype(np.float32))

    @tf.function(input_signature=[tf.TensorSpec([None, 16], tf.float32, name="x")])
    def __call__(self, x):
        x = tf.quantization.quantize_and_dequantize_v2(x, -1.0, 1.0, range_given=False)
        return {"y": tf.matmul(x, self.w)}


def test_a_qdq_without_range_given_says_its_range_is_taken_as_given(tmp_path, caplog):
    """range_given=False: the INT8 engine takes [input_min, input_max] as TF-TRT did, which
    differs from native TF wherever the data leaves it; that was silent (helper hunt,
    2026-12-02: 0.94 of the largest output on data in +-3). Now one warning names the op,
    its range and what to do; inside the range the answers agree."""
    path = models.save_module(DataRangedQdq(), str(tmp_path / "m"))
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=path, precision_mode="INT8",
                                   use_calibration=False)
    with caplog.at_level("WARNING", logger="tftrt"):
        fn = conv.convert()
    warned = [r.getMessage() for r in caplog.records if "range_given=False" in r.getMessage()]
    assert len(warned) == 1 and "QuantizeAndDequantize" in warned[0] and "[-1, 1]" in \
        warned[0] and "precision_mode='FP16'" in warned[0], warned
    x = tf.constant(np.random.RandomState(1).uniform(-1, 1, (8, 16)).astype(np.float32))
    want = tf.saved_model.load(path).signatures["serving_default"](x=x)["y"].numpy()
    assert np.abs(fn(x=x)["y"].numpy() - want).max() <= 0.05 * np.abs(want).max()


def test_the_range_given_warning_comes_with_every_conversion(tmp_path, caplog):
    """The warning was once per process: a second conversion of a model with the same op
    and range said nothing (and the test above failed after another in its process)."""
    path = models.save_module(DataRangedQdq(), str(tmp_path / "m"))
    for _ in range(2):
        caplog.clear()
        with caplog.at_level("WARNING", logger="tftrt"):
            trt.TrtGraphConverterV2(input_saved_model_dir=path, precision_mode="INT8",
                                    use_calibration=False).convert()
        assert [r for r in caplog.records if "range_given=False" in r.getMessage()]


class StemOnly(tf.Module):
    """One conv on the RGB input, then a spatial mean: its only conv is an image stem."""

    def __init__(self):
        self.w = tf.constant(np.random.RandomState(0).randn(3, 3, 3, 8).astype(np.float32))

    @tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 3], tf.float32, name="x")])
    def __call__(self, x):
        return {"y": tf.reduce_mean(tf.nn.relu(tf.nn.conv2d(x, self.w, 1, "SAME")), [1, 2])}


def test_an_int8_conversion_where_nothing_is_int8_warns_why(tmp_path, caplog, monkeypatch):
    """A calibrated engine none of whose conv / GEMM layers runs in INT8 (here its only conv
    is an image stem, FP16 by default) says so in a warning with the reason, not at INFO
    only (INT8 hunt, 2026-12-05); with a quantized layer there is no such warning."""
    monkeypatch.delenv("TFTRT_QUANTIZE_STEM", raising=False)
    path = models.save_module(StemOnly(), str(tmp_path / "stem"))
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=path, precision_mode="INT8")
    with caplog.at_level("WARNING", logger="tftrt"):
        conv.convert(calibration_input_fn=lambda: iter([(_x(2),)]))
    msgs = [r.getMessage() for r in caplog.records if "runs in INT8" in r.getMessage()]
    assert len(msgs) == 1 and "image stem" in msgs[0] and "TFTRT_QUANTIZE_STEM" in msgs[0], msgs
    assert _share(_lines(conv)) == 0.0
    caplog.clear()
    path = models.save_module(Cnn(), str(tmp_path / "cnn"))
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=path, precision_mode="INT8")
    with caplog.at_level("WARNING", logger="tftrt"):
        conv.convert(calibration_input_fn=lambda: iter([(_x(2),)]))
    assert not [r for r in caplog.records if "runs in INT8" in r.getMessage()]
    assert _share(_lines(conv)) > 50
