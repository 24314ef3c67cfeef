"""Port of TF-TRT's trt_convert_test.py: the converter APIs (V2 and TF1) on TF-TRT's small model
``inp1^2 + inp1*v + inp1 + inp2 + v`` (v a variable equal to 1), whose four nodes make one
engine. TensorRT-only checks (the engine resource ops, TRTEngineInstance, GPU placement) have no
tftrt counterpart (docs/differences.md)."""

import os
import re

import numpy as np
import pytest
import tensorflow as tf

import tftrt
from tftrt import rewrite, trt_convert as trt
from tftrt.engine_op import TRTEngineOp

KEY = "mypredict"
SPEC = tf.TensorSpec([None, 1, 1], tf.float32)


def simple_graph(inp1, inp2, var):
    add = inp1 + var
    mul = inp1 * add
    add = mul + add
    add = add + inp2
    return tf.identity(add, name="output")


class SimpleModel(tf.Module):
    def __init__(self):
        self.v = tf.Variable([[[1.0]]])
        self.run = tf.function(lambda inp1, inp2: simple_graph(inp1, inp2, self.v),
                               input_signature=[tf.TensorSpec(SPEC.shape, SPEC.dtype, "inp1"),
                                                tf.TensorSpec(SPEC.shape, SPEC.dtype, "inp2")])


class ShapeOpModel(tf.Module):
    """x + 1 -> Shape -> Cumsum (native) -> * 2: an int32 engine output and an int32 engine."""

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.float32, name="x")])
    def run(self, x):
        q = tf.math.cumsum(tf.shape(x + 1))
        return tf.identity(q * 2, name="output")


def random_input(shape, seed=0):
    rng = np.random.RandomState(seed)
    return (rng.random_sample(shape).astype(np.float32),
            rng.random_sample(shape).astype(np.float32))


def expected(inp1, inp2):
    return inp1 * inp1 + inp1 * 1.0 + inp1 + inp2 + 1.0


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("trt_convert") / "simple")
    root = SimpleModel()
    tf.saved_model.save(root, path, {KEY: root.run})
    return path


@pytest.fixture(scope="module")
def shape_model_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("trt_convert") / "shape_op")
    root = ShapeOpModel()
    tf.saved_model.save(root, path, signatures=root.run)
    return path


def converter_v2(path, **kw):
    params = dict(input_saved_model_signature_key=KEY, max_workspace_size_bytes=10 << 20,
                  precision_mode="FP32", maximum_cached_engines=2)
    params.update(kw)
    return trt.TrtGraphConverterV2(input_saved_model_dir=path, **params)


def without_sequence_number(name):
    """TF-TRT's _MayRemoveGraphSequenceNumber: TRTEngineOp_000_001 -> TRTEngineOp_001."""
    m = re.fullmatch(r"TRTEngineOp_\d{3,}_(\d+)", name)
    return f"TRTEngineOp_{m.group(1)}" if m else name


def engine_names(func):
    """The engine nodes of a converted (or loaded) function's graph, TF-TRT's _CheckTrtOps."""
    gd = func.graph.as_graph_def()
    nodes = list(gd.node) + [n for f in gd.library.function for n in f.node_def]
    return sorted(without_sequence_number(n.name) for n in nodes
                  if re.fullmatch(r"TRTEngineOp_\d+_\d+", n.name))


def engine_files(saved_dir):
    return [f for _, _, fs in os.walk(os.path.join(saved_dir, "assets")) for f in fs]


# --- conversion parameters ----------------------------------------------------------------

@pytest.mark.parametrize("kw,message", [
    (dict(precision_mode="INT4"), "precision mode 'INT4' is not supported"),
    (dict(minimum_segment_size=0), "minimum segment size should be positive or -1"),
    (dict(maximum_cached_engines=0), "maximum_cached_engines should be positive"),
    (dict(max_workspace_size_bytes=0), "max_workspace_size_bytes should be positive"),
    (dict(dynamic_shape_profile_strategy="Fastest"), "profile strategy 'Fastest' is not "
                                                      "supported"),
])
def test_invalid_conversion_params(model_dir, kw, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        converter_v2(model_dir, **kw)


def test_conversion_params_namedtuple(model_dir):
    params = trt.DEFAULT_TRT_CONVERSION_PARAMS._replace(precision_mode="fp16",
                                                        minimum_segment_size=10)
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=model_dir,
                                   input_saved_model_signature_key=KEY,
                                   conversion_params=params)
    conv.convert()
    assert conv.engine_ops == {}  # four nodes < minimum_segment_size=10
    assert trt.TrtPrecisionMode.supported_precision_modes()[:3] == ["FP32", "FP16", "INT8"]


