"""Port of TF-TRT's shape_output_test.py: an engine whose only output is a shape (its input's
values unused, its binding shape still set), then an engine on that 1-D shape value."""

import tensorflow as tf

from tests.tftrt_suite import base


def shape_output(x):
    q = tf.shape(2 * x + 1)
    q = base.incompatible(tf.cast(q, tf.float32))
    return tf.identity(q * 2 + q * q, name="output_0")


def test_shape_output(tmp_path_factory):
    case = base.Case(shape_output, [[2, 2, 5, 3]], ["TRTEngineOp_000", "TRTEngineOp_001"],
                     output_shapes=[[4]], extra_inputs=[[[8, 2, 5, 3]]],
                     extra_outputs=[[[4]]], grappler=False)
    conv = base.run_v2(case, base.saved(tmp_path_factory, case, "shape_output"))
    # the shape engine built for both batches; the second engine's input is [4] both times
    assert sorted(op.stats["builds"] for op in conv.engine_ops.values()) == [1, 2]


def test_shape_output_dynamic_shape(tmp_path_factory):
    """TF-TRT's dynamic-shape expectation: two engines (the shape engine and the one on the
    1-D shape value), each one engine with profiles, serving both batches after load."""
    case = base.Case(shape_output, [[2, 2, 5, 3]], ["TRTEngineOp_000", "TRTEngineOp_001"],
                     output_shapes=[[4]], extra_inputs=[[[8, 2, 5, 3]]],
                     extra_outputs=[[[4]]], grappler=False)
    base.run_v2_dynamic(case, base.saved(tmp_path_factory, case, "shape_output_dyn"),
                        str(tmp_path_factory.mktemp("tftrt_suite") / "shape_output_dyn_out"),
                        profiles={"TRTEngineOp_000": 2, "TRTEngineOp_001": 1})
