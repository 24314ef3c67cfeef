"""The public API under wrong use: a clear error that says what to do (never an internal
AttributeError / KeyError / TypeError from tftrt's code), or the right numbers."""

import io
import os

import numpy as np
import pytest
import tensorflow as tf

import tftrt
from tftrt import cli, trt_convert as trt
from tests.integration import models
from tests.integration.test_tf1 import frozen_graph
from tests.tolerances import MODEL_TOLERANCES, TOLERANCES


@pytest.fixture(scope="module")
def mlp_dir(tmp_path_factory):
    return models.save_module(models.MLP(), str(tmp_path_factory.mktemp("hostile") / "mlp"))


@pytest.fixture(scope="module")
def two_dir(tmp_path_factory):
    return models.save_module(models.TwoInputs(),
                              str(tmp_path_factory.mktemp("hostile") / "two"))


def native(path, **kw):
    return tf.saved_model.load(path).signatures["serving_default"](**kw)


def assert_close(got, ref, precision="FP32"):
    rtol, atol = (MODEL_TOLERANCES.get(precision) or TOLERANCES[precision])
    for k in ref:
        np.testing.assert_allclose(np.asarray(got[k]), ref[k].numpy(), rtol=rtol, atol=atol)


def batches(*items):
    return lambda: iter(items)


X = models.batch((3, 8))


# --- TrtGraphConverterV2 arguments ----------------------------------------------------------

@pytest.mark.parametrize("kw, message", [
    (dict(minimum_segment_size="3"), "minimum_segment_size should be an integer; got '3' (str)"),
    (dict(maximum_cached_engines=1.5), "maximum_cached_engines should be an integer; got 1.5"),
    (dict(maximum_cached_engines=True), "maximum_cached_engines should be an integer; got True"),
    (dict(max_workspace_size_bytes=None), "max_workspace_size_bytes should be an integer; "
                                          "got None"),
    (dict(max_workspace_size_bytes=1e9), "max_workspace_size_bytes should be an integer; got "
                                         "1000000000.0 (float)"),
])
def test_numeric_parameters_must_be_integers(mlp_dir, kw, message):
    with pytest.raises(ValueError) as e:
        trt.TrtGraphConverterV2(input_saved_model_dir=mlp_dir, **kw)
    assert message in str(e.value)


def test_numpy_integers_are_integers(mlp_dir):
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=mlp_dir,
                                   minimum_segment_size=np.int64(2),
                                   maximum_cached_engines=np.int32(2),
                                   max_workspace_size_bytes=np.int64(1 << 20))
    assert type(conv._conversion_params.maximum_cached_engines) is int
    fn = conv.convert()
    assert_close(fn(x=X), native(mlp_dir, x=X))


@pytest.mark.parametrize("kw", [dict(use_dynamic_shape="False"),
                                dict(allow_build_at_runtime="False"),
                                dict(use_calibration="no"), dict(use_dynamic_shape=2),
                                dict(allow_build_at_runtime=None)])
def test_true_false_parameters_refuse_other_values(mlp_dir, kw):
    """The string "False" reads as True in Python: it turned dynamic shapes on, and was
    stored as a string in the engine ops' specs (API hunt, s49). Flags take bools, numpy's,
    and 0 / 1, as TF-TRT's users wrote them; anything else is refused, naming the value."""
    (name, value), = kw.items()
    with pytest.raises(ValueError, match=rf"{name} should be True or False; got "
                                         rf"{value!r} \({type(value).__name__}\)"):
        trt.TrtGraphConverterV2(input_saved_model_dir=mlp_dir, **kw)


def test_true_false_parameters_take_numpy_bools_and_0_1(mlp_dir, tmp_path):
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=mlp_dir, use_dynamic_shape=np.bool_(1),
                                   allow_build_at_runtime=0, use_calibration=1)
    params = conv._conversion_params
    assert (params.allow_build_at_runtime, params.use_calibration) == (False, True)
    assert conv._use_dynamic_shape is True
    conv.convert()
    with pytest.raises(ValueError, match=r"save_gpu_specific_engines should be True or False; "
                                         r"got 'False' \(str\)"):
        conv.save(str(tmp_path / "out"), save_gpu_specific_engines="False")
    assert not (tmp_path / "out").exists()


def test_tf1_is_dynamic_op_must_be_true_or_false():
    with pytest.raises(ValueError, match=r"is_dynamic_op should be True or False; got 'True'"):
        trt.TrtGraphConverter(input_graph_def=frozen_graph(), is_dynamic_op="True")


