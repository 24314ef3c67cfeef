"""TF-TRT's API details users' code relies on (issue 12, item 1's list)."""

import logging
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from tftrt import trt_convert as trt
from tftrt.engine_op import TRTEngineOp
from tftrt.env import env_bool, env_float, parse_bool
from tests.integration import models
from tests.integration.models import session_run
from tests.tolerances import MODEL_TOLERANCES

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def mlp_dir(tmp_path_factory):
    return models.save_module(models.MLP(), str(tmp_path_factory.mktemp("p") / "mlp"))


def native(path):
    return tf.saved_model.load(path).signatures["serving_default"]


def assert_outputs_close(got, ref):
    rtol, atol = MODEL_TOLERANCES["FP32"]
    for k in ref:
        np.testing.assert_allclose(got[k].numpy(), ref[k].numpy(), rtol=rtol, atol=atol)


def run_python(code: str, timeout: int = 240) -> str:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout


@pytest.mark.parametrize("raw,want", [("0", False), ("1", True), ("false", False),
                                      ("False", False), ("FALSE", False), ("true", True),
                                      ("TRUE", True), (" True ", True), ("", None),
                                      ("yes", None)])
def test_booleans_take_tensorflows_spellings(raw, want):
    assert parse_bool(raw) is want


def test_unknown_boolean_keeps_the_default_with_a_warning(monkeypatch, caplog):
    monkeypatch.setenv("TFTRT_STREAM_SYNC", "maybe")
    with caplog.at_level("WARNING", logger="tftrt.env"):
        assert env_bool("TFTRT_STREAM_SYNC", True) is True
    assert "TFTRT_STREAM_SYNC='maybe' is not a boolean" in caplog.text


@pytest.mark.parametrize("raw,want,warns", [("250", 250.0, False), (" 0.5 ", 0.5, False),
                                            ("", 1000.0, False), ("soon", 1000.0, True),
                                            ("-1", 1000.0, True), ("nan", 1000.0, True),
                                            ("inf", 1000.0, True)])
def test_numbers_from_the_environment(monkeypatch, caplog, raw, want, warns):
    monkeypatch.setenv("TFTRT_BUILD_IDLE_MS", raw)
    with caplog.at_level("WARNING", logger="tftrt.env"):
        assert env_float("TFTRT_BUILD_IDLE_MS", 1000.0) == want
    assert ("is not a finite number >= 0" in caplog.text) is warns


@pytest.mark.parametrize("spelling", ["False", "false", "0"])
def test_native_segment_execution_env_false_in_any_spelling(mlp_dir, monkeypatch, spelling):
    import tftrt.engine

    def failing_build(*args, **kwargs):
        raise tftrt.engine.EngineBuildError("no tactic fits (simulated)")
    monkeypatch.setattr(tftrt.engine, "build_engine", failing_build)
    monkeypatch.setenv("TF_TRT_ALLOW_ENGINE_NATIVE_SEGMENT_EXECUTION", spelling)
    fn = trt.TrtGraphConverterV2(input_saved_model_dir=mlp_dir, minimum_segment_size=2).convert()
    with pytest.raises(Exception, match="native segment execution is disabled"):
        fn(x=tf.constant(models.batch((2, 8))))


@pytest.mark.parametrize("value,detailed", [("0", False), ("false", False), ("FALSE", False),
                                            ("1", True), ("True", True)])
