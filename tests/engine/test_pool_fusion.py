"""pool_fusion.fuse_pools: a stem conv taking the 3x3 / 2 max pool after it into its own kernel
(the CuPy backend's stem_mma row tiles, cuda_source_stem_mma.StemPool; its host build is
checked in test_stem_pool_codegen). On the numpy backend the fused layer runs the conv, then
the pool, so the rewrite itself is checked here: the same answers bit for bit in FP16 and
INT8, the plan round trip, the network before fusion for a profile's other shapes, the
reports, and the cases it must leave alone."""

import dataclasses

import numpy as np
import pytest

from tftrt.engine import BuilderConfig, build_engine, pool_fusion
from tftrt.engine import quantization as Q
from tftrt.engine.backends.numpy_backend import NumpyBackend
from tftrt.engine.network import Network
from tftrt.engine.plan import deserialize_engine, serialize_engine

F32 = np.float32


def _stem(rng, pool_read_twice=False, pool_is_output=False, x_shape=(2, 20, 32, 3)):
    """x -> stem (7x7 / 2, bias, relu) -> s -> max pool 3x3 / 2 (pads 1, zero pad value,
    as pad_folding leaves a Keras ResNet's) -> p -> conv 1x1 (relu) -> y: ResNet50's
    entry. ``pool_read_twice``: s is also a network output."""
    net = Network("stem")
    net.inputs = ["x"]
    net.add_tensor("x", "float32", x_shape)
    w = net.add_weight((rng.randn(16, 7, 7, 3) * 0.15).astype(F32), "w_s")
    b = net.add_weight((rng.randn(16) * 0.1).astype(F32), "b_s")
    net.add_layer("conv", ["x", w, b], ["s"], {"strides": [2, 2], "dilations": [1, 1],
                                              "pads": [3, 3, 3, 3], "group": 1},
                  [{"op": "bias", "input": 2}, {"op": "act", "fn": "relu"}])
    net.add_layer("pool", ["s"], ["p"], {"mode": "max", "kernel": [3, 3], "strides": [2, 2],
                                         "dilations": [1, 1], "pads": [1, 1, 1, 1],
                                         "ceil_mode": 0, "count_include_pad": 0,
                                         "pad_value": 0.0}, name="pool1")
    w2 = net.add_weight((rng.randn(8, 1, 1, 16) * 0.3).astype(F32), "w_y")
    b2 = net.add_weight((rng.randn(8) * 0.1).astype(F32), "b_y")
    net.add_layer("conv", ["p", w2, b2], ["y"], {"strides": [1, 1], "dilations": [1, 1],
                                                "pads": [0, 0, 0, 0], "group": 1},
                  [{"op": "bias", "input": 2}, {"op": "act", "fn": "relu"}])
    net.outputs = ["y"] + (["s"] if pool_read_twice else []) + (["p"] if pool_is_output else [])
    x = rng.uniform(-1, 1, x_shape).astype(F32)
    probe = net.copy()
    probe.outputs = ["s", "p", "y"]
    got = build_engine(probe, {"x": x.shape}, BuilderConfig(precision="FP32")).execute([x])
    net.quantization = Q.new_table(tensors={"x": 1.0, **{
        n: float(np.abs(v).max()) for n, v in zip(probe.outputs, got)}})
    x[0, 3, 5, :] = np.nan  # NaN conv results the pool passes over
    return net, x


@pytest.fixture
def fusing(monkeypatch):
    """The numpy backend offering every pool (as the CuPy backend's stem_mma would)."""
    monkeypatch.setenv("TFTRT_STEM_MMA_POOL", "1")
    asked = []

    def fuses(self, net, conv, pool):
        asked.append((conv.name, pool.name))
        pool.attrs["_backend"] = {"default": {"kernel": "the pool's own"}}
        return True
    monkeypatch.setattr(NumpyBackend, "fuses_pool", fuses, raising=False)
    return asked


def _layers(engine):
    return [(l.name, l.kind) for l in engine.network.layers]


def _layer(net, name):
    (layer,) = [l for l in net.layers if l.name == name]
    return layer


