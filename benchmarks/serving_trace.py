"""Serving trace (issue 14): requests of random batch sizes through TensorFlow, one run.

A service with dynamic batching sends every batch size from 1 to its maximum. The trace draws
--requests batch sizes uniformly from 1..--max-batch (seeded) and sends them one after the
other, each waited for, to three runners of the same Keras model (a zoo model, seeded), in one
process:

  * tftrt: ``TrtGraphConverterV2(use_dynamic_shape=True, precision_mode=--precision)``, built
    with batches 1 and --max-batch (TF-TRT's Range strategy: one profile 1..max, tuned at max);
    its convert + build time is reported apart. Requests go through the function convert()
    returned (TensorFlow in, TensorFlow out); a batch size not seen yet gets its engine from
    the profile on its first request, inside the measured latency.
  * xla: the same architecture and seed under Keras' mixed_float16 policy in
    ``tf.function(jit_compile=True)``: XLA compiles each new batch size when it arrives, as
    users run it, inside the measured latency.
  * native: the exported SavedModel's signature, FP32.

Reported per runner: p50 / p99 / mean / max latency (ms), throughput (samples per second of
trace wall time), and the latency of first calls at new batch sizes (median, max) apart from
the rest. Outputs are checked against native on a few batch sizes. Inputs are made before
timing and are already on the device.

    # the GPU host (TensorFlow's GPU build, CuPy):
    python benchmarks/serving_trace.py --model ResNet50 --requests 2000 --max-batch 64 \\
        --backend cupy --precision FP16 --json trace.json
    # CPU, small numbers (what the test runs):
    python benchmarks/serving_trace.py --model tiny --requests 50 --backend numpy --max-batch 8
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

RUNNERS = ("tftrt", "xla", "native")


def _tiny(size: int, seed: int = 0):
    """A small seeded conv net (conv + BN + ReLU, two stages, pooling, dense): CPU runs."""
    import keras
    keras.utils.set_random_seed(seed)
    L = keras.layers
    x = inp = keras.Input((size, size, 3), name="x")
    for filters, stride in ((16, 2), (32, 2)):
        x = L.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False)(x)
        x = L.BatchNormalization()(x)
        x = L.ReLU()(x)
    x = L.GlobalAveragePooling2D()(x)
    model = keras.Model(inp, L.Dense(10)(x))
    from tftrt.zoo import randomize_batchnorm
    return randomize_batchnorm(model, seed)


def make_model(name: str, size: int):
    if name == "tiny":
        return _tiny(size)
    from tftrt import zoo
    return zoo.build(name, size)


def _waiter():
    """Waits until a result is computed (all GPU streams: TF's and CuPy's), without copying
    it to the host; on the CPU, the values themselves."""
    import tensorflow as tf
    gpu = bool(tf.config.list_physical_devices("GPU"))
    if gpu:
        try:
            import cupy as cp
            from tftrt.bench import device_synchronize
        except ImportError:
            cp = None

    def wait(out):
        flat = tf.nest.flatten(out)
        if gpu and cp is not None and any("GPU" in getattr(v, "device", "") for v in flat):
            # under tftrt's capture lock: engines built in the background between requests
            # may capture on another thread (a bare cudaDeviceSynchronize failed inside one:
            # cudaErrorStreamCaptureUnsupported, GPU run of 2026-12-02)
            device_synchronize()
        else:
            for v in flat:
                v.numpy()
    return wait


def replay(fn, trace, inputs, wait, deadline_s=None):
    """Latency (ms) of each request and whether its batch size was new to ``fn``; wall s.
    With ``deadline_s``, requests stop once that much wall time has passed (fewer latencies
    than requests: summarize() reports bounds for the whole trace)."""
    seen, lat, new = set(), [], []
    t_start = time.perf_counter()
    for b in trace:
        if deadline_s is not None and time.perf_counter() - t_start > deadline_s:
            break
        x = inputs[b]
        t0 = time.perf_counter()
        wait(fn(x))
        lat.append((time.perf_counter() - t0) * 1e3)
        new.append(b not in seen)
        seen.add(b)
    return lat, new, time.perf_counter() - t_start


def summarize(trace, lat, new, wall_s) -> dict:
    """Latency percentiles and throughput of a replay. A replay cut short by its deadline
    (fewer latencies than ``trace``) is reported over the requests it served, marked
    ``truncated``, with bounds that hold for the whole trace whatever the rest would take:
    throughput at most sum(trace) / wall (the whole trace takes longer than the part served)
    and p99 at least the (n // 100 + 1)-th largest latency served (that many requests of the
    whole trace are at least that slow)."""
    lat, new = np.asarray(lat), np.asarray(new, bool)
    served = np.asarray(trace[:len(lat)])
    out = {"p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
           "mean_ms": float(lat.mean()), "max_ms": float(lat.max()),
           "throughput": float(np.sum(served) / wall_s), "wall_s": wall_s,
           "new_sizes": int(new.sum()), "served": int(len(lat))}
    if len(lat) < len(trace):
        out["truncated"] = True
        out["throughput_upper_bound"] = float(np.sum(trace) / wall_s)
        k = len(trace) // 100 + 1
        if len(lat) >= k:
            out["p99_lower_bound_ms"] = float(np.sort(lat)[-k])
    if new.any():
        out["first_call_median_ms"] = float(np.median(lat[new]))
        out["first_call_max_ms"] = float(lat[new].max())
    if (~new).any():
        out["seen_p50_ms"] = float(np.percentile(lat[~new], 50))
        out["seen_p99_ms"] = float(np.percentile(lat[~new], 99))
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="ResNet50", help="a tftrt.zoo name, or 'tiny'")
    ap.add_argument("--size", type=int, help="input size (default: 224, tiny: 16)")
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--max-batch", type=int, default=64)
    ap.add_argument("--backend", default=None, help="tftrt engines: cupy or numpy "
                    "(default: $TFTRT_BACKEND, else cupy with a GPU)")
    ap.add_argument("--precision", default="FP16", help="tftrt's precision_mode")
    ap.add_argument("--runners", default=",".join(RUNNERS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--runner-deadline", type=float, default=None, metavar="S",
                    help="stop each runner's replay after S seconds and report bounds for the "
                    "whole trace (a runner that compiles every new shape may not fit a call)")
    args = ap.parse_args(argv)
    runners = [r.strip() for r in args.runners.split(",") if r.strip()]
    bad = [r for r in runners if r not in RUNNERS]
    if bad:
        raise SystemExit(f"unknown runners {bad}; use some of {list(RUNNERS)}")
    if args.backend:
        os.environ["TFTRT_BACKEND"] = args.backend
    os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")
    import keras
    import tensorflow as tf
    from tftrt import trt_convert as trt
    from tftrt.engine_op import resolve_backend

    size = args.size or (16 if args.model == "tiny" else 224)
    gpus = tf.config.list_physical_devices("GPU")
    dev = "/GPU:0" if gpus else "/CPU:0"
    device = (tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU")
              if gpus else "CPU")
    trace = np.random.default_rng(args.seed).integers(1, args.max_batch + 1, args.requests)
    rng = np.random.RandomState(args.seed)
    with tf.device(dev):
        inputs = {int(b): tf.constant(rng.rand(int(b), size, size, 3).astype(np.float32))
                  for b in sorted(set(trace.tolist()) | {1, args.max_batch})}
    wait = _waiter()
    result = {"model": args.model, "size": size, "requests": args.requests,
              "max_batch": args.max_batch, "device": device, "precision": args.precision,
              "backend": resolve_backend(), "distinct_sizes": len(set(trace.tolist())),
              "trace": trace.tolist(), "runners": {},
              "env": {k: v for k, v in sorted(os.environ.items()) if k.startswith("TFTRT_")}}
    print(f"# {args.model} {size}x{size}, {args.requests} requests, batch 1..{args.max_batch} "
          f"({result['distinct_sizes']} distinct), on {device}; tftrt {args.precision} on "
          f"{result['backend']}", flush=True)

    keras.mixed_precision.set_global_policy("float32")
    work = tempfile.mkdtemp(prefix="serving-trace-")
    src = os.path.join(work, "model")
    make_model(args.model, size).export(src, verbose=False)
    native = tf.saved_model.load(src).signatures["serving_default"]
    arg = next(iter(native.structured_input_signature[1]))
    calls = {"native": lambda x: native(**{arg: x})}
    refs = {b: native(**{arg: inputs[b]}) for b in (1, args.max_batch)}

    if "xla" in runners:
        keras.mixed_precision.set_global_policy("mixed_float16")
        xla_model = make_model(args.model, size)
        keras.mixed_precision.set_global_policy("float32")
        xla = tf.function(lambda x: xla_model(x, training=False), jit_compile=True)
        calls["xla"] = xla
    if "tftrt" in runners:
        t0 = time.perf_counter()
        conv = trt.TrtGraphConverterV2(input_saved_model_dir=src, use_dynamic_shape=True,
                                       precision_mode=args.precision)
        fn = conv.convert()
        conv.build(lambda: iter([(inputs[1],), (inputs[args.max_batch],)]))
        build_s = time.perf_counter() - t0
        calls["tftrt"] = lambda x: fn(**{arg: x})
        result["tftrt_build_s"] = build_s
        print(f"# tftrt: convert + build (profile 1..{args.max_batch}) {build_s:.1f} s",
              flush=True)

    def rel_err(out, ref):
        a = tf.nest.flatten(out)[0].numpy().astype(np.float64)
        r = tf.nest.flatten(ref)[0].numpy().astype(np.float64)
        return float(np.max(np.abs(a - r)) / (np.max(np.abs(r)) or 1.0))

    for name in runners:
        lat, new, wall = replay(calls[name], trace.tolist(), inputs, wait,
                                args.runner_deadline)
        row = summarize(trace.tolist(), lat, new, wall)
        row["rel_err_vs_native"] = max(rel_err(calls[name](inputs[b]), refs[b]) for b in refs)
        if name == "tftrt":
            ops = conv.engine_ops.values()
            row["engine_calls"] = sum(op.stats["engine"] for op in ops)
            row["native_fallbacks"] = sum(op.stats["native"] for op in ops)
            row["shape_builds"] = sum(op.stats.get("shape_builds", 0) for op in ops)
            row["engines"] = [op.describe() for op in ops]
        result["runners"][name] = row
        print(f"{name}: done in {wall:.1f} s: p50 {row['p50_ms']:.2f} ms, p99 "
              f"{row['p99_ms']:.2f} ms, {row['throughput']:.1f} samples/s, first calls at "
              f"new sizes median {row.get('first_call_median_ms', 0):.2f} ms, max "
              f"{row.get('first_call_max_ms', 0):.2f} ms", flush=True)
        if row.get("truncated"):
            print(f"{name}: cut at {args.runner_deadline:.0f} s after {row['served']} of "
                  f"{len(trace)} requests: whole-trace throughput <= "
                  f"{row['throughput_upper_bound']:.1f} samples/s, p99 >= "
                  f"{row.get('p99_lower_bound_ms', float('nan')):.2f} ms", flush=True)
        if args.json:  # after each runner: a call cut short still returns the ones done
            with open(args.json, "w") as f:
                json.dump(result, f, indent=1)

    print(f"{'runner':>7} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8} {'max ms':>8} "
          f"{'samples/s':>10} {'new sizes':>9} {'1st call med':>12} {'1st call max':>12}")
    for name, r in result["runners"].items():
        print(f"{name:>7} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f} {r['mean_ms']:8.2f} "
              f"{r['max_ms']:8.2f} {r['throughput']:10.1f} {r['new_sizes']:9d} "
              f"{r.get('first_call_median_ms', 0):12.2f} {r.get('first_call_max_ms', 0):12.2f}")
    if "tftrt" in result["runners"]:
        t = result["runners"]["tftrt"]
        print(f"# tftrt build (convert + build, apart from the trace): {build_s:.1f} s; "
              f"{t['shape_builds']} engines for new sizes, {t['native_fallbacks']} native "
              f"fallbacks; rel. error vs native {t['rel_err_vs_native']:.2e}")
        if "xla" in result["runners"]:
            x = result["runners"]["xla"]
            # a truncated XLA replay: compare with its bounds (XLA's p99 at least, its
            # throughput at most), which hold for the whole trace
            x_p99 = x.get("p99_lower_bound_ms", x["p99_ms"])
            x_tp = x.get("throughput_upper_bound", x["throughput"])
            result["tftrt_vs_xla"] = {"p99_ratio": t["p99_ms"] / x_p99,
                                      "throughput_ratio": t["throughput"] / x_tp,
                                      "xla_bounds": bool(x.get("truncated"))}
            print(f"# tftrt / xla: p99 {t['p99_ms']:.2f} / {x_p99:.2f} ms, throughput "
                  f"{result['tftrt_vs_xla']['throughput_ratio']:.2f}x"
                  f"{' (XLA cut short: its bounds)' if x.get('truncated') else ''}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
    sys.exit(0)
