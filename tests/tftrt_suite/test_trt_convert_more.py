"""Port of the trt_convert_test.py test methods (TF-TRT, TF 2.21) that test_trt_convert.py does
not cover, or covers only in part:

  * testTrtGraphConverter_OfflineConversion with a device assigned ("GPU", "CPU");
  * testTrtGraphConverter_OnlineConversion (a Grappler rewriter config in a TF1 Session);
  * testVariableV2 / testReadVariableOp (their testdata models, generated here with TF-TRT's
    gen_tf_variablev2_model.py / gen_tf_readvariableop_model.py);
  * testTrtGraphConverter_Int8Conversion_v2's checks on the calibration data, the saved engine
    and the engine built after loading for a new batch size;
  * the SavedModel halves of testTrtGraphConverter_StaticOp / _DynamicOp.

Not ported (TensorRT-only, docs/differences.md "trt_convert (TensorRT-only)"):
testTRTEngineInstanceAvailable, testTrtGraphConverter_DestroyEngineCache, testBackwardCompatibility
(a TF-TRT 2.0 SavedModel of TRTEngineOp nodes), testTrtGraphConverter_DevicePlacement /
_DevicePlacementOnCPU (GPU placement of TRTEngineOp)."""

import contextlib
import os
import re

import numpy as np
import onnx
import pytest
import tensorflow as tf

import tftrt
from tests.tftrt_suite.test_trt_convert import (KEY, SimpleModel, converter_v2, engine_files,
                                                engine_names, expected, node_ops, random_input,
                                                simple_graph, without_sequence_number)
from tftrt import activation, rewrite, trt_convert as trt
from tftrt.engine import quantization

SOFT = tf.compat.v1.ConfigProto(allow_soft_placement=True)  # no GPU on this machine


# --- testTrtGraphConverter_OfflineConversion (device) -----------------------------------------

def tf1_graph(device):
    """TF-TRT's _GetGraphForV1(device)."""
    g = tf.Graph()
    with g.as_default(), (g.device(device) if device else contextlib.nullcontext()):
        inp1 = tf.compat.v1.placeholder(tf.float32, [None, 1, 1], name="input1")
        inp2 = tf.compat.v1.placeholder(tf.float32, [None, 1, 1], name="input2")
        var = tf.compat.v1.Variable([[[1.0]]], name="v1")
        out = simple_graph(inp1, inp2, var)
    return g, var, inp1, inp2, out


def tf1_frozen_graph_def(device):
    g, var, _, _, _ = tf1_graph(device)
    with tf.compat.v1.Session(graph=g, config=SOFT) as sess:
        sess.run(var.initializer)
        gd = tf.compat.v1.graph_util.convert_variables_to_constants(
            sess, g.as_graph_def(add_shapes=True), ["output"])
    assert {n.name: n.op for n in gd.node} == {
        "v1": "Const", "add/ReadVariableOp": "Identity", "input1": "Placeholder",
        "input2": "Placeholder", "add": "AddV2", "mul": "Mul", "add_1": "AddV2",
        "add_2": "AddV2", "output": "Identity"}
    return gd


def write_tf1_saved_model(path, device):
    g, var, inp1, inp2, out = tf1_graph(device)
    info = tf.compat.v1.saved_model.utils.build_tensor_info
    with g.as_default():
        sig = tf.compat.v1.saved_model.signature_def_utils.build_signature_def(
            inputs={"myinput1": info(inp1), "myinput2": info(inp2)},
            outputs={"myoutput": info(out)}, method_name="tensorflow/serving/predict")
        builder = tf.compat.v1.saved_model.Builder(path)
        with tf.compat.v1.Session(graph=g, config=SOFT) as sess:
            sess.run(var.initializer)
            builder.add_meta_graph_and_variables(sess, ["serve"], signature_def_map={KEY: sig})
    builder.save()


def convert_v1(device, saved_dir=None, need_calibration=False):
    """TF-TRT's _ConvertGraphV1 (max_batch_size 1, minimum_segment_size 3, static engines
    unless calibrating)."""
    conv = trt.TrtGraphConverter(
        input_saved_model_dir=saved_dir, input_saved_model_signature_key=KEY,
        input_graph_def=None if saved_dir else tf1_frozen_graph_def(device),
        nodes_denylist=None if saved_dir else ["output"],
        max_batch_size=None if need_calibration else 1,
        max_workspace_size_bytes=trt.DEFAULT_TRT_MAX_WORKSPACE_SIZE_BYTES,
        precision_mode="INT8" if need_calibration else "FP32", minimum_segment_size=3,
        is_dynamic_op=need_calibration, maximum_cached_engines=1)
    gd = conv.convert()
    if need_calibration:
        data = iter(range(1, 100))

        def feed():
            d = next(data)
            return {"input1:0": [[[d]]], "input2:0": [[[d]]]}
        gd = conv.calibrate(fetch_names=["output:0"], num_runs=10, feed_dict_fn=feed)
    return gd


