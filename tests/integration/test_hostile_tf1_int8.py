"""Hostile inputs to the TF1 converter and to INT8 calibration / quantization-aware models on the
numpy backend, compared with native TensorFlow: calibrate() called again; constant, empty or
exhausted calibration data; feeds keyed by tensors, numpy input maps; TF1 control flow
(Switch / Merge) during calibration; fake quantization coarser than INT8; INT8 arithmetic by
hand; GraphDefs with variables, denylisted inner nodes, static batches over max_batch_size;
a trained CNN's INT8 predictions through a TF1 static engine."""

import logging

import numpy as np
import onnx
import pytest
import tensorflow as tf

import tftrt  # noqa: F401  (activates engine binding in import_graph_def)
from tests.integration import models
from tests.integration.test_int8 import L, pattern_data, tf1_graph, train
from tests.integration.test_tf1 import bound_engine_ops, frozen_graph
from tftrt import activation, trt_convert as trt
from tftrt.calibration import QuantizedEngineOp
from tftrt.engine import quantization as Q


@pytest.fixture(autouse=True)
def numpy_backend(monkeypatch):
    monkeypatch.setenv("TFTRT_BACKEND", "numpy")


def _rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _table(graph_def):
    (node,) = [n for n in graph_def.node if activation.SPEC_ATTR in n.attr]
    return Q.table_from_model(onnx.load_from_string(node.attr[activation.ONNX_ATTR].s))


def _int8_tf1(**kw):
    conv = trt.TrtGraphConverter(input_graph_def=tf1_graph(), nodes_denylist=["out"],
                                 precision_mode="INT8", minimum_segment_size=2, **kw)
    conv.convert()
    return conv


def _data(seed, scale=1.0, batch=4):
    return np.random.RandomState(seed).randn(batch, 8, 8, 2).astype(np.float32) * scale


# --- TF1 calibrate() ---------------------------------------------------------------------------

def test_calibrating_again_is_refused_and_keeps_the_first_ranges():
    # TF-TRT asserted that calibration data had not been collected yet: a second calibrate()
    # is an error, not a silent recalibration
    conv = _int8_tf1(is_dynamic_op=False, max_batch_size=4)
    tiny, real = _data(0, 0.01), _data(1)
    first = conv.calibrate(["out:0"], 1, feed_dict_fn=lambda: {"x:0": tiny})
    assert _table(first)["tensors"]["TensorRTInputPH_0"] < 0.05
    with pytest.raises(RuntimeError, match=r"calibrate\(\) was already called on this "
                                           r"converter"):
        conv.calibrate(["out:0"], 1, feed_dict_fn=lambda: {"x:0": real})
    assert _table(conv._converted_graph_def)["tensors"] == \
        pytest.approx(_table(first)["tensors"])
    # a new converter calibrates with other data
    again = _int8_tf1(is_dynamic_op=False, max_batch_size=4).calibrate(
        ["out:0"], 1, feed_dict_fn=lambda: {"x:0": real})
    second = _table(again)
    assert second["source"] == "calibration"
    assert second["tensors"]["TensorRTInputPH_0"] > 2.0
    x = _data(7)
    got, _ = models.session_run(again, x)
    want, _ = models.session_run(tf1_graph(), x)
    assert _rel(got, want) < 0.03


def test_two_threads_calibrating_one_converter_take_turns():
    """calibrate() from a second thread while the first runs waits for it, then is refused
    as a second call in turn is (trt_convert.OneAtATime); the first thread's ranges stay."""
    from tests.integration.threads import second_call_during_first
    conv = _int8_tf1(is_dynamic_op=False, max_batch_size=4)
    tiny, real = _data(0, 0.01), _data(1)

    def first(hold):
        def slow_feed():  # held until the second thread is inside calibrate()
            hold()
            return {"x:0": tiny}
        return conv.calibrate(["out:0"], 1, feed_dict_fn=slow_feed)

    graph_def, second = second_call_during_first(first, lambda: conv.calibrate(
        ["out:0"], 1, feed_dict_fn=lambda: {"x:0": real}))
    assert second.startswith("calibrate() was already called"), second
    assert _table(conv._converted_graph_def)["tensors"]["TensorRTInputPH_0"] < 0.05
    assert _table(graph_def)["tensors"] == \
        pytest.approx(_table(conv._converted_graph_def)["tensors"])


