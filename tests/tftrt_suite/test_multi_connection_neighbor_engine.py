"""Port of TF-TRT's multi_connection_neighbor_engine_test.py over TF-TRT's whole run matrix.

test_neighboring_engine.py runs this graph once (V2, FP32, implicit batch, ``lgamma`` as the
native op). TF-TRT's base class ran every test class in more configurations; this file ports
the ones TF-TRT ran for MultiConnectionNeighborEngineTest that make sense here:

  * V2 (TrtGraphConverterV2): FP32 and FP16, each with implicit batch (an engine per shape)
    and with dynamic shape (build(), profiles, save, tftrt.load). TF-TRT's V2 INT8 runs had
    no calibration and ShouldRunTest skipped them.
  * V1 (TrtGraphConverter, offline): FP32 and FP16 with static and with dynamic engines, and
    INT8 calibrated with dynamic engines (TF-TRT's only calibrated configuration), with
    _VerifyGraphDefV1's checks on the engine nodes of the converted GraphDef. TF-TRT's
    online conversion (a Grappler rewriter config in a Session) has no tftrt counterpart:
    see test_trt_convert_more.py::test_online_conversion.

The graph is TF-TRT's, with TF-TRT's ``erfc`` as the native op: tftrt converts Erfc, so
``TF_TRT_OP_DENYLIST=Erfc`` keeps it native during conversion, as TF-TRT's converter left it.
(The suite's usual stand-in, ``lgamma``, has poles: here ``conv - bias`` crosses -4 in one
channel, where lgamma turns INT8 / FP16 rounding of the engine's output into large errors.)
TF's CPU kernels have no NCHW Conv2D without oneDNN, so the reference runs the same math
through the NHWC kernel (``reference_fn``)."""

import functools
import json

import numpy as np
import onnx
import pytest
import tensorflow as tf

import tftrt
from tests.tftrt_suite import base
from tests.tolerances import TOLERANCES
from tftrt import activation, rewrite, trt_convert as trt
from tftrt.engine import quantization

INPUT_SHAPE = [2, 3, 7, 5]
OUTPUT_SHAPE = [2, 4, 5, 4]
EXPECTED = ["TRTEngineOp_000", "TRTEngineOp_001"]  # TF-TRT's ExpectedEnginesToBuild


def multi_connection(x, reference=False):
    """TF-TRT's GraphFn, its np.random constants seeded."""
    rng = np.random.RandomState(0)
    e = tf.constant(rng.normal(0.05, 0.005, [3, 2, 3, 4]), tf.float32, name="weights")
    conv = base.conv2d_nchw(x, e, padding="VALID", reference=reference, name="conv")
    b = tf.constant(rng.normal(2.0, 1.0, [1, 4, 1, 1]), tf.float32, name="bias")
    t = conv + b
    b = tf.constant(rng.normal(5.0, 1.0, [1, 4, 1, 1]), tf.float32, name="bias")
    q = conv - b
    edge = tf.math.erfc(q)
    b = tf.constant(rng.normal(5.0, 1.0, [1, 4, 1, 1]), tf.float32, name="bias")
    d = b + conv
    edge3 = tf.math.erfc(d)
    edge1 = tf.math.erfc(conv)
    t = t - edge1
    q = q + edge
    t = t + q
    t = t + d
    t = t - edge3
    return tf.squeeze(t, name="output_0")


REFERENCE = functools.partial(multi_connection, reference=True)


@functools.lru_cache(maxsize=None)
def native_nchw_conv() -> bool:
    """Whether TF's CPU kernels run an NCHW Conv2D (with oneDNN; without it they raise)."""
    try:
        tf.nn.conv2d(tf.zeros([1, 1, 2, 2]), tf.zeros([1, 1, 1, 1]), 1, "VALID",
                     data_format="NCHW")
        return True
    except tf.errors.UnimplementedError:
        return False


def needs_native_run(what):
    """``what`` runs the graph's NCHW convolution natively in TensorFlow (documented, see the
    callers); TF's CPU kernels cannot without oneDNN."""
    if not native_nchw_conv():
        pytest.skip(f"{what} runs the NCHW Conv2D natively, which TF's CPU kernels lack "
                    f"without oneDNN (TF_ENABLE_ONEDNN_OPTS=0)")


