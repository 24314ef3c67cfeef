"""passes/stem_space_to_depth: a stride-2 stem conv over few channels as a 2x2
space-to-depth of its padded input and a stride-1 conv (TFTRT_STEM_S2D=1), checked against
onnxruntime on the stems of the zoo's families and on the convs it must leave alone; the
rearranged filter against the conv it replaces; the space_to_depth layer's pads and channels
against numpy; an INT8 build quantizing the rearranged stem."""

import numpy as np
import pytest
from onnx import helper

from tests.engine.harness import check_model, make_model, rand, run_ort
from tftrt.engine import BuilderConfig, build_engine, network_from_onnx
from tftrt.engine import quantization as Q
from tftrt.engine.backends import numpy_ops as ops
from tftrt.engine.calibrator import EngineCalibrator
from tftrt.engine.passes.stem_space_to_depth import rearranged_filter, stem_space_to_depth
from tftrt.engine.shapes import bind_inputs

N = helper.make_node


def _stem(k, pads, size=(32, 32), cin=3, strides=(2, 2), dilations=(1, 1), cout=8, seed=0):
    """NHWC image -> (NCHW conv + bias + ReLU) -> NHWC, as TF converters emit a stem."""
    nodes = [N("Transpose", ["x"], ["xc"], perm=[0, 3, 1, 2]),
             N("Conv", ["xc", "w", "b"], ["c"], strides=list(strides), pads=list(pads),
               dilations=list(dilations), kernel_shape=list(k)),
             N("Relu", ["c"], ["r"]), N("Transpose", ["r"], ["y"], perm=[0, 2, 3, 1])]
    consts = {"w": (rand(cout, cin, *k, seed=seed + 1) / np.sqrt(cin * k[0] * k[1])
                    ).astype(np.float32),
              "b": (rand(cout, seed=seed + 2) * 0.1).astype(np.float32)}
    feeds = {"x": rand(2, *size, cin, seed=seed)}
    return make_model(nodes, feeds, consts), feeds


def _kinds(model, feeds, precision="FP32"):
    e = build_engine(model, {k: v.shape for k, v in feeds.items()},
                     BuilderConfig(precision=precision, backend="numpy"))
    return [l.kind for l in e.network.layers], e


STEMS = {  # name: (kernel, pads [top, left, bottom, right], image H x W, channels)
    "resnet 7x7 (ZeroPadding2D(3) folded)": ((7, 7), (3, 3, 3, 3), (32, 32), 3),
    "resnet 7x7 SAME (pads 2 / 3)": ((7, 7), (2, 2, 3, 3), (32, 32), 3),
    "mobilenet 3x3 SAME (pads 0 / 1)": ((3, 3), (0, 0, 1, 1), (32, 32), 3),
    "inception 3x3 VALID, odd image": ((3, 3), (0, 0, 0, 0), (33, 35), 3),
    "5x4 kernel, uneven pads, RGBA": ((5, 4), (1, 2, 0, 1), (30, 27), 4),
    "2x2 patchify, one channel": ((2, 2), (0, 0, 0, 0), (16, 16), 1),
}


@pytest.mark.parametrize("precision", ["FP32", "FP16"])
@pytest.mark.parametrize("name", list(STEMS))
def test_stems_become_space_to_depth_and_answer_as_before(name, precision, monkeypatch):
    k, pads, size, cin = STEMS[name]
    model, feeds = _stem(k, pads, size, cin)
    monkeypatch.setenv("TFTRT_STEM_S2D", "0")
    kinds0, _ = _kinds(model, feeds, precision)
    monkeypatch.setenv("TFTRT_STEM_S2D", "1")
    kinds1, e = _kinds(model, feeds, precision)
    assert kinds1 == ["space_to_depth"] + kinds0[kinds0.index("conv"):], (kinds0, kinds1)
    conv = next(l for l in e.network.layers if l.kind == "conv")
    s2d = next(l for l in e.network.layers if l.kind == "space_to_depth")
    assert conv.attrs["strides"] == [1, 1] and conv.attrs["pads"] == [0, 0, 0, 0]
    assert e.network.tensors[s2d.outputs[0]].shape[-1] == 16
    assert conv.attrs["space_to_depth"] == {"stride": 2, "kernel": list(k)}
    if precision == "FP16":  # the rearrangement reads the float32 image and stores float16:
        assert "pointwise" not in kinds1  # no cast layer of its own
        assert e.network.tensors[s2d.outputs[0]].dtype == "float16"
    check_model(model, feeds, precision)