def test_call_order_errors(model_dir, tmp_path):
    conv = converter_v2(model_dir)
    with pytest.raises(RuntimeError, match="Need to call convert"):
        conv.build(lambda: iter([random_input([4, 1, 1])]))
    with pytest.raises(RuntimeError, match="Need to call convert"):
        conv.save(str(tmp_path / "o"))
    with pytest.raises(RuntimeError, match="needs to be converted before"):
        conv.summary()
    with pytest.raises(ValueError, match="Should not specify calibration_input_fn"):
        conv.convert(calibration_input_fn=lambda: iter([]))
    conv.convert()
    with pytest.raises(RuntimeError, match="already called"):
        conv.convert()
    with pytest.raises(ValueError, match="Invalid `line_length`"):
        conv.summary(line_length=80)
    conv.build(lambda: iter([random_input([4, 1, 1])]))
    with pytest.raises(NotImplementedError, match="build\\(\\) is already called"):
        conv.build(lambda: iter([random_input([4, 1, 1])]))
    int8 = converter_v2(model_dir, precision_mode="INT8")
    with pytest.raises(ValueError, match="Should specify calibration_input_fn"):
        int8.convert()


# --- V2 -------------------------------------------------------------------------------------

def test_engine_naming_and_summary(model_dir):
    conv = converter_v2(model_dir)
    fn = conv.convert()
    assert engine_names(fn) == ["TRTEngineOp_000"]
    assert sorted(conv.engine_ops) == ["TRTEngineOp_000_000"]
    lines = []
    conv.summary(print_fn=lines.append)
    text = "\n".join(lines)
    assert "TRTEngineOp_000_000" in text and "AddV2" in text and "Mul" in text


def two_input_fns():
    x1, x2 = random_input([4, 1, 1])
    yield lambda: iter([(x1, x2)])
    yield lambda: iter([[x1, x2]])
    yield lambda: iter([{"inp1": x1, "inp2": x2}])
    yield lambda: iter([(x1, x2), [x1, x2], {"inp1": x1, "inp2": x2}])
    # TF-TRT's last generator changed the second dimension, which the signature fixes to 1
    yield lambda: (random_input(s) for s in ([4, 1, 1], [2, 1, 1], [8, 1, 1]))


@pytest.mark.parametrize("k", range(5))
def test_build_two_inputs_every_input_format(model_dir, tmp_path, k):
    """TF-TRT's testTrtGraphBuild (two inputs): saved without engines, then with them."""
    input_fn = list(two_input_fns())[k]
    conv = converter_v2(model_dir)
    conv.convert()
    (op,) = conv.engine_ops.values()
    conv.save(str(tmp_path / "before"))
    assert not [f for f in engine_files(str(tmp_path / "before")) if f.endswith(".plan")]
    conv.build(input_fn=input_fn)
    assert op.stats["engine"] >= 1 and op.stats["native"] == 0
    conv.save(str(tmp_path / "after"))
    plans = [f for f in engine_files(str(tmp_path / "after")) if f.endswith(".plan")]
    assert len(plans) == len(op.cache) >= 1


def one_input_fns():
    x = np.random.RandomState(0).random_sample([5, 3]).astype(np.float32)
    yield lambda: iter([(x,)])
    yield lambda: iter([[x]])
    yield lambda: iter([x])
    yield lambda: iter([{"x": x}])
    yield lambda: iter([(x,), [x], x, {"x": x}])
    yield lambda: (np.random.random_sample(s).astype(np.float32)
                   for s in [(1, 128), (16, 128), (256, 128)])


