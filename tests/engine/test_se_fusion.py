"""Squeeze-and-excitation fusion (passes/se_fusion): the blocks EfficientNet and MobileNetV3
reach the engine as (global mean, two 1x1 convs or GEMMs with their activations, x * gate)
become one ``se`` layer that computes what the unfused layers compute, in FP32 and FP16; a
block whose intermediate is read elsewhere stays as it is. Networks are written in the
engine's IR as the converter's passes leave them (tests/integration/test_se_zoo.py converts
the Keras models themselves)."""

import numpy as np
import pytest

from tests.tolerances import TOLERANCES
from tftrt.engine import BuilderConfig, build_engine, deserialize_engine
from tftrt.engine.backends import numpy_ops
from tftrt.engine.network import Network
from tftrt.engine.passes.se_fusion import se_fusion
from tftrt.engine.precision import apply_precision
from tftrt.engine.shapes import bind_inputs

RNG = np.random.default_rng(0)


def _w(*shape, scale=0.3):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def _se_net(n=2, h=5, w=6, c=16, cse=4, style="efficientnet", extra_use=None):
    """x -> conv (the block's expand conv, so x is an intermediate) -> SE -> output.
    style: "efficientnet" (mean keepdims 0 + reshape, bias-free 1x1 convs, silu / sigmoid),
    "mobilenet_v3" (mean keepdims 1, relu, bias + clip(0, 6), (1/6 * g) * x),
    "gemm" (mean [N, C], matmuls with bias, relu / sigmoid, reshape to [N, 1, 1, C]).
    extra_use: an intermediate ("mean", "hidden", "gate") that is also a network output."""
    net = Network("se")
    net.inputs = ["in"]
    net.add_tensor("in", "float32", (n, h, w, c))
    net.add_layer("conv", ["in", net.add_weight(_w(c, 1, 1, c), "we")], ["x"],
                  {"strides": [1, 1], "dilations": [1, 1], "pads": [0, 0, 0, 0], "group": 1},
                  [{"op": "act", "fn": "relu"}])
    keep = style == "mobilenet_v3"
    net.add_layer("reduce", ["x"], ["m"], {"op": "mean", "axes": [1, 2], "keepdims": int(keep)})
    conv = {"strides": [1, 1], "dilations": [1, 1], "pads": [0, 0, 0, 0], "group": 1}
    if style == "gemm":
        w1, b1 = net.add_weight(_w(c, cse), "w1"), net.add_weight(_w(cse), "b1")
        w2, b2 = net.add_weight(_w(c, cse), "w2"), net.add_weight(_w(c), "b2")
        net.add_layer("matmul", ["m", w1, b1], ["h"], {"transpose_a": False,
                                                       "transpose_b": False, "alpha": 1.0},
                      [{"op": "bias", "input": 2}, {"op": "act", "fn": "relu"}])
        net.add_layer("matmul", ["h", w2, b2], ["g0"], {"transpose_a": False,
                                                        "transpose_b": True, "alpha": 1.0},
                      [{"op": "bias", "input": 2}, {"op": "act", "fn": "sigmoid"}])
        net.add_layer("reshape", ["g0"], ["g"], {"shape": [n, 1, 1, c]})
        prog = [{"op": "mul", "args": ["$0", "$1"], "dtype": "float32"}]
    else:
        src = "m"
        if not keep:
            net.add_layer("reshape", ["m"], ["m4"], {"shape": [n, 1, 1, c]})
            src = "m4"
        w1, w2 = net.add_weight(_w(cse, 1, 1, c), "w1"), net.add_weight(_w(c, 1, 1, cse), "w2")
        if keep:
            b2 = net.add_weight(_w(c) + 3.0, "b2")
            net.add_layer("conv", [src, w1], ["h"], conv, [{"op": "act", "fn": "relu"}])
            net.add_layer("conv", ["h", w2, b2], ["g"], conv, [
                {"op": "bias", "input": 2}, {"op": "act", "fn": "clip", "min": 0.0, "max": 6.0}])
            prog = [{"op": "mul", "args": [0.1666666716337204, "$0"], "dtype": "float32"},
                    {"op": "mul", "args": ["%0", "$1"], "dtype": "float32"}]
        else:
            net.add_layer("conv", [src, w1], ["h"], conv, [{"op": "act", "fn": "silu"}])
            net.add_layer("conv", ["h", w2], ["g"], conv, [{"op": "act", "fn": "sigmoid"}])
            prog = [{"op": "mul", "args": ["$0", "$1"], "dtype": "float32"}]
    ins = ["g", "x"] if keep else ["x", "g"]
    net.add_layer("pointwise", ins, ["y"], {"program": prog})
    net.outputs = ["y"] + ([extra_use] if extra_use else [])
    return net, RNG.standard_normal((n, h, w, c)).astype(np.float32)