CASES_LEFT = {  # convs that are no stride-2 stem over few channels: left as they are
    "stride 1": dict(k=(3, 3), pads=(1, 1, 1, 1), strides=(1, 1)),
    "5 channels": dict(k=(3, 3), pads=(1, 1, 1, 1), cin=5),
    "dilated": dict(k=(3, 3), pads=(2, 2, 2, 2), dilations=(2, 2)),
    "stride 2 x 1": dict(k=(3, 3), pads=(1, 1, 1, 1), strides=(2, 1)),
    "1x1 stride 2": dict(k=(1, 1), pads=(0, 0, 0, 0)),
    # an even kernel over an odd image never reads the last row: the blocks would cut it
    "2x2 stride 2 leaving the last row": dict(k=(2, 2), pads=(0, 0, 0, 0), size=(17, 17)),
}


@pytest.mark.parametrize("name", list(CASES_LEFT))
def test_other_convs_are_left_alone(name, monkeypatch):
    kw = dict(CASES_LEFT[name])
    model, feeds = _stem(kw.pop("k"), kw.pop("pads"), **kw)
    monkeypatch.setenv("TFTRT_STEM_S2D", "1")
    net = _passed(model, feeds)
    assert stem_space_to_depth(net).summary() == net.summary()
    kinds, _ = _kinds(model, feeds)
    assert "space_to_depth" not in kinds
    check_model(model, feeds)


def _passed(model, feeds):
    """The bound network after every pass before this one."""
    from tftrt.engine.passes import PASSES, run_passes
    net = bind_inputs(network_from_onnx(model), {k: v.shape for k, v in feeds.items()})
    return run_passes(net, PASSES[:PASSES.index(stem_space_to_depth)])


def test_the_pass_is_off_by_default_and_pure(monkeypatch):
    model, feeds = _stem((7, 7), (3, 3, 3, 3))
    net = _passed(model, feeds)
    monkeypatch.delenv("TFTRT_STEM_S2D", raising=False)
    assert stem_space_to_depth(net).summary() == net.summary()
    monkeypatch.setenv("TFTRT_STEM_S2D", "1")
    before = net.summary()
    out = stem_space_to_depth(net)
    assert net.summary() == before and out.summary() != before


