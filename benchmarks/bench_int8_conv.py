"""Every cuDNN plan of a few ResNet50 convolutions, INT8 against FP16 (issue 15): which engines
the heuristics offer (modes A, B, FALLBACK), what each costs, and how far the best INT8 plan is
from the best FP16 one. A layer-level question the whole-model profile raised: the stage-1
convs (64 channels at 56x56) ran at 21-94 TFLOP/s in INT8, where FP16 runs them several times
faster.

    python benchmarks/bench_int8_conv.py [--batch 128] [--plans 40] [--only NAME] [--check]

Needs CuPy and the cuDNN frontend (the carried .whl). Prints, per conv and precision, the
fastest plans with their names and the heuristic mode that offered them; times are medians of
CUDA-graph replays (cupy_dnn.gpu_time), in microseconds. ``--check`` instead compares the
int8 outputs of the fused graph's plans with a once-rounded and an fp16-rounded reference.
"""

from __future__ import annotations

import argparse
import sys
import time

import cupy as cp
import numpy as np

from tftrt.engine.backends.cupy_dnn import _nc_dims, cudnn_handle, cudnn_module, gpu_time

CLIP = False  # --clip: the fused graph clips to +-127 before the int8 store

# name, H (= W, or (H, W)) of the input, cin, cout, kernel, stride
CONVS = [
    ("s1_3x3_64", 56, 64, 64, 3, 1),
    # the same conv over pixel pairs (tactic q_cudnn_pairs, TFTRT_QUANT_CUDNN_PAIRS=1): a 3x3
    # conv of 128 channels over 56 x 28 pairs, twice the multiply-adds (half of them zeros)
    ("s1_3x3_64_as_pairs", (56, 28), 128, 128, 3, 1),
    ("s1_1x1_64to64", 56, 64, 64, 1, 1),
    ("s1_1x1_64to256", 56, 64, 256, 1, 1),
    ("s1_1x1_256to64", 56, 256, 64, 1, 1),
    ("s2_3x3_128", 28, 128, 128, 3, 1),
    ("s3_3x3_256", 14, 256, 256, 3, 1),
]


def graph(c, prec, n, hw, cin, cout, k, stride, mode_list, relu=True):
    io = c.data_type.INT8 if prec == "INT8" else c.data_type.HALF
    acc = c.data_type.INT32 if prec == "INT8" else c.data_type.FLOAT
    g = c.pygraph(io_data_type=io, intermediate_data_type=c.data_type.FLOAT,
                  compute_data_type=c.data_type.FLOAT, handle=cudnn_handle())
    pad = k // 2
    (hh, ww), (ho, wo) = _hw(hw), _out(hw, k, stride)
    xd, xs = _nc_dims((n, hh, ww, cin))
    wd, ws = _nc_dims((cout, k, k, cin))
    yd, ys = _nc_dims((n, ho, wo, cout))
    X = g.tensor(name="X", dim=xd, stride=xs, data_type=io)
    W = g.tensor(name="W", dim=wd, stride=ws, data_type=io)
    Y = g.conv_fprop(image=X, weight=W, pre_padding=[pad, pad], post_padding=[pad, pad],
                     stride=[stride, stride], dilation=[1, 1], compute_data_type=acc)
    Y.set_data_type(c.data_type.FLOAT)
    vd, vs = [1, cout, 1, 1], [cout, 1, cout, cout]
    S = g.tensor(name="S", dim=vd, stride=vs, data_type=c.data_type.FLOAT)
    B = g.tensor(name="B", dim=vd, stride=vs, data_type=c.data_type.FLOAT)
    Y = g.scale(input=Y, scale=S, compute_data_type=c.data_type.FLOAT)
    Y = g.bias(input=Y, bias=B, compute_data_type=c.data_type.FLOAT)
    if relu:
        Y = g.relu(input=Y)
    if prec == "INT8":
        INV = g.tensor(name="INV", dim=vd, stride=vs, data_type=c.data_type.FLOAT)
        Y = g.scale(input=Y, scale=INV, compute_data_type=c.data_type.FLOAT)
        if CLIP:  # as cupy_quant's fused_int8: symmetric saturation to +-127
            Y = g.relu(input=Y, lower_clip=-127.0, upper_clip=127.0)
        tensors = {"S": S, "B": B, "INV": INV}
        Y.set_output(True).set_data_type(c.data_type.INT8)
    else:
        tensors = {"S": S, "B": B}
        Y.set_output(True).set_data_type(c.data_type.HALF)
    Y.set_dim(yd).set_stride(ys)
    g.validate()
    g.build_operation_graph()
    g.create_execution_plans(mode_list)
    try:
        g.check_support()
    except Exception:
        pass
    return g, dict(tensors, X=X, W=W, Y=Y)