@pytest.mark.parametrize("params", [{"precision_mode": "FP16"}, ("FP16",)])
def test_conversion_params_of_another_type(mlp_dir, params):
    with pytest.raises(TypeError, match=r"conversion_params must be a TrtConversionParams, not "
                                        r"a (dict|tuple); build one with "
                                        r"trt.TrtConversionParams\("):
        trt.TrtGraphConverterV2(input_saved_model_dir=mlp_dir, conversion_params=params)


def test_one_tag_as_a_string_and_a_bytes_path(mlp_dir):
    # tf.saved_model.load takes both; "serve" was read as the tags s, e, r, v, e.
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=mlp_dir.encode(),
                                   input_saved_model_tags="serve")
    assert conv._input_saved_model_tags == ["serve"]
    assert_close(conv.convert()(x=X), native(mlp_dir, x=X))
    assert "serving_default" in tftrt.load(mlp_dir.encode()).signatures


# --- input functions -------------------------------------------------------------------------

@pytest.fixture()
def converted(mlp_dir):
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=mlp_dir, minimum_segment_size=2)
    conv.convert()
    return conv


@pytest.mark.parametrize("input_fn, message", [
    ([X], "input_fn must be a callable returning an iterable of inputs (a generator "
          "function); got a list: pass e.g. input_fn=lambda: iter(batches)"),
    ((x for x in [X]), "input_fn must be a callable returning an iterable of inputs (a "
                       "generator function); got a generator"),
    (lambda: 5, "input_fn() returned a int, which is not iterable"),
])
def test_input_fn_that_is_not_a_generator_function(converted, input_fn, message):
    with pytest.raises(TypeError) as e:
        converted.build(input_fn)
    assert message in str(e.value)


@pytest.mark.parametrize("item, message", [
    (None, "input 'x' from input_fn is a NoneType that cannot be made a tensor"),
    ([[1.0] * 8] * 2, "input_fn yielded 2 input(s); the signature takes 1: ['x'] (a list or "
                      "tuple gives one item per input: yield a numpy array or a tf.Tensor, or "
                      "a 1-tuple holding it)"),
])
def test_input_fn_items_that_are_not_one_tensor(converted, item, message):
    with pytest.raises(ValueError) as e:
        converted.build(batches(item))
    assert message in str(e.value)


def test_build_can_be_called_again_after_it_failed(converted, mlp_dir):
    with pytest.raises(ValueError, match=r"has shape \(3, 7\)"):
        converted.build(batches(X, np.ones((3, 7), np.float32)))
    with pytest.raises(ValueError, match="yielded no inputs"):
        converted.build(batches())
    converted.build(batches(X))  # TF-TRT: build() is "called" once it succeeded
    assert all(len(op.cache) == 1 for op in converted.engine_ops.values())
    assert_close(converted._converted_func(x=X), native(mlp_dir, x=X))
    with pytest.raises(NotImplementedError, match=r"build\(\) is already called"):
        converted.build(batches(X))


# --- INT8 calibration -------------------------------------------------------------------------

def test_int8_calibrates_an_engine_fed_by_native_ops(mlp_dir, tmp_path):
    # The MLP's second engine reads the output of native string ops: calibration computes it
    # with a pruned function of the native graph, which takes tensors, not numpy arrays.
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=mlp_dir, precision_mode="INT8",
                                   minimum_segment_size=2)
    data = [models.batch((16, 8), seed=s) for s in range(4)]
    fn = conv.convert(calibration_input_fn=batches(*data))
    assert len(conv.engine_ops) == 2
    assert all(op.quantization for op in conv.engine_ops.values())
    x = models.batch((8, 8), seed=9)
    ref = native(mlp_dir, x=x)
    got = fn(x=x)
    for k in ref:  # INT8 against FP32 TensorFlow, relative to the output's scale
        err = np.max(np.abs(got[k].numpy() - ref[k].numpy()))
        assert err <= TOLERANCES["INT8"][0] * np.max(np.abs(ref[k].numpy())), (k, err)
    conv.save(str(tmp_path / "int8"))
    loaded = tftrt.load(str(tmp_path / "int8")).signatures["serving_default"]
    np.testing.assert_allclose(loaded(x=x)["y"].numpy(), got["y"].numpy(), rtol=1e-5, atol=1e-6)


def test_convert_can_be_called_again_after_calibration_failed(mlp_dir):
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=mlp_dir, precision_mode="INT8",
                                   minimum_segment_size=2)
    with pytest.raises(ValueError, match=r"calibration_input_fn yielded 0 batch\(es\)"):
        conv.convert(calibration_input_fn=batches())
    with pytest.raises(RuntimeError, match=r"Need to call convert\(\) before save\(\)"):
        conv.save("unused")
    conv.convert(calibration_input_fn=batches(models.batch((16, 8))))
    assert all(op.quantization for op in conv.engine_ops.values())
    with pytest.raises(RuntimeError, match=r"convert\(\) was already called"):
        conv.convert(calibration_input_fn=batches(models.batch((16, 8))))


