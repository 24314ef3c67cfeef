"""Variable writes the outputs read, and side effects kept only by a control edge onto a
variable read (helper hunt, 2026-12-07). Freezing makes variables constants, so a signature
whose outputs read a variable it writes cannot be converted: it must be refused with the
reason, never converted to answer with the saved value. Each model here was converted before
the fix and answered 1, 1, 1 (or the saved maximum) where native TF answered 2, 3, 4.

- a write inside a cond (autograph ``if``, ``tf.cond``, ``tf.switch_case``) reached its
  variable through the cond's Switch, which ``graph_io.drop_unread_writes`` did not follow:
  the write was dropped as unread;
- in a TF1 SavedModel, freezing turned a ReadVariableOp into an Identity and dropped its
  control inputs, and with them the write (a counter) or the py_func hook that only that edge
  kept;
- a write inside a while loop, and a TF1 reference variable's ``AssignAdd``, reached the user
  as TensorFlow's raw type error."""

import numpy as np
import pytest
import tensorflow as tf

from tftrt import trt_convert as trt

W = np.eye(4, dtype=np.float32)
X = np.full([2, 4], 8.0, np.float32)
REFUSED = "the signature writes variables"


def _module(kind):
    class M(tf.Module):
        def __init__(self):
            self.v = tf.Variable(1.0)
            self.w = tf.Variable(W)

        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32)])
        def f(self, x):
            m = tf.reduce_max(x)
            if kind == "if":           # a running maximum
                if m > self.v:
                    self.v.assign(m)
            elif kind == "cond":
                tf.cond(m > 0, lambda: self.v.assign_add(1.0), lambda: self.v.assign_add(0.0))
            elif kind == "switch_case":
                tf.switch_case(tf.cast(m > 0, tf.int32),
                               [lambda: tf.constant(0.0), lambda: self.v.assign_add(1.0)])
            elif kind == "while":
                for _ in tf.range(2):
                    self.v.assign_add(1.0)
            return {"y": tf.nn.relu(tf.matmul(x / self.v, self.w))}
    return M()


@pytest.mark.parametrize("kind", ["if", "cond", "switch_case", "while"])
def test_a_written_variable_the_output_reads_is_refused(tmp_path, kind):
    src = str(tmp_path / "m")
    tf.saved_model.save(_module(kind), src)
    native = tf.saved_model.load(src).signatures["serving_default"]
    first, second = (float(native(x=X)["y"][0, 0]) for _ in range(2))
    assert first != 8.0 or second != 8.0, "native must see its write: a weak model"
    c = trt.TrtGraphConverterV2(input_saved_model_dir=src, precision_mode="FP32")
    with pytest.raises(ValueError, match=REFUSED) as e:
        c.convert()
    assert "AssignVariableOp" in str(e.value) or "AssignAddVariableOp" in str(e.value)


def test_a_write_in_a_cond_no_output_reads_still_goes(tmp_path, caplog):
    """The Switch-following trace still drops a write whose variable nothing reads (a seed
    update), and the answers are native's."""
    class M(tf.Module):
        def __init__(self):
            self.seed = tf.Variable(1.0)
            self.w = tf.Variable(W)

        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32)])
        def f(self, x):
            if tf.reduce_max(x) > 0:
                self.seed.assign_add(1.0)
            return {"y": tf.nn.relu(tf.matmul(x, self.w))}
    src = str(tmp_path / "m")
    tf.saved_model.save(M(), src)
    want = tf.saved_model.load(src).signatures["serving_default"](x=X)["y"].numpy()
    c = trt.TrtGraphConverterV2(input_saved_model_dir=src, precision_mode="FP32")
    with caplog.at_level("WARNING"):
        fn = c.convert()
    assert "writes 1 variable(s) no output reads" in caplog.text
    np.testing.assert_allclose(np.asarray(fn(tf.constant(X))["y"]), want, rtol=1e-6)


def _tf1_saved_model(path, what, use_resource=True):
    """A TF1 SavedModel whose output waits, through a control edge on a variable read, on a
    counter's increment ("counter") or on a py_func hook ("hook", which appends to the list
    returned, with the graph that must stay alive for its callback)."""
    calls = []
    g = tf.Graph()
    with g.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 4], name="x")
        v = tf.compat.v1.get_variable("v", initializer=1.0, use_resource=use_resource)
        w = tf.compat.v1.get_variable("w", initializer=W, use_resource=use_resource)
        h = tf.nn.relu(tf.matmul(x, w))
        if what == "counter":
            inc = tf.compat.v1.assign_add(v, 1.0)
            with tf.control_dependencies([inc]):
                vv = v.read_value() if use_resource else tf.identity(inc)
        else:
            hook = tf.compat.v1.py_func(lambda a: calls.append(1) or a, [h], tf.float32)
            with tf.control_dependencies([hook]):
                vv = v.read_value()
        y = tf.identity(tf.nn.relu(tf.matmul(h * vv, w)), name="y")
        with tf.compat.v1.Session(graph=g) as s:
            s.run(tf.compat.v1.global_variables_initializer())
            b = tf.compat.v1.saved_model.Builder(path)
            sig = tf.compat.v1.saved_model.predict_signature_def({"x": x}, {"y": y})
            b.add_meta_graph_and_variables(s, ["serve"],
                                           signature_def_map={"serving_default": sig})
            b.save()
    return calls, g


@pytest.mark.parametrize("api", ["v2", "v1"])
@pytest.mark.parametrize("use_resource", [True, False])
def test_a_tf1_counter_the_output_waits_on_is_refused(tmp_path, api, use_resource):
    src = str(tmp_path / "counter")
    _tf1_saved_model(src, "counter", use_resource)
    native = tf.saved_model.load(src).signatures["serving_default"]
    got = [float(native(x=np.ones([2, 4], np.float32))["y"][0, 0]) for _ in range(3)]
    assert got == [2.0, 3.0, 4.0]
    c = trt.TrtGraphConverterV2(input_saved_model_dir=src, precision_mode="FP32") \
        if api == "v2" else trt.TrtGraphConverter(input_saved_model_dir=src)
    with pytest.raises(ValueError, match=REFUSED) as e:
        c.convert()
    assert ("AssignAddVariableOp" if use_resource else "'AssignAdd'") in str(e.value)


def test_a_tf1_hook_kept_by_a_control_edge_on_a_read_still_runs(tmp_path):
    src = str(tmp_path / "hook")
    calls, graph = _tf1_saved_model(src, "hook")  # (the hook's callback lives with graph)
    x = np.ones([2, 4], np.float32)
    native = tf.saved_model.load(src).signatures["serving_default"]
    calls.clear()
    want = native(x=x)["y"].numpy()
    assert len(calls) == 1
    fn = trt.TrtGraphConverterV2(input_saved_model_dir=src, precision_mode="FP32").convert()
    calls.clear()
    got = [np.asarray(fn(tf.constant(x))["y"]) for _ in range(2)]
    assert len(calls) == 2, "the hook must run once a call"
    np.testing.assert_allclose(got[0], want, rtol=1e-6)
