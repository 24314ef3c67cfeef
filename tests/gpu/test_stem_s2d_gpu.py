"""passes/stem_space_to_depth on the GPU (TFTRT_STEM_S2D=1): the space_to_depth kernel
(cuda_source_move.SpaceToDepthSource: pads, widened channels, float32 -> float16 in one pass)
and the stride-1 conv over 16 channels that replace a stride-2 stem, FP16 and INT8, against
the numpy engine of the same network, eager and replayed from the CUDA graph; the ONNX
SpaceToDepth op (no pads) on the same kernel. Timed against the stem as it is by
``benchmarks/bench_stems.py --s2d`` and ``run_gpu_int8.sh`` (configs fp16s2d / int8s2d).

On the GPU machine: ``python -m pytest tests/gpu/test_stem_s2d_gpu.py -q -s``.
"""

import os

os.environ.setdefault("TFTRT_CUDNN_CANDIDATES", "2")  # fewer cuDNN plans to compile per conv

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from tests.tolerances import GPU_VS_NUMPY  # noqa: E402
from tftrt.engine import BuilderConfig, build_engine, network_from_onnx  # noqa: E402

cp = pytest.importorskip("cupy")
pytestmark = pytest.mark.gpu

from tests.engine.harness import make_model  # noqa: E402
from tests.engine.test_stem_space_to_depth import STEMS, _stem  # noqa: E402


@pytest.fixture(autouse=True)
def _cupy(monkeypatch):
    monkeypatch.setenv("TFTRT_BACKEND", "cupy")
    monkeypatch.setenv("TFTRT_STEM_S2D", "1")


def _both(model, shapes, precision):
    gpu = build_engine(model, shapes, BuilderConfig(precision=precision, backend="cupy"))
    ref = build_engine(model, shapes, BuilderConfig(precision=precision, backend="numpy",
                                                    tactic_timing=False))
    return gpu, ref


def _close(got, want, what, rtol, atol):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    bad = np.abs(got - want) > atol + rtol * np.abs(want)
    assert not bad.any(), f"{what}: {bad.sum()} of {bad.size} off, max |d| " \
                          f"{np.abs(got - want).max():.3g}"


@pytest.mark.parametrize("name", list(STEMS))
def test_rearranged_stems_match_numpy_in_fp16(name):
    k, pads, size, cin = STEMS[name]
    model, feeds = _stem(k, pads, size, cin)
    gpu, ref = _both(model, {"x": feeds["x"].shape}, "FP16")
    assert [l.kind for l in gpu.network.layers][:2] == ["space_to_depth", "conv"]
    want = ref.execute([feeds["x"]])[0]
    ctx = gpu.create_execution_context()
    for run in range(3):  # eager, capture, replay
        got = cp.asnumpy(ctx.execute([cp.asarray(feeds["x"])])[0])
        _close(got, want, f"{name} run {run}", *GPU_VS_NUMPY["FP16"])


def test_onnx_space_to_depth_runs_on_the_kernel():
    """The ONNX op (blocksize 2, no pads) on the same kernel: exactly numpy's values."""
    from onnx import helper
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 6)).astype(np.float32)
    model = make_model([helper.make_node("SpaceToDepth", ["x"], ["y"], blocksize=2)],
                       {"x": x}, {})
    gpu, ref = _both(model, {"x": x.shape}, "FP32")
    np.testing.assert_array_equal(cp.asnumpy(gpu.execute([cp.asarray(x)])[0]),
                                  ref.execute([x])[0])


def test_an_int8_rearranged_stem_runs_int8_and_matches_numpy(monkeypatch):
    """ResNet's stem rearranged is INT8 in an INT8 build (16 channels a tap; image stems are
    otherwise kept FP16), runs on a real int8 kernel, and answers what the numpy simulation
    answers."""
    monkeypatch.delenv("TFTRT_QUANTIZE_STEM", raising=False)
    from tftrt.engine import quantization as Q
    from tftrt.engine.calibrator import EngineCalibrator
    model, feeds = _stem((7, 7), (3, 3, 3, 3), (64, 64), 3, cout=64)
    rng = np.random.default_rng(5)
    cal = EngineCalibrator(network_from_onnx(model))
    for _ in range(4):
        cal.observe([rng.standard_normal(feeds["x"].shape).astype(np.float32)])
    Q.set_table(model, cal.table("INT8"))
    gpu, ref = _both(model, {"x": feeds["x"].shape}, "INT8")
    conv = next(l for l in gpu.network.layers if l.kind == "conv")
    assert conv.precision == "INT8", conv.attrs.get("quant_fallback")
    rep = Q.precision_report(gpu.network)["layers"]
    kernel = next(r["kernel"] for r in rep if r.get("precision") == "INT8")
    assert "emulated" not in (kernel or ""), kernel
    x = feeds["x"]
    _close(cp.asnumpy(gpu.execute([cp.asarray(x)])[0]), ref.execute([x])[0], "INT8 stem",
           2e-2, 2e-2 * float(np.abs(ref.execute([x])[0]).max()))


@pytest.mark.parametrize("name", ["resnet 7x7 (ZeroPadding2D(3) folded)",
                                  "mobilenet 3x3 SAME (pads 0 / 1)",
                                  "5x4 kernel, uneven pads, RGBA"])
def test_rearranged_stems_on_stem_mma_match_numpy(name):
    """The rearranged conv forced onto stem_mma (vector gathers: 4 channels of a pixel a
    lane, one 8-byte load; the filter's k permuted to match) answers what numpy answers."""
    from tests.gpu.test_dw_gpu import _convs, _engine
    from tests.gpu.test_stem_mma_gpu import _fp16_out
    from tftrt.engine.backends.cupy_stem_mma import StemMma
    k, pads, size, cin = STEMS[name]
    model, feeds = _stem(k, pads, size, cin, cout=32)
    model = _fp16_out(model)
    gpu = _engine(model, feeds, "FP16", tactic="stem_mma")
    (layer, impl), = _convs(gpu)
    assert isinstance(impl, StemMma) and impl.src.vec, type(impl)
    ref = build_engine(model, {"x": feeds["x"].shape},
                       BuilderConfig(precision="FP16", backend="numpy", tactic_timing=False))
    want = ref.execute([feeds["x"]])[0]
    ctx = gpu.create_execution_context()
    for run in range(3):
        got = cp.asnumpy(ctx.execute([cp.asarray(feeds["x"])])[0])
        _close(got, want, f"{name} run {run}", *GPU_VS_NUMPY["FP16"])