def engine_nodes(gd):
    return [n for n in gd.node if rewrite.ENGINE_ATTR in n.attr]


@pytest.mark.parametrize("device", ["/GPU:0", "/CPU:0"])
def test_offline_conversion_with_device(device, tmp_path):
    """TF-TRT left a graph pinned to /CPU:0 unconverted; tftrt clears device assignments
    before segmenting and converts it as any other (docs/differences.md, "Device
    placement"), so both devices give the engine."""
    # GraphDef input (TF-TRT: static engine, no calibration)
    gd = convert_v1(device)
    # the engine node is a PartitionedCall here (docs/differences.md, TF1 GraphDefs)
    assert node_ops(gd) == {"input1": "Placeholder", "input2": "Placeholder",
                            "TRTEngineOp_000": "PartitionedCall", "output": "Identity"}
    # SavedModel input, with and without calibration
    saved = str(tmp_path / "in")
    write_tf1_saved_model(saved, device)
    for need_calibration in (False, True):
        gd = convert_v1(device, saved, need_calibration)
        engines = engine_nodes(gd)
        assert [without_sequence_number(n.name) for n in engines] == ["TRTEngineOp_000"]
        assert not {"add", "mul", "add_1", "add_2"} & {n.name for n in gd.node}
        if need_calibration:
            for node in engines:  # TF-TRT: calibration_data is not empty
                table = quantization.table_from_model(
                    onnx.load_from_string(node.attr[activation.ONNX_ATTR].s))
                assert table is not None and table["batches"] == 10
            with tf.Graph().as_default() as g:
                tf.graph_util.import_graph_def(gd, name="")
                with tf.compat.v1.Session(graph=g, config=SOFT) as sess:
                    for d in range(10):
                        out = sess.run("output:0", {"input1:0": [[[d]]], "input2:0": [[[d]]]})
                        np.testing.assert_allclose(out, [[[(d + 1.0) ** 2 + d]]], rtol=1e-1)
                    (op,) = [o for o in g._py_funcs_used_in_graph if hasattr(o, "stats")]
            assert op.stats["engine"] == 10 and op.stats["native"] == 0


# --- testTrtGraphConverter_OnlineConversion ---------------------------------------------------

def test_online_conversion_is_refused_with_what_to_do():
    """TF-TRT's online conversion (a RewriterConfig whose Grappler optimizer converts a TF1
    Session's graph) needs an optimizer registered in TF's C++ runtime: tftrt refuses it
    with the offline way instead of an AttributeError (docs/differences.md)."""
    params = trt.DEFAULT_TRT_CONVERSION_PARAMS._replace(precision_mode="FP32")
    with pytest.raises(NotImplementedError, match="TrtGraphConverter"):
        trt.get_tensorrt_rewriter_config(params, is_dynamic_op=False, max_batch_size=1,
                                         is_v2=False)


# --- testVariableV2 / testReadVariableOp ------------------------------------------------------

def gen_tf_variablev2_model(path):
    """TF-TRT's testdata/gen_tf_variablev2_model.py: a TF1 SavedModel with VariableV2 (ref)
    variables var1 = 13 and var2 = 37."""
    g = tf.Graph()
    with g.as_default():
        input1 = tf.compat.v1.placeholder(tf.float32, [None, 1, 1], name="input1")
        input2 = tf.compat.v1.placeholder(tf.float32, [None, 1, 1], name="input2")
        var1 = tf.compat.v1.get_variable(
            "var1", shape=[1, 1, 1], initializer=tf.compat.v1.constant_initializer([[[13.]]]),
            dtype=tf.float32, use_resource=False)
        var2 = tf.compat.v1.get_variable(
            "var2", shape=[1, 1, 1], initializer=tf.compat.v1.constant_initializer([[[37.]]]),
            dtype=tf.float32, use_resource=False)
        out = tf.identity(input1 * var1 + input2 * var2 - 45., name="output")
        assert [v.op.type for v in (var1, var2)] == ["VariableV2", "VariableV2"]
        info = tf.compat.v1.saved_model.utils.build_tensor_info
        sig = tf.compat.v1.saved_model.signature_def_utils.build_signature_def(
            inputs={"input1": info(input1), "input2": info(input2)},
            outputs={"output": info(out)}, method_name="serving_default")
        builder = tf.compat.v1.saved_model.Builder(path)
        with tf.compat.v1.Session(graph=g) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            builder.add_meta_graph_and_variables(sess, ["serve"],
                                                 signature_def_map={"serving_default": sig})
    builder.save()