def test_calibration_arguments(mlp_dir):
    with pytest.raises(TypeError, match="calibration_input_fn must be a callable"):
        trt.TrtGraphConverterV2(input_saved_model_dir=mlp_dir, precision_mode="INT8"
                                ).convert(calibration_input_fn=[X])
    with pytest.raises(ValueError, match="calibration_method='max' is for INT8 / FP8 "
                                         "calibration .*leave it out for FP16"):
        trt.TrtGraphConverterV2(input_saved_model_dir=mlp_dir, precision_mode="FP16"
                                ).convert(calibration_method="max")


# --- save and summary ------------------------------------------------------------------------

def test_save_and_summary_arguments(converted, mlp_dir, tmp_path):
    with pytest.raises(ValueError, match="output_saved_model_dir must be the path of the "
                                         "directory to save to, not None"):
        converted.save(None)
    with pytest.raises(TypeError, match="options must be a tf.saved_model.SaveOptions, not a "
                                        "dict"):
        converted.save(str(tmp_path / "a"), options={"experimental_custom_gradients": False})
    assert not os.path.exists(tmp_path / "a")
    converted.save(str(tmp_path / "b").encode())
    assert_close(tftrt.load(str(tmp_path / "b")).signatures["serving_default"](x=X),
                 native(mlp_dir, x=X))
    with pytest.raises(ValueError, match=r"Invalid `line_length` value has been received: "
                                         r"'200'\. Minimum: 160\."):
        converted.summary(line_length="200")
    with pytest.raises(ValueError, match=r"received: 170\.5\. Minimum: 160\. Give a whole number"):
        converted.summary(line_length=170.5)
    lines = []
    converted.summary(line_length=200.0, print_fn=lines.append)  # was "Minimum: 160" (hunt)
    assert "=" * 200 in lines
    for width in (160, 167, 181, 200):  # the table's rows fit line_length (they took 168 at
        lines = []                      # 160: the headers' minimum widths; hunt, s45)
        converted.summary(line_length=width, print_fn=lines.append)
        rows = [l for l in lines if l.startswith(("TRTEngineOP Name", "TRTEngineOp_"))]
        assert len(rows) >= 2 and max(map(len, rows)) <= width, (width, rows)
        assert rows[0].split()[:3] == ["TRTEngineOP", "Name", "Device"], rows[0]
    with pytest.raises(TypeError, match="print_fn must be a callable taking a string"):
        converted.summary(print_fn=5)


# --- TF1 TrtGraphConverter ---------------------------------------------------------------------

@pytest.mark.parametrize("graph_def", ["/tmp/model.pb", b"\x0a\x01x", "graph"])
def test_tf1_input_graph_def_of_another_type(graph_def):
    if graph_def == "graph":
        graph_def = tf.Graph()
    with pytest.raises(TypeError, match=r"input_graph_def must be a GraphDef "
                                        r"\(tf.compat.v1.GraphDef\), not a (str|bytes|Graph); "
                                        r"read a .pb file with"):
        trt.TrtGraphConverter(input_graph_def=graph_def)


@pytest.mark.parametrize("kw, message", [
    (dict(max_batch_size=2.5), "max_batch_size should be a positive integer; got 2.5"),
    (dict(max_batch_size="8"), "max_batch_size should be a positive integer; got '8'"),
])
def test_tf1_max_batch_size_must_be_an_integer(kw, message):
    with pytest.raises(ValueError) as e:
        trt.TrtGraphConverter(input_graph_def=frozen_graph(), **kw)
    assert message in str(e.value)


def test_tf1_nodes_denylist_and_empty_graph():
    with pytest.raises(ValueError, match=r"nodes_denylist names node\(s\) \['logits'\] that are "
                                         r"not in input_graph_def"):
        trt.TrtGraphConverter(input_graph_def=frozen_graph(), nodes_denylist=["out", "logits"],
                              is_dynamic_op=True).convert()
    with pytest.raises(ValueError, match="input_graph_def has no nodes"):
        trt.TrtGraphConverter(input_graph_def=tf.compat.v1.GraphDef()).convert()
    # One name given as a string is that node, not its characters.
    gd = frozen_graph()
    conv = trt.TrtGraphConverter(input_graph_def=gd, nodes_denylist="out",
                                 minimum_segment_size=2, is_dynamic_op=True)
    converted = conv.convert()
    x = models.batch((3, 8))
    ref, _ = models.session_run(gd, x)
    got, _ = models.session_run(converted, x)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)


