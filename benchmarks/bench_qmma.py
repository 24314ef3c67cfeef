"""The tensor-core quantized GEMM kernel (tactic ``q_mma``, backends/cuda_source_qmma) alone on
ResNet50's 1x1 convolutions, and its 3x3 ones as implicit GEMMs, at batch 128 (issue 15):
microseconds per call (median of CUDA graph replays, cupy_dnn.gpu_time), the bytes it must
move and the rate that makes, for each setting (the kernel's knobs, below), and a check of
every output against the same arithmetic in CuPy (float32 GEMM of the int8 values -- of
their im2col for a 3x3 conv: exact below 2**24; the float epilogue in numpy's order).

    python benchmarks/bench_qmma.py [--batch 128] [--configs "1,0,0 1,0,0,1,1,0,1,1,0,0,0"]
                                    [--only NAME[,NAME...]] [--ablate loads,mma,epi]

(a config: mt,warps,nc[,stage[,fast[,min_threads[,pipeline[,paired[,vecs[,i2f[,res[,
interleave]]]]]]]]]]; warps / nc 0 the kernel's own choice; pipeline 1 loads the next m-tile
during the epilogue (int8 x, K <= 256); stage 0 reads the residual from global memory element
by element instead of staging it in shared memory, s35's way; fast 0 converts on the
conversion unit, s36b's way; min_threads: threads an SM must hold, capping the registers (0:
the kernel's own); paired 0 runs the epilogue element by element, s37's way; vecs 1 stages
the scale and bias in shared memory once a block (TFTRT_QUANT_MMA_STAGE_VECS, s45); i2f 1
converts the accumulator with I2F (TFTRT_QUANT_MMA_I2F, s46); res: an int8 residual's codes to
float, 0 byte_float, 1 half2 (TFTRT_QUANT_MMA_RES_CVT, s46); interleave 1: the MMAs k first,
n-tiles interleaved, 0 n-tile first, 2 the kernel's rule (TFTRT_QUANT_MMA_INTERLEAVE=auto,
s47: on for the pipelined kernels of K <= 64); the kernel's defaults, which fill a config's
missing fields, 1,0,0,1,1,0,1,1,1,1,1,2 since s47 -- before s46, a missing vecs / i2f / res
meant 0, so s45's and earlier logs' "1,0,0" is today's "1,0,0,1,1,0,1,1,0,0,0". s47's logs
also have fields pair, prefetch, kb and stage_a between res and interleave, for schedules
timed no faster and removed: 8007bb6, e5b5e5b, b2ae58c have them).

Needs CuPy (no cuDNN / cuBLASLt). The whole-model effect is bench_engine's INT8 profile.
"""

from __future__ import annotations

import argparse
import re
import sys

import cupy as cp
import numpy as np

from tftrt.engine import quantization as Q
from tftrt.engine.backends import cuda_source_qmma as QM
from tftrt.engine.backends import cuda_source_quant as S
from tftrt.engine.backends.cupy_dnn import gpu_time
from tftrt.engine.backends.cupy_kernels import _raw_kernel, device_props

# name, H(=W), K (cin), N (cout), x dtype, int8 residual, ReLU: ResNet50's 1x1 convs
CONVS = [
    ("s1_conv3_64to256_res", 56, 64, 256, "int8", True, True),
    ("s1_proj_64to256", 56, 64, 256, "float16", False, False),
    ("s1_proj_64to256_int8x", 56, 64, 256, "int8", False, False),  # its x from an int8 pool
    ("s1_conv1_64to64_int8x", 56, 64, 64, "int8", False, True),
    ("s1_conv1_256to64", 56, 256, 64, "int8", False, True),
    ("s1_conv1_64to64", 56, 64, 64, "float16", False, True),
    ("s2_conv3_128to512_res", 28, 128, 512, "int8", True, True),
    ("s2_conv1_256to128", 28, 256, 128, "int8", False, True),
    # stage 3's 1x1 256 -> 1024 with its residual: cuDNN's int8 graph 53 us, cuBLASLt's FP16
    # GEMM 46 us (H100, s43)
    ("s3_conv3_256to1024_res", 14, 256, 1024, "int8", True, True),
    ("s2_conv1_512to128", 28, 512, 128, "int8", False, True),
    ("s3_conv1_1024to256", 14, 1024, 256, "int8", False, True),
    ("s4_conv1_2048to512", 7, 2048, 512, "int8", False, True),
    # the encoder's GEMMs (zoo.encoder, 128 tokens an example: M = batch x 128): attention
    # projections and the FFN's first GEMM (ReLU standing in for its GELU)
    ("enc_att_768to768", "seq128", 768, 768, "float16", False, False),
    ("enc_att_768to768_int8x", "seq128", 768, 768, "int8", False, False),
    ("enc_ffn_in_768to3072", "seq128", 768, 3072, "float16", False, True),
    ("enc_ffn_in_768to3072_int8x", "seq128", 768, 3072, "int8", False, True),
]