def test_detailed_report_switch_writes_no_file(mlp_dir, monkeypatch, tmp_path, caplog, value,
                                               detailed):
    """A boolean value turns the per-op report off or on; it is never taken as a CSV path."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TF_TRT_SHOW_DETAILED_REPORT", value)
    with caplog.at_level("WARNING", logger="tftrt.segment"):
        trt.TrtGraphConverterV2(input_saved_model_dir=mlp_dir, minimum_segment_size=2).convert()
    assert os.listdir(tmp_path) == []
    assert "not converted to TensorRT" in caplog.text   # TF-TRT's summary line stays
    assert ("AsString (1x)" in caplog.text) == detailed  # the per-op detail when switched on


def test_detailed_report_to_a_csv_path(mlp_dir, monkeypatch, tmp_path, caplog):
    """TF-TRT's CSV: header "OP Name|Reason|Count", '|'-separated rows (segment.cc's
    ExportNonConversionReportToCSV; it was "op_type,count,reason" before 2026-12-04), and
    the detailed report logged as well."""
    path = tmp_path / "report.csv"
    monkeypatch.setenv("TF_TRT_SHOW_DETAILED_REPORT", str(path))
    with caplog.at_level("WARNING", logger="tftrt.segment"):
        trt.TrtGraphConverterV2(input_saved_model_dir=mlp_dir, minimum_segment_size=2).convert()
    lines = path.read_text().splitlines()
    assert lines[0] == "OP Name|Reason|Count"
    row = next(ln for ln in lines if ln.startswith("AsString|"))
    op, reason, count = row.split("|")
    assert count == "1" and reason, row
    assert f"TF-TRT Non-Conversion Report saved at: `{path}`" in caplog.text
    assert "AsString (1x)" in caplog.text


@pytest.mark.parametrize("where", ["missing_dir/report.csv", "."])
def test_an_unwritable_detailed_report_path_does_not_stop_the_conversion(
        mlp_dir, monkeypatch, tmp_path, caplog, where):
    """A report path in a missing directory, or a directory: convert() raised
    FileNotFoundError / IsADirectoryError and converted nothing."""
    monkeypatch.setenv("TF_TRT_SHOW_DETAILED_REPORT", str(tmp_path / where))
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=mlp_dir, minimum_segment_size=2)
    with caplog.at_level(logging.ERROR, logger="tftrt"):
        conv.convert()
    assert conv.engine_ops
    assert any("the detailed report cannot be written there" in r.getMessage()
               for r in caplog.records)


def test_converted_function_graph_def_shows_the_engine_nodes(mlp_dir):
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=mlp_dir, minimum_segment_size=2)
    fn = conv.convert()
    names = [n.name for n in fn.graph.as_graph_def().node if "TRTEngineOp" in n.name]
    assert sorted(names) == ["TRTEngineOp_000_000", "TRTEngineOp_000_001"]
    assert sorted(names) == sorted(conv.engine_ops)


def test_allow_build_at_runtime_false_still_builds_in_build(mlp_dir, caplog):
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=mlp_dir, minimum_segment_size=2,
                                   allow_build_at_runtime=False)
    fn = conv.convert()
    conv.build(input_fn=lambda: iter([(models.batch((2, 8)),)]))
    ops = conv.engine_ops.values()
    assert all(op.stats["builds"] == 1 and len(op.cache) == 1 for op in ops)
    assert conv.engine_ops["TRTEngineOp_000_000"].cache.keys() == [((2, 8),)]
    x2 = models.batch((2, 8), seed=3)
    assert_outputs_close(fn(x=tf.constant(x2)), native(mlp_dir)(x=tf.constant(x2)))
    assert all(op.stats["engine"] == 2 for op in ops)     # build()'s call and this one
    x5 = models.batch((5, 8))                              # a shape build() never saw:
    with caplog.at_level("WARNING", logger="tftrt.engine_op"):
        assert_outputs_close(fn(x=tf.constant(x5)), native(mlp_dir)(x=tf.constant(x5)))
    assert all(op.stats["builds"] == 1 and op.stats["native"] == 1 for op in ops)
    assert "allow_build_at_runtime=False" in caplog.text


def frozen_mlp():
    g = tf.Graph()
    with g.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 8], name="x")
        w = tf.constant(models.batch((8, 8), seed=4))
        h = tf.nn.relu(tf.matmul(x, w) + 1.0)
        tf.identity(tf.tanh(h * 0.5), name="out")
    return g.as_graph_def()


def test_tf1_dynamic_op_takes_max_batch_size_none_and_deprecated_args(caplog):
    with caplog.at_level("WARNING", logger="tftrt.convert"):
        conv = trt.TrtGraphConverter(input_graph_def=frozen_mlp(), nodes_denylist=["out"],
                                     is_dynamic_op=True, max_batch_size=None,
                                     minimum_segment_size=2,
                                     session_config=tf.compat.v1.ConfigProto(),
                                     use_function_backup=True)
    assert "session_config=...) is deprecated" in caplog.text
    assert "use_function_backup=...) is deprecated" in caplog.text
    converted = conv.convert()
    x = models.batch((7, 8))
    got, g = session_run(converted, x)
    want, _ = session_run(frozen_mlp(), x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # the ops bound at import (kept alive by the graph), not the converter's own
    bound = [o for o in g._py_funcs_used_in_graph if isinstance(o, TRTEngineOp)]
    assert [o.name for o in bound] == ["TRTEngineOp_000_000"]
    assert bound[0].stats["engine"] == 1 and bound[0].stats["native"] == 0


def test_tf1_static_mode_needs_an_integer_max_batch_size():
    with pytest.raises(ValueError, match="max_batch_size has to be an integer for "
                                         "is_dynamic_op==False"):
        trt.TrtGraphConverter(input_graph_def=frozen_mlp(), max_batch_size=None)


@pytest.fixture(scope="module")
def converted_pb(tmp_path_factory):
    """A TF1-converted GraphDef (dynamic engines) written to a file for fresh processes."""
    conv = trt.TrtGraphConverter(input_graph_def=frozen_mlp(), nodes_denylist=["out"],
                                 is_dynamic_op=True, minimum_segment_size=2)
    path = tmp_path_factory.mktemp("tf1") / "converted.pb"
    path.write_bytes(conv.convert().SerializeToString())
    return str(path)


# Runs in a fresh process, after `import tensorflow as tf`.
_READ_PB = """
        import numpy as np
        gd = tf.compat.v1.GraphDef()
        gd.ParseFromString(open({path!r}, "rb").read())
        x = np.ones((2, 8), np.float32)
