"""Tactic ``stem_mma`` (cupy_stem_mma: the tensor-core implicit-im2col stem kernel) on the GPU:
the zoo's stem shapes with the tactic forced, FP16, against the numpy engine, eager and
CUDA-graph replay; bias / ReLU / ReLU6 / SiLU / residual epilogues; pixel counts no block
tile divides; the timed builder's pick matches numpy; switched off (or with a float32
output) the tactic is not offered. The models end in a cast to float16, so that the conv
stores float16 (the kernel writes nothing else), as a stem does inside a network. The
unaligned-output store paths and the fragment mapping are covered by
tests/engine/test_stem_mma_codegen's host runs; the stems are timed against cuDNN, im2col
and stem_direct by ``benchmarks/bench_stems.py --ways ... stem_mma``.

On the GPU machine: ``python -m pytest tests/gpu/test_stem_mma_gpu.py -q -s``.
"""

import os

os.environ.setdefault("TFTRT_CUDNN_CANDIDATES", "2")  # fewer cuDNN plans to compile per conv

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from onnx import TensorProto, helper  # noqa: E402

from tests.tolerances import GPU_VS_NUMPY  # noqa: E402
from tftrt.engine import BuilderConfig, build_engine  # noqa: E402

cp = pytest.importorskip("cupy")
pytestmark = pytest.mark.gpu

from tests.gpu.test_cupy_backend import _conv_model  # noqa: E402
from tests.gpu.test_dw_gpu import _convs, _engine  # noqa: E402


@pytest.fixture(autouse=True)
def _cupy(monkeypatch):
    monkeypatch.setenv("TFTRT_BACKEND", "cupy")
    monkeypatch.setenv("TFTRT_STEM_MMA", "1")   # the default (cuda_source_stem_mma.enabled)


def _fp16_out(model):
    """``model`` with its output cast to float16 (an FP16 build folds the cast into the
    conv, which then stores float16)."""
    g = model.graph
    out = g.output[0].name
    g.node.append(helper.make_node("Cast", [out], [out + "_f16"], to=TensorProto.FLOAT16))
    del g.output[:]
    g.output.append(helper.make_tensor_value_info(out + "_f16", TensorProto.FLOAT16, None))
    return model


def _stem(k, stride, pad, cout, hw=40, cin=3, n=2, epi=("relu",), fp16_out=True):
    model, feeds = _conv_model((n, hw, hw, cin), (cout, cin, k, k),
                               {"pads": [pad] * 4, "strides": [stride] * 2}, epi=epi)
    return (_fp16_out(model) if fp16_out else model), feeds


def _check(model, feeds):
    from tftrt.engine.backends import cuda_source_stem_mma as SM
    from tftrt.engine.backends.cupy_stem_mma import StemMma
    shapes = {k: v.shape for k, v in feeds.items()}
    ref = build_engine(model, shapes, BuilderConfig(precision="FP16", backend="numpy",
                                                    tactic_timing=False))
    xs = [feeds[n] for n in ref.input_names]
    want = np.asarray(ref.execute(xs)[0], np.float64)
    eng = _engine(model, feeds, "FP16", "stem_mma", timing=False)
    ((layer, impl),) = _convs(eng)
    assert isinstance(impl, StemMma), (layer.tactic, type(impl).__name__, impl.fallback)
    assert eng.network.tensors[layer.outputs[0]].dtype == "float16"
    runs = [cp.asnumpy(eng.execute([cp.asarray(x) for x in xs])[0]).astype(np.float64)
            for _ in range(3)]  # eager, capture, replay
    for r in runs[1:]:
        np.testing.assert_array_equal(r, runs[0])
    rtol, atol = GPU_VS_NUMPY["FP16"]
    np.testing.assert_allclose(runs[0], want, rtol=rtol,
                               atol=atol * max(1.0, float(np.abs(want).max())))
    src = impl.src
    return eng, src.m % (SM.WARPS * src.mt * 16) != 0


@pytest.mark.parametrize("k,stride,pad,cout,cin,hw,epi", [
    (3, 1, 1, 64, 3, 40, ("relu",)),          # VGG
    (7, 2, 3, 64, 3, 41, ("relu",)),          # ResNet: Kp 160
    (3, 2, 0, 32, 3, 39, ("relu6",)),         # Inception, VALID
    (3, 2, 1, 32, 3, 40, ("silu",)),          # MobileNet / EfficientNet (SiLU after the conv)
    (3, 2, 1, 40, 3, 37, ("relu",)),          # EfficientNetB3's 40 channels
    (4, 4, 0, 96, 3, 40, ()),                 # ConvNeXt patchify, bias only
    (3, 1, 1, 24, 5, 23, ("add", "relu")),    # a residual operand, 5 channels
    (3, 1, 1, 136, 3, 17, ("relu",)),         # two chunks of channels (128 + 8)
])
@pytest.mark.parametrize("rows", ["1", "0"])
def test_stems_match_numpy(monkeypatch, k, stride, pad, cout, cin, hw, epi, rows):
    """Row tiles (TFTRT_STEM_MMA_ROWS=1, the default) and the gathers."""
    monkeypatch.setenv("TFTRT_STEM_MMA_ROWS", rows)
    model, feeds = _stem(k, stride, pad, cout, hw=hw, cin=cin, epi=epi)
    eng, _ = _check(model, feeds)
    ((_, impl),) = _convs(eng)
    assert bool(impl.src.rows) == (rows == "1")