# 3x3 / stride 1 / SAME convs as implicit GEMMs (ConvGeometry): name, H(=W), C, N, x dtype;
# ReLU, no residual (ResNet50's stage-1 and stage-2 3x3 convs, their x from a requantizing
# 1x1 conv)
CONV3 = [
    ("s1_3x3_64to64", 56, 64, 64, "int8"),
    ("s2_3x3_128to128", 28, 128, 128, "int8"),
    ("s1_3x3_64to64_f16x", 56, 64, 64, "float16"),
]


# ResNet50's residual convs with their block's projection fused (QM.Projection, s50): name,
# y's H(=W), K, N, and the projection's input H(=W), channels and stride (1: a GEMM over the
# block input's rows). The unfused pair is the row of the same stage's residual conv above
# plus its projection (stage 1: s1_proj_64to256_int8x; stages 2 and 3: the strided 1x1 convs
# of FUSED_ALONE, which the engine runs on cuDNN's int8 graphs: 58 and 35 us, H100, s49)
FUSED = [
    ("s1_conv3_res+proj", 56, 64, 256, 56, 64, 1),
    ("s2_conv3_res+proj", 28, 128, 512, 56, 256, 2),
    ("s3_conv3_res+proj", 14, 256, 1024, 28, 512, 2),
]
# the strided projections alone on the kernel (conv geometry), for the sum above
FUSED_ALONE = [
    ("s2_proj_256to512_s2", 28, 256, 512, 56),
    ("s3_proj_512to1024_s2", 14, 512, 1024, 28),
]


def rows_of(hw, batch: int) -> int:
    """M: batch x H x W for a conv, batch x tokens for an encoder GEMM ("seqT")."""
    return batch * int(hw[3:]) if isinstance(hw, str) else batch * hw * hw
IN_SCALE, OUT_SCALE, RES_SCALE = 0.05, 0.04, 0.03


# --ablate: the kernel with one part left out, to time what the part costs (the outputs are
# then wrong and not checked): "loads" -- x's A fragments not loaded (the span loaders return
# the address bits; the address arithmetic and bounds checks stay); "mma" -- each MMA an
# integer addition of its operands into the accumulators (the loads feeding it stay); "epi" --
# the epilogue and its staging skipped unless an accumulator holds 2**31 - 1 (never: the
# accumulators stay live), the copy out of the staging buffer kept
ABLATE = ("loads", "mma", "epi")


def ablated(source: str, parts) -> str:
    for part in parts:
        if part == "loads":
            new = re.sub(r"(__device__ __forceinline__ void span(16|8)\([^)]*\) \{)",
                         r"\1\n  for (int i = 0; i < \2 / 4; ++i) "
                         r"o[i] = (unsigned)(unsigned long long)p + i;\n  return;", source)
        elif part == "mma":
            new = re.sub(r"(void mma_16832\([^)]*\) \{)",
                         r"\1\n  c[0] += (int)(a0 ^ b0); c[1] += (int)(a1 ^ b1); "
                         r"c[2] += (int)a2; c[3] += (int)a3; return;", source)
        else:
            new = source.replace("if (8 * j < cw) {",
                                 "if (8 * j < cw && acc[j][0] == 0x7fffffff) {")
        if new == source:
            raise ValueError(f"--ablate {part}: its marker is not in the source")
        source = new
    return source


