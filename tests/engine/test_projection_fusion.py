"""quantization.fuse_projections: a bottleneck's projection shortcut taken into the residual
layer that adds it (the CuPy backend's q_mma kernel runs both, cuda_source_qmma.Projection).
On the numpy backend the fused layer runs the projection first and adds its codes, so the
rewrite itself is checked here: the same answers bit for bit, the plan round trip, the
precision report, and the cases it must leave alone."""

import dataclasses

import numpy as np
import pytest

from tftrt.engine import BuilderConfig, build_engine
from tftrt.engine import quantization as Q
from tftrt.engine.backends.numpy_backend import NumpyBackend
from tftrt.engine.network import Network
from tftrt.engine.plan import deserialize_engine, serialize_engine

F32 = np.float32


def _conv(stride=1, k=1):
    pad = k // 2
    return {"strides": [stride, stride], "dilations": [1, 1], "pads": [pad] * 4, "group": 1}


def _bottleneck(rng, stride=1, c=8, mid=8, cout=16, shortcut_reader=False,
                shortcut_first=False):
    """x -> conv0 (3x3, relu) -> x2; a = relu(conv1(x2)) (1x1, ``stride``);
    b = relu(conv2(a)) (3x3); t = proj(x2) (1x1, ``stride``); y = relu(conv3(b) + t):
    ResNet50's first block of a stage. ``shortcut_reader``: t is also a network output;
    ``shortcut_first``: t's layer listed before a's (as Keras' ResNet50 lists its blocks)."""
    net = Network("block")
    net.inputs = ["x"]
    net.add_tensor("x", "float32", (2, 8, 8, 8))

    def conv(x, out, cin, cout_, k, stride=1, epi_extra=(), extra_inputs=(), relu=True):
        w = net.add_weight((rng.randn(cout_, k, k, cin) * (1.2 / np.sqrt(k * k * cin)))
                           .astype(F32), "w_" + out)
        b = net.add_weight((rng.randn(cout_) * 0.1).astype(F32), "b_" + out)
        epi = [{"op": "bias", "input": 2}] + list(epi_extra) + \
            ([{"op": "act", "fn": "relu"}] if relu else [])
        net.add_layer("conv", [x, w, b] + list(extra_inputs), [out], _conv(stride, k), epi)

    conv("x", "x2", 8, c, 3)
    if shortcut_first:
        conv("x2", "t", c, cout, 1, stride, relu=False)
    conv("x2", "a", c, mid, 1, stride)
    conv("a", "b", mid, mid, 3)
    if not shortcut_first:
        conv("x2", "t", c, cout, 1, stride, relu=False)
    conv("b", "y", mid, cout, 1, epi_extra=[{"op": "add", "input": 3}], extra_inputs=["t"])
    net.outputs = ["y"] + (["t"] if shortcut_reader else [])
    x = rng.randn(2, 8, 8, 8).astype(F32)
    ref = build_engine(net, {"x": x.shape}, BuilderConfig(precision="FP32"))
    outs = dict(zip(net.outputs, ref.execute([x])))
    probe = net.copy()
    probe.outputs = ["x2", "a", "b", "t"]
    got = dict(zip(probe.outputs, build_engine(probe, {"x": x.shape},
                                               BuilderConfig(precision="FP32")).execute([x])))
    net.quantization = Q.new_table(tensors={
        "x": float(np.abs(x).max()), **{n: float(np.abs(v).max()) for n, v in got.items()},
        "y": float(np.abs(outs["y"]).max())})
    return net, x


@pytest.fixture
def fusing(monkeypatch):
    """The numpy backend offering every projection (as the CuPy backend's q_mma would)."""
    monkeypatch.setenv("TFTRT_QUANT_MMA_PROJECTION", "1")
    asked = []

    def fuses(self, net, m, p):
        asked.append((m.name, p.name))
        p.attrs["_backend"] = {"default": {"kernel": "p's own"}}  # as the CuPy backend records
        return True
    monkeypatch.setattr(NumpyBackend, "fuses_projection", fuses, raising=False)
    return asked


def _int8(net, x):
    engine = build_engine(net, {"x": x.shape}, BuilderConfig(precision="INT8"))
    return engine, engine.execute([x])


