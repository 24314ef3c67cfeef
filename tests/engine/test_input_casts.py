"""precision.absorb_input_casts: after tactics, an FP16 conv whose chosen implementation reads
float32 x (the CuPy backend's stem_mma) reads the network's float32 input itself instead of
the float16 copy a cast layer made, with the same answers bit for bit (the numpy backend
honours ``attrs["float32_x"]`` as stem_mma does: x rounded to float16 on load; the tests
give it the backend hook the CuPy backend has)."""

import numpy as np
import pytest

from tftrt.engine import BuilderConfig, build_engine
from tftrt.engine.backends.numpy_backend import NumpyBackend
from tftrt.engine.network import Network
from tftrt.engine.precision import absorb_input_casts

F32 = np.float32


def _stem_net(x_shape, rng, extra_reader=None, cast_out=False):
    """x (float32 NHWC) -> 3x3 conv (bias, ReLU) -> y; ``extra_reader``: "pointwise" (x * 2
    read from x's float16 copy) or "conv" (a second conv of x); ``cast_out``: the float16
    copy is an output too (the cast a convert pass makes of an FP16 model input)."""
    net = Network("stem")
    net.inputs = ["x"]
    net.add_tensor("x", "float32", x_shape)
    c = x_shape[-1]
    one = {"strides": [1, 1], "dilations": [1, 1], "pads": [1, 1, 1, 1], "group": 1}
    for k, out in enumerate(["y"] + (["y2"] if extra_reader == "conv" else [])):
        w = net.add_weight((rng.randn(8, 3, 3, c) * 0.5).astype(F32), f"w{k}")
        b = net.add_weight((rng.randn(8) * 0.1).astype(F32), f"b{k}")
        net.add_layer("conv", ["x", w, b], [out], one,
                      [{"op": "bias", "input": 2}, {"op": "act", "fn": "relu"}])
    net.outputs = ["y"] + (["y2"] if extra_reader == "conv" else [])
    if extra_reader == "pointwise":
        net.add_layer("pointwise", ["x"], ["z"], {"program": [
            {"op": "mul", "args": ["$0", 2.0], "dtype": "float32"}]})
        net.outputs.append("z")
    return net


def _x(x_shape, rng):
    """Values float16 rounds (ties and past its range included), NaN and -inf pixels."""
    x = (rng.randn(*x_shape) * 3).astype(F32)
    x.flat[:4] = [1 + 2 ** -11, 1 + 3 * 2 ** -11, 70000.0, -1e-8]
    x[0, 1, 1, :] = np.nan
    x[0, 2, 2, :] = -np.inf
    return x


@pytest.fixture
def reads_float32(monkeypatch):
    """The numpy backend with the CuPy backend's hook, for every conv."""
    monkeypatch.setattr(NumpyBackend, "reads_float32",
                        lambda self, net, layer: layer.kind == "conv", raising=False)


@pytest.mark.parametrize("precision", ["FP16", "INT8"])
def test_the_stem_reads_the_float32_input_with_the_same_answers(monkeypatch, reads_float32,
                                                                  precision):
    """The cast layer is gone, the stem reads x (float32) and says so; the outputs are the
    same bit for bit as with the cast (TFTRT_FLOAT32_X=0), NaN and -inf included."""
    monkeypatch.delenv("TFTRT_QUANTIZE_STEM", raising=False)  # the users' FP16 stem
    rng = np.random.RandomState(3)
    x_shape = (2, 6, 6, 3)
    net = _stem_net(x_shape, rng)
    x = _x(x_shape, rng)
    if precision == "INT8":
        from tftrt.engine import quantization as Q
        net.quantization = Q.new_table(tensors={"x": 4.0, "y": 6.0})
    monkeypatch.delenv("TFTRT_FLOAT32_X", raising=False)
    engine = build_engine(net, {"x": x_shape}, BuilderConfig(precision=precision))
    (stem,) = [l for l in engine.network.layers if l.kind == "conv"]
    assert stem.precision == "FP16" and stem.inputs[0] == "x" and stem.attrs["float32_x"]
    assert not any(l.kind == "pointwise" for l in engine.network.layers)
    monkeypatch.setenv("TFTRT_FLOAT32_X", "0")
    cast = build_engine(net, {"x": x_shape}, BuilderConfig(precision=precision))
    kinds = [l.kind for l in cast.network.layers]
    assert kinds == ["pointwise", "conv"]
    assert "float32_x" not in cast.network.layers[1].attrs
    got, want = engine.execute([x])[0], cast.execute([x])[0]
    assert np.isnan(want).any()
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("case", ["a float reader too", "the copy is an output",
                                  "the implementation reads float16 only", "switched off"])
