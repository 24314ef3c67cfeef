"""The ``se`` layer on CuPy (on unless TFTRT_FUSE_SE=0) against the numpy engine: EfficientNet /
MobileNetV3 / GEMM blocks in FP32 and FP16, eager and CUDA-graph replay, the vector and the
scalar (unaligned) kernels, several pool slices at EfficientNetB0's first block's size, both
gate paths (a block per sample; at batch 1 with large FC matrices the split path, se_fc1 +
se_fc2, and the path each case takes asserted); and with TFTRT_FUSE_SE=0 the blocks stay
unfused on CuPy.

On the GPU machine (the tests set TFTRT_BACKEND=cupy and TFTRT_FUSE_SE=1 themselves):
``TFTRT_BACKEND=cupy TFTRT_FUSE_SE=1 python -m pytest tests/gpu/test_se_gpu.py -q``.
"""

import numpy as np
import pytest

from tests.engine.test_se_fusion import _se_net
from tests.tolerances import GPU_VS_NUMPY
from tftrt.engine import BuilderConfig, build_engine

cp = pytest.importorskip("cupy")
pytestmark = pytest.mark.gpu

# FP32 engines are built with TF32 off (as in tests/gpu/test_cupy_backend.py): with it, the
# convolutions around the block differed from the float32 reference by up to 2e-3 of max |ref|
# on an H200, which would hide an error of the se kernels themselves.
TOL = GPU_VS_NUMPY


@pytest.fixture(autouse=True)
def _fuse_se(monkeypatch):
    monkeypatch.setenv("TFTRT_BACKEND", "cupy")
    monkeypatch.setenv("TFTRT_FUSE_SE", "1")


def _engines(net, x, precision):
    shapes = {"in": x.shape}
    from tftrt.engine.backends import get_backend
    get_backend("cupy").set_build_options(allow_tf32=False)
    ref = build_engine(net, shapes, BuilderConfig(precision=precision, backend="numpy"))
    gpu = build_engine(net, shapes, BuilderConfig(precision=precision, backend="cupy",
                                                  allow_tf32=False))
    return ref, gpu


def _compare(got, want, precision, what):
    g = cp.asnumpy(got) if isinstance(got, cp.ndarray) else np.asarray(got)
    w = np.asarray(want)
    assert g.shape == w.shape and g.dtype == w.dtype, (what, g.shape, w.shape, g.dtype)
    rtol, atol = TOL[precision]
    np.testing.assert_allclose(g.astype(np.float64), w.astype(np.float64), rtol=rtol,
                               atol=atol * max(1.0, float(np.abs(w).max())), err_msg=what)


# (style, (N, H, W, C, Cse), split): split is the path the H200 (132 SMs) takes
@pytest.mark.parametrize("precision", ["FP32", "FP16"])
@pytest.mark.parametrize("style,shape,split", [
    ("efficientnet", (2, 5, 6, 16, 4), False), ("mobilenet_v3", (2, 7, 7, 72, 24), False),
    ("gemm", (3, 4, 4, 40, 10), False), ("efficientnet", (8, 112, 112, 32, 8), False),
    ("mobilenet_v3", (1, 7, 7, 12, 3), False),
    # batch 1 with MobileNetV3Large's / EfficientNetB0's largest blocks: the split path
    ("mobilenet_v3", (1, 7, 7, 960, 240), True), ("efficientnet", (1, 7, 7, 1152, 48), True),
    ("gemm", (4, 14, 14, 480, 120), True),
    # the same block at batch 128: a block per sample
    ("mobilenet_v3", (128, 7, 7, 960, 240), False)])
def test_se_layer_matches_numpy(style, shape, split, precision):
    from tftrt.engine.backends.cupy_kernels import _device_sms
    from tftrt.engine.backends.cupy_se import SeLayer
    from tftrt.engine.backends.cuda_source_se import split_default
    n, h, w, c, cse = shape
    if split_default(n, c, cse, _device_sms()) != split:
        pytest.skip(f"this GPU's {_device_sms()} SMs pick the other path for {shape}")
    net, x = _se_net(n, h, w, c, cse, style=style)
    ref, gpu = _engines(net, x, precision)
    kinds = [l.kind for l in gpu.network.layers]
    assert kinds.count("se") == 1 and "reduce" not in kinds, kinds
    want = ref.execute([x])[0]
    for k in range(3):  # eager, capture, replay
        _compare(gpu.execute([x])[0], want, precision, f"{style} {shape} run {k}")
    (impl,) = [i for l, i in zip(gpu.network.layers, gpu._cupy_impls) if l.kind == "se"]
    assert isinstance(impl, SeLayer) and impl.fallback is None
    assert impl.split == split and len(impl.kernels[True]) == (4 if split else 3), shape