def _engine(net, x, precision="FP32", optimize=True):
    return build_engine(net, {"in": x.shape}, BuilderConfig(precision=precision,
                                                            optimize=optimize))


def _reference(net, x):
    """The block in float64, written out (the network's own weights)."""
    W = net.weights
    relu = lambda v: np.maximum(v, 0)  # noqa: E731
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    xx = relu(x.astype(np.float64) @ W["we"].reshape(x.shape[-1], -1).T)
    m = xx.mean(axis=(1, 2))
    if "b1" in W:  # gemm
        h = relu(m @ W["w1"] + W["b1"])
        g = sig(h @ W["w2"].T + W["b2"])
    elif "b2" in W:  # mobilenet_v3
        h = relu(m @ W["w1"].reshape(len(W["w1"]), -1).T)
        g = np.clip(h @ W["w2"].reshape(len(W["w2"]), -1).T + W["b2"], 0, 6) / 6
    else:
        h = m @ W["w1"].reshape(len(W["w1"]), -1).T
        h = h * sig(h)
        g = sig(h @ W["w2"].reshape(len(W["w2"]), -1).T)
    return xx * g[:, None, None, :]


def _kinds(engine):
    return [l.kind for l in engine.network.layers]


@pytest.mark.parametrize("precision", ["FP32", "FP16"])
@pytest.mark.parametrize("style", ["efficientnet", "mobilenet_v3", "gemm"])
def test_block_becomes_one_se_layer_that_matches(style, precision):
    net, x = _se_net(style=style)
    fused = _engine(net, x, precision)
    unfused = _engine(net, x, precision, optimize=False)
    # FP16: the fp32 network input is cast first
    assert _kinds(fused) == ["conv", "se"] if precision == "FP32" else \
        ["pointwise", "conv", "se"], _kinds(fused)
    assert "se" not in _kinds(unfused)
    got, ref = (np.asarray(e.execute([x])[0]) for e in (fused, unfused))
    assert got.dtype == ref.dtype == np.float32
    want = _reference(net, x)
    rtol, atol = TOLERANCES[precision]
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)
    if precision == "FP32":  # the same float32 steps as the unfused layers
        np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)
    else:  # fp16 storage: the same roundings, so at most a rare half-ulp flip of the gate
        np.testing.assert_allclose(got, ref, rtol=2e-3, atol=2e-3)
        assert np.mean(got == ref) > 0.95


def test_fp16_se_keeps_its_gate_in_float32():
    """FP16 engines compute and store the gate in float32 (precision.py: se_gate_layers), so
    the fused layer rounds nowhere but y, and its FC weights are the float32 originals."""
    net, x = _se_net(style="mobilenet_v3")
    engine = _engine(net, x, "FP16")
    (se,) = [l for l in engine.network.layers if l.kind == "se"]
    a = se.attrs
    assert a["pool"] == [{"round": "float32"}] and a["hidden"] == [{"round": "float32"}]
    assert a["gate"][0] == {"round": "float32"} and a["gate"][-1]["program"][0]["op"] == "mul"
    assert a["act1"]["fn"] == "relu" and a["act2"] == {"op": "act", "fn": "clip", "min": 0.0,
                                                       "max": 6.0}
    assert engine.network.dtype(se.inputs[1]) == "float32"
    np.testing.assert_array_equal(engine.network.weights[se.inputs[1]],
                                  net.weights["w1"].reshape(4, 16))
    assert engine.network.shape(se.inputs[3]) == (16, 4)
    assert engine.network.dtype(se.outputs[0]) == "float16" or se.outputs[0] in \
        engine.network.outputs