@pytest.mark.parametrize("stride", [1, 2])
def test_the_fused_layer_gives_the_two_layers_codes_bit_for_bit(monkeypatch, fusing, stride):
    rng = np.random.RandomState(stride)
    net, x = _bottleneck(rng, stride)
    monkeypatch.setenv("TFTRT_QUANT_MMA_PROJECTION", "0")
    plain, want = _int8(net, x)
    assert "t" in plain.network.tensors and plain.network.tensors["t"].dtype == "int8"
    assert fusing == []  # off: never asked
    monkeypatch.setenv("TFTRT_QUANT_MMA_PROJECTION", "1")
    fused, got = _int8(net, x)
    assert fusing == [("y", "t")]
    names = [l.name for l in fused.network.layers]
    assert names == [l.name for l in plain.network.layers if l.name != "t"]
    y = fused.network.layers[-1]
    d = y.attrs["projection"]
    assert d["name"] == "t" and d["residual"] == 3 and d["output"]["name"] == "t"
    assert not any(k.startswith("_") for k in d["attrs"])  # no records of t's own tactic
    assert y.inputs[3] == "x2"  # x2 read in the residual's place, t's weights appended
    assert [y.inputs[k] for k in d["inputs_at"]] == plain.network.layers[3].inputs
    assert "t" not in fused.network.tensors
    np.testing.assert_array_equal(got[0], want[0])
    ref = build_engine(net, {"x": x.shape}, BuilderConfig(precision="FP32")).execute([x])[0]
    assert np.linalg.norm(got[0] - ref) / np.linalg.norm(ref) < 0.05

    # a saved plan runs the fused layer as it was built
    again = deserialize_engine(serialize_engine(fused))
    assert "projection" in again.network.layers[-1].attrs
    np.testing.assert_array_equal(again.execute([x])[0], want[0])

    # the report still counts the projection's FLOPs as INT8, and says where it runs
    before, after = Q.precision_report(plain.network), Q.precision_report(fused.network)
    assert after["flops"] == before["flops"] > 0
    assert after["quantized_flops"] == before["quantized_flops"]
    row = {r["name"]: r for r in after["layers"]}["t"]
    assert row["precision"] == "INT8" and row["kernel"].startswith("fused into y")


def test_a_shortcut_another_layer_reads_is_not_fused(fusing):
    rng = np.random.RandomState(7)
    net, x = _bottleneck(rng, 1, shortcut_reader=True)
    engine, _ = _int8(net, x)
    assert fusing == [] and all("projection" not in l.attrs for l in engine.network.layers)
    assert "t" in [l.name for l in engine.network.layers]


def test_the_backend_decides(monkeypatch):
    """A backend that says no (or has no hook) keeps both layers."""
    monkeypatch.setenv("TFTRT_QUANT_MMA_PROJECTION", "1")
    monkeypatch.setattr(NumpyBackend, "fuses_projection", lambda self, net, m, p: False,
                        raising=False)
    rng = np.random.RandomState(3)
    net, x = _bottleneck(rng, 2)
    engine, _ = _int8(net, x)
    assert "t" in [l.name for l in engine.network.layers]


def test_only_int8_codes_over_int8_codes_fuse(fusing):
    """The projection must read int8 codes and store them: an FP8 engine (no int8 storage
    between layers) fuses nothing."""
    rng = np.random.RandomState(11)
    net, x = _bottleneck(rng, 1)
    engine = build_engine(net, {"x": x.shape}, BuilderConfig(precision="FP8"))
    assert fusing == [] and len(engine.network.layers) == 5


def test_fusion_rewrites_only_what_it_names(monkeypatch):
    """fuse_projections on a built network: the residual layer reads the projection's input
    in the residual's place, the projection's weight and operands are appended to its
    inputs, and nothing else changes."""
    rng = np.random.RandomState(2)
    net, x = _bottleneck(rng, 1)
    engine = build_engine(net, {"x": x.shape}, BuilderConfig(precision="INT8"))
    n = engine.network.copy()
    y_before = [l for l in n.layers if l.name == "y"][0].clone()
    t_layer = [l for l in n.layers if l.name == "t"][0].clone()
    monkeypatch.setenv("TFTRT_QUANT_MMA_PROJECTION", "1")
    assert Q.fuse_projections(n, lambda net, m, p: True) == ["y"]
    y = [l for l in n.layers if l.name == "y"][0]
    k = len(y_before.inputs)
    assert y.inputs[3] == t_layer.inputs[0]
    assert y.inputs[:3] + y.inputs[4:k] == y_before.inputs[:3] + y_before.inputs[4:]
    assert y.inputs[k:] == t_layer.inputs[1:]
    assert y.epilogue == y_before.epilogue
    sub, p = Q.projection_layer(n, y)
    assert p.inputs == t_layer.inputs and p.outputs == ["t"] and p.epilogue == t_layer.epilogue
    assert sub.tensors["t"].dtype == "int8"
    assert tuple(sub.tensors["t"].shape) == tuple(engine.network.tensors["t"].shape)


# --- the fused layer's q_mma kernel, built for the host ----------------------------------------
@pytest.fixture(scope="module")
def host_build():
    from tests.engine.test_cuda_codegen import _host_compiler
    if _host_compiler() is None:
        pytest.skip("no host C++ compiler")
    from tests.engine.test_dw_codegen import _build, _run_host
    from tests.engine.test_qmma_codegen import _host_text
    return _build, _run_host, _host_text