def run(name, hw, k, n, xdt, res, relu, batch, configs, rng, taps=1, ablate=()):
    """``taps`` 9: a 3x3 / SAME conv of ``k`` input channels (K = 9 k) as an implicit GEMM."""
    m = rows_of(hw, batch)
    c, k = k, k * taps
    geometry = None if taps == 1 else QM.ConvGeometry(hw, hw, c, 3, 3, 1, 1, 1, 1, hw, hw)
    epi = [{"op": "scale", "input": 2}, {"op": "bias", "input": 3}]
    modes = {2: ("vec", "float32"), 3: ("vec", "float32")}
    if res:
        epi.append({"op": "add", "input": 4, "scale": RES_SCALE})
        modes[4] = ("full", "int8")
    if relu:
        epi.append({"op": "act", "fn": "relu"})
    inv_x = float(Q.inv_scale(IN_SCALE))
    if xdt == "int8":
        x = _codes(rng, (m, c))
        xq = x.astype(cp.float32)
    else:
        x = cp.asarray((rng.standard_normal((m, c)) * 2).astype(xdt))
        xq = cp.clip(cp.rint(x.astype(cp.float32) * cp.float32(inv_x)), -127, 127)
    if geometry is not None:  # im2col of the quantized values: rows of y x (taps, channels)
        xp = cp.pad(xq.reshape(batch, hw, hw, c), ((0, 0), (1, 1), (1, 1), (0, 0)))
        xq = cp.concatenate([xp[:, dh:dh + hw, dw:dw + hw] for dh in range(3)
                             for dw in range(3)], axis=-1).reshape(m, k)
    w = _codes(rng, (n, k))
    ops = {2: cp.asarray(rng.uniform(1e-3, 4e-3, n).astype(np.float32)),
           3: cp.asarray(rng.standard_normal(n).astype(np.float32))}
    if res:
        ops[4] = _codes(rng, (m, n))
    # the reference: exact integer sums (float32 below 2**24), numpy's float32 epilogue order
    acc = (xq @ w.astype(cp.float32).T)
    v = acc * ops[2] + ops[3]
    if res:
        v = v + ops[4].astype(cp.float32) * cp.float32(RES_SCALE)
    if relu:
        v = cp.maximum(v, 0)
    want = _requant(v, OUT_SCALE)
    nbytes = m * c * x.itemsize + m * n * (2 if res else 1) + n * k
    rows = []
    for config in configs:
        mt, warps, nc, _, fast, min_threads, _, paired = config[:8]
        try:
            src = _source(config, n, k, xdt, epi, modes, inv_x, geometry)
        except ValueError as e:
            print(f"{name:24s} mt {mt} warps {warps} nc {nc}: {e}")
            continue
        y = cp.full((m, n), -128, cp.int8)
        args = (x, w) + tuple(ops[i] for i in src.operands) + (y, np.int64(m))
        detail = (f"mt {mt:2d} warps {warps} nc {src.nc:3d} "
                  f"{'staged' if src.full else 'direct' if res else '-':6s} "
                  f"{'fast' if fast else 'cvt'} min {min_threads:3d} "
                  f"{'pipe' if src.pipeline else 'step'} {'pair' if paired else 'elem'} "
                  f"{'vecs' if src.vecs else 'ldg'} {'i2f' if src.i2f else 'magic'} "
                  f"res-{src.res_cvt} {'k-first' if src.interleave else 'n-first'}")
        rows.append((mt,) + _time(name, src, args, m, want, nbytes, ablate, detail))
    return rows


def _source(config, n, k, xdt, epi, modes, inv_x, geometry=None, projection=None):
    mt, warps, nc, stage, fast, min_threads, pipe, paired, vecs, i2f, rcv, il = config
    return QM.QMmaSource(n, k, S.INT8, xdt, "int8", epi, modes, inv_x, OUT_SCALE, mt=mt,
                         warps=warps or None, nc=nc or None, stage_full=bool(stage),
                         fast_int=bool(fast), min_threads=min_threads,
                         pipeline=bool(pipe), paired=bool(paired), conv=geometry,
                         stage_vecs=bool(vecs), i2f=bool(i2f),
                         res_cvt=("byte", "half2")[rcv],
                         interleave=None if il == 2 else bool(il), projection=projection)


