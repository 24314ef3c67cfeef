"""The TF-TRT V2 workflow end to end on CPU (engines on the numpy backend)."""

import io
import os

import numpy as np
import pytest
import tensorflow as tf

import tftrt
from tftrt import trt_convert as trt
from tests.integration import models
from tests.tolerances import MODEL_TOLERANCES


@pytest.fixture(scope="module")
def mlp_dir(tmp_path_factory):
    return models.save_module(models.MLP(), str(tmp_path_factory.mktemp("m") / "mlp"))


def native(path):
    return tf.saved_model.load(path).signatures["serving_default"]


def assert_outputs_close(got, ref, precision="FP32"):
    rtol, atol = MODEL_TOLERANCES[precision]
    assert sorted(got) == sorted(ref)
    for k in ref:
        np.testing.assert_allclose(got[k].numpy(), ref[k].numpy(), rtol=rtol, atol=atol,
                                   err_msg=k)


def test_params_namedtuple_has_tf_trt_fields_and_defaults():
    p = trt.DEFAULT_TRT_CONVERSION_PARAMS
    assert p._fields == ("max_workspace_size_bytes", "precision_mode", "minimum_segment_size",
                         "maximum_cached_engines", "use_calibration", "allow_build_at_runtime")
    assert (p.precision_mode, p.minimum_segment_size, p.maximum_cached_engines,
            p.use_calibration, p.allow_build_at_runtime) == ("FP32", 3, 1, True, True)
    assert set(trt.TrtPrecisionMode.supported_precision_modes()) >= {"FP32", "fp16", "INT8"}


def test_convert_build_summary_save_load(mlp_dir, tmp_path):
    params = trt.DEFAULT_TRT_CONVERSION_PARAMS._replace(minimum_segment_size=2,
                                                        maximum_cached_engines=4)
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=mlp_dir, conversion_params=params)
    fn = conv.convert()
    x = models.batch((4, 8))
    ref = native(mlp_dir)(x=tf.constant(x))
    out = fn(x=tf.constant(x))
    assert_outputs_close(out, ref)
    ops = conv.engine_ops
    # The string round trip in the middle splits the graph: two engines.
    assert sorted(ops) == ["TRTEngineOp_000_000", "TRTEngineOp_000_001"]
    assert all(op.stats["engine"] >= 1 and op.stats["native"] == 0 for op in ops.values())
    conv.build(input_fn=lambda: iter([(x,), (models.batch((1, 8)),)]))
    assert all(len(op.cache) == 2 for op in ops.values())

    buf = io.StringIO()
    conv.summary(print_fn=lambda s: buf.write(s + "\n"))
    text = buf.getvalue()
    assert "TRTEngineOp_000_000" in text and "TRTEngineOp_000_001" in text
    assert "[*] Total number of TensorRT engines: 2" in text
    assert "- MatMul: 1x" in text and "AsString" in text
    assert "% of OPs Converted:" in text

    out_dir = str(tmp_path / "converted")
    conv.save(out_dir)
    assert os.path.isfile(os.path.join(out_dir, "assets", "tftrt", "manifest.json"))

    loaded = tftrt.load(out_dir)
    got = loaded.signatures["serving_default"](x=tf.constant(x))
    assert_outputs_close(got, ref)
    # Plans were restored: no engine was built on load or on the first call.
    assert sum(op.stats["builds"] for op in loaded.engine_ops.values()) == 0
    assert all(op.stats["engine"] >= 1 for op in loaded.engine_ops.values())

    plain = tf.saved_model.load(out_dir).signatures["serving_default"]
    assert_outputs_close(plain(x=tf.constant(x)), ref)
    # The plain SavedModel keeps the engine nodes as calls of their native segments.
    fns = {f.signature.name for f in plain.graph.as_graph_def().library.function}
    assert any("TRTEngineOp_000_000_native_segment" in f for f in fns)


def test_save_without_engines_rebuilds_on_load(mlp_dir, tmp_path):
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=mlp_dir, minimum_segment_size=2)
    conv.convert()
    x = models.batch((3, 8))
    conv.build(lambda: iter([(x,)]))
    conv.save(str(tmp_path / "o"), save_gpu_specific_engines=False)
    loaded = tftrt.load(str(tmp_path / "o"))
    ref = native(mlp_dir)(x=tf.constant(x))
    assert_outputs_close(loaded.signatures["serving_default"](x=tf.constant(x)), ref)
    assert sum(op.stats["builds"] for op in loaded.engine_ops.values()) == 2


