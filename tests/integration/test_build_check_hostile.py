"""build()'s engines-vs-native check on hostile SavedModels: it must never fail a build that
worked without it, must not cry wolf where native TF itself cannot give the same answer twice
(random ops), must not call a signature whose native call has side effects (Python code, a
print) once more, and must not read as a pass where it compared nothing. Numpy backend."""

import logging

import numpy as np
import pytest
import tensorflow as tf

from tftrt import compare, trt_convert as trt
from tests.integration import models

W = np.random.RandomState(3).randn(8, 32).astype(np.float32)


def _x(b=64, seed=1):
    return np.random.RandomState(seed).uniform(-1, 1, (b, 8)).astype(np.float32)


def _build(module, tmp_path, monkeypatch, inputs, precision="FP32", dynamic=False):
    monkeypatch.setenv("TFTRT_BACKEND", "numpy")
    monkeypatch.setenv("TFTRT_BUILD_CHECK", "1")
    path = models.save_module(module, str(tmp_path / "src"))
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=path, precision_mode=precision,
                                   use_dynamic_shape=dynamic)
    conv.convert()
    conv.build(lambda: iter(inputs))
    lines = []
    conv.summary(print_fn=lines.append, detailed=False)
    (line,) = [l for l in lines if l.startswith("[*] Engines vs native")]
    return conv, line


def _warnings(caplog):
    return [r.getMessage() for r in caplog.records
            if r.name == "tftrt.convert" and r.levelno >= logging.WARNING]


class CheckedNumerics(tf.Module):
    """tf.debugging.check_numerics raises natively on a NaN input; the engine does not."""

    @tf.function(input_signature=[tf.TensorSpec([None, 8], tf.float32)])
    def __call__(self, x):
        h = tf.nn.relu(x * 3.0 + 1.0) * 0.7 + 0.1
        return {"y": tf.debugging.check_numerics(h, "bad values") * 2.0}


def test_a_native_call_that_raises_does_not_fail_the_build(tmp_path, monkeypatch, caplog):
    x = _x(4)
    x[0, 0] = np.nan
    with caplog.at_level(logging.WARNING, logger="tftrt.convert"):
        conv, line = _build(CheckedNumerics(), tmp_path, monkeypatch, [(x,), (_x(2),)])
    op = next(iter(conv.engine_ops.values()))
    assert op.stats["engine"] == 2 and op.stats["native"] == 0  # the build went on
    check = conv._build_check
    assert "InvalidArgumentError" in check["skipped"] and "bad values" in check["skipped"]
    assert "not compared" in line and "could not run" in line and "bad values" in line
    (warned,) = [w for w in _warnings(caplog) if "first build input" in w]
    assert "could not run" in warned and "the build goes on" in warned


def test_an_exception_inside_the_comparison_does_not_fail_the_build(tmp_path, monkeypatch):
    def broken(got, expected):
        raise RuntimeError("comparison exploded")
    monkeypatch.setattr(compare, "output_errors", broken)
    conv, line = _build(models.TwoInputs(), tmp_path, monkeypatch,
                        [{"a": _x(4)[:, :4], "b": _x(4, 2)[:, :4]}])
    assert conv._build_check["skipped"].startswith("the check could not run (RuntimeError: "
                                                  "comparison exploded)")
    assert "comparison exploded" in line
    out = conv._converted_func(a=tf.constant(_x(4)[:, :4]), b=tf.constant(_x(4, 2)[:, :4]))
    assert out["out"].shape == (4, 4)


class Bf16Out(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None, 8], tf.float32)])
    def __call__(self, x):
        return {"bf": tf.cast(tf.nn.relu(tf.matmul(x, W) + 0.5), tf.bfloat16)}