@pytest.mark.parametrize("stride", [1, 2])
def test_the_fused_layers_q_mma_kernel_is_the_numpy_layers_arithmetic(
        monkeypatch, host_build, tmp_path, stride):
    """ResNet-like channels (64) that q_mma takes: the backend hook's question
    (cuda_source_qmma.layer_source with the projection) is answered yes; the fused layer's
    own source, weights and launch arguments (what QuantGemmMma runs), built for the host,
    give the numpy backend's answers for that layer bit for bit on random codes."""
    from tftrt.engine.backends import cuda_source_qmma as QM
    build, run_host, host_text = host_build
    monkeypatch.setenv("TFTRT_QUANT_MMA_PROJECTION", "1")
    asked = []

    def fuses(self, net, m, p):
        asked.append(QM.layer_source(net, m, p).projection)
        return True
    monkeypatch.setattr(NumpyBackend, "fuses_projection", fuses, raising=False)
    rng = np.random.RandomState(20 + stride)
    net, x = _bottleneck(rng, stride, c=64, mid=64, cout=64)
    engine = build_engine(net, {"x": x.shape}, BuilderConfig(precision="INT8"))
    assert len(asked) == 1 and asked[0] is not None
    assert (asked[0].conv is None) == (stride == 1)
    n = engine.network
    y = n.layers[-1]
    src = QM.layer_source(n, y)
    assert src.projection == asked[0] and src.y_dtype == "float32"

    ins = []
    for name in y.inputs:
        if name in n.weights:
            ins.append(np.asarray(n.weights[name]))
        else:
            t = n.tensors[name]
            assert t.dtype == "int8"
            ins.append(rng.randint(-127, 128, t.shape).astype(np.int8))
    want = NumpyBackend().prepare_layer(n, y, n.weights)(ins)[0]
    so = build(host_text([src]), tmp_path, "fused")
    w, w2 = QM.packed_weights(y, src, lambda name: np.asarray(n.weights[name]))
    out = np.full(want.shape, np.nan, np.float32)
    args = QM.launch_args(y, src, ins, w, w2, out)
    rows = int(args[-1])
    run_host(so, 0, args[:-1] + [rows], src.grid(rows), src.threads)
    assert np.abs(want).max() > 0.5 and (want > 0).mean() > 0.2  # not a dead layer
    np.testing.assert_array_equal(out, want)


def test_a_profiles_other_shapes_start_from_the_network_before_fusion(fusing, monkeypatch):
    """unfused() gives back the network before fuse_projections (the projection a layer of its
    own with its tactic, the residual layer reading its codes): a dynamic profile's template
    is made from it (the fused network had one layer fewer than the probe shapes' and served
    no template: regression hunt, s51), and an engine built from the template at another
    shape fuses the pair again and answers as a full build there."""
    from tftrt.engine.builder import build_engine_from_template, optimized_network
    from tftrt.engine.shape_template import make_template
    from tftrt.profiles import Profile
    rng = np.random.RandomState(30)
    net, x = _bottleneck(rng, 1)
    net.tensors["x"].shape = (-1, 8, 8, 8)
    cfg = BuilderConfig(precision="INT8")
    opt = build_engine(net.copy(), {"x": (4, 8, 8, 8)}, cfg)
    assert "projection" in opt.network.layers[-1].attrs
    back = Q.unfused(opt.network)
    assert [l.name for l in back.layers] == ["x2", "a", "b", "t", "y"]
    assert back.tensors["t"].dtype == "int8" and back.layers[-1].inputs[3] == "t"
    assert "projection" in opt.network.layers[-1].attrs  # (left as it was)
    monkeypatch.setenv("TFTRT_QUANT_MMA_PROJECTION", "0")
    plain = build_engine(net.copy(), {"x": (4, 8, 8, 8)}, cfg).network
    monkeypatch.setenv("TFTRT_QUANT_MMA_PROJECTION", "1")
    # (tactics aside: each build times its own, the numpy backend's by wall time)
    for got, want in zip(back.layers, plain.layers):
        assert (got.name, got.inputs, got.outputs, got.epilogue, got.precision) == \
            (want.name, want.inputs, want.outputs, want.epilogue, want.precision)
        assert got.kernel_attrs() == want.kernel_attrs()
    fused = {l.name: l for l in opt.network.layers}
    assert [l.tactic for l in back.layers] == [
        fused[n].tactic for n in ("x2", "a", "b")] + [
        fused["y"].attrs["projection"]["tactic"], fused["y"].tactic]
    assert {k: (v.dtype, tuple(v.shape)) for k, v in back.tensors.items()} == \
        {k: (v.dtype, tuple(v.shape)) for k, v in plain.tensors.items()}
    assert Q.unfused(back) is back  # nothing fused: itself
    prof = Profile(min=[(1, 8, 8, 8)], opt=[(4, 8, 8, 8)], max=[(4, 8, 8, 8)])
    template = make_template(back, lambda s: optimized_network(net.copy(), s, cfg)[0], prof)
    fusing.clear()
    other = build_engine_from_template(template, {"x": (2, 8, 8, 8)}, opt, cfg)
    assert fusing == [("y", "t")] and "projection" in other.network.layers[-1].attrs
    full = build_engine(net.copy(), {"x": (2, 8, 8, 8)}, cfg)
    np.testing.assert_array_equal(other.execute([x])[0], full.execute([x])[0])


