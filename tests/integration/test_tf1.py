"""TF1 API: TrtGraphConverter on frozen GraphDefs, static and dynamic mode, Session runs."""

import logging

import numpy as np
import pytest
import tensorflow as tf

import tftrt  # noqa: F401  (activates engine binding in import_graph_def)
from tftrt import rewrite, trt_convert as trt
from tftrt.activation import PLANS_ATTR
from tests.integration.models import session_run


def frozen_graph(shape=(None, 8)):
    """x -> matmul/bias/relu -> string round trip (native) -> mul/add/tanh -> 'out'."""
    rng = np.random.RandomState(0)
    g = tf.Graph()
    with g.as_default():
        x = tf.compat.v1.placeholder(tf.float32, shape, name="x")
        h = tf.nn.relu(tf.nn.bias_add(tf.matmul(x, tf.constant(rng.randn(8, 16).astype(
            np.float32))), tf.constant(rng.randn(16).astype(np.float32))))
        h = tf.strings.to_number(tf.strings.as_string(h, precision=9))
        y = tf.tanh(h * 0.5 + 1.0, name="pre_out")
        tf.identity(y * 2.0, name="out")
    return g.as_graph_def()


def engine_nodes(graph_def):
    return [n for n in graph_def.node if rewrite.ENGINE_ATTR in n.attr]


def bound_engine_ops(g):
    """The TRTEngineOp objects import_graph_def bound into ``g`` (kept alive with the graph)."""
    from tftrt.engine_op import TRTEngineOp
    return [o for o in getattr(g, "_py_funcs_used_in_graph", []) if isinstance(o, TRTEngineOp)]


@pytest.mark.parametrize("dynamic", [True, False])
def test_frozen_graph_converts_and_runs_in_session(dynamic):
    gd = frozen_graph()
    conv = trt.TrtGraphConverter(input_graph_def=gd, nodes_denylist=["out"], max_batch_size=4,
                                 minimum_segment_size=2, is_dynamic_op=dynamic)
    converted = conv.convert()
    assert isinstance(converted, type(gd))
    nodes = engine_nodes(converted)
    assert [n.name for n in nodes] == ["TRTEngineOp_000_000", "TRTEngineOp_000_001"]
    assert "out" in {n.name for n in converted.node}  # the denylisted node stays native
    static_plans = [len(n.attr[PLANS_ATTR].list.s) for n in nodes]
    assert static_plans == ([0, 0] if dynamic else [2, 2])  # (meta, plan) per built engine

    x = np.random.RandomState(1).randn(3, 8).astype(np.float32)
    ref, _ = session_run(gd, x)
    got, g = session_run(converted, x)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
    ops = bound_engine_ops(g)
    assert len(ops) == 2
    assert [(op.stats["engine"], op.stats["native"]) for op in ops] == [(1, 0), (1, 0)]
    ops = {op.name: op.type for op in g.get_operations()}
    # engines are active after import tftrt: the engine call, then the node named as the
    # engine that picks its outputs or the native segment's
    assert ops["tftrt_engine_call_000_000"] == "EagerPyFunc"
    assert ops["TRTEngineOp_000_000"] == "If"


def test_nodes_denylist_nodes_are_never_in_an_engine():
    gd = frozen_graph()
    conv = trt.TrtGraphConverter(input_graph_def=gd, nodes_blacklist=["out", "pre_out"],
                                 minimum_segment_size=1, is_dynamic_op=True)
    conv.convert()
    members = {n for op in conv._result.engine_ops.values() for n in op.spec.member_nodes}
    assert "pre_out" not in members and "out" not in members
    assert conv._result.segmentation.rejected["pre_out"] == "in nodes_denylist"


def test_static_mode_warns_when_shapes_are_not_fully_defined(caplog):
    gd = frozen_graph(shape=(None, None))
    conv = trt.TrtGraphConverter(input_graph_def=gd, nodes_denylist=["out"],
                                 minimum_segment_size=2, is_dynamic_op=False)
    with caplog.at_level(logging.WARNING, logger="tftrt.convert"):
        conv.convert()
    assert "Input shapes must be fully defined when in static mode. Please try " \
           "is_dynamic_op=True." in caplog.text


def test_batch_larger_than_max_batch_size_runs_natively():
    gd = frozen_graph()
    converted = trt.TrtGraphConverter(input_graph_def=gd, nodes_denylist=["out"],
                                      max_batch_size=2, minimum_segment_size=2).convert()
    x = np.random.RandomState(3).randn(5, 8).astype(np.float32)
    got, g = session_run(converted, x)
    np.testing.assert_allclose(got, session_run(gd, x)[0], rtol=1e-4, atol=1e-5)
    assert [(op.stats["engine"], op.stats["native"]) for op in bound_engine_ops(g)] == \
        [(0, 1), (0, 1)]


def test_tf1_errors(tmp_path):
    gd = frozen_graph()
    with pytest.raises(ValueError, match="Can only specify one of"):
        trt.TrtGraphConverter(input_graph_def=gd, input_saved_model_dir=str(tmp_path))
    with pytest.raises(ValueError, match="Must specify one of"):
        trt.TrtGraphConverter()
    conv = trt.TrtGraphConverter(input_graph_def=gd, nodes_denylist=["out"],
                                 precision_mode="INT8", is_dynamic_op=True)
    conv.convert()
    with pytest.raises(ValueError, match="one and only one of feed_dict_fn and input_map_fn"):
        conv.calibrate(["out:0"], 1)
    with pytest.raises(ValueError, match="Not able to save to a SavedModel since input is a "
                                         "GraphDef"):
        conv.save(str(tmp_path / "o"))


def test_calibrate_runs_the_graph():
    gd = frozen_graph()
    conv = trt.TrtGraphConverter(input_graph_def=gd, nodes_denylist=["out"],
                                 precision_mode="INT8", is_dynamic_op=True,
                                 minimum_segment_size=2)
    conv.convert()
    x = np.random.RandomState(4).randn(2, 8).astype(np.float32)
    out = conv.calibrate(["out:0"], num_runs=2, feed_dict_fn=lambda: {"x:0": x})
    assert engine_nodes(out)
