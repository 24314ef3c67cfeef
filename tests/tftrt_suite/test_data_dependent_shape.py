"""Port of TF-TRT's data_dependent_shape_test.py: Unique (native) gives a tensor whose length
depends on the data; the engines around it see a new shape whenever that length changes."""

import tensorflow as tf

from tests.tftrt_suite import base


def unique_pad(x):
    x = tf.floor(x * 10)
    y, _ = tf.unique(x)
    y = y * 2 + y
    n = tf.shape(x) - tf.shape(y)
    padding = tf.expand_dims(tf.concat([tf.constant([0]), n], 0), 0)
    return tf.identity(tf.pad(y, padding), name="output_0")


def test_data_dependent_shape(tmp_path_factory):
    # TF-TRT ran this only with INT8 calibration; the engines here are FP32 (none is needed:
    # an engine is built for every length Unique gives).
    case = base.Case(unique_pad, [[12]], ["TRTEngineOp_000", "TRTEngineOp_001"],
                     output_shapes=[[12]], extra_inputs=[[[12]], [[30]]],
                     extra_outputs=[[[12]], [[30]]])
    base.run_v2(case, base.saved(tmp_path_factory, case, "data_dependent_shape"))