def test_a_bfloat16_output_is_measured_as_floats_not_as_mismatched_elements(tmp_path,
                                                                            monkeypatch,
                                                                            caplog):
    """bfloat16's numpy kind is "V": the check counted the fraction of elements whose bf16
    rounding flipped (5.6% here, a false alarm over FP16's 5% bar) instead of the error."""
    with caplog.at_level(logging.WARNING, logger="tftrt.convert"):
        conv, line = _build(Bf16Out(), tmp_path, monkeypatch, [(_x(),)], "FP16")
    ref = np.maximum(_x().astype(np.float64) @ W + 0.5, 0)
    got = conv._converted_func(tf.constant(_x()))["bf"].numpy().astype(np.float64)
    want = np.abs(got - ref).max() / np.abs(ref).max()
    err = conv._build_check["errors"]["bf"]
    assert 1e-3 < err < 2e-2 and err == pytest.approx(want, abs=8e-3)  # bf16's rounding
    assert "over" not in line
    assert not [w for w in _warnings(caplog) if "first build input" in w]
    e = np.array([1.0, 2.0, 4.0], dtype=tf.bfloat16.as_numpy_dtype)
    g = np.array([1.0, 2.0, 4.5], dtype=tf.bfloat16.as_numpy_dtype)
    assert compare.output_errors({"o": g}, {"o": e}) == {"o": 0.125}


def test_an_infinite_or_nan_native_value_the_engine_misses_is_an_error():
    """Native TF's inf or NaN counts: an engine's NaN or finite value there is an error of
    1.0 (a cumsum past float16's range read 0.0 in build()'s check; helper hunt,
    2026-12-02); the same inf or NaN is none."""
    inf, nan = np.inf, np.nan
    e = np.array([4e4, inf, inf, -inf, nan], np.float16)
    assert compare.output_errors({"o": e.copy()}, {"o": e}) == {"o": 0.0}
    for wrong in ([4e4, inf, nan, -inf, nan], [4e4, inf, inf, -inf, 1.0],
                  [4e4, inf, -inf, -inf, nan], [4e4, inf, inf, 3.0, nan]):
        got = np.array(wrong, np.float16)
        assert compare.output_errors({"o": got}, {"o": e}) == {"o": 1.0}, wrong
    # float32 engine output against a float16 reference: the same rule
    assert compare.output_errors({"o": e.astype(np.float32)}, {"o": e}) == {"o": 0.0}


class Random(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None, 8], tf.float32)])
    def __call__(self, x):
        h = tf.nn.relu(tf.matmul(x, W) + 0.5)
        return {"r": h + tf.random.uniform(tf.shape(h)) * 10.0,
                "d": tf.nn.dropout(h, 0.5, seed=1)}


class StatelessRandom(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None, 8], tf.float32)])
    def __call__(self, x):
        h = tf.nn.relu(tf.matmul(x, W) + 0.5)
        return {"r": h + tf.random.stateless_uniform(tf.shape(h), seed=[1, 2]) * 10.0}


@pytest.mark.parametrize("precision,dynamic", [("FP32", False), ("FP16", True)])
def test_random_ops_are_not_compared_and_not_called_a_precision_loss(tmp_path, monkeypatch,
                                                                     caplog, precision,
                                                                     dynamic):
    """Each call of a random op draws new numbers: the check warned that the FP32 engines
    "change output 'r' by 3.9e-01"."""
    with caplog.at_level(logging.WARNING, logger="tftrt.convert"):
        conv, line = _build(Random(), tmp_path, monkeypatch, [(_x(4),), (_x(2),)], precision,
                            dynamic)
    check = conv._build_check
    assert "errors" not in check and "RandomUniform" in check["skipped"]
    assert ("not compared -- the signature draws random numbers (RandomUniform)" in line
            and "nondeterministic" in line)
    assert not [w for w in _warnings(caplog) if "first build input" in w]


def test_stateless_random_ops_with_a_fixed_seed_are_compared(tmp_path, monkeypatch):
    conv, line = _build(StatelessRandom(), tmp_path, monkeypatch, [(_x(4),)], "FP16", True)
    check = conv._build_check
    assert "skipped" not in check and 0 < check["worst"] < 5e-2, check
    assert "largest error" in line


CALLS = []


def _counted(t):
    CALLS.append(1)
    return t * 2.0


class PythonSideEffect(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None, 8], tf.float32)])
    def __call__(self, x):
        h = tf.nn.relu(tf.matmul(x, W) + 0.5)
        return {"y": tf.py_function(_counted, [h], tf.float32) + 1.0}