"""


def test_public_import_graph_def_binds_engines_whatever_the_import_order(converted_pb):
    out = run_python("""
        import tftrt                       # before TensorFlow
        import tensorflow as tf
        from tensorflow import import_graph_def as early_reference
        from tests.integration.models import session_run
    """ + _READ_PB.format(path=converted_pb) + """
        for imp in (tf.import_graph_def, tf.graph_util.import_graph_def,
                    tf.compat.v1.import_graph_def, early_reference):
            _, g = session_run(gd, x, imp)
            print(g.get_operation_by_name("TRTEngineOp_000_000").type)
    """)
    assert out.split() == ["If"] * 4


def test_plain_tensorflow_runs_a_converted_graph_def_natively(converted_pb):
    out = run_python("""
        import sys
        import tensorflow as tf
        from tests.integration.models import session_run
    """ + _READ_PB.format(path=converted_pb) + """
        assert "tftrt" not in sys.modules
        y, g = session_run(gd, x, tf.import_graph_def)
        print(g.get_operation_by_name("TRTEngineOp_000_000").type, float(y.sum()))
    """)
    op_type, total = out.split()
    assert op_type == "PartitionedCall"
    want, _ = session_run(frozen_mlp(), np.ones((2, 8), np.float32))
    np.testing.assert_allclose(float(total), float(want.sum()), rtol=1e-5)


class WithPyFunction(tf.Module):
    """A model with its own tf.py_function between two convertible parts."""

    def __init__(self):
        self.w = tf.Variable(models.batch((8, 8), seed=5))

    @tf.function(input_signature=[tf.TensorSpec([None, 8], tf.float32, name="x")])
    def __call__(self, x):
        h = tf.nn.relu(tf.matmul(x, self.w) + 1.0) * 2.0
        h = tf.py_function(lambda t: t + 1.0, [h], tf.float32)
        return {"y": tf.tanh(h * 0.5 - 1.0) + 0.25}


def test_engine_tokens_never_answer_a_models_own_py_function(tmp_path):
    """In a fresh process the model's own EagerPyFunc (token pyfunc_0) must fail as in plain
    TensorFlow ("callback not found"), never call a tftrt engine registered there."""
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    run_python(f"""
        import tensorflow as tf
        from tests.integration.test_parity_api import WithPyFunction
        m = WithPyFunction()
        tf.saved_model.save(m, {src!r}, signatures=m.__call__)
        from tftrt import trt_convert as trt
        c = trt.TrtGraphConverterV2(input_saved_model_dir={src!r}, minimum_segment_size=2)
        c.convert()
        assert len(c.engine_ops) >= 1, c.engine_ops
        c.save({dst!r})
    """)
    out = run_python(f"""
        import numpy as np, tensorflow as tf, tftrt
        sig = tftrt.load({dst!r}).signatures["serving_default"]
        try:
            sig(x=tf.constant(np.ones((2, 8), np.float32)))
            print("ANSWERED")
        except Exception as e:
            print("RAISED", "pyfunc_0" in str(e))
    """)
    assert out.split() == ["RAISED", "True"]


def test_engine_outputs_keep_their_static_shapes_in_graph_code(mlp_dir, tmp_path):
    """As TF-TRT's TRTEngineOp (its output_shapes attribute), the engine outputs keep the
    static shapes native TF gave them: convert()'s function and tftrt.load's signature
    report them, and a Keras layer that needs its last dimension works on an output inside
    a user's tf.function (before: every shape was unknown and Dense raised)."""
    import tftrt
    ref = native(mlp_dir)
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=mlp_dir)
    fn = conv.convert()
    conv.save(str(tmp_path / "saved"))
    loaded = tftrt.load(str(tmp_path / "saved")).signatures["serving_default"]
    x = tf.constant(np.ones((3, 8), np.float32))
    for f in (fn, loaded):
        assert {k: s.as_list() for k, s in f.output_shapes.items()} == \
            {k: s.as_list() for k, s in ref.output_shapes.items()}
        assert all(s.rank == 2 and s[0] is None for s in f.output_shapes.values())
        dense = tf.keras.layers.Dense(2)
        user = tf.function(lambda v, f=f, dense=dense: dense(f(x=v)["y"]))
        assert user(x).shape == (3, 2)


