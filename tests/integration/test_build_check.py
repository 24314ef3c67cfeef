"""build() checks the engines against native TensorFlow on its first input (the engines'
outputs from its build call against one native call, no extra engine call): the largest error
per output lands in summary(), and a precision that changes the answers past its bar
(compare.BUILD_CHECK_WARN) gets one warning that says what to do. A model that FP16 cannot
represent (EfficientNetV2B1 with random statistics lost 33% in Keras' own mixed_float16) must
not be served silently. Numpy backend (the engines really run)."""

import logging

import numpy as np
import pytest
import tensorflow as tf

from tftrt import compare, trt_convert as trt
from tests.integration import models


class Cancels(tf.Module):
    """y = 2 relu(x @ A + 3) where A pairs inputs 2k and 2k + 1 as 1000 x[2k] - 1000 x[2k + 1]
    (two pairs per output) and the inputs of a pair differ by 1e-3 (``_x``): in float32 each
    output is 2 (-1 per pair), but float16 rounds each input by up to 2.4e-4 before the
    product, ~0.3 per pair."""

    def __init__(self):
        super().__init__()
        a = np.zeros((16, 4), np.float32)
        for k in range(8):
            a[2 * k, k % 4], a[2 * k + 1, k % 4] = 1000.0, -1000.0
        self.a = tf.constant(a)

    @tf.function(input_signature=[tf.TensorSpec([None, 16], tf.float32)])
    def __call__(self, x):
        return {"y": tf.nn.relu(tf.matmul(x, self.a) + 3.0) * 2.0}


@pytest.fixture(scope="module")
def cancels_dir(tmp_path_factory):
    return models.save_module(Cancels(), str(tmp_path_factory.mktemp("m") / "cancels"))


def _x(b=4):
    x = np.random.RandomState(0).uniform(0, 1, (b, 16)).astype(np.float32)
    x[:, 1::2] = x[:, 0::2] + np.float32(1e-3)
    return x


def _build(path, precision, monkeypatch, check="1"):
    monkeypatch.setenv("TFTRT_BACKEND", "numpy")
    monkeypatch.setenv("TFTRT_BUILD_CHECK", check)
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=path, precision_mode=precision)
    conv.convert()
    conv.build(lambda: iter([(_x(),), (_x(8),)]))
    lines = []
    conv.summary(print_fn=lines.append)
    return conv, [l for l in lines if l.startswith("[*] Engines vs native")]


def test_fp32_engines_pass_the_check_quietly(cancels_dir, monkeypatch, caplog):
    with caplog.at_level(logging.WARNING, logger="tftrt.convert"):
        conv, (line,) = _build(cancels_dir, "FP32", monkeypatch)
    check = conv._build_check
    assert check["engine_calls"] == 1 and check["precision"] == "FP32"
    assert set(check["errors"]) == {"y"} and check["worst"] < 1e-3  # summation order
    assert "over" not in line and "(FP32)" in line
    assert not [r for r in caplog.records if "first build input" in r.getMessage()]


def test_an_fp32_host_engine_over_the_bar_is_not_blamed_on_tf32(cancels_dir, monkeypatch,
                                                                caplog):
    """The numpy backend has no tensor cores: an FP32 difference there was explained by TF32
    and the advice to turn it off, which cannot help (hunt)."""
    monkeypatch.setattr(compare, "output_errors", lambda got, ref: {"y": 0.5})
    with caplog.at_level(logging.WARNING, logger="tftrt.convert"):
        _build(cancels_dir, "FP32", monkeypatch)
    (msg,) = [r.getMessage() for r in caplog.records if "first build input" in r.getMessage()]
    assert "TF32" not in msg and "should agree with TF to float rounding" in msg, msg


def test_fp16_that_changes_the_answers_warns_and_says_so_in_summary(cancels_dir, monkeypatch,
                                                                     caplog):
    with caplog.at_level(logging.WARNING, logger="tftrt.convert"):
        conv, (line,) = _build(cancels_dir, "FP16", monkeypatch)
    check = conv._build_check
    # what the engines give against float32 by hand, on the first build input
    x = _x().astype(np.float64)
    want = np.maximum(x @ Cancels().a.numpy().astype(np.float64) + 3.0, 0) * 2.0
    assert check["worst"] > 0.05, check
    assert check["worst"] == pytest.approx(
        compare.output_errors({"y": conv._converted_func(tf.constant(_x()))["y"]},
                              {"y": want})["y"], rel=1e-3)
    assert "over 5e-02" in line and "(FP16)" in line
    warned = [r.getMessage() for r in caplog.records if "first build input" in r.getMessage()]
    assert len(warned) == 1 and "precision_mode='FP32'" in warned[0] and "'y'" in warned[0]
    assert "tftrt compare DIR --per-layer" in warned[0]


