"""Progress of long conversions and builds, TFTRT_LOG_LEVEL, and the one warning that
engines do not run when the backend resolves to native."""

import io
import logging
import os
import re
import subprocess
import sys
import time

import pytest

from tftrt import engine_op, logs, progress, trt_convert as trt
from tests.integration import models

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_line_is_drawn_on_a_terminal_and_erased():
    stream = Terminal()
    with progress.task("building engines", poll=lambda: "engine 1 of 2 built", stream=stream,
                       delay=0, interval=0.01) as shown:
        shown.set("input 3")
        time.sleep(0.15)
    text = stream.getvalue()
    assert "\rtftrt: building engines | input 3 | engine 1 of 2 built | " in text
    assert text.endswith("\r") and text.rstrip("\r").split("\r")[-1].strip() == ""


@pytest.mark.parametrize("stream, env, delay, shown", [
    (io.StringIO(), None, 0, False),      # not a terminal: quiet
    (Terminal(), "0", 0, False),          # switched off
    (io.StringIO(), "1", 0, True),        # forced on
    (Terminal(), None, 5, False),         # over before the delay
])
def test_progress_shows_only_on_terminals_and_after_the_delay(monkeypatch, stream, env, delay,
                                                              shown):
    if env is None:
        monkeypatch.delenv("TFTRT_PROGRESS", raising=False)
    else:
        monkeypatch.setenv("TFTRT_PROGRESS", env)
    with progress.task("converting", stream=stream, delay=delay, interval=0.01):
        time.sleep(0.1)
    assert ("tftrt: converting" in stream.getvalue()) is shown


def test_note_sets_the_innermost_task_and_a_failing_poll_is_ignored():
    stream = Terminal()
    progress.note("nobody listens")  # no task: nothing happens
    with progress.task("outer", stream=io.StringIO()):
        with progress.task("building", poll=lambda: 1 / 0, stream=stream, delay=0,
                           interval=0.01):
            progress.note("tuning layer 7 of 120")
            time.sleep(0.1)
    assert "tftrt: building | tuning layer 7 of 120 | " in stream.getvalue()


@pytest.fixture
def mlp_dir(tmp_path):
    return models.save_module(models.MLP(), str(tmp_path / "mlp"))


def test_build_shows_engine_k_of_n(mlp_dir, monkeypatch, capsys):
    monkeypatch.setenv("TFTRT_PROGRESS", "1")
    monkeypatch.setenv("TFTRT_PROGRESS_DELAY", "0")
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=mlp_dir, minimum_segment_size=2,
                                   maximum_cached_engines=2)
    conv.convert()

    def slow_inputs():
        yield models.batch((2, 8))
        time.sleep(0.6)  # the display redraws while the next input is being made
        yield models.batch((3, 8))
    conv.build(slow_inputs)
    err = capsys.readouterr().err
    assert "tftrt: converting" in err
    assert "tftrt: building engines | input 1 | engine 2 of 2 built | " in err
    assert err.endswith("\r")  # the line is erased, what follows starts clean
    assert sum(op.stats["builds"] for op in conv.engine_ops.values()) == 4


def test_calibration_shows_the_batches_it_has_seen(mlp_dir, monkeypatch, capsys):
    """A calibration generator that takes long (or never ends) shows its batches counting on
    the progress line, V2's convert() and TF1's calibrate()."""
    monkeypatch.setenv("TFTRT_PROGRESS", "1")
    monkeypatch.setenv("TFTRT_PROGRESS_DELAY", "0")

    def slow_batches():
        for k in range(3):
            yield models.batch((2, 8), seed=k)
            time.sleep(0.4)  # the display redraws while the next batch is being made
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=mlp_dir, minimum_segment_size=2,
                                   precision_mode="INT8")
    conv.convert(calibration_input_fn=slow_batches)
    err = capsys.readouterr().err
    assert "tftrt: calibrating | batch 2, 4 samples | " in err, err[-400:]
    assert err.endswith("\r")
    from tftrt import tf1
    t1 = tf1.TrtGraphConverter(input_saved_model_dir=mlp_dir, precision_mode="INT8",
                               minimum_segment_size=2, is_dynamic_op=True)
    t1.convert()

    def feed(k=[0]):
        time.sleep(0.4)
        k[0] += 1
        return {"x:0": models.batch((2, 8), seed=k[0])}
    t1.calibrate(fetch_names=["Identity:0"], num_runs=3, feed_dict_fn=feed)
    err = capsys.readouterr().err
    assert "tftrt: calibrating | run 2 of 3 | " in err, err[-400:]


def test_build_is_quiet_when_stderr_is_not_a_terminal(mlp_dir, monkeypatch, capsys):
    monkeypatch.delenv("TFTRT_PROGRESS", raising=False)
    monkeypatch.setenv("TFTRT_PROGRESS_DELAY", "0")
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=mlp_dir, minimum_segment_size=2)
    conv.convert()
    conv.build(lambda: iter([models.batch((2, 8))]))
    assert "tftrt:" not in capsys.readouterr().err


# --- TFTRT_LOG_LEVEL ---------------------------------------------------------------------------
@pytest.mark.parametrize("raw, level", [("INFO", logging.INFO), ("debug", logging.DEBUG),
                                        (" warn ", logging.WARNING), ("40", logging.ERROR),
                                        ("verbose", None), ("99", None)])
def test_parse_level(raw, level):
    assert logs.parse_level(raw) == level