def test_tf1_calibration_data_that_cannot_give_ranges_is_said(caplog):
    conv = _int8_tf1(is_dynamic_op=True)
    zeros = np.zeros((4, 8, 8, 2), np.float32)
    with caplog.at_level(logging.WARNING, logger="tftrt.calibration"):
        conv.calibrate(["out:0"], 2, feed_dict_fn=lambda: {"x:0": zeros})
    assert "yielded only constant data" in caplog.text
    empty = np.zeros((0, 8, 8, 2), np.float32)
    conv = _int8_tf1(is_dynamic_op=True)  # calibrate() runs once per converter
    with pytest.raises(ValueError, match=r"calibrate\(\) yielded 0 batch\(es\); INT8 / FP8 "
                                         r"calibration needs at least 1"):
        conv.calibrate(["out:0"], 2, feed_dict_fn=lambda: {"x:0": empty})
    feeds = iter([empty, _data(3), _data(4)])
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tftrt.calibration"):
        out = conv.calibrate(["out:0"], 3, feed_dict_fn=lambda: {"x:0": next(feeds)})
    assert "yielded 1 empty batch(es) (0 samples); they were skipped" in caplog.text
    assert "constant" not in caplog.text
    table = _table(out)
    assert table["batches"] == 2 and table["plan"]["quantized_share"] == 1.0


def test_tf1_feed_dict_fn_that_runs_out_or_yields_is_a_clear_error():
    conv = _int8_tf1(is_dynamic_op=True)
    feeds = iter([_data(5), _data(6)])
    with pytest.raises(ValueError, match=r"calibrate\(\): feed_dict_fn raised StopIteration at "
                                         r"run 2 of num_runs=3: its data ran out; give "
                                         r"num_runs=2 or more data"):
        conv.calibrate(["out:0"], 3, feed_dict_fn=lambda: {"x:0": next(feeds)})

    def generator():
        yield {"x:0": _data(5)}
    with pytest.raises(ValueError, match=r"feed_dict_fn returned generator; it must return a "
                                         r"dict of input tensor name -> value \(one run's"):
        conv.calibrate(["out:0"], 1, feed_dict_fn=generator)


def test_tf1_input_map_fn_takes_numpy_values_and_says_what_does_not_fit():
    x = _data(8)
    by_map = _table(_int8_tf1(is_dynamic_op=True).calibrate(
        ["out:0"], 1, input_map_fn=lambda: {"x:0": x}))
    by_feed = _table(_int8_tf1(is_dynamic_op=True).calibrate(
        ["out:0"], 1, feed_dict_fn=lambda: {"x:0": x}))
    assert by_map["tensors"] == pytest.approx(by_feed["tensors"])
    conv = _int8_tf1(is_dynamic_op=True)
    with pytest.raises(ValueError, match=r"calibrate\(\): input_map_fn's tensors do not fit the "
                                         r"graph: Attempted to map inputs that were not found "
                                         r"in graph_def: \[y:0\] \(mapped \['y:0'\]; the "
                                         r"graph's inputs are \['x:0'\]\)"):
        conv.calibrate(["out:0"], 1, input_map_fn=lambda: {"y:0": tf.constant(x)})


def test_tf1_feed_dict_fn_may_key_by_tensors_of_the_users_graph():
    g = tf.Graph()
    with g.as_default():
        tf.graph_util.import_graph_def(tf1_graph(), name="")
    x = _data(9)
    by_tensor = _table(_int8_tf1(is_dynamic_op=True).calibrate(
        ["out:0"], 1, feed_dict_fn=lambda: {g.get_tensor_by_name("x:0"): x}))
    by_name = _table(_int8_tf1(is_dynamic_op=True).calibrate(
        ["out:0"], 1, feed_dict_fn=lambda: {"x:0": x}))
    assert by_tensor["tensors"] == pytest.approx(by_name["tensors"])