@pytest.mark.parametrize("k", range(6))
def test_build_one_input_every_input_format(shape_model_dir, tmp_path, k):
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=shape_model_dir,
                                   use_dynamic_shape=True, minimum_segment_size=2)
    conv.convert()
    conv.build(list(one_input_fns())[k])
    conv.save(str(tmp_path / "o"))
    assert all(op.stats["engine"] >= 1 and op.stats["native"] == 0
               for op in conv.engine_ops.values())


@pytest.mark.parametrize("loader", ["tftrt.load", "tf.saved_model.load"])
def test_dynamic_conversion_round_trip(model_dir, tmp_path, loader):
    x1, x2 = random_input([4, 1, 1])
    conv = converter_v2(model_dir)
    conv.convert()
    conv.build(lambda: iter([(x1, x2)]))
    out = str(tmp_path / "o")
    conv.save(out)
    root = (tftrt.load if loader == "tftrt.load" else tf.saved_model.load)(out)
    sig = root.signatures[KEY]
    if loader == "tf.saved_model.load":  # tftrt.load's signatures call the engine directly
        assert engine_names(sig) == ["TRTEngineOp_000"]
    got = sig(inp1=tf.constant(x1), inp2=tf.constant(x2))
    (value,) = got.values()
    np.testing.assert_allclose(value.numpy(), expected(x1, x2), rtol=1e-6, atol=1e-6)


def test_shape_op_int32_input_output(shape_model_dir, tmp_path):
    x = np.random.RandomState(0).random_sample([5, 3]).astype(np.float32)
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=shape_model_dir,
                                   use_dynamic_shape=True, minimum_segment_size=2)
    conv.convert()
    conv.build(lambda: iter([(x,)]))
    ops = conv.engine_ops.values()
    assert len(ops) == 2 and all(op.stats["engine"] == 1 for op in ops)
    conv.save(str(tmp_path / "o"))
    sig = tf.saved_model.load(str(tmp_path / "o")).signatures["serving_default"]
    assert engine_names(sig) == ["TRTEngineOp_000", "TRTEngineOp_001"]
    (value,) = sig(x=tf.constant(x)).values()
    np.testing.assert_array_equal(value.numpy(), [10, 16])  # cumsum([5, 3]) * 2


def test_int8_conversion(model_dir, tmp_path):
    x1, x2 = random_input([4, 1, 1])
    conv = converter_v2(model_dir, precision_mode="INT8", maximum_cached_engines=3)
    conv.convert(calibration_input_fn=lambda: iter([(x1, x2)]))
    conv.build(lambda: iter([random_input([5, 1, 1])]))
    conv.save(str(tmp_path / "o"))
    sig = tftrt.load(str(tmp_path / "o")).signatures[KEY]
    (value,) = sig(inp1=tf.constant(x1), inp2=tf.constant(x2)).values()
    np.testing.assert_allclose(value.numpy(), expected(x1, x2), rtol=1e-6, atol=1e-6)


def test_no_runtime_build_after_build(shape_model_dir, tmp_path):
    """TF-TRT's testTrtGraphConverter_RemoveNativeSegments without the experimental feature:
    allow_build_at_runtime=False, build(), save, load, same output."""
    x = np.random.RandomState(0).random_sample([5, 3]).astype(np.float32)
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=shape_model_dir,
                                   allow_build_at_runtime=False, minimum_segment_size=1)
    conv.convert()
    conv.build(lambda: iter([(x,)]))
    assert all(op.stats["builds"] == 1 for op in conv.engine_ops.values())
    conv.save(str(tmp_path / "o"))
    sig = tf.saved_model.load(str(tmp_path / "o")).signatures["serving_default"]
    np.testing.assert_array_equal(sig(x=tf.constant(x))["output_0"].numpy(), [10, 16])


