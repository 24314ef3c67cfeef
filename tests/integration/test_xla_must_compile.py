"""Inlined XLA-compiled functions (``_XlaMustCompile``) that do not go into engines whole run as
function calls again, through XLA.

Keras wraps a grouped convolution (``groups > 1``) in a ``jit_compile=True`` function: TF's CPU
Conv2D / Conv3D kernels reject a filter with fewer input channels than the input ("Number of
channels in filter (2) must match last dimension of input (4)"). graph_io inlines the call so
the convolution can join an engine; left native (denied, or refused by its converter) it used to
run on that CPU kernel and build() failed.
"""

import contextlib
import io

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

import tftrt
from tests.integration import models
from tests.tolerances import TOLERANCES
from tftrt import graph_io, segment, trt_convert as trt
from tftrt.rewrite import DirectSignature

CONV = {"2d": "Conv2D", "3d": "Conv3D"}


def keras_model(kind, path):
    """Dense -> ReLU -> grouped conv (groups=2) -> ReLU -> Dense, exported as a SavedModel."""
    import keras
    keras.utils.set_random_seed(0)
    layers = keras.layers
    if kind == "3d":
        shape, conv = (6, 8, 8, 4), layers.Conv3D(4, 2, groups=2)
    else:
        shape, conv = (8, 8, 4), layers.Conv2D(4, 3, groups=2)
    model = keras.Sequential([keras.Input(shape, name="x"), layers.Dense(4), layers.ReLU(),
                              conv, layers.ReLU(), layers.Dense(3)])
    with contextlib.redirect_stdout(io.StringIO()):  # export prints the signature
        model.export(path)
    return path, shape


@pytest.fixture(scope="module", params=sorted(CONV))
def grouped(request, tmp_path_factory):
    """(kind, SavedModel dir, an input batch)."""
    path, shape = keras_model(request.param, str(tmp_path_factory.mktemp(request.param) / "m"))
    x = np.random.default_rng(0).standard_normal((2,) + shape).astype(np.float32)
    return request.param, path, x


def convert(path, x, monkeypatch, deny=""):
    monkeypatch.setenv("TF_TRT_OP_DENYLIST", deny)
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=path, precision_mode="FP32",
                                   minimum_segment_size=1)
    fn = conv.convert()
    conv.build(lambda: iter([(x,)]))
    return conv, fn


def assert_matches(path, fn, x):
    """``fn`` against the original signature, which TF runs through XLA (_XlaMustCompile)."""
    models.assert_matches_native(path, fn, x, TOLERANCES["FP32"])


def xla_calls(graph_def):
    """The call nodes marked _XlaMustCompile in ``graph_def`` (the converted function's graph,
    engine form) -> their FunctionDefs."""
    from tensorflow.python.eager import context
    return {n.name: context.context().get_function_def(n.attr["f"].func.name)
            for n in graph_def.node
            if n.op in graph_io.CALL_OPS and n.attr["_XlaMustCompile"].b}


def summary(conv):
    buf = io.StringIO()
    conv.summary(print_fn=lambda s: buf.write(s + "\n"))
    return buf.getvalue()


def test_denied_grouped_conv_runs_as_an_xla_call(grouped, monkeypatch):
    kind, path, x = grouped
    conv, fn = convert(path, x, monkeypatch, deny=CONV[kind])
    info = conv.graph_info
    (op_node,) = [n for n, node in info.nodes.items() if node.op == CONV[kind]]
    assert all(op_node not in s.nodes for s in conv.segmentation.segments)
    assert f"{CONV[kind]}: op type denied by TF_TRT_OP_DENYLIST" in summary(conv)
    # The Dense layers on either side are engines; the conv is the call Keras made, again.
    assert len(conv.engine_ops) == 2
    (call,) = xla_calls(fn.graph.as_graph_def()).values()
    assert call.attr["_XlaMustCompile"].b and call.attr["_noinline"].b
    assert isinstance(fn, DirectSignature)
    assert_matches(path, fn, x)  # eager: the pipeline, the call a function stage
    assert_matches(path, tf.function(lambda **kw: fn(**kw)), x)  # graph: the engine form
    for op in conv.engine_ops.values():
        assert op.stats["native"] == 0, dict(op.stats)


