"""Control edges into a segment survive conversion (helper hunt, 2026-12-01).

``with tf.control_dependencies([s]): y = tanh(h + 1.0) * 2.0`` puts ``^s`` on the first ops
made in the block, which are the Consts 1.0 and 2.0; Grappler keeps it there. The engine that
took those Consts dropped their control inputs, so a side effect ``s`` that nothing else
needed (a py_func hook) ran natively and never once converted, in TF1 and TF2 alike.
"""

import os

import numpy as np
import pytest
import tensorflow as tf

import tftrt  # noqa: F401  (binds engine nodes on TF1 import_graph_def)
from tftrt import rewrite, trt_convert as trt

W = np.random.RandomState(0).standard_normal((8, 16)).astype(np.float32)


def _hooked_graph(calls):
    def side(v):
        calls.append(v.shape)
        return v
    g = tf.Graph()
    with g.as_default():
        x = tf.compat.v1.placeholder(tf.float32, (None, 8), name="x")
        h = tf.nn.relu(tf.matmul(x, W) + 1.0, name="h")
        s = tf.compat.v1.py_func(side, [h], tf.float32, name="side")
        with tf.control_dependencies([s]):
            y = tf.tanh(h + 1.0) * 2.0
        tf.identity(y, name="out")
    return g, g.as_graph_def()  # the graph keeps py_func's callback registered


def _run(gd, x):
    with tf.Graph().as_default() as g:
        tf.graph_util.import_graph_def(gd, name="")
        with tf.compat.v1.Session(graph=g) as sess:
            return sess.run("out:0", {"x:0": x})


def _strip_engines(gd):
    """The converted GraphDef as plain TF runs it: engine nodes call their native segments."""
    out = type(gd)()
    out.CopyFrom(gd)
    for n in out.node:
        for k in [k for k in n.attr if k.startswith("_tftrt")]:
            del n.attr[k]
    return out


@pytest.mark.parametrize("dynamic", [True, False])
def test_tf1_hook_under_control_dependencies_still_runs(dynamic):
    calls = []
    keep, gd = _hooked_graph(calls)
    x = np.random.RandomState(1).standard_normal((2, 8)).astype(np.float32)
    want = _run(gd, x)
    assert len(calls) == 1
    conv = trt.TrtGraphConverter(input_graph_def=gd, nodes_denylist=["out"],
                                 max_batch_size=2, minimum_segment_size=1,
                                 is_dynamic_op=dynamic)
    cg = conv.convert()
    engines = [n for n in cg.node if n.name.startswith("TRTEngineOp_")]
    assert engines and any("^side" in n.input for n in engines), [
        (n.name, list(n.input)) for n in engines]
    for graph in (cg, _strip_engines(cg)):
        calls.clear()
        np.testing.assert_allclose(_run(graph, x), want, rtol=1e-5, atol=1e-5)
        assert len(calls) == 1
    del keep


def _converted(module, tmp_path, shape, seed):
    """``module`` saved and converted (minimum_segment_size 1): (an input x of ``shape``,
    the module's own y for it, the converter, convert()'s function)."""
    tf.saved_model.save(module, str(tmp_path / "m"), signatures=module.__call__)
    x = tf.constant(np.random.RandomState(seed).standard_normal(shape).astype(np.float32))
    want = module(x)["y"].numpy()
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=str(tmp_path / "m"),
                                   minimum_segment_size=1)
    return x, want, conv, conv.convert()


class Hooked(tf.Module):
    def __init__(self, calls):
        super().__init__()
        self.calls = calls

    @tf.function(input_signature=[tf.TensorSpec([None, 8], tf.float32, name="x")])
    def __call__(self, x):
        h = tf.nn.relu(tf.matmul(x, W) + 1.0)
        s = tf.numpy_function(self.side, [h], tf.float32)
        with tf.control_dependencies([s]):
            y = tf.tanh(h + 1.0) * 2.0
        return {"y": y}

    def side(self, v):
        self.calls.append(v.shape)
        return v