def test_native_segment_execution_disallowed(model_dir, monkeypatch):
    """TF-TRT aborted the engine build (TF_TRT_ABORT_CUDA_ENGINE_BUILD); here build_engine
    fails. With native segments disallowed build() raises; allowed, it runs natively."""
    import tftrt.engine

    def failing_build(*args, **kwargs):
        raise tftrt.engine.EngineBuildError("aborted (simulated)")

    x = random_input([4, 1, 1])
    conv = converter_v2(model_dir, max_workspace_size_bytes=1 << 20)
    conv.convert()
    monkeypatch.setattr(tftrt.engine, "build_engine", failing_build)
    monkeypatch.setenv("TF_TRT_ALLOW_ENGINE_NATIVE_SEGMENT_EXECUTION", "False")
    with pytest.raises(Exception, match="native segment execution is disabled"):
        conv.build(input_fn=lambda: iter([x]))
    monkeypatch.setenv("TF_TRT_ALLOW_ENGINE_NATIVE_SEGMENT_EXECUTION", "True")
    conv._build_called_once = False  # TF-TRT's test called build() a second time
    conv.build(input_fn=lambda: iter([x]))
    (op,) = conv.engine_ops.values()
    assert op.stats["native"] == 1 and op.stats["engine"] == 0


@pytest.mark.parametrize("build_offline,allow_build_at_runtime", [
    (True, True), (True, False), (False, True), (False, False)])
def test_allow_build_at_runtime(model_dir, tmp_path, monkeypatch, build_offline,
                                allow_build_at_runtime):
    ones = tf.ones([4, 1, 1])
    conv = converter_v2(model_dir, allow_build_at_runtime=allow_build_at_runtime)
    conv.convert()
    if build_offline:
        conv.build(lambda: iter([(ones, ones)]))
    conv.save(str(tmp_path / "o"))
    assert engine_names(tf.saved_model.load(str(tmp_path / "o")).signatures[KEY]) == [
        "TRTEngineOp_000"]
    # tftrt.load runs the engines (plain TF runs the native segments: docs/differences.md)
    sig = tftrt.load(str(tmp_path / "o")).signatures[KEY]
    if not build_offline and not allow_build_at_runtime:
        monkeypatch.setenv("TF_TRT_ALLOW_ENGINE_NATIVE_SEGMENT_EXECUTION", "False")
        with pytest.raises(Exception, match="allow_build_at_runtime=False"):
            sig(inp1=ones, inp2=ones)
        monkeypatch.setenv("TF_TRT_ALLOW_ENGINE_NATIVE_SEGMENT_EXECUTION", "True")
    out = sig(inp1=ones, inp2=ones)["output_0"]
    assert out.shape == (4, 1, 1)
    np.testing.assert_allclose(out.numpy(), np.full([4, 1, 1], 5.0))


@pytest.mark.parametrize("save_engines", [True, False])
def test_save_gpu_specific_engines(model_dir, tmp_path, save_engines):
    """TF-TRT's test calibrated INT8; the flag itself is checked in FP32."""
    conv = converter_v2(model_dir)
    conv.convert()
    conv.build(lambda: iter([random_input([4, 1, 1])]))
    conv.save(str(tmp_path / "o"), save_gpu_specific_engines=save_engines)
    plans = [f for f in engine_files(str(tmp_path / "o")) if f.endswith(".plan")]
    assert len(plans) == (1 if save_engines else 0)


def test_save_with_options(model_dir, tmp_path):
    conv = converter_v2(model_dir)
    conv.convert()
    conv.save(str(tmp_path / "o"), options=tf.saved_model.SaveOptions(save_debug_info=True))
    assert os.path.exists(tmp_path / "o" / "debug" / "saved_model_debug_info.pb")


class NoInputs(tf.Module):
    @tf.function(input_signature=[])
    def run(self):
        return tf.constant(1.0)


class OneInput(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None, 1], tf.float32)])
    def run(self, inp):
        return inp + inp * inp


class TwoInputs(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None, 1], tf.float32),
                                  tf.TensorSpec([None, 2], tf.float32)])
    def run(self, inp1, inp2):
        return inp1 + inp2 * inp2


class OneOutputSignatureKey(tf.Module):
    @tf.function(input_signature=[])
    def run(self):
        return {"my_output": tf.constant(1.0)}


class TwoOutputSignatureKeys(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None, 1], tf.float32)])
    def run(self, inp):
        return {"output_b": tf.constant(1.0), "output_a": inp + inp * inp}  # not sorted


