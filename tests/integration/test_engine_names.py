"""Engine names never clash with the graph's own nodes (helper hunt, 2026-12-01): an output
named TRTEngineOp_000_000 (a model converted before, a careless name) gave a converted GraphDef
with two nodes of that name, which neither tftrt nor plain TF could import."""

import numpy as np
import pytest
import tensorflow as tf

import tftrt  # noqa: F401  (binds engine nodes on TF1 import_graph_def)
from tftrt import trt_convert as trt

W = np.random.RandomState(0).standard_normal((8, 16)).astype(np.float32)


def _graph(out_name, other_name):
    g = tf.Graph()
    with g.as_default():
        x = tf.compat.v1.placeholder(tf.float32, (None, 8), name="x")
        h = tf.nn.relu(tf.matmul(x, W) + 1.0)
        tf.identity(tf.strings.to_number(tf.strings.as_string(h)), name=other_name)
        y = tf.tanh(h * 2.0) * 3.0
        tf.identity(y, name=out_name)
    return g.as_graph_def()


@pytest.mark.parametrize("dynamic", [True, False])
def test_engine_names_skip_the_graphs_own_node_names(dynamic):
    gd = _graph("TRTEngineOp_000_000", "tftrt_engine_call_000_001")
    x = np.random.RandomState(1).standard_normal((2, 8)).astype(np.float32)
    fetch = ["TRTEngineOp_000_000:0", "tftrt_engine_call_000_001:0"]

    def run(graph):
        with tf.Graph().as_default() as g:
            tf.graph_util.import_graph_def(graph, name="")
            with tf.compat.v1.Session(graph=g) as sess:
                return sess.run(fetch, {"x:0": x})
    want = run(gd)
    conv = trt.TrtGraphConverter(input_graph_def=gd, nodes_denylist=[f[:-2] for f in fetch],
                                 max_batch_size=2, minimum_segment_size=1,
                                 is_dynamic_op=dynamic)
    cg = conv.convert()
    names = [n.name for n in cg.node]
    assert len(names) == len(set(names)), names
    engines = sorted(n.name for n in cg.node if n.op in ("PartitionedCall", "EagerPyFunc")
                     and n.name.startswith("TRTEngineOp_"))
    assert engines and "TRTEngineOp_000_000" not in engines
    assert "TRTEngineOp_000_001" not in engines  # its call node's name is taken
    for got, ref in zip(run(cg), want):
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


class _TwoEngines(tf.Module):
    def __init__(self):
        super().__init__()
        self.w = tf.Variable(np.random.RandomState(2).standard_normal((8, 64)).astype(
            np.float32))

    @tf.function(input_signature=[tf.TensorSpec([None, 8], tf.float32, name="x")])
    def __call__(self, x):
        h = tf.strings.to_number(tf.strings.as_string(tf.nn.relu(x @ self.w)))
        return {"y": tf.tanh(h * 2.0) * 3.0}


def test_converting_one_model_again_reuses_its_native_segment_functions(tmp_path):
    """The segment functions (weights included) are registered with the eager context for
    good; their names came from a digest that included TF's per-process trace counter, so
    each convert() of the same model added new copies (helper hunt, 2026-12-04: +4 MB per
    convert of a model with 4 MB of weights)."""
    import gc
    from tensorflow.python.eager import context
    m = _TwoEngines()
    tf.saved_model.save(m, str(tmp_path / "m"), signatures=m.__call__)

    def segment_functions():
        return {n for n in context.context().list_function_names() if "_native_segment_" in n}

    x = tf.constant(np.random.RandomState(3).standard_normal((2, 8)).astype(np.float32))
    counts = []
    for _ in range(3):
        conv = trt.TrtGraphConverterV2(input_saved_model_dir=str(tmp_path / "m"))
        fn = conv.convert()
        assert len(conv.engine_ops) == 2
        fn(x=x)
        del conv, fn
        gc.collect()
        counts.append(len(segment_functions()))
    assert counts[0] >= 2 and counts[0] == counts[1] == counts[2], counts