@pytest.mark.parametrize("precision", ["FP16", "INT8"])
def test_the_fused_stem_gives_the_conv_and_pools_answers_bit_for_bit(monkeypatch, fusing,
                                                                    precision):
    rng = np.random.RandomState(1)
    net, x = _stem(rng)
    cfg = BuilderConfig(precision=precision)
    # INT8: the stem stays FP16 (the default; tests/conftest quantizes stems) and stores its
    # pool's int8 codes, as the CuPy backend's stem_mma does
    # (quantization.absorb_pool_requantization), and the pool pools those
    monkeypatch.setenv("TFTRT_QUANTIZE_STEM", "0")
    monkeypatch.setattr(NumpyBackend, "stores_int8",
                        lambda self, net, l: l.kind == "conv" and "quant" not in l.attrs,
                        raising=False)
    monkeypatch.setenv("TFTRT_STEM_MMA_POOL", "0")
    plain = build_engine(net.copy(), {"x": x.shape}, cfg)
    want = plain.execute([x])
    assert fusing == []  # off: never asked
    monkeypatch.setenv("TFTRT_STEM_MMA_POOL", "1")
    fused = build_engine(net.copy(), {"x": x.shape}, cfg)
    got = fused.execute([x])
    assert fusing == [("s", "pool1")]
    assert _layers(fused) == [n for n in _layers(plain) if n[0] != "pool1"]
    stem = _layer(fused.network, "s")
    d = stem.attrs["pool"]
    assert d["name"] == "pool1" and d["kind"] == "pool" and d["output"]["name"] == "s"
    assert not any(k.startswith("_") for k in d["attrs"])  # no records of the pool's tactic
    assert stem.outputs == ["p"] and "s" not in fused.network.tensors
    assert d["output"]["dtype"] == plain.network.tensors["s"].dtype == (
        "int8" if precision == "INT8" else "float16")
    assert ("code_floor" in d["attrs"]) == (precision == "INT8")
    assert tuple(d["output"]["shape"]) == tuple(plain.network.tensors["s"].shape)
    np.testing.assert_array_equal(got[0], want[0])
    assert np.isfinite(got[0]).all() and (got[0] > 0).mean() > 0.2

    # a saved plan runs the fused layer as it was built
    again = deserialize_engine(serialize_engine(fused))
    assert "pool" in _layer(again.network, "s").attrs
    np.testing.assert_array_equal(again.execute([x])[0], want[0])


def test_the_network_before_fusion_comes_back(fusing):
    """unfused() (and quantization.unfused, which a profile's other shapes and the tactic
    choices start from) gives the pool back as a layer of its own with its tactic, reading
    the conv's output again; the fused network is left as it was."""
    from tftrt.engine.builder import _fused_pairs
    from tftrt.engine.tactics import network_choices
    rng = np.random.RandomState(2)
    net, x = _stem(rng)
    cfg = BuilderConfig(precision="FP16")
    fused = build_engine(net.copy(), {"x": x.shape}, cfg)
    back = pool_fusion.unfused(fused.network)
    assert [(l.name, l.kind) for l in back.layers][-3:] == [("s", "conv"), ("pool1", "pool"),
                                                            ("y", "conv")]
    conv, pool = back.layers[-3:-1]
    assert conv.outputs == ["s"] and pool.inputs == ["s"] and pool.outputs == ["p"]
    assert "pool" not in conv.attrs and pool.attrs["pad_value"] == 0.0
    stem = _layer(fused.network, "s")
    assert back.tensors["s"].dtype == stem.attrs["pool"]["output"]["dtype"]
    assert "pool" in stem.attrs and "s" not in fused.network.tensors
    assert [l.name for l in Q.unfused(fused.network).layers] == [l.name for l in back.layers]
    assert pool_fusion.unfused(back) is back  # nothing fused: itself
    assert set(network_choices(fused.network)) == {l.name for l in back.layers}
    assert _fused_pairs(fused) == {"s": "pool1"}