@pytest.mark.parametrize("model_cls", [NoInputs, OneInput, TwoInputs, OneOutputSignatureKey,
                                       TwoOutputSignatureKeys], ids=lambda c: c.__name__)
def test_retain_signature_info(tmp_path, model_cls):
    from tensorflow.python.saved_model import loader_impl
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    root = model_cls()
    tf.saved_model.save(root, src, signatures=root.run)
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=src, max_workspace_size_bytes=10 << 20)
    conv.convert()
    conv.save(dst)

    def signature(path):
        (meta,) = loader_impl.parse_saved_model(path).meta_graphs
        return meta.signature_def["serving_default"]

    want, got = signature(src), signature(dst)
    assert got.method_name == want.method_name
    for a, b in ((want.inputs, got.inputs), (want.outputs, got.outputs)):
        assert set(a) == set(b)
        for k in a:
            assert (a[k].name, a[k].dtype) == (b[k].name, b[k].dtype)
            assert (tf.TensorShape(a[k].tensor_shape).as_list()
                    == tf.TensorShape(b[k].tensor_shape).as_list())
    assert (tf.saved_model.load(src).signatures["serving_default"].structured_outputs
            == tf.saved_model.load(dst).signatures["serving_default"].structured_outputs)


# --- TF1 ------------------------------------------------------------------------------------

def tf1_graph():
    g = tf.Graph()
    with g.as_default():
        inp1 = tf.compat.v1.placeholder(tf.float32, [None, 1, 1], name="input1")
        inp2 = tf.compat.v1.placeholder(tf.float32, [None, 1, 1], name="input2")
        var = tf.compat.v1.Variable([[[1.0]]], name="v1")
        out = simple_graph(inp1, inp2, var)
    return g, var, inp1, inp2, out


def tf1_frozen_graph_def():
    g, var, _, _, _ = tf1_graph()
    with tf.compat.v1.Session(graph=g) as sess:
        sess.run(var.initializer)
        return tf.compat.v1.graph_util.convert_variables_to_constants(
            sess, g.as_graph_def(add_shapes=True), ["output"])


def write_tf1_saved_model(path):
    g, var, inp1, inp2, out = tf1_graph()
    info = tf.compat.v1.saved_model.utils.build_tensor_info
    with g.as_default():
        sig = tf.compat.v1.saved_model.signature_def_utils.build_signature_def(
            inputs={"myinput1": info(inp1), "myinput2": info(inp2)},
            outputs={"myoutput": info(out)}, method_name="tensorflow/serving/predict")
    builder = tf.compat.v1.saved_model.Builder(path)
    with g.as_default(), tf.compat.v1.Session(graph=g) as sess:
        sess.run(var.initializer)
        builder.add_meta_graph_and_variables(sess, ["serve"], signature_def_map={KEY: sig})
    builder.save()


def convert_v1(tmp_path=None, need_calibration=False, max_batch_size=1,
               minimum_segment_size=3, is_dynamic_op=False, maximum_cached_engines=1):
    """TF-TRT's _ConvertGraphV1: a frozen GraphDef, or a TF1 SavedModel (saved again)."""
    saved_in = saved_out = None
    if tmp_path is not None:
        saved_in, saved_out = str(tmp_path / "v1_in"), str(tmp_path / "v1_out")
        write_tf1_saved_model(saved_in)
    if need_calibration:
        is_dynamic_op = True
    if is_dynamic_op:
        max_batch_size = None
    conv = trt.TrtGraphConverter(
        input_saved_model_dir=saved_in, input_saved_model_signature_key=KEY,
        input_graph_def=None if saved_in else tf1_frozen_graph_def(),
        nodes_denylist=None if saved_in else ["output"], max_batch_size=max_batch_size,
        max_workspace_size_bytes=trt.DEFAULT_TRT_MAX_WORKSPACE_SIZE_BYTES,
        precision_mode="INT8" if need_calibration else "FP32",
        minimum_segment_size=minimum_segment_size, is_dynamic_op=is_dynamic_op,
        maximum_cached_engines=maximum_cached_engines)
    gd = conv.convert()
    if need_calibration:
        data = iter(range(1, 100))

        def feed():
            d = next(data)
            return {"input1:0": [[[d]]], "input2:0": [[[d]]]}
        gd = conv.calibrate(fetch_names=["output:0"], num_runs=10, feed_dict_fn=feed)
    if saved_out is not None:
        conv.save(output_saved_model_dir=saved_out)
    return gd, saved_out


