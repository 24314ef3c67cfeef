"""More hostile uses of the TF1 converter, compared with native TensorFlow: denylisted nodes
without outputs (tf.group's NoOp, a PyFunc returning nothing) that TF1 code runs as Session
targets; calibrate() given tensors or operations as fetch_names, no fetch_names, or feed values
made with tf.constant."""

import numpy as np
import pytest
import tensorflow as tf

import tftrt  # noqa: F401  (activates engine binding in import_graph_def)
from tests.integration.test_hostile_tf1_int8 import _data, _int8_tf1, _table
from tests.integration.test_int8 import tf1_graph
from tests.integration.test_tf1 import engine_nodes
from tftrt import trt_convert as trt


@pytest.fixture(autouse=True)
def numpy_backend(monkeypatch):
    monkeypatch.setenv("TFTRT_BACKEND", "numpy")


def _run(graph_def, fetches, feed):
    g = tf.Graph()
    with g.as_default():
        tf.graph_util.import_graph_def(graph_def, name="")
    with tf.compat.v1.Session(graph=g) as sess:
        return sess.run(fetches, feed_dict=feed)


def _convert(graph_def, denylist, dynamic=True):
    return trt.TrtGraphConverter(input_graph_def=graph_def, nodes_denylist=denylist,
                                 minimum_segment_size=1, is_dynamic_op=dynamic,
                                 max_batch_size=2).convert()


# --- denylisted nodes without outputs ----------------------------------------------------------

def _grouped_graph():
    """x -> dense -> relu -> 'a' (h * 2) and 'b' (tanh(h) - 1), grouped by the NoOp 'grp'."""
    rng = np.random.RandomState(0)
    g = tf.Graph()
    with g.as_default():
        x = tf.compat.v1.placeholder(tf.float32, (None, 8), name="x")
        h = tf.nn.relu(tf.matmul(x, rng.randn(8, 8).astype(np.float32)) + 1.0)
        a = tf.identity(h * 2.0, name="a")
        b = tf.identity(tf.tanh(h) - 1.0, name="b")
        tf.group(a, b, name="grp")
    return g.as_graph_def()


@pytest.mark.parametrize("dynamic", [True, False])
@pytest.mark.parametrize("denylist", [["grp"], ["a", "b", "grp"]])
def test_denylisted_group_stays_and_runs(denylist, dynamic):
    gd = _grouped_graph()
    converted = _convert(gd, denylist, dynamic)
    names = {n.name for n in converted.node}
    assert set(denylist) <= names
    feed = {"x:0": np.random.RandomState(1).randn(2, 8).astype(np.float32)}
    assert _run(converted, "grp", feed) is None  # sess.run of a NoOp, as on the original
    fetches = [f"{n}:0" for n in denylist if n != "grp"] + ["grp"]
    got, want = _run(converted, fetches, feed), _run(gd, fetches, feed)
    for g, w in zip(got[:-1], want[:-1]):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
    if len(denylist) > 1:
        assert engine_nodes(converted)  # what a and b compute is still converted


def test_denylisted_output_less_py_funcs_run_as_on_the_original():
    """'side' is a PyFunc returning nothing; 'grp' groups 'side2', a PyFunc with an output:
    running either in a Session calls its Python function with what the original gave it."""
    seen = []

    def side(v):  # returns nothing: the PyFunc has no outputs
        seen.append(("side", np.array(v)))

    def side2(v):
        seen.append(("side2", np.array(v)))
        return v

    rng = np.random.RandomState(2)
    g = tf.Graph()  # kept alive: its py_funcs are registered while it lives
    with g.as_default():
        x = tf.compat.v1.placeholder(tf.float32, (None, 8), name="x")
        h = tf.nn.relu(tf.matmul(x, rng.randn(8, 8).astype(np.float32)) + 1.0)
        tf.compat.v1.py_func(side, [tf.tanh(h) + 1.0], [], name="side")
        out2 = tf.compat.v1.py_func(side2, [tf.sigmoid(h) * 3.0], tf.float32, name="side2")
        tf.group(out2, name="grp")
    gd = g.as_graph_def()
    feed = {"x:0": rng.randn(2, 8).astype(np.float32)}
    converted = _convert(gd, ["side", "grp"])
    assert engine_nodes(converted)
    for target in ("side", "grp"):
        seen.clear()
        _run(gd, target, feed)
        want = list(seen)
        seen.clear()
        _run(converted, target, feed)
        assert [n for n, _ in seen] == [n for n, _ in want] == [
            "side" if target == "side" else "side2"]
        np.testing.assert_allclose(seen[0][1], want[0][1], rtol=1e-5, atol=1e-5)