def test_grouped_conv_converts_into_an_engine(grouped, monkeypatch):
    kind, path, x = grouped
    conv, fn = convert(path, x, monkeypatch)
    info = conv.graph_info
    (op_node,) = [n for n, node in info.nodes.items() if node.op == CONV[kind]]
    # The conv came from Keras' XLA function, which an engine takes whole: it stays inlined.
    assert graph_io.XLA_CALL_ATTR in info.nodes[op_node].attr
    assert any(op_node in s.nodes for s in conv.segmentation.segments)
    assert not xla_calls(fn.graph.as_graph_def())
    assert_matches(path, fn, x)
    (op,) = conv.engine_ops.values()
    assert op.stats["engine"] >= 2 and op.stats["native"] == 0, dict(op.stats)


def test_saved_and_loaded_with_the_xla_call(grouped, monkeypatch, tmp_path):
    kind, path, x = grouped
    conv, fn = convert(path, x, monkeypatch, deny=CONV[kind])
    out = str(tmp_path / "out")
    conv.save(out)
    loaded = tftrt.load(out)
    assert_matches(path, loaded.signatures["serving_default"], x)
    assert all(op.stats["native"] == 0 for op in loaded.engine_ops.values())
    # Plain TensorFlow runs the native form: native segments and the XLA call.
    assert_matches(path, tf.saved_model.load(out).signatures["serving_default"], x)
    saved = saved_model_pb2.SavedModel()
    with open(f"{out}/saved_model.pb", "rb") as f:
        saved.ParseFromString(f.read())
    (graph,) = [m.graph_def for m in saved.meta_graphs]
    marked = [f for f in graph.library.function if f.attr["_XlaMustCompile"].b]
    assert [CONV[kind]] == [n.op for f in marked for n in f.node_def if n.op.startswith("Conv")]


def test_nothing_converted_still_runs_the_conv_through_xla(grouped, monkeypatch):
    kind, path, x = grouped
    monkeypatch.setenv("TF_TRT_OP_DENYLIST", "")
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=path, minimum_segment_size=-1)
    fn = conv.convert()
    assert not conv.engine_ops
    (fdef,) = xla_calls(fn.graph.as_graph_def()).values()
    assert CONV[kind] in {n.op for n in fdef.node_def}
    assert_matches(path, fn, x)


def test_one_xla_call_converts_and_another_stays_a_call(tmp_path, monkeypatch):
    """Two grouped convs: the denied Conv3D's function is a call again, the Conv2D's (in an
    engine) stays inlined."""
    import keras
    keras.utils.set_random_seed(1)
    layers = keras.layers
    model = keras.Sequential([
        keras.Input((4, 6, 6, 4), name="x"), layers.Conv3D(4, 2, groups=2), layers.ReLU(),
        layers.Reshape((3 * 5, 5, 4)), layers.Conv2D(6, 3, groups=2), layers.ReLU(),
        layers.Dense(3)])
    path = str(tmp_path / "m")
    with contextlib.redirect_stdout(io.StringIO()):
        model.export(path)
    x = np.random.default_rng(1).standard_normal((3, 4, 6, 6, 4)).astype(np.float32)
    conv, fn = convert(path, x, monkeypatch, deny="Conv3D")
    info = conv.graph_info
    in_engine = {n for s in conv.segmentation.segments for n in s.nodes}
    ops = {info.nodes[n].op for n in in_engine}
    assert "Conv2D" in ops and "Conv3D" not in ops
    (fdef,) = xla_calls(fn.graph.as_graph_def()).values()
    body = {n.op for n in fdef.node_def}
    assert "Conv3D" in body and "Conv2D" not in body, body
    assert_matches(path, fn, x)
    assert_matches(path, tf.function(lambda **kw: fn(**kw)), x)


class TwoPaths(tf.Module):
    """An XLA function with two independent paths: an engine feeds one and reads the other."""

    @tf.function(jit_compile=True)
    def inner(self, p, q):
        return tf.cos(p) + 1.0, tf.cos(q) * 0.5

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
    def run(self, x):
        a = x * 2.0
        o1, o2 = self.inner(a, x)
        return {"y": o2 * 3.0 + a, "z": o1}