def test_tf1_int8_save_needs_calibrate_and_bad_feeds_are_clear(mlp_dir, tmp_path):
    conv = trt.TrtGraphConverter(input_saved_model_dir=mlp_dir, precision_mode="INT8",
                                 minimum_segment_size=2, is_dynamic_op=True)
    conv.convert()
    with pytest.raises(RuntimeError, match=r"A model that requires INT8 calibration has to be "
                                           r"calibrated before saving it. Call calibrate\(\)"):
        conv.save(str(tmp_path / "out"))
    assert not os.path.exists(tmp_path / "out")
    x = models.batch((4, 8))
    with pytest.raises(ValueError, match=r"calibrate\(\): run 0 failed: Cannot interpret "
                                         r"feed_dict key.*the graph's inputs are \['x:0'\]"):
        conv.calibrate(["Identity"], 1, feed_dict_fn=lambda: {"y:0": x})
    with pytest.raises(ValueError, match=r"calibrate\(\): run 0 failed: You must feed a value "
                                         r"for placeholder tensor 'x'"):
        conv.calibrate(["Identity"], 1, feed_dict_fn=lambda: {})
    fetch = conv._info.outputs[0].split(":")[0]
    conv.calibrate(fetch, 2, feed_dict_fn=lambda: {"x:0": x})  # one name as a string
    conv.save(str(tmp_path / "out"))
    loaded = tftrt.load(str(tmp_path / "out")).signatures["serving_default"]
    ref = native(mlp_dir, x=x)
    got = loaded(x=x)
    for k in ref:
        err = np.max(np.abs(got[k].numpy() - ref[k].numpy()))
        assert err <= TOLERANCES["INT8"][0] * np.max(np.abs(ref[k].numpy())), (k, err)


# --- the command ---------------------------------------------------------------------------------

def run_cli(*argv):
    out, err = io.StringIO(), io.StringIO()
    code = cli.main([str(a) for a in argv], out=out, err=err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture()
def cli_env(monkeypatch):
    """The commands set TFTRT_BACKEND for their process; each test gets it back."""
    monkeypatch.setenv("TFTRT_BACKEND", "numpy")


@pytest.mark.parametrize("argv, code, message", [
    (["convert", "{two}", "{out}", "--shapes", "a:2x4,b:3x4"], 1,
     "building engines failed: the model cannot run the given inputs (InvalidArgumentError: "
     "Incompatible shapes: [2,4] vs. [3,4]); check their shapes"),
    (["convert", "{two}", "{out}", "--calibration-batch-size", "4"], 2,
     "--calibration-batch-size needs --calibration-data"),
    (["convert", "{two}", "{out}", "--convert_tf1_model", "--precision", "INT8",
      "--calibration-data", "{npz}"], 2, "--convert_tf1_model does not calibrate"),
    (["convert", "{two}", "{out}", "--batch-sizes", "2", "--seed", "-1"], 2,
     "argument --seed: '-1' must be >= 0"),
    (["compare", "{two}", "--top", "-2"], 2, "argument --top: '-2' must be >= 0"),
    (["convert", "{two}", "{out}", "--batch-sizes", "2", "--seed", "4294967296"], 2,
     "argument --seed: '4294967296' must be below 2**32"),
    (["convert", "{two}", "{out}", "--batch-sizes", "99999999999"], 2,
     "GiB of host memory to generate, more than half of this machine's"),
    (["convert", "{two}", "{out}", "--batch-sizes", "2", "--max-workspace-size-bytes",
      str(2 ** 63)], 2, "--max-workspace-size-bytes must be below 2**63"),
])
def test_cli_bad_arguments(cli_env, two_dir, tmp_path, argv, code, message):
    np.savez(str(tmp_path / "cal.npz"), a=np.ones((4, 4), np.float32),
             b=np.ones((4, 4), np.float32))
    fill = {"two": two_dir, "out": str(tmp_path / "out"), "npz": str(tmp_path / "cal.npz")}
    got, _, err = run_cli(*[a.format(**fill) for a in argv])
    assert got == code, err
    assert message in err, err
    assert "Traceback" not in err
    assert not os.path.exists(tmp_path / "out")


def test_cli_says_generated_values_may_be_what_the_model_rejects(cli_env, tmp_path):
    """Generated integers (0 to 3) include a divisor of 0, which TF's integer TruncateMod
    rejects: the error named the shapes alone (helper hunt, 2026-12-04); it now says the
    values were generated and how to give real ones, and --inputs with them compares."""
    class IntMod(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 8], tf.int32, name="a"),
                                      tf.TensorSpec([None, 8], tf.int32, name="b"),
                                      tf.TensorSpec([None, 8], tf.float32, name="x")])
        def __call__(self, a, b, x):
            return {"m": tf.truncatemod(a, b), "y": tf.nn.relu(x * 2.0 + 1.0) * 3.0}
    src = models.save_module(IntMod(), str(tmp_path / "src"))
    ones = {"a": np.ones((2, 8), np.int32), "b": np.ones((2, 8), np.int32),
            "x": np.ones((2, 8), np.float32)}
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=src)
    conv.convert()
    conv.build(lambda: iter([ones]))
    conv.save(str(tmp_path / "conv"))
    code, _, err = run_cli("compare", tmp_path / "conv")
    assert code == 1, err
    assert "TruncateMod" in err and "check their shapes, or, as their values were " \
        "generated (integers 0 to 3, normal floats), give real data with --inputs FILE.npz" \
        in err, err
    np.savez(str(tmp_path / "real.npz"), a=np.arange(16, dtype=np.int32).reshape(2, 8) - 5,
             b=np.full((2, 8), 3, np.int32), x=models.batch((2, 8)))
    code, out, err = run_cli("compare", tmp_path / "conv", "--inputs", tmp_path / "real.npz")
    assert code == 0, err + out


