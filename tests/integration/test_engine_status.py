"""The engine node's status in the engine-form graph (tftrt.rewrite.STATUS_DTYPE): an empty
float32 tensor whose rank says whether the engine ran, read through Rank so that the If's
predicate is made on the host. Both values are exercised: a call the engine serves, and an
empty batch, which always runs the native segment."""

import numpy as np
import pytest
import tensorflow as tf

from tftrt import rewrite, trt_convert as trt
from tests.integration import models


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    src = models.save_module(models.MLP(), str(tmp_path_factory.mktemp("status") / "mlp"))
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=src, precision_mode="FP32")
    fn = conv.convert()
    return conv, getattr(fn, "native", fn), tf.saved_model.load(src).signatures[
        "serving_default"]


def test_each_select_node_reads_its_engine_status_by_rank(converted):
    conv, fn, _ = converted
    nodes = {n.name: n for n in fn.graph.as_graph_def().node}
    assert len(conv.engine_ops) == 2
    for name in conv.engine_ops:
        call = rewrite.engine_call_name(name)
        sel = nodes[name]
        assert sel.op == "If" and sel.input[0] == f"{call}/ran", sel
        assert nodes[call].op == "EagerPyFunc"
        assert tf.as_dtype(nodes[call].attr["Tout"].list.type[0]) == tf.float32
        assert nodes[f"{call}/ran"].op == "Equal"
        assert list(nodes[f"{call}/ran"].input) == [f"{call}/status_rank", f"{call}/one"]
        assert nodes[f"{call}/status_rank"].op == "Rank"
        assert list(nodes[f"{call}/status_rank"].input) in ([call], [f"{call}:0"])
        # the engine's outputs, not the status, feed the then-branch
        assert sel.input[1] == f"{call}:1"


def test_engine_and_native_paths_both_answer_through_the_status(converted):
    conv, fn, native = converted
    before = {k: dict(op.stats) for k, op in conv.engine_ops.items()}
    x = models.batch((5, 8))
    got, want = fn(x=tf.constant(x)), native(x=tf.constant(x))
    for k in ("y", "z"):
        np.testing.assert_allclose(got[k].numpy(), want[k].numpy(), rtol=1e-5, atol=1e-5)
    after = {k: dict(op.stats) for k, op in conv.engine_ops.items()}
    for k in conv.engine_ops:
        assert after[k]["engine"] == before[k].get("engine", 0) + 1, (before[k], after[k])
        assert after[k].get("native", 0) == before[k].get("native", 0)
    # an empty batch runs every segment natively: the other status value
    empty = fn(x=tf.zeros((0, 8)))
    assert empty["y"].shape == (0, 16) and empty["z"].shape == (0, 16)
    final = {k: dict(op.stats) for k, op in conv.engine_ops.items()}
    for k in conv.engine_ops:
        assert final[k].get("native", 0) == after[k].get("native", 0) + 1, (after[k], final[k])
        assert final[k]["engine"] == after[k]["engine"]


def test_the_ran_status_is_one_tensor_on_the_engine_nodes_device(converted):
    """The callback hands TF the same status tensor on every call, already on the device of
    the node's float inputs (a numpy status was made into a tensor and copied to the node's
    device by TF's EagerFunc each call); it still reads as 'ran' (rank 1, empty)."""
    from tftrt import conversion
    conv, _, _ = converted
    op = next(iter(conv.engine_ops.values()))
    cb = conversion.EngineCallback(op)
    x = tf.constant(models.batch((3, op.spec.input_shapes[0][-1])))
    first, second = cb(x), cb(x)
    status = first[0]
    assert isinstance(status, tf.Tensor) and status is second[0]
    assert status.backing_device == x.backing_device
    assert status.dtype == tf.as_dtype(rewrite.STATUS_DTYPE) and status.shape.rank == 1
    assert status.shape.num_elements() == 0
    np.testing.assert_array_equal(first[1], second[1])
    # no float input: numpy, which EagerFunc converts itself
    assert cb._status_ran([tf.constant([1, 2])]) is rewrite.STATUS_RAN