SCRIPT = """
import numpy as np, tensorflow as tf
from tests.integration import models
from tftrt import trt_convert as trt
path = models.save_module(models.MLP(), {path!r})
conv = trt.TrtGraphConverterV2(input_saved_model_dir=path, minimum_segment_size=2)
fn = conv.convert()
fn(x=tf.constant(models.batch((2, 8))))
"""


def run_script(tmp_path, **env):
    full = {k: v for k, v in os.environ.items() if k not in ("TFTRT_LOG_LEVEL", "TFTRT_BACKEND")}
    full.update(TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT, **env)
    proc = subprocess.run([sys.executable, "-c", SCRIPT.format(path=str(tmp_path / "m"))],
                          env=full, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stderr


def test_log_level_env_shows_info_lines(tmp_path):
    err = run_script(tmp_path, TFTRT_LOG_LEVEL="info", TFTRT_BACKEND="numpy")
    # tftrt's own format, or the root logger's once TensorFlow's absl configured it (then
    # tftrt's handler steps aside: each line once)
    assert re.search(r"(tftrt INFO tftrt\.engine_op: |INFO:tftrt\.engine_op:)"
                     r"TRTEngineOp_000_000: ", err), err[-2000:]
    assert re.search(r"(tftrt WARNING tftrt\.segment: |WARNING:tftrt\.segment:)There are ",
                     err), err[-2000:]
    assert "DEBUG" not in err


def test_without_log_level_only_warnings_show(tmp_path):
    err = run_script(tmp_path, TFTRT_BACKEND="numpy")
    assert "There are " in err and "tftrt.engine_op" not in err and " INFO " not in err


def test_bad_log_level_is_named(tmp_path):
    err = run_script(tmp_path, TFTRT_LOG_LEVEL="chatty", TFTRT_BACKEND="numpy")
    assert "TFTRT_LOG_LEVEL='chatty' is not a log level; use one of DEBUG, INFO" in err


# --- the native backend is announced once ------------------------------------------------------
def test_auto_without_gpu_warns_once_that_engines_do_not_run(tmp_path):
    pytest.importorskip("tensorflow")
    from tftrt.engine.backends import available_backends
    if "cupy" in available_backends():
        pytest.skip("a GPU is here: auto resolves to cupy")
    err = run_script(tmp_path)
    assert err.count("tftrt engines will not run") == 1, err
    assert "because TFTRT_BACKEND=auto found no GPU engine backend: CuPy" in err
    assert "TFTRT_BACKEND=numpy runs the reference engines" in err


def test_explicit_native_warns_once(monkeypatch, caplog):
    monkeypatch.setattr(engine_op, "_RESOLVED", {})
    with caplog.at_level(logging.WARNING, logger="tftrt.engine_op"):
        assert engine_op.resolve_backend("native") == "native"
        assert engine_op.resolve_backend("native") == "native"
        assert engine_op.resolve_backend("numpy") == "numpy"
    msgs = [r.getMessage() for r in caplog.records]
    assert len(msgs) == 1 and "because TFTRT_BACKEND=native selects them" in msgs[0]


def test_engine_build_shows_the_layer_being_tuned():
    """The builder reports the layer it chooses tactics for as the running task's activity,
    and clears it when it is done."""
    from tftrt import progress
    from tftrt.engine import BuilderConfig, build_engine
    from tests.engine.models import resnet50
    m, feeds = resnet50(batch=1, size=32)
    seen = []
    real = progress.activity

    def spy(text):
        seen.append(text)
        real(text)
    progress.activity = spy
    try:
        with progress.task("building engines", stream=io.StringIO()) as shown:
            build_engine(m, {k: v.shape for k, v in feeds.items()},
                         BuilderConfig(precision="FP32", backend="numpy"))
            assert shown.activity == ""
    finally:
        progress.activity = real
    tuned = [t for t in seen if t]
    assert tuned and all(": tactics for layer " in t for t in tuned)
    assert tuned[0].endswith(")") and " of " in tuned[-1] and seen[-1] == ""


def test_info_lines_print_once_after_tensorflow_configures_logging(tmp_path):
    """save() makes absl log inside TF's checkpoint saver, whose first line calls
    logging.basicConfig(): from then on every tftrt line came out twice (tftrt's own handler
    and the root's, by propagation)."""
    script = SCRIPT + "conv.save({out!r})\nfn(x=tf.constant(models.batch((3, 8))))\n"
    full = {k: v for k, v in os.environ.items() if k not in ("TFTRT_LOG_LEVEL", "TFTRT_BACKEND")}
    full.update(TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT, TFTRT_LOG_LEVEL="info",
                TFTRT_BACKEND="numpy")
    proc = subprocess.run(
        [sys.executable, "-c", script.format(path=str(tmp_path / "m"), out=str(tmp_path / "o"))],
        env=full, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # "tftrt INFO tftrt.saving: wrote" (tftrt's handler), "INFO:tftrt.saving:wrote" (root's)
    lines = [re.sub(r"^(\S+?):\s*", r"\1:", l.split("tftrt.", 1)[1])
             for l in proc.stderr.splitlines() if "tftrt." in l and
             (" INFO " in l or "INFO:" in l)]
    assert any(l.startswith("saving") for l in lines), proc.stderr[-3000:]
    twice = [a for a, b in zip(lines, lines[1:]) if a == b]  # one record, two handlers
    assert not twice, twice