def test_cli_int8_calibration_and_inspect_onnx_to_a_file(cli_env, mlp_dir, tmp_path):
    np.savez(str(tmp_path / "cal.npz"), x=models.batch((32, 8)))
    out = str(tmp_path / "int8")
    code, _, err = run_cli("convert", mlp_dir, out, "--precision", "INT8", "--calibration-data",
                           tmp_path / "cal.npz", "--calibration-batch-size", "16",
                           "--minimum-segment-size", "2", "--no-summary")
    assert code == 0, err
    (tmp_path / "file").write_text("")
    code, _, err = run_cli("inspect", out, "--onnx", tmp_path / "file", "--no-layers")
    assert code == 2, err  # an argument error, said before anything is written
    assert f"--onnx '{tmp_path / 'file'}' is a file; it takes a directory" in err


@pytest.mark.parametrize("direct", ["1", "0"])
def test_a_users_tf_function_outlives_the_converter_and_the_loaded_model(mlp_dir, tmp_path,
                                                                       monkeypatch, direct):
    """A tf.function traced over convert()'s function or tftrt.load's signature, kept after
    the converter / loaded model is gone: its engine nodes' callbacks lived only as long as
    those (TF's py_func registry is weak), and the next call raised 'Could not find callback
    with key=tftrt_TRTEngineOp_...'. (TFTRT_DIRECT_CALL=0: convert() returns the graph
    function itself.)"""
    import gc
    monkeypatch.setenv("TFTRT_DIRECT_CALL", direct)
    x = models.batch((4, 8))
    want = native(mlp_dir, x=tf.constant(x))
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=mlp_dir)
    fn = conv.convert()
    conv.build(lambda: iter([(x,)]))
    conv.save(str(tmp_path / "saved"))
    ops = list(conv.engine_ops.values())
    held = {"fn": fn, "sig": tftrt.load(str(tmp_path / "saved")).signatures["serving_default"]}
    del fn, conv
    h = tf.function(lambda t: held["fn"](x=t))
    k = tf.function(lambda t: held["sig"](x=t))
    for f in (h, k):
        assert_close(f(tf.constant(x)), want)
    held.clear()  # the traced functions hold no reference of their own to these
    gc.collect()
    for f in (h, k):
        assert_close(f(tf.constant(x)), want)
    assert all(op.stats["engine"] >= 2 for op in ops)


def _copy_model(src: str, dst) -> str:
    import shutil
    shutil.copytree(src, str(dst))
    return str(dst)


@pytest.mark.parametrize("where", ["inside", "holds"])
def test_a_save_into_or_over_the_model_being_converted_is_refused(cli_env, two_dir, tmp_path,
                                                                  where):
    """DST inside the SavedModel being converted wrote a model into the original's files;
    DST holding it deleted it (helper hunt, 2026-12-02). The CLI refuses before converting,
    the API's save() before writing; the original loads as before. (DST the model itself
    converts in place, as TF-TRT does, with a warning: test_hostile_saving.)"""
    src = _copy_model(two_dir, tmp_path / "model" / "two")
    if where == "holds":  # the source inside a SavedModel directory that is the destination
        dst = str(tmp_path / "model")
        (tmp_path / "model" / "saved_model.pb").write_bytes(
            (tmp_path / "model" / "two" / "saved_model.pb").read_bytes())
    else:
        dst = os.path.join(src, "assets", "converted")
    before = sorted(os.listdir(src))
    code, _, err = run_cli("convert", src, dst, "--batch-sizes", "2", "--no-summary")
    what = {"inside": "is inside", "holds": "holds"}[where]
    assert code == 2 and f"{what} the SavedModel being converted" in err, err
    assert "Traceback" not in err
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=src)
    conv.convert()
    with pytest.raises(ValueError, match=f"{what} the SavedModel being converted"):
        conv.save(dst)
    assert sorted(os.listdir(src)) == before
    x = {"a": tf.ones((2, 4)), "b": tf.ones((2, 4))}
    for k, v in native(two_dir, **x).items():
        np.testing.assert_array_equal(native(src, **x)[k].numpy(), v.numpy())


