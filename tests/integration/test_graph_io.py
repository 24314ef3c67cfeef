"""graph_io inlines the function calls freezing keeps (``_noinline``), so engines hold their nodes.

TF-TRT converted inside such functions; tftrt inlines them into the signature graph before
Grappler and segmentation (graph_io.inline_function_calls).
"""

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.framework import convert_to_constants

from tests.integration.models import assert_matches_native
from tftrt import graph_io, trt_convert as trt

NOINLINE = {"_noinline": True}
X = tf.TensorSpec([None, 4], tf.float32, name="x")


def call_nodes(graph_def):
    return [n.name for n in graph_def.node if n.op in graph_io.CALL_OPS]


def batch(n=5, seed=0):
    return np.random.RandomState(seed).uniform(-1, 1, (n, 4)).astype(np.float32)


class Nested(tf.Module):
    """The signature calls ``block`` (not inlined), which calls ``dense`` (not inlined) twice."""

    def __init__(self):
        rng = np.random.RandomState(1)
        self.w = tf.Variable(rng.standard_normal((4, 4)).astype(np.float32))
        self.b = tf.Variable(rng.standard_normal((4,)).astype(np.float32))

    @tf.function(experimental_attributes=NOINLINE)
    def dense(self, x):
        return tf.nn.relu(tf.matmul(x, self.w) + self.b)

    @tf.function(experimental_attributes=NOINLINE)
    def block(self, x):
        return tf.tanh(self.dense(self.dense(x) * 0.5))

    @tf.function(input_signature=[X])
    def run(self, x):
        return {"y": self.block(x * 2.0) - 1.0}


class TwoOutputs(tf.Module):
    """A function with two outputs: one feeds a convertible op, the other a native one."""

    @tf.function(experimental_attributes=NOINLINE)
    def split(self, x):
        return tf.nn.relu(x * 3.0 + 1.0), tf.reduce_sum(tf.sigmoid(x), axis=1)

    @tf.function(input_signature=[X])
    def run(self, x):
        a, s = self.split(x)
        # The string round trip has no converter: `s` leaves the engine for it.
        s_native = tf.strings.to_number(tf.strings.as_string(s))
        return {"a": a * 2.0 - 1.0, "s": s_native + 1.0}


def save(module, path):
    tf.saved_model.save(module, path, signatures={"serving_default": module.run})
    return path


def convert(path, **kw):
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=path, minimum_segment_size=2, **kw)
    return conv, conv.convert()


def test_freezing_keeps_noinline_calls(tmp_path):
    # What the tests below rely on: without graph_io's inlining the calls would stay.
    path = save(Nested(), str(tmp_path / "nested"))
    loaded = tf.saved_model.load(path)
    frozen = convert_to_constants.convert_variables_to_constants_v2(
        loaded.signatures["serving_default"])
    assert len(call_nodes(frozen.graph.as_graph_def())) == 1
    _, gd = graph_io.freeze_and_clean(loaded.signatures["serving_default"])
    assert call_nodes(gd) == []


def test_nested_noinline_functions_convert_into_one_engine(tmp_path):
    path = save(Nested(), str(tmp_path / "nested"))
    conv, fn = convert(path)
    assert sorted(conv.engine_ops) == ["TRTEngineOp_000_000"]
    (seg,) = conv.segmentation.segments
    ops = sorted(conv.graph_info.nodes[n].op for n in seg.nodes)
    # Both calls of `dense` (inside `block`) are in the engine: two MatMuls, two Relus.
    assert ops.count("MatMul") == 2 and ops.count("Relu") == 2 and "Tanh" in ops, ops
    matmuls = [n for n in seg.nodes if conv.graph_info.nodes[n].op == "MatMul"]
    assert len({n.rsplit("/", 1)[0] for n in matmuls}) == 2, matmuls  # two call scopes
    assert not call_nodes(conv.graph_info.graph_def)
    for seed in (0, 1):
        assert_matches_native(path, fn, batch(3 + seed, seed))
    (op,) = conv.engine_ops.values()
    assert op.stats["engine"] == 2 and op.stats["native"] == 0, dict(op.stats)


def test_function_outputs_reach_their_own_consumers(tmp_path):
    path = save(TwoOutputs(), str(tmp_path / "two"))
    conv, fn = convert(path)
    info = conv.graph_info
    assert not call_nodes(info.graph_def)
    assert_matches_native(path, fn, batch())
    assert conv.engine_ops and all(op.stats["engine"] == 1 and op.stats["native"] == 0
                                   for op in conv.engine_ops.values())
    # The Relu output (call:0) stays in an engine with its consumers; the reduction's output
    # (call:1) leaves for the native string round trip.
    owner = {n: s.name for s in conv.segmentation.segments for n in s.nodes}
    relu = next(n for n in info.nodes if info.nodes[n].op == "Relu")
    as_string = next(n for n in info.nodes if info.nodes[n].op == "AsString")
    assert relu in owner and as_string not in owner
    (feeding,) = info.data_inputs(info.nodes[as_string])
    assert info.nodes[graph_io.split_tensor_name(feeding)[0]].op in ("Sum", "Identity")


