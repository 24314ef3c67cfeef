"""Does cuDNN (through cudnn-frontend) fuse what DenseNet needs? A probe, not a test.

DenseNet121 FP16 at batch 128 spends 2.8 of 7.8 ms in pre-activation BatchNorm + ReLU
(a pointwise pass over every dense block's growing concat) and 1.4 ms in the concats. Two
cuDNN features would remove most of it:
  * a prologue: Y = conv(relu(X * s + b), W), the scale / bias / ReLU applied while X is
    loaded (cuDNN's "ConvBNfprop"-style runtime fusion), instead of a separate pass;
  * strided tensors: a conv writing its output into a channel slice of a wider NHWC tensor
    (the concat's), and reading its input from one.
For each DenseNet-like shape this builds the graphs, says whether cuDNN has a plan, checks
the numbers against CuPy, and times them next to the unfused baseline (a pointwise pass + the
conv). Needs CuPy and cudnn-frontend (the engine-only GPU environment):

    python benchmarks/probe_cudnn_fusion.py
"""

from __future__ import annotations

import sys

import numpy as np


def nc(shape_nhwc):
    n, h, w, c = shape_nhwc
    return [n, c, h, w], [h * w * c, 1, w * c, c]


def main():
    import cupy as cp
    import cudnn as c
    handle = c.create_handle()
    c.set_stream(handle, cp.cuda.get_current_stream().ptr)
    f16 = c.data_type.HALF
    f32 = c.data_type.FLOAT

    def time_ms(fn, reps=30):
        for _ in range(5):
            fn()
        a, b = cp.cuda.Event(), cp.cuda.Event()
        ts = []
        for _ in range(reps):
            a.record()
            fn()
            b.record()
            b.synchronize()
            ts.append(cp.cuda.get_elapsed_time(a, b))
        return float(np.median(ts))

    def build(make):
        g = c.pygraph(io_data_type=f16, intermediate_data_type=f32, compute_data_type=f32,
                      handle=handle)
        tensors = make(g)
        g.validate()
        g.build_operation_graph()
        g.create_execution_plans([c.heur_mode.A, c.heur_mode.FALLBACK])
        try:
            g.check_support()
        except Exception:
            pass
        built = []
        for i in range(g.get_execution_plan_count()):
            try:
                g.build_plan_at_index(i)
                built.append(i)
            except Exception:
                continue
            if len(built) >= 4:
                break
        if not built:
            raise RuntimeError("no plan")
        return g, tensors, built

    def run_best(g, pack, built):
        ws = cp.empty(max(int(g.get_workspace_size_plan_at_index(i)) for i in built) + 1,
                      cp.uint8)
        best = None
        for i in built:
            t = time_ms(lambda: g.execute_plan_at_index(pack, ws.data.ptr, i, handle=handle))
            if best is None or t < best[0]:
                best = (t, i)
        g.execute_plan_at_index(pack, ws.data.ptr, best[1], handle=handle)
        cp.cuda.get_current_stream().synchronize()
        return best

    def rel_err(got, want):
        got, want = got.astype(cp.float32), want.astype(cp.float32)
        return float(cp.abs(got - want).max() / (cp.abs(want).max() + 1e-6))

    rng = np.random.default_rng(0)
    cases = [("block2 layer (28x28, C=256 -> 128, 1x1)", (128, 28, 28, 256), 128, 1),
             ("block1 layer (56x56, C=128 -> 128, 1x1)", (128, 56, 56, 128), 128, 1),
             ("block3 layer (14x14, C=512 -> 128, 1x1)", (128, 14, 14, 512), 128, 1),
             ("growth conv (28x28, 128 -> 32, 3x3)", (128, 28, 28, 128), 32, 3)]
    for what, xs, cout, k in cases:
        n, h, w, cin = xs
        x = cp.asarray(rng.standard_normal(xs).astype(np.float16))
        wt = cp.asarray((rng.standard_normal((cout, k, k, cin)) * 0.05).astype(np.float16))
        s = cp.asarray(rng.uniform(0.5, 1.5, cin).astype(np.float16))
        b = cp.asarray(rng.normal(0, 0.1, cin).astype(np.float16))
        pad = k // 2
        y = cp.empty((n, h, w, cout), cp.float16)
        xd, xst = nc(xs)
        wd, wst = nc((cout, k, k, cin))
        yd, yst = nc((n, h, w, cout))
        sd, sst = [1, cin, 1, 1], [cin, 1, cin, cin]
        conv_kw = dict(pre_padding=[pad, pad], post_padding=[pad, pad], stride=[1, 1],
                       dilation=[1, 1], compute_data_type=f32)
        # reference: relu(x * s + b) conv w, in float32 on CuPy (NHWC -> via einsum for 1x1)
        z = cp.maximum(x.astype(cp.float32) * s.astype(cp.float32) + b.astype(cp.float32), 0)
        zh = z.astype(cp.float16)
        print(f"== {what}", flush=True)

        def plain(g):
            X = g.tensor(name="X", dim=xd, stride=xst, data_type=f16)
            W = g.tensor(name="W", dim=wd, stride=wst, data_type=f16)
            Y = g.conv_fprop(image=X, weight=W, **conv_kw)
            Y.set_output(True).set_data_type(f16).set_dim(yd).set_stride(yst)
            return X, W, Y
        try:
            g, (X, W, Y), built = build(plain)
            t_conv, _ = run_best(g, {X: zh.data.ptr, W: wt.data.ptr, Y: y.data.ptr}, built)
            ref = y.copy()
            t_pw = time_ms(lambda: cp.maximum(x * s + b, 0))  # CuPy elementwise, ~1 pass
            print(f"   baseline: conv {t_conv:.3f} ms + pointwise pass ~{t_pw:.3f} ms "
                  f"(CuPy's, 2 temporaries)", flush=True)
        except Exception as e:
            print(f"   baseline conv: {type(e).__name__}: {e}", flush=True)
            continue

        def prologue(g):
            X = g.tensor(name="X", dim=xd, stride=xst, data_type=f16)
            S = g.tensor(name="S", dim=sd, stride=sst, data_type=f16)
            B = g.tensor(name="B", dim=sd, stride=sst, data_type=f16)
            W = g.tensor(name="W", dim=wd, stride=wst, data_type=f16)
            t = g.scale(input=X, scale=S)
            t = g.bias(input=t, bias=B)
            t = g.relu(input=t)
            Y = g.conv_fprop(image=t, weight=W, **conv_kw)
            Y.set_output(True).set_data_type(f16).set_dim(yd).set_stride(yst)
            return X, S, B, W, Y
        try:
            g, (X, S, B, W, Y), built = build(prologue)
            y2 = cp.zeros_like(y)
            t_pro, idx = run_best(g, {X: x.data.ptr, S: s.data.ptr, B: b.data.ptr,
                                      W: wt.data.ptr, Y: y2.data.ptr}, built)
            err = rel_err(y2, ref)
            print(f"   prologue scale+bias+relu -> conv: {len(built)} plan(s), best "
                  f"{t_pro:.3f} ms ({g.get_plan_name_at_index(idx)}), rel err {err:.1e}",
                  flush=True)
        except Exception as e:
            print(f"   prologue: not supported ({type(e).__name__}: {str(e)[:200]})",
                  flush=True)

        # strided output: y written into channels [16, 16 + cout) of a wider tensor
        wide = cout + 64
        big = cp.zeros((n, h, w, wide), cp.float16)

        def strided(g):
            X = g.tensor(name="X", dim=xd, stride=xst, data_type=f16)
            W = g.tensor(name="W", dim=wd, stride=wst, data_type=f16)
            Y = g.conv_fprop(image=X, weight=W, **conv_kw)
            Y.set_output(True).set_data_type(f16).set_dim(yd).set_stride(
                [h * w * wide, 1, w * wide, wide])
            return X, W, Y
        try:
            g, (X, W, Y), built = build(strided)
            t_str, _ = run_best(g, {X: zh.data.ptr, W: wt.data.ptr,
                                    Y: big.data.ptr + 16 * 2}, built)
            err = rel_err(big[..., 16:16 + cout], ref)
            untouched = not bool(big[..., :16].any()) and not bool(big[..., 16 + cout:].any())
            print(f"   output into a channel slice: {len(built)} plan(s), best {t_str:.3f} ms, "
                  f"rel err {err:.1e}, neighbours {'untouched' if untouched else 'WRITTEN'}",
                  flush=True)
        except Exception as e:
            print(f"   output into a channel slice: not supported ({type(e).__name__}: "
                  f"{str(e)[:200]})", flush=True)

        # strided input: x read from channels [0, cin) of a wider tensor
        xw = cp.zeros((n, h, w, cin + 32), cp.float16)
        xw[..., :cin] = zh

        def strided_in(g):
            X = g.tensor(name="X", dim=xd, stride=[h * w * (cin + 32), 1, w * (cin + 32),
                                                   cin + 32], data_type=f16)
            W = g.tensor(name="W", dim=wd, stride=wst, data_type=f16)
            Y = g.conv_fprop(image=X, weight=W, **conv_kw)
            Y.set_output(True).set_data_type(f16).set_dim(yd).set_stride(yst)
            return X, W, Y
        try:
            g, (X, W, Y), built = build(strided_in)
            y3 = cp.zeros_like(y)
            t_in, _ = run_best(g, {X: xw.data.ptr, W: wt.data.ptr, Y: y3.data.ptr}, built)
            print(f"   input from a channel slice: {len(built)} plan(s), best {t_in:.3f} ms, "
                  f"rel err {rel_err(y3, ref):.1e}", flush=True)
        except Exception as e:
            print(f"   input from a channel slice: not supported ({type(e).__name__}: "
                  f"{str(e)[:200]})", flush=True)


if __name__ == "__main__":
    sys.exit(main())