def test_inspect_onnx_into_the_model_is_refused(cli_env, two_dir, tmp_path):
    """`tftrt inspect M --onnx M/assets/tftrt` replaced the stored networks (weights
    stripped) by whole ones: their digests no longer matched and tftrt.load ran the model
    natively from then on (helper hunt, 2026-12-02)."""
    dst = str(tmp_path / "conv")
    code, _, err = run_cli("convert", two_dir, dst, "--batch-sizes", "2", "--no-summary")
    assert code == 0, err
    assets = os.path.join(dst, "assets", "tftrt")
    stored = {f: open(os.path.join(assets, f), "rb").read() for f in os.listdir(assets)}
    code, _, err = run_cli("inspect", dst, "--onnx", assets, "--no-layers")
    assert code == 2 and f"--onnx '{assets}' is inside the model" in err, err
    assert {f: open(os.path.join(assets, f), "rb").read() for f in os.listdir(assets)} == \
        stored
    code, out, err = run_cli("inspect", dst, "--onnx", tmp_path / "nets", "--no-layers")
    assert code == 0 and "wrote" in out, err


@pytest.mark.parametrize("damage", ["saved_model.pb", "variables"])
@pytest.mark.parametrize("command", ["compare", "inspect"])
def test_compare_and_inspect_say_a_corrupt_savedmodel_in_one_line(cli_env, two_dir, tmp_path,
                                                                 damage, command):
    """A truncated saved_model.pb or variables file: `compare` and `inspect` printed nine
    frames of TensorFlow's traceback where bench / convert / serve said it in one line."""
    dst = str(tmp_path / "conv")
    code, _, err = run_cli("convert", two_dir, dst, "--batch-sizes", "2", "--no-summary")
    assert code == 0, err
    if damage == "saved_model.pb":
        path = os.path.join(dst, "saved_model.pb")
    else:
        (path,) = [os.path.join(dst, "variables", f) for f in os.listdir(
            os.path.join(dst, "variables")) if ".data-" in f]
    data = open(path, "rb").read()
    open(path, "wb").write(data[:len(data) // 2])
    code, _, err = run_cli(command, dst)
    assert code == 1 and "Traceback" not in err, err
    assert f"cannot load the SavedModel '{dst}' with tags ['serve']:" in err, err
    assert len(err.strip().splitlines()) == 1, err


def test_bench_says_why_a_runner_failed(cli_env, two_dir, tmp_path):
    """bench reported TensorFlow's first line, "Graph execution error:", without the reason
    (helper hunt, 2026-12-02)."""
    code, out, err = run_cli("bench", two_dir, "--shapes", "a:2x4,b:3x4", "--iterations", "1",
                             "--warmup", "0")
    assert "Incompatible shapes: [2,4] vs. [3,4]" in out + err, out + err
    assert "failed: InvalidArgumentError: Graph execution error:" not in out + err


def test_ragged_and_sparse_inputs_are_refused_before_any_engine(mlp_dir, tmp_path):
    """A RaggedTensor or SparseTensor passed tf.is_tensor and the shape check, failed in the
    engine and then in the native segment's binding ("too many positional arguments"),
    counted as a native fallback (runtime hunt, 2026-12-04). Refused up front now."""
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=mlp_dir)
    fn = conv.convert()
    conv.build(batches(X))
    conv.save(str(tmp_path / "m"))
    loaded = tftrt.load(str(tmp_path / "m"))
    sig = loaded.signatures["serving_default"]
    x = tf.constant(X)
    for value, kind in ((tf.RaggedTensor.from_tensor(x), "RaggedTensor"),
                        (tf.sparse.from_dense(x), "SparseTensor")):
        for call in (lambda v: fn(v), lambda v: sig(x=v)):
            with pytest.raises(TypeError, match=f"is a {kind}; the signature expects a dense"):
                call(value)
    for op in list(conv.engine_ops.values()) + list(loaded.engine_ops.values()):
        assert not op.stats.get("native"), op.stats


def test_a_copy_of_a_loaded_model(mlp_dir, tmp_path):
    """copy.copy made the copy without __init__, and LoadedModel.__getattr__ looked up
    _loaded on itself for ever: RecursionError (runtime hunt, 2026-12-04)."""
    import copy
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=mlp_dir)
    conv.convert()
    conv.save(str(tmp_path / "m"))
    loaded = tftrt.load(str(tmp_path / "m"))
    twin = copy.copy(loaded)
    assert_close(twin.signatures["serving_default"](x=tf.constant(X)), native(mlp_dir, x=X))