def test_a_profiles_other_shape_fuses_again(fusing, monkeypatch):
    """An engine built from a dynamic profile's template at another shape (the template made
    from the network before fusion) fuses the pair again and answers as a full build."""
    from tftrt.engine.builder import build_engine_from_template, optimized_network
    from tftrt.engine.shape_template import make_template
    from tftrt.profiles import Profile
    rng = np.random.RandomState(3)
    net, x = _stem(rng)
    net.tensors["x"].shape = (-1, 20, 32, 3)
    cfg = BuilderConfig(precision="FP16")
    opt = build_engine(net.copy(), {"x": (4, 20, 32, 3)}, cfg)
    prof = Profile(min=[(1, 20, 32, 3)], opt=[(4, 20, 32, 3)], max=[(4, 20, 32, 3)])
    template = make_template(Q.unfused(opt.network),
                             lambda s: optimized_network(net.copy(), s, cfg)[0], prof)
    fusing.clear()
    other = build_engine_from_template(template, {"x": (2, 20, 32, 3)}, opt, cfg)
    assert fusing == [("s", "pool1")] and "pool" in _layer(other.network, "s").attrs
    full = build_engine(net.copy(), {"x": (2, 20, 32, 3)}, cfg)
    np.testing.assert_array_equal(other.execute([x])[0], full.execute([x])[0])


@pytest.mark.parametrize("case", ["conv output read twice", "pool output is a net output"])
def test_what_is_left_alone(fusing, case):
    """A conv output another reader (here the network's outputs) needs stays in memory; a
    pool that stores another dtype than it reads (a network output: float32 from the FP16
    stem's float16) is not the stem kernel's store: no fusion, and not asked."""
    rng = np.random.RandomState(4)
    net, x = _stem(rng, pool_read_twice=case == "conv output read twice",
                   pool_is_output=case == "pool output is a net output")
    engine = build_engine(net.copy(), {"x": x.shape}, BuilderConfig(precision="FP16"))
    assert fusing == [] and "pool1" in [l.name for l in engine.network.layers]
    assert not any("pool" in l.attrs for l in engine.network.layers if l.kind == "conv")


def test_the_backend_decides(monkeypatch):
    """A backend that says no (or has no hook) keeps both layers."""
    monkeypatch.setenv("TFTRT_STEM_MMA_POOL", "1")
    monkeypatch.setattr(NumpyBackend, "fuses_pool", lambda self, net, c, p: False,
                        raising=False)
    rng = np.random.RandomState(5)
    net, x = _stem(rng)
    engine = build_engine(net.copy(), {"x": x.shape}, BuilderConfig(precision="FP16"))
    assert "pool1" in [l.name for l in engine.network.layers]


def test_the_cupy_backend_offers_stem_mma_with_a_pool_it_takes(monkeypatch):
    """CupyBackend.fuses_pool (its source only, no GPU): yes for a stem on stem_mma's row
    tiles whose kernel takes the pool (the conv's width a multiple of 16), no on another
    tactic, on the gathers or where StemPool refuses; the fused layer's kernel parameters
    carry the pool (layer_params)."""
    from tftrt.engine.backends import cuda_source_stem_mma as SM
    from tftrt.engine.backends.cupy_backend import CupyBackend, _io_needs
    rng = np.random.RandomState(6)
    net, x = _stem(rng)
    engine = build_engine(net.copy(), {"x": x.shape}, BuilderConfig(precision="FP16"))
    n = engine.network
    conv, pool = _layer(n, "s"), _layer(n, "pool1")
    conv.tactic = "cudnn"
    assert not CupyBackend.fuses_pool(None, n, conv, pool)
    conv.tactic = "stem_mma"
    assert CupyBackend.fuses_pool(None, n, conv, pool)
    monkeypatch.setenv("TFTRT_STEM_MMA_ROWS", "0")  # the stem on the gathers: no pool
    assert not CupyBackend.fuses_pool(None, n, conv, pool)
    monkeypatch.delenv("TFTRT_STEM_MMA_ROWS")
    p = SM.layer_params(n, conv, pool)["pool"]
    assert p["out_shape"] == (2, 5, 8, 16) and p["pads"] == (1, 1, 1, 1) and \
        p["pad_value"] == 0.0 and p["floor"] is None
    monkeypatch.setenv("TFTRT_STEM_MMA_POOL", "1")
    assert pool_fusion.fuse_pools(n, lambda *a: CupyBackend.fuses_pool(None, *a)) == ["s"]
    fused = SM.StemMmaSource(**SM.layer_params(n, _layer(n, "s")))
    assert fused.pool.out_shape == (2, 5, 8, 16) and fused.rows["pr"] >= 1
    assert ("stem_pool", "does not pool its output") in _io_needs(_layer(n, "s"))
    # a conv 24 wide (not 16s): the kernel does not pool it
    net2, _ = _stem(rng, x_shape=(2, 20, 48, 3))
    n2 = build_engine(net2.copy(), {"x": (2, 20, 48, 3)},
                      BuilderConfig(precision="FP16")).network
    _layer(n2, "s").tactic = "stem_mma"
    assert not CupyBackend.fuses_pool(None, n2, _layer(n2, "s"), _layer(n2, "pool1"))