def _hw(hw):
    return tuple(hw) if isinstance(hw, tuple) else (hw, hw)


def _out(hw, k, stride):
    return tuple((d + 2 * (k // 2) - k) // stride + 1 for d in _hw(hw))


def bench(c, name, prec, n, hw, cin, cout, k, stride, max_plans):
    stream = cp.cuda.Stream(non_blocking=True)
    h = cudnn_handle()
    dt = np.int8 if prec == "INT8" else np.float16
    rows = []
    seen = set()
    for mode in ("A", "B", "FALLBACK"):
        try:
            g, t = graph(c, prec, n, hw, cin, cout, k, stride, [getattr(c.heur_mode, mode)])
        except Exception as e:
            print(f"  {prec} mode {mode}: no graph ({str(e)[:120]})")
            continue
        x = cp.ones((n,) + _hw(hw) + (cin,), dt)
        w = cp.ones((cout, k, k, cin), dt)
        y = cp.empty((n,) + _out(hw, k, stride) + (cout,), dt)
        vec = {nm: cp.full(cout, 0.01, cp.float32) for nm in ("S", "B", "INV")}
        pack = {t["X"]: x.data.ptr, t["W"]: w.data.ptr, t["Y"]: y.data.ptr}
        for nm in vec:
            if nm in t:
                pack[t[nm]] = vec[nm].data.ptr
        count = g.get_execution_plan_count()
        for i in range(min(count, max_plans)):
            try:
                pname = g.get_plan_name_at_index(i)
            except Exception:
                pname = f"plan{i}"
            if pname in seen:
                continue
            t0 = time.perf_counter()
            try:
                g.build_plan_at_index(i)
            except Exception:
                continue
            bs = time.perf_counter() - t0
            seen.add(pname)
            wsz = int(g.get_workspace_size_plan_at_index(i))
            if wsz > 256 << 20:
                continue
            ws = cp.empty(max(wsz, 1), cp.uint8)

            def run(i=i, ws=ws):
                c.set_stream(h, stream.ptr)
                g.execute_plan_at_index(pack, ws.data.ptr, i, handle=h)
            try:
                sec = gpu_time(run, stream, what=pname)
            except Exception as e:
                print(f"  {prec} {mode} {pname}: failed {str(e)[:80]}")
                continue
            rows.append((sec, mode, i, pname, bs))
    rows.sort()
    flops = 2.0 * n * int(np.prod(_out(hw, k, stride))) * cout * cin * k * k
    for sec, mode, i, pname, bs in rows[:6]:
        print(f"  {prec:4s} {sec * 1e6:8.1f} us {flops / sec / 1e12:6.0f} TF/s  {mode:8s} #{i:<3d} "
              f"build {bs:5.2f}s  {pname}")
    if rows:
        first_a = next((r for r in sorted(rows, key=lambda r: (r[1] != 'A', r[2]))), None)
        print(f"  {prec} heuristic A's first plan: {first_a[0] * 1e6:.1f} us ({first_a[3]}); "
              f"{len(rows)} plans timed")
    return rows[0][0] if rows else None


def check(c, n, hw, cin, cout, relu):
    """The int8 output of the fused graph (conv, scale, bias[, relu], scale by INV, int8)
    against two references on random data: float32 epilogue rounded once to int8, and the
    same value rounded to float16 first. Prints, per plan, the share of outputs off each."""
    h = cudnn_handle()
    rs = cp.random.RandomState(0)
    x = rs.randint(-40, 41, (n, hw, hw, cin)).astype(cp.int8)
    w = rs.randint(-127, 128, (cout, 1, 1, cin)).astype(cp.int8)
    acc = x.reshape(-1, cin).astype(cp.float64) @ w.reshape(cout, cin).T.astype(cp.float64)
    sc = (rs.uniform(0.5, 1.5, cout) / (cin ** 0.5 * 23 * 73)).astype(cp.float32)
    b = rs.normal(0, 0.3, cout).astype(cp.float32)
    inv = cp.full(cout, 40.0, cp.float32)
    y = acc.astype(cp.float32) * sc + b
    if relu:
        y = cp.maximum(y, 0)
    y = (y * inv).astype(cp.float32)
    once = cp.clip(cp.rint(y), -127, 127)
    via16 = cp.clip(cp.rint(y.astype(cp.float16).astype(cp.float32)), -127, 127)
    g, t = graph(c, "INT8", n, hw, cin, cout, 1, 1, [c.heur_mode.A, c.heur_mode.FALLBACK],
                    relu=relu)
    out = cp.empty((n, hw, hw, cout), cp.int8)
    pack = {t["X"]: x.data.ptr, t["W"]: w.data.ptr, t["Y"]: out.data.ptr,
            t["S"]: sc.data.ptr, t["B"]: b.data.ptr, t["INV"]: inv.data.ptr}
    for i in range(min(g.get_execution_plan_count(), 8)):
        try:
            g.build_plan_at_index(i)
        except Exception:
            continue
        ws = cp.empty(max(int(g.get_workspace_size_plan_at_index(i)), 1), cp.uint8)
        out.fill(-128)
        c.set_stream(h, cp.cuda.get_current_stream().ptr)
        g.execute_plan_at_index(pack, ws.data.ptr, i, handle=h)
        got = out.reshape(-1, cout).astype(cp.float32)
        d1 = cp.abs(got - once)
        d16 = cp.abs(got - via16)
        print(f"  relu={relu} {cin}->{cout} plan #{i} {g.get_plan_name_at_index(i)}: "
              f"off the once-rounded {float((d1 > 0).mean()) * 100:.3f}% (max "
              f"{float(d1.max()):.0f}), off the fp16-rounded {float((d16 > 0).mean()) * 100:.3f}%"
              f" (max {float(d16.max()):.0f}); |y| mean {float(cp.abs(y).mean()):.1f}")


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--plans", type=int, default=40)
    p.add_argument("--only", default="")
    p.add_argument("--check", action="store_true",
                   help="compare the fused int8 output's rounding with two references")
    p.add_argument("--clip", action="store_true", help="clip to +-127 before the int8 store")
    a = p.parse_args(argv)
    global CLIP
    CLIP = a.clip
    c = cudnn_module()
    if c is None:
        sys.exit("cuDNN frontend unavailable")
    print(f"cuDNN {c.backend_version()}, {cp.cuda.runtime.getDeviceProperties(0)['name']}")
    if a.check:
        for relu in (False, True):
            for cin, cout in ((64, 256), (256, 64)):
                check(c, 32, 56, cin, cout, relu)
        return
    table = []
    for conv in CONVS:
        if a.only and a.only not in conv[0]:
            continue
        name, hw, cin, cout, k, s = conv
        print(f"== {name}: batch {a.batch}, {'x'.join(map(str, _hw(hw)))}, {cin}->{cout}, "
              f"{k}x{k}/{s}")
        best = {prec: bench(c, name, prec, a.batch, hw, cin, cout, k, s, a.plans)
                for prec in ("FP16", "INT8")}
        table.append((name, best["FP16"], best["INT8"]))
    print(f"\n{'conv':18s} {'FP16 us':>9s} {'INT8 us':>9s} {'INT8/FP16':>9s}")
    for name, f, i in table:
        r = f"{f / i:9.2f}" if f and i else "        -"
        print(f"{name:18s} {(f or 0) * 1e6:9.1f} {(i or 0) * 1e6:9.1f} {r}")


if __name__ == "__main__":
    main()