def test_an_engine_never_both_feeds_and_reads_a_native_xla_call(tmp_path, monkeypatch):
    """Inlined, `x * 2.0` and `o2 * 3.0 + a` could join one engine (no path links them
    outside the call); with the call a node again that engine would be a cycle."""
    module = TwoPaths()
    path = str(tmp_path / "m")
    tf.saved_model.save(module, path, signatures={"serving_default": module.run})
    x = np.random.default_rng(2).standard_normal((3, 4)).astype(np.float32)
    conv, fn = convert(path, x, monkeypatch, deny="Cos")
    (call,) = xla_calls(fn.graph.as_graph_def())
    assert len(conv.engine_ops) == 2  # the one engine split in two around the call
    reasons = conv.segmentation.unconverted_reasons(conv.graph_info)
    assert reasons["AddV2"] == {segment.XLA_NATIVE_REASON: 1}, reasons
    assert reasons["Cos"] == {"op type denied by TF_TRT_OP_DENYLIST": 2}, reasons
    assert_matches(path, fn, x)
    assert_matches(path, tf.function(lambda **kw: fn(**kw)), x)


def test_an_engine_holding_a_grouped_conv3d_runs_natively_through_xla(tmp_path, monkeypatch):
    """An engine took Keras' XLA call whole: its native segment function runs through XLA, as
    the call did. Plain TensorFlow, the native backend and the engine's own native fallback ran
    the grouped Conv3D on TF's CPU kernel ("Number of channels in filter (2) must match last
    dimension of input (4)"; helper hunt, 2026-12-02)."""
    from tftrt import rewrite
    path, shape = keras_model("3d", str(tmp_path / "m"))
    x = np.random.default_rng(3).standard_normal((2,) + shape).astype(np.float32)
    monkeypatch.setenv("TF_TRT_OP_DENYLIST", "")
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=path, precision_mode="FP32",
                                   minimum_segment_size=1, allow_build_at_runtime=False)
    fn = conv.convert()
    conv.build(lambda: iter([(x,)]))
    (op,) = conv.engine_ops.values()
    assert rewrite.xla_compiled(op.native_fn.fdef)
    assert "Conv3D" in {n.op for n in op.native_fn.fdef.node_def}
    assert_matches(path, fn, x)
    three = np.concatenate([x, x[:1]])  # no engine for 3, none built at run time: native
    assert_matches(path, fn, three)
    assert_matches(path, tf.function(lambda **kw: fn(**kw)), three)  # the engine form's If
    assert op.stats["native"] >= 2, dict(op.stats)
    out = str(tmp_path / "out")
    conv.save(out)
    saved = saved_model_pb2.SavedModel()
    with open(f"{out}/saved_model.pb", "rb") as f:
        saved.ParseFromString(f.read())
    (graph,) = [m.graph_def for m in saved.meta_graphs]
    (node,) = [n for f in graph.library.function for n in f.node_def
               if rewrite.ENGINE_ATTR in n.attr]
    assert node.op == "StatefulPartitionedCall" and node.attr["_XlaMustCompile"].b
    assert all(graph_io.XLA_CALL_ATTR not in n.attr for f in graph.library.function
               for n in f.node_def)
    assert_matches(path, tf.saved_model.load(out).signatures["serving_default"], x)
    monkeypatch.setenv("TFTRT_BACKEND", "native")  # what a machine without a GPU picks
    assert_matches(path, tftrt.load(out).signatures["serving_default"], x)


@pytest.mark.parametrize("deny", ["", "Conv3D"])
def test_int8_calibration_runs_a_grouped_conv3d_through_xla(tmp_path, monkeypatch, deny):
    """Calibration runs the input graph natively for the engines' inputs: with the XLA calls
    inlined, TF's CPU Conv3D kernel failed every batch ("calibration_input_fn: batch 0: the
    model cannot run it"), with the conv in an engine or not."""
    path, shape = keras_model("3d", str(tmp_path / "m"))
    x = np.random.default_rng(4).standard_normal((2,) + shape).astype(np.float32)
    monkeypatch.setenv("TF_TRT_OP_DENYLIST", deny)
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=path, precision_mode="INT8",
                                   minimum_segment_size=1, use_calibration=True)
    fn = conv.convert(calibration_input_fn=lambda: iter([(x,), (x[::-1].copy(),)]))
    want = tf.saved_model.load(path).signatures["serving_default"](x=tf.constant(x))
    got = fn(x=tf.constant(x))
    rtol, atol = TOLERANCES["INT8"]
    for k in want:
        scale = float(np.abs(want[k].numpy()).max())
        np.testing.assert_allclose(got[k].numpy(), want[k].numpy(), rtol=rtol,
                                   atol=atol * scale, err_msg=k)