@pytest.mark.parametrize("mode,float16,int8", [("auto", True, False), ("1", True, True),
                                               ("0", False, False)])
def test_by_default_only_float16_stems_take_their_pool(monkeypatch, mode, float16, int8):
    """TFTRT_STEM_MMA_POOL: "auto" (the default) fuses a stem storing float16 (an FP16
    engine's), not one storing an INT8 engine's int8 codes (measured no faster); "1" both;
    "0" neither (fuse_pools asks nothing)."""
    from tftrt.engine.backends.cupy_backend import CupyBackend
    if mode == "auto":
        monkeypatch.delenv("TFTRT_STEM_MMA_POOL", raising=False)
    else:
        monkeypatch.setenv("TFTRT_STEM_MMA_POOL", mode)
    assert pool_fusion.fuse_mode() == mode
    rng = np.random.RandomState(8)
    net, x = _stem(rng)
    n = build_engine(net.copy(), {"x": x.shape}, BuilderConfig(precision="FP16")).network
    conv, pool = _layer(n, "s"), _layer(n, "pool1")
    conv.tactic = "stem_mma"
    asked = []

    def fuses(net_, c, p):
        asked.append(c.name)
        return CupyBackend.fuses_pool(None, net_, c, p)
    for codes in (False, True):
        m = n.copy()
        c = _layer(m, "s")
        if codes:  # as quantization.absorb_pool_requantization leaves an INT8 engine's
            c.attrs.update(output_scale=0.05, output_nan_code=-128)
            _layer(m, "pool1").attrs["code_floor"] = -127
            m.tensors["s"].dtype = m.tensors["p"].dtype = "int8"
        assert pool_fusion.fuse_pools(m, fuses) == (["s"] if (int8 if codes else float16)
                                                    else [])
    assert asked == ([] if mode == "0" else ["s", "s"])
    assert conv.tactic == "stem_mma" and pool.kind == "pool"


def test_inspect_names_the_pool_the_stem_runs(fusing):
    from tftrt.inspect_model import _projection
    rng = np.random.RandomState(7)
    net, x = _stem(rng)
    engine = build_engine(net.copy(), {"x": x.shape}, BuilderConfig(precision="FP16"))
    stem = _layer(engine.network, "s")
    assert _projection(stem) == {
        "pool": {"name": "pool1", "kind": "pool", "precision": stem.attrs["pool"]["precision"]}}
    assert _projection(_layer(engine.network, "y")) == {}


# --- the reports and precision choices around a fused stem (fused-pool hunt, s53) ------------
def test_the_precision_report_counts_the_stem_at_its_own_output(fusing, monkeypatch):
    """layer_flops of a stem that took its pool counts the conv's own output, not the pool's
    quarter of it: the report and summary()'s INT8 share are the same fused or not."""
    monkeypatch.setenv("TFTRT_QUANTIZE_STEM", "0")
    rng = np.random.RandomState(9)
    net, x = _stem(rng)
    reports = []
    for mode in ("0", "1"):
        monkeypatch.setenv("TFTRT_STEM_MMA_POOL", mode)
        engine = build_engine(net.copy(), {"x": x.shape}, BuilderConfig(precision="INT8"))
        assert ("pool" in _layer(engine.network, "s").attrs) == (mode == "1")
        r = Q.precision_report(engine.network)
        reports.append(([(l["name"], l["precision"], l["flops"]) for l in r["layers"]],
                        r["quantized_share"]))
    assert reports[0] == reports[1]
    assert dict((n, f) for n, _, f in reports[1][0])["s"] == 2 * 2 * 10 * 16 * 16 * 7 * 7 * 3


