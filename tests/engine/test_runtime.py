"""Engine / ExecutionContext API: shapes, symbolic batch, threads, profiler, input checks."""

import threading

import numpy as np
import pytest
from onnx import helper

from tests.engine.harness import make_model, rand, run_ort
from tests.engine.test_passes import _keras_conv_bn_relu
from tftrt.engine import BuilderConfig, Engine, EngineBuildError, build_engine, network_from_onnx


def test_symbolic_batch_built_at_two_batch_sizes():
    model, _ = _keras_conv_bn_relu()
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    for batch in (1, 5):
        x = rand(batch, 8, 8, 3, seed=batch)
        engine = build_engine(model, {"x": x.shape}, BuilderConfig())
        assert engine.input_shapes == [(batch, 8, 8, 3)]
        assert engine.output_shapes == [(batch, 8, 8, 4)]
        np.testing.assert_allclose(engine.execute([x])[0], run_ort(model, {"x": x})[0],
                                   rtol=1e-4, atol=1e-5)


def test_engine_description():
    model, feeds = _keras_conv_bn_relu()
    engine = build_engine(model, {"x": (2, 8, 8, 3)}, BuilderConfig(precision="fp16"))
    assert isinstance(engine, Engine)
    assert engine.input_names == ["x"] and engine.output_names == ["y"]
    assert engine.output_dtypes == [np.dtype(np.float32)]  # I/O dtypes are kept under FP16
    assert engine.precision == "FP16" and engine.backend == "numpy"
    assert engine.num_layers == 2 and engine.device_memory_bytes >= 0
    (_, cast, _, _), (name, kind, epi, tactic) = engine.layers_summary()
    assert cast == "pointwise"  # the fp32 network input is cast to fp16 for the conv
    assert (kind, epi) == ("conv", "bias+relu") and tactic
    conv = engine.network.layers[1]
    assert engine.network.weights[conv.inputs[1]].dtype == np.float16
    assert engine.network.tensors[conv.inputs[0]].dtype == "float16"
    assert "FP16" in repr(engine)


def test_execute_checks_inputs():
    model, feeds = _keras_conv_bn_relu()
    engine = build_engine(model, {"x": (2, 8, 8, 3)}, BuilderConfig())
    with pytest.raises(ValueError, match=r"built for \(2, 8, 8, 3\)"):
        engine.execute([rand(3, 8, 8, 3)])
    with pytest.raises(ValueError, match="takes 1 inputs"):
        engine.execute([])
    out64 = engine.execute({"x": feeds["x"].astype(np.float64)})[0]  # cast to the input dtype
    np.testing.assert_allclose(out64, engine.execute([feeds["x"]])[0])


def test_build_errors_are_clear():
    model, _ = _keras_conv_bn_relu()
    with pytest.raises(EngineBuildError, match="declares"):
        build_engine(model, {"x": (2, 8, 8, 4)}, BuilderConfig())
    with pytest.raises(EngineBuildError, match="network inputs are"):
        build_engine(model, {"z": (2, 8, 8, 3)}, BuilderConfig())
    with pytest.raises(EngineBuildError, match="precision"):
        build_engine(model, {"x": (2, 8, 8, 3)}, BuilderConfig(precision="FP8"))
    with pytest.raises(EngineBuildError, match="not available"):
        build_engine(model, {"x": (2, 8, 8, 3)}, BuilderConfig(backend="tpu"))


def test_threads_share_one_engine():
    model, _ = _keras_conv_bn_relu()
    engine = build_engine(model, {"x": (2, 8, 8, 3)}, BuilderConfig())
    xs = [rand(2, 8, 8, 3, seed=k) for k in range(4)]
    want = [run_ort(model, {"x": x})[0] for x in xs]
    errors = []

    def work(k):
        try:
            for _ in range(5):
                np.testing.assert_allclose(engine.execute([xs[k]])[0], want[k], rtol=1e-4,
                                           atol=1e-5)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)
    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_profiler_and_contexts():
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Softmax", ["m"],
                                                                             ["y"])]
    model = make_model(nodes, {"x": rand(3, 4)}, {"w": rand(4, 5, seed=1)})
    engine = build_engine(model, {"x": (3, 4)}, BuilderConfig())
    ctx = engine.create_execution_context()
    ctx.profile = True
    ctx.execute([rand(3, 4)])
    assert [name for name, _ in ctx.profile_result] == [l.name for l in engine.network.layers]
    assert all(t >= 0 for _, t in ctx.profile_result)


def test_outputs_are_not_views_of_inputs():
    model = make_model([helper.make_node("Identity", ["x"], ["y"])], {"x": rand(2, 3)})
    engine = build_engine(model, {"x": (2, 3)}, BuilderConfig())
    x = rand(2, 3)
    y = engine.execute([x])[0]
    y[0, 0] = 100.0
    assert x[0, 0] != 100.0


def test_build_from_network_and_dynamic_nms_output():
    nodes = [helper.make_node("NonMaxSuppression", ["b", "s", "m"], ["y"])]
    boxes = np.array([[[0, 0, 1, 1], [0, 0.1, 1, 1.1], [0, 2, 1, 3]]], np.float32)
    scores = np.array([[[0.9, 0.8, 0.7]]], np.float32)
    model = make_model(nodes, {"b": boxes, "s": scores}, {"m": np.array([5], np.int64)})
    engine = build_engine(network_from_onnx(model), {"b": boxes.shape, "s": scores.shape})
    assert engine.output_shapes == [(None, 3)]
    np.testing.assert_array_equal(engine.execute([boxes, scores])[0], [[0, 0, 0], [0, 0, 2]])
