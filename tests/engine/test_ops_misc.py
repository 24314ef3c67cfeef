"""Resize, NonMaxSuppression and Quantize/DequantizeLinear vs onnxruntime; unsupported ops."""

import numpy as np
import pytest
from onnx import helper

from tests.engine.harness import check_node, make_model, rand
from tftrt.engine import BuilderConfig, EngineBuildError, build_engine, network_from_onnx

F32 = np.float32

RESIZE = [
    ("nearest", "asymmetric", "floor"), ("nearest", "half_pixel", "round_prefer_floor"),
    ("nearest", "align_corners", "round_prefer_ceil"), ("nearest", "tf_half_pixel_for_nn", "ceil"),
    ("linear", "half_pixel", None), ("linear", "align_corners", None),
    ("linear", "asymmetric", None), ("linear", "pytorch_half_pixel", None),
    ("cubic", "half_pixel", None), ("cubic", "align_corners", None),
]


@pytest.mark.parametrize("mode,ctm,nearest", RESIZE)
@pytest.mark.parametrize("scales", [(1, 1, 2, 2), (1, 1, 0.5, 1.5)])
def test_resize_scales(mode, ctm, nearest, scales):
    attrs = {"mode": mode, "coordinate_transformation_mode": ctm}
    if nearest:
        attrs["nearest_mode"] = nearest
    check_node("Resize", {"x": rand(1, 2, 4, 6)}, {"r": np.zeros(0, F32),
                                                   "s": np.array(scales, F32)},
               inputs=["x", "r", "s"], **attrs)


@pytest.mark.parametrize("mode", ["nearest", "linear", "cubic"])
def test_resize_sizes(mode):
    check_node("Resize", {"x": rand(2, 3, 5, 4)}, {"z": np.array([2, 3, 7, 9], np.int64)},
               inputs=["x", "", "", "z"], mode=mode)


def test_resize_cubic_exclude_outside_and_crop():
    check_node("Resize", {"x": rand(1, 1, 5, 5)}, {"r": np.zeros(0, F32),
                                                   "s": np.array([1, 1, 1.6, 0.8], F32)},
               inputs=["x", "r", "s"], mode="cubic", exclude_outside=1, cubic_coeff_a=-0.5)
    roi = np.array([0, 0, 0.2, 0.1, 1, 1, 0.9, 1.2], F32)
    check_node("Resize", {"x": rand(1, 1, 5, 5)}, {"r": roi,
                                                   "z": np.array([1, 1, 4, 6], np.int64)},
               inputs=["x", "r", "", "z"], mode="linear",
               coordinate_transformation_mode="tf_crop_and_resize", extrapolation_value=-1.0)


@pytest.mark.parametrize("center", [0, 1])
def test_nms(center):
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 10, (2, 12, 2)).astype(F32)
    wh = rng.uniform(1, 4, (2, 12, 2)).astype(F32)
    boxes = np.concatenate([xy, xy + wh], -1) if not center else np.concatenate([xy, wh], -1)
    scores = rng.permutation(2 * 3 * 12).reshape(2, 3, 12).astype(F32) / 72
    consts = {"m": np.array([4], np.int64), "iou": np.array([0.3], F32),
              "st": np.array([0.2], F32)}
    check_node("NonMaxSuppression", {"b": boxes, "s": scores}, consts, center_point_box=center)


@pytest.mark.parametrize("zp_dtype,axis", [(np.uint8, 1), (np.int8, 1), (np.int8, 0), (None, 1)])
def test_quantize_dequantize(zp_dtype, axis):
    x = rand(2, 3, 4, low=-3, high=3)
    scale = np.array([0.02, 0.05, 0.1][:x.shape[axis]] + [0.03] * (x.shape[axis] - 3), F32) \
        if axis == 1 else np.array(0.04, F32)
    if axis == 0:
        scale = np.array([0.02, 0.05], F32)
    consts = {"s": scale}
    inputs = ["x", "s"]
    if zp_dtype is not None:
        consts["z"] = np.full(scale.shape, 3 if zp_dtype == np.uint8 else -2, zp_dtype)
        inputs.append("z")
    check_node("QuantizeLinear", {"x": x}, consts, inputs=inputs, axis=axis)
    q = (rand(2, 3, 4, dtype=np.int64, low=0, high=255) if zp_dtype in (np.uint8, None)
         else rand(2, 3, 4, dtype=np.int64, low=-128, high=127)).astype(zp_dtype or np.uint8)
    check_node("DequantizeLinear", {"x": q}, consts, inputs=inputs, axis=axis)