def _tf1_cond_graph():
    """x -> dense -> TF1 tf.cond(flag) with a dense layer in each branch -> dense -> 'out'."""
    rng = np.random.RandomState(0)
    g = tf.Graph()
    with g.as_default():
        weights = [tf.constant(rng.randn(8, 8), tf.float32) for _ in range(3)]
        x = tf.compat.v1.placeholder(tf.float32, (None, 8), name="x")
        flag = tf.compat.v1.placeholder_with_default(True, (), name="flag")
        h = tf.nn.relu(tf.matmul(x, weights[0]) + 0.5)
        h = tf.compat.v1.cond(flag, lambda: tf.tanh(tf.matmul(h, weights[1])) * 2.0 + 1.0,
                              lambda: tf.nn.relu(tf.matmul(h, weights[2])) * 0.5 + 1.0)
        out = tf.identity(tf.sigmoid(tf.matmul(h, weights[0][:, :4]) + 0.1), name="out")
    assert {"Switch", "Merge"} <= {n.op for n in g.as_graph_def().node}
    return g, x, out


@pytest.mark.parametrize("api", ["TrtGraphConverter", "TrtGraphConverterV2"])
def test_calibration_of_a_graph_with_tf1_control_flow(api, tmp_path, monkeypatch, caplog):
    """A TF1 tf.cond (Switch / Merge) with an engine in each branch: a calibration run cannot
    fetch the dead inputs of the branch not taken (TF1 calibrate() failed; V2's pruned
    function gave them empty and the engine build failed). The reached engines are
    calibrated, the other gets no ranges (FP16 layers) with a warning naming it; results
    match TF."""
    from tensorflow.python.ops import control_flow_util
    monkeypatch.setattr(control_flow_util, "ENABLE_CONTROL_FLOW_V2", False)
    g, x, out = _tf1_cond_graph()
    monkeypatch.undo()
    data = [np.random.RandomState(k).randn(4, 8).astype(np.float32) for k in range(3)]
    with caplog.at_level(logging.WARNING, logger="tftrt.calibration"):
        if api == "TrtGraphConverter":
            conv = trt.TrtGraphConverter(input_graph_def=g.as_graph_def(),
                                         nodes_denylist=["out"], precision_mode="INT8",
                                         minimum_segment_size=2, is_dynamic_op=True)
            conv.convert()
            feeds = iter(data[:2])
            converted = conv.calibrate(["out:0"], 2, feed_dict_fn=lambda: {"x:0": next(feeds)})
            got, _ = models.session_run(converted, data[2])
            ops = conv._result.engine_ops
        else:
            path = str(tmp_path / "tf1_cond")
            with tf.compat.v1.Session(graph=g) as sess:
                builder = tf.compat.v1.saved_model.Builder(path)
                builder.add_meta_graph_and_variables(sess, ["serve"], signature_def_map={
                    "serving_default": tf.compat.v1.saved_model.predict_signature_def(
                        {"x": x}, {"out": out})})
                builder.save()
            conv = trt.TrtGraphConverterV2(input_saved_model_dir=path, precision_mode="INT8",
                                           minimum_segment_size=2)
            fn = conv.convert(calibration_input_fn=lambda: iter([(d,) for d in data[:2]]))
            got = fn(x=tf.constant(data[2]))["out"].numpy()
            ops = conv.engine_ops
    unreached = [op for op in ops.values() if op.quantization["batches"] == 0]
    assert len(unreached) == 1 and len(ops) == 4
    assert f"{unreached[0].name}: no calibration batch reached it (it lies in a branch of " \
           f"the graph's control flow that the calibration data never took)" in caplog.text
    want, _ = models.session_run(g.as_graph_def(), data[2])
    assert _rel(got, want) < 0.02


# --- quantization-aware models: fake quantization coarser than INT8 -----------------------------