def test_lru_eviction(mlp_dir):
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=mlp_dir, minimum_segment_size=2,
                                   maximum_cached_engines=2)
    fn = conv.convert()
    op = conv.engine_ops["TRTEngineOp_000_000"]
    for b in (1, 2, 3):
        fn(x=tf.constant(models.batch((b, 8))))
    assert op.cache.keys() == [((2, 8),), ((3, 8),)]
    fn(x=tf.constant(models.batch((2, 8))))   # hit: 2 becomes most recent
    fn(x=tf.constant(models.batch((4, 8))))   # miss: evicts 3
    assert op.cache.keys() == [((2, 8),), ((4, 8),)]
    assert op.stats["builds"] == 4


def test_no_build_at_runtime_falls_back_to_native(mlp_dir, caplog):
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=mlp_dir, minimum_segment_size=2,
                                   allow_build_at_runtime=False)
    fn = conv.convert()
    x = models.batch((2, 8))
    with caplog.at_level("WARNING", logger="tftrt.engine_op"):
        out = fn(x=tf.constant(x))
        fn(x=tf.constant(x))
    assert_outputs_close(out, native(mlp_dir)(x=tf.constant(x)))
    op = conv.engine_ops["TRTEngineOp_000_000"]
    assert op.stats["native"] == 2 and op.stats["engine"] == 0
    msgs = [r.message for r in caplog.records if "TRTEngineOp_000_000" in r.message]
    assert len(msgs) == 1 and "allow_build_at_runtime=False" in msgs[0]  # logged once


def test_a_shape_whose_engine_build_made_was_evicted_says_so(mlp_dir, caplog):
    """Static engines, maximum_cached_engines 2, build() at batches 4, 2, 6: batch 4's engine
    goes. A call at batch 4 runs natively (right answer) and said "call converter.build()
    with these shapes before save()", which the user had done (cache hunt, s49); it now names
    the eviction and the setting. An unseen batch keeps the advice to build it."""
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=mlp_dir, minimum_segment_size=2,
                                   maximum_cached_engines=2, allow_build_at_runtime=False)
    fn = conv.convert()
    conv.build(lambda: iter([(models.batch((b, 8)),) for b in (4, 2, 6)]))
    op = conv.engine_ops["TRTEngineOp_000_000"]
    assert op.cache.keys() == [((2, 8),), ((6, 8),)]
    ref = native(mlp_dir)
    for b in (4, 3):
        x = tf.constant(models.batch((b, 8)))
        with caplog.at_level("WARNING", logger="tftrt.engine_op"):
            assert_outputs_close(fn(x=x), ref(x=x))
    msgs = [r.message for r in caplog.records
            if r.message.startswith("TRTEngineOp_000_000 runs its native segment")]
    assert len(msgs) == 2, msgs
    assert "engine for input shapes ((4, 8),) was built, then evicted from the cache " \
           "(maximum_cached_engines=2)" in msgs[0] and "converter.build()" not in msgs[0], msgs
    assert "no engine for input shapes ((3, 8),)" in msgs[1] and \
           "call converter.build() with these shapes" in msgs[1], msgs
    assert op.stats["native"] == 2 and op.stats["builds"] == 3, op.stats  # build()'s only


def test_failed_build_falls_back_and_env_turns_it_into_error(mlp_dir, monkeypatch):
    import tftrt.engine

    def failing_build(*args, **kwargs):
        raise tftrt.engine.EngineBuildError("no tactic fits (simulated)")
    monkeypatch.setattr(tftrt.engine, "build_engine", failing_build)
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=mlp_dir, minimum_segment_size=2)
    fn = conv.convert()
    x = models.batch((2, 8))
    assert_outputs_close(fn(x=tf.constant(x)), native(mlp_dir)(x=tf.constant(x)))
    assert conv.engine_ops["TRTEngineOp_000_000"].stats["native"] == 1
    monkeypatch.setenv("TF_TRT_ALLOW_ENGINE_NATIVE_SEGMENT_EXECUTION", "0")
    with pytest.raises(Exception, match="native segment execution is disabled"):
        fn(x=tf.constant(x))


def test_minimum_segment_size_minus_one_converts_nothing(mlp_dir):
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=mlp_dir, minimum_segment_size=-1)
    fn = conv.convert()
    assert conv.engine_ops == {}
    x = models.batch((2, 8))
    assert_outputs_close(fn(x=tf.constant(x)), native(mlp_dir)(x=tf.constant(x)))


def test_native_backend_env(mlp_dir, monkeypatch):
    monkeypatch.setenv("TFTRT_BACKEND", "native")
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=mlp_dir, minimum_segment_size=2)
    fn = conv.convert()
    x = models.batch((2, 8))
    assert_outputs_close(fn(x=tf.constant(x)), native(mlp_dir)(x=tf.constant(x)))
    assert all(op.stats["engine"] == 0 for op in conv.engine_ops.values())