def test_the_check_can_be_switched_off(cancels_dir, monkeypatch):
    conv, lines = _build(cancels_dir, "FP16", monkeypatch, check="0")
    assert conv._build_check is None and lines == []


def test_a_build_whose_engines_ran_natively_says_it_checked_nothing(cancels_dir, monkeypatch):
    monkeypatch.setenv("TFTRT_BACKEND", "native")
    monkeypatch.setenv("TFTRT_BUILD_CHECK", "1")
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=cancels_dir, precision_mode="FP16")
    conv.convert()
    conv.build(lambda: iter([(_x(),)]))
    lines = []
    conv.summary(print_fn=lines.append)
    (line,) = [l for l in lines if l.startswith("[*] Engines vs native")]
    assert conv._build_check["engine_calls"] == 0 and "checked nothing" in line


def test_output_errors_by_hand():
    e = {"f": np.array([1.0, -4.0, np.nan, 2.0]), "i": np.array([1, 2, 3, 4]),
         "s": np.zeros((2, 3)), "empty": np.zeros((0, 3))}
    g = {"f": np.array([1.5, -4.0, np.nan, 1.0]), "i": np.array([1, 2, 0, 4]),
         "s": np.zeros((3, 2)), "empty": np.zeros((0, 3))}
    assert compare.output_errors(g, e) == {"f": 1.0 / 4.0, "i": 0.25, "s": 1.0, "empty": 0.0}
    # a finite value that became NaN / inf, a missing output, an all-zero reference
    assert compare.output_errors({"f": np.array([np.inf, -4.0, 0.0, 2.0])},
                                 {"f": e["f"]})["f"] == 1.0
    assert compare.output_errors({}, {"f": e["f"]}) == {"f": 1.0}
    assert compare.output_errors({"z": np.ones(3)}, {"z": np.zeros(3)}) == {"z": 1.0}
    assert compare.output_errors({"z": np.zeros(3)}, {"z": np.zeros(3)}) == {"z": 0.0}


def test_with_dynamic_shapes_the_check_uses_the_engines_rerun(cancels_dir, monkeypatch):
    """use_dynamic_shape: build()'s first pass runs natively while shapes are collected; the
    check takes the rerun of the first input through the profile engine."""
    monkeypatch.setenv("TFTRT_BACKEND", "numpy")
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=cancels_dir, precision_mode="FP16",
                                   use_dynamic_shape=True)
    conv.convert()
    conv.build(lambda: iter([(_x(),), (_x(8),)]))
    check = conv._build_check
    assert check["engine_calls"] == 1 and check["worst"] > 0.05, check
    op = next(iter(conv.engine_ops.values()))
    assert op.stats["engine"] == 1  # the check added no engine call of its own


def _spy_native(conv, events, fail=False):
    """conv's native call, recorded as (thread name, "native") in ``events``."""
    import threading
    real = conv._native_call

    def spy(args):
        events.append((threading.current_thread().name, "native"))
        if fail:
            raise RuntimeError("native call broke")
        return real(args)
    conv._native_call = spy


def test_dynamic_builds_make_the_checks_native_call_beside_the_ladder(cancels_dir,
                                                                     monkeypatch):
    """With use_dynamic_shape, the check's native call starts on a thread of its own once the
    profile's tactics are timed (the tuned rungs built), before the other rungs are built,
    and the check compares with its result: TensorFlow's first call (1.1-1.7 s for ResNet50
    on the H200) no longer follows the ladder. One native call, the same check."""
    import threading
    from tftrt import profiles as P
    from tftrt import trt_convert as T
    monkeypatch.setenv("TFTRT_BACKEND", "numpy")
    monkeypatch.setenv("TFTRT_SPLIT_BATCH", "1")
    monkeypatch.setenv("TFTRT_PROFILE_TUNED_RUNGS", "2")
    events = []
    real_start, real_rung = T._NativeReference.start, P.ProfileEngine._build_rung
    monkeypatch.setattr(T._NativeReference, "start",
                        lambda self: (events.append(("main", "start")), real_start(self)))
    monkeypatch.setattr(P.ProfileEngine, "_build_rung", lambda self, i, rung: (
        events.append((threading.current_thread().name, f"rung {rung[0][0]}")),
        real_rung(self, i, rung))[1])
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=cancels_dir, precision_mode="FP32",
                                   use_dynamic_shape=True)
    conv.convert()
    _spy_native(conv, events)
    conv.build(lambda: iter([(_x(1),), (_x(16),)]))
    names = [e[1] for e in events]
    assert names.index("start") < names.index("rung 2") < names.index("rung 8"), events
    assert [e for e in events if e[1] == "native"] == [("tftrt-check", "native")], events
    check = conv._build_check
    assert "skipped" not in check and check["worst"] < compare.BUILD_CHECK_WARN["FP32"], check