def _qat_module(kind, bits):
    """QDQ / FakeQuant to ``bits`` over [-2, 2] -> conv -> relu -> mean -> dense."""
    rng = np.random.RandomState(0)
    w1 = tf.constant(rng.randn(3, 3, 3, 8).astype(np.float32) * 0.4)
    wd = tf.constant(rng.randn(8, 4).astype(np.float32))

    class Qat(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 6, 6, 3], tf.float32, name="x")])
        def __call__(self, x):
            if kind == "fake_quant":
                x = tf.quantization.fake_quant_with_min_max_vars(x, -2.0, 2.0, num_bits=bits)
            else:  # qdq_dynamic: TF computes the scale from the data's own range
                x = tf.quantization.quantize_and_dequantize_v2(
                    x, -2.0, 2.0, range_given=kind == "qdq", num_bits=bits)
            x = tf.reduce_mean(tf.nn.relu(tf.nn.conv2d(x, w1, 1, "SAME")), [1, 2])
            return tf.identity(tf.matmul(x, wd), name="output")
    return Qat()


@pytest.mark.parametrize("kind,bits", [("fake_quant", 4), ("qdq", 4), ("qdq", 8),
                                       ("qdq_dynamic", 4)])
def test_fake_quantization_coarser_than_int8_is_kept(tmp_path, kind, bits):
    module = _qat_module(kind, bits)
    path = models.save_module(module, str(tmp_path / "qat"))
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=path, precision_mode="INT8",
                                   use_calibration=False)
    fn = conv.convert()
    # qdq_dynamic: the INT8 layer takes the op's constant range, as TF-TRT did, while TF
    # scales by the data's own: data inside the range keeps the two alike
    lim = 2.0 if kind == "qdq_dynamic" else 2.5
    x = np.random.RandomState(1).uniform(-lim, lim, (4, 6, 6, 3)).astype(np.float32)
    (got,) = fn(tf.constant(x)).values()
    want = module(tf.constant(x)).numpy()
    (op,) = conv.engine_ops.values()
    ((_, engine),) = op.cache.items()
    (layer,) = [l for l in engine.network.layers if l.kind == "conv"]
    assert layer.precision == "INT8"
    # an 8-bit op folds into the INT8 conv; a 4-bit one stays (its 16 levels are what the
    # model was trained with), and the conv reads its output, over its whole range
    assert bool(layer.attrs["quant"].get("folded")) == (bits == 8)
    assert _rel(got.numpy(), want) < 0.006


@pytest.mark.parametrize("op", ["qdq_unsigned", "qdq_unsigned_negative_min", "fake_quant_0_1",
                                "lopsided"])
def test_a_lopsided_fake_quant_range_keeps_its_clamp(tmp_path, op):
    """An unsigned QDQ or a [0, 1] / [-1, 3] FakeQuant on signed data: folding made the range
    symmetric ([-1, 1]), so negatives passed the op's clamp (relative error 1.05 in the hunt).
    Such an op stays and is computed as TF does; the conv still runs INT8 on its output. An
    unsigned QDQ given [-4, 4] clamps to [0, 4] in TF: it was tagged -4..4 and folded
    (relative error 0.88, helper hunt 2026-12-02)."""
    w = tf.constant(np.random.RandomState(1).randn(3, 3, 3, 8).astype(np.float32))

    class Qdq(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 3], tf.float32, name="x")])
        def __call__(self, x):
            if op == "qdq_unsigned":
                x = tf.raw_ops.QuantizeAndDequantizeV4(input=x, input_min=0.0, input_max=1.0,
                                                       range_given=True, signed_input=False)
            elif op == "qdq_unsigned_negative_min":
                x = tf.raw_ops.QuantizeAndDequantizeV4(input=x, input_min=-4.0, input_max=4.0,
                                                       range_given=True, signed_input=False)
            elif op == "fake_quant_0_1":
                x = tf.quantization.fake_quant_with_min_max_vars(x, 0.0, 1.0)
            else:
                x = tf.quantization.fake_quant_with_min_max_vars(x, -1.0, 3.0)
            return tf.identity(tf.nn.conv2d(x, w, 1, "SAME"), name="output")
    module = Qdq()
    path = models.save_module(module, str(tmp_path / "qdq"))
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=path, precision_mode="INT8",
                                   use_calibration=False, minimum_segment_size=1)
    fn = conv.convert()
    x = np.random.RandomState(0).uniform(-2, 4, (2, 8, 8, 3)).astype(np.float32)
    (got,) = fn(tf.constant(x)).values()
    want = module(tf.constant(x)).numpy()
    (op_,) = conv.engine_ops.values()
    assert op_.stats["engine"] == 1 and not op_.stats["native"]
    ((_, engine),) = op_.cache.items()
    (layer,) = [l for l in engine.network.layers if l.kind == "conv"]
    assert layer.precision == "INT8" and not layer.attrs["quant"].get("folded")
    assert _rel(got.numpy(), want) < 0.02


