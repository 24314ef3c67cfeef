"""End-to-end benchmark: tftrt through TensorFlow vs TF native, TF XLA and PyTorch, one run.

On the GPU host (TensorFlow's GPU build from gpu-host/pack-tensorflow.sh, CuPy, torch):

    source /tmp/tfsite/env.sh && python benchmarks/bench_e2e.py --part tf --out results.json
    python benchmarks/bench_e2e.py --part torch --out results.json   # separate process, no env.sh
    python benchmarks/bench_e2e.py --part table --out results.json

Models: Keras ResNet50 and MobileNetV2 (224x224) and a BERT-base-sized encoder (12 layers,
hidden 768, seq 128) built from Keras layers, seeded weights; PyTorch peers: torchvision
resnet50 / mobilenet_v2 and a torch encoder of the same size (channels_last, FP16).
Latency = wall time of one call until its outputs are ready (synchronised each call: what a
user sees through TensorFlow); throughput = batch / median latency. Medians and p99 over
--iters calls after --warmup calls. "boundary ms" = tftrt's median through TensorFlow minus
the same engine called directly from Python on a CuPy array (what the call boundary adds).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

BATCHES = (1, 8, 128)
MODELS = ("resnet50", "mobilenet_v2", "encoder")


def _stats(times_s, batch):
    t = np.asarray(times_s) * 1e3
    med = float(np.median(t))
    return {"median_ms": med, "p99_ms": float(np.percentile(t, 99)),
            "throughput": batch / (med / 1e3)}


def _wait(out):
    """Waits until ``out`` is computed, without copying it: every stream of the GPU is
    synchronized (TF's, and CuPy's for the engines). Copying the outputs to the host, as an
    earlier version did, timed a 50 MB device-to-host copy for the encoder at batch 128 (its
    output is the full [128, 128, 768] hidden state), more than the model itself."""
    import tensorflow as tf
    flat = tf.nest.flatten(out)
    if any("GPU" in getattr(v, "device", "") for v in flat):
        from tftrt.bench import device_synchronize  # never inside an engine's capture
        device_synchronize()
    else:
        for v in flat:
            v.numpy()


def _time_tf(fn, arg, warmup, iters):
    def once():
        _wait(fn(**arg))

    return _wall_times(once, warmup, iters)


def _wall_times(once, warmup, iters):
    """Seconds of each of ``iters`` calls of ``once`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        once()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        once()
        times.append(time.perf_counter() - t0)
    return times


def _engine_ms(loaded, arg, warmup, iters):
    """Median wall ms of the engine alone (CuPy input already on the GPU, the GPU synchronized
    after the call, as _time_tf does): what a call through TensorFlow adds is the difference."""
    ops = list(loaded.engine_ops.values())
    if len(ops) != 1 or len(arg) != 1:
        return None
    t = next(iter(arg.values()))
    engine = ops[0].cache.get((tuple(int(d) for d in t.shape),))
    if engine is None or engine.backend != "cupy":
        return None
    import cupy as cp  # (not before: a numpy-backend check runs without CuPy)
    import tensorflow as tf
    x = cp.from_dlpack(tf.experimental.dlpack.to_dlpack(t)).copy()

    def once():
        engine.execute([x])
        cp.cuda.runtime.deviceSynchronize()

    return float(np.median(_wall_times(once, warmup, iters)) * 1e3)


def _profile_calls(fn, arg, n, title):
    """cProfile of n calls through TensorFlow: where the host time of the boundary goes."""
    import cProfile
    import pstats
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(n):
        _wait(fn(**arg))
    prof.disable()
    print(f"## host profile, {n} calls, {title}")
    pstats.Stats(prof).sort_stats("tottime").print_stats(22)


def _save_results(path, key, value):
    data = json.load(open(path)) if os.path.exists(path) else {}
    data[key] = value
    json.dump(data, open(path, "w"), indent=1)


def part_tf(args):
    os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")
    import keras
    import tensorflow as tf
    import tftrt
    from tftrt import trt_convert as trt, zoo
    os.environ["TFTRT_BACKEND"] = args.backend
    work = tempfile.mkdtemp(prefix="bench-e2e-")
    gpus = tf.config.list_physical_devices("GPU")
    device = (tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU")
              if gpus else "CPU")
    _save_results(args.out, "device", device)
    dev = "/GPU:0" if gpus else "/CPU:0"
    for name in args.models:
        make, _ = zoo.MODELS[name]
        keras.mixed_precision.set_global_policy("float32")
        model = make() if args.size is None or name == "encoder" else make(args.size)
        src = os.path.join(work, name)
        model.export(src, verbose=False)
        native = tf.saved_model.load(src).signatures["serving_default"]
        arg_name = next(iter(native.structured_input_signature[1]))
        rows = {}

        t_model = time.perf_counter()

        def save(stage):  # after every configuration: a run cut short keeps what it measured
            _save_results(args.out, name, {**json.load(open(args.out)).get(name, {}), **rows})
            print(f"{name}: {stage} done at {time.perf_counter() - t_model:.0f} s", flush=True)

        def inputs(b, seed=None):
            size = None if name == "encoder" else args.size
            with tf.device(dev):
                return {arg_name: tf.constant(np.random.RandomState(b if seed is None else seed)
                                              .rand(*zoo.input_shape(name, b, size))
                                              .astype(np.float32))}

        for b in args.batches:
            rows[f"tf_native_fp32/{b}"] = _stats(_time_tf(native, inputs(b), args.warmup,
                                                          args.iters), b)
        save("TF native")
        # TF XLA, mixed FP16: the same architecture and seed under the mixed_float16 policy.
        keras.mixed_precision.set_global_policy("mixed_float16")
        xla_model = make() if args.size is None or name == "encoder" else make(args.size)
        keras.mixed_precision.set_global_policy("float32")
        xla = tf.function(lambda x: xla_model(x, training=False), jit_compile=True)
        for b in args.batches:
            x = inputs(b)[arg_name]
            rows[f"tf_xla_fp16/{b}"] = _stats(_time_tf(lambda **k: xla(k["x"]), {"x": x},
                                                       args.warmup, args.iters), b)
        save("TF XLA")
        for precision in args.precisions:
            conv = trt.TrtGraphConverterV2(input_saved_model_dir=src, precision_mode=precision,
                                           maximum_cached_engines=len(args.batches))
            if precision in ("INT8", "FP8"):  # calibrated on a few batches of the inputs
                conv.convert(calibration_input_fn=lambda: iter(
                    [tuple(inputs(max(args.batches), 1000 + k).values())
                     for k in range(args.calib_batches)]))
            else:
                conv.convert()
            print(f"{name}: {precision} converted at {time.perf_counter() - t_model:.0f} s",
                  flush=True)
            t0 = time.perf_counter()
            conv.build(lambda: iter([tuple(inputs(b).values()) for b in args.batches]))
            build_s = time.perf_counter() - t0
            dst = os.path.join(work, f"{name}_{precision}")
            conv.save(dst)
            loaded = tftrt.load(dst)
            sig = loaded.signatures["serving_default"]
            for b in args.batches:
                arg = inputs(b)
                ref = native(**arg)
                got = sig(**arg)
                err = max(float(np.max(np.abs(got[k].numpy() - ref[k].numpy())))
                          / (float(np.max(np.abs(ref[k].numpy()))) or 1.0) for k in ref)
                st = _stats(_time_tf(sig, arg, args.warmup, args.iters), b)
                st["rel_err"] = err
                st["build_s"] = build_s
                st["on_gpu"] = all("GPU" in got[k].device for k in got)
                st["native_fallbacks"] = sum(op.stats["native"]
                                             for op in loaded.engine_ops.values())
                eng = _engine_ms(loaded, arg, args.warmup, args.iters)
                if eng is not None:  # the engine alone, called from Python the same way
                    st["engine_ms"] = eng
                    st["boundary_ms"] = st["median_ms"] - eng
                if args.profile_calls and b == min(args.batches) and precision == "FP16":
                    _profile_calls(sig, arg, args.profile_calls, f"{name} FP16 batch {b}")
                rows[f"tftrt_{precision.lower()}/{b}"] = st
            save(f"tftrt {precision} (built in {build_s:.0f} s)")


def part_torch(args):
    import torch
    import torchvision
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from torch_encoder import TorchEncoder
    torch.manual_seed(0)
    dev = torch.device("cuda")
    makers = {
        "resnet50": lambda: torchvision.models.resnet50(),
        "mobilenet_v2": lambda: torchvision.models.mobilenet_v2(),
        "encoder": lambda: TorchEncoder(),
    }
    shapes = {"resnet50": lambda b: (b, 3, 224, 224), "mobilenet_v2": lambda b: (b, 3, 224, 224),
              "encoder": lambda b: (b, 128, 768)}
    for name in args.models:
        model = makers[name]().eval().to(dev).half()
        conv = name != "encoder"
        if conv:
            model = model.to(memory_format=torch.channels_last)
        rows = {}
        for mode in ("eager", "compile"):
            fn = model if mode == "eager" else torch.compile(model)
            for b in args.batches:
                x = torch.randn(*shapes[name](b), device=dev, dtype=torch.half)
                if conv:
                    x = x.to(memory_format=torch.channels_last)
                with torch.inference_mode():
                    for _ in range(args.warmup):
                        fn(x)
                    torch.cuda.synchronize()
                    times = []
                    for _ in range(args.iters):
                        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(
                            enable_timing=True)
                        s.record()
                        fn(x)
                        e.record()
                        e.synchronize()
                        times.append(s.elapsed_time(e) / 1e3)
                rows[f"torch_{mode}_fp16/{b}"] = _stats(times, b)
        data = json.load(open(args.out)) if os.path.exists(args.out) else {}
        _save_results(args.out, name, {**data.get(name, {}), **rows})
        print(f"{name}: torch done", flush=True)


PEERS = ("tf_native_fp32", "tf_xla_fp16", "torch_eager_fp16", "torch_compile_fp16")


def part_table(args):
    data = json.load(open(args.out))
    print(f"device: {data.get('device', '?')}")
    hdr = (f"{'model':<13}{'batch':>6}  {'config':<19}{'median ms':>10}{'p99 ms':>9}"
           f"{'items/s':>10}  " + "  ".join(f"{'x ' + p:>20}" for p in PEERS) +
           f"{'build s':>9}{'rel err':>9}{'boundary ms':>13}{'x tftrt_fp16':>14}")
    print(hdr)
    print("-" * len(hdr))
    for name in MODELS:
        rows = data.get(name)
        if not rows:
            continue
        batches = sorted({int(k.split("/")[1]) for k in rows})
        for b in batches:
            for cfg in ("tftrt_fp32", "tftrt_fp16", "tftrt_int8", "tftrt_fp8") + PEERS:
                r = rows.get(f"{cfg}/{b}")
                if r is None:
                    continue
                ratios = []
                for p in PEERS:
                    pr = rows.get(f"{p}/{b}")
                    ratios.append(f"{r['throughput'] / pr['throughput']:>20.2f}" if pr and
                                  cfg.startswith("tftrt") else f"{'':>20}")
                extra = (f"{r.get('build_s', 0):>9.1f}{r.get('rel_err', 0):>9.1e}"
                         f"{r.get('boundary_ms', float('nan')):>13.3f}"
                         if cfg.startswith("tftrt") else "")
                ours = rows.get(f"tftrt_fp16/{b}")  # INT8 / FP8 against our FP16 (issue 15)
                if ours and cfg in ("tftrt_int8", "tftrt_fp8"):
                    extra += f"{r['throughput'] / ours['throughput']:>14.2f}"
                print(f"{name:<13}{b:>6}  {cfg:<19}{r['median_ms']:>10.3f}{r['p99_ms']:>9.3f}"
                      f"{r['throughput']:>10.0f}  " + "  ".join(ratios) + extra)
        print()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=("tf", "torch", "table"), required=True)
    ap.add_argument("--out", default="bench_e2e.json")
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--batches", nargs="+", type=int, default=list(BATCHES))
    ap.add_argument("--precisions", nargs="+", default=["FP16", "FP32"],
                    help="tftrt precisions (FP16 first: the headline, kept if a run is cut)")
    ap.add_argument("--calib-batches", type=int, default=4,
                    help="INT8 / FP8: batches (of the largest size) calibration runs")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--backend", default="cupy", help="engine backend (numpy for a CPU check)")
    ap.add_argument("--size", type=int, default=None, help="image size (default 224)")
    ap.add_argument("--profile-calls", type=int, default=0,
                    help="cProfile this many FP16 calls at the smallest batch")
    args = ap.parse_args(argv)
    {"tf": part_tf, "torch": part_torch, "table": part_table}[args.part](args)


if __name__ == "__main__":
    main()