def test_a_rebuild_starts_the_checks_native_call_before_its_opt_engine(
        cancels_dir, monkeypatch, tmp_path):
    """A second build of the same profiles with the build cache the first one left has no
    tactic to time: its check's native call starts before the opt engine is built (beside
    its host work), not after the tuning, where it held the device-wide lock the ladder's
    cuDNN plan loads wait for (a warm ResNet50 rebuild took 3.3 s on the H200). A first
    build, or one with the cache off, starts it after the opt engine."""
    import threading
    from tftrt import profiles as P
    from tftrt import trt_convert as T
    monkeypatch.setenv("TFTRT_BACKEND", "numpy")
    monkeypatch.setenv("TFTRT_CACHE_DIR", str(tmp_path / "cache"))
    events = []
    real_start, real_opt = T._NativeReference.start, P.ProfileEngine._opt_engine
    monkeypatch.setattr(T._NativeReference, "start",
                        lambda self: (events.append("start"), real_start(self)))
    monkeypatch.setattr(P.ProfileEngine, "_opt_engine", lambda self, i: (  # first build
        "opt engine" in events or events.append("opt engine"), real_opt(self, i))[1])

    def build():
        events.clear()
        conv = trt.TrtGraphConverterV2(input_saved_model_dir=cancels_dir,
                                       precision_mode="FP32", use_dynamic_shape=True)
        conv.convert()
        natives = []
        _spy_native(conv, natives)
        conv.build(lambda: iter([(_x(1),), (_x(16),)]))
        assert natives == [("tftrt-check", "native")], natives
        check = conv._build_check
        assert "skipped" not in check and check["worst"] < compare.BUILD_CHECK_WARN["FP32"]
        return list(events)

    assert build() == ["opt engine", "start"]
    assert build() == ["start", "opt engine"]
    monkeypatch.setenv("TFTRT_PROFILE_TUNED_RUNGS", "0")  # other settings: another record
    assert build() == ["opt engine", "start"]
    monkeypatch.setenv("TFTRT_BUILD_CACHE", "0")
    assert build() == ["opt engine", "start"]
    assert threading.active_count() < 50


def test_a_native_call_that_fails_on_the_check_thread_leaves_the_build_standing(
        cancels_dir, monkeypatch, caplog):
    monkeypatch.setenv("TFTRT_BACKEND", "numpy")
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=cancels_dir, precision_mode="FP32",
                                   use_dynamic_shape=True)
    fn = conv.convert()
    events = []
    _spy_native(conv, events, fail=True)
    with caplog.at_level(logging.WARNING, logger="tftrt.convert"):
        conv.build(lambda: iter([(_x(1),), (_x(16),)]))
    assert events == [("tftrt-check", "native")]
    assert "RuntimeError: native call broke" in conv._build_check["skipped"]
    assert any("could not run" in r.getMessage() for r in caplog.records)
    y = fn(x=tf.constant(_x(3)))["y"].numpy()   # the engines serve
    assert np.allclose(y, np.maximum(_x(3) @ Cancels().a.numpy() + 3.0, 0) * 2.0, rtol=1e-4,
                       atol=1e-3)


def test_without_the_check_no_native_call_starts(cancels_dir, monkeypatch):
    monkeypatch.setenv("TFTRT_BACKEND", "numpy")
    monkeypatch.setenv("TFTRT_BUILD_CHECK", "0")
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=cancels_dir, precision_mode="FP32",
                                   use_dynamic_shape=True)
    conv.convert()
    events = []
    _spy_native(conv, events)
    conv.build(lambda: iter([(_x(1),), (_x(16),)]))
    assert events == []