def test_int8_gemm_by_hand_rounds_half_to_even_and_saturates_at_127(tmp_path):
    """A narrow-range QDQ over +-127/64 (scale 1/64, what TF's op and the INT8 layer both use)
    before a dense layer with int8-exact weights (max |w| of each column 127: weight scale 1):
    the engine's integer arithmetic equals TF's float result exactly, ties round to even
    (0.5 -> 0, 2.5 -> 2, not away from zero) and 192 saturates to 127, -192 to -127."""
    w = np.array([[127, 1], [1, 2], [1, -3], [127, 1], [1, 5], [1, 127]], np.float32)

    class Dense(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 6], tf.float32, name="x")])
        def __call__(self, x):
            x = tf.quantization.quantize_and_dequantize_v2(
                x, -127 / 64, 127 / 64, range_given=True, narrow_range=True)
            return tf.identity(tf.matmul(x, w), name="output")
    module = Dense()
    path = models.save_module(module, str(tmp_path / "dense"))
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=path, precision_mode="INT8",
                                   use_calibration=False, minimum_segment_size=1)
    fn = conv.convert()
    u = np.array([[0.5, 1.5, 2.5, -0.5, 192, -192], [-1.5, -2.5, 3.5, 126.5, -0.4, 0.6]])
    (got,) = fn(tf.constant((u / 64).astype(np.float32))).values()
    q = np.array([[0, 2, 2, 0, 127, -127], [-2, -2, 4, 126, 0, 1]], np.float32)
    np.testing.assert_array_equal(got.numpy(), q @ w / 64)
    np.testing.assert_array_equal(got.numpy(), module(tf.constant(u / 64, tf.float32)).numpy())
    (op,) = conv.engine_ops.values()
    ((_, engine),) = op.cache.items()
    (layer,) = [l for l in engine.network.layers if l.kind == "matmul"]
    assert layer.precision == "INT8" and layer.attrs["quant"]["input_scale"] == 1 / 64


# --- TF1 frozen GraphDefs ----------------------------------------------------------------------

def _graph_with_variable(use_resource, used=True):
    rng = np.random.RandomState(0)
    g = tf.Graph()
    with g.as_default():
        x = tf.compat.v1.placeholder(tf.float32, (None, 8), name="x")
        v = tf.compat.v1.Variable(rng.randn(8, 8).astype(np.float32), name="v",
                                  use_resource=use_resource)
        w = v if used else tf.constant(rng.randn(8, 8).astype(np.float32))
        tf.identity(tf.tanh(tf.nn.relu(tf.matmul(x, w)) * 2.0 + 1.0), name="out")
    return g.as_graph_def()


@pytest.mark.parametrize("use_resource", [True, False])
def test_a_graph_def_with_variables_is_refused_clearly(use_resource):
    conv = trt.TrtGraphConverter(input_graph_def=_graph_with_variable(use_resource),
                                 nodes_denylist=["out"], minimum_segment_size=2)
    op = "VarHandleOp" if use_resource else "VariableV2"
    with pytest.raises(ValueError, match=rf"input_graph_def holds variable\(s\) \['v'\] \(ops "
                                         rf"\['{op}'\]\); TrtGraphConverter takes a frozen "
                                         rf"GraphDef: freeze it first with tf.compat.v1"):
        conv.convert()
    # a variable the outputs do not read is pruned away with the rest: no error
    gd = _graph_with_variable(use_resource, used=False)
    converted = trt.TrtGraphConverter(input_graph_def=gd, nodes_denylist=["out"],
                                      minimum_segment_size=2, is_dynamic_op=True).convert()
    x = np.random.RandomState(2).randn(3, 8).astype(np.float32)
    frozen = tf.compat.v1.GraphDef()
    frozen.node.extend(n for n in gd.node if not n.name.startswith("v"))
    np.testing.assert_allclose(models.session_run(converted, x)[0],
                               models.session_run(frozen, x)[0], rtol=1e-5, atol=1e-6)


