"""Tactic ``stem_direct`` (cupy_stem: the direct few-channel convolution kernel) on the GPU:
the zoo's stem shapes with the tactic forced, FP16 and FP32, against the numpy engine, eager
and CUDA-graph replay; bias / ReLU / ReLU6 / SiLU / residual epilogues fused (the
unaligned-output store path is covered by tests/engine/test_stem_codegen's host runs); the
timed builder's pick matches numpy; switched off, the tactic is not offered. The stems are
timed against cuDNN and im2col by benchmarks/bench_stems.py.

On the GPU machine: ``python -m pytest tests/gpu/test_stem_gpu.py -q -s``.
"""

import os

os.environ.setdefault("TFTRT_CUDNN_CANDIDATES", "2")  # fewer cuDNN plans to compile per conv

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from tests.tolerances import GPU_VS_NUMPY  # noqa: E402
from tftrt.engine import BuilderConfig, build_engine  # noqa: E402

cp = pytest.importorskip("cupy")
pytestmark = pytest.mark.gpu

from tests.gpu.test_cupy_backend import _conv_model  # noqa: E402
from tests.gpu.test_dw_gpu import _convs, _engine  # noqa: E402


@pytest.fixture(autouse=True)
def _cupy(monkeypatch):
    monkeypatch.setenv("TFTRT_BACKEND", "cupy")
    monkeypatch.delenv("TFTRT_STEM_DIRECT", raising=False)


def _stem(k, stride, pad, cout, hw=40, cin=3, n=2, epi=("relu",)):
    return _conv_model((n, hw, hw, cin), (cout, cin, k, k),
                       {"pads": [pad] * 4, "strides": [stride] * 2}, epi=epi)


def _check(model, feeds, precision="FP16"):
    from tftrt.engine.backends.cupy_stem import StemDirect
    shapes = {k: v.shape for k, v in feeds.items()}
    ref = build_engine(model, shapes, BuilderConfig(precision=precision, backend="numpy",
                                                    tactic_timing=False))
    xs = [feeds[n] for n in ref.input_names]
    want = np.asarray(ref.execute(xs)[0], np.float64)
    eng = _engine(model, feeds, precision, "stem_direct", timing=False)
    ((layer, impl),) = _convs(eng)
    assert isinstance(impl, StemDirect), (layer.tactic, type(impl).__name__, impl.fallback)
    runs = [cp.asnumpy(eng.execute([cp.asarray(x) for x in xs])[0]).astype(np.float64)
            for _ in range(3)]  # eager, capture, replay
    for r in runs[1:]:
        np.testing.assert_array_equal(r, runs[0])
    rtol, atol = GPU_VS_NUMPY[precision]
    np.testing.assert_allclose(runs[0], want, rtol=rtol,
                               atol=atol * max(1.0, float(np.abs(want).max())))
    return eng


@pytest.mark.parametrize("precision", ["FP16", "FP32"])
@pytest.mark.parametrize("k,stride,pad,cout,cin,epi", [
    (3, 1, 1, 64, 3, ("relu",)),          # VGG
    (3, 2, 0, 32, 3, ("relu6",)),         # Inception
    (3, 2, 1, 16, 3, ("silu",)),          # MobileNetV3 / EfficientNet
    (4, 4, 0, 96, 3, ()),                 # ConvNeXt patchify, bias only
    (3, 1, 1, 24, 5, ("add", "relu")),    # a residual operand, 5 channels
])
def test_stems_match_numpy(k, stride, pad, cout, cin, epi, precision):
    model, feeds = _stem(k, stride, pad, cout, cin=cin, epi=epi)
    _check(model, feeds, precision)


def test_the_timed_builder_pick_matches_numpy():
    from tftrt.engine.tactics import TimingCache
    model, feeds = _stem(3, 1, 1, 64, hw=112, n=8)
    shapes = {k: v.shape for k, v in feeds.items()}
    eng = build_engine(model, shapes, BuilderConfig(precision="FP16", backend="cupy",
                                                    timing_cache=TimingCache()))
    ref = build_engine(model, shapes, BuilderConfig(precision="FP16", backend="numpy"))
    xs = [feeds[n] for n in ref.input_names]
    want = np.asarray(ref.execute(xs)[0], np.float64)
    got = cp.asnumpy(eng.execute(xs)[0]).astype(np.float64)
    rtol, atol = GPU_VS_NUMPY["FP16"]
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol * max(1.0, np.abs(want).max()))
    print("\n[stem] timed build picked", [l.tactic for l, _ in _convs(eng)])


def test_switched_off_the_tactic_is_not_offered(monkeypatch):
    monkeypatch.setenv("TFTRT_STEM_DIRECT", "0")
    model, feeds = _stem(3, 1, 1, 64)
    from tftrt.engine import tactics
    from tftrt.engine.backends import cupy_backend  # registers the tactics
    ref = build_engine(model, {k: v.shape for k, v in feeds.items()},
                       BuilderConfig(precision="FP16", backend="numpy", tactic_timing=False))
    (conv,) = [l for l in ref.network.layers if l.kind == "conv"]
    offered = [t.name for t in tactics._REGISTRY[("cupy", "conv")]
               if t.applies(ref.network, conv)]
    assert "stem_direct" not in offered and "cudnn" in offered
    assert not cupy_backend._stem_direct(ref.network, conv)