# --- inline_function_calls on graphs built here ---------------------------------------------


@tf.function(experimental_attributes=NOINLINE)
def guarded(x):
    tf.debugging.assert_greater(x, -10.0, message="x is at most -10")
    return tf.nn.relu(x * 2.0), tf.tanh(x)


def control_graph(x):
    # The call waits on a Print; a later node waits on the call.
    printed = tf.raw_ops.Print(input=x, data=[x], message="before the call")
    with tf.control_dependencies([printed]):
        a, b = guarded(x)
    with tf.control_dependencies([a]):
        after = tf.identity(x + 1.0, name="after")
    return a, b, after


def graph_def_of(fn, spec=tf.TensorSpec([2, 3], tf.float32, name="x")):
    return tf.function(fn).get_concrete_function(spec).graph.as_graph_def()


def run(graph_def, fetches, x):
    with tf.Graph().as_default() as g:
        tf.graph_util.import_graph_def(graph_def, name="")
        with tf.compat.v1.Session(graph=g) as sess:
            return sess.run(fetches, {"x:0": x})


def test_control_inputs_and_control_consumers_of_a_call():
    gd = graph_def_of(control_graph)
    (call,) = call_nodes(gd)
    assert "^Print" in {n.name: n for n in gd.node}[call].input
    out = graph_io.inline_function_calls(gd)
    assert call_nodes(out) == []
    nodes = {n.name: n for n in out.node}
    body = [n for n in out.node if n.name.startswith(call + "/")]
    assert {n.op for n in body} >= {"Relu", "Tanh", "Mul", "If"}
    # Every body node waits on the Print: directly, or through a body node that does.
    for n in body:
        inner = [i for i in n.input if graph_io.split_tensor_name(i)[0].startswith(call + "/")]
        assert inner or "^Print" in n.input, (n.name, list(n.input))
    # `after` still waits on a node named like the call, which waits on the body's assertion.
    stand_in = nodes[call]
    assert stand_in.op == "NoOp"
    assert f"^{call}/assert_greater/Assert/AssertGuard" in stand_in.input
    assert any(i == "^" + call for n in out.node for i in n.input)
    # The If of the assertion keeps its branch functions.
    branches = {nodes[f"{call}/assert_greater/Assert/AssertGuard"].attr[k].func.name
                for k in ("then_branch", "else_branch")}
    assert branches == {f.signature.name for f in out.library.function}

    x = np.array([[1.0, -2.0, 3.0], [0.5, 0.0, -0.25]], np.float32)
    fetches = ["Identity:0", "Identity_1:0", "Identity_2:0"]
    for got, want in zip(run(out, fetches, x), run(gd, fetches, x)):
        np.testing.assert_array_equal(got, want)
    # The assertion inside the function still guards `after`.
    with pytest.raises(tf.errors.InvalidArgumentError, match="x is at most -10"):
        run(out, "after:0", np.full((2, 3), -20.0, np.float32))


def test_fetched_call_outputs_keep_their_names():
    gd = graph_def_of(control_graph)
    (call,) = call_nodes(gd)
    fetches = [f"{call}:1", f"{call}:0"]
    out = graph_io.inline_function_calls(gd, fetches)
    stand_in = {n.name: n for n in out.node}[call]
    assert stand_in.op == "IdentityN" and len(stand_in.attr["T"].list.type) == 2
    x = np.array([[1.0, -2.0, 3.0], [0.5, 0.0, -0.25]], np.float32)
    for got, want in zip(run(out, fetches, x), run(gd, fetches, x)):
        np.testing.assert_array_equal(got, want)


def test_a_function_called_twice_gets_two_copies():
    @tf.function(experimental_attributes=NOINLINE)
    def scale_shift(x, s):
        return x * s + 1.0

    def f(x):
        return scale_shift(x, 2.0) - scale_shift(x * x, 3.0)

    gd = graph_def_of(f)
    calls = call_nodes(gd)
    assert len(calls) == 2
    out = graph_io.inline_function_calls(gd)
    assert call_nodes(out) == [] and not out.library.function
    muls = sorted(n.name for n in out.node if n.op == "Mul" and n.name.startswith(tuple(calls)))
    assert [m.split("/")[0] for m in muls] == sorted(calls)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(run(out, "Identity:0", x), run(gd, "Identity:0", x))


def test_calls_inside_cond_branches_stay_functions():
    @tf.function(experimental_attributes=NOINLINE)
    def double(x):
        return x * 2.0

    def f(x):
        return tf.cond(tf.reduce_sum(x) > 0, lambda: double(x), lambda: x - 1.0)

    gd = graph_def_of(f)
    assert call_nodes(gd) == []  # the call sits in a branch
    out = graph_io.inline_function_calls(gd)
    assert out is gd  # nothing to inline at the top level