@pytest.fixture(autouse=True)
def erfc_native(monkeypatch):
    monkeypatch.setenv("TF_TRT_OP_DENYLIST", "Erfc")


def case(precision):
    return base.Case(multi_connection, [INPUT_SHAPE], EXPECTED, output_shapes=[OUTPUT_SHAPE],
                     reference_fn=REFERENCE, conversion=dict(precision_mode=precision))


def native_op_types(conv):
    """The op types of the signature's computing nodes that no engine holds."""
    info = conv.graph_info
    inside = {n for s in conv.segmentation.segments for n in s.nodes + s.consts}
    return sorted(info.nodes[n].op for n in info.nodes if n not in inside and
                  info.nodes[n].op not in ("Placeholder", "Identity", "Const", "NoOp"))


# --- V2 ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("precision", ["FP32", "FP16"])
def test_v2_implicit_batch(precision, tmp_path_factory):
    c = case(precision)
    conv = base.run_v2(c, base.saved(tmp_path_factory, c, f"mc_{precision}"))
    # the three erfc ops and the output Squeeze stay native; everything else is in engines
    assert native_op_types(conv) == ["Erfc", "Erfc", "Erfc", "Squeeze"]
    assert {op.spec.precision_mode for op in conv.engine_ops.values()} == {precision}


@pytest.mark.parametrize("precision", ["FP32", "FP16"])
def test_v2_dynamic_shape(precision, tmp_path_factory):
    # build() runs the inputs natively to collect the shapes when an engine's inputs are not
    # all signature inputs, as TF-TRT did (docs/differences.md, "dynamic shape profiles")
    needs_native_run("build() with use_dynamic_shape")
    c = case(precision)
    conv, loaded_ops = base.run_v2_dynamic(
        c, base.saved(tmp_path_factory, c, f"mc_dyn_{precision}"),
        str(tmp_path_factory.mktemp("tftrt_suite") / f"mc_dyn_{precision}_out"),
        profiles={name: 1 for name in EXPECTED})
    # TF-TRT's _VerifyGraphDefV2 (dynamic shape): every engine op carries the strategy
    for ops in (conv.engine_ops, loaded_ops):
        assert sorted(base.engine_name(n) for n in ops) == sorted(
            base.engine_name(n) for n in EXPECTED)
        for op in ops.values():
            assert op.spec.use_dynamic_shape
            assert op.spec.profile_strategy.lower() == "implicitbatchmodecompatible"
            assert op.spec.precision_mode == precision


# --- V1 ---------------------------------------------------------------------------------------

def write_tf1_saved_model(path):
    """TF-TRT's _MakeSavedModelV1: placeholders named by the input specs, the signature keyed
    by the op names."""
    g = tf.Graph()
    with g.as_default():
        inp = tf.compat.v1.placeholder(tf.float32, [None] + INPUT_SHAPE[1:], name="input_0")
        out = multi_connection(inp)
        info = tf.compat.v1.saved_model.utils.build_tensor_info
        sig = tf.compat.v1.saved_model.signature_def_utils.build_signature_def(
            inputs={inp.op.name: info(inp)}, outputs={out.op.name: info(out)},
            method_name="tensorflow/serving/predict")
        builder = tf.compat.v1.saved_model.Builder(path)
        with tf.compat.v1.Session(graph=g) as sess:
            builder.add_meta_graph_and_variables(sess, ["serve"],
                                                 signature_def_map={"serving_default": sig})
    builder.save()
    return path


def quantization_table(node):
    return quantization.table_from_model(
        onnx.load_from_string(node.attr[activation.ONNX_ATTR].s))