def test_a_signature_with_side_effects_is_not_called_once_more(tmp_path, monkeypatch):
    """A py_function (any Python: a counter, a log) ran once more for the check."""
    del CALLS[:]
    conv, line = _build(PythonSideEffect(), tmp_path, monkeypatch, [(_x(4),)])
    assert len(CALLS) == 1  # build()'s own call through the engines, no native one
    assert "EagerPyFunc" in conv._build_check["skipped"]
    assert "not compared -- the signature has stateful ops (EagerPyFunc)" in line


class Dtypes(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None, 8], tf.float32)])
    def __call__(self, x):
        h = tf.nn.relu(tf.matmul(x, W) + 0.5)
        return {"s": tf.strings.as_string(h), "b": h > 2.0, "i64": tf.cast(h, tf.int64),
                "u8": tf.cast(h, tf.uint8), "i32": tf.cast(h, tf.int32), "x": x,
                "c": tf.constant([1.0, 2.0]), "f": h}


@pytest.mark.parametrize("precision,dynamic", [("FP32", False), ("FP16", True)])
def test_outputs_of_every_dtype_are_compared(tmp_path, monkeypatch, caplog, precision,
                                             dynamic):
    """A string output that formats a float differs in most elements once FP16 moves the
    float by 1e-3: the warning said it changed "by 6.2e-01 of its largest value"."""
    with caplog.at_level(logging.WARNING, logger="tftrt.convert"):
        conv, line = _build(Dtypes(), tmp_path, monkeypatch, [(_x(),), (_x(2),)], precision,
                            dynamic)
    check = conv._build_check
    errors = check["errors"]
    assert set(errors) == {"s", "b", "i64", "u8", "i32", "x", "c", "f"}
    assert errors["x"] == errors["c"] == 0.0
    assert all(errors[k] < 0.05 for k in ("b", "i64", "u8", "i32"))  # rounding flips
    warned = [w for w in _warnings(caplog) if "first build input" in w]
    if precision == "FP32":
        assert errors["f"] < 1e-5 and check["worst"] < 1e-2 and not warned
        return
    assert errors["f"] < 5e-3 and check["worst"] == errors["s"] > 0.3
    assert check["worst_output"] == "s" and check["exact"]
    assert f": {errors['s']:.1%} of the elements of output 's' differ (FP16)" in line
    (w,) = warned
    assert f"change output 's' in {errors['s']:.1e} of its elements" in w


def test_an_fp32_string_output_off_by_a_last_digit_is_not_a_bug_report(tmp_path, monkeypatch,
                                                                       caplog):
    """A string formatted from a float that FP32 engines round one ulp apart from TF (a
    hunt's model, s54: "19.580162" against "19.580158") made the check say "please report
    this": an output compared exactly says what else changes it. Here the string output's
    error is raised as such a rounding would; the floats' own stay what they are."""
    from tftrt import compare
    errors = compare.output_errors

    def one_string_differs(got, ref):
        out = errors(got, ref)
        out["s"] = 1 / 64
        return out
    monkeypatch.setattr(compare, "output_errors", one_string_differs)
    with caplog.at_level(logging.WARNING, logger="tftrt.convert"):
        conv, _ = _build(Dtypes(), tmp_path, monkeypatch, [(_x(),)], "FP32")
    assert conv._build_check["worst_output"] == "s" and conv._build_check["exact"]
    (w,) = [w for w in _warnings(caplog) if "first build input" in w]
    assert "change output 's' in 1.6e-02 of its elements" in w, w
    assert trt.exact_output_advice("s") in w and "please report" not in w, w


def test_an_empty_first_input_checks_the_first_with_elements(tmp_path, monkeypatch):
    """An empty first build input made the check compare nothing although the next one had
    elements (helper hunt, 2026-12-01): the check takes the first input whose outputs have
    elements, and says which."""
    conv, line = _build(Dtypes(), tmp_path, monkeypatch, [(_x(0),), (_x(),)], "FP16")
    check = conv._build_check
    assert not check["empty"] and check["input"] == 1 and check["engine_calls"] >= 1
    assert check["errors"]["f"] < 5e-3
    assert "on build input 2 (the first with elements): " in line
    assert "checked nothing" not in line