def _time(name, src, args, m, want, nbytes, ablate, detail=None):
    """Compiles and launches ``src`` over ``m`` rows (the grid capped at the blocks the GPU
    holds), checks y (the last array of ``args``) against ``want``, times it, prints a line
    (``detail``: the settings it names; default the warps and chunk width); a row (nc,
    blocks, us, GB/s, outputs off, worst step)."""
    kern = _raw_kernel(ablated(src.source, ablate), QM.KERNEL)
    props = device_props()
    per_sm = QM.resident_blocks(kern.num_regs, kern.shared_size_bytes, src.threads, props)
    blocks = src.grid(m, props["multiProcessorCount"] * per_sm)
    launch = lambda: kern((blocks,), (src.threads,), args)  # noqa: E731
    launch()
    cp.cuda.get_current_stream().synchronize()
    d = cp.abs(args[-2].astype(cp.int32) - want.astype(cp.int32))
    off, worst = int(cp.count_nonzero(d)), int(d.max())
    t = gpu_time(launch, cp.cuda.get_current_stream(), what=name) * 1e6
    detail = detail or f"warps {src.warps} nc {src.nc:3d}"
    print(f"{name:24s} {detail} regs {kern.num_regs:3d} {per_sm} a SM, "
          f"blocks {blocks:5d}: {t:8.1f} us {nbytes / t / 1e3:7.0f} GB/s "
          f"({nbytes / 1e6:.1f} MB); {off} of {want.size} outputs differ (max {worst} steps)",
          flush=True)
    return src.nc, blocks, t, nbytes / t / 1e3, off, worst


def _codes(rng, shape):
    return cp.asarray(rng.integers(-127, 128, shape, dtype=np.int8))


def _requant(v, scale):
    return cp.clip(cp.rint(v * cp.float32(Q.inv_scale(scale))), -127, 127).astype(cp.int8)


def _strided_rows(x2, stride):
    """The rows of a strided 1x1 conv's input at its output pixels: [pixels, C]."""
    return x2[:, ::stride, ::stride].reshape(-1, x2.shape[-1])


def run_fused(name, hw, k, n, hw2, c2, stride, batch, configs, rng, ablate=()):
    """The residual conv with its projection fused: against the two layers' arithmetic in
    CuPy (the projection's codes, then the layer with them as its residual)."""
    m = rows_of(hw, batch)
    x, w = _codes(rng, (m, k)), _codes(rng, (n, k))
    x2 = _codes(rng, (batch, hw2, hw2, c2) if stride > 1 else (m, c2))
    w2 = _codes(rng, (n, c2))
    ops = {2: cp.asarray(rng.uniform(1e-3, 4e-3, n).astype(np.float32)),
           3: cp.asarray(rng.standard_normal(n).astype(np.float32))}
    pops = {0: cp.asarray(rng.uniform(1e-3, 4e-3, n).astype(np.float32)),
            1: cp.asarray(rng.standard_normal(n).astype(np.float32))}
    rows2 = x2 if stride == 1 else _strided_rows(x2, stride)
    codes = _requant((rows2.astype(cp.float32) @ w2.astype(cp.float32).T) * pops[0] + pops[1],
                     RES_SCALE)
    v = (x.astype(cp.float32) @ w.astype(cp.float32).T) * ops[2] + ops[3] + \
        codes.astype(cp.float32) * cp.float32(RES_SCALE)
    want = _requant(cp.maximum(v, 0), OUT_SCALE)
    epi = [{"op": "scale", "input": 2}, {"op": "bias", "input": 3},
           {"op": "add", "input": 4, "scale": RES_SCALE}, {"op": "act", "fn": "relu"}]
    modes = {2: ("vec", "float32"), 3: ("vec", "float32"), 4: ("full", "int8")}
    geometry = None if stride == 1 else \
        QM.ConvGeometry(hw2, hw2, c2, 1, 1, stride, stride, 0, 0, hw, hw)
    proj = QM.Projection(c2, [{"op": "scale", "input": 0}, {"op": "bias", "input": 1}],
                         {0: ("vec", "float32"), 1: ("vec", "float32")}, RES_SCALE, 4, geometry)
    nbytes = m * k + rows2.size + m * n + n * (k + c2)
    rows = []
    for config in configs:
        try:
            src = _source(config, n, k, "int8", epi, modes, float(Q.inv_scale(IN_SCALE)),
                          projection=proj)
        except ValueError as e:
            print(f"{name:24s} {config}: {e}")
            continue
        y = cp.full((m, n), -128, cp.int8)
        args = (x, w) + tuple(ops[i] for i in src.operands) + (x2, w2) + \
            tuple(pops[i] for i in src.proj_operands) + (y, np.int64(m))
        rows.append(_time(name, src, args, m, want, nbytes, ablate))
    return rows


