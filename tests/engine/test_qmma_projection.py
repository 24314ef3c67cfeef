"""q_mma's fused projection shortcut (backends/cuda_source_qmma.Projection), checked without a
GPU: the kernel that computes a bottleneck's projection inside its residual conv -- the
projection's GEMM over x2 (its rows, or its taps at y's pixels: a strided 1x1 conv, or a
padded 3x3 one), its epilogue and requantization kept in registers as the residual codes --
built for the host (test_qmma_codegen's thread shims and emulated MMA) gives, bit for bit, what
the two layers give one after the other: the projection's int8 codes, then the layer with
them as its int8 residual (numpy's arithmetic, test_quant_codegen's epilogue reference). It
compiles for sm_90 without spills for ResNet50's stage-1 and stage-2 blocks, and the source
refuses what it does not fuse."""

import shutil
import subprocess

import numpy as np
import pytest

from tests.engine.test_cuda_codegen import _host_compiler
from tests.engine.test_dw_codegen import _build, _run_host
from tests.engine.test_qmma_codegen import _host_text, _offset_view
from tests.engine.test_quant_codegen import _epilogue_reference
from tftrt.engine import quantization as Q
from tftrt.engine.backends import cuda_source_qmma as QM

IN_SCALE, OUT_SCALE, RES_SCALE, PROJ_SCALE = 0.05, 0.04, 0.03, 0.03
EPI = [{"op": "scale", "input": 2}, {"op": "bias", "input": 3},
       {"op": "add", "input": 4, "scale": RES_SCALE}]
MODES = {2: ("vec", "float32"), 3: ("vec", "float32"), 4: ("full", "int8")}
P_EPI = [{"op": "scale", "input": 0}, {"op": "bias", "input": 1}]
P_MODES = {0: ("vec", "float32"), 1: ("vec", "float32")}
RELU = {"op": "act", "fn": "relu"}

# (images, y's H, W, N, K, the projection: K2 or (H2, W2, C2, r, stride, pad), ReLU at the
#  end of the layer / of the projection, x2's offset in elements, max blocks, nc)
CASES = [
    (1, 37, 1, 256, 64, 64, True, False, 0, None, None),      # ResNet50 stage 1 (rows)
    (1, 1, 1, 8, 32, 32, False, False, 0, None, None),        # one row, N 8
    (1, 45, 1, 40, 128, 96, True, True, 0, 2, None),          # K2 64 + 32, part chunk, loops
    (1, 19, 1, 24, 64, 160, True, False, 1, None, None),      # x2 unaligned: element loads
    (2, 4, 3, 48, 128, (8, 6, 64, 1, 2, 0), True, False, 0, None, None),   # stride-2 1x1
    (1, 3, 3, 48, 64, (6, 6, 256, 1, 2, 0), True, False, 0, None, None),   # stage 2's K2 256
    (1, 5, 5, 16, 32, (5, 5, 64, 3, 1, 1), False, True, 0, 3, 16),         # padded 3x3
    (1, 23, 1, 136, 64, 64, True, False, 0, None, None),      # chunks of 128 + 8
]


def _geometry(case):
    imgs, h, w, n, k, p, *_ = case
    if isinstance(p, int):
        return None
    h2, w2, c2, r, st, pad = p
    return QM.ConvGeometry(h2, w2, c2, r, r, st, st, pad, pad, h, w)


def _source(case) -> QM.QMmaSource:
    imgs, h, w, n, k, p, relu, prelu, _, _, nc = case
    g = _geometry(case)
    k2 = p if g is None else g.r * g.s * g.c
    proj = QM.Projection(k2, P_EPI + ([RELU] if prelu else []), P_MODES, PROJ_SCALE, 4, g)
    return QM.QMmaSource(n, k, "int8", "int8", "int8", EPI + ([RELU] if relu else []), MODES,
                         float(Q.inv_scale(IN_SCALE)), OUT_SCALE, projection=proj, nc=nc)


def _im2col(x2, g: QM.ConvGeometry) -> np.ndarray:
    """x2 [images, H2, W2, C2] -> rows of y x (taps, channels), zeros in the padding."""
    xp = np.pad(x2, ((0, 0), (g.pad_h, g.pad_h + g.r), (g.pad_w, g.pad_w + g.s), (0, 0)))
    cols = [xp[:, dh:dh + g.stride_h * g.ho:g.stride_h, dw:dw + g.stride_w * g.wo:g.stride_w]
            for dh in range(g.r) for dw in range(g.s)]
    return np.concatenate(cols, axis=-1).reshape(-1, g.r * g.s * g.c)