def test_the_cast_stays_where_a_reader_needs_the_float16_copy(monkeypatch, reads_float32,
                                                               case):
    """The cast stays (and nothing reads float32 x) where another layer reads the float16
    copy (a pointwise layer; both readers must read float32), where the copy is a network
    output, where a reader's implementation reads float16 only (the backend says no), or
    with TFTRT_FLOAT32_X=0."""
    monkeypatch.delenv("TFTRT_FLOAT32_X", raising=False)
    rng = np.random.RandomState(4)
    x_shape = (1, 5, 5, 3)
    net = _stem_net(x_shape, rng, extra_reader="pointwise" if case == "a float reader too"
                    else None)
    from tftrt.engine.builder import optimized_network
    opt, _, _ = optimized_network(net, {"x": x_shape}, BuilderConfig(precision="FP16"))
    (cast,) = [l for l in opt.layers if l.kind == "pointwise" and l.inputs == ["x"]
               and l.attrs["program"][0]["op"] == "cast"]
    if case == "a float reader too":  # make the pointwise layer read the copy, as FP16 does
        z = next(l for l in opt.layers if l.outputs == ["z"])
        z.inputs[0] = cast.outputs[0]
    if case == "the copy is an output":
        opt.outputs.append(cast.outputs[0])
    if case == "switched off":
        monkeypatch.setenv("TFTRT_FLOAT32_X", "0")
    layers = list(opt.layers)
    yes = lambda n, l: l.kind == "conv" and \
        case != "the implementation reads float16 only"  # noqa: E731
    assert absorb_input_casts(opt, yes) == []
    assert opt.layers == layers and cast.outputs[0] in opt.tensors
    assert not any(l.attrs.get("float32_x") for l in opt.layers)


def test_every_reader_of_the_copy_reads_float32_or_none_does(monkeypatch, reads_float32):
    """Two convs of the same image (one cast for both): both read x, or, where one of them
    cannot, both keep the cast."""
    monkeypatch.delenv("TFTRT_FLOAT32_X", raising=False)
    rng = np.random.RandomState(5)
    x_shape = (1, 5, 5, 3)
    net = _stem_net(x_shape, rng, extra_reader="conv")
    from tftrt.engine.builder import optimized_network
    for only, want in ((None, ["y", "y2"]), ("y", [])):
        opt, _, _ = optimized_network(net, {"x": x_shape}, BuilderConfig(precision="FP16"))
        assert [l.kind for l in opt.layers].count("pointwise") == 1  # one cast, two readers
        got = absorb_input_casts(opt, lambda n, l: only is None or l.outputs == [only])
        assert sorted(n for n in got) == sorted(
            l.name for l in opt.layers if l.outputs[0] in want)
        assert [l.kind for l in opt.layers].count("pointwise") == (0 if want else 1)
    x = _x(x_shape, rng)
    engine = build_engine(net, {"x": x_shape}, BuilderConfig(precision="FP16"))
    monkeypatch.setenv("TFTRT_FLOAT32_X", "0")
    cast = build_engine(net, {"x": x_shape}, BuilderConfig(precision="FP16"))
    assert len(cast.network.layers) == len(engine.network.layers) + 1
    for g, w in zip(engine.execute([x]), cast.execute([x])):
        np.testing.assert_array_equal(g, w)


def test_a_saved_plan_keeps_the_float32_read(monkeypatch, reads_float32):
    from tftrt.engine import deserialize_engine, serialize_engine
    monkeypatch.delenv("TFTRT_FLOAT32_X", raising=False)
    rng = np.random.RandomState(6)
    x_shape = (1, 5, 5, 3)
    engine = build_engine(_stem_net(x_shape, rng), {"x": x_shape},
                          BuilderConfig(precision="FP16"))
    again = deserialize_engine(serialize_engine(engine))
    (stem,) = [l for l in again.network.layers if l.kind == "conv"]
    assert stem.inputs[0] == "x" and stem.attrs["float32_x"]
    x = _x(x_shape, rng)
    np.testing.assert_array_equal(again.execute([x])[0], engine.execute([x])[0])
