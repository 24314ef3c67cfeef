"""The stem with its max pool fused (pool_fusion, cuda_source_stem_mma.StemPool) on the GPU:
the fused kernel stores exactly what the row-tile stem and the pool kernel store one after the
other (float16 and int8 codes, NaN pixels, ResNet's full size), and an FP16 engine with
TFTRT_STEM_MMA_POOL=1 (auto: the default) runs the stem and pool as one layer with the
unfused engine's answers.
Timed by ``benchmarks/bench_stem_pool.py``.

On the GPU machine: ``python -m pytest tests/gpu/test_stem_pool_gpu.py -q``.
"""

import numpy as np
import pytest
from onnx import helper

from tftrt.engine import BuilderConfig, build_engine

cp = pytest.importorskip("cupy")
pytestmark = pytest.mark.gpu

from tests.engine.harness import make_model, rand  # noqa: E402


def _launch(src, x, w, bias, y):
    from tftrt.engine.backends import cuda_source_stem_mma as SM
    from tftrt.engine.backends.cupy_stem_mma import _kernel, grid
    kern = _kernel(src.source)
    if src.smem_bytes > kern.max_dynamic_shared_size_bytes:
        kern.max_dynamic_shared_size_bytes = src.smem_bytes
    wt = cp.asarray(SM.filter_matrix(w, src))
    kern((grid(kern, src),), (src.threads,), (x, wt, bias, y, np.int64(x.shape[0])),
         shared_mem=src.smem_bytes)


@pytest.mark.parametrize("carry", [True, False])
@pytest.mark.parametrize("dt", ["float16", "int8"])
@pytest.mark.parametrize("n,hw", [(2, 224), (3, 64), (128, 224)])
def test_the_fused_kernel_stores_the_pool_of_the_stem(dt, n, hw, carry):
    from tftrt.engine.backends import cuda_source_stem_mma as SM
    from tftrt.engine.backends.cupy_kernels_nn import PoolKernel
    rng = np.random.default_rng(hw)
    ho = (hw + 6 - 7) // 2 + 1
    assert ho % 16 == 0
    hp = (ho + 2 - 3) // 2 + 1
    xh = rng.uniform(-1, 1, (n, hw, hw, 3)).astype(np.float32)
    xh[0, 10, 20, :] = np.nan
    xh[-1, 30, 7, 1] = np.inf
    x = cp.asarray(xh)
    w = (rng.standard_normal((64, 7, 7, 3)) / 12).astype(np.float16)
    bias = cp.asarray(rng.standard_normal(64).astype(np.float32) * 0.1)
    epilogue = [{"op": "bias", "input": 2}, {"op": "act", "fn": "relu"}]
    q = dict(out_scale=0.02, nan_code=-128) if dt == "int8" else {}
    geo = ((n, hw, hw, 3), (7, 7), (2, 2), (3, 3, 3, 3), (n, ho, ho, 64), "float32", dt,
           epilogue, {2: ("vec", "float32")})
    floor = -127 if dt == "int8" else None
    plain = SM.StemMmaSource(*geo, rows=True, **q)
    fused = SM.StemMmaSource(*geo, **q, pool=dict(out_shape=(n, hp, hp, 64), pads=(1, 1, 1, 1),
                                                   pad_value=0.0, code_floor=floor,
                                                   carry=carry))
    conv = cp.empty((n, ho, ho, 64), dt)
    want, got = cp.empty((n, hp, hp, 64), dt), cp.full((n, hp, hp, 64), 99, dt)
    _launch(plain, x, w, bias, conv)
    PoolKernel(conv.shape, want.shape, "max", (3, 3), (2, 2), (1, 1), (1, 1, 1, 1), False, dt,
               dt, None, 0.0, None, floor)(conv, want)
    _launch(fused, x, w, bias, got)
    a, b = cp.asnumpy(want), cp.asnumpy(got)
    assert (cp.asnumpy(conv) == -128).any() if dt == "int8" else \
        np.isnan(cp.asnumpy(conv)).any()
    bad = np.flatnonzero(a != b)
    assert not len(bad), f"{len(bad)} of {a.size} differ: {b.ravel()[bad[:4]]} vs " \
        f"{a.ravel()[bad[:4]]}"


