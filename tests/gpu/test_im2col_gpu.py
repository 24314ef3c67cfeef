"""Tactic ``im2col`` (cupy_im2col: the copy kernel + cuBLASLt per chunk of rows) on the GPU: the
zoo's stem shapes in FP16 with the tactic forced, against the numpy engine, eager and
CUDA-graph replay; in one chunk and in many with a shorter tail; bias / ReLU / residual /
SiLU epilogues (fused by cuBLASLt or run after the last chunk); a float16 conv cuDNN has no plan
for still builds on the GPU; the timed builder's pick matches numpy; and the zoo's stems timed
on both tactics (printed; run with ``-s``).

On the GPU machine: ``python -m pytest tests/gpu/test_im2col_gpu.py -q -s``.
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


def _stem(k, stride, pad, cout, hw=32, cin=3, n=2, epi=("relu",)):
    return _conv_model((n, hw, hw, cin), (cout, cin, k, k),
                       {"pads": [pad] * 4, "strides": [stride] * 2}, epi=epi)


def _check(model, feeds, tactic="im2col", want_impl=True):
    shapes = {k: v.shape for k, v in feeds.items()}
    ref = build_engine(model, shapes, BuilderConfig(precision="FP16", backend="numpy",
                                                    tactic_timing=False))
    xs = [feeds[n] for n in ref.input_names]
    want = np.asarray(ref.execute(xs)[0], np.float64)
    eng = _engine(model, feeds, "FP16", tactic, timing=False)
    if want_impl:
        from tftrt.engine.backends.cupy_im2col import ConvIm2col
        ((layer, impl),) = _convs(eng)
        assert isinstance(impl, ConvIm2col), (layer.tactic, type(impl).__name__,
                                              impl.fallback)
    runs = [cp.asnumpy(eng.execute([cp.asarray(x) for x in xs])[0]).astype(np.float64)
            for _ in range(3)]  # eager, capture, replay
    for r in runs[1:]:
        np.testing.assert_array_equal(r, runs[0])
    rtol, atol = GPU_VS_NUMPY["FP16"]
    np.testing.assert_allclose(runs[0], want, rtol=rtol,
                               atol=atol * max(1.0, float(np.abs(want).max())))
    return eng


@pytest.mark.parametrize("k,stride,pad,cout,cin,epi", [
    (3, 1, 1, 64, 3, ("relu",)),          # VGG
    (7, 2, 3, 64, 3, ("relu",)),          # ResNet
    (3, 2, 0, 32, 3, ("relu6",)),         # Inception (clip: after the GEMM)
    (4, 4, 0, 96, 3, ()),                 # ConvNeXt patchify, bias only
    (3, 1, 1, 24, 5, ("silu",)),          # SiLU runs after the last chunk
    (3, 1, 1, 16, 3, ("add", "relu")),    # residual into cuBLASLt's C
])
def test_stems_match_numpy(k, stride, pad, cout, cin, epi):
    model, feeds = _stem(k, stride, pad, cout, cin=cin, epi=epi)
    _check(model, feeds)


def test_many_chunks_with_a_shorter_tail(monkeypatch):
    """64 KB chunks: 37 x 37 rows of 32 columns in chunks of 1,024 (37 is prime: no divisor
    of the 1,369 rows fits), the last of 345 rows on its own GEMM."""
    monkeypatch.setenv("TFTRT_IM2COL_CHUNK_MB", "0.0625")
    model, feeds = _stem(3, 1, 1, 32, hw=37, n=1, epi=("add", "relu"))
    eng = _check(model, feeds)
    ((_, impl),) = _convs(eng)
    assert impl.per == 1024 and impl.tail is not None and impl.rows == 37 * 37


def test_a_conv_cudnn_cannot_plan_still_runs_on_the_gpu():
    """3 -> 16 channels at 32 x 32 in FP16: cuDNN proposed no plan on the H200 (2026-12-01);
    tactic ``cudnn`` then falls back to im2col instead of failing the build."""
    model, feeds = _stem(3, 1, 1, 16)
    eng = _check(model, feeds, tactic="cudnn", want_impl=False)
    ((layer, impl),) = _convs(eng)
    print(f"\n[im2col] cudnn tactic ran as {type(impl).__name__} ({impl.fallback})")


def test_the_timed_builder_pick_matches_numpy():
    from tftrt.engine.tactics import TimingCache
    model, feeds = _stem(7, 2, 3, 64, hw=112, n=8)
    shapes = {k: v.shape for k, v in feeds.items()}
    eng = build_engine(model, shapes, BuilderConfig(precision="FP16", backend="cupy",
                                                    timing_cache=TimingCache()))
    ref = build_engine(model, shapes, BuilderConfig(precision="FP16", backend="numpy"))
    xs = [feeds[n] for n in ref.input_names]
    want = np.asarray(ref.execute(xs)[0], np.float64)
    got = cp.asnumpy(eng.execute(xs)[0]).astype(np.float64)
    rtol, atol = GPU_VS_NUMPY["FP16"]
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol * max(1.0, np.abs(want).max()))
    print("\n[im2col] timed build picked", [l.tactic for l, _ in _convs(eng)])