def test_nodes_denylist_names_missing_from_a_saved_model_are_said(tmp_path, caplog):
    path = models.save_module(models.MLP(), str(tmp_path / "mlp"))
    with caplog.at_level(logging.WARNING, logger="tftrt.convert"):
        conv = trt.TrtGraphConverter(input_saved_model_dir=path, nodes_denylist=["nope"],
                                     is_dynamic_op=True)
        conv.convert()
    assert "nodes_denylist names node(s) ['nope'] that are not in the SavedModel signature's " \
           "graph (frozen, after Grappler's clean-ups); they are ignored" in caplog.text
    (tanh,) = [n.name for n in conv._info.graph_def.node if n.op == "Tanh"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tftrt.convert"):
        conv = trt.TrtGraphConverter(input_saved_model_dir=path, nodes_denylist=[tanh],
                                     is_dynamic_op=True)
        conv.convert()
    assert "nodes_denylist" not in caplog.text
    assert conv._result.segmentation.rejected[tanh] == "in nodes_denylist"


def test_static_batch_above_max_batch_size_builds_no_engine(caplog):
    gd = frozen_graph(shape=(8, 8))
    conv = trt.TrtGraphConverter(input_graph_def=gd, nodes_denylist=["out"], max_batch_size=4,
                                 minimum_segment_size=2)
    with caplog.at_level(logging.WARNING, logger="tftrt.convert"):
        converted = conv.convert()
    assert "TRTEngineOp_000_000: its inputs have the static batch size 8, larger than " \
           "max_batch_size=4, so an engine could never run: none is built and the segment " \
           "runs natively (give max_batch_size=8 to build it)" in caplog.text
    nodes = [n for n in converted.node if activation.SPEC_ATTR in n.attr]
    assert len(nodes) == 2 and not any(n.attr[activation.PLANS_ATTR].list.s for n in nodes)
    x = np.random.RandomState(1).randn(8, 8).astype(np.float32)
    got, g = models.session_run(converted, x)
    np.testing.assert_allclose(got, models.session_run(gd, x)[0], rtol=1e-5, atol=1e-6)
    assert [(op.stats["native"], op.stats["builds"]) for op in bound_engine_ops(g)] == \
        [(1, 0), (1, 0)]


@pytest.mark.parametrize("denylist", [["pre_out"], ["x"]])
def test_denylisting_a_node_before_the_output_keeps_the_output(denylist):
    gd = frozen_graph()
    conv = trt.TrtGraphConverter(input_graph_def=gd, nodes_denylist=denylist,
                                 minimum_segment_size=2, is_dynamic_op=True)
    converted = conv.convert()
    assert conv._info.outputs == [f"{denylist[0]}:0", "out:0"]
    x = np.random.RandomState(1).randn(3, 8).astype(np.float32)
    got, g = models.session_run(converted, x)  # fetches out:0
    np.testing.assert_allclose(got, models.session_run(gd, x)[0], rtol=1e-5, atol=1e-6)
    assert all(op.stats["engine"] == 1 for op in bound_engine_ops(g))
    if denylist == ["pre_out"]:
        assert conv._result.segmentation.rejected["pre_out"] == "in nodes_denylist"


# --- INT8 accuracy of a trained model through the TF1 API (static engine) -----------------------

def test_tf1_static_int8_engine_of_a_trained_cnn_keeps_its_predictions():
    """A small CNN trained on learnable patterns (97 % accuracy), frozen, converted with
    max_batch_size=64 and calibrated on 8 batches; 500 test samples served in batches of 50
    (below the engine's batch): top-1 agrees with FP32 TensorFlow on >= 98 % of them, accuracy
    drops by at most 1 point, every conv / GEMM runs INT8, nothing runs natively."""
    from tensorflow.python.framework import convert_to_constants
    tf.keras.utils.set_random_seed(0)
    xtr, ytr = pattern_data(3000, seed=1)
    xte, yte = pattern_data(500, seed=2)
    inp = tf.keras.Input((12, 12, 1), name="image")
    x = L.Conv2D(8, 3, padding="same", activation="relu")(inp)
    x = L.Conv2D(16, 3, padding="same", activation="relu")(L.MaxPool2D()(x))
    model = train(tf.keras.Model(inp, L.Dense(10)(L.GlobalAveragePooling2D()(x))), xtr, ytr, 6)
    fn = tf.function(model).get_concrete_function(
        tf.TensorSpec([None, 12, 12, 1], tf.float32, name="image"))
    frozen = convert_to_constants.convert_variables_to_constants_v2(fn)
    gd = frozen.graph.as_graph_def()
    out, image = frozen.outputs[0].name, frozen.inputs[0].name

    def predict(graph_def):
        g = tf.Graph()
        with g.as_default():
            tf.graph_util.import_graph_def(graph_def, name="")
            with tf.compat.v1.Session(graph=g) as sess:
                return np.concatenate([sess.run(out, {image: xte[k:k + 50]})
                                       for k in range(0, 500, 50)]), g
    fp32, _ = predict(gd)
    conv = trt.TrtGraphConverter(input_graph_def=gd, nodes_denylist=[out.split(":")[0]],
                                 precision_mode="INT8", max_batch_size=64)
    conv.convert()
    feeds = iter([xtr[k:k + 64] for k in range(0, 512, 64)])
    got, g = predict(conv.calibrate([out], 8, feed_dict_fn=lambda: {image: next(feeds)}))
    (op,) = [o for o in g._py_funcs_used_in_graph if isinstance(o, QuantizedEngineOp)]
    assert (op.stats["engine"], op.stats["native"], op.stats["builds"]) == (10, 0, 0)
    ((_, engine),) = op.cache.items()
    assert [l.precision for l in engine.network.layers if l.kind in Q.GEMM_KINDS] == \
        ["INT8"] * 3
    fp32_acc = (fp32.argmax(1) == yte).mean()
    assert fp32_acc > 0.9
    assert (got.argmax(1) == fp32.argmax(1)).mean() >= 0.98
    assert (got.argmax(1) == yte).mean() >= fp32_acc - 0.01


@pytest.mark.parametrize("batches", [(2, 6), (6, 2)])
def test_max_batch_size_applies_to_every_input_not_only_the_first(caplog, batches):
    """Two inputs of batches 2 and 6 under max_batch_size=4 (static mode): the call's batch
    is 6, so the segment runs natively (TF-TRT's rule), not a runtime build for a batch over
    the limit (only the first input's batch was checked)."""
    g = tf.Graph()
    with g.as_default():
        a = tf.compat.v1.placeholder(tf.float32, [None, 4], name="a")
        b = tf.compat.v1.placeholder(tf.float32, [None, 4], name="b")
        w = tf.constant(np.random.RandomState(0).randn(4, 4).astype(np.float32))
        s = tf.reduce_sum(tf.nn.relu(tf.matmul(a, w)), 0) + \
            tf.reduce_sum(tf.nn.relu(tf.matmul(b, w)), 0)
        tf.identity(s, name="out")
    gd = g.as_graph_def()
    conv = trt.TrtGraphConverter(input_graph_def=gd, nodes_denylist=["out"], max_batch_size=4,
                                 minimum_segment_size=2, is_dynamic_op=False)
    converted = conv.convert()
    rng = np.random.RandomState(1)
    feeds = {"a:0": rng.randn(batches[0], 4).astype(np.float32),
             "b:0": rng.randn(batches[1], 4).astype(np.float32)}
    outs = []
    for graph_def in (converted, gd):
        g2 = tf.Graph()
        with g2.as_default(), caplog.at_level(logging.INFO, logger="tftrt"):
            tf.graph_util.import_graph_def(graph_def, name="")
            with tf.compat.v1.Session(graph=g2) as sess:
                outs.append(sess.run("out:0", feed_dict=feeds))
        if graph_def is converted:
            ops = bound_engine_ops(g2)
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-5, atol=1e-5)
    assert ops and [(op.stats["native"], op.stats["builds"]) for op in ops] == \
        [(1, 0)] * len(ops)
    assert "batch 6 is larger than max_batch_size=4" in caplog.text, caplog.text[-2000:]
