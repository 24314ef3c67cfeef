"""INT8 / FP8 engines on the CuPy backend (issue 15): the quantized layers run on int8 / fp8
kernels (cupy_quant: cuBLASLt IMMA / FP8 GEMMs, cuDNN int8 / fp8 convolutions, the generated
quantize and epilogue kernels), not FP16, and answer what the numpy backend's simulation of
the same arithmetic answers (int32 sums are exact; float epilogue order and FP8's fp32
accumulation order make the only differences). FP8 on a GPU below sm_89 fails by name. A
calibrated Keras CNN through TensorFlow runs its INT8 engine on the GPU (no native fallback).

Every library implementation validates itself when it is built (cupy_quant.Validator: one
run against the emulated path; a candidate that disagrees is rejected, the reason recorded):
the tests print each layer's kept choice and rejections, check that the verdicts are
recorded, and break the preferred variants on purpose to see them rejected and the layer
still answer right.

Skipped without a GPU (tests/conftest.py). On the GPU machine:
``CUDA_VISIBLE_DEVICES=0 python -m pytest tests/gpu/test_int8_gpu.py -q -rA -s``; the kernels
one by one: ``python benchmarks/probe_quant_kernels.py``.
"""

import logging
import re

import numpy as np
import onnx
import pytest

from tests.engine.harness import make_model
from tftrt.engine import BuilderConfig, EngineBuildError, build_engine, network_from_onnx
from tftrt.engine import quantization as Q
from tftrt.engine.calibrator import EngineCalibrator

cp = pytest.importorskip("cupy")
pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def quantized_kernels(monkeypatch):
    """The CuPy backend's int8 / fp8 kernels (the default; whatever the environment says),
    every allowed layer quantized: these tests check the kernels, which the timed precision
    (on by default) could replace by FP16 ones where they are slower;
    test_timed_precision_measures_on_the_gpu turns it on."""
    monkeypatch.setenv("TFTRT_CUPY_QUANTIZED", "1")
    monkeypatch.setenv("TFTRT_QUANT_TIMED_PRECISION", "0")

F32 = np.float32


def _observed(model, rng, shape):
    """A calibrator of ``model``'s network that has seen 4 random batches of ``shape``."""
    cal = EngineCalibrator(network_from_onnx(model))
    for _ in range(4):
        cal.observe([rng.randn(*shape).astype(F32)])
    return cal


def _calibrated(model, rng, shape, precision="INT8"):
    """``model`` with the ranges of 4 random batches of ``shape`` (its quantization table)."""
    Q.set_table(model, _observed(model, rng, shape).table(precision))
    return model