def test_two_inputs_keyword_and_dict_input_fn(tmp_path):
    path = models.save_module(models.TwoInputs(), str(tmp_path / "two"))
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=path)
    fn = conv.convert()
    a, b = models.batch((3, 4), 1), models.batch((3, 4), 2)
    ref = native(path)(a=tf.constant(a), b=tf.constant(b))
    assert_outputs_close(fn(a=tf.constant(a), b=tf.constant(b)), ref)
    conv.build(lambda: iter([{"b": b, "a": a}]))
    assert len(conv.engine_ops) == 1
    op = next(iter(conv.engine_ops.values()))
    assert op.stats["engine"] == 2


def test_single_engine_signature_is_called_directly(tmp_path, monkeypatch):
    from tftrt.rewrite import DirectSignature
    path = models.save_module(models.TwoInputs(), str(tmp_path / "two"))
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=path)
    conv.convert()
    a, b = models.batch((3, 4), 1), models.batch((3, 4), 2)
    conv.build(lambda: iter([(a, b)]))
    conv.save(str(tmp_path / "out"))
    loaded = tftrt.load(str(tmp_path / "out"))
    sig = loaded.signatures["serving_default"]
    assert isinstance(sig, DirectSignature)
    ref = native(path)(a=tf.constant(a), b=tf.constant(b))
    assert_outputs_close(sig(a=tf.constant(a), b=tf.constant(b)), ref)
    assert_outputs_close(sig(a=tf.constant(a), b=b), ref)  # numpy inputs too
    with pytest.raises(TypeError, match="keyword arguments only"):  # as plain TF's signature
        sig(tf.constant(a), b=b)
    op = next(iter(loaded.engine_ops.values()))
    assert op.stats["engine"] == 2 and op.stats["builds"] == 0
    # What the loaded signature of plain TF accepts and rejects, with the same error types.
    plain = tf.saved_model.load(str(tmp_path / "out")).signatures["serving_default"]
    for call in (sig, plain):
        for v in (a.astype(np.float64), a.astype(np.int32), a.tolist()):
            assert_outputs_close(call(a=v, b=b), plain(a=tf.constant(v, tf.float32), b=b))
        with pytest.raises(tf.errors.InvalidArgumentError):  # all inputs tensors
            call(a=tf.constant(a, tf.float64), b=tf.constant(b))
        with pytest.raises(TypeError):
            call(a=np.ones((3, 5), np.float32), b=b)
        with pytest.raises(TypeError):
            call(a=[["x"] * 4] * 3, b=b)
    assert op.stats["engine"] == 5
    monkeypatch.setenv("TFTRT_DIRECT_CALL", "0")
    assert not isinstance(tftrt.load(str(tmp_path / "out")).signatures["serving_default"],
                          DirectSignature)


def test_direct_signature_outputs_in_key_order_and_input_errors(tmp_path):
    """Several outputs come back under their own names (the engine's outputs are in the
    signature's sorted-key order); a wrong shape, a missing or an unknown input is an error
    that names the input."""
    from tftrt.rewrite import DirectSignature

    class ThreeOut(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
        def __call__(self, x):
            h = tf.nn.relu(x * 3.0 - 1.0)
            return {"zeta": h + 1.0, "alpha": h * 2.0, "mid": tf.tanh(h)}

    path = models.save_module(ThreeOut(), str(tmp_path / "three"))
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=path, minimum_segment_size=2)
    conv.convert()
    x = models.batch((2, 4), 1)
    conv.build(lambda: iter([(x,)]))
    conv.save(str(tmp_path / "out"))
    loaded = tftrt.load(str(tmp_path / "out"))
    sig = loaded.signatures["serving_default"]
    assert isinstance(sig, DirectSignature)
    got, ref = sig(x=tf.constant(x)), native(path)(x=tf.constant(x))
    assert sorted(got) == ["alpha", "mid", "zeta"]
    for k in ref:
        np.testing.assert_allclose(got[k].numpy(), ref[k].numpy(), rtol=1e-5, atol=1e-6)
    assert_outputs_close(sig(x.tolist()), ref)  # a python list takes the signature's dtype
    (op,) = loaded.engine_ops.values()
    assert (op.stats["engine"], op.stats["native"]) == (2, 0)
    with pytest.raises(TypeError, match=r"input 'x' has dtype float32 and shape \(2, 5\)"):
        sig(x=np.ones((2, 5), np.float32))
    with pytest.raises(TypeError, match="input 'x'"):
        sig(x=np.ones((2, 4, 1), np.float32))
    with pytest.raises(TypeError, match=r"expected inputs \['x'\]"):
        sig(y=x)
    with pytest.raises(TypeError, match=r"expected inputs \['x'\]"):
        sig()