def test_only_empty_inputs_say_the_check_compared_nothing(tmp_path, monkeypatch):
    conv, line = _build(Dtypes(), tmp_path, monkeypatch, [(_x(0),), (_x(0),)], "FP16")
    assert conv._build_check["empty"] and conv._build_check["worst"] == 0.0
    assert conv._build_check["input"] == 0
    assert "on the first build input: " in line
    assert "no build input has elements: this checked nothing" in line


def test_a_signature_that_no_longer_runs_after_convert_is_loaded_again(tmp_path, caplog):
    """The fuzz model of seed 99 (a native While between engines): after convert() its
    loaded signature function failed with "Op type not registered
    '__inference_while_cond_..'" (its loop functions gone from the runtime), so the check
    raised out of build() (CI, 2026-12-01). The check now loads the input SavedModel once more
    for its native call: it compares, it is not skipped, and nothing warns."""
    from tests.integration.test_fuzz_graphs import run_seed
    with caplog.at_level(logging.WARNING, logger="tftrt.convert"):
        conv = run_seed(99, tmp_path)
    check = conv._build_check
    assert check is not None and "skipped" not in check, check
    assert check["engine_calls"] >= 1 and check["worst"] < 1e-2
    assert not [w for w in _warnings(caplog) if "first build input" in w]


class SideInput(tf.Module):
    """y = 2 x + sum(m): ``m`` may be empty (an optional mask) while ``x`` is not."""

    @tf.function(input_signature=[tf.TensorSpec([None, 8], tf.float32),
                                  tf.TensorSpec([None, 4], tf.float32)])
    def __call__(self, x, m):
        return {"y": tf.nn.relu(x * 2.0 + 1.0) * 3.0 + tf.reduce_sum(m)}


def test_an_empty_side_input_still_compares(tmp_path, monkeypatch):
    """Only outputs with no elements make the check compare nothing: an empty side input
    next to a full image used to say "the first build input has no elements"."""
    empty_m = np.zeros((0, 4), np.float32)
    conv, line = _build(SideInput(), tmp_path, monkeypatch, [{"x": _x(), "m": empty_m}],
                        "FP32")
    assert not conv._build_check["empty"] and "checked nothing" not in line
    assert conv._build_check["engine_calls"] >= 1


def test_an_fp32_warning_points_at_tf32_not_at_fp32(tmp_path, monkeypatch, caplog):
    """Past its bar an FP32 build was told to "convert with precision_mode='FP32'"."""
    monkeypatch.setitem(compare.BUILD_CHECK_WARN, "FP32", -1.0)  # any error is past it
    with caplog.at_level(logging.WARNING, logger="tftrt.convert"):
        _build(SideInput(), tmp_path, monkeypatch,
               [{"x": _x(), "m": np.ones((2, 4), np.float32)}], "FP32")
    (w,) = [w for w in _warnings(caplog) if "first build input" in w]
    # the numpy backend here: no tensor cores, so no TF32 advice; on CuPy it names TF32
    assert trt.fp32_advice("numpy") in w and "precision_mode=" not in w
    assert "enable_tensor_float_32_execution(False)" in trt.fp32_advice("cupy")
    assert "TF32" not in trt.fp32_advice("numpy")
    assert "run natively by TF" in w and "FP32 against" not in w


def test_complex_outputs_count_their_imaginary_part():
    """A float64 cast dropped the imaginary part: inf / NaN there read as error 0 in build()'s
    check and PASS in `tftrt compare` (helper hunt, 2026-12-03)."""
    e = np.array([1 + 2j, 3 - 1j, -2 + 0.5j], np.complex64)
    g = e.copy()
    g[1] = 3 + np.inf * 1j
    assert compare.output_errors({"y": g}, {"y": e})["y"] == 1.0
    g = e + np.array([0, 0.4j, 0], np.complex64)  # 0.4 off, of a largest part of 3
    assert abs(compare.output_errors({"y": g}, {"y": e})["y"] - 0.4 / 3) < 1e-6
    rep = compare.compare_arrays("y", g, e, rtol=1e-3, atol=1e-4)
    assert rep.mismatched == 1 and abs(rep.max_abs - 0.4) < 1e-6
    assert rep.worst[0]["index"] == [1] and rep.worst[0]["got"] == [3.0, pytest.approx(-0.6)]
    assert compare.compare_arrays("y", e, e, rtol=1e-3, atol=1e-4).passed