@pytest.mark.parametrize("k", [(7, 7), (3, 3), (4, 5), (2, 2)])
def test_the_rearranged_filter_is_the_stride_2_conv(k):
    """conv(x, w, stride 2) == conv(space_to_depth(x), rearranged_filter(w), stride 1) on an
    image padded to the blocks, in float64 (exact up to summation order)."""
    rng = np.random.default_rng(3)
    w = rng.standard_normal((5, *k, 3))
    x = rng.standard_normal((1, 20, 22, 3))
    kh, kw = k
    ho, wo = (20 - kh) // 2 + 1, (22 - kw) // 2 + 1
    want = np.zeros((1, ho, wo, 5))
    for i in range(ho):
        for j in range(wo):
            want[0, i, j] = np.einsum("hwc,ohwc->o", x[0, 2 * i:2 * i + kh, 2 * j:2 * j + kw], w)
    w2 = rearranged_filter(w)
    k2h, k2w = w2.shape[1:3]
    hs, ws = ho + k2h - 1, wo + k2w - 1
    s = ops.space_to_depth(x, 2, [0, 0, 2 * hs - 20, 2 * ws - 22], 4)
    got = np.zeros_like(want)
    for i in range(ho):
        for j in range(wo):
            got[0, i, j] = np.einsum("hwc,ohwc->o", s[0, i:i + k2h, j:j + k2w], w2)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    assert w2.shape == (5, -(-kh // 2), -(-kw // 2), 16)


def test_space_to_depth_layer_with_pads_and_channels_matches_numpy():
    """The ONNX SpaceToDepth layer is unchanged (pads / channels only come from the pass):
    onnxruntime's answer, and numpy_ops with pads and channels is pad-then-rearrange."""
    x = rand(2, 3, 6, 8)  # NCHW
    model = make_model([N("SpaceToDepth", ["x"], ["y"], blocksize=2)], {"x": x}, {})
    check_model(model, {"x": x})
    xh = rand(1, 5, 4, 3)
    got = ops.space_to_depth(xh, 2, [1, 0, 0, 2], 4)
    padded = np.zeros((1, 6, 6, 4), np.float32)
    padded[:, 1:6, 0:4, :3] = xh
    np.testing.assert_array_equal(got, ops.space_to_depth(padded, 2))
    assert got.shape == (1, 3, 3, 16)


def test_an_int8_build_quantizes_the_rearranged_stem(monkeypatch):
    """The stem kept FP16 as an image stem (3 channels) reduces over 16 once rearranged: the
    calibrator, which sees the rewritten network, gives its input a range and the INT8 build
    runs it in INT8, within INT8's tolerance of FP32."""
    monkeypatch.delenv("TFTRT_QUANTIZE_STEM", raising=False)
    rng = np.random.RandomState(0)
    w1 = (rng.randn(16, 3, 7, 7) * 0.1).astype(np.float32)
    nodes = [N("Conv", ["x", "w1", "b1"], ["c1"], pads=[3, 3, 3, 3], strides=[2, 2]),
             N("Relu", ["c1"], ["r1"]), N("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1]),
             N("Relu", ["c2"], ["y"])]
    consts = {"w1": w1, "b1": (rng.randn(16) * 0.1).astype(np.float32),
              "w2": (rng.randn(16, 16, 3, 3) * 0.2).astype(np.float32)}
    shape = (4, 3, 32, 32)
    x = rng.randn(*shape).astype(np.float32)
    precisions = {}
    for on in ("0", "1"):
        monkeypatch.setenv("TFTRT_STEM_S2D", on)
        model = make_model(nodes, {"x": np.zeros(shape, np.float32)}, consts)
        cal = EngineCalibrator(network_from_onnx(model))
        for _ in range(4):
            cal.observe([rng.randn(*shape).astype(np.float32)])
        Q.set_table(model, cal.table("INT8"))
        e = build_engine(model, {"x": shape}, BuilderConfig(precision="INT8", backend="numpy"))
        precisions[on] = [l.precision for l in e.network.layers if l.kind == "conv"]
        want = run_ort(model, {"x": x})[0]
        got = e.execute([x])[0]
        err = np.abs(got - want).max() / np.abs(want).max()
        assert err < 5e-2, (on, err)
    assert precisions == {"0": ["FP16", "INT8"], "1": ["INT8", "INT8"]}, precisions


def test_a_table_calibrated_without_the_pass_gives_the_rearranged_stem_its_range(monkeypatch):
    """A model calibrated with the pass off and built with it on (another process, another
    environment): the rearranged image takes the image's range (its values and zeros), so
    the stem is quantized with the image's scale instead of falling back for want of one."""
    monkeypatch.delenv("TFTRT_QUANTIZE_STEM", raising=False)
    monkeypatch.setenv("TFTRT_STEM_S2D", "0")
    model, feeds = _stem((7, 7), (3, 3, 3, 3), cout=16)
    cal = EngineCalibrator(network_from_onnx(model))
    rng = np.random.default_rng(4)
    for _ in range(4):
        cal.observe([rng.standard_normal(feeds["x"].shape).astype(np.float32)])
    table = cal.table("INT8")
    Q.set_table(model, table)
    monkeypatch.setenv("TFTRT_STEM_S2D", "1")
    e = build_engine(model, {"x": feeds["x"].shape},
                     BuilderConfig(precision="INT8", backend="numpy"))
    conv = next(l for l in e.network.layers if l.kind == "conv")
    s2d = next(l for l in e.network.layers if l.kind == "space_to_depth")
    assert s2d.outputs[0] not in table["tensors"] and conv.precision == "INT8", \
        conv.attrs.get("quant_fallback")
    image = s2d.inputs[0]
    assert conv.attrs["quant"]["input_scale"] == Q.int8_scale(table["tensors"][image])
    want = run_ort(model, feeds)[0]
    err = np.abs(e.execute([feeds["x"]])[0] - want).max() / np.abs(want).max()
    assert err < 5e-2, err