def test_qdq_network_builds_int8():
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])]
    x = rand(2, 8)
    consts = {"s": np.array(0.05, F32), "z": np.array(0, np.int8)}
    model = make_model(nodes, {"x": x}, consts)
    engine = build_engine(model, {"x": x.shape}, BuilderConfig(precision="INT8"))
    np.testing.assert_allclose(engine.execute([x])[0], np.clip(np.rint(x / 0.05), -128, 127)
                               * 0.05, rtol=1e-6)


def test_int8_without_qdq_is_a_clear_error():
    model = make_model([helper.make_node("Relu", ["x"], ["y"])], {"x": rand(2, 3)})
    with pytest.raises(EngineBuildError, match="INT8.*QuantizeLinear"):
        build_engine(model, {"x": (2, 3)}, BuilderConfig(precision="INT8"))


def test_unsupported_op_is_named():
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Det", ["r"], ["y"]),
             helper.make_node("Hardmax", ["r"], ["y2"])]
    model = make_model(nodes, {"x": rand(3, 3)}, outputs=["y", "y2"])
    with pytest.raises(EngineBuildError, match="Det, Hardmax"):
        network_from_onnx(model)


def test_every_listed_op_is_importable():
    from tftrt.engine.onnx_import import supported_ops
    listed = """Identity Constant Conv ConvTranspose MatMul Gemm Einsum Add Sub Mul Div Pow Max Min
    Mod Sum Mean Abs Neg Exp Log Sqrt Reciprocal Floor Ceil Round Sign Sin Cos Tan Asin Acos Atan
    Sinh Cosh Asinh Acosh Atanh Erf Relu LeakyRelu Elu Selu Sigmoid HardSigmoid Tanh Softplus
    Softsign Clip PRelu BatchNormalization LayerNormalization InstanceNormalization MaxPool
    AveragePool GlobalAveragePool GlobalMaxPool ReduceMean ReduceSum ReduceMax ReduceMin
    ReduceProd ReduceL2 ReduceLogSumExp Softmax LogSoftmax ArgMax ArgMin TopK Reshape Flatten
    Squeeze Unsqueeze Transpose Concat Split Slice Pad Gather GatherElements GatherND Expand Tile
    Cast Shape Size ConstantOfShape Range Where Equal Less LessOrEqual Greater GreaterOrEqual Not
    And Or Xor IsNaN DepthToSpace SpaceToDepth QuantizeLinear DequantizeLinear NonMaxSuppression
    ScatterND CumSum OneHot Resize""".split()
    assert set(listed) <= set(supported_ops())


def test_nms_followed_by_gather_scatter_keeps_static_output():
    """CombinedNonMaxSuppression's lowering: the data-dependent NMS output is consumed by
    GatherND/ScatterND into a tensor of static shape."""
    from onnx import numpy_helper
    rng = np.random.default_rng(3)
    xy = rng.uniform(0, 10, (2, 8, 2)).astype(F32)
    boxes = np.concatenate([xy, xy + 3], -1)
    scores = rng.permutation(2 * 3 * 8).reshape(2, 3, 8).astype(F32) / 48
    N = helper.make_node
    nodes = [N("NonMaxSuppression", ["b", "s", "m", "iou"], ["sel"]),
             N("Shape", ["s"], ["shp"]),
             N("ConstantOfShape", ["shp"], ["base"],
               value=numpy_helper.from_array(np.array([-1.0], F32))),
             N("GatherND", ["s", "sel_bc"], ["g"]),
             N("Slice", ["sel", "st", "en", "ax"], ["sel_bc"]),
             N("ScatterND", ["base", "sel", "g2"], ["y"]),
             N("Reshape", ["g", "m1"], ["g1"]), N("Identity", ["g1"], ["g2"])]
    nodes = [nodes[0], nodes[1], nodes[2], nodes[4], nodes[3], nodes[6], nodes[7], nodes[5]]
    consts = {"m": np.array([3], np.int64), "iou": np.array([0.4], F32),
              "st": np.array([0], np.int64), "en": np.array([3], np.int64),
              "ax": np.array([1], np.int64), "m1": np.array([-1], np.int64)}
    from tests.engine.harness import check_model
    feeds = {"b": boxes, "s": scores}
    check_model(make_model(nodes, feeds, consts), feeds)