def test_bfloat16_outputs_are_compared_as_floats_within_the_tolerance():
    """compare_arrays compared bfloat16 bit for bit: any rounding failed, --rtol ignored."""
    import ml_dtypes
    e = np.linspace(-3, 3, 16).astype(ml_dtypes.bfloat16)
    g = (e.astype(np.float32) * 1.01).astype(ml_dtypes.bfloat16)
    assert compare.compare_arrays("y", g, e, rtol=5e-2, atol=5e-2).passed
    rep = compare.compare_arrays("y", g, e, rtol=1e-4, atol=1e-5)
    assert rep.mismatched == e.size and 0.01 < rep.max_abs < 0.05  # 1% of up to 3


def test_fp8_has_its_own_compare_tolerance():
    """`tftrt compare` held FP8 engines to FP32's 1e-3: every FP8 model failed."""
    assert compare.DEFAULT_TOLERANCES["FP8"] == compare.DEFAULT_TOLERANCES["INT8"]


def test_the_check_line_names_engines_that_ran_natively(tmp_path, monkeypatch):
    """One engine failed to build and ran its native segment: the check said 'largest error
    0.0e+00' with no note, though it compared that segment with itself (helper hunt,
    2026-12-03)."""
    monkeypatch.setenv("TFTRT_BACKEND", "numpy")
    monkeypatch.setenv("TF_TRT_OP_DENYLIST", "Cos")
    rng = np.random.RandomState(0)
    k = tf.constant(rng.randn(3, 3, 3, 8).astype("float32"))
    w = tf.constant(rng.randn(8, 4).astype("float32"))

    def f(x):
        h = tf.nn.relu(tf.nn.conv2d(x, k, 1, "SAME") + 1.0)
        h = tf.cos(tf.reduce_mean(h, axis=[1, 2]))
        return {"out": tf.nn.relu(tf.matmul(h, w) + 0.5)}
    m = tf.Module()
    m.f = tf.function(f, input_signature=[tf.TensorSpec([None, 16, 16, 3], tf.float32)])
    tf.saved_model.save(m, str(tmp_path / "src"), signatures=m.f.get_concrete_function())
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=str(tmp_path / "src"))
    conv.convert()
    ops = sorted(conv.engine_ops.values(), key=lambda op: op.name)
    assert len(ops) == 2
    ops[0]._build = lambda *a, **kw: (_ for _ in ()).throw(RuntimeError("no engine here"))
    conv.build(lambda: iter([(rng.randn(2, 16, 16, 3).astype("float32"),)]))
    assert ops[0].stats["native"] == 1 and ops[1].stats["engine"] == 1
    lines = []
    conv.summary(print_fn=lines.append, detailed=False)
    (line,) = [ln for ln in lines if "Engines vs native TF" in ln]
    assert f"-- {ops[0].name} ran natively: not checked" in line and ops[1].name not in line


def test_integer_outputs_compare_within_atol_alone():
    """rtol let token ids in the thousands be off by tens and PASS in `tftrt compare`, while
    build()'s check counted them as differing (helper hunt, 2026-12-03)."""
    e = np.array([3, 1200, 30000], np.int32)
    g = e + np.array([0, 10, 0], np.int32)
    rtol, atol = compare.DEFAULT_TOLERANCES["FP16"]
    assert compare.compare_arrays("ids", g, e, rtol=rtol, atol=atol).mismatched == 1
    assert compare.compare_arrays("ids", g, e, rtol=rtol, atol=10).passed
    assert compare.output_errors({"ids": g}, {"ids": e})["ids"] == pytest.approx(1 / 3)