def _profiler(int8_speedup):
    """A per-layer profile (the numpy backend times nothing): each conv's time in proportion
    to its FLOPs, INT8 ``int8_speedup`` times as fast as FP16; a fused layer does its
    projection's work too."""
    def layer_times(engine):
        n, out = engine.network, {}
        for l in n.layers:
            f = Q.layer_flops(n, l) if l.kind in ("conv", "matmul") else 0
            fused = Q.projection_layer(n, l)
            if fused is not None:
                f += Q.layer_flops(*fused)
            out[l.name] = 1e-9 + f * 1e-12 / (int8_speedup if "quant" in l.attrs else 1.0)
        return out
    return layer_times


@pytest.mark.parametrize("speedup", [2.0, 0.5])
def test_timed_precision_weighs_a_fused_pair_against_both_fp16_layers(
        fusing, monkeypatch, speedup):
    """INT8 twice as fast per FLOP everywhere: nothing is kept FP16 (against the residual
    layer's FP16 time alone, the fused layer's INT8 time with its projection's work lost:
    regression hunt, s51). Twice as slow: the pair stays FP16 together, each saying why."""
    from tftrt.engine import builder
    monkeypatch.setenv("TFTRT_QUANT_TIMED_PRECISION", "1")
    times = _profiler(speedup)
    monkeypatch.setattr(builder, "layer_times", times)
    monkeypatch.setattr(builder, "engine_seconds", lambda engine: sum(times(engine).values()))
    net, x = _bottleneck(np.random.RandomState(40), 1, c=32, mid=8, cout=16)
    engine = build_engine(net, {"x": x.shape}, BuilderConfig(precision="INT8"))
    info = engine.build_info["timed_precision"]
    if speedup > 1:
        assert info["fp16_faster"] == [] and info["kept"] == "INT8", info
        assert "projection" in engine.network.layers[-1].attrs
    else:
        assert {"y", "t"} <= set(info["fp16_faster"]) and info["kept"] == "FP16", info
        layers = {l.name: l for l in engine.network.layers}
        assert layers["y"].precision == layers["t"].precision == "FP16", info
        assert "with y" in layers["t"].attrs["quant_fallback"]  # the pair's reason


def test_unfused_puts_a_shortcut_listed_first_back_where_it_was(fusing, monkeypatch):
    """A block whose shortcut conv is listed before the block's other convs (Keras' ResNet50
    order): unfused() gives the layers in the builder's order (the projection put right
    before its reader failed the profile's template: hunt, s53), and a profile's other
    shape gets an engine from the template with a full build's answers."""
    from tftrt.engine.shape_template import specializer
    from tftrt.profiles import Profile, ProfileEngine
    rng = np.random.RandomState(40)
    net, x = _bottleneck(rng, 1, shortcut_first=True)
    cfg = BuilderConfig(precision="INT8")
    monkeypatch.setenv("TFTRT_QUANT_MMA_PROJECTION", "0")
    plain = build_engine(net.copy(), {"x": x.shape}, cfg)
    monkeypatch.setenv("TFTRT_QUANT_MMA_PROJECTION", "1")
    fused = build_engine(net.copy(), {"x": x.shape}, cfg)
    assert "projection" in fused.network.layers[-1].attrs
    assert [l.name for l in Q.unfused(fused.network).layers] == \
        [l.name for l in plain.network.layers] == ["x2", "t", "a", "b", "y"]
    net.tensors["x"].shape = (-1, 8, 8, 8)

    def build(key, choices, weight_cache):
        return build_engine(net, {"x": key[0]}, dataclasses.replace(
            cfg, tactic_choices=choices, weight_cache=weight_cache))
    prof = Profile([(1, 8, 8, 8)], [(2, 8, 8, 8)], [(2, 8, 8, 8)])
    pe = ProfileEngine([prof], build, "numpy", specializer(net, cfg)).build_profiles()
    assert pe.template_errors == {}
    one = x[:1]
    got = pe.execute([one])[0]
    np.testing.assert_array_equal(got, build_engine(net.copy(), {"x": one.shape},
                                                    cfg).execute([one])[0])
