"""A TF1 GraphDef with a classic tf.while_loop (Enter / Exit / NextIteration, as TF1 wrote
dynamic_rnn and map_fn) converts around the loop, which stays native, as in TF-TRT. convert()
raised "the graph has a cycle" (helper hunt, 2026-12-01)."""

import contextlib

import numpy as np
import pytest
import tensorflow as tf

import tftrt  # noqa: F401  (binds engine nodes on TF1 import_graph_def)
from tftrt import graph_io, trt_convert as trt

W = np.random.RandomState(0).standard_normal((8, 8)).astype(np.float32)


@contextlib.contextmanager
def _v1_graph():
    """A new default tf.Graph whose loops and conds are v1 control flow (what TF1 wrote);
    the process's setting is restored after."""
    g = tf.Graph()
    with g.as_default():
        v2 = tf.compat.v1.control_flow_v2_enabled()
        tf.compat.v1.disable_control_flow_v2()
        try:
            yield g
        finally:
            if v2:
                tf.compat.v1.enable_control_flow_v2()


def _loop_graph():
    with _v1_graph() as g:
        x = tf.compat.v1.placeholder(tf.float32, (None, 8), name="x")
        h = tf.nn.relu(tf.matmul(x, W) + 1.0) * 2.0 - 1.0
        _, w = tf.while_loop(lambda i, v: i < 3, lambda i, v: (i + 1, v * 0.5 + 0.1),
                             [tf.constant(0), h])
        tf.identity(tf.tanh(w * 3.0) + 1.0, name="out")
    return g.as_graph_def()


def _run(gd, x):
    with tf.Graph().as_default() as g:
        tf.graph_util.import_graph_def(gd, name="")
        with tf.compat.v1.Session(graph=g) as sess:
            return sess.run("out:0", {"x:0": x})


def test_the_loop_is_found_and_its_back_edge_ordered():
    gd = _loop_graph()
    info = graph_io.GraphInfo(gd, ["x:0"], ["out:0"])
    loop = info.while_loop_nodes()
    ops = {info.nodes[n].op for n in loop}
    assert {"Enter", "Merge", "Switch", "NextIteration", "Exit", "LoopCond"} <= ops
    assert "x" not in loop and "out" not in loop
    order = info.topological_order()
    assert len(order) == len(info.nodes)


@pytest.mark.parametrize("dynamic", [True, False])
def test_a_tf1_while_loop_stays_native_and_the_rest_converts(dynamic):
    gd = _loop_graph()
    x = np.random.RandomState(1).standard_normal((2, 8)).astype(np.float32)
    want = _run(gd, x)
    conv = trt.TrtGraphConverter(input_graph_def=gd, nodes_denylist=["out"], max_batch_size=2,
                                 minimum_segment_size=2, is_dynamic_op=dynamic)
    cg = conv.convert()
    engines = [n for n in cg.node if n.name.startswith("TRTEngineOp_")]
    assert len(engines) >= 1
    assert {"Enter", "Exit", "NextIteration"} <= {n.op for n in cg.node}
    np.testing.assert_allclose(_run(cg, x), want, rtol=1e-5, atol=1e-5)


def _nested_loop_graph():
    """An outer loop whose body, after an inner loop, computes on the inner loop's result
    alone (Size -> Cast -> Sqrt -> Reciprocal: no Const, whose control input from the frame
    would have marked it)."""
    with _v1_graph() as g:
        x = tf.compat.v1.placeholder(tf.float32, (None, 8), name="x")

        def outer(i, v):
            _, w = tf.compat.v1.while_loop(lambda j, u: j < 2,
                                           lambda j, u: (j + 1, u * 0.5), [0, v])
            scale = tf.math.reciprocal(tf.sqrt(tf.cast(tf.size(w), tf.float32)))
            return i + 1, v * scale
        _, w = tf.compat.v1.while_loop(lambda i, v: i < 2, outer, [0, x])
        tf.identity(w, name="out")
    return g.as_graph_def()


@pytest.mark.parametrize("dynamic", [True, False])
def test_the_outer_body_after_an_inner_loop_stays_native(dynamic):
    """The outer body's nodes after the inner loop's Exit belong to the outer frame: no engine
    is made of them (one was, and every call failed with "inputs from different frames":
    helper hunt, 2026-12-07)."""
    gd = _nested_loop_graph()
    frames = graph_io.GraphInfo(gd, ["x:0"], ["out:0"]).while_loop_nodes()
    body = {n.name for n in gd.node if n.op in ("Size", "Cast", "Sqrt", "Reciprocal")}
    assert body and body <= frames
    x = np.random.RandomState(0).standard_normal((2, 8)).astype(np.float32)
    want = _run(gd, x)
    conv = trt.TrtGraphConverter(input_graph_def=gd, nodes_denylist=["out"],
                                 minimum_segment_size=2, is_dynamic_op=dynamic)
    got = _run(conv.convert(), x)
    np.testing.assert_allclose(got, want, rtol=1e-6)


