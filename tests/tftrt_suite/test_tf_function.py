"""Port of TF-TRT's tf_function_test.py: the convertible ops sit in a nested tf.function that
the SavedModel marks ``_noinline`` (with TF-TRT's ``_tftrt_*`` conversion attributes); the
engine must still hold the function's nodes."""

import os

import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

from tests.tftrt_suite import base


@tf.function(input_signature=[tf.TensorSpec([None, 32, 32, 2], tf.float32)])
def conv_and_pool_0(inp):
    w = tf.constant([[[[1., 0.5, 4.], [1., 0.5, 1.]]]], name="weights")
    conv = tf.nn.conv2d(inp, w, strides=[1, 2, 2, 1], padding="SAME", name="conv")
    added = tf.nn.bias_add(conv, tf.constant([4., 1.5, 2.], name="bias"), name="bias_add")
    identity = tf.identity(tf.nn.relu(added, "relu"), "identity")
    pool = tf.nn.max_pool2d(identity, [1, 2, 2, 1], [1, 2, 2, 1], "VALID", name="max_pool")
    return tf.squeeze(pool)


def graph(x):
    return tf.identity(conv_and_pool_0(x), name="output_0")


TFTRT_ATTRS = {"_tftrt_convert_function": ("b", True), "_tftrt_precision_mode": ("s", b"FP32"),
               "_tftrt_minimum_segment_size": ("i", 2), "_tftrt_is_dyn_op": ("b", True),
               "_tftrt_max_cached_engines": ("i", 1)}


def mark_noinline(saved_dir):
    """TF-TRT's _MakeSavedModelV2: _noinline and the conversion attributes on the function."""
    path = os.path.join(saved_dir, "saved_model.pb")
    sm = saved_model_pb2.SavedModel()
    with open(path, "rb") as f:
        sm.ParseFromString(f.read())
    marked = 0
    for fdef in sm.meta_graphs[0].graph_def.library.function:
        if fdef.signature.name.startswith("__inference_conv_and_pool_0"):
            fdef.attr["_noinline"].b = True
            for key, (kind, value) in TFTRT_ATTRS.items():
                setattr(fdef.attr[key], kind, value)
            marked += 1
    assert marked == 1
    with open(path, "wb") as f:
        f.write(sm.SerializeToString(deterministic=True))


def check_engine(tmp_path_factory, name, noinline):
    case = base.Case(graph, [[10, 32, 32, 2]], output_shapes=[[10, 8, 8, 3]],
                     expected=["TRTEngineOp_000"], grappler=False)
    saved_dir = base.saved(tmp_path_factory, case, name)
    if noinline:
        mark_noinline(saved_dir)
    conv = base.run_v2(case, saved_dir)
    (nodes,) = base.engine_node_sets(conv).values()
    names = {n.rsplit("/", 1)[-1] for n in nodes}  # inside the nested call's name scope
    assert {"weights", "conv", "bias", "bias_add", "relu", "max_pool"} <= names, sorted(nodes)


def test_nested_function_inlined(tmp_path_factory):
    check_engine(tmp_path_factory, "inlined", noinline=False)


def test_noinline_function(tmp_path_factory):
    check_engine(tmp_path_factory, "noinline", noinline=True)
