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