def run_strided(name, hw, c, n, hw2, batch, configs, rng, ablate=()):
    """A strided 1x1 projection alone (int8 x, int8 out, no ReLU) as an implicit GEMM."""
    m = rows_of(hw, batch)
    x2, w2 = _codes(rng, (batch, hw2, hw2, c)), _codes(rng, (n, c))
    ops = {2: cp.asarray(rng.uniform(1e-3, 4e-3, n).astype(np.float32)),
           3: cp.asarray(rng.standard_normal(n).astype(np.float32))}
    rows2 = _strided_rows(x2, hw2 // hw)
    want = _requant((rows2.astype(cp.float32) @ w2.astype(cp.float32).T) * ops[2] + ops[3],
                    OUT_SCALE)
    epi = [{"op": "scale", "input": 2}, {"op": "bias", "input": 3}]
    modes = {2: ("vec", "float32"), 3: ("vec", "float32")}
    g = QM.ConvGeometry(hw2, hw2, c, 1, 1, hw2 // hw, hw2 // hw, 0, 0, hw, hw)
    out = []
    for config in configs:
        try:
            src = _source(config, n, c, "int8", epi, modes, float(Q.inv_scale(IN_SCALE)), g)
        except ValueError as e:
            print(f"{name:24s} {config}: {e}")
            continue
        y = cp.full((m, n), -128, cp.int8)
        args = (x2, w2) + tuple(ops[i] for i in src.operands) + (y, np.int64(m))
        out.append(_time(name, src, args, m, want, rows2.size + m * n + n * c, ablate))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--configs", default="1,0,0 1,0,0,1,1,0,1,1,0,0,0")
    p.add_argument("--only", default="")
    p.add_argument("--ablate", default="", help=f"comma list of {', '.join(ABLATE)}")
    a = p.parse_args(argv)
    ablate = [v for v in a.ablate.split(",") if v]
    if any(v not in ABLATE for v in ablate):
        p.error(f"--ablate {a.ablate!r}: a comma list of {', '.join(ABLATE)}")
    rng = np.random.default_rng(0)
    # mt, warps, nc, stage, fast, min_threads, pipeline, paired, vecs, i2f, res, interleave
    defaults = (1, 0, 0, 1, 1, 0, 1, 1, 1, 1, 1, 2)
    configs = []
    for c in a.configs.split():
        given = tuple(int(v) for v in c.split(","))
        config = given + defaults[len(given):]
        if len(config) != len(defaults) or config[10] not in (0, 1) or \
                config[11] not in (0, 1, 2):
            p.error(f"config {c!r}: at most {len(defaults)} fields, res 0 (byte_float) or 1 "
                    f"(half2), interleave 0, 1 or 2 (auto)")
        configs.append(config)
    bad = 0
    cases = [(conv, 1) for conv in CONVS] + \
        [((name, hw, c, n, xdt, False, True), 9) for name, hw, c, n, xdt in CONV3]
    for conv, taps in cases:
        if a.only and not any(o and o in conv[0] for o in a.only.split(",")):
            continue
        for mt, nc, blocks, t, gbs, off, worst in run(*conv, a.batch, configs, rng, taps=taps,
                                                      ablate=ablate):
            bad += not ablate and (worst > 1 or off > 0.005 * rows_of(conv[1], a.batch) *
                                   conv[3])
    extra = [(run_fused, case) for case in FUSED] + [(run_strided, case) for case in FUSED_ALONE]
    for fn, case in extra:
        if a.only and not any(o and o in case[0] for o in a.only.split(",")):
            continue
        for _, _, _, _, off, worst in fn(*case, a.batch, configs, rng, ablate=ablate):
            bad += not ablate and (worst > 1 or off > 0.005 * rows_of(case[1], a.batch) *
                                   case[3])
    print("all outputs within one step on <= 0.5%" if not bad else f"{bad} runs off")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