def test_the_numpy_im2col_workspace_is_the_stems_own(fusing):
    """The numpy backend's im2col scratch of a fused stem is sized from its own output (the
    column matrix of every conv pixel), not the pool's quarter of it."""
    from tftrt.engine.backends.numpy_backend import _im2col_workspace
    net, x = _stem(np.random.RandomState(14))
    fused = build_engine(net.copy(), {"x": x.shape}, BuilderConfig(precision="FP16"))
    s = _layer(fused.network, "s")
    assert "pool" in s.attrs
    assert _im2col_workspace(fused.network, s) == 2 * 10 * 16 * (7 * 7 * 3) * 4


def _fake_times(monkeypatch, builds):
    """Timed precision with made-up layer times (a quantized layer 200 us, the rest 100):
    every quantized layer is faster in FP16; ``builds`` gets each _finish's precision."""
    from tftrt.engine import builder

    def times(engine):
        return {l.name: (2e-4 if "quant" in l.attrs else 1e-4) for l in engine.network.layers}
    monkeypatch.setattr(builder, "layer_times", times)
    monkeypatch.setattr(builder, "engine_seconds", lambda e: sum(times(e).values()))
    finish = builder._finish

    def counting(net, backend, precision, *a, **k):
        builds.append(precision)
        return finish(net, backend, precision, *a, **k)
    monkeypatch.setattr(builder, "_finish", counting)


@pytest.mark.parametrize("mode", ["0", "1"])
def test_timed_precision_keeps_fp16_whether_or_not_the_pool_is_fused(fusing, monkeypatch,
                                                                      mode):
    """A fused pool is no quantized layer of timed precision's: with every quantized layer
    faster in FP16 the FP16 engine is kept, no mixed engine built (the pool's name among the
    quantized layers made one), fused or not."""
    monkeypatch.setenv("TFTRT_QUANTIZE_STEM", "0")
    monkeypatch.setenv("TFTRT_QUANT_TIMED_PRECISION", "1")
    monkeypatch.setenv("TFTRT_STEM_MMA_POOL", mode)
    net, x = _stem(np.random.RandomState(10))
    builds = []
    _fake_times(monkeypatch, builds)
    engine = build_engine(net.copy(), {"x": x.shape}, BuilderConfig(precision="INT8"))
    info = engine.build_info["timed_precision"]
    assert builds == ["INT8", "FP16"] and info["kept"] == "FP16", (builds, info)


def test_timed_precision_times_an_int8_stem_against_the_fp16_stem_and_its_pool(fusing,
                                                                               monkeypatch):
    """A quantized stem (TFTRT_QUANTIZE_STEM=1, unfused: the stem kernel fuses no INT8 conv)
    is timed against the FP16 engine's stem with the pool it took plus nothing else: the
    pool's time is added on the INT8 side too, so the choice is the one made unfused."""
    monkeypatch.setenv("TFTRT_QUANTIZE_STEM", "1")
    monkeypatch.setenv("TFTRT_QUANT_TIMED_PRECISION", "1")
    monkeypatch.setattr(NumpyBackend, "fuses_pool",
                        lambda self, net, c, p: "quant" not in c.attrs, raising=False)
    from tftrt.engine import builder

    def times(engine):  # the stem 100 us INT8 / 80 FP16; the pool 50; the 1x1 conv 10
        out = {}
        for l in engine.network.layers:
            t = {"s": 1e-4 if "quant" in l.attrs else 8e-5, "pool1": 5e-5}.get(l.name, 1e-5)
            out[l.name] = t + (5e-5 if "pool" in l.attrs and l.kind == "conv" else 0.0)
        return out
    monkeypatch.setattr(builder, "layer_times", times)
    monkeypatch.setattr(builder, "engine_seconds", lambda e: None)
    net, x = _stem(np.random.RandomState(11))
    picks = []
    for mode in ("0", "1"):
        monkeypatch.setenv("TFTRT_STEM_MMA_POOL", mode)
        engine = build_engine(net.copy(), {"x": x.shape}, BuilderConfig(precision="INT8"))
        picks.append(engine.build_info["timed_precision"]["fp16_faster"])
    assert picks[0] == picks[1] and "s" in picks[0], picks