# --- calibrate()'s arguments -------------------------------------------------------------------

def _users_graph():
    g = tf.Graph()
    with g.as_default():
        tf.graph_util.import_graph_def(tf1_graph(), name="")
    return g


def test_calibrate_takes_tensors_and_operations_as_fetch_names():
    x = _data(3)
    feed = lambda: {"x:0": x}  # noqa: E731
    want = _table(_int8_tf1(is_dynamic_op=True).calibrate(["out:0"], 1, feed_dict_fn=feed))
    g = _users_graph()
    out = g.get_tensor_by_name("out:0")
    for fetch_names in ([out], [out.op], out, ("out:0", out.op)):
        got = _table(_int8_tf1(is_dynamic_op=True).calibrate(fetch_names, 1, feed_dict_fn=feed))
        assert got["tensors"] == pytest.approx(want["tensors"])
    other = tf.Graph()
    with other.as_default():
        missing = tf.constant(1.0, name="not_there")
    with pytest.raises(ValueError, match=r"fetch_names: 'not_there:0' is not in the graph: .*"
                                         r"The operation, 'not_there', does not exist"):
        _int8_tf1(is_dynamic_op=True).calibrate([missing], 1, feed_dict_fn=feed)


@pytest.mark.parametrize("fetch_names, said", [
    (["out:5"], r"'out:5' is not in the graph: .*'out', exists but only has 1 outputs"),
    (["out:0", "out:abc"], r"'out:abc' is not in the graph: .*not a valid one"),
    ([], r"fetch_names is empty: name the graph's outputs")])
def test_calibrate_refuses_fetch_names_a_session_would_refuse(fetch_names, said):
    """An output index the node lacks, a malformed name, or nothing to fetch: TF-TRT ran
    sess.run(fetch_names), which raised for each; they passed here before 2026-12-04 (only
    the node of each name was checked)."""
    conv = _int8_tf1(is_dynamic_op=True)
    with pytest.raises(ValueError, match=said):
        conv.calibrate(fetch_names, 1, feed_dict_fn=lambda: {"x:0": _data(4)})
    assert _table(conv.calibrate(["out:0"], 1, feed_dict_fn=lambda: {"x:0": _data(4)}))


@pytest.mark.parametrize("fetch_names, shown", [
    (None, "None"), (3, "3"), ([b"out:0"], "b'out:0'"), (["out:0", 7], "7")])
def test_calibrate_says_what_fetch_names_must_be(fetch_names, shown):
    conv = _int8_tf1(is_dynamic_op=True)
    with pytest.raises(TypeError, match=r"fetch_names must be a list of the names \(e\.g\. "
                                        r"\['out:0'\]\) or the tf\.Tensor / tf\.Operation "
                                        r"objects of the graph's outputs.*" + shown):
        conv.calibrate(fetch_names, 1, feed_dict_fn=lambda: {"x:0": _data(4)})
    # the converter still calibrates with good arguments
    assert _table(conv.calibrate(["out:0"], 1, feed_dict_fn=lambda: {"x:0": _data(4)}))


def test_calibrate_says_eager_tensors_cannot_be_fetch_names():
    conv = _int8_tf1(is_dynamic_op=True)
    with pytest.raises(TypeError, match=r"fetch_names\[0\] is an eager tensor"):
        conv.calibrate([tf.constant(1.0)], 1, feed_dict_fn=lambda: {"x:0": _data(4)})
    with pytest.raises(TypeError, match=r"fetch_names must be a list .*; got <tf.Tensor"):
        conv.calibrate(tf.constant(["out:0"]), 1, feed_dict_fn=lambda: {"x:0": _data(4)})


def test_calibrate_feeds_eager_tensors_as_their_values():
    x = _data(5)
    by_numpy = _table(_int8_tf1(is_dynamic_op=True).calibrate(
        ["out:0"], 1, feed_dict_fn=lambda: {"x:0": x}))
    by_constant = _table(_int8_tf1(is_dynamic_op=True).calibrate(
        ["out:0"], 2, feed_dict_fn=lambda: {"x:0": tf.constant(x)}))
    assert by_constant["tensors"] == pytest.approx(by_numpy["tensors"])


def test_calibrate_names_the_feed_whose_value_is_a_graph_tensor():
    g = _users_graph()
    conv = _int8_tf1(is_dynamic_op=True)
    with pytest.raises(ValueError, match=r"calibrate\(\): run 0: feed_dict_fn's value for "
                                         r"'x:0' is the tensor 'out:0' of a graph, which has "
                                         r"no value outside a Session"):
        conv.calibrate(["out:0"], 1,
                       feed_dict_fn=lambda: {"x:0": g.get_tensor_by_name("out:0")})