@pytest.mark.parametrize("k,stride,pad,cout,hw", [
    (7, 2, 3, 64, 224),   # ResNet / DenseNet: 84 KB of shared memory a block
    (3, 1, 1, 64, 224),   # VGG
])
def test_full_size_row_tiles_match_numpy(monkeypatch, k, stride, pad, cout, hw):
    """The zoo's stems at full size with row tiles, their outputs against numpy; ResNet's
    blocks take more shared memory than a launch gets without asking (48 KB)."""
    monkeypatch.setenv("TFTRT_STEM_MMA_ROWS", "1")
    model, feeds = _stem(k, stride, pad, cout, hw=hw, n=2)
    eng, _ = _check(model, feeds)
    ((_, impl),) = _convs(eng)
    assert impl.src.rows and impl.shared == impl.src.smem_bytes
    assert (impl.shared > 48 * 1024) == (k == 7)


@pytest.mark.parametrize("k,stride,pad,cout,hw", [
    (7, 2, 3, 64, 64),    # ResNet, Wo 32: every m-tile staged
    (3, 1, 1, 64, 40),    # VGG, Wo 40: a row's third tile crosses it and gathers directly
    (4, 4, 0, 96, 128),   # ConvNeXt patchify, Wo 32
    (3, 1, 1, 136, 32),   # two chunks of channels over one staged patch
])
def test_staged_patches_match_numpy(monkeypatch, k, stride, pad, cout, hw):
    """TFTRT_STEM_MMA_STAGE=1: m-tiles in one output row read their input patch from shared
    memory (cuda_source_stem_mma.stage_default); the outputs match numpy as the direct
    gathers' do."""
    monkeypatch.setenv("TFTRT_STEM_MMA_STAGE", "1")
    model, feeds = _stem(k, stride, pad, cout, hw=hw)
    eng, _ = _check(model, feeds)
    ((_, impl),) = _convs(eng)
    assert impl.src.stage and "if (staged)" in impl.src.source


def test_a_pixel_count_no_block_tile_divides():
    """One image of 7 x 7 outputs (49 pixels, under one block tile of 4 warps x 16), and 3
    of 45 x 45 (6,075 pixels: a partial last tile)."""
    model, feeds = _stem(3, 1, 1, 64, hw=7, n=1)
    _, partial = _check(model, feeds)
    assert partial
    model, feeds = _stem(3, 1, 1, 64, hw=45, n=3)
    _, partial = _check(model, feeds)
    assert partial


def test_batch_sizes_share_one_compiled_kernel():
    """The batch is the kernel's argument: engines of one stem at batches 1, 2 and 5 (a
    profile's ladder) use one RawKernel, compiled once, and each matches numpy."""
    kernels = set()
    for n in (2, 1, 5):
        model, feeds = _stem(7, 2, 3, 64, hw=41, n=n)
        eng, _ = _check(model, feeds)
        ((_, impl),) = _convs(eng)
        assert impl.src.n == n
        kernels.add(id(impl.kernel))
    assert len(kernels) == 1


def test_nan_poison_and_check_by_bits():
    """cupy_dnn.poison_nan / has_nan (the GEMM tuner's check for candidates that leave their
    output unwritten): every element filled with NaN, a NaN found anywhere (first, last,
    one in a million), inf and finite values are no NaN, in float16 and float32."""
    from tftrt.engine.backends import cupy_dnn as D
    for dtype in (np.dtype(np.float16), np.dtype(np.float32)):
        x = cp.zeros(1_000_003, dtype)
        assert D.poison_nan(x)
        host = cp.asnumpy(x).astype(np.float32)
        assert np.isnan(host).all(), dtype
        x[...] = 0
        assert not D.has_nan(x)
        x[1] = np.inf
        x[2] = -np.inf
        assert not D.has_nan(x), dtype
        for i in (0, 777_777, x.size - 1):
            x[i] = np.nan
            assert D.has_nan(x), (dtype, i)
            x[i] = 0
    assert not D.has_nan(cp.zeros(5, np.int32)) and not D.poison_nan(cp.zeros(5, np.int32))


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
    print("\n[stem_mma] timed build picked", [l.tactic for l, _ in _convs(eng)],
          eng.build_info.get("tactic_timings"))