@pytest.mark.parametrize("split", [False, True])
def test_unaligned_operands_take_the_scalar_kernels(split):
    """x and y at 2-byte offsets (fp16): the scalar build of the kernels, same answer, on
    either gate path (forced)."""
    from tftrt.engine.backends.cupy_se import SeLayer
    from tftrt.engine.backends.numpy_backend import NumpyBackend
    net, x = _se_net(2, 6, 6, 32, 8, style="mobilenet_v3")
    ref, gpu = _engines(net, x, "FP16")
    (layer,) = [l for l in gpu.network.layers if l.kind == "se"]
    impl = SeLayer(gpu.network, layer, gpu.weights, {}, split=split)
    assert impl.split == split and impl.srcs[False].split == split
    # 16-byte loads of the wider of x's and y's dtypes (y may be the float32 engine output)
    assert impl.srcs[True].vec > 1 and impl.srcs[False].vec == 1
    x_dt, y_dt = (np.dtype(gpu.network.tensors[t].dtype)
                  for t in (layer.inputs[0], layer.outputs[0]))
    shape = tuple(gpu.network.tensors[layer.inputs[0]].shape)
    xin = np.random.default_rng(2).standard_normal(shape).astype(x_dt)
    (rl,) = [l for l in ref.network.layers if l.kind == "se"]
    run = NumpyBackend().prepare_layer(ref.network, rl, ref.weights)
    want = run([xin] + [ref.weights[i] if i else None for i in rl.inputs[1:]])[0]
    size = xin.size
    xbuf = cp.zeros(size + 1, x_dt)
    ybuf = cp.full(size + 1, np.nan, y_dt)
    xd, yd = xbuf[1:].reshape(xin.shape), ybuf[1:].reshape(xin.shape)
    xd[...] = cp.asarray(xin)
    ws = cp.empty(impl.workspace, cp.uint8)
    impl.run([xd] + [None] * 4, [yd], ws)
    _compare(yd, want, "FP16", f"unaligned, split={split}")


@pytest.mark.parametrize("precision", ["FP32", "FP16"])
def test_both_paths_agree_on_a_batch_one_block(precision):
    """MobileNetV3Large's largest block at batch 1 through either gate path, forced, on one
    input: each matches the numpy backend's layer, and the two gates agree to a few ulps
    (the same pooled vector and stages; only the FC sums are split differently)."""
    from tftrt.engine.backends.cupy_se import SeLayer
    from tftrt.engine.backends.numpy_backend import NumpyBackend
    net, x = _se_net(1, 7, 7, 960, 240, style="mobilenet_v3")
    ref, gpu = _engines(net, x, precision)
    (layer,) = [l for l in gpu.network.layers if l.kind == "se"]
    (rl,) = [l for l in ref.network.layers if l.kind == "se"]
    x_dt, y_dt = (np.dtype(gpu.network.tensors[t].dtype)
                  for t in (layer.inputs[0], layer.outputs[0]))
    shape = tuple(gpu.network.tensors[layer.inputs[0]].shape)
    xin = np.random.default_rng(5).standard_normal(shape).astype(x_dt)
    run = NumpyBackend().prepare_layer(ref.network, rl, ref.weights)
    want = run([xin] + [ref.weights[i] if i else None for i in rl.inputs[1:]])[0]
    gates = {}
    for split in (False, True):
        impl = SeLayer(gpu.network, layer, gpu.weights, {}, split=split)
        assert impl.split == split
        ws = cp.full(impl.workspace, 255, cp.uint8)  # NaN floats: every gate entry written
        y = cp.full(shape, np.nan, y_dt)
        impl.run([cp.asarray(xin)] + [None] * 4, [y], ws)
        _compare(y, want, precision, f"split={split}")
        s = impl.srcs[True]
        gates[split] = cp.asnumpy(ws[s.gate_offset:s.gate_offset + s.gate_bytes].view(
            cp.float32))
    assert np.isfinite(gates[True]).all()
    np.testing.assert_allclose(gates[True], gates[False], rtol=2e-3 if precision == "FP16"
                               else 1e-5, atol=1e-6)


def test_switched_off_blocks_stay_unfused(monkeypatch):
    monkeypatch.setenv("TFTRT_FUSE_SE", "0")
    net, x = _se_net(style="efficientnet")
    ref, gpu = _engines(net, x, "FP16")
    assert "se" not in [l.kind for l in gpu.network.layers]
    assert "se" in [l.kind for l in ref.network.layers]
    _compare(gpu.execute([x])[0], ref.execute([x])[0], "FP16", "unfused on CuPy")
