"""The engine form's native fallbacks take the weights as captured tensors, not constants
(rewrite.lift_weights): a FunctionDef reachable from a function TensorFlow runs is copied into
what TF keeps for each executed trace, so with the weights as constants every trace of a user's
tf.function that called a converted signature kept a copy of the native segments' weights for
good (runtime hunt, 2026-12-04: +4 MB per trace of a 4 MB model). CPU; engines on the numpy
backend, or the native backend where every call takes the fallback."""

import gc
import os

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.eager import context

import tftrt
from tftrt import rewrite, trt_convert as trt
from tests.integration import models

WIDTH = 1024  # the second weight: 4 MB of float32


class Big(tf.Module):
    """Two GEMMs with large weights, a large int32 constant (gather indices) read twice, and
    a small weight that stays a constant."""

    def __init__(self):
        rng = np.random.RandomState(0)
        self.w1 = tf.Variable(rng.standard_normal((8, WIDTH)).astype(np.float32) * 0.3)
        self.w2 = tf.Variable(rng.standard_normal((WIDTH, WIDTH)).astype(np.float32) * 0.03)
        self.small = tf.Variable(rng.standard_normal((WIDTH,)).astype(np.float32))
        self.idx = tf.constant(rng.randint(0, WIDTH, 20000).astype(np.int32))  # 80 KB

    @tf.function(input_signature=[tf.TensorSpec([None, 8], tf.float32, name="x")])
    def __call__(self, x):
        h = tf.nn.relu(tf.matmul(x, self.w1) + self.small)
        y = tf.matmul(h, self.w2)
        g = tf.gather(y, self.idx, axis=1)
        return {"y": y, "g": g[:, :64] + tf.gather(h, self.idx, axis=1)[:, -64:]}


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    d = tmp_path_factory.mktemp("trace_weights")
    src = models.save_module(Big(), str(d / "src"))
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=src, minimum_segment_size=2)
    fn = conv.convert()
    conv.save(str(d / "out"))
    return src, fn, str(d / "out")


def _x(batch=3, seed=2):
    return tf.constant(np.random.RandomState(seed).standard_normal((batch, 8)).astype(
        np.float32))


def _native(src, x):
    return {k: v.numpy() for k, v in
            tf.saved_model.load(src).signatures["serving_default"](x=x).items()}


def _reachable_functions(graph_def):
    """FunctionDefs (of the graph's library or the eager context) that ``graph_def``'s nodes
    call, transitively: what a run of the graph instantiates."""
    ctx = context.context()
    library = {f.signature.name: f for f in graph_def.library.function}
    seen, todo = {}, list(rewrite.called_names(graph_def.node))
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen[name] = library[name] if name in library else ctx.get_function_def(name)
        todo.extend(rewrite.called_names(seen[name].node_def))
    return seen


def _large_consts(fdef):
    return [n.name for n in fdef.node_def if n.op == "Const" and
            len(n.attr["value"].tensor.tensor_content) >= rewrite.LIGHT_CONST_BYTES]


@pytest.mark.parametrize("source", ["convert", "load"])
def test_no_function_a_trace_reaches_holds_a_weight(big, source):
    src, fn, out = big
    sig = fn if source == "convert" else tftrt.load(out).signatures["serving_default"]
    graph_def = sig.graph.as_graph_def()
    weights = [n for n in graph_def.node if n.op == "Placeholder" and "/weight_" in n.name]
    # w1 (32 KB) stays a constant; w2 (4 MB) and the 80 KB indices become inputs
    assert len(weights) == 2, [n.name for n in weights]
    assert sorted(tf.as_dtype(n.attr["dtype"].type).name for n in weights) == \
        ["float32", "int32"]
    reached = _reachable_functions(graph_def)
    natives = [name for name in reached if "_native_segment_" in name and
               not name.endswith("_fallback")]
    assert natives and all(name.endswith("_w") for name in natives), sorted(reached)
    assert {name: _large_consts(f) for name, f in reached.items() if _large_consts(f)} == {}


@pytest.mark.parametrize("backend", ["numpy", "native"])
@pytest.mark.parametrize("source", ["convert", "load"])
def test_inside_a_tf_function_the_answers_are_native_tfs(big, source, backend, monkeypatch):
    # the native backend falls back on every call: the If's else-branch runs, reading the
    # weights through its arguments
    monkeypatch.setenv("TFTRT_BACKEND", backend)
    src, fn, out = big
    sig = fn if source == "convert" else tftrt.load(out).signatures["serving_default"]
    x = _x()
    want = _native(src, x)
    got = tf.function(lambda x: sig(x=x))(x)
    for k in want:
        np.testing.assert_allclose(got[k].numpy(), want[k], rtol=1e-5, atol=1e-5)


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.parametrize("backend", ["numpy", "native"])
def test_new_traces_keep_no_copy_of_the_weights(big, backend, monkeypatch):
    monkeypatch.setenv("TFTRT_BACKEND", backend)
    _, _, out = big
    sig = tftrt.load(out).signatures["serving_default"]
    x = _x()

    def one_trace():
        return tf.function(lambda x: sig(x=x)["y"])(x)
    for _ in range(5):
        one_trace()
    gc.collect()
    before = _rss_mb()
    for _ in range(40):
        one_trace()
    gc.collect()
    grown = _rss_mb() - before
    # with the weights as constants (2026-12-05): +69 MB over 25 traces with the numpy
    # backend, +387 MB with the native one (its fallbacks ran)
    assert grown < 40, f"RSS grew {grown:.0f} MB over 40 traces"
