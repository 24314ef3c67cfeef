"""Small seeded models saved as SavedModels for the integration tests."""

from __future__ import annotations

import numpy as np
import tensorflow as tf


class MLP(tf.Module):
    """x -> matmul+bias+relu -> [string round trip: not convertible] -> mul/add/tanh -> {y, z}.

    The string ops split the graph so conversion gives two engines with a native op between.
    """

    def __init__(self, seed: int = 0):
        rng = np.random.RandomState(seed)
        self.w = tf.Variable(rng.randn(8, 16).astype(np.float32))
        self.b = tf.Variable(rng.randn(16).astype(np.float32))

    @tf.function(input_signature=[tf.TensorSpec([None, 8], tf.float32, name="x")])
    def __call__(self, x):
        h = tf.nn.relu(tf.nn.bias_add(tf.matmul(x, self.w), self.b))
        h = tf.strings.to_number(tf.strings.as_string(h, precision=9))
        return {"y": tf.tanh(h * 0.5 + 1.0), "z": h}


class TwoInputs(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="a"),
                                  tf.TensorSpec([None, 4], tf.float32, name="b")])
    def __call__(self, a, b):
        return {"out": tf.nn.relu(a * 2.0 + b) - tf.tanh(b)}


class Positions(tf.Module):
    """Positions of a sequence of dynamic length: tf.range(tf.shape(x)[1]) read through a
    learned table and a sinusoid ([batch, length, 4] in and out)."""

    def __init__(self, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.table = tf.Variable(rng.standard_normal((16, 4)).astype(np.float32))

    @tf.function(input_signature=[tf.TensorSpec([None, None, 4], tf.float32, name="x")])
    def __call__(self, x):
        pos = tf.range(tf.shape(x)[1])
        angle = tf.cast(pos, tf.float32)[:, None] * 0.1
        return {"y": tf.nn.relu(x + tf.gather(self.table, pos)[None] + tf.sin(angle))}


def convert_positions(tmp_path, rng, lengths=(3, 7)):
    """Positions converted with one profile over ``lengths``: (converted function, native
    signature, its one engine op)."""
    from tftrt import trt_convert as trt
    src = save_module(Positions(), str(tmp_path / "positions"))
    native = tf.saved_model.load(src).signatures["serving_default"]
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=src, use_dynamic_shape=True,
                                   minimum_segment_size=1)
    fn = conv.convert()
    conv.build(lambda: iter([(rng.standard_normal((2, n, 4)).astype(np.float32),)
                             for n in lengths]))
    op, = conv.engine_ops.values()
    return fn, native, op


def save_module(module, path: str) -> str:
    tf.saved_model.save(module, path, signatures=module.__call__)
    return path


def save_keras(model, path: str) -> str:
    model.export(path, verbose=False)
    return path


def batch(shape, seed: int = 1, dtype=np.float32):
    return np.random.RandomState(seed).standard_normal(shape).astype(dtype)


def session_run(gd, x, import_graph_def=None, fetch: str = "out:0", feed: str = "x:0"):
    """TF1: imports ``gd`` into a new graph and runs ``fetch`` with ``x`` fed to ``feed``;
    returns (value, graph)."""
    g = tf.Graph()
    with g.as_default():
        (import_graph_def or tf.graph_util.import_graph_def)(gd, name="")
        with tf.compat.v1.Session(graph=g) as sess:
            return sess.run(fetch, feed_dict={feed: x}), g


def assert_matches_native(path: str, fn, x, tolerance=None) -> None:
    """``fn`` on input ``x`` against the SavedModel at ``path``'s serving signature (both
    called with keyword ``x``): the same output names, every value within ``tolerance``
    ((rtol, atol); default MODEL_TOLERANCES["FP32"])."""
    from tests.tolerances import MODEL_TOLERANCES
    want = tf.saved_model.load(path).signatures["serving_default"](x=tf.constant(x))
    got = fn(x=tf.constant(x))
    rtol, atol = tolerance or MODEL_TOLERANCES["FP32"]
    assert sorted(got) == sorted(want)
    for k in want:
        np.testing.assert_allclose(got[k].numpy(), want[k].numpy(), rtol=rtol, atol=atol,
                                   err_msg=k)


def one_engine_layer_kinds(path: str, x) -> list:
    """Converts the SavedModel at ``path`` (FP32, default parameters), checks it is one engine
    that ran and matches native TF on ``x``; returns the engine's layer kinds."""
    from tftrt import trt_convert as trt
    from tests.tolerances import MODEL_TOLERANCES
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=path)
    fn = conv.convert()
    arg = {next(iter(fn.structured_input_signature[1])): tf.constant(x)}
    ref = tf.saved_model.load(path).signatures["serving_default"](**arg)
    got = fn(**arg)
    rtol, atol = MODEL_TOLERANCES["FP32"]
    for k in ref:
        np.testing.assert_allclose(got[k].numpy(), ref[k].numpy(), rtol=rtol, atol=atol)
    ops = conv.engine_ops
    assert len(ops) == 1, sorted(ops)
    op = next(iter(ops.values()))
    assert op.stats["engine"] == 1 and op.stats["native"] == 0
    return [l.kind for _, e in op.cache.items() for l in e.network.layers]