@pytest.mark.parametrize("direct", ["1", "0"])
def test_tf2_hook_under_control_dependencies_still_runs(tmp_path, monkeypatch, direct):
    """Eager calls run a pipeline (tftrt/pipeline.py), which runs a native stage for the
    tensors it hands out: a graph whose engine waits on a native node through a control edge
    runs as one graph function instead (TFTRT_DIRECT_CALL=0 is that graph function)."""
    monkeypatch.setenv("TFTRT_DIRECT_CALL", direct)
    calls = []
    x, want, conv, fn = _converted(Hooked(calls), tmp_path, (3, 8), seed=2)
    assert not isinstance(fn, rewrite.DirectSignature)
    calls.clear()
    np.testing.assert_allclose(fn(x=x)["y"].numpy(), want, rtol=1e-5, atol=1e-5)
    assert len(calls) == 1
    assert sum(op.stats["engine"] for op in conv.engine_ops.values()) >= 1


class HookedConst(tf.Module):
    """A hook kept only by a control edge onto a Const that a native op (Igamma) reads; the
    rest of the math is an engine."""

    def __init__(self, calls):
        super().__init__()
        self.calls = calls

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
    def __call__(self, x):
        p = tf.py_function(self.side, [x], tf.float32)
        with tf.control_dependencies([p]):
            k = tf.constant([1.0, 2.0, 3.0, 4.0])
        y = tf.tanh(x * 2.0 + 1.0) * 3.0 - 1.0
        return {"n": tf.math.igamma(k, tf.abs(y) + 1.0)}

    def side(self, v):
        self.calls.append(1)
        return v


def test_a_hook_on_a_constant_a_native_op_reads_still_runs(tmp_path):
    """The pipeline makes Consts values once, so a control edge onto one (the hook's only
    tie to the graph) sends the call to the graph function: the hook runs once per call in
    convert()'s function and in tftrt.load's signature (helper hunt, 2026-12-01: 0 calls)."""
    calls = []
    m = HookedConst(calls)
    tf.saved_model.save(m, str(tmp_path / "m"), signatures=m.__call__)
    x = tf.constant(np.random.RandomState(3).standard_normal((2, 4)).astype(np.float32))
    calls.clear()
    want = m(x)["n"].numpy()
    assert len(calls) == 1
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=str(tmp_path / "m"),
                                   minimum_segment_size=3)
    fn = conv.convert()
    assert conv.engine_ops
    conv.save(str(tmp_path / "trt"))
    loaded = tftrt.load(str(tmp_path / "trt")).signatures["serving_default"]
    for f in (fn, loaded):
        calls.clear()
        np.testing.assert_allclose(f(x=x)["n"].numpy(), want, rtol=1e-5, atol=1e-6)
        assert len(calls) == 1


class AutoHooked(tf.Module):
    """Side effects that nothing reads and no tf.control_dependencies names: a py_function
    hook and a file write, which tf.function's automatic control dependencies keep through a
    control edge onto the output Identity ("after": they read the engine's output) or that
    are alone in the graph beside an output that is the input ("alone": no engine)."""

    def __init__(self, calls, path, where):
        super().__init__()
        self.calls, self.path, self.where = calls, path, where

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
    def __call__(self, x):
        if self.where == "alone":
            tf.py_function(self.side, [x], tf.float32)
            return {"y": x}
        y = tf.nn.relu(tf.matmul(x, W[:4, :4])) + 1.0
        tf.py_function(self.side, [y], tf.float32)
        tf.io.write_file(self.path, tf.strings.as_string(tf.reduce_sum(y)))
        return {"y": y * 2.0}

    def side(self, v):
        self.calls.append(1)
        return np.float32(0)


@pytest.mark.parametrize("where", ["after", "alone"])
def test_side_effects_nothing_reads_run_in_eager_calls(tmp_path, where):
    """The pipeline ran a stage only for the tensors it hands out, and aliases drop their
    control inputs: a hook after the last engine, or in a model with no engine, never ran in
    convert()'s function or tftrt.load's signature, and the file was never written
    (helper hunt, 2026-12-04)."""
    calls = []
    path = str(tmp_path / "written.txt")
    x, want, conv, fn = _converted(AutoHooked(calls, path, where), tmp_path, (3, 4), seed=4)
    assert bool(conv.engine_ops) == (where == "after")
    conv.save(str(tmp_path / "trt"))
    loaded = tftrt.load(str(tmp_path / "trt")).signatures["serving_default"]
    if where == "after":
        assert isinstance(fn, rewrite.DirectSignature)
    for f in (fn, loaded):
        calls.clear()
        if os.path.exists(path):
            os.remove(path)
        np.testing.assert_allclose(f(x=x)["y"].numpy(), want, rtol=1e-5, atol=1e-5)
        assert len(calls) == 1
        assert os.path.exists(path) == (where == "after")