def test_a_gradient_through_a_converted_call_is_refused_with_the_reason(mlp_dir, tmp_path):
    """Eager calls run the engines from Python, which no tape records: the gradient was None,
    silently; inside a tf.function it was TF's KeyError for an engine node's branch function
    (runtime hunt, 2026-12-04). Both raise LookupError with the reason now, as TF-TRT's
    TRTEngineOp had no gradient; a gradient that does not pass through the call works."""
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=mlp_dir)
    fn = conv.convert()
    conv.build(batches(X))
    conv.save(str(tmp_path / "m"))
    sig = tftrt.load(str(tmp_path / "m")).signatures["serving_default"]
    x = tf.constant(X)
    for call in (lambda v: fn(v), lambda v: sig(x=v)):
        def through(v, call=call):
            with tf.GradientTape() as tape:
                tape.watch(v)
                y = tf.reduce_sum(tf.nest.flatten(call(v))[0])
            return tape.gradient(y, v)
        for run in (through, tf.function(through, autograph=False)):
            with pytest.raises(LookupError, match="have no gradient"):
                run(x)
        w = tf.Variable(2.0)
        with tf.GradientTape() as tape:  # the engine's input is not watched: no error
            y = tf.reduce_sum(tf.nest.flatten(call(x))[0]) * w
        assert float(tape.gradient(y, w)) == pytest.approx(float(y) / 2.0, rel=1e-5)
    assert_close(sig(x=x), native(mlp_dir, x=X))  # calls without a tape as before


def test_a_tf_function_calling_a_loaded_model_is_freed_with_it(mlp_dir, tmp_path):
    """The no-gradient tie was a tf.custom_gradient, which in graph mode registers a gradient
    function per call in TF's process-wide registry: its closure kept the calling
    tf.function's graph and the loaded model's function alive for good (~31 MB per
    tftrt.load of an 8 MB model called once from a tf.function; reload leak). Now both go
    when the caller drops them, and gradients are still refused (the test above)."""
    import gc
    import weakref
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=mlp_dir)
    conv.convert()
    conv.build(batches(X))
    conv.save(str(tmp_path / "m"))

    def call_once():
        sig = tftrt.load(str(tmp_path / "m")).signatures["serving_default"]
        f = tf.function(lambda v: sig(x=v), autograph=False)
        outer = f.get_concrete_function(tf.TensorSpec(X.shape, tf.float32))
        return weakref.ref(outer.graph), weakref.ref(sig.native.graph), f(tf.constant(X))

    for _ in range(2):
        outer, inner, out = call_once()
        assert_close(out, native(mlp_dir, x=X))
        gc.collect()
        assert outer() is None, "the calling tf.function's graph outlived it"
        assert inner() is None, "the loaded model's graph function outlived it"


def test_tftrt_load_keeps_no_second_copy_of_the_model(mlp_dir, tmp_path, monkeypatch):
    """tftrt.load kept the object tf.saved_model.load returned, with every native segment
    function and its weights, which the engine-backed signatures never call: a 200 MB
    model's load held +2.4 GB, +0.8 GB now (the heap given back too). Its public attributes
    stay reachable."""
    import gc
    import weakref
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=mlp_dir)
    conv.convert()
    conv.build(batches(X))
    conv.save(str(tmp_path / "m"))
    ref = native(mlp_dir, x=X)
    seen = []
    real = tf.saved_model.load

    def spy(*args, **kwargs):
        obj = real(*args, **kwargs)
        seen.append(weakref.ref(obj))
        return obj
    monkeypatch.setattr(tf.saved_model, "load", spy)
    loaded = tftrt.load(str(tmp_path / "m"))
    gc.collect()
    assert seen and all(r() is None for r in seen), "tftrt.load kept tf.saved_model.load's model"
    assert loaded.tensorflow_version == tf.__version__
    assert_close(loaded.signatures["serving_default"](x=tf.constant(X)), ref)
    with pytest.raises(AttributeError):
        loaded.no_such_attribute  # pylint: disable=pointless-statement