def _resnet_entry(n=2, hw=64):
    """x -> stem 7x7 / 2 (relu) -> MaxPool 3x3 / 2 (pads 1) -> conv 1x1 (relu) -> y, NHWC
    between transposes as the converters emit."""
    N = helper.make_node
    nodes = [N("Transpose", ["x"], ["t"], perm=[0, 3, 1, 2]),
             N("Conv", ["t", "w", "b"], ["c"], pads=[3, 3, 3, 3], strides=[2, 2]),
             N("Relu", ["c"], ["r"]),
             N("MaxPool", ["r"], ["p"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
             N("Conv", ["p", "w2", "b2"], ["c2"]),
             N("Relu", ["c2"], ["r2"]),
             N("Transpose", ["r2"], ["y"], perm=[0, 2, 3, 1])]
    consts = {"w": (rand(64, 3, 7, 7, seed=1) / 12).astype(np.float32),
              "b": rand(64, seed=2) * 0.1,
              "w2": (rand(32, 64, 1, 1, seed=3) / 8).astype(np.float32), "b2": rand(32, seed=4)}
    feeds = {"x": rand(n, hw, hw, 3, seed=5)}
    return make_model(nodes, feeds, consts), feeds


def test_an_fp16_engine_runs_the_stem_and_pool_as_one_layer(monkeypatch):
    from tftrt.engine.backends import get_backend
    from tftrt.engine.backends.cupy_stem_mma import StemMma
    get_backend("cupy").set_build_options(allow_tf32=False)
    model, feeds = _resnet_entry()
    shapes = {"x": feeds["x"].shape}
    ref = build_engine(model, shapes, BuilderConfig(precision="FP16", backend="numpy",
                                                    tactic_timing=False))
    stem = [l for l in ref.network.layers if l.kind == "conv"][0].name
    choices = {stem: {"kind": "conv", "tactic": "stem_mma", "records": {}}}
    outs = {}
    for on in ("0", "1"):
        monkeypatch.setenv("TFTRT_STEM_MMA_POOL", on)
        eng = build_engine(model, shapes, BuilderConfig(
            precision="FP16", backend="cupy", allow_tf32=False, tactic_choices=choices))
        layers = {l.name: (l, i) for l, i in zip(eng.network.layers,
                                                  eng.backend_impl.engine_impls(eng))}
        layer, impl = layers[stem]
        assert isinstance(impl, StemMma) and ("pool" in layer.attrs) == (on == "1")
        assert (impl.src.pool is not None) == (on == "1")
        assert sum(l.kind == "pool" for l in eng.network.layers) == (on == "0")
        runs = [cp.asnumpy(eng.execute([cp.asarray(feeds["x"])])[0]) for _ in range(3)]
        for r in runs[1:]:  # eager, capture, replay
            np.testing.assert_array_equal(r, runs[0])
        outs[on] = runs[0]
    np.testing.assert_array_equal(outs["1"], outs["0"])
    want = ref.execute([feeds["x"]])[0]
    assert np.abs(outs["1"] - want).max() <= 2e-2 * max(1.0, float(np.abs(want).max()))


def test_a_dynamic_profile_of_a_stem_model_gets_its_shape_template():
    """A dynamic profile (batch 1..4) whose stem runs on stem_mma, reads the float32 image
    (its cast absorbed) and took its max pool: the profile's other shapes get engines from
    its template (quantization.unfused gives the network before those rewrites; from s41 to
    s53 every such profile failed it and built each shape in full), with a full build's
    answers."""
    import dataclasses

    from tftrt.engine.onnx_import import network_from_onnx
    from tftrt.engine.shape_template import specializer
    from tftrt.profiles import Profile, ProfileEngine
    from tftrt.engine.backends import get_backend
    get_backend("cupy").set_build_options(allow_tf32=False)
    model, feeds = _resnet_entry(n=4)
    net = network_from_onnx(model)
    net.tensors["x"].shape = (-1,) + tuple(net.tensors["x"].shape[1:])
    cfg = BuilderConfig(precision="FP16", backend="cupy", allow_tf32=False)
    ref = build_engine(model, {"x": feeds["x"].shape}, BuilderConfig(
        precision="FP16", backend="numpy", tactic_timing=False))
    stem = [l for l in ref.network.layers if l.kind == "conv"][0].name
    forced = {stem: {"kind": "conv", "tactic": "stem_mma", "records": {}}}

    def build(key, choices, weight_cache):
        return build_engine(net, {"x": key[0]}, dataclasses.replace(
            cfg, tactic_choices=choices or forced, weight_cache=weight_cache))
    shape = tuple(feeds["x"].shape)
    prof = Profile([(1,) + shape[1:]], [shape], [shape])
    pe = ProfileEngine([prof], build, "cupy", specializer(net, cfg)).build_profiles()
    assert pe.template_errors == {}, pe.template_errors
    opt = pe.engine_for([shape])
    layer = [l for l in opt.network.layers if l.name == stem][0]
    assert layer.tactic == "stem_mma" and isinstance(layer.attrs.get("float32_x"), dict)
    assert "pool" in layer.attrs
    x = feeds["x"][:3]
    other = pe.engine_for([x.shape], quick=False)
    assert other.build_info.get("from_template"), other.build_info
    assert "pool" in [l for l in other.network.layers if l.name == stem][0].attrs
    got = cp.asnumpy(other.execute([cp.asarray(x)])[0])
    full = build_engine(net, {"x": x.shape}, dataclasses.replace(cfg, tactic_choices=forced))
    want = cp.asnumpy(full.execute([cp.asarray(x)])[0])
    # the other layers' cuDNN plans: the opt shape's borrowed, or the full build's own
    assert np.abs(got - want).max() <= 2e-3 * max(1.0, float(np.abs(want).max()))