class ReadVariableOpModel(tf.Module):
    """TF-TRT's testdata/gen_tf_readvariableop_model.py."""

    def __init__(self):
        self.var1 = tf.Variable(np.array([[[13.]]], dtype=np.float32), name="var1")
        self.var2 = tf.Variable(np.array([[[37.]]], dtype=np.float32), name="var2")

    @tf.function
    def __call__(self, input1, input2):
        mul1 = input1 * self.var1
        mul2 = input2 * self.var2
        return tf.identity(mul1 + mul2 - 45., name="output")


def gen_tf_readvariableop_model(path):
    model = ReadVariableOpModel()
    cfunc = model.__call__.get_concrete_function(tf.TensorSpec([None, 1, 1], tf.float32),
                                                 tf.TensorSpec([None, 1, 1], tf.float32))
    tf.saved_model.save(model, path, signatures=cfunc)


@pytest.mark.parametrize("gen,output_name", [(gen_tf_variablev2_model, "output"),
                                             (gen_tf_readvariableop_model, "output_0")],
                         ids=["VariableV2", "ReadVariableOp"])
def test_variables(gen, output_name, tmp_path):
    """TF-TRT's _TestVariableHelper. TF-TRT converted with graph freezing disabled and found
    the two variable ops inside the engine's native segment; tftrt always freezes the
    signature (docs/differences.md, "variables"), so the engine's segment holds the two
    variables' values as Consts instead, and no variable op is left."""
    src, dst = str(tmp_path / "tf"), str(tmp_path / "tftrt")
    gen(src)
    params = trt.TrtConversionParams(precision_mode="FP16", minimum_segment_size=3,
                                     max_workspace_size_bytes=10 << 20, maximum_cached_engines=1)
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=src, conversion_params=params,
                                   use_dynamic_shape=True, dynamic_shape_profile_strategy="Optimal")
    conv.convert()
    conv.build(lambda: iter([[np.ones((4, 1, 1), np.float32) for _ in range(2)]]))
    conv.save(dst)

    # one segment, and the two variables (13 and 37) in it
    sig = tf.saved_model.load(dst, tags=["serve"]).signatures["serving_default"]
    gd = sig.graph.as_graph_def()
    segments = [f for f in gd.library.function
                if re.search(r"TRTEngineOp_\d+_\d+_native_segment", f.signature.name)]
    assert len(segments) == 1
    consts = [float(tf.make_ndarray(n.attr["value"].tensor).ravel()[0])
              for n in segments[0].node_def if n.op == "Const"]
    assert sorted(c for c in consts if c in (13.0, 37.0)) == [13.0, 37.0]
    every_op = [n.op for n in gd.node] + [n.op for f in gd.library.function for n in f.node_def]
    assert not {"VariableV2", "ReadVariableOp", "VarHandleOp"} & set(every_op)

    loaded = tftrt.load(dst, tags=["serve"])
    graph_func = loaded.signatures["serving_default"]
    output = graph_func(input1=tf.ones([4, 1, 1]), input2=2.0 * tf.ones([4, 1, 1]))[output_name]
    assert output.shape == (4, 1, 1)
    np.testing.assert_allclose(output.numpy(), np.full([4, 1, 1], 42.0))
    (op,) = loaded.engine_ops.values()
    assert op.stats["engine"] == 1 and op.stats["native"] == 0 and op.stats["builds"] == 0


# --- testTrtGraphConverter_Int8Conversion_v2 (the parts test_int8_conversion leaves out) ------

def table_of(op):
    return quantization.table_from_model(onnx.load_from_string(op.spec.onnx_bytes))