def _inputs(case, seed):
    imgs, h, w, n, k, p, relu, prelu, *_ = case
    rng = np.random.default_rng(seed)
    m = imgs * h * w
    g = _geometry(case)
    x = rng.integers(-127, 128, (m, k)).astype(np.int8)
    wt = rng.integers(-127, 128, (n, k)).astype(np.int8)
    if g is None:
        x2 = rng.integers(-127, 128, (m, p)).astype(np.int8)
        cols = x2
    else:
        x2 = rng.integers(-127, 128, (imgs, g.h, g.w, g.c)).astype(np.int8)
        cols = _im2col(x2, g)
    w2 = rng.integers(-127, 128, (n, cols.shape[1])).astype(np.int8)
    # scales that keep most codes off saturation (a sum of K products of codes has a spread
    # of ~5376 sqrt(K)): outputs of about +-1.5 from each GEMM
    spread = lambda kk: 1.5 / (5376 * np.sqrt(kk))  # noqa: E731
    ops = {2: (rng.uniform(0.5, 1.5, n) * spread(k)).astype(np.float32),
           3: (rng.standard_normal(n) * 0.3).astype(np.float32)}
    pops = {0: (rng.uniform(0.5, 1.5, n) * spread(cols.shape[1])).astype(np.float32),
            1: (rng.standard_normal(n) * 0.3).astype(np.float32)}
    acc2 = (cols.astype(np.int64) @ w2.astype(np.int64).T).astype(np.int32)
    codes = _epilogue_reference(acc2, n, n, P_EPI + ([RELU] if prelu else []), pops, "int8",
                                PROJ_SCALE)
    acc = (x.astype(np.int64) @ wt.astype(np.int64).T).astype(np.int32)
    want = _epilogue_reference(acc, n, n, EPI + ([RELU] if relu else []), {**ops, 4: codes},
                               "int8", OUT_SCALE)
    return x, wt, ops, x2, w2, pops, want, codes


@pytest.fixture(scope="module")
def host_kernels(tmp_path_factory):
    if _host_compiler() is None:
        pytest.skip("no host C++ compiler")
    srcs = [_source(case) for case in CASES]
    return srcs, _build(_host_text(srcs), tmp_path_factory.mktemp("qmma_proj"), "qmma_proj")


def _run(so, k, src, case, seed):
    x, wt, ops, x2, w2, pops, want, codes = _inputs(case, seed)
    x2 = _offset_view(x2, case[8], 0)
    y = np.full(want.shape, -128, np.int8)
    m = want.shape[0]
    args = [x, wt] + [ops[i] for i in src.operands] + [x2, w2] + \
        [pops[i] for i in src.proj_operands] + [y, m]
    _run_host(so, k, args, src.grid(m, case[9]), src.threads)
    return y, want, codes


@pytest.mark.parametrize("k", range(len(CASES)))
def test_the_fused_projection_gives_the_two_layers_outputs(host_kernels, k):
    srcs, so = host_kernels
    y, want, codes = _run(so, k, srcs[k], CASES[k], seed=k)
    inner = (codes != 0) & (np.abs(codes) < 127)
    assert inner.mean() > 0.3 and (np.abs(want) < 127).mean() > 0.8, "a saturated case"
    np.testing.assert_array_equal(y, want, err_msg=f"case {k} {CASES[k]}")


def test_the_residual_matters_in_the_check(host_kernels):
    """The check can fail: the same layer with its residual codes zeroed differs from the
    fused kernel's outputs (the projection's values reach the outputs)."""
    srcs, so = host_kernels
    y, want, codes = _run(so, 0, srcs[0], CASES[0], seed=0)
    x, wt, ops, *_ = _inputs(CASES[0], 0)
    acc = (x.astype(np.int64) @ wt.astype(np.int64).T).astype(np.int32)
    without = _epilogue_reference(acc, 256, 256, EPI + [RELU], {**ops, 4: codes * 0}, "int8",
                                  OUT_SCALE)
    assert (y != without).mean() > 0.3


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="no nvcc")
@pytest.mark.parametrize("name,case", [
    ("stage1", (128, 56, 56, 256, 64, 64, True, False, 0, None, None)),
    ("stage2", (128, 28, 28, 512, 128, (56, 56, 256, 1, 2, 0), True, False, 0, None, None)),
])
def test_resnet50s_fused_blocks_compile_for_sm90_without_spills(tmp_path, name, case):
    src = _source(case)
    cu = tmp_path / f"{name}.cu"
    cu.write_text(src.source)
    r = subprocess.run(["nvcc", "-arch=sm_90", "-cubin", "-Xptxas", "-v", "-o",
                        str(tmp_path / f"{name}.cubin"), str(cu)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "0 bytes spill stores" in r.stderr, r.stderr[-2000:]


def test_the_source_refuses_what_it_does_not_fuse():
    proj = QM.Projection(64, P_EPI, P_MODES, PROJ_SCALE, 4)
    inv = float(Q.inv_scale(IN_SCALE))
    args = (256, 64, "int8", "int8", "int8", EPI, MODES, inv, OUT_SCALE)
    with pytest.raises(ValueError, match="int8 x"):
        QM.QMmaSource(256, 64, "int8", "float16", "int8", EPI, MODES, inv, OUT_SCALE,
                      projection=proj)
    with pytest.raises(ValueError, match="operand 3 is not one"):
        QM.QMmaSource(*args, projection=proj._replace(residual=3))
    with pytest.raises(ValueError, match="per-channel operands only"):
        QM.QMmaSource(*args, projection=proj._replace(operand_modes={0: ("full", "int8"),
                                                                     1: P_MODES[1]}))
    with pytest.raises(ValueError, match="output scale"):
        QM.QMmaSource(*args, projection=proj._replace(out_scale=None))
    with pytest.raises(ValueError, match="multiple of 32"):
        QM.QMmaSource(*args, projection=proj._replace(k=48))
    with pytest.raises(ValueError, match="multiple of 64"):
        QM.QMmaSource(*args, projection=proj._replace(
            k=96, conv=QM.ConvGeometry(8, 8, 96, 1, 1, 2, 2, 0, 0, 4, 4)))
    with pytest.raises(ValueError, match="paired epilogue"):
        QM.QMmaSource(*args, projection=proj, paired=False)
