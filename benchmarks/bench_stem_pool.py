"""A stem with its max pool fused (``StemMmaSource(pool=...)``) against the two kernels it
replaces -- the row-tile stem storing the conv output, then the pool kernel
(cuda_source_move.PoolSource) -- at the kernel level on CuPy (no engine, no TensorFlow):
ResNet50's stem (224 x 224 x 3 float32 image, 7x7 / 2 -> 64, bias + ReLU) and its 3x3 / 2
MaxPool with the folded zero pad, float16 and int8 (the INT8 engine's codes) outputs, and
DenseNet's (the same shapes). Checks the fused output equals the pair's, element for element
(float16 by value; codes exactly), then times each with CUDA events (median of ``--reps``
after warm-up).

    PYTHONPATH=$PWD python3 benchmarks/bench_stem_pool.py [--batch 128] [--reps 200]

Prints a table: per output dtype, the stem alone, the pool alone, their sum, the fused
kernel (us), the saving, and the fused kernel's registers and shared memory.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


def _time(fn, reps):
    import cupy as cp
    for _ in range(10):
        fn()
    start, end = cp.cuda.Event(), cp.cuda.Event()
    times = []
    for _ in range(reps):
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(cp.cuda.get_elapsed_time(start, end) * 1e3)
    return float(np.median(times))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--reps", type=int, default=200)
    args = ap.parse_args(argv)
    import cupy as cp

    from tftrt.engine.backends import cuda_source_stem_mma as SM
    from tftrt.engine.backends.cupy_kernels_nn import PoolKernel
    from tftrt.engine.backends.cupy_stem_mma import _kernel, grid
    n = args.batch
    rng = np.random.default_rng(0)
    x = cp.asarray(rng.uniform(0, 1, (n, 224, 224, 3)).astype(np.float32))
    w = (rng.standard_normal((64, 7, 7, 3)) / 12).astype(np.float16)
    bias = cp.asarray(rng.standard_normal(64).astype(np.float32) * 0.1)
    epilogue = [{"op": "bias", "input": 2}, {"op": "act", "fn": "relu"}]
    modes = {2: ("vec", "float32")}
    geo = ((n, 224, 224, 3), (7, 7), (2, 2), (3, 3, 3, 3), (n, 112, 112, 64), "float32")
    print(f"# {cp.cuda.runtime.getDeviceProperties(0)['name'].decode()}, batch {n}")
    print("| output | stem (rows) us | pool us | sum us | fused us | saved us | fused, no carry "
          "us | fused regs, smem KB, pool rows a tile, blocks | equal |")
    print("|---|---|---|---|---|---|---|---|---|")
    for dt, q in (("float16", {}), ("int8", dict(out_scale=0.02, nan_code=-128))):
        pool = dict(out_shape=(n, 56, 56, 64), pads=(1, 1, 1, 1), pad_value=0.0,
                    code_floor=-127 if dt == "int8" else None)
        plain = SM.StemMmaSource(*geo, dt, epilogue, modes, rows=True, **q)
        fused = SM.StemMmaSource(*geo, dt, epilogue, modes, pool=dict(pool, carry=True), **q)
        fused_nc = SM.StemMmaSource(*geo, dt, epilogue, modes, pool=dict(pool, carry=False),
                                    **q)
        pk = PoolKernel((n, 112, 112, 64), (n, 56, 56, 64), "max", (3, 3), (2, 2), (1, 1),
                        (1, 1, 1, 1), False, dt, dt, None, 0.0, None,
                        -127 if dt == "int8" else None)
        conv = cp.empty((n, 112, 112, 64), dt)
        y_pair, y_fused, y_nc = (cp.empty((n, 56, 56, 64), dt) for _ in range(3))
        runs = {}
        for name, src, out in (("plain", plain, conv), ("fused", fused, y_fused),
                               ("fused_nc", fused_nc, y_nc)):
            kern = _kernel(src.source)
            if src.smem_bytes > kern.max_dynamic_shared_size_bytes:
                kern.max_dynamic_shared_size_bytes = src.smem_bytes
            wt = cp.asarray(SM.filter_matrix(w, src))
            runs[name] = (kern, src, (x, wt, bias, out, np.int64(n)))

        def launch(name):
            kern, src, a = runs[name]
            kern((grid(kern, src),), (src.threads,), a, shared_mem=src.smem_bytes)
        launch("plain")
        pk(conv, y_pair)
        launch("fused")
        launch("fused_nc")
        cp.cuda.Device().synchronize()
        a = cp.asnumpy(y_pair)
        diff = [int(np.count_nonzero(a != cp.asnumpy(y))) for y in (y_fused, y_nc)]
        t_stem = _time(lambda: launch("plain"), args.reps)
        t_pool = _time(lambda: pk(conv, y_pair), args.reps)
        t_fused = _time(lambda: launch("fused"), args.reps)
        t_nc = _time(lambda: launch("fused_nc"), args.reps)
        kern = runs["fused"][0]
        print(f"| {dt} | {t_stem:.1f} | {t_pool:.1f} | {t_stem + t_pool:.1f} | "
              f"{t_fused:.1f} | {t_stem + t_pool - t_fused:.1f} | {t_nc:.1f} | "
              f"{kern.num_regs}, {fused.smem_bytes / 1024:.1f}, {fused.rows['pr']}, "
              f"{grid(kern, fused)} | "
              f"{'yes' if diff == [0, 0] else 'NO: %d / %d differ' % tuple(diff)} |")


if __name__ == "__main__":
    main()