def test_int8_conversion_calibration_data(tmp_path):
    src = str(tmp_path / "in")
    root = SimpleModel()
    tf.saved_model.save(root, src, {KEY: root.run})
    x1, x2 = random_input([4, 1, 1])
    conv = converter_v2(src, precision_mode="INT8", maximum_cached_engines=3)
    fn = conv.convert(calibration_input_fn=lambda: iter([(x1, x2)]))
    # _CheckFn on the converted function: one engine, with calibration data
    assert engine_names(fn) == ["TRTEngineOp_000"]
    (op,) = conv.engine_ops.values()
    table = table_of(op)
    assert table is not None and table["source"] == "calibration" and table["batches"] == 1
    # build another engine with a different batch size, save: the engine is in the assets
    conv.build(lambda: iter([random_input([5, 1, 1], seed=1)]))
    out = str(tmp_path / "out")
    conv.save(out)
    plans = [f for f in engine_files(out) if f.endswith(".plan")]
    assert plans and all(f.startswith(op.name) for f in plans)
    assert all(os.path.getsize(os.path.join(out, "assets", "tftrt", f)) for f in plans)
    # load: the engine still has its calibration data; same answers
    loaded = tftrt.load(out)
    (lop,) = loaded.engine_ops.values()
    assert table_of(lop) == table
    sig = loaded.signatures[KEY]
    (value,) = sig(inp1=tf.constant(x1), inp2=tf.constant(x2)).values()
    np.testing.assert_allclose(value.numpy(), expected(x1, x2), rtol=1e-6, atol=1e-6)
    # a new batch size builds a new INT8 engine from the stored calibration table
    builds = lop.stats["builds"]
    y1, y2 = random_input([6, 1, 1], seed=2)
    (value,) = sig(inp1=tf.constant(y1), inp2=tf.constant(y2)).values()
    np.testing.assert_allclose(value.numpy(), expected(y1, y2), rtol=1e-6, atol=1e-6)
    assert lop.stats["builds"] == builds + 1 and lop.stats["native"] == 0
    assert ((6, 1, 1), (6, 1, 1)) in lop.cache.keys()
    assert lop.cache.get(((6, 1, 1), (6, 1, 1))).precision == "INT8"


# --- the SavedModel halves of testTrtGraphConverter_StaticOp / _DynamicOp ---------------------

def tf1_converted_saved_model(tmp_path, is_dynamic_op, maximum_cached_engines):
    src, out = str(tmp_path / "v1_in"), str(tmp_path / "v1_out")
    write_tf1_saved_model(src, None)
    conv = trt.TrtGraphConverter(
        input_saved_model_dir=src, input_saved_model_signature_key=KEY,
        max_batch_size=None if is_dynamic_op else 1,
        max_workspace_size_bytes=trt.DEFAULT_TRT_MAX_WORKSPACE_SIZE_BYTES,
        precision_mode="FP32", minimum_segment_size=3, is_dynamic_op=is_dynamic_op,
        maximum_cached_engines=maximum_cached_engines)
    conv.convert()
    conv.save(output_saved_model_dir=out)
    return out


def session_runs(saved_dir, batches):
    """TF-TRT's _TestRun on the saved model loaded in a TF1 Session. tftrt's TF1 save writes a
    TF2 SavedModel: a Session feeds and fetches the tensors its signature_def names, and runs
    the native segments (docs/differences.md, "saved model" and "trt_convert")."""
    with tf.Graph().as_default() as g:
        with tf.compat.v1.Session(graph=g) as sess:
            meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], saved_dir)
            sd = meta.signature_def[KEY]
            for b in batches:
                out = sess.run(sd.outputs["myoutput"].name,
                               {sd.inputs["myinput1"].name: [[[1.0]]] * b,
                                sd.inputs["myinput2"].name: [[[1.0]]] * b})
                np.testing.assert_array_equal(out, [[[5.0]]] * b)


def tftrt_runs(saved_dir, batches):
    loaded = tftrt.load(saved_dir)
    sig = loaded.signatures[KEY]
    for b in batches:
        out = sig(myinput1=tf.ones([b, 1, 1]), myinput2=tf.ones([b, 1, 1]))["myoutput"]
        np.testing.assert_array_equal(out.numpy(), [[[5.0]]] * b)
    (op,) = loaded.engine_ops.values()
    return op


def test_tf1_static_op_saved_model(tmp_path):
    out = tf1_converted_saved_model(tmp_path, is_dynamic_op=False, maximum_cached_engines=1)
    session_runs(out, [1, 2])
    # batch 1: the engine built in convert() and saved; batch 2 > max_batch_size: native
    op = tftrt_runs(out, [1, 2])
    assert op.spec.max_batch_size == 1
    assert op.stats["builds"] == 0 and op.stats["engine"] == 1 and op.stats["native"] == 1


def test_tf1_dynamic_op_saved_model(tmp_path):
    out = tf1_converted_saved_model(tmp_path, is_dynamic_op=True, maximum_cached_engines=2)
    session_runs(out, [1, 2, 3])
    # batch 3 evicts the engine of batch 1 (two cached engines at most)
    op = tftrt_runs(out, [1, 2, 3])
    assert op.stats["builds"] == 3 and op.stats["engine"] == 3 and op.stats["native"] == 0
    assert op.cache.keys() == [((2, 1, 1), (2, 1, 1)), ((3, 1, 1), (3, 1, 1))]
