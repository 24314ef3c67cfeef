"""Benchmark of tftrt engines on the GPU next to PyTorch eager and torch.compile.

Runs on the GPU machine (no TensorFlow needed). The networks are the segment ONNX networks
tftrt's converter made from seeded Keras models (``benchmarks/make_networks.py``, run on the
CPU side, writes them to ``.whl/networks``); outputs are checked against the golden outputs
native TensorFlow computed there. Peers run in a separate process, one after the other:
torchvision resnet50 / mobilenet_v2 (channels_last) and torch_encoder.TorchEncoder for the
encoder, same batch and precision (FP16: half weights and inputs; FP32: TF32 allowed, as the
engines allow it by default).

    python benchmarks/bench_engine.py --models resnet50,mobilenet_v2,encoder \
        --precisions FP16,FP32 --batches 1,8,128 [--peers eager,compile] \
        [--profile resnet50:FP16:128]
    BENCH_BUILD_PROFILE=1 adds a cProfile of each engine build (where build time goes).

Timing: CUDA events around each call on the caller's stream (input already on the GPU, output
handed back on the GPU), after warm-up (the engine captures its CUDA graph on the second run;
torch.compile compiles on the first); median and p99 over the timed calls.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

FP16_TFLOPS, HBM_TBS = 763.0, 3.0   # measured on the H100 (issue 4): dense FP16 GEMM, copy


def _iters(batch: int) -> int:
    return 300 if batch == 1 else 150 if batch <= 8 else 60


def time_calls(fn, record, iters: int, warmup: int = 10):
    """Per-call milliseconds measured by device events around ``fn()``."""
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(iters):
        _, (stop, elapsed) = record()
        fn()
        stop()
        ts.append(elapsed())
    return np.array(ts)


def _cupy_timer():
    import cupy as cp

    def record():
        s = cp.cuda.get_current_stream()
        a, b = cp.cuda.Event(), cp.cuda.Event()
        a.record(s)

        def stop():
            b.record(s)

        def elapsed():
            b.synchronize()
            return cp.cuda.get_elapsed_time(a, b)
        return a, (stop, elapsed)
    return record


def _torch_timer():
    import torch

    def record():
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()

        def stop():
            b.record()

        def elapsed():
            b.synchronize()
            return a.elapsed_time(b)
        return a, (stop, elapsed)
    return record


def _stats(ts, batch):
    med = float(np.median(ts))
    return {"median_ms": med, "p99_ms": float(np.percentile(ts, 99)),
            "throughput": batch / med * 1e3}


# --- engines -------------------------------------------------------------------------------------
def bench_engine(model_name, precision, batches, net_dir, profile_batches=()):
    import cupy as cp

    from make_networks import golden_input, load_networks
    from tftrt.engine import BuilderConfig, build_engine

    nets = load_networks(os.path.join(net_dir, f"{model_name}.onnx.xz"))
    g = np.load(os.path.join(net_dir, f"{model_name}.golden.npz"))
    info = json.loads(g["info"].tobytes())
    if info["segments"] != 1:
        print(f"# {model_name}: {info['segments']} segments; benchmarking the largest only")
    model = nets[0]
    in_name = model.graph.input[0].name
    rows = []
    for batch in batches:
        shape = [batch] + list(info["input_shape"][1:])
        t0 = time.perf_counter()
        # The process's timing cache, on disk in the build cache, as TensorFlow's engine ops
        # use it: TFTRT_CACHE_DIR decides whether a build is cold or warm.
        from tftrt.engine.backends import get_backend
        from tftrt.engine.tactics import persistent_timing_cache
        config = BuilderConfig(precision=precision, backend="cupy",
                               timing_cache=persistent_timing_cache(get_backend("cupy")))
        if os.environ.get("BENCH_BUILD_PROFILE"):
            # Where build time goes (NVRTC compiles, cuDNN plan finalisation, tactic timing).
            import cProfile
            import pstats
            prof_ = cProfile.Profile()
            engine = prof_.runcall(build_engine, model, {in_name: shape}, config)
            print(f"# build profile {model_name} {precision} batch {batch}", flush=True)
            st = pstats.Stats(prof_)
            st.sort_stats("cumulative").print_stats(35)
            st.sort_stats("tottime").print_stats(20)
        else:
            engine = build_engine(model, {in_name: shape}, config)
        build_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        ctx = engine.create_execution_context()
        engine.runners()
        prepare_s = time.perf_counter() - t1
        row = {"model": model_name, "precision": precision, "batch": batch, "impl": "tftrt",
               "build_s": round(build_s, 1), "prepare_s": round(prepare_s, 2),
               "layers": engine.num_layers, "build_phases": engine.build_info.get("phases"),
               "arena_mb": round(ctx._impl.device_bytes / 2 ** 20, 1)}
        if "timed_precision" in engine.build_info:  # TFTRT_QUANT_TIMED_PRECISION=1
            row["timed_precision"] = engine.build_info["timed_precision"]
        if engine.build_info.get("tactic_failures"):  # candidates skipped when timed
            row["tactic_failures"] = engine.build_info["tactic_failures"]
        gb = info["input_shape"][0]
        if batch >= gb and info["segments"] == 1:
            # The golden batch, tiled to this batch: the first rows are checked.
            gold = golden_input([gb] + shape[1:])
            tiled = np.concatenate([gold] * (batch // gb) + [gold[:batch % gb]])
            for run in ("eager", "graph"):  # first call runs eagerly, the second captures
                y = cp.asnumpy(ctx.execute([tiled])[0][:gb]).astype(np.float64)
                ref = g["y"].astype(np.float64)
                row[f"golden_relerr_{run}"] = float(np.linalg.norm(y - ref) / np.linalg.norm(ref))
            row["golden_relerr"] = float(np.max([row["golden_relerr_eager"],
                                                 row["golden_relerr_graph"]]))
            if not row["golden_relerr"] < 0.05:
                diagnose(engine, tiled)
        x = cp.asarray(np.random.default_rng(batch).standard_normal(shape).astype(np.float32))
        ts = time_calls(lambda: ctx.execute([x]), _cupy_timer(), _iters(batch))
        row.update(_stats(ts, batch))
        segs = ctx._impl.segments or []
        row["graphs"] = sum(1 for k, _ in segs if k == "graph")
        row["eager_segments"] = sum(1 for k, _ in segs if k == "eager")
        rows.append(row)
        print("#", json.dumps(row), flush=True)
        _append(row)
        if batch in profile_batches:
            print_profile(engine, ctx, x, model_name, precision, batch)
        del ctx, engine
        cp.get_default_memory_pool().free_all_blocks()
    return rows


def diagnose(engine, x, limit=4):
    """Runs a fresh context layer by layer against the numpy reference on the same inputs and
    prints the first layers whose outputs diverge (wrong results are reported, not hidden)."""
    import cupy as cp

    from tftrt.engine.backends.numpy_backend import NumpyBackend
    ctx = engine.create_execution_context()._impl
    nb = NumpyBackend()
    bad = 0
    cp.copyto(ctx.in_bufs[0], cp.asarray(x))
    with ctx.stream:
        for layer, impl, ins, outs in ctx.steps:
            impl.run(ins, outs, ctx.ws)
            hin = [None if a is None else cp.asnumpy(a) for a in ins]
            ref = nb.prepare_layer(engine.network, layer, engine.network.weights)(hin)
            for o, r in zip(outs, ref):
                got = cp.asnumpy(o).astype(np.float64)
                r = np.asarray(r).astype(np.float64)
                err = np.linalg.norm(got - r) / max(np.linalg.norm(r), 1e-30)
                if not err < 2e-2:
                    bad += 1
                    print(f"# DIVERGES {layer.name} {layer.kind} [{layer.epilogue_summary()}] "
                          f"tactic={layer.tactic} impl={type(impl).__name__} err={err:.3e} "
                          f"nan={int(np.isnan(got).sum())} attrs={layer.attrs} inputs="
                          f"{[None if a is None else (a.shape, str(a.dtype)) for a in ins]}",
                          flush=True)
            if bad >= limit:
                break
    print(f"# diagnosis: {bad} diverging layer outputs", flush=True)


def _layer_cost(net, layer):
    """(flops, bytes) floors of one layer from its shapes."""
    t = net.tensors
    size = lambda n: int(np.prod(t[n].shape)) * np.dtype(t[n].dtype).itemsize  # noqa: E731
    nbytes = sum(size(i) for i in layer.inputs if i) + sum(size(o) for o in layer.outputs)
    flops = 0
    if layer.kind == "conv":
        w, y = t[layer.inputs[1]].shape, t[layer.outputs[0]].shape
        flops = 2 * int(np.prod(y)) * int(np.prod(w[1:]))
    elif layer.kind == "matmul":
        a, y = t[layer.inputs[0]].shape, t[layer.outputs[0]].shape
        flops = 2 * int(np.prod(y)) * a[-1]
    elif layer.kind == "attention":  # q @ k^T and p @ v
        q, k, v = (t[n].shape for n in layer.inputs[:3])
        sk = k[1] if layer.attrs["layout"] == "bshd" else k[2]
        flops = 2 * (int(np.prod(q)) * sk + int(np.prod(q[:-1])) * sk * v[-1])
    return flops, nbytes


def print_profile(engine, ctx, x, model_name, precision, batch):
    from tftrt.engine.backends.cupy_layers import get_record
    prof = ctx._impl.profile([x], repeats=10)
    net = engine.network
    total = sum(t for _, t in prof)
    rows = []
    by_name = {l.name: l for l in net.layers}
    for name, t in prof:  # reshapes that are views run nothing and are not in the profile
        layer = by_name[name]
        flops, nbytes = _layer_cost(net, layer)
        floor = max(flops / (FP16_TFLOPS * 1e12 if precision == "FP16" else 400e12),
                    nbytes / (HBM_TBS * 1e12))
        rows.append((t, name, layer.kind, layer.epilogue_summary(), layer.tactic, flops, nbytes,
                     floor, get_record(layer) or {}))
    floor_total = sum(r[7] for r in rows)
    print(f"\n## per-layer profile {model_name} {precision} batch {batch}: sum {total * 1e3:.3f} "
          f"ms over {len(rows)} layers that run (of {len(net.layers)}; each replayed alone from "
          f"a CUDA graph); sum of floors "
          f"{floor_total * 1e3:.3f} ms")
    by_kind = {}
    for r in rows:
        k = (r[2], r[4])
        by_kind.setdefault(k, [0, 0.0, 0.0])
        by_kind[k][0] += 1
        by_kind[k][1] += r[0]
        by_kind[k][2] += r[7]
    for (kind, tac), (n, t, f) in sorted(by_kind.items(), key=lambda kv: -kv[1][1]):
        print(f"   {kind:12s} {str(tac):12s} x{n:3d}  {t * 1e3:8.3f} ms  floor {f * 1e3:7.3f} ms")
    kernels = {}  # INT8 / FP8 layers: what each runs on (its record's "kernel"), time summed
    for r in rows:
        if r[8].get("kernel") and "quant" in by_name[r[1]].attrs:
            k = kernels.setdefault(r[8]["kernel"], [0, 0.0])
            k[0] += 1
            k[1] += r[0]
    for kern, (n, t) in sorted(kernels.items(), key=lambda kv: -kv[1][1]):
        print(f"   quantized x{n:3d}  {t * 1e3:8.3f} ms  {kern}")
    print(f"   {'time_us':>8s} {'floor_us':>8s} {'TF/s':>6s} {'GB/s':>6s}  layer (kind, epilogue, "
          f"tactic)")
    for r in sorted(rows, key=lambda r: -r[0])[:25]:
        t, name, kind, epi, tac, flops, nbytes, floor, rec = r
        print(f"   {t * 1e6:8.1f} {floor * 1e6:8.1f} {flops / t / 1e12 if t else 0:6.1f} "
              f"{nbytes / t / 1e9 if t else 0:6.0f}  {name[-38:]} ({kind}, {epi or '-'}, {tac}"
              f"{', fused ' + str(rec.get('fused')) if 'fused' in rec else ''})")
    # the slowest quantized layers' choices: cuDNN variant and plan (engine, knobs) or
    # cuBLASLt algorithm, and what validation rejected on the way
    for r in sorted((r for r in rows if "quant" in by_name[r[1]].attrs), key=lambda r: -r[0])[:12]:
        rec = r[8]
        what = {k: rec[k] for k in ("variant", "engine", "knobs", "algo") if k in rec}
        rej = rec.get("rejected") or []
        print(f"   {r[0] * 1e6:8.1f}  {r[1][-24:]:24s} {r[4]}: {json.dumps(what)}"
              f"{f'; rejected {len(rej)}: {rej[0][:160]}' if rej else ''}")
    print(flush=True)


# --- torch peers (separate process) --------------------------------------------------------------
def bench_torch(model_name, precision, batches, modes):
    import torch
    import torchvision

    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    dt = torch.float16 if precision == "FP16" else torch.float32
    from torch_encoder import TorchEncoder
    ctor = {"resnet50": torchvision.models.resnet50,
            "mobilenet_v2": torchvision.models.mobilenet_v2}.get(model_name)
    torch.manual_seed(0)
    if ctor is None:  # the encoder: [batch, 128, 768] sequences
        base = TorchEncoder().cuda().eval().to(dtype=dt)
        in_shape, fmt = (128, 768), torch.contiguous_format
    else:
        base = ctor(weights=None).cuda().eval().to(dtype=dt, memory_format=torch.channels_last)
        in_shape, fmt = (3, 224, 224), torch.channels_last
    rows = []
    for mode in modes:
        m = base if mode == "eager" else torch.compile(base)
        for batch in batches:
            x = torch.randn((batch,) + in_shape, device="cuda", dtype=dt).to(
                memory_format=fmt)
            t0 = time.perf_counter()
            with torch.inference_mode():
                m(x)
                torch.cuda.synchronize()
                first = time.perf_counter() - t0
                ts = time_calls(lambda: m(x), _torch_timer(), _iters(batch))
            row = {"model": model_name, "precision": precision, "batch": batch,
                   "impl": f"torch_{mode}", "build_s": round(first, 1)}
            row.update(_stats(ts, batch))
            rows.append(row)
            print("#", json.dumps(row), flush=True)
            _append(row)
    return rows


def _append(row):
    if os.environ.get("BENCH_ROWS"):
        with open(os.environ["BENCH_ROWS"], "a") as f:
            f.write(json.dumps(row) + "\n")


def run_peer_process(model, precision, batches, modes):
    cmd = [sys.executable, __file__, "--peer", "--models", model, "--precisions", precision,
           "--batches", ",".join(map(str, batches)), "--peers", ",".join(modes)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    rows = []
    for line in out.stdout.splitlines():
        if line.startswith("# {"):
            rows.append(json.loads(line[2:]))
    if out.returncode != 0:
        print(f"# peer process failed ({out.returncode}): {out.stderr[-2000:]}")
    for r in rows:
        print("#", json.dumps(r))
    return rows


# --- table ---------------------------------------------------------------------------------------
def print_table(rows, device):
    print(f"\n# tftrt engine vs PyTorch on {device}")
    hdr = (f"{'model':13s} {'prec':4s} {'batch':>5s} {'impl':14s} {'median ms':>9s} "
           f"{'p99 ms':>8s} {'img/s':>9s} {'vs eager':>8s} {'vs compile':>10s} {'build s':>7s} "
           f"{'golden err':>10s}")
    print(hdr)
    print("-" * len(hdr))
    key = lambda r: (r["model"], r["precision"], r["batch"])  # noqa: E731
    peers = {}
    for r in rows:
        if r["impl"].startswith("torch"):
            peers[key(r) + (r["impl"],)] = r
    for r in sorted(rows, key=lambda r: (r["model"], r["precision"], r["batch"],
                                          r["impl"] != "tftrt", r["impl"])):
        ratio = lambda p: (f"{r['throughput'] / peers[key(r) + (p,)]['throughput']:.2f}x"  # noqa
                           if key(r) + (p,) in peers and r["impl"] == "tftrt" else "")
        err = f"{r['golden_relerr']:.1e}" if "golden_relerr" in r else ""
        print(f"{r['model']:13s} {r['precision']:4s} {r['batch']:5d} {r['impl']:14s} "
              f"{r['median_ms']:9.3f} {r['p99_ms']:8.3f} {r['throughput']:9.0f} "
              f"{ratio('torch_eager'):>8s} {ratio('torch_compile'):>10s} {r['build_s']:7.1f} "
              f"{err:>10s}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet50,mobilenet_v2")
    ap.add_argument("--precisions", default="FP16,FP32")
    ap.add_argument("--batches", default="1,8,128")
    ap.add_argument("--peers", default="eager,compile", help="torch modes ('' for none)")
    ap.add_argument("--peer-precisions", default=None, help="precisions for torch peers")
    ap.add_argument("--networks", default=os.path.join(os.path.dirname(HERE), ".whl",
                                                        "networks"))
    ap.add_argument("--profile", default="", help="model:precision:batch[,...] to profile")
    ap.add_argument("--peer", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--json", default="")
    ap.add_argument("--table-from", default="", help="print the table of a rows .jsonl file")
    args = ap.parse_args(argv)
    import logging
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    models = [m for m in args.models.split(",") if m]
    precisions = [p for p in args.precisions.split(",") if p]
    batches = [int(b) for b in args.batches.split(",") if b]
    modes = [m for m in args.peers.split(",") if m]
    if args.table_from:
        import cupy as cp
        props = cp.cuda.runtime.getDeviceProperties(0)
        device = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        with open(args.table_from) as f:
            print_table([json.loads(line) for line in f if line.strip()], device)
        return
    if args.peer:
        for m in models:
            for p in precisions:
                bench_torch(m, p, batches, modes)
        return
    import cupy as cp
    props = cp.cuda.runtime.getDeviceProperties(0)
    device = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    prof = {}
    for spec in filter(None, args.profile.split(",")):
        m, p, b = spec.split(":")
        prof.setdefault((m, p), set()).add(int(b))
    rows = []
    for m in models:
        for p in precisions:
            rows += bench_engine(m, p, batches, args.networks, prof.get((m, p), ()))
    peer_prec = precisions if args.peer_precisions is None else \
        [p for p in args.peer_precisions.split(",") if p]
    if modes:
        for m in models:
            for p in peer_prec:
                rows += run_peer_process(m, p, batches, modes)
    print_table(rows, device)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