def _offered(model, feeds):
    from tftrt.engine import tactics
    from tftrt.engine.backends import cupy_backend  # registers the tactics
    ref = build_engine(model, {k: v.shape for k, v in feeds.items()},
                       BuilderConfig(precision="FP16", backend="numpy", tactic_timing=False))
    (conv,) = [l for l in ref.network.layers if l.kind == "conv"]
    offered = [t.name for t in tactics._REGISTRY[("cupy", "conv")]
               if t.applies(ref.network, conv)]
    return offered, cupy_backend._stem_mma(ref.network, conv)


def test_switched_off_the_tactic_is_not_offered(monkeypatch):
    model, feeds = _stem(3, 1, 1, 64)
    offered, applies = _offered(model, feeds)
    assert "stem_mma" in offered and applies
    monkeypatch.setenv("TFTRT_STEM_MMA", "0")
    offered, applies = _offered(model, feeds)
    assert "stem_mma" not in offered and "stem_direct" in offered and not applies


def test_a_float32_output_is_not_offered():
    model, feeds = _stem(3, 1, 1, 64, fp16_out=False)   # the conv stores the float32 output
    offered, applies = _offered(model, feeds)
    assert "stem_mma" not in offered and "stem_direct" in offered and not applies


@pytest.mark.parametrize("k,stride,pad,cout,hw", [
    (7, 2, 3, 64, 41),   # ResNet
    (3, 1, 1, 64, 40),   # VGG
    (3, 2, 1, 32, 40),   # MobileNet
])
def test_the_stem_reads_the_float32_image_itself(monkeypatch, k, stride, pad, cout, hw):
    """precision.absorb_input_casts: the FP16 stem on stem_mma reads the float32 image,
    rounding it to float16 on load, instead of a cast layer's float16 copy: no cast layer,
    the kernel's x is float32, and the answers are those of the engine with the cast
    (TFTRT_FLOAT32_X=0) bit for bit, float16 rounding ties, values past its range, NaN and
    -inf pixels included."""
    from tftrt.engine.backends.cupy_stem_mma import StemMma
    model, feeds = _stem(k, stride, pad, cout, hw=hw)
    x = feeds["x"].copy()
    x.flat[:4] = [1 + 2 ** -11, 1 + 3 * 2 ** -11, 70000.0, -1e-8]
    x[0, 3, 3, :] = np.nan
    x[1, 5, 5, :] = -np.inf
    monkeypatch.delenv("TFTRT_FLOAT32_X", raising=False)
    eng = _engine(model, feeds, "FP16", "stem_mma", timing=False)
    ((layer, impl),) = _convs(eng)
    assert isinstance(impl, StemMma) and impl.src.in_dtype == "float32"
    assert layer.attrs["float32_x"] and eng.network.tensors[layer.inputs[0]].dtype == "float32"
    monkeypatch.setenv("TFTRT_FLOAT32_X", "0")
    cast = _engine(model, feeds, "FP16", "stem_mma", timing=False)
    ((_, impl16),) = _convs(cast)
    assert impl16.src.in_dtype == "float16"
    assert len(cast.network.layers) == len(eng.network.layers) + 1  # the cast
    got = cp.asnumpy(eng.execute([cp.asarray(x)])[0])
    want = cp.asnumpy(cast.execute([cp.asarray(x)])[0])
    assert np.isnan(want).any()
    np.testing.assert_array_equal(got.view(np.uint16), want.view(np.uint16))


def test_a_stem_reading_float32_or_storing_codes_has_only_stem_mma_as_candidate():
    """A conv marked ``float32_x`` (reading the image, precision.absorb_input_casts) or
    storing int8 codes as a float layer (``output_scale``: quantization.
    absorb_pool_requantization) runs on stem_mma only (make_impl refuses the rest), so a
    profile's tuned rung, which times its template's layers again, is offered nothing
    else."""
    from tftrt.engine import tactics
    from tftrt.engine.backends import cupy_backend  # (registers the tactics)
    model, feeds = _stem(7, 2, 3, 64)
    ref = build_engine(model, {k: v.shape for k, v in feeds.items()},
                       BuilderConfig(precision="FP16", backend="numpy", tactic_timing=False))
    (conv,) = [l for l in ref.network.layers if l.kind == "conv"]

    def offered():
        return [t.name for t in tactics._REGISTRY[("cupy", "conv")]
                if t.applies(ref.network, conv)]
    assert {"cudnn", "stem_mma"} <= set(offered())
    y = ref.network.tensors[conv.outputs[0]]
    # as absorb_pool_requantization marks a stem: the scale, the NaN code, an int8 output
    for attrs, y_dtype in (({"float32_x": True}, y.dtype),
                           ({"output_scale": 0.05, "output_nan_code": -128}, "int8")):
        conv.attrs.update(attrs)
        y.dtype, float_y = y_dtype, y.dtype
        assert offered() == ["stem_mma"] and not cupy_backend._plain_io(conv), attrs
        y.dtype = float_y
        for k in attrs:
            del conv.attrs[k]