def _called_function_graph(target_call: bool):
    """x -> tanh -> a tf.function (matmul, bias, relu, scale) called in the TF1 graph (a
    PartitionedCall) -> 'out'; with ``target_call`` also a second call whose value nothing
    reads (a session target)."""
    @tf.function
    def f(a):
        return tf.nn.relu(tf.matmul(a, W) + 0.25) * 1.5 - 0.1
    g = tf.Graph()
    with g.as_default():
        x = tf.compat.v1.placeholder(tf.float32, (None, 8), name="x")
        tf.identity(f(tf.tanh(x)) * 2.0, name="out")
        if target_call:
            f(x)
    return g.as_graph_def()


@pytest.mark.parametrize("dynamic", [True, False])
def test_a_function_called_in_a_tf1_graph_converts(dynamic):
    """A GraphDef's function call is inlined, as the SavedModel path inlines it, and its ops
    join the engine (the call stayed native whole: "no converter for op type
    PartitionedCall", helper hunt 2026-12-07)."""
    gd = _called_function_graph(False)
    assert any(n.op in ("PartitionedCall", "StatefulPartitionedCall") for n in gd.node)
    x = np.random.RandomState(1).standard_normal((3, 8)).astype(np.float32)
    want = _run(gd, x)
    conv = trt.TrtGraphConverter(input_graph_def=gd, nodes_denylist=["out"],
                                 is_dynamic_op=dynamic, max_batch_size=4)
    got = _run(conv.convert(), x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    members = [m for op in conv._result.engine_ops.values() for m in op.spec.member_nodes]
    assert any(m.endswith("MatMul") for m in members) and any("Relu" in m for m in members)


def test_a_function_call_with_no_reader_stays_a_target():
    """Without nodes_denylist the graph keeps its output-less ends: a call nobody reads is
    inlined and its name stays (the graph still runs)."""
    gd = _called_function_graph(True)
    x = np.random.RandomState(1).standard_normal((3, 8)).astype(np.float32)
    got = _run(trt.TrtGraphConverter(input_graph_def=gd).convert(), x)
    np.testing.assert_allclose(got, _run(gd, x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dynamic", [True, False])
def test_the_layers_after_a_tf1_loop_convert(dynamic):
    """The importer gives a loop's Exit an unknown rank. Grappler drops the reshape the model
    pins the loop's output with (it knows the shape) and the conv then reads the Exit: it
    stayed native with "input 0 of Conv2D has unknown rank" (helper hunt 2026-12-07).
    Grappler's shape inference gives the Exit its rank, and the conv joins an engine. Static
    mode needs every dim: the conv may stay native there, with the same answers."""
    k = (np.random.RandomState(0).standard_normal((3, 3, 8, 8)) * 0.2).astype(np.float32)
    with _v1_graph() as g:
        x = tf.compat.v1.placeholder(tf.float32, (None, 4, 4, 8), name="x")
        _, w = tf.compat.v1.while_loop(
            lambda i, v: tf.logical_and(tf.reduce_sum(tf.abs(v)) < 1e4, i < 3),
            lambda i, v: (i + 1, v * 0.7 + 0.3), [0, tf.reshape(x, [-1, 4, 4, 8])],
            shape_invariants=[tf.TensorShape([]), tf.TensorShape([None, 4, 4, 8])])
        w = tf.reshape(w, [-1, 4, 4, 8])
        tf.identity(tf.nn.relu(tf.nn.conv2d(w, k, 1, "SAME") * 0.5 - 0.2), name="out")
    gd = g.as_graph_def()
    xv = np.random.RandomState(1).standard_normal((2, 4, 4, 8)).astype(np.float32)
    want = _run(gd, xv)
    conv = trt.TrtGraphConverter(input_graph_def=gd, nodes_denylist=["out"],
                                 minimum_segment_size=2, is_dynamic_op=dynamic)
    got = _run(conv.convert(), xv)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    members = [m for op in conv._result.engine_ops.values() for m in op.spec.member_nodes]
    if dynamic:  # (Grappler folds the conv into the Mul after it: "Conv2D/merged_input")
        assert any("Conv2D" in m for m in members), members