def node_ops(graph_def):
    return {without_sequence_number(n.name): n.op for n in graph_def.node}


def run_batches(sess, batches):
    """TF-TRT's _TestRun: ones in, 5 out; returns the engine ops the session's graph bound."""
    for b in batches:
        out = sess.run("output:0", {"input1:0": [[[1.0]]] * b, "input2:0": [[[1.0]]] * b})
        np.testing.assert_array_equal(out, [[[5.0]]] * b)
    return [o for o in sess.graph._py_funcs_used_in_graph if isinstance(o, TRTEngineOp)]


@pytest.mark.parametrize("need_calibration", [False, True])
def test_tf1_offline_conversion(tmp_path, need_calibration):
    if not need_calibration:  # TF-TRT converted the frozen GraphDef without calibration only
        gd, _ = convert_v1()
        assert node_ops(gd) == {"input1": "Placeholder", "input2": "Placeholder",
                                "TRTEngineOp_000": "PartitionedCall", "output": "Identity"}
    gd, saved_out = convert_v1(tmp_path, need_calibration=need_calibration)
    # TF-TRT also read the saved TF1 SavedModel's GraphDef; tftrt's save writes a TF2
    # SavedModel whose engines are inside its functions (not ported)
    for graph_def in (gd,):
        engines = [n for n in graph_def.node if rewrite.ENGINE_ATTR in n.attr]
        assert [without_sequence_number(n.name) for n in engines] == ["TRTEngineOp_000"]
        assert not {"add", "mul", "add_1", "add_2"} & {n.name for n in graph_def.node}
    if need_calibration:  # run the calibrated graph
        with tf.Graph().as_default() as g:
            tf.graph_util.import_graph_def(gd, name="")
            with tf.compat.v1.Session(graph=g) as sess:
                for d in range(10):
                    out = sess.run("output:0", {"input1:0": [[[d]]], "input2:0": [[[d]]]})
                    np.testing.assert_allclose(out, [[[(d + 1.0) ** 2 + d]]], rtol=1e-3)


@pytest.mark.parametrize("minimum_segment_size", [7, -1])
def test_tf1_minimum_segment_size(minimum_segment_size):
    gd, _ = convert_v1(minimum_segment_size=minimum_segment_size)
    assert node_ops(gd) == {"v1": "Const", "input1": "Placeholder", "input2": "Placeholder",
                            "add": "AddV2", "mul": "Mul", "add_1": "AddV2", "add_2": "AddV2",
                            "output": "Identity"}


def test_tf1_dynamic_op(tmp_path):
    gd, saved_out = convert_v1(tmp_path, is_dynamic_op=True,
                               maximum_cached_engines=2)
    with tf.Graph().as_default() as g:
        tf.graph_util.import_graph_def(gd, name="")
        with tf.compat.v1.Session(graph=g) as sess:
            (op,) = run_batches(sess, [1, 2, 3])  # 3 evicts the engine for 1 (LRU)
    assert op.stats["builds"] == 3 and op.stats["engine"] == 3 and len(op.cache) == 2
    assert op.cache.keys() == [((2, 1, 1), (2, 1, 1)), ((3, 1, 1), (3, 1, 1))]



def test_tf1_static_op(tmp_path):
    gd, saved_out = convert_v1(tmp_path, maximum_cached_engines=1)
    with tf.Graph().as_default() as g:
        tf.graph_util.import_graph_def(gd, name="")
        with tf.compat.v1.Session(graph=g) as sess:
            # batch 1: the engine built in convert(); batch 2 > max_batch_size: native
            (op,) = run_batches(sess, [1, 2])
    assert op.stats["builds"] == 0 and op.stats["engine"] == 1 and op.stats["native"] == 1