def test_the_converters_import_from_tftrt_itself():
    """`from tftrt import TrtGraphConverterV2` (the one-import change users write first)
    raised ImportError: only tftrt.trt_convert was reachable."""
    import subprocess
    import sys
    code = ("import tftrt\n"
            "from tftrt import TrtGraphConverterV2, TrtGraphConverter, TrtConversionParams\n"
            "from tftrt import TrtPrecisionMode, trt_convert\n"
            "assert TrtGraphConverterV2 is trt_convert.TrtGraphConverterV2\n"
            "assert TrtGraphConverter is trt_convert.TrtGraphConverter\n"
            "assert TrtConversionParams()._replace(precision_mode='FP16').precision_mode "
            "== TrtPrecisionMode.FP16\n"
            "assert 'TrtGraphConverterV2' in dir(tftrt)\n"
            "try:\n"
            "    tftrt.NoSuchName\n"
            "except AttributeError as e:\n"
            "    assert \"no attribute 'NoSuchName'\" in str(e)\n"
            "else:\n"
            "    raise SystemExit('no AttributeError')\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]


def test_summary_lists_each_engines_ops_by_name(mlp_dir):
    """TF-TRT's summary() printed each engine's op histogram sorted by op name; it was by
    count here before 2026-12-04 (parity hunt)."""
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=mlp_dir, minimum_segment_size=2)
    conv.convert()
    lines = []
    conv.summary(print_fn=lines.append)
    import re
    groups, run = [], []
    for ln in lines + [""]:  # each engine's histogram: consecutive "\t- Op: Nx" lines
        m = re.fullmatch(r"\t- (\w+): \d+x", ln)
        if m:
            run.append(m.group(1))
        elif run:
            groups.append(run)
            run = []
    assert len(groups) == len(conv.engine_ops) >= 1 and sum(map(len, groups)) >= 3, lines
    for ops in groups:
        assert ops == sorted(ops), ops


def test_deprecated_arguments_say_so(mlp_dir, caplog):
    """TF-TRT warned for ImplicitBatchModeCompatible (_verify_profile_strategy) and for
    conversion_params (deprecated_args); both were silent here before 2026-12-04."""
    with caplog.at_level("WARNING", logger="tftrt"):
        trt.TrtGraphConverterV2(input_saved_model_dir=mlp_dir, use_dynamic_shape=True,
                                dynamic_shape_profile_strategy="ImplicitBatchModeCompatible")
    assert "ImplicitBatchModeCompatible strategy is deprecated" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="tftrt"):
        conv = trt.TrtGraphConverterV2(
            input_saved_model_dir=mlp_dir, precision_mode="FP16",
            conversion_params=trt.TrtConversionParams(precision_mode="FP32"))
    assert "conversion_params is deprecated: use individual converter parameters" in \
        caplog.text
    assert conv._conversion_params.precision_mode == "FP32"  # still honoured, first
    caplog.clear()
    with caplog.at_level("WARNING", logger="tftrt"):
        trt.TrtGraphConverterV2(input_saved_model_dir=mlp_dir, use_dynamic_shape=True,
                                dynamic_shape_profile_strategy="Range")
    assert "deprecated" not in caplog.text
