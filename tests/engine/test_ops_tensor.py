"""Shape, data-movement and indexing ops vs onnxruntime."""

import numpy as np
import pytest
from onnx import helper, numpy_helper

from tests.engine.harness import check_model, check_node, make_model, rand

I64 = np.int64


def _i(*v):
    return np.array(v, I64)


@pytest.mark.parametrize("shape,target,allowzero", [((2, 3, 4), (6, 4), 0), ((2, 3, 4), (0, -1), 0),
                                                    ((2, 3, 4), (0, -1, 2), 0),
                                                    ((2, 3, 4), (-1,), 1)])
def test_reshape(shape, target, allowzero):
    check_node("Reshape", {"x": rand(*shape)}, {"s": _i(*target)}, allowzero=allowzero)


def test_reshape_runtime_shape():
    check_node("Reshape", {"x": rand(2, 3, 4), "s": _i(3, 8)})


@pytest.mark.parametrize("axis", [0, 1, 2, -1, 3])
def test_flatten(axis):
    check_node("Flatten", {"x": rand(2, 3, 4)}, axis=axis)


@pytest.mark.parametrize("axes", [None, (1,), (-1, 1)])
def test_squeeze(axes):
    consts = {} if axes is None else {"a": _i(*axes)}
    check_node("Squeeze", {"x": rand(2, 1, 3, 1)}, consts)


@pytest.mark.parametrize("axes", [(0,), (1, -1), (0, 3)])
def test_unsqueeze(axes):
    check_node("Unsqueeze", {"x": rand(2, 3)}, {"a": _i(*axes)})


@pytest.mark.parametrize("perm", [None, [0, 2, 1], [2, 0, 1]])
def test_transpose(perm):
    attrs = {} if perm is None else {"perm": perm}
    check_node("Transpose", {"x": rand(2, 3, 4)}, **attrs)


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_concat(axis):
    shapes = [[2, 3, 4] for _ in range(3)]
    for k, s in enumerate(shapes):
        s[axis] += k
    check_node("Concat", {f"x{k}": rand(*s, seed=k) for k, s in enumerate(shapes)}, axis=axis)
    check_node("Concat", {"x": rand(2, 3)}, {"c": rand(2, 3, seed=9)}, axis=axis % 2)


@pytest.mark.parametrize("axis,split,n", [(0, None, 2), (1, (1, 2, 3), 3), (-1, (4, 4), 2)])
def test_split(axis, split, n):
    consts = {} if split is None else {"s": _i(*split)}
    check_node("Split", {"x": rand(4, 6, 8)}, consts, n_out=n, axis=axis)


SLICES = [((1,), (3,), None, None), ((0, 1), (2, -1), (0, 2), None),
          ((-1,), (-100,), (1,), (-1,)), ((10, 0), (-10, 100), (2, 1), (-2, 3)),
          ((0,), (2 ** 62,), (-1,), (2,))]


@pytest.mark.parametrize("starts,ends,axes,steps", SLICES)
def test_slice(starts, ends, axes, steps):
    consts = {"st": _i(*starts), "en": _i(*ends)}
    inputs = ["x", "st", "en"]
    if axes is not None:
        consts["ax"] = _i(*axes)
        inputs.append("ax")
    if steps is not None:
        consts["sp"] = _i(*steps)
        inputs.append("sp")
    check_node("Slice", {"x": rand(4, 5, 6)}, consts, inputs=inputs)


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge"])
def test_pad(mode):
    consts = {"p": _i(0, 1, 2, 0, 2, 1)}
    inputs = ["x", "p"]
    if mode == "constant":
        consts["v"] = np.array(1.5, np.float32)
        inputs.append("v")
    check_node("Pad", {"x": rand(2, 4, 5)}, consts, inputs=inputs, mode=mode)


@pytest.mark.parametrize("pads", [[0, -1, 2, 0, 2, -1], [-1, 0, 0, 0, -2, 0]])
def test_pad_with_negative_pads_crops(pads):
    """ONNX: a negative pad removes elements. The engine used to fail on its first run
    ("index can't contain negative values", helper hunt 2026-12-05)."""
    check_node("Pad", {"x": rand(3, 4, 5)}, {"p": _i(*pads), "v": np.array(1.5, np.float32)},
               inputs=["x", "p", "v"], mode="constant")


def test_pad_cropping_in_reflect_mode_is_refused_at_build():
    from tftrt.engine import BuilderConfig, EngineBuildError, build_engine
    model = make_model([helper.make_node("Pad", ["x", "p"], ["y"], mode="reflect")],
                       {"x": rand(3, 4, 5)}, {"p": _i(0, -1, 1, 0, 1, 1)})
    with pytest.raises(EngineBuildError, match="negative pads .* only constant pads may crop"):
        build_engine(model, {"x": (3, 4, 5)}, BuilderConfig(backend="numpy"))