@pytest.mark.parametrize("style", ["efficientnet", "mobilenet_v3", "gemm"])
def test_fp16_unfused_gate_layers_are_fp32_and_the_scale_fp16(style):
    net, x = _se_net(style=style)
    net.outputs = ["y"]
    net = apply_precision(bind_inputs(net, {"in": x.shape}), "FP16")
    by_out = {l.outputs[0]: l for l in net.layers}
    gate = ["m", "h", "g"] + (["g0"] if style == "gemm" else []) + \
        (["m4"] if style == "efficientnet" else [])
    for t in gate:
        assert by_out[t].precision == "FP32" and net.dtype(t) == "float32", t
    for l in net.layers:
        if l.kind in ("conv", "matmul") and l.outputs[0] != "x":
            assert net.weights[l.inputs[1]].dtype == np.float32
    assert by_out["x"].precision == "FP16" and net.dtype("x") == "float16"
    assert by_out["y"].precision == "FP16"
    # a mean that is no SE block's (its vector goes to a network output) keeps FP16 around it
    net2, _ = _se_net(style=style, extra_use="h")
    net2 = apply_precision(bind_inputs(net2, {"in": x.shape}), "FP16")
    assert {l.outputs[0]: l for l in net2.layers}["h"].precision == "FP16"


@pytest.mark.parametrize("extra_use", ["m", "h", "g"])
def test_block_with_an_intermediate_read_elsewhere_stays(extra_use):
    net, x = _se_net(style="efficientnet", extra_use=extra_use)
    engine = _engine(net, x)
    assert "se" not in _kinds(engine) and "reduce" in _kinds(engine)


def test_intermediate_with_a_second_consumer_stays():
    net, x = _se_net(style="efficientnet")
    net.add_layer("pointwise", ["h"], ["h2"], {"program": [
        {"op": "mul", "args": ["$0", 2.0], "dtype": "float32"}]})
    net.outputs.append("h2")
    engine = _engine(net, x)
    assert "se" not in _kinds(engine)


def test_not_an_se_block_stays():
    """x * gate where x is not what the mean was taken of; a max instead of a mean."""
    net, x = _se_net(style="efficientnet")
    (mul,) = [l for l in net.layers if l.kind == "pointwise"]
    mul.inputs = ["in", "g"]
    assert "se" not in _kinds(_engine(net, x))
    net, x = _se_net(style="efficientnet")
    net.layers[1].attrs["op"] = "max"
    assert "se" not in _kinds(_engine(net, x))


def test_backend_can_veto_and_leaves_no_weights_behind():
    net, x = _se_net(style="efficientnet")
    net = apply_precision(bind_inputs(net, {"in": x.shape}), "FP32")
    asked = []
    vetoed = se_fusion(net, accept=lambda n, l: asked.append(l.kind) or False)
    assert asked == ["se"]
    assert [l.kind for l in vetoed.layers] == [l.kind for l in net.layers]
    assert set(vetoed.weights) == set(net.weights)
    fused = se_fusion(net)
    assert [l.kind for l in fused.layers] == ["conv", "se"]
    assert not {"w1", "w2"} & set(fused.weights)  # the 4-D weights gave way to [Cout, Cin]


def test_plan_round_trip_keeps_the_se_layer():
    net, x = _se_net(style="mobilenet_v3")
    engine = _engine(net, x, "FP16")
    loaded = deserialize_engine(engine.serialize())
    assert _kinds(loaded) == _kinds(engine) == ["pointwise", "conv", "se"]
    np.testing.assert_array_equal(np.asarray(loaded.execute([x])[0]),
                                  np.asarray(engine.execute([x])[0]))


def test_reference_se_op_rounds_its_stages():
    """numpy_ops.se: stages round (float16) and run programs, the gate scales x per (n, c)."""
    x = RNG.standard_normal((2, 3, 3, 8)).astype(np.float32)
    w1t, w2t = _w(8, 2), _w(2, 8)
    attrs = {"axes": [1, 2], "act1": None, "act2": {"op": "act", "fn": "sigmoid"},
             "pool": [{"round": "float16"}], "hidden": [], "gate": [
                 {"program": [{"op": "mul", "args": ["$0", 2.0], "dtype": "float32"}]}]}
    y, g = numpy_ops.se(x, w1t, None, w2t, None, attrs)
    p = x.mean(axis=(1, 2)).astype(np.float16).astype(np.float32)
    want_g = 2 * (1 / (1 + np.exp(-((p @ w1t) @ w2t))))
    np.testing.assert_allclose(g, want_g, rtol=1e-6)
    np.testing.assert_allclose(y, x * want_g[:, None, None, :], rtol=1e-6)
