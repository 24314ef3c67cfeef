"""Issue 15's probe: would a Hopper kernel written in Triton (its int8 ``tl.dot`` is wgmma on
sm_90, fed through shared memory by TMA-style pipelined loads) run ResNet50's quantized 1x1
convs faster than ``q_mma`` (mma.sync, backends/cuda_source_qmma) and cuDNN's int8 graphs?

The INT8 engine spends what separates it from issue 15's 1.6x FP16 in those layers: the
residual 1x1 convs of stages 1-3 ran at 1.36-1.74x their memory floor in s53 (H100: stage 2's
q_mma 67 us against 38.6, stage 3's cuDNN int8 graph 54 us against 33, slower than the FP16
engine's 47). bench_qmma's ablations (s47) put q_mma's time in its epilogue and shared-memory
B fragments; a wgmma kernel takes B from shared memory without per-lane loads and issues a
quarter of the instructions.

The same arithmetic as ``q_mma``'s layers (quantization.py): ``y = q(relu?(acc * scale[n] +
bias[n] + res * res_scale) * inv_out)``, acc the exact int32 sum over int8 x [M, K] and int8
w [N, K], q rounding half to even and clamping to +-127, NaN to 0; int8 y. Checked against
the same float32 formula in PyTorch (codes equal but for a few one-off roundings where the
compiler contracts a multiply-add differently). Timed as bench_qmma times: a CUDA graph of
10 launches replayed, median of 5 replays after warm-up; the memory floor at the GPU's copy
rate measured in the same run.

    python3 benchmarks/probe_triton_qgemm.py [--batch 128] [--only s2,s3] [--configs medium]
                                             [--via-cupy]

Runs with the GPU host's python3 (PyTorch + Triton); no tftrt import. A probe: if a shape
runs near its floor here, a Triton-built kernel (compiled ahead, launched by CuPy from its
cubin) is worth a tactic; the tactic itself is not built.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics

import torch
import triton
import triton.language as tl

# name, H (= W), K (cin), N (cout), int8 residual, ReLU: bench_qmma's CONVS (1x1, int8 x)
CONVS = [
    ("s1_conv3_64to256_res", 56, 64, 256, True, True),
    ("s1_proj_64to256_int8x", 56, 64, 256, False, False),
    ("s1_conv1_256to64", 56, 256, 64, False, True),
    ("s2_conv3_128to512_res", 28, 128, 512, True, True),
    ("s2_conv1_256to128", 28, 256, 128, False, True),
    ("s3_conv3_256to1024_res", 14, 256, 1024, True, True),
    ("s2_conv1_512to128", 28, 512, 128, False, True),
    ("s3_conv1_1024to256", 14, 1024, 256, False, True),
    ("s4_conv3_512to2048_res", 7, 512, 2048, True, True),
    ("s4_conv1_2048to512", 7, 2048, 512, False, True),
]
MAGIC = 12582912.0  # 1.5 * 2**23: adding it rounds a float32 below 2**22 to an integer, ties even


@triton.jit
def qgemm(x_ptr, w_ptr, scale_ptr, bias_ptr, res_ptr, y_ptr, M, res_scale, inv_out,
          N: tl.constexpr, K: tl.constexpr, HAS_RES: tl.constexpr, RELU: tl.constexpr,
          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
          GROUP_M: tl.constexpr):
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n: tl.constexpr = (N + BLOCK_N - 1) // BLOCK_N
    group = GROUP_M * num_n
    first_m = (pid // group) * GROUP_M
    size_m = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % group) % size_m
    pid_n = (pid % group) // size_m
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    mmask = rm < M
    nmask = rn < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for k0 in tl.range(0, K, BLOCK_K):
        a = tl.load(x_ptr + rm[:, None].to(tl.int64) * K + (k0 + rk)[None, :],
                    mask=mmask[:, None], other=0)
        b = tl.load(w_ptr + rn[:, None] * K + (k0 + rk)[None, :], mask=nmask[:, None], other=0)
        acc = tl.dot(a, tl.trans(b), acc, out_dtype=tl.int32)
    scale = tl.load(scale_ptr + rn, mask=nmask, other=0.0)
    bias = tl.load(bias_ptr + rn, mask=nmask, other=0.0)
    v = acc.to(tl.float32) * scale[None, :] + bias[None, :]
    offs = rm[:, None].to(tl.int64) * N + rn[None, :]
    omask = mmask[:, None] & nmask[None, :]
    if HAS_RES:
        r = tl.load(res_ptr + offs, mask=omask, other=0).to(tl.float32)
        v = v + r * res_scale
    if RELU:
        v = tl.maximum(v, 0.0)
    c = tl.minimum(tl.maximum(v * inv_out, -127.0), 127.0)
    c = tl.where(c == c, c, 0.0)
    q = (c + 12582912.0) - 12582912.0
    tl.store(y_ptr + offs, q.to(tl.int8), mask=omask)


def reference(x, w, scale, bias, res, res_scale, inv_out, relu):
    acc = (x.float() @ w.float().t())  # exact: |acc| < 2**24 for these K
    v = acc * scale[None, :] + bias[None, :]
    if res is not None:
        v = v + res.float() * res_scale
    if relu:
        v = torch.clamp_min(v, 0.0)
    c = torch.clamp(v * inv_out, -127.0, 127.0)
    c = torch.nan_to_num(c, nan=0.0)
    return torch.round(c).to(torch.int8)  # torch.round: half to even


def graph_time(fn, reps=10, replays=5):
    """Seconds per call: a CUDA graph of ``reps`` calls, median of ``replays`` replays."""
    fn()
    torch.cuda.synchronize()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(reps):
            fn()
    g.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(replays):
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        g.replay()
        e1.record()
        e1.synchronize()
        times.append(e0.elapsed_time(e1) / 1e3 / reps)
    return statistics.median(times)


def copy_rate():
    """Bytes a second a device-to-device copy of 1 GiB moves (read + written)."""
    a = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    t = graph_time(lambda: b.copy_(a), reps=3)
    return 2 * a.numel() / t


def configs(k: int, which: str):
    """(BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages, GROUP_M) to try."""
    bk = [min(k, 128)] + ([k] if 128 < k <= 256 else [])
    if which == "few":
        return [(bm, bn, bk[0], nw, ns, 8) for bm, bn, nw, ns in (
            (128, 128, 8, 3), (128, 256, 8, 3), (256, 128, 8, 3), (64, 256, 4, 3),
            (128, 64, 4, 3), (128, 128, 4, 4))]
    if which == "medium":
        tiles = [(128, 128, 8, 3), (128, 256, 8, 3), (256, 128, 8, 3), (64, 256, 4, 3),
                 (128, 128, 4, 3), (128, 64, 4, 3), (64, 128, 4, 4), (128, 128, 8, 2),
                 (128, 256, 8, 2), (256, 128, 8, 2), (256, 64, 8, 3), (64, 64, 4, 4)]
        return [(bm, bn, kk, nw, ns, 8) for bm, bn, nw, ns in tiles for kk in bk
                if kk == bk[0] or bm * bn <= 128 * 128]
    out = []
    for bm, bn, kk, nw, ns in itertools.product((64, 128, 256), (64, 128, 256), bk, (4, 8),
                                                (2, 3, 4)):
        if bm * bn > 128 * 256 or (bm * bn >= 128 * 256 and nw == 4):
            continue
        if bm * kk + bn * kk > 64 * 1024 // max(ns - 1, 1):  # shared memory per stage
            continue
        out.append((bm, bn, kk, nw, ns, 8))
    return out


def cupy_launch(cfg, m, n, k, has_res, relu, x, w, scale, bias, res, y, res_scale, inv_out):
    """The same kernel compiled ahead (``triton.compile`` to a cubin) and launched by CuPy on
    the same memory (DLPack views), as a tactic would run it: returns (its output equal to
    the Triton launch's, seconds per call by CuPy's events over 20 launches)."""
    import cupy as cp
    import numpy as np
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    bm, bn, bk, nw, ns, gm = cfg
    sig = {"x_ptr": "*i8", "w_ptr": "*i8", "scale_ptr": "*fp32", "bias_ptr": "*fp32",
           "res_ptr": "*i8", "y_ptr": "*i8", "M": "i32", "res_scale": "fp32", "inv_out": "fp32"}
    consts = {"N": n, "K": k, "HAS_RES": has_res, "RELU": relu, "BLOCK_M": bm, "BLOCK_N": bn,
              "BLOCK_K": bk, "GROUP_M": gm}
    sig.update({c: "constexpr" for c in consts})
    major, minor = torch.cuda.get_device_capability()
    kern = triton.compile(ASTSource(fn=qgemm, signature=sig, constexprs=consts),
                          target=GPUTarget("cuda", 10 * major + minor, 32),
                          options={"num_warps": nw, "num_stages": ns})
    meta = kern.metadata
    if getattr(meta, "global_scratch_size", 0) or getattr(meta, "profile_scratch_size", 0):
        raise RuntimeError("the kernel asks for scratch memory; the probe passes none")
    mod = cp.cuda.function.Module()
    mod.load(bytes(kern.asm["cubin"]))
    fn = mod.get_function(meta.name)
    fn.max_dynamic_shared_size_bytes = meta.shared
    views = [cp.from_dlpack(t) for t in (x, w, scale, bias, res if has_res else y)]
    out = cp.zeros((m, n), dtype=cp.int8)
    grid = (triton.cdiv(m, bm) * triton.cdiv(n, bn),)
    args = (*views, out, np.int32(m), np.float32(res_scale), np.float32(inv_out),
            np.uint64(0), np.uint64(0))

    def launch():
        fn(grid, (32 * nw,), args, shared_mem=meta.shared)
    launch()
    cp.cuda.Device().synchronize()
    same = bool((out == cp.from_dlpack(y)).all())
    e0, e1 = cp.cuda.Event(), cp.cuda.Event()
    times = []
    for _ in range(5):
        e0.record()
        for _ in range(20):
            launch()
        e1.record()
        e1.synchronize()
        times.append(cp.cuda.get_elapsed_time(e0, e1) / 1e3 / 20)
    return same, statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--only", default="", help="comma-separated name prefixes")
    ap.add_argument("--configs", default="medium", choices=("all", "medium", "few"))
    ap.add_argument("--via-cupy", action="store_true",
                    help="also run each shape's best config compiled ahead and launched by "
                         "CuPy (the way a tactic would), its output compared with Triton's")
    args = ap.parse_args()
    torch.manual_seed(0)
    dev = torch.cuda.get_device_properties(0)
    rate = copy_rate()
    print(f"# {dev.name}, {dev.multi_processor_count} SMs, triton {triton.__version__}, "
          f"torch {torch.__version__}; copy rate {rate / 1e12:.2f} TB/s (read + written)")
    print(f"{'layer':26s} {'M':>7s} {'K':>5s} {'N':>5s} {'floor us':>8s} {'best us':>8s} "
          f"{'x floor':>7s} {'GB/s':>6s} {'int_mm us':>9s}  config (BM,BN,BK,warps,stages)"
          f"  mismatches")
    only = [p for p in args.only.split(",") if p]
    for name, hw, k, n, has_res, relu in CONVS:
        if only and not any(name.startswith(p) for p in only):
            continue
        m = args.batch * hw * hw
        x = torch.randint(-127, 128, (m, k), dtype=torch.int8, device="cuda")
        w = torch.randint(-127, 128, (n, k), dtype=torch.int8, device="cuda")
        scale = (torch.rand(n, device="cuda") * 2e-4 + 1e-4)
        bias = torch.randn(n, device="cuda") * 0.5
        res = torch.randint(-127, 128, (m, n), dtype=torch.int8, device="cuda") \
            if has_res else None
        res_scale, inv_out = 0.02, 1 / 0.05
        y = torch.empty((m, n), dtype=torch.int8, device="cuda")
        want = reference(x, w, scale, bias, res, res_scale, inv_out, relu)
        floor = (m * k + n * k + m * n * (2 if has_res else 1)) / (rate / 2)
        best = None
        for cfg in configs(k, args.configs):
            bm, bn, bk, nw, ns, gm = cfg
            grid = (triton.cdiv(m, bm) * triton.cdiv(n, bn),)

            def run(bm=bm, bn=bn, bk=bk, nw=nw, ns=ns, gm=gm, grid=grid):
                qgemm[grid](x, w, scale, bias, res if has_res else y, y, m, res_scale, inv_out,
                            N=n, K=k, HAS_RES=has_res, RELU=relu, BLOCK_M=bm, BLOCK_N=bn,
                            BLOCK_K=bk, GROUP_M=gm, num_warps=nw, num_stages=ns)
            try:
                y.zero_()
                run()
                torch.cuda.synchronize()
                diff = (y.int() - want.int()).abs()
                bad = int((diff > 0).sum())
                worst = int(diff.max())
                t = graph_time(run)
            except Exception as e:  # (a config out of resources)
                print(f"#   {name} {cfg}: {type(e).__name__}: {str(e)[:120]}")
                continue
            if best is None or t < best[0]:
                best = (t, cfg, bad, worst)
        if best is None:
            print(f"{name:26s} no config ran")
            continue
        t, cfg, bad, worst = best
        wt = w.t()  # _int_mm(A [M, K] row-major, B [K, N] column-major): w's transpose view
        try:
            int_mm = graph_time(lambda: torch._int_mm(x, wt))
            int_mm_us = f"{int_mm * 1e6:9.1f}"
        except Exception:
            int_mm_us = f"{'-':>9s}"
        moved = floor * rate / 2
        print(f"{name:26s} {m:7d} {k:5d} {n:5d} {floor * 1e6:8.1f} {t * 1e6:8.1f} "
              f"{t / floor:7.2f} {moved / t / 1e9:6.0f} {int_mm_us}  {cfg[:5]}  "
              f"{bad} of {m * n} (max {worst})", flush=True)
        if args.via_cupy:
            bm, bn, bk, nw, ns, gm = cfg
            try:
                qgemm[(triton.cdiv(m, bm) * triton.cdiv(n, bn),)](
                    x, w, scale, bias, res if has_res else y, y, m, res_scale, inv_out, N=n,
                    K=k, HAS_RES=has_res, RELU=relu, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk,
                    GROUP_M=gm, num_warps=nw, num_stages=ns)
                torch.cuda.synchronize()
                same, tc = cupy_launch(cfg, m, n, k, has_res, relu, x, w, scale, bias, res, y,
                                       res_scale, inv_out)
                print(f"#   {name}: compiled ahead, launched by CuPy: {tc * 1e6:.1f} us "
                      f"(events, 20 launches), output {'equal' if same else 'DIFFERENT'}",
                      flush=True)
            except Exception as e:
                print(f"#   {name}: via CuPy failed: {type(e).__name__}: {str(e)[:200]}")


if __name__ == "__main__":
    os.environ.setdefault("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")
    main()