def verify_graph_def_v1(gd, precision, dynamic_engine, use_calibration, calibrated):
    """TF-TRT's _VerifyGraphDefV1, on tftrt's engine nodes (``_tftrt_*`` attributes:
    docs/differences.md, "TF1 GraphDefs")."""
    functions = [f.signature.name for f in gd.library.function]
    engines = [n for n in gd.node if rewrite.ENGINE_ATTR in n.attr]
    assert sorted(base.engine_name(n.name) for n in engines) == sorted(
        base.engine_name(n) for n in EXPECTED)
    for node in engines:
        spec = json.loads(node.attr[activation.SPEC_ATTR].s)
        # the native segment function: TF-TRT's <engine>_native_segment, plus a digest of its
        # body here (docs/architecture.md)
        assert node.attr["f"].func.name in functions
        assert node.attr["f"].func.name.startswith(node.name + "_native_segment"), node.name
        plans = list(node.attr[activation.PLANS_ATTR].list.s) \
            if activation.PLANS_ATTR in node.attr else []
        if not dynamic_engine and not (precision == "INT8" and use_calibration):
            assert plans, f"{node.name}: a static engine carries its serialized engine"
        if dynamic_engine:
            assert not plans, f"{node.name}: a dynamic engine is built at run time"
        assert spec["precision_mode"] == precision, node.name
        # static_engine: TF1 static engines carry the max batch size they serve
        assert (spec["max_batch_size"] is None) == dynamic_engine, node.name
        table = quantization_table(node)
        if precision == "INT8" and use_calibration and calibrated:
            assert table is not None and table["source"] == "calibration", node.name
            assert table["batches"] == 5  # calibrate(num_runs=5)
        else:
            assert table is None, f"{node.name} has calibration data before calibration"


def run_graph_def(gd, x):
    """TF-TRT's _RunGraphV1 on the converted GraphDef: every input twice; returns the output
    and the engine ops the session's graph bound."""
    with tf.Graph().as_default() as g:
        tf.graph_util.import_graph_def(gd, name="")
        with tf.compat.v1.Session(graph=g) as sess:
            outs = [sess.run("output_0:0", {"input_0:0": x}) for _ in range(2)]
            ops = [o for o in g._py_funcs_used_in_graph if hasattr(o, "stats")]
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-5, atol=1e-5)
    return outs[1], ops


@pytest.mark.parametrize("precision,dynamic_engine,use_calibration", [
    ("FP32", True, False), ("FP32", False, False),
    ("FP16", True, False), ("FP16", False, False),
    ("INT8", True, True)])
def test_v1_offline_conversion(precision, dynamic_engine, use_calibration, tmp_path):
    if use_calibration:  # docs/differences.md, "INT8 and FP8": calibration computes the
        # engines' inputs from the native graph (TF-TRT ran its calibration engines)
        needs_native_run("INT8 calibration")
    src = write_tf1_saved_model(str(tmp_path / "in"))
    x = np.random.RandomState(12345).random_sample(INPUT_SHAPE).astype(np.float32)
    ref = tf.function(REFERENCE)(tf.constant(x)).numpy()
    conv = trt.TrtGraphConverter(
        input_saved_model_dir=src, max_batch_size=None if dynamic_engine else INPUT_SHAPE[0],
        max_workspace_size_bytes=1 << 25, precision_mode=precision, minimum_segment_size=2,
        is_dynamic_op=dynamic_engine, maximum_cached_engines=1,
        use_calibration=use_calibration)
    gd = conv.convert()
    verify_graph_def_v1(gd, precision, dynamic_engine, use_calibration, calibrated=False)
    if precision == "INT8" and use_calibration:
        gd = conv.calibrate(fetch_names=["output_0:0"], num_runs=5,
                            feed_dict_fn=lambda: {"input_0:0": x})
        verify_graph_def_v1(gd, precision, dynamic_engine, use_calibration, calibrated=True)
    out, ops = run_graph_def(gd, x)
    assert list(out.shape) == OUTPUT_SHAPE
    rtol, atol = TOLERANCES[precision]
    np.testing.assert_allclose(out, ref, rtol=rtol, atol=atol)
    assert len(ops) == 2
    for op in ops:
        assert op.stats["engine"] == 2 and op.stats["native"] == 0, dict(op.stats)
        # static engines were built by convert(); dynamic ones at the first call
        assert op.stats["builds"] == (1 if dynamic_engine else 0), dict(op.stats)
    # TF-TRT also ran the saved model: tftrt's TF1 save writes a TF2 SavedModel whose engines
    # tftrt.load binds (a TF1 Session would run it natively: docs/differences.md)
    conv.save(str(tmp_path / "out"))
    loaded = tftrt.load(str(tmp_path / "out"))
    got = loaded.signatures["serving_default"](input_0=tf.constant(x))
    assert list(got) == ["output_0"]
    np.testing.assert_allclose(got["output_0"].numpy(), ref, rtol=rtol, atol=atol)
    assert len(loaded.engine_ops) == 2
    for op in loaded.engine_ops.values():
        assert op.stats["engine"] == 1 and op.stats["native"] == 0, dict(op.stats)
