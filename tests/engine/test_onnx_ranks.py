"""The importers' rank hints come from ONNX shape inference on the model without its weights'
data (onnx_import.onnx_ranks): the same ranks as the inference on the whole model, which
serialized every weight (ResNet50: 0.22 of a 0.28 s import, paid in every build)."""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tftrt.engine import BuilderConfig, build_engine, network_from_onnx
from tftrt.engine.onnx_import import _SHAPE_OPERAND_MAX_ELEMENTS, _without_weight_data, onnx_ranks


def _full_ranks(model):
    inferred = onnx.shape_inference.infer_shapes(model)
    return {vi.name: len(vi.type.tensor_type.shape.dim)
            for vi in list(inferred.graph.value_info) + list(inferred.graph.output)
            if vi.type.tensor_type.HasField("shape")}


def _model():
    """Weights (a MatMul's, a Conv's) beside shape operands whose data decides ranks:
    Reshape's shape, Slice's starts / ends / axes, Tile's repeats, ConstantOfShape's shape,
    Unsqueeze's axes."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, 512)).astype(np.float32), "w"),
        numpy_helper.from_array(np.array([-1, 16, 32], np.int64), "shape3"),
        numpy_helper.from_array(np.array([0, 0], np.int64), "starts"),
        numpy_helper.from_array(np.array([4, 8], np.int64), "ends"),
        numpy_helper.from_array(np.array([1, 2], np.int64), "axes"),
        numpy_helper.from_array(np.array([1, 2, 1], np.int64), "reps"),
        numpy_helper.from_array(np.array([2, 3, 4, 5], np.int64), "cshape"),
        numpy_helper.from_array(np.array([0, 4], np.int64), "uaxes"),
        numpy_helper.from_array(rng.standard_normal((4, 16, 3, 3)).astype(np.float32), "k"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["mm"]),
        helper.make_node("Reshape", ["mm", "shape3"], ["r3"]),
        helper.make_node("Slice", ["r3", "starts", "ends", "axes"], ["sl"]),
        helper.make_node("Tile", ["sl", "reps"], ["ti"]),
        helper.make_node("ConstantOfShape", ["cshape"], ["cs"]),
        helper.make_node("Unsqueeze", ["ti", "uaxes"], ["un"]),
        helper.make_node("Conv", ["img", "k"], ["cv"], pads=[1, 1, 1, 1]),
    ]
    graph = helper.make_graph(
        nodes, "ranks",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8]),
         helper.make_tensor_value_info("img", TensorProto.FLOAT, ["n", 16, 6, 6])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None)
         for o in ("ti", "cs", "un", "cv")],
        inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_ranks_match_the_whole_models_inference():
    model = _model()
    ranks = onnx_ranks(model)
    assert ranks == _full_ranks(model)
    # the ranks that only the shape operands' data decide
    assert (ranks["r3"], ranks["ti"], ranks["cs"], ranks["un"], ranks["cv"]) == (3, 3, 4, 5, 4)


def test_weights_are_declared_not_carried():
    model = _model()
    before = model.SerializeToString()
    light = _without_weight_data(model)
    kept = {i.name for i in light.graph.initializer}
    assert "w" not in kept and "k" not in kept  # 4,096 and 576 elements: weights
    assert {"shape3", "starts", "ends", "axes", "reps", "cshape", "uaxes"} <= kept
    assert all(int(np.prod(i.dims)) <= _SHAPE_OPERAND_MAX_ELEMENTS
               for i in light.graph.initializer)
    declared = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim]
                for vi in light.graph.input}
    assert declared["w"] == [8, 512] and declared["k"] == [4, 16, 3, 3]
    assert len(light.SerializeToString()) < len(before) // 10
    assert model.SerializeToString() == before  # the model itself is untouched


def test_initializer_listed_as_an_input_is_not_declared_twice():
    model = _model()
    model.graph.input.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, [8, 512]))
    names = [vi.name for vi in _without_weight_data(model).graph.input]
    assert names.count("w") == 1
    assert onnx_ranks(model) == _full_ranks(model)


def test_imported_network_runs_as_before():
    """The import with the light inference builds and runs: outputs against numpy."""
    model = _model()
    net = network_from_onnx(model)
    engine = build_engine(net, {"x": (2, 8), "img": (2, 16, 6, 6)},
                          BuilderConfig(precision="FP32", backend="numpy"))
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 8)).astype(np.float32)
    img = rng.standard_normal((2, 16, 6, 6)).astype(np.float32)
    outs = dict(zip(engine.output_names, engine.execute([x, img])))
    w = numpy_helper.to_array(model.graph.initializer[0])
    want = np.tile((x @ w).reshape(-1, 16, 32)[:, :4, :8], (1, 2, 1))
    np.testing.assert_allclose(outs["ti"], want, rtol=1e-5, atol=1e-5)
    assert outs["un"].shape == (1, 2, 8, 8, 1)
    np.testing.assert_array_equal(outs["cs"], np.zeros((2, 3, 4, 5), np.float32))