def test_calibrations_fp32_engine_fuses_nothing(fusing):
    """The FP32 engine calibration runs layer by layer (calibrator.fp32_engine) keeps every
    layer's output: a fused stem would hide its own (no range for it, its error filed under
    the pool's output)."""
    from tftrt.engine.calibrator import fp32_engine
    net, x = _stem(np.random.RandomState(12))
    engine = fp32_engine(net, {"x": x.shape})
    assert fusing == [] and "pool1" in [l.name for l in engine.network.layers]


# --- a profile's other shapes: the network before every _finish rewrite (hunt, s53) -----------
@pytest.mark.parametrize("precision", ["FP16", "INT8"])
@pytest.mark.parametrize("pool", ["0", "1"])
def test_a_profile_gets_its_template_after_every_finish_rewrite(monkeypatch, precision, pool):
    """With the CuPy backend's post-tactic rewrites (the stem reads the float32 image, drops
    its cast: precision.absorb_input_casts; INT8: it stores its pool's codes:
    quantization.absorb_pool_requantization; the pool fused or not), quantization.unfused
    gives the network the builder made before them -- the same layers in the same order,
    attributes and tensor dtypes -- so a dynamic profile gets its shape template (since s41
    every such profile on the GPU failed it, and each other shape took a full build) and
    engines built from it answer as full builds."""
    from tftrt.engine.builder import optimized_network
    from tftrt.engine.shape_template import _public, specializer
    from tftrt.profiles import Profile, ProfileEngine
    monkeypatch.setenv("TFTRT_QUANTIZE_STEM", "0")
    monkeypatch.setenv("TFTRT_STEM_MMA_POOL", pool)
    monkeypatch.setattr(NumpyBackend, "reads_float32",
                        lambda self, n, l: l.kind == "conv" and "quant" not in l.attrs,
                        raising=False)
    monkeypatch.setattr(NumpyBackend, "stores_int8",
                        lambda self, n, l: l.kind == "conv" and "quant" not in l.attrs,
                        raising=False)
    monkeypatch.setattr(NumpyBackend, "fuses_pool", lambda self, n, c, p: True, raising=False)
    net, x = _stem(np.random.RandomState(13), x_shape=(4, 20, 32, 3))
    net.tensors["x"].shape = (-1, 20, 32, 3)
    cfg = BuilderConfig(precision=precision)
    opt = build_engine(net.copy(), {"x": (4, 20, 32, 3)}, cfg)
    s = _layer(opt.network, "s")
    assert isinstance(s.attrs["float32_x"], dict) and ("pool" in s.attrs) == (pool == "1")
    assert ("pool_codes" in s.attrs) == (precision == "INT8")
    before = optimized_network(net.copy(), {"x": (4, 20, 32, 3)}, cfg)[0]
    back = Q.unfused(opt.network)
    assert [(l.name, l.kind, l.inputs, l.outputs, _public(l.attrs)) for l in back.layers] == \
        [(l.name, l.kind, l.inputs, l.outputs, _public(l.attrs)) for l in before.layers]
    assert {k: v.dtype for k, v in back.tensors.items()} == \
        {k: v.dtype for k, v in before.tensors.items()}
    assert isinstance(s.attrs["float32_x"], dict)  # (the engine's network left as it was)

    def build(key, choices, weight_cache):
        return build_engine(net, {"x": key[0]}, dataclasses.replace(
            cfg, tactic_choices=choices, weight_cache=weight_cache))
    prof = Profile([(1, 20, 32, 3)], [(4, 20, 32, 3)], [(4, 20, 32, 3)])
    pe = ProfileEngine([prof], build, "numpy", specializer(net, cfg)).build_profiles()
    assert pe.template_errors == {}
    xs = x[:3]
    got = pe.execute([xs])[0]
    full = build_engine(net.copy(), {"x": xs.shape}, cfg).execute([xs])[0]
    np.testing.assert_array_equal(got, full)