def test_loaded_model_without_engines_falls_back_to_its_native_segment(mlp_dir, tmp_path):
    """tftrt.load leaves the native segment functions (all the weights) out of the graph it
    runs; an engine that cannot run still falls back to its own copy and answers right."""
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=mlp_dir, minimum_segment_size=2,
                                   allow_build_at_runtime=False)
    conv.convert()
    conv.save(str(tmp_path / "o"))
    loaded = tftrt.load(str(tmp_path / "o"))
    x = models.batch((2, 8))
    assert_outputs_close(loaded.signatures["serving_default"](x=tf.constant(x)),
                         native(mlp_dir)(x=tf.constant(x)))
    ops = loaded.engine_ops.values()
    assert ops and all(op.stats["native"] == 1 and op.stats["engine"] == 0 for op in ops)


def test_called_functions_follows_nested_calls_and_drops_the_rest():
    from tensorflow.core.framework import function_pb2, graph_pb2
    from tftrt.rewrite import called_functions
    lib = function_pb2.FunctionDefLibrary()
    for name, calls in (("f1", ["f2"]), ("f2", []), ("f3", ["f2"]), ("f4", [])):
        f = lib.function.add()
        f.signature.name = name
        for c in calls:
            n = f.node_def.add(name=f"call_{c}", op="PartitionedCall")
            n.attr["f"].func.name = c
    gd = graph_pb2.GraphDef()
    a = gd.node.add(name="a", op="PartitionedCall")
    a.attr["f"].func.name = "f1"
    b = gd.node.add(name="b", op="Case")
    b.attr["branches"].list.func.add().name = "f4"
    assert called_functions(gd.node, lib) == {"f1", "f2", "f4"}


def test_conv_relu_before_a_max_pool_stays_one_fused_conv(tmp_path):
    """Grappler moves Keras Conv2D(activation="relu") -> MaxPooling2D's ReLU after the pool;
    the engine moves it back into the conv's epilogue (no pointwise layer of its own), with
    TensorFlow's answers."""
    import keras
    inp = keras.Input((16, 16, 3))
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inp)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(h)
    h = keras.layers.MaxPooling2D()(h)
    model = keras.Model(inp, keras.layers.Flatten()(h))
    src = str(tmp_path / "src")
    model.export(src, verbose=False)
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=src)
    fn = conv.convert()
    x = np.random.RandomState(0).standard_normal((2, 16, 16, 3)).astype(np.float32)
    conv.build(lambda: iter([(x,)]))
    (op,) = conv.engine_ops.values()
    ((_, engine),) = op.cache.items()
    layers = [(k, e) for _, k, e, _ in engine.layers_summary() if k != "reshape"]
    # (Keras' zero biases are dropped)
    assert layers == [("conv", "relu"), ("pool", ""), ("conv", "relu"), ("pool", "")], layers
    want = tf.saved_model.load(src).signatures["serving_default"](tf.constant(x))
    got = fn(tf.constant(x))
    for k in want:
        np.testing.assert_allclose(got[k].numpy(), want[k].numpy(), rtol=1e-5, atol=1e-5)


class Reversed(tf.Module):
    """Inputs declared (b, a): their sorted order is the other way round."""

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="b"),
                                  tf.TensorSpec([None, 4], tf.float32, name="a")])
    def __call__(self, b, a):
        return {"out": a * 2.0 - b}


@pytest.mark.parametrize("direct", ["1", "0"])
def test_loaded_signature_refuses_positional_inputs_it_would_bind_by_name(tmp_path,
                                                                          monkeypatch, direct):
    """A loaded signature with several inputs takes keywords only, as tf.saved_model.load's
    does: ``sig(b, a)`` of a signature declared ``(b, a)`` bound them in sorted-name order
    and fed a to b, silently (helper hunt); on the pipeline and on the graph path. (One input
    may still come positionally: tests/integration/test_int8.py's calls.) convert()'s
    function keeps TF-TRT's behaviour."""
    import tftrt
    monkeypatch.setenv("TFTRT_DIRECT_CALL", direct)
    path = models.save_module(Reversed(), str(tmp_path / "rev"))
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=path, minimum_segment_size=1)
    fn = conv.convert()
    a, b = models.batch((2, 4), 1), models.batch((2, 4), 2)
    conv.build(lambda: iter([(b, a)]))
    conv.save(str(tmp_path / "out"))
    sig = tftrt.load(str(tmp_path / "out")).signatures["serving_default"]
    want = native(path)(a=tf.constant(a), b=tf.constant(b))["out"].numpy()
    np.testing.assert_allclose(sig(a=a, b=b)["out"].numpy(), want, rtol=1e-6, atol=1e-6)
    with pytest.raises(TypeError, match=r"keyword arguments only.*fn\(a=\.\.\., b=\.\.\.\)"):
        sig(tf.constant(b), tf.constant(a))
    assert sig.structured_outputs.keys() == {"out"}  # the function's attributes are there
    np.testing.assert_allclose(fn(a=a, b=b)["out"].numpy(), want, rtol=1e-6, atol=1e-6)
