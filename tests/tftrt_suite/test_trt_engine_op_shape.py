"""Port of TF-TRT's trt_engine_op_shape_test.py: the saved converted signature keeps the
inputs' and outputs' dtypes and (partly unknown) shapes."""

import tensorflow as tf

from tests.tftrt_suite import base


def squeeze_relu_sum(inp):
    c = tf.nn.relu(tf.squeeze(inp, axis=[2]))
    d1 = c + c
    d2 = tf.reduce_sum(d1)
    return tf.identity(d1, name="output_0"), tf.identity(d2, name="output_1")


def test_engine_op_input_output_shapes(tmp_path_factory):
    case = base.Case(squeeze_relu_sum, [[1, 2, 1, 4]], ["TRTEngineOp_000"],
                     output_shapes=[[1, 2, 4], []])
    conv = base.run_v2(case, base.saved(tmp_path_factory, case, "engine_op_shape"))
    out_dir = str(tmp_path_factory.mktemp("tftrt_suite") / "converted")
    conv.save(out_dir)
    func = tf.saved_model.load(out_dir).signatures["serving_default"]
    (spec,) = func.structured_input_signature[1].values()
    assert spec.dtype == tf.float32 and spec.shape.as_list() == [None, 2, 1, 4]
    outs = func.structured_outputs
    assert [outs[k].dtype for k in sorted(outs)] == [tf.float32, tf.float32]
    assert [outs[k].shape.as_list() for k in sorted(outs)] == [[None, 2, 4], []]