def _calibrated_model(rng, precision="INT8"):
    from onnx import helper
    consts = {"w1": (rng.randn(16, 3, 3, 3) * 0.3).astype(F32),
              "b1": (rng.randn(16) * 0.1).astype(F32),
              "w2": (rng.randn(16, 16, 3, 3) * 0.2).astype(F32),
              "wd": rng.randn(16, 4).astype(F32)}
    N = helper.make_node
    nodes = [N("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]), N("Relu", ["c1"], ["r1"]),
             N("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1]), N("Relu", ["c2"], ["r2"]),
             N("GlobalAveragePool", ["r2"], ["g"]), N("Flatten", ["g"], ["f"]),
             N("MatMul", ["f", "wd"], ["y"])]
    model = make_model(nodes, {"x": np.zeros((8, 3, 16, 16), F32)}, consts)
    return _calibrated(model, rng, (8, 3, 16, 16), precision)


def _sm() -> tuple:
    p = cp.cuda.runtime.getDeviceProperties(cp.cuda.runtime.getDevice())
    return p["major"], p["minor"]


def _depthwise_model(rng):
    """A conv, a depthwise conv (no int8 cuDNN / cuBLASLt kernel: emulated), a 1x1 conv."""
    from onnx import helper
    consts = {"w1": (rng.randn(16, 3, 3, 3) * 0.3).astype(F32),
              "wd": (rng.randn(16, 1, 3, 3) * 0.3).astype(F32),
              "w2": (rng.randn(32, 16, 1, 1) * 0.3).astype(F32)}
    N = helper.make_node
    nodes = [N("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]), N("Relu", ["c1"], ["r1"]),
             N("Conv", ["r1", "wd"], ["c2"], pads=[1, 1, 1, 1], group=16),
             N("Relu", ["c2"], ["r2"]), N("Conv", ["r2", "w2"], ["y"])]
    model = make_model(nodes, {"x": np.zeros((4, 3, 12, 12), F32)}, consts)
    return model, _observed(model, rng, (4, 3, 12, 12))


def _impls(engine):
    return {l.name: i for l, i in zip(engine.network.layers,
                                      engine.backend_impl.engine_impls(engine))}


def _choices(engine) -> str:
    """Each quantized layer's implementation, kept choice, verdict and rejections (printed:
    the GPU run's log shows what validation did)."""
    lines = []
    for layer, impl in zip(engine.network.layers, engine.backend_impl.engine_impls(engine)):
        if "quant" not in layer.attrs:
            continue
        rec = impl.record() or {}
        lines.append(f"{layer.name}: {type(impl).__name__} {rec.get('kernel')}; variant "
                     f"{rec.get('variant')} engine {rec.get('engine')} algo {rec.get('algo')};"
                     f" validated {rec.get('validated')}; rejected {rec.get('rejected')}; "
                     f"fallback {impl.fallback}")
    text = "\n".join(lines)
    print(text)
    return text


# FP8: an fp32 accumulation order other than the simulation's can move an intermediate value
# across an E4M3 rounding boundary (3 mantissa bits: one step is 1/8 to 1/16 of the value),
# and the next layers carry that step; measured on an H200, 3.4e-3 of max |ref| through two
# convs and a GEMM (acc_identity variant). INT8's int32 sums are exact.
REL = {"INT8": 2e-3, "FP8": 1e-2}


def _close(got, want, what, rel=2e-3):
    """Within ``rel`` of the largest reference value (the float epilogue order / FP8 fp32
    accumulation order are the only differences from the simulation; see ``REL``)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    err = np.abs(got - want).max() / max(np.abs(want).max(), 1e-6)
    assert err <= rel, f"{what}: max |gpu - numpy| is {err:.2e} of max |ref| (limit {rel})"


@pytest.mark.parametrize("precision", ["INT8", "FP8"])
def test_quantized_engine_runs_int8_fp8_kernels_and_matches_numpy(precision, caplog):
    """The conv / GEMM layers are INT8 / FP8 on real int8 / fp8 kernels (weights stored
    int8 / E4M3 codes, no emulated fallback), the RGB conv's channels padded 3 -> 4 / 16 and
    said so in precision_report, and the answers are the numpy simulation's."""
    from tftrt.engine.backends import cupy_quant as QK
    if precision == "FP8" and _sm() < (8, 9):
        pytest.skip("FP8 needs sm_89+")
    rng = np.random.RandomState(0)
    model = _calibrated_model(rng, precision)
    x = rng.randn(8, 3, 16, 16).astype(F32)
    with caplog.at_level(logging.WARNING, logger="tftrt.engine"):
        gpu = build_engine(model, {"x": x.shape}, BuilderConfig(precision=precision,
                                                                backend="cupy"))
    assert not [r for r in caplog.records if "has no" in r.getMessage()]
    assert gpu.precision == precision
    choices = _choices(gpu)
    report = Q.precision_report(gpu.network)
    assert report["quantized_share"] == 1.0, report
    impls = _impls(gpu)
    stored = np.int8 if precision == "INT8" else np.uint8
    from tftrt.engine.backends import cuda_source_quant as S
    for r in report["layers"]:
        impl = impls[r["name"]]
        assert isinstance(impl, (QK.QuantConvCudnn, QK.QuantGemmLt)), (r, choices)
        assert impl.w.dtype == stored and impl.fallback is None, (r, choices)
        assert r["kernel"] and "emulated" not in r["kernel"], r
        assert impl.record()["validated"]["v"] == S.VALIDATION_VERSION, choices
    first = report["layers"][0]
    assert f"padded 3->{4 if precision == 'INT8' else 16}" in first["kernel"], first
    ref = build_engine(model, {"x": x.shape}, BuilderConfig(precision=precision,
                                                            backend="numpy"))
    got = cp.asnumpy(gpu.execute([cp.asarray(x)])[0])
    _close(got, ref.execute([x])[0], f"{precision} ({choices})")
    again = cp.asnumpy(gpu.execute([cp.asarray(x)])[0])  # CUDA-graph replay: same answer
    np.testing.assert_array_equal(again, got)


@pytest.mark.parametrize("precision", ["INT8", "FP8"])
def test_depthwise_conv_runs_emulated_and_matches_numpy(precision, monkeypatch):
    """A quantized depthwise conv has no int8 / fp8 library kernel: with the tiled kernel's
    tactic off (TFTRT_QUANT_DW=0; it is also the fallback of q_dw) it runs q_emulated (the
    quantized values through a TF32 conv, same epilogue kernel), said in the report; the
    engine still answers as the simulation does, its other layers on real kernels."""
    from tftrt.engine.backends import cupy_quant as QK
    if precision == "FP8" and _sm() < (8, 9):
        pytest.skip("FP8 needs sm_89+")
    monkeypatch.setenv("TFTRT_QUANT_DW", "0")
    rng = np.random.RandomState(3)
    model, cal = _depthwise_model(rng)
    Q.set_table(model, cal.table(precision))
    x = rng.randn(4, 3, 12, 12).astype(F32)
    gpu = build_engine(model, {"x": x.shape}, BuilderConfig(precision=precision,
                                                            backend="cupy"))
    impls = _impls(gpu)
    kinds = {l.name: (l.attrs.get("group", 1), type(impls[l.name]))
             for l in gpu.network.layers if l.kind == "conv"}
    assert sorted(g for g, _ in kinds.values()) == [1, 1, 16], kinds
    for g, cls in kinds.values():
        want = ((QK.QuantEmulated,) if g > 1
                else (QK.QuantConvCudnn, QK.QuantConvCudnnPairs, QK.QuantGemmLt,
                      QK.QuantGemmMma))
        assert cls in want, kinds
    dw = [r for r in Q.precision_report(gpu.network)["layers"] if "emulated" in
          (r["kernel"] or "")]
    assert len(dw) == 1 and dw[0]["precision"] == precision
    ref = build_engine(model, {"x": x.shape}, BuilderConfig(precision=precision,
                                                            backend="numpy"))
    _close(cp.asnumpy(gpu.execute([cp.asarray(x)])[0]), ref.execute([x])[0], precision)


def _residual_model(rng):
    """Two ResNet bottleneck-like identity blocks after a stem conv: each block's input is
    read by its first 1x1 conv and added by its last (the residual), 32 channels."""
    from onnx import helper
    N = helper.make_node
    consts = {"w0": (rng.randn(32, 3, 3, 3) * 0.3).astype(F32)}
    nodes = [N("Conv", ["x", "w0"], ["c0"], pads=[1, 1, 1, 1]), N("Relu", ["c0"], ["a0"])]
    for b in range(2):
        i, o = f"a{b}", f"a{b + 1}"
        consts.update({f"w{b}a": (rng.randn(16, 32, 1, 1) * 0.25).astype(F32),
                       f"w{b}b": (rng.randn(16, 16, 3, 3) * 0.1).astype(F32),
                       f"w{b}c": (rng.randn(32, 16, 1, 1) * 0.25).astype(F32),
                       f"b{b}c": (rng.randn(32) * 0.1).astype(F32)})
        nodes += [N("Conv", [i, f"w{b}a"], [f"p{b}"]), N("Relu", [f"p{b}"], [f"q{b}"]),
                  N("Conv", [f"q{b}", f"w{b}b"], [f"r{b}"], pads=[1, 1, 1, 1]),
                  N("Relu", [f"r{b}"], [f"s{b}"]),
                  N("Conv", [f"s{b}", f"w{b}c", f"b{b}c"], [f"t{b}"]),
                  N("Add", [f"t{b}", i], [f"u{b}"]), N("Relu", [f"u{b}"], [o])]
    nodes.append(N("Identity", ["a2"], ["y"]))
    model = make_model(nodes, {"x": np.zeros((4, 3, 14, 14), F32)}, consts)
    return _calibrated(model, rng, (4, 3, 14, 14), "INT8")


def test_int8_residuals_stay_int8_on_the_gpu(monkeypatch):
    """ResNet identity blocks: the block outputs the next block both convolves and adds are
    int8 on the GPU (requantized once, the residual dequantized in the last conv's epilogue
    kernel), no layer emulated, and the engine answers what the simulation answers; with
    TFTRT_INT8_RESIDUAL=0 the same blocks pass float16 and answer as its simulation."""
    rng = np.random.RandomState(5)
    model = _residual_model(rng)
    x = rng.randn(4, 3, 14, 14).astype(F32)
    for on in ("1", "0"):  # (0 is the default)
        monkeypatch.setenv("TFTRT_INT8_RESIDUAL", on)
        gpu = build_engine(model, {"x": x.shape}, BuilderConfig(precision="INT8",
                                                                backend="cupy"))
        choices = _choices(gpu)
        scaled = [l.name for l in gpu.network.layers
                  if any(e["op"] == "add" and "scale" in e for e in l.epilogue)]
        assert len(scaled) == (2 if on == "1" else 0), (scaled, choices)
        report = Q.precision_report(gpu.network)
        assert report["quantized_share"] == 1.0, report
        assert not [r for r in report["layers"] if "emulated" in (r["kernel"] or "")], choices
        ref = build_engine(model, {"x": x.shape}, BuilderConfig(precision="INT8",
                                                                backend="numpy"))
        _close(cp.asnumpy(gpu.execute([cp.asarray(x)])[0]), ref.execute([x])[0],
               f"INT8 residual blocks (TFTRT_INT8_RESIDUAL={on}; {choices})", rel=2e-2)


def test_int8_chain_requantizes_on_the_gpu():
    """Two INT8 convs: the first one's output is int8 on the GPU too (requantized in its
    epilogue kernel), and the engine answers what the simulation answers."""
    rng = np.random.RandomState(4)
    model = _calibrated_model(rng, "INT8")
    x = rng.randn(8, 3, 16, 16).astype(F32)
    gpu = build_engine(model, {"x": x.shape}, BuilderConfig(precision="INT8", backend="cupy"))
    int8 = [t for t in gpu.network.tensors.values() if t.dtype == "int8" and
            t.name not in gpu.network.weights]
    assert int8, "the conv -> conv chain should pass int8 between the layers"
    # a requantized cuDNN conv writes its int8 output from cuDNN's fused graph (variant
    # fused_int8; H100, cuDNN 9.19, 2026-12-05), not through an fp32 output and a kernel
    choices = _choices(gpu)
    requant = [impl.record().get("variant") for l, impl in
               zip(gpu.network.layers, gpu.backend_impl.engine_impls(gpu))
               if l.attrs.get("quant", {}).get("output_scale") is not None and
               impl.record() and "cuDNN" in (impl.record().get("kernel") or "")]
    assert requant and set(requant) == {"fused_int8"}, choices
    ref = build_engine(model, {"x": x.shape}, BuilderConfig(precision="INT8", backend="numpy"))
    _close(cp.asnumpy(gpu.execute([cp.asarray(x)])[0]), ref.execute([x])[0], "INT8 chain",
           rel=2e-2)


def _bottleneck_model(rng, precision):
    """A stem conv to 64 channels, then a ResNet bottleneck with a projection shortcut: 1x1
    64 -> 64, 3x3, 1x1 64 -> 256 (+ the 1x1 64 -> 256 projection, no ReLU), add, ReLU: the
    1x1 convs are GEMMs of K 64 that the tensor-core kernel (q_mma) takes; then 1x1 256 ->
    320 (K 256, q_mma's too), ReLU, 1x1 320 -> 64 (K 320: over TACTIC_MAX_K, but small)."""
    from onnx import helper
    N = helper.make_node
    consts = {"w0": (rng.randn(64, 3, 3, 3) * 0.3).astype(F32),
              "wa": (rng.randn(64, 64, 1, 1) * 0.15).astype(F32),
              "wb": (rng.randn(64, 64, 3, 3) * 0.05).astype(F32),
              "wc": (rng.randn(256, 64, 1, 1) * 0.15).astype(F32),
              "bc": (rng.randn(256) * 0.1).astype(F32),
              "wp": (rng.randn(256, 64, 1, 1) * 0.15).astype(F32),
              "we": (rng.randn(320, 256, 1, 1) * 0.06).astype(F32),
              "wf": (rng.randn(64, 320, 1, 1) * 0.06).astype(F32)}
    nodes = [N("Conv", ["x", "w0"], ["c0"], pads=[1, 1, 1, 1]), N("Relu", ["c0"], ["a0"]),
             N("Conv", ["a0", "wa"], ["p"]), N("Relu", ["p"], ["q"]),
             N("Conv", ["q", "wb"], ["r"], pads=[1, 1, 1, 1]), N("Relu", ["r"], ["s"]),
             N("Conv", ["s", "wc", "bc"], ["t"]), N("Conv", ["a0", "wp"], ["sc"]),
             N("Add", ["t", "sc"], ["u"]), N("Relu", ["u"], ["v"]),
             N("Conv", ["v", "we"], ["e"]), N("Relu", ["e"], ["f"]),
             N("Conv", ["f", "wf"], ["y"])]
    model = make_model(nodes, {"x": np.zeros((4, 3, 14, 14), F32)}, consts)
    return _calibrated(model, rng, (4, 3, 14, 14), precision)


def _leave_to(monkeypatch, QK, mine: str, others) -> None:
    """Takes the tactics whose cupy_quant predicates are ``others`` away from the layers that
    predicate ``mine`` applies to: those layers' only candidate is the kernel under test."""
    pred = getattr(QK, mine)
    for name in others:
        real = getattr(QK, name)
        monkeypatch.setattr(QK, name, lambda net, layer, real=real: real(net, layer) and
                            not pred(net, layer))


def _on_kernel(model, x, precision, cls, kernel):
    """``model``'s CuPy engine at x's shape: (its layers ``cls`` runs, each recording a kernel
    line that starts with ``kernel`` and this validation version; the choices, for messages;
    the engine's output; the numpy simulation's)."""
    from tftrt.engine.backends import cupy_quant as QK
    gpu = build_engine(model, {"x": x.shape}, BuilderConfig(precision=precision,
                                                            backend="cupy"))
    choices = _choices(gpu)
    mine = [(l, i) for l, i in _impls_pairs(gpu) if isinstance(i, cls)]
    for layer, impl in mine:
        rec = impl.record()
        assert rec["kernel"].startswith(kernel), choices
        assert rec["validated"]["v"] == QK.S.VALIDATION_VERSION, choices
    ref = build_engine(model, {"x": x.shape}, BuilderConfig(precision=precision,
                                                            backend="numpy"))
    return mine, choices, cp.asnumpy(gpu.execute([cp.asarray(x)])[0]), ref.execute([x])[0]


@pytest.mark.parametrize("precision", ["INT8", "FP8"])
def test_the_tensor_core_gemm_kernel_runs_1x1_convs_and_matches_numpy(precision, monkeypatch):
    """With the libraries' tactics taken away from the layers q_mma takes, every 1x1 conv of a
    bottleneck and the ones after it (K 256 and 320), and its 3x3 conv of 64 channels as an
    implicit GEMM (ConvGeometry), run the tensor-core kernel (cuda_source_qmma: x quantized
    on load or read as int8, epilogue and requantization fused), validated at build time,
    and the engine answers what the numpy simulation answers."""
    from tftrt.engine.backends import cupy_quant as QK
    if precision == "FP8" and _sm() < (8, 9):
        pytest.skip("FP8 needs sm_89+")
    monkeypatch.setenv("TFTRT_INT8_RESIDUAL", "1")
    monkeypatch.setenv("TFTRT_QUANT_MMA", "1")  # the default, whatever the environment says
    # every conv a layer of its own (the fused projection: the next test)
    monkeypatch.setenv("TFTRT_QUANT_MMA_PROJECTION", "0")
    monkeypatch.setattr(QK, "_MMA_VERDICTS", {})
    _leave_to(monkeypatch, QK, "mma_applies", ("gemm_applies", "cudnn_applies",
                                               "cudnn_pairs_applies", "emulated_applies"))
    rng = np.random.RandomState(7)
    model = _bottleneck_model(rng, precision)
    x = rng.randn(4, 3, 14, 14).astype(F32)
    mma, choices, got, want = _on_kernel(model, x, precision, QK.QuantGemmMma,
                                         f"tensor-core {precision} GEMM kernel")
    # every 1x1 conv, the one of K 320 too: at batch 4 it is a GEMM of at most TACTIC_SMALL
    # multiply-adds, offered at any K up to MAX_K (latency-bound); the 3x3 conv (not the
    # 3-channel stem)
    assert len(mma) == 6, choices
    assert [impl.src.conv.r for _, impl in mma if impl.src.conv is not None] == [3], choices
    # seven quantized layers in a chain: an input whose fp32 sum (cuDNN's stem: 93% of its
    # outputs exact in FP8, H100 2026-12-06) lands on the other side of a rounding boundary
    # moves by one int8 step (1 / 127 of the range) or one E4M3 step (6-12% of the value) and
    # carries through the layers after it; each q_mma layer was 99.9-100% exact in its
    # validation. The bulk must agree to the format's tolerance (FP8: 1.37% of the outputs
    # were over it, H200 2026-12-06), the worst to the chain's.
    chain, share = {"INT8": (2e-2, 0.01), "FP8": (6e-2, 0.03)}[precision]
    what = f"{precision} bottleneck on q_mma ({choices})"
    _close(got, want, what, rel=chain)
    err = np.abs(got.astype(np.float64) - want) / max(np.abs(want).max(), 1e-6)
    off = float(np.mean(err > REL[precision]))
    assert off <= share, f"{what}: {off:.2%} of outputs off by > {REL[precision]}"


def test_the_residual_conv_runs_its_projection_in_its_own_kernel(monkeypatch):
    """With TFTRT_QUANT_MMA_PROJECTION=1 the bottleneck's last 1x1 conv, on q_mma, takes its
    projection shortcut into its kernel (quantization.fuse_projections,
    cuda_source_qmma.Projection): one layer fewer, the fused kernel validated at build time,
    and the engine's answers the unfused engine's bit for bit (the same integer sums and
    requantized codes) and the numpy simulation's."""
    from tftrt.engine.backends import cupy_quant as QK
    monkeypatch.setenv("TFTRT_INT8_RESIDUAL", "1")
    monkeypatch.setenv("TFTRT_QUANT_MMA", "1")
    monkeypatch.setattr(QK, "_MMA_VERDICTS", {})
    _leave_to(monkeypatch, QK, "mma_applies", ("gemm_applies", "cudnn_applies",
                                               "cudnn_pairs_applies", "emulated_applies"))
    rng = np.random.RandomState(7)
    model = _bottleneck_model(rng, "INT8")
    x = rng.randn(4, 3, 14, 14).astype(F32)
    cfg = BuilderConfig(precision="INT8", backend="cupy")
    monkeypatch.setenv("TFTRT_QUANT_MMA_PROJECTION", "0")
    plain = build_engine(model, {"x": x.shape}, cfg)
    want = cp.asnumpy(plain.execute([cp.asarray(x)])[0])
    monkeypatch.setenv("TFTRT_QUANT_MMA_PROJECTION", "1")
    fused = build_engine(model, {"x": x.shape}, cfg)
    choices = _choices(fused)
    took = [(l, i) for l, i in _impls_pairs(fused) if "projection" in l.attrs]
    assert len(took) == 1, choices
    layer, impl = took[0]
    assert isinstance(impl, QK.QuantGemmMma) and impl.src.projection is not None, choices
    assert impl.fallback is None, choices
    assert len(fused.network.layers) == len(plain.network.layers) - 1
    got = cp.asnumpy(fused.execute([cp.asarray(x)])[0])
    np.testing.assert_array_equal(got, want)
    ref = build_engine(model, {"x": x.shape}, BuilderConfig(precision="INT8",
                                                            backend="numpy"))
    _close(got, ref.execute([x])[0], f"fused projection ({choices})", rel=2e-2)
    report = Q.precision_report(fused.network)
    assert report["quantized_flops"] == Q.precision_report(plain.network)["quantized_flops"]


def _mobilenet_block_model(rng, precision):
    """MobileNetV2's block at small size: 1x1 expansion 32 -> 96 + ReLU6, a 3x3 depthwise
    conv (stride 2, then stride 1) + ReLU6, a 1x1 projection: the depthwise convs are INT8 /
    FP8 layers only the tiled depthwise kernel (q_dw) or the emulated path take."""
    from onnx import helper
    N = helper.make_node
    consts = {"w0": (rng.randn(32, 3, 3, 3) * 0.3).astype(F32),
              "we": (rng.randn(96, 32, 1, 1) * 0.2).astype(F32),
              "wd": (rng.randn(96, 1, 3, 3) * 0.4).astype(F32),
              "bd": (rng.randn(96) * 0.1).astype(F32),
              "wd2": (rng.randn(96, 1, 3, 3) * 0.4).astype(F32),
              "wp": (rng.randn(24, 96, 1, 1) * 0.15).astype(F32),
              "lo": np.array(0, F32), "hi": np.array(6, F32)}
    nodes = [N("Conv", ["x", "w0"], ["c0"], pads=[1, 1, 1, 1]), N("Relu", ["c0"], ["a0"]),
             N("Conv", ["a0", "we"], ["e"]), N("Clip", ["e", "lo", "hi"], ["e6"]),
             N("Conv", ["e6", "wd", "bd"], ["d"], group=96, pads=[0, 0, 1, 1], strides=[2, 2]),
             N("Clip", ["d", "lo", "hi"], ["d6"]),
             N("Conv", ["d6", "wd2"], ["d2"], group=96, pads=[1, 1, 1, 1]),
             N("Clip", ["d2", "lo", "hi"], ["d26"]),
             N("Conv", ["d26", "wp"], ["y"])]
    model = make_model(nodes, {"x": np.zeros((4, 3, 16, 16), F32)}, consts)
    return _calibrated(model, rng, (4, 3, 16, 16), precision)


@pytest.mark.parametrize("kernel", ["tiled", "direct"])
@pytest.mark.parametrize("precision", ["INT8", "FP8"])
def test_quantized_depthwise_convs_run_the_depthwise_kernels_and_match_numpy(precision, kernel,
                                                                           monkeypatch):
    """With the other tactics taken away from the layers q_dw / q_dw_direct take, both
    depthwise convs run the tiled (or the direct) depthwise kernel in its quantized mode,
    validated at build time, and the engine answers what the numpy simulation answers."""
    from tftrt.engine.backends import cupy_quant as QK
    if precision == "FP8" and _sm() < (8, 9):
        pytest.skip("FP8 needs sm_89+")
    monkeypatch.setenv("TFTRT_QUANT_DW", "1")
    monkeypatch.setattr(QK, "_DW_VERDICTS", {})
    mine, other = ("dw_applies", "dw_direct_applies")[::1 if kernel == "tiled" else -1]
    _leave_to(monkeypatch, QK, mine, ("emulated_applies", other))
    cls = QK.QuantDepthwiseTiled if kernel == "tiled" else QK.QuantDepthwiseDirect
    rng = np.random.RandomState(8)
    model = _mobilenet_block_model(rng, precision)
    x = rng.randn(4, 3, 16, 16).astype(F32)
    dw, choices, got, want = _on_kernel(model, x, precision, cls,
                                        f"{kernel} {precision} depthwise kernel")
    assert len(dw) == 2, choices
    chain = {"INT8": 2e-2, "FP8": 6e-2}[precision]  # (as the bottleneck test's chain)
    _close(got, want, f"{precision} depthwise block, {kernel} kernel ({choices})", rel=chain)


def test_thin_k_1x1_convs_run_the_tensor_core_kernel_and_match_numpy(monkeypatch):
    """MobileNetV2's 1x1 expansions of 16 / 24 channels (K under 32: one zero-padded step of
    the kernel, lanes past the row loading zeros) on q_mma with the libraries' tactics taken
    away, validated at build time, the engine answering what the numpy simulation answers."""
    from onnx import helper
    from tftrt.engine.backends import cupy_quant as QK
    monkeypatch.setenv("TFTRT_QUANT_MMA", "1")
    monkeypatch.setattr(QK, "_MMA_VERDICTS", {})
    _leave_to(monkeypatch, QK, "mma_applies", ("gemm_applies", "cudnn_applies",
                                               "cudnn_pairs_applies", "emulated_applies"))
    rng = np.random.RandomState(9)
    N = helper.make_node
    consts = {"w0": (rng.randn(24, 3, 3, 3) * 0.3).astype(F32),
              "we": (rng.randn(144, 24, 1, 1) * 0.2).astype(F32),
              "wp": (rng.randn(16, 144, 1, 1) * 0.1).astype(F32),
              "wq": (rng.randn(96, 16, 1, 1) * 0.2).astype(F32)}
    nodes = [N("Conv", ["x", "w0"], ["c0"], pads=[1, 1, 1, 1]), N("Relu", ["c0"], ["a0"]),
             N("Conv", ["a0", "we"], ["e"]), N("Relu", ["e"], ["r"]),
             N("Conv", ["r", "wp"], ["p"]), N("Conv", ["p", "wq"], ["y"])]
    model = _calibrated(make_model(nodes, {"x": np.zeros((4, 3, 14, 14), F32)}, consts), rng,
                        (4, 3, 14, 14))
    x = rng.randn(4, 3, 14, 14).astype(F32)
    mma, choices, got, want = _on_kernel(model, x, "INT8", QK.QuantGemmMma,
                                         "tensor-core INT8 GEMM kernel")
    assert sorted(impl.src.kx for _, impl in mma if impl.src.kx < 32) == [16, 24], choices
    _close(got, want, f"INT8 thin-K 1x1 convs on q_mma ({choices})", rel=2e-2)


def _pairs_model(rng, precision):
    """Three 3x3 convs of at most 64 channels over an even width: the stem 3 -> 32, 32 -> 32
    with a bias and the stem's output added (an int8 residual), ReLU, then 32 -> 64."""
    from onnx import helper
    N = helper.make_node
    consts = {"w0": (rng.randn(32, 3, 3, 3) * 0.3).astype(F32),
              "w1": (rng.randn(32, 32, 3, 3) * 0.08).astype(F32),
              "b1": (rng.randn(32) * 0.1).astype(F32),
              "w2": (rng.randn(64, 32, 3, 3) * 0.08).astype(F32)}
    nodes = [N("Conv", ["x", "w0"], ["c0"], pads=[1, 1, 1, 1]), N("Relu", ["c0"], ["a0"]),
             N("Conv", ["a0", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             N("Add", ["c1", "a0"], ["s1"]), N("Relu", ["s1"], ["a1"]),
             N("Conv", ["a1", "w2"], ["c2"], pads=[1, 1, 1, 1]), N("Relu", ["c2"], ["y"])]
    model = make_model(nodes, {"x": np.zeros((4, 3, 14, 14), F32)}, consts)
    return _calibrated(model, rng, (4, 3, 14, 14), precision)


@pytest.mark.parametrize("precision", ["INT8", "FP8"])
def test_narrow_convs_over_pixel_pairs_run_cudnn_and_match_numpy(precision, monkeypatch):
    """With TFTRT_QUANT_CUDNN_PAIRS=1 and the other tactics taken away, the three 3x3 convs
    run on cuDNN as convs over pixel pairs (x read as [N, H, W / 2, 2 C], the pair filter,
    a fused epilogue's per-channel operands tiled, the int8 residual as pairs), validated
    at build time, and the engine answers what the numpy simulation answers."""
    from tftrt.engine.backends import cupy_quant as QK
    if precision == "FP8" and _sm() < (8, 9):
        pytest.skip("FP8 needs sm_89+")
    monkeypatch.setenv("TFTRT_QUANT_CUDNN_PAIRS", "1")
    monkeypatch.setenv("TFTRT_INT8_RESIDUAL", "1")
    _leave_to(monkeypatch, QK, "cudnn_pairs_applies", ("cudnn_applies", "gemm_applies",
                                                      "mma_applies", "emulated_applies"))
    rng = np.random.RandomState(10)
    model = _pairs_model(rng, precision)
    x = rng.randn(4, 3, 14, 14).astype(F32)
    mine, choices, got, want = _on_kernel(model, x, precision, QK.QuantConvCudnnPairs,
                                          f"cuDNN {precision} conv")
    # every quantized conv (a line each in ``choices``): the two after the stem, and the stem
    # where its calibrated error let it be quantized (TFTRT_QUANTIZE_STEM=1 in the tests)
    assert len(mine) == len(re.findall(r"(?m)^\S+: Quant\w+ ", choices)) >= 2, choices
    assert all("over pixel pairs" in i.record()["kernel"] and i.record()["pairs"]
               for _, i in mine), choices
    assert any(i.tiled for _, i in mine), choices  # the bias / scale of a fused epilogue
    chain = {"INT8": 2e-2, "FP8": 6e-2}[precision]  # (as the bottleneck test's chain)
    _close(got, want, f"{precision} convs over pixel pairs ({choices})", rel=chain)


def _stem_pool_model(rng, zero_pad=False):
    """ResNet's stem and the first block's two 1x1 readers of its MaxPool: 7x7/2 conv 3 ->
    64 + ReLU, 3x3/2 MaxPool (pads 1; or, ``zero_pad``, Keras' ZeroPadding2D then a VALID
    pool, which passes/pad_folding makes the pool's pads with pad_value 0, as in the zoo's
    ResNet50), then 1x1 64 -> 64 + ReLU and the 1x1 64 -> 256 projection, their outputs
    added."""
    from onnx import helper
    N = helper.make_node
    consts = {"w0": (rng.randn(64, 3, 7, 7) * 0.1).astype(F32),
              "b0": (rng.randn(64) * 0.1).astype(F32),
              "wa": (rng.randn(256, 64, 1, 1) * 0.15).astype(F32),
              "wp": (rng.randn(256, 64, 1, 1) * 0.15).astype(F32)}
    nodes = [N("Conv", ["x", "w0", "b0"], ["c0"], pads=[3, 3, 3, 3], strides=[2, 2]),
             N("Relu", ["c0"], ["a0"])]
    if zero_pad:  # in NHWC between transposes, as tf2onnx writes TF's pool1_pad
        consts["zp"] = np.array([0, 1, 1, 0, 0, 1, 1, 0], np.int64)
        nodes += [N("Transpose", ["a0"], ["t0"], perm=[0, 2, 3, 1]),
                  N("Pad", ["t0", "zp"], ["t1"], mode="constant"),
                  N("Transpose", ["t1"], ["a1"], perm=[0, 3, 1, 2]),
                  N("MaxPool", ["a1"], ["m"], kernel_shape=[3, 3], strides=[2, 2])]
    else:
        nodes.append(N("MaxPool", ["a0"], ["m"], kernel_shape=[3, 3], strides=[2, 2],
                       pads=[1, 1, 1, 1]))
    nodes += [N("Conv", ["m", "wa"], ["p"]), N("Relu", ["p"], ["q"]),
              N("Conv", ["m", "wp"], ["sc"]), N("Add", ["q", "sc"], ["y"])]
    shape = (4, 3, 32, 32)
    model = make_model(nodes, {"x": np.zeros(shape, F32)}, consts)
    return _calibrated(model, rng, shape, "INT8"), shape


def test_a_max_pool_read_by_int8_layers_stores_int8_on_the_gpu(monkeypatch):
    """ResNet's stem MaxPool, read only by INT8 1x1 convs, writes their int8 codes on the GPU
    (cuda_source_move.PoolSource with out_scale; quantization._requantize_pools): its
    readers take int8 x, and the engine answers what it answers with the pool left float16
    (TFTRT_INT8_POOL=0) and what the numpy simulation answers."""
    monkeypatch.delenv("TFTRT_QUANTIZE_STEM", raising=False)  # users' default: FP16 stem
    monkeypatch.setenv("TFTRT_INT8_POOL_PRODUCER", "0")  # the next test's
    monkeypatch.setenv("TFTRT_QUANT_MMA_PROJECTION", "0")  # the pool's two readers stay two
    rng = np.random.RandomState(21)
    model, shape = _stem_pool_model(rng)
    x = rng.randn(*shape).astype(F32)
    cfg = BuilderConfig(precision="INT8", backend="cupy")
    monkeypatch.delenv("TFTRT_INT8_POOL", raising=False)
    gpu = build_engine(model, {"x": shape}, cfg)
    (pool,) = [l for l in gpu.network.layers if l.kind == "pool"]
    assert gpu.network.tensors[pool.outputs[0]].dtype == "int8"
    assert gpu.network.tensors[pool.inputs[0]].dtype == "float16"
    readers = [l for l in gpu.network.layers if pool.outputs[0] in l.inputs]
    assert len(readers) == 2 and all(l.precision == "INT8" for l in readers)
    kernels = [impl.record().get("kernel", "") for l, impl in _impls_pairs(gpu)
               if l in readers]
    assert not any("quantized on load" in k for k in kernels), kernels
    got = cp.asnumpy(gpu.execute([cp.asarray(x)])[0])
    monkeypatch.setenv("TFTRT_INT8_POOL", "0")
    off = build_engine(model, {"x": shape}, cfg)
    assert off.network.tensors[pool.outputs[0]].dtype == "float16"
    want_off = cp.asnumpy(off.execute([cp.asarray(x)])[0])
    monkeypatch.delenv("TFTRT_INT8_POOL")
    ref = build_engine(model, {"x": shape}, BuilderConfig(precision="INT8", backend="numpy"))
    want = ref.execute([x])[0]
    # the same codes from the same float16 stem output; the stem's tactic (timed per build)
    # may round a float16 output differently, moving a code one step (1 / 127 of the range)
    # through the layers after it, as in the other INT8 chains
    _close(got, want_off, f"int8 pool against float16 pool ({_choices(gpu)})", rel=2e-2)
    _close(got, want, f"int8 pool against numpy ({_choices(gpu)})", rel=2e-2)
    impl = next(i for l, i in _impls_pairs(gpu) if l is pool)
    assert "q_int8" in impl.kernel.source  # the requantizing store ran


@pytest.mark.parametrize("zero_pad", [False, True])
def test_a_stem_on_stem_mma_stores_the_int8_codes_of_its_max_pool(monkeypatch, zero_pad):
    """The stem on stem_mma (its tactic chosen here) stores the pool's int8 codes itself
    (quantization.absorb_pool_requantization; NaN as -128) and the pool pools codes (raised
    to -127; a folded zero pad's cells hold the code of 0): the engine answers what the
    numpy simulation (whose convs store codes too) answers, and what the pool quantizing
    answers (TFTRT_INT8_POOL_PRODUCER=0)."""
    from tftrt.engine.backends import cupy_stem_mma as CSM
    monkeypatch.delenv("TFTRT_QUANTIZE_STEM", raising=False)
    monkeypatch.delenv("TFTRT_INT8_POOL", raising=False)
    monkeypatch.setenv("TFTRT_INT8_POOL_PRODUCER", "1")
    rng = np.random.RandomState(22)
    model, shape = _stem_pool_model(rng, zero_pad)
    x = rng.randn(*shape).astype(F32)
    x[0, :, :4, :4] = np.nan  # NaN pixels: the stem's NaN results, skipped by the pool
    first = build_engine(model, {"x": shape}, BuilderConfig(precision="INT8", backend="cupy"))
    (pool,) = [l for l in first.network.layers if l.kind == "pool"]
    stem_name = next(l.name for l in first.network.layers if pool.inputs[0] in l.outputs)
    cfg = BuilderConfig(precision="INT8", backend="cupy",
                        tactic_choices={stem_name: {"kind": "conv", "tactic": "stem_mma"}})
    gpu = build_engine(model, {"x": shape}, cfg)
    pairs = _impls_pairs(gpu)
    stem, stem_impl = next((l, i) for l, i in pairs if l.name == stem_name)
    pool, pool_impl = next((l, i) for l, i in pairs if l.kind == "pool")
    assert stem.tactic == "stem_mma" and isinstance(stem_impl, CSM.StemMma), stem_impl
    assert stem.attrs["output_scale"] > 0 and stem.attrs["output_nan_code"] == -128
    assert gpu.network.tensors[stem.outputs[0]].dtype == "int8"
    assert gpu.network.tensors[pool.outputs[0]].dtype == "int8"
    assert "output_scale" not in pool.attrs and pool.attrs["code_floor"] == -127
    assert pool.attrs.get("pad_value") == (0.0 if zero_pad else None)
    assert "pack_q2" in stem_impl.src.source and pool_impl.kernel.vec == 16
    got = cp.asnumpy(gpu.execute([cp.asarray(x)])[0])
    ref = build_engine(model, {"x": shape}, BuilderConfig(precision="INT8", backend="numpy"))
    assert ref.network.tensors[stem.outputs[0]].dtype == "int8"
    want = ref.execute([x])[0]
    assert np.isnan(want).sum() == np.isnan(got).sum() == 0
    _close(got, want, f"stem storing int8 against numpy ({_choices(gpu)})", rel=2e-2)
    monkeypatch.setenv("TFTRT_INT8_POOL_PRODUCER", "0")
    pooled = build_engine(model, {"x": shape}, cfg)
    assert pooled.network.tensors[stem.outputs[0]].dtype == "float16"
    _close(got, cp.asnumpy(pooled.execute([cp.asarray(x)])[0]),
           "stem storing int8 against the pool quantizing", rel=2e-2)


@pytest.mark.parametrize("kernel", ["cudnn", "q_mma"])
def test_a_requantized_conv_without_relu_saturates_symmetrically(kernel, monkeypatch):
    """A requantized conv with no activation (ResNet's projection shortcuts) writes its int8
    output from cuDNN's fused graph too: cuDNN's int8 store saturates to [-128, 127] and the
    simulation to +-127, so without the graph's clip node validation rejected fused_int8 for
    every such conv (H100, cuDNN 9.19: 2.6% of outputs one step off). Since s43 q_mma's padded
    K takes this thin 1x1 conv first (TFTRT_QUANT_MMA=0 leaves it to cuDNN); its own int8
    store must saturate the same way. Inputs 4x the calibration range saturate at run time as
    well, and the engine still answers what the simulation answers."""
    from tftrt.engine.backends import cupy_quant as QK
    if kernel == "cudnn":
        monkeypatch.setenv("TFTRT_QUANT_MMA", "0")
    from onnx import helper
    rng = np.random.RandomState(11)
    N = helper.make_node
    consts = {"w1": (rng.randn(32, 16, 1, 1) * 0.3).astype(F32),
              "b1": (rng.randn(32) * 0.1).astype(F32),
              "w2": (rng.randn(16, 32, 3, 3) * 0.1).astype(F32)}
    nodes = [N("Conv", ["x", "w1", "b1"], ["c1"]),
             N("Conv", ["c1", "w2"], ["c2"], pads=[1, 1, 1, 1]), N("Relu", ["c2"], ["y"])]
    model = make_model(nodes, {"x": np.zeros((4, 16, 14, 14), F32)}, consts)
    _calibrated(model, rng, (4, 16, 14, 14))
    x = (rng.randn(4, 16, 14, 14) * 4).astype(F32)
    gpu = build_engine(model, {"x": x.shape}, BuilderConfig(precision="INT8", backend="cupy"))
    choices = _choices(gpu)
    first = [(l, impl) for l, impl in zip(gpu.network.layers,
                                           gpu.backend_impl.engine_impls(gpu))
             if l.attrs.get("quant", {}).get("output_scale") is not None]
    assert first, choices
    layer, impl = first[0]
    assert not [e for e in layer.epilogue if e["op"] == "act"], layer.epilogue
    rec = impl.record() or {}
    if kernel == "cudnn":
        assert rec.get("variant") == "fused_int8" and not rec.get("rejected"), choices
    else:
        assert isinstance(impl, QK.QuantGemmMma) and "int8 output" in rec["kernel"], choices
    ref = build_engine(model, {"x": x.shape}, BuilderConfig(precision="INT8", backend="numpy"))
    _close(cp.asnumpy(gpu.execute([cp.asarray(x)])[0]), ref.execute([x])[0],
           "a saturating no-relu INT8 conv", rel=2e-2)


def test_timed_precision_measures_on_the_gpu(monkeypatch):
    """TFTRT_QUANT_TIMED_PRECISION=1 on the CuPy backend: the layers and the whole engines
    are really timed (the backend's profile and time_run), the decision is recorded, and the
    engine kept answers what the numpy simulation of the same plan (the same layers kept
    FP16) answers."""
    monkeypatch.setenv("TFTRT_QUANT_TIMED_PRECISION", "1")
    rng = np.random.RandomState(4)
    model = _calibrated_model(rng, "INT8")
    x = rng.randn(8, 3, 16, 16).astype(F32)
    gpu = build_engine(model, {"x": x.shape}, BuilderConfig(precision="INT8", backend="cupy"))
    info = gpu.build_info["timed_precision"]
    print(info)
    assert info["quantized_s"] > 0 and info["fp16_s"] > 0 and info["by"] == "whole engines"
    assert info["kept"] in ("INT8", "mixed", "FP16"), info
    plain = build_engine(model, {"x": x.shape}, BuilderConfig(precision="INT8", backend="numpy"))
    keep = {"INT8": {}, "mixed": {n: "kept" for n in info["fp16_faster"]},
            "FP16": {l.name: "kept" for l in plain.network.layers if "quant" in l.attrs}}[
        info["kept"]]
    for name in keep:
        layer = next(l for l in gpu.network.layers if l.name == name)
        assert layer.precision == "FP16" and "measured faster" in layer.attrs["quant_fallback"]
    ref = build_engine(model, {"x": x.shape}, BuilderConfig(precision="INT8", backend="numpy",
                                                            keep_fp16=keep))
    _close(cp.asnumpy(gpu.execute([cp.asarray(x)])[0]), ref.execute([x])[0],
           f"timed precision ({info})", rel=2e-2)


def _fresh_caches(monkeypatch, QK):
    """No layer signature validated / built before in this process: the build runs the
    validation again."""
    monkeypatch.setattr(QK, "_SHARED", {})
    monkeypatch.setattr(QK, "_VERDICTS", {})


@pytest.mark.parametrize("precision", ["INT8", "FP8"])
def test_validation_rejects_a_cudnn_variant_that_writes_nothing(precision, monkeypatch):
    """The preferred cuDNN variants (fused epilogue) broken on purpose -- their graphs write
    no output -- are rejected by the build-time validation with the reason recorded; the
    convs then run another variant (or, if none passes, emulated, said in the fallback),
    and the engine still answers what the numpy simulation answers."""
    from tftrt.engine.backends import cupy_quant as QK
    if precision == "FP8" and _sm() < (8, 9):
        pytest.skip("FP8 needs sm_89+")
    _fresh_caches(monkeypatch, QK)
    real = QK.QCudnnConv.run

    def broken(self, *args, **kw):
        if self.variant in ("fused", "fused_int8", "fused_requant"):
            return None  # nothing written
        return real(self, *args, **kw)
    monkeypatch.setattr(QK.QCudnnConv, "run", broken)
    rng = np.random.RandomState(5)
    model = _calibrated_model(rng, precision)
    x = rng.randn(8, 3, 16, 16).astype(F32)
    gpu = build_engine(model, {"x": x.shape}, BuilderConfig(precision=precision,
                                                            backend="cupy"))
    choices = _choices(gpu)
    convs = [(l, i) for l, i in _impls_pairs(gpu) if l.kind == "conv"]
    assert len(convs) == 2, choices
    for layer, impl in convs:
        if isinstance(impl, QK.QuantConvCudnn):
            rec = impl.record()
            assert rec["variant"] not in ("fused", "fused_int8", "fused_requant"), choices
            rejected = rec.get("rejected", [])
            assert any(r.startswith("fused") and ("not written" in r or "further" in r)
                       for r in rejected), choices
        else:  # every variant rejected: emulated, the reasons (cut short) in the fallback
            assert isinstance(impl, QK.QuantEmulated), choices
            assert "passed the build-time validation: fused" in impl.fallback, choices
    ref = build_engine(model, {"x": x.shape}, BuilderConfig(precision=precision,
                                                            backend="numpy"))
    _close(cp.asnumpy(gpu.execute([cp.asarray(x)])[0]), ref.execute([x])[0],
           f"{precision} ({choices})", rel=REL[precision])


def test_validation_rejects_a_cublaslt_gemm_that_writes_nothing(monkeypatch):
    """Every cuBLASLt algorithm broken on purpose (no accumulator written): the INT8 matmul
    refuses the layer at build time ("no algorithm passed the build-time validation"), the
    emulated path takes it (its fallback says why), and the answers stay right."""
    from tftrt.engine.backends import cupy_quant as QK
    _fresh_caches(monkeypatch, QK)
    monkeypatch.setattr(QK.QLtGemm, "run", lambda self, *a, **k: None)
    rng = np.random.RandomState(6)
    model = _calibrated_model(rng, "INT8")
    x = rng.randn(8, 3, 16, 16).astype(F32)
    gpu = build_engine(model, {"x": x.shape}, BuilderConfig(precision="INT8", backend="cupy"))
    choices = _choices(gpu)
    (mm,) = [i for l, i in _impls_pairs(gpu) if l.kind == "matmul"]
    assert isinstance(mm, QK.QuantEmulated), choices
    assert "no algorithm passed the build-time validation" in mm.fallback, choices
    ref = build_engine(model, {"x": x.shape}, BuilderConfig(precision="INT8", backend="numpy"))
    _close(cp.asnumpy(gpu.execute([cp.asarray(x)])[0]), ref.execute([x])[0],
           f"INT8 ({choices})")


def _impls_pairs(engine):
    return list(zip(engine.network.layers, engine.backend_impl.engine_impls(engine)))


def test_calibration_on_the_gpu_matches_the_host(monkeypatch):
    """TFTRT_CALIBRATE_ON_GPU=1: the FP32 engine calibration runs, and the histograms, are on
    the GPU (CuPy arrays binned there). Its table agrees with the host's: max ranges within
    FP32 reordering, the per-layer errors close, the same plan; with a dynamic batch the
    error check runs on the first rows, built for them on the GPU too."""
    from functools import partial
    from onnx import helper
    from tftrt.engine import calibrator as C
    monkeypatch.setattr(C, "ERROR_ROWS", 6)
    rng = np.random.RandomState(21)
    consts = {"w1": (rng.randn(16, 3, 3, 3) * 0.3).astype(F32),
              "w2": (rng.randn(16, 16, 3, 3) * 0.2).astype(F32),
              "wd": rng.randn(16, 4).astype(F32)}
    N = helper.make_node
    nodes = [N("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]), N("Relu", ["c1"], ["r1"]),
             N("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1]), N("Relu", ["c2"], ["r2"]),
             N("GlobalAveragePool", ["r2"], ["g"]), N("Flatten", ["g"], ["f"]),
             N("MatMul", ["f", "wd"], ["y"])]
    model = make_model(nodes, {"x": np.zeros((8, 3, 16, 16), F32)}, consts, symbolic=(0,))
    xs = [rng.randn(8, 3, 16, 16).astype(F32) for _ in range(3)]
    tables, cals = {}, {}
    for where, build in (("host", None), ("gpu", partial(C.fp32_engine, backend="cupy"))):
        cal = cals[where] = EngineCalibrator(network_from_onnx(model), build=build)
        for x in xs:
            cal.observe([x])
        tables[where] = cal.table("INT8", "max")
    assert {e.backend for e in cals["gpu"].engines.values()} == {"cupy"}
    assert [k for k, _ in cals["gpu"].kept] == [((6, 3, 16, 16),)]
    host, gpu = tables["host"], tables["gpu"]
    assert set(gpu["tensors"]) == set(host["tensors"])
    for name, amax in host["tensors"].items():
        assert gpu["tensors"][name] == pytest.approx(amax, rel=1e-4), name
    assert set(gpu["layer_errors"]) == set(host["layer_errors"])
    for name, e in host["layer_errors"].items():
        assert gpu["layer_errors"][name] == pytest.approx(e, rel=0.05, abs=1e-4), name
    assert [(l["name"], l["precision"]) for l in gpu["plan"]["layers"]] == \
        [(l["name"], l["precision"]) for l in host["plan"]["layers"]]
    x = cals["gpu"].network.inputs[0]  # the same values binned on the GPU and the host
    h = cals["gpu"].stats[x]
    assert h.values == 3 * xs[0].size and h.nonfinite == 0
    np.testing.assert_array_equal(h.counts, cals["host"].stats[x].counts)


def test_fp8_needs_a_gpu_with_fp8():
    rng = np.random.RandomState(1)
    model = _calibrated_model(rng, "FP8")
    config = BuilderConfig(precision="FP8", backend="cupy")
    if _sm() < (8, 9):
        with pytest.raises(EngineBuildError, match="precision FP8 needs an NVIDIA GPU with FP8"):
            build_engine(model, {"x": (8, 3, 16, 16)}, config)
    else:
        engine = build_engine(model, {"x": (8, 3, 16, 16)}, config)
        assert engine.precision == "FP8"


def _int8_through_tensorflow(tf, model, tmp_path, batch):
    """``model`` exported and converted to INT8, calibrated on four random batches of
    ``batch``, then called on a fifth: the engine runs (no native fallback) within INT8's
    tolerance of FP32 (ranges from four random batches: a few percent), and the saved and
    reloaded model answers the same (a rebuilt engine may pick another cuDNN plan: a fused
    epilogue rounds its own way). Returns the converter's one engine op."""
    import tftrt
    from tftrt import trt_convert as trt
    path = str(tmp_path / "cnn")
    model.export(path, verbose=False)
    rng = np.random.RandomState(0)
    shape = (batch,) + tuple(model.input_shape[1:])
    data = [rng.rand(*shape).astype(F32) for _ in range(4)]
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=path, precision_mode="INT8")
    fn = conv.convert(calibration_input_fn=lambda: iter([(d,) for d in data]))
    (op,) = conv.engine_ops.values()
    x = rng.rand(*shape).astype(F32)
    (got,) = fn(tf.constant(x)).values()
    assert op.stats["engine"] == 1 and op.stats["native"] == 0, op.stats
    want = model(x).numpy()
    assert np.linalg.norm(got.numpy() - want) / np.linalg.norm(want) < 0.05
    conv.save(str(tmp_path / "int8"))
    loaded = tftrt.load(str(tmp_path / "int8"))
    (again,) = loaded.signatures["serving_default"](tf.constant(x)).values()
    np.testing.assert_allclose(again.numpy(), got.numpy(), rtol=2e-3, atol=2e-3)
    return op


def test_int8_with_the_defaults_through_tensorflow(tmp_path, monkeypatch):
    """What a user gets with no switch set (s37: quantized kernels, int8 residuals and the
    timed precision on by default): the engine runs within INT8's tolerance, also after save
    and load (_int8_through_tensorflow), its build timed the quantized, mixed and FP16
    engines as a whole and kept one, and every conv / GEMM the engine runs in FP16 says why
    in summary()."""
    tf = pytest.importorskip("tensorflow")
    if not tf.config.list_physical_devices("GPU"):
        pytest.skip("TensorFlow sees no GPU")
    # (TFTRT_QUANTIZE_STEM too: tests/conftest.py sets it for the kernel tests)
    for name in ("TFTRT_CUPY_QUANTIZED", "TFTRT_INT8_RESIDUAL", "TFTRT_QUANT_TIMED_PRECISION",
                 "TFTRT_QUANTIZE_STEM"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TFTRT_BACKEND", "cupy")
    L = tf.keras.layers
    tf.keras.utils.set_random_seed(1)
    inp = tf.keras.Input((32, 32, 3))
    x = L.Conv2D(32, 3, padding="same", activation="relu")(inp)
    y = L.Conv2D(32, 3, padding="same", activation="relu")(x)
    x = L.ReLU()(L.Add()([x, L.Conv2D(32, 1)(y)]))          # a residual block
    model = tf.keras.Model(inp, L.Dense(10)(L.GlobalAveragePooling2D()(x)))
    op = _int8_through_tensorflow(tf, model, tmp_path, 32)
    engines = [e for _, e in op.cache.items()]
    assert len(engines) == 1 and hasattr(engines[0], "build_info"), engines
    info = engines[0].build_info.get("timed_precision")
    assert info and info.get("by") == "whole engines" and \
        info["kept"] in ("INT8", "mixed", "FP16"), info
    for layer in engines[0].network.layers:
        if layer.kind in ("conv", "matmul") and layer.precision == "FP16":
            assert layer.attrs.get("quant_fallback"), (layer.name, info)


def test_calibrated_keras_cnn_through_tensorflow(tmp_path, monkeypatch):
    tf = pytest.importorskip("tensorflow")
    if not tf.config.list_physical_devices("GPU"):
        pytest.skip("TensorFlow sees no GPU")
    monkeypatch.setenv("TFTRT_BACKEND", "cupy")
    monkeypatch.delenv("TFTRT_QUANTIZE_STEM", raising=False)  # users' default: stems FP16
    L = tf.keras.layers
    tf.keras.utils.set_random_seed(0)
    inp = tf.keras.Input((32, 32, 3))
    x = L.Conv2D(16, 3, padding="same", activation="relu")(inp)
    x = L.Conv2D(32, 3, padding="same", activation="relu")(L.MaxPool2D()(x))
    model = tf.keras.Model(inp, L.Dense(10)(L.GlobalAveragePooling2D()(x)))
    op = _int8_through_tensorflow(tf, model, tmp_path, 16)
    # every conv / GEMM in INT8 but the image stem, which stays FP16 as users' stems do
    # (quantization.STEM_CHANNELS; tests/conftest.py quantizes stems for the other tests:
    # this one unsets that). The stem (3 -> 16 channels at 32x32) is found by its FLOPs,
    # 0.375x the second conv's, whatever the converter names it.
    layers = op.quantization["plan"]["layers"]
    convs = sorted((l for l in layers if l["kind"] == "conv"), key=lambda l: l["flops"])
    assert len(convs) == 2 and convs[0]["flops"] * 8 == convs[1]["flops"] * 3, layers
    stem = convs[0]
    assert stem["precision"] == "FP16" and "an image stem" in (stem["reason"] or ""), layers
    assert all(l["precision"] == "INT8" for l in layers if l is not stem), layers
    assert onnx.load_from_string(op.spec.onnx_bytes).metadata_props