@pytest.mark.parametrize("axis,idx", [(0, [[0, 2], [-1, 1]]), (1, [3, 0, -2]), (-1, 2)])
def test_gather(axis, idx):
    check_node("Gather", {"x": rand(3, 4, 5)}, {"i": np.array(idx, I64)}, axis=axis)
    check_node("Gather", {"x": rand(3, 4, 5), "i": np.array(idx, np.int32)}, axis=axis)


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_gather_elements(axis):
    idx = rand(3, 4, 2, dtype=I64, low=-2, high=1)
    check_node("GatherElements", {"x": rand(3, 4, 5), "i": idx}, axis=axis)


@pytest.mark.parametrize("batch_dims,idx_shape,hi", [(0, (2, 2), 2), (0, (3, 1), 2),
                                                     (1, (3, 2, 1), 3), (0, (2, 3), 2)])
def test_gather_nd(batch_dims, idx_shape, hi):
    idx = rand(*idx_shape, dtype=I64, low=0, high=hi)
    check_node("GatherND", {"x": rand(3, 4, 3)}, {"i": idx}, batch_dims=batch_dims)


@pytest.mark.parametrize("reduction", ["none", "add", "mul"])
def test_scatter_nd(reduction):
    idx = np.array([[0, 1], [2, 3], [1, 0]], I64)
    check_node("ScatterND", {"x": rand(3, 4, 5), "u": rand(3, 5, seed=2)}, {"i": idx},
               inputs=["x", "i", "u"], reduction=reduction)


@pytest.mark.parametrize("shape,target", [((3, 1), (2, 3, 4)), ((1, 4), (3, 1)), ((2,), (2,))])
def test_expand(shape, target):
    check_node("Expand", {"x": rand(*shape)}, {"s": _i(*target)})


def test_tile():
    check_node("Tile", {"x": rand(2, 3)}, {"r": _i(2, 3)})
    check_node("Tile", {"x": rand(2, 3), "r": _i(1, 2)})


@pytest.mark.parametrize("attrs", [{}, {"start": 1}, {"start": -2, "end": -1}, {"end": 10}])
def test_shape(attrs):
    check_node("Shape", {"x": rand(2, 3, 4)}, **attrs)


def test_size_constant_of_shape_range():
    check_node("Size", {"x": rand(2, 3, 4)})
    value = numpy_helper.from_array(np.array([3], np.int32))
    check_node("ConstantOfShape", {}, {"s": _i(2, 3)}, value=value)
    check_node("ConstantOfShape", {}, {"s": _i(4)})
    check_node("Range", {}, {"a": np.array(1, I64), "b": np.array(10, I64),
                             "c": np.array(3, I64)})
    check_node("Range", {}, {"a": np.array(1.0, np.float32), "b": np.array(-2.0, np.float32),
                             "c": np.array(-0.5, np.float32)})


@pytest.mark.parametrize("axis", [-1, 0, 1])
def test_onehot(axis):
    idx = np.array([[0, 2], [-1, 4]], I64)
    check_node("OneHot", {"i": idx}, {"d": np.array(5, I64),
                                      "v": np.array([0.5, 2.0], np.float32)}, axis=axis)


@pytest.mark.parametrize("mode", ["DCR", "CRD"])
def test_depth_to_space(mode):
    check_node("DepthToSpace", {"x": rand(2, 8, 3, 4)}, blocksize=2, mode=mode)


def test_space_to_depth():
    check_node("SpaceToDepth", {"x": rand(2, 3, 4, 6)}, blocksize=2)


def test_shape_arithmetic_folds_for_two_batch_sizes():
    """Shape -> Gather -> Concat -> Reshape with a symbolic batch, built at two sizes."""
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
             helper.make_node("Unsqueeze", ["n", "zero1"], ["n1"]),
             helper.make_node("Concat", ["n1", "minus1"], ["target"], axis=0),
             helper.make_node("Reshape", ["x", "target"], ["y"])]
    consts = {"zero": np.array(0, I64), "zero1": _i(0), "minus1": _i(-1)}
    for batch in (1, 3):
        x = rand(batch, 3, 4)
        model = make_model(nodes, {"x": x}, consts, symbolic=[0])
        check_model(model, {"x": x})
    from tftrt.engine import BuilderConfig, build_engine
    engine = build_engine(model, {"x": (3, 3, 4)}, BuilderConfig())
    assert [k for _, k, _, _ in engine.layers_summary()] == ["reshape"]