def test_a_variable_is_taken_as_its_value_as_tf_signatures_take_it(mlp_dir, tmp_path):
    """A tf.Variable input: the loaded SavedModel's signature takes its value; tftrt's
    signatures refused it with a hint about RaggedTensors (leak hunt, 2026-12-05)."""
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=mlp_dir)
    fn = conv.convert()
    conv.build(batches(X))
    conv.save(str(tmp_path / "m"))
    v = tf.Variable(X)
    ref = native(mlp_dir, x=v)
    assert_close(fn(x=v), ref)
    assert_close(tftrt.load(str(tmp_path / "m")).signatures["serving_default"](x=v), ref)


class _Wrapper(tf.Module):
    """A user's module around a converted model: its own tf.function calls it."""

    def __init__(self, fn, keep=None):
        self.fn, self.keep = fn, keep

    @tf.function(input_signature=[tf.TensorSpec([None, 8], tf.float32)])
    def __call__(self, t):
        out = self.fn(x=t)
        return {"y": out["y"] * 2.0, "z": out["z"]}


_FRESH_PROCESS = """
import sys, numpy as np, tensorflow as tf
wrapped, src = sys.argv[1:3]
x = np.random.RandomState(1).standard_normal((3, 8)).astype(np.float32)
got = tf.saved_model.load(wrapped)(tf.constant(x))
ref = tf.saved_model.load(src).signatures["serving_default"](x=tf.constant(x))
print("tftrt" in sys.modules, float(np.abs(got["y"].numpy() - 2 * ref["y"].numpy()).max()),
      float(np.abs(got["z"].numpy() - ref["z"].numpy()).max()))
"""


@pytest.mark.parametrize("direct", ["1", "0"], ids=["pipeline", "graph-function"])
def test_a_users_module_calling_a_converted_model_saves_and_loads_anywhere(mlp_dir, tmp_path,
                                                                           monkeypatch, direct):
    """A tf.Module whose tf.function calls convert()'s function or a tftrt.load signature:
    its save failed ("Error when tracing gradients for SavedModel": the no-gradient tie's
    gradient raised when TF traced it), and once that passed, the SavedModel held the
    engine nodes' EagerPyFuncs, whose callbacks exist only in the saving process ("Could
    not find callback with key=tftrt_TRTEngineOp_..." elsewhere), and not the segment
    functions they call ("cyclic dependency between functions" on load). While a SavedModel
    is written, the call traces the native form, with no gradient override (each load of
    one registered a gradient for good: leak hunt): any TensorFlow loads it, again and
    again, and gets native answers, and the module still calls the engines in the saving
    process. Both call paths:
    the pipeline and the plain graph function (TFTRT_DIRECT_CALL=0, or a graph the pipeline
    does not cut)."""
    import gc
    import subprocess
    import sys
    from tensorflow.python.eager import context
    monkeypatch.setenv("TFTRT_DIRECT_CALL", direct)
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=mlp_dir)
    fn = conv.convert()
    conv.build(batches(X))
    conv.save(str(tmp_path / "m"))
    loaded = tftrt.load(str(tmp_path / "m"))
    ref = native(mlp_dir, x=X)
    for name, call, keep in (("convert", fn, None),
                             ("load", loaded.signatures["serving_default"], loaded)):
        module = _Wrapper(call, keep)
        module(tf.constant(X))  # traced before the save, as a user's module would be
        out = str(tmp_path / f"wrapped_{name}")
        tf.saved_model.save(module, out)
        saved = tf.saved_model.load(out)
        graph_ops = {n.op for f in saved.__call__.get_concrete_function(
            tf.TensorSpec([None, 8], tf.float32)).graph.as_graph_def().library.function
            for n in f.node_def}
        assert "EagerPyFunc" not in graph_ops, name
        got = module(tf.constant(X))  # the engines again in this process
        assert_close({"y": got["y"] / 2.0, "z": got["z"]}, ref)
        # loaded again and again (a server refreshing its model): nothing accumulates (a
        # gradient override in the save registered a gradient per load, for good)
        counts = []
        for _ in range(3):
            again = tf.saved_model.load(out)
            assert_close({k: v for k, v in again(tf.constant(X)).items() if k == "z"},
                         {"z": ref["z"]})
            del again
            gc.collect()
            counts.append(len(context.context().list_function_names()))
        assert counts[1] == counts[2], (name, counts)
        run = subprocess.run([sys.executable, "-c", _FRESH_PROCESS, out, mlp_dir],
                             capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
        assert run.returncode == 0, run.stderr[-2000:]
        imported, dy, dz = run.stdout.split()
        assert imported == "False"
        assert float(dy) <= 1e-5 and float(dz) <= 1e-5, (name, dy, dz)
