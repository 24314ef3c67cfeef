"""The zoo sweep: every tftrt.zoo model through TrtGraphConverterV2 next to TF XLA and native TF.

On the GPU host (TensorFlow's GPU build from gpu-host/pack-tensorflow.sh, CuPy):

    source /tmp/tfsite/env.sh && python benchmarks/zoo.py --models ResNet50 DenseNet121 \
        --out zoo.jsonl
    python benchmarks/torch_zoo.py --models ResNet50 DenseNet121 --out zoo.jsonl   # no env.sh
    python benchmarks/zoo.py --table --out zoo.jsonl

The sweep runs in parts (``--models``), each appending JSON rows (one line each) to ``--out``;
every row keeps its own same-run peers. Per model and configuration one row: runtime
("tftrt", "tf_xla", "tf_native", "torch_compile"), precision and per batch the median / p99
latency (ms) and throughput (items/s). Latency = wall time of one call through TensorFlow until
its outputs are ready (the GPU synchronized after each call; GPU tensors in); throughput =
batch / median. tftrt rows add: % of non-Const ops inside engines, engines, host layers (must
be 0: layers whose implementation is not one of the CuPy backend's GPU implementations,
``cupy_backend.impl_table``), layers on a fallback tactic with the backend's reason, build
seconds, relative error max|diff| / max|native FP32| per batch, and native segment calls
(op.stats["native"], must be 0). tftrt converts every model in FP16 and the first model of
each family (registry order) also in FP32. TF XLA: the same Keras model under the
mixed_float16 policy, ``jit_compile=True``. ``--dry-run`` checks the code paths on a CPU:
numpy backend, the smallest input size and widths, two timed calls.
"""

from __future__ import annotations

import argparse
import collections
import gc
import json
import contextlib
import os
import shutil
import sys
import tempfile
import time
from typing import Dict, List, Optional

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_e2e import _stats, _time_tf  # noqa: E402  (shared timing: synchronize, medians)

BATCHES = (1, 8, 128)
REF_ROWS = 16  # rows per native reference call (see main's reference())
# Done-when bars (issue 13): max|diff| <= tol x max|native FP32 output|.
# "TF32": an FP32 row where TensorFlow's TF32 switch is on (its default on GPUs since
# Ampere): native TF's convolutions and GEMMs then round their operands to 10-bit mantissas,
# and so do the FP32 engines, which follow that switch as TF-TRT did (engine_op._tf32_enabled).
# Each side's rounding is ~2^-11 relative per layer, in its own summation order; VGG16's 16
# layers came out 1.4e-3 apart on an H200 (2026-11-30 g and 2026-12-01 i), over the strict bar.
REL_TOL = {"FP16": 2e-2, "FP32": 1e-3, "TF32": 5e-3,
           # INT8 / FP8 (--precisions): calibrated on --calib-batches seeded batches of a zoo
           # model of random weights, a catch for broken numbers (NaN, a wrong layout or
           # scale), not the accuracy bar: that is issue 15's trained models (tests/, top-1)
           "INT8": 1e-1, "FP8": 1e-1}
QUANTIZED = ("INT8", "FP8")


def rel_bar(precision: str, xla_err: float = 0.0, tf32: bool = False) -> float:
    """The largest error a tftrt row may have against native TF: REL_TOL, or in FP16 no more
    than Keras' own mixed_float16 model (run by XLA) has on the same inputs, when that is
    larger: a seeded model of random weights may lose that much to float16 anywhere
    (EfficientNetV2B1's FP16 logits are 33% off in Keras' mixed precision, 2026-12-01). An
    FP32 row with ``tf32`` (TF32 on, a GPU) gets REL_TOL["TF32"]."""
    if precision == "FP32" and tf32:
        return REL_TOL["TF32"]
    return max(REL_TOL[precision], xla_err if precision == "FP16" else 0.0)


def tf32_on(dev: str) -> bool:
    """Whether FP32 convolutions and GEMMs may use TF32 here: TensorFlow's switch, on a GPU
    (a CPU has no TF32; the numpy backend computes in float32)."""
    import tensorflow as tf
    return "GPU" in dev and bool(tf.config.experimental.tensor_float_32_execution_enabled())


@contextlib.contextmanager
def tf32_switch(on: bool):
    """TensorFlow's TF32 switch set to ``on`` for the block, then back as it was. TF reads it
    when a convolution or GEMM kernel runs (XLA when it compiles)."""
    import tensorflow as tf
    before = tf.config.experimental.tensor_float_32_execution_enabled()
    tf.config.experimental.enable_tensor_float_32_execution(on)
    try:
        yield
    finally:
        tf.config.experimental.enable_tensor_float_32_execution(before)


def top1_agreement(got, ref) -> float:
    """The share of rows whose argmax over the last axis agrees between ``got`` and ``ref``
    (the first output of each): what a classifier's quantization changes."""
    k = next(iter(ref))
    a, b = np.asarray(got[k]), np.asarray(ref[k])
    a, b = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
    return float(np.mean(np.argmax(a, -1) == np.argmax(b, -1)))


def quantization_facts(ops) -> dict:
    """An INT8 / FP8 row's precision facts, from each engine op's report (summary()'s): its
    conv / GEMM layers per precision, the share of their FLOPs quantized, and what timing
    against FP16 decided (builder.timed_precision) for the first engine that says."""
    from tftrt.summary import quantization_report
    count = collections.Counter()
    out = {"layer_precisions": count, "quantized_share": []}
    for op in ops:
        report, _ = quantization_report(op)
        if report is None:
            continue
        count.update(r["precision"] for r in report["layers"])
        out["quantized_share"].append(report["quantized_share"])
        for _, entry in op.cache.items():
            timed = getattr(entry, "build_info", {}).get("timed_precision")
            if timed and "timed_precision" not in out:
                out["timed_precision"] = {k: v for k, v in timed.items()
                                          if k != "quantized_phases"}
    return out


def rel_err(got, ref) -> float:
    """max |got - ref| / max |ref| over the outputs of ``ref`` (dicts of tensors): the
    largest of tftrt.compare.output_errors, the measure build()'s own check reports."""
    from tftrt.compare import output_errors
    return max(output_errors(got, ref).values())


def append_row(path: str, row: dict) -> None:
    """Appends one JSON row (one line) to ``path``: parts of a sweep share one file."""
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def read_rows(path: str) -> List[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def earlier_xla_err(path: str, model: str, size: int, device: str) -> float:
    """The error of the latest TF XLA FP16 row in ``path`` for ``model`` at ``size`` on
    ``device`` (0.0 if none): a model split over two calls (--peers-only, then --skip-xla)
    keeps XLA's error as its FP16 bar."""
    if not os.path.exists(path):
        return 0.0
    rows = [r for r in read_rows(path) if r.get("runtime") == "tf_xla" and
            r.get("model") == model and r.get("size") == size and
            r.get("device") == device and "rel_err" in r]
    return float(rows[-1]["rel_err"]) if rows else 0.0


def fp32_models(names) -> set:
    """The first model of each family (registry order): the ones also converted in FP32."""
    from tftrt import zoo
    return {members[0] for members in zoo.families().values()} & set(names)


def engine_report(ops) -> dict:
    """What the engines say about themselves: engine ops (segments), engines built (one per
    op and batch size, profiles included), layers, host layers and fallbacks.

    Host layers: for CuPy engines, layers whose implementation (what the backend prepared for
    them, ``engine_impls``) is not one of the GPU implementations of ``impl_table``; every
    layer of a numpy-backend engine runs on the host. Fallbacks: layers whose implementation
    reports ``fallback`` (a GPU path taken because the tactic's own could not), with why.
    Eager layers: CuPy layers that are not captured into the engine's CUDA graphs
    (``capturable`` False: they read a value on the host), a cost at small batch.
    """
    engines, layers, host, fallbacks, eager = 0, 0, [], [], []
    for op in ops:
        # A dynamic-shape op caches one ProfileEngine, which holds a runtime engine per
        # exact shape it served.
        runtime = [e for _k, pe in op.cache.items()
                   for e in ([x for _s, x in pe.engines()] if hasattr(pe, "engines") else [pe])]
        for engine in runtime:
            engines += 1
            net_layers = engine.network.layers
            layers += len(net_layers)
            if engine.backend != "cupy":
                host += [f"{op.name}/{l.name} ({l.kind}, {engine.backend} backend)"
                         for l in net_layers]
                continue
            from tftrt.engine.backends.cupy_backend import impl_table
            gpu = {cls for tactics in impl_table().values() for chain in tactics.values()
                   for cls in chain}
            impls = engine.backend_impl.engine_impls(engine)
            for l, impl in zip(net_layers, impls):
                if type(impl) not in gpu or getattr(impl, "on_host", False):
                    host.append(f"{op.name}/{l.name} ({l.kind} {l.tactic} -> "
                                f"{type(impl).__name__})")
                if not getattr(impl, "capturable", True):
                    eager.append(f"{op.name}/{l.name} ({l.kind})")
                if getattr(impl, "fallback", None):
                    fallbacks.append(f"{op.name}/{l.name} ({l.kind} {l.tactic} -> "
                                     f"{type(impl).__name__}: {impl.fallback[:200]})")
    return {"engine_ops": len(ops), "engines": engines, "layers": layers,
            "host_layers": len(host), "host_layer_names": host[:20],
            "fallback_layers": len(fallbacks), "fallbacks": fallbacks,
            "eager_layers": eager}


def run_model(name: str, args, work: str, dev: str, device: str) -> None:
    import keras
    import tensorflow as tf
    import tftrt
    from tftrt import trt_convert as trt, zoo
    entry = zoo.ZOO[name]
    small = args.dry_run
    size = args.size or (entry.min_size if small else entry.size)
    t_model = time.perf_counter()
    base = {"model": name, "family": entry.family, "size": size, "device": device,
            "backend": args.backend, "dry_run": bool(args.dry_run),
            # run_gpu_zoo.sh: "warm" when a carried build cache was unpacked, else "cold"
            "build_cache": os.environ.get("ZOO_BUILD_CACHE", ""),
            "tf32": tf32_on(dev) and args.backend == "cupy",
            "reference": "FP32, TF32 off",  # see reference()
            "time": time.strftime("%Y-%m-%dT%H:%M:%S")}

    def log(stage):
        print(f"{name}: {stage} at {time.perf_counter() - t_model:.0f} s", flush=True)

    keras.mixed_precision.set_global_policy("float32")
    src = os.path.join(work, name)
    model = zoo.build(name, size, small=small)
    model.export(src, verbose=False)
    native = tf.saved_model.load(src).signatures["serving_default"]
    arg_name = next(iter(native.structured_input_signature[1]))

    def inputs(b, seed=None):
        with tf.device(dev):
            return {arg_name: tf.constant(zoo.sample_input(
                name, b, size, small, seed=b if seed is None else seed))}

    def timed(fn, b):
        return _stats(_time_tf(fn, inputs(b), args.warmup, args.iters), b)

    def reference(b, tf32: bool = False):
        """native TF's FP32 outputs for batch ``b``, run REF_ROWS rows at a time and joined:
        TF's own depthwise GPU kernel (DepthwiseConv2dGPUKernelNHWC) computes input offsets
        in int32, wrong past 2**31 elements (EfficientNetB7 at 600 px, batch 128: block 2a's
        128 x 301 x 301 x 192), and a whole batch of a large model ran out of memory beside
        the engines (run s).
        In FP32 arithmetic: TensorFlow's TF32 switch (on by default on a GPU since Ampere)
        is off for the call unless ``tf32``. With it on, TF rounds every convolution's and
        GEMM's operands to float16's 10-bit mantissa, so the "FP32" reference carried as much
        rounding per layer as the FP16 engine it judged (run e of 2026-12-04 measures both)."""
        arg = inputs(b)
        with tf32_switch(tf32):
            parts = [native(**{k: v[i:i + REF_ROWS] for k, v in arg.items()})
                     for i in range(0, b, REF_ROWS)]
            return {k: tf.concat([p[k] for p in parts], 0) for k in parts[0]}

    if not args.skip_native_timing:  # (native still gives every error's reference)
        row = {**base, "runtime": "tf_native", "precision": "FP32",
               "batches": {b: timed(native, b) for b in args.batches}}
        append_row(args.out, row)
        log("TF native")

    # Keras' own mixed_float16 model's error: what FP16 costs this model (with --skip-xla,
    # from the XLA row an earlier call left in --out for this model, size and GPU)
    xla_err = 0.0 if not args.skip_xla else earlier_xla_err(args.out, name, size, device)
    if not args.skip_xla:
        keras.mixed_precision.set_global_policy("mixed_float16")
        xla_model = zoo.build(name, size, small=small)
        keras.mixed_precision.set_global_policy("float32")
        # The native model's weights: XLA's error is then float16's alone, whatever a zoo
        # builder would make differently under the mixed policy.
        xla_model.set_weights(model.get_weights())
        xla = tf.function(lambda x: xla_model(x, training=False), jit_compile=True)
        row = {**base, "runtime": "tf_xla", "precision": "FP16", "batches": {},
               "tf32_reference_differs": tf32_on(dev)}
        for b in args.batches:
            arg = inputs(b)
            ref, got = reference(b), xla(arg[arg_name])
            st = timed(lambda **k: xla(k[arg_name]), b)
            got = {k: got for k in ref} if not isinstance(got, dict) else got
            st["rel_err"] = rel_err(got, ref)
            if row["tf32_reference_differs"]:
                st["rel_err_tf32_reference"] = rel_err(got, reference(b, tf32=True))
            row["batches"][b] = st
        xla_err = row["rel_err"] = max(st["rel_err"] for st in row["batches"].values())
        append_row(args.out, row)
        log("TF XLA")

    precisions = [] if args.peers_only else args.precisions or \
        ["FP16"] + (["FP32"] if name in args.fp32 else [])
    # native TF's outputs, the errors' reference, before any engine holds GPU memory: after
    # the engines (EfficientNetB7 at 600 px, --skip-native-timing, run s) TF's FP32 batch 128
    # ran out of memory beside their arenas
    refs = {b: reference(b) for b in args.batches} if precisions else {}
    # and with TF's TF32 default, the reference of the rows before run e of 2026-12-04
    refs_tf32 = {b: reference(b, tf32=True) for b in args.batches} \
        if precisions and tf32_on(dev) else {}
    if args.whole_batch_reference and precisions:  # the error against one native call too
        whole = {b: native(**inputs(b)) for b in args.batches}
    for precision in precisions:
        row = {**base, "runtime": "tftrt", "precision": precision,
               "profile": args.profile or "static"}
        try:
            dyn = ({"use_dynamic_shape": True, "dynamic_shape_profile_strategy": args.profile}
                   if args.profile else {})
            t0 = time.perf_counter()
            conv = trt.TrtGraphConverterV2(input_saved_model_dir=src, precision_mode=precision,
                                           maximum_cached_engines=len(args.batches), **dyn)
            if precision in QUANTIZED:  # calibrated on seeded batches of the largest size
                conv.convert(calibration_input_fn=lambda: iter(
                    [tuple(inputs(max(args.batches), seed=1000 + k).values())
                     for k in range(args.calib_batches)]))
            else:
                conv.convert()
            row["convert_s"] = time.perf_counter() - t0
            row["converted"] = zoo.converted_fraction(conv)
            row["unconverted_ops"] = zoo.unconverted_ops(conv)
            log(f"tftrt {precision} converted ({row['converted']:.1%})")
            t0 = time.perf_counter()
            build_input = lambda: iter([tuple(inputs(b).values()) for b in args.batches])
            if name in args.build_profile and precision == "FP16":
                row["build_profile"] = profiled(lambda: conv.build(build_input), name)
            else:
                conv.build(build_input)
            row["build_s"] = time.perf_counter() - t0
            dst = os.path.join(work, f"{name}_{precision}")
            conv.save(dst)
            conv = None  # its engines go: the loaded model's are what is timed
            gc.collect()
            loaded = tftrt.load(dst)
            sig = loaded.signatures["serving_default"]
            ops = list(loaded.engine_ops.values())
            row["batches"] = {}
            for b in args.batches:
                arg = inputs(b)
                ref, got = refs[b], sig(**arg)
                settle(ops)
                err = rel_err(got, ref)
                st = timed(sig, b)
                if args.graph_fn:  # the loaded signature inside a user's tf.function
                    graph = tf.function(lambda **k: sig(**k))
                    gf = graph(**arg)
                    st["graph_fn_rel_err"] = rel_err(gf, ref)
                    st["graph_fn_median_ms"] = timed(graph, b)["median_ms"]
                st["rel_err"] = err
                if precision in QUANTIZED:
                    st["top1_agreement"] = top1_agreement(got, ref)
                if refs_tf32:
                    st["rel_err_tf32_reference"] = rel_err(got, refs_tf32[b])
                if args.whole_batch_reference:
                    st["rel_err_whole_batch_reference"] = rel_err(got, whole[b])
                st["on_gpu"] = all("GPU" in got[k].device for k in got)
                row["batches"][b] = st
            if name in args.layer_profile and precision == "FP16" and \
                    args.backend == "cupy":
                for b in args.layer_profile_batches or [max(args.batches)]:
                    layer_profile(ops, name, b)
            row.update(engine_report(ops))
            if precision in QUANTIZED:
                row.update(quantization_facts(ops))
            row["native_calls"] = sum(op.stats["native"] for op in ops)
            row["engine_calls"] = sum(op.stats["engine"] for op in ops)
            row["rel_err"] = max(st["rel_err"] for st in row["batches"].values())
            row["rel_err_ok"] = row["rel_err"] <= rel_bar(precision, xla_err, row["tf32"])
        except Exception as e:  # one model's failure must not end a sweep part
            row["error"] = f"{type(e).__name__}: {str(e)[:2000]}"
        append_row(args.out, row)
        print_row(row)
        log(f"tftrt {precision}")


def xla_note(rows, precision: str) -> str:
    """" (XLA FP16: <its error>)" for an FP16 row when XLA ran, else ""."""
    xla = rows.get(("tf_xla", "FP16"), {})
    return f" (XLA FP16: {xla['rel_err']:.1e})" if precision == "FP16" and "rel_err" in xla \
        else ""


def settle(ops, timeout: float = 300.0) -> None:
    """Waits for the engines a profile builds in the background after a first call (the
    split ladder of a loaded model, a split batch's own engine): the timings are of the
    engines that serve the batch from then on, not of its split batches (the first calls
    are bench_profile_shapes.py's measure)."""
    for op in ops:
        for _, engine in op.cache.items():
            wait = getattr(engine, "wait_pending", None)
            if wait is not None and not wait(timeout):
                print(f"# background builds still pending after {timeout:.0f} s", flush=True)


# Where a build's time goes, by function (cumulative seconds, not nested in one another):
# cuDNN plan building with its runtime compiles, CuPy's kernel compiles that missed its cache
# (NVRTC), tactic timing on the GPU.
BUILD_STAGES = {
    "cudnn plans": ("build_plan_at_index", "create_execution_plan", "create_execution_plans"),
    "nvrtc (cupy kernels)": ("compile_using_nvrtc",),
    "gpu timing": ("gpu_time",),
}


def profiled(fn, name: str, top: int = 25) -> dict:
    """Runs ``fn`` under cProfile (every thread: Python 3.12's sys.monitoring); prints the
    ``top`` functions by cumulative time and returns {stage: seconds} of BUILD_STAGES (a
    function's cumulative time, the largest over its callers' entries) plus "total"."""
    import cProfile
    import pstats
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    try:
        fn()
    finally:
        prof.disable()
    total = time.perf_counter() - t0
    st = pstats.Stats(prof)
    out = {"total": total}
    for stage, names in BUILD_STAGES.items():
        out[stage] = sum(max((v[3] for (_, _, fname), v in st.stats.items()
                              if fname == n), default=0.0) for n in names)
    print(f"# {name}: build {total:.1f} s: " + ", ".join(
        f"{k} {v:.1f} s" for k, v in out.items() if k != "total"), flush=True)
    rows = sorted(st.stats.items(), key=lambda kv: -kv[1][3])[:top]
    for (file, line, fname), v in rows:
        print(f"#   {v[3]:8.2f} s cum {v[2]:8.2f} s own {v[1]:7d} calls  "
              f"{os.path.basename(file)}:{line} {fname}", flush=True)
    return out


def layer_profile(ops, name: str, batch: int) -> None:
    """Prints each engine's per-layer profile at ``batch`` (bench_engine.print_profile): where
    a model's time goes, without a network file (the model is built here)."""
    import cupy as cp
    from bench_engine import print_profile
    for op in ops:
        for _, entry in op.cache.items():
            shapes = getattr(entry, "shapes", None) or [tuple(entry.input_shapes)]
            for key in shapes:
                if key[0][0] != batch:
                    continue
                engine = entry.engine_for(key) if hasattr(entry, "engine_for") else entry
                x = cp.asarray(np.random.default_rng(0).standard_normal(key[0]).astype(
                    engine.input_dtypes[0]))
                try:
                    print_profile(engine, engine.create_execution_context(), x, name,
                                  engine.precision, batch)
                except Exception as e:  # a profile must not end the sweep
                    print(f"# {name}: no layer profile ({type(e).__name__}: {e})", flush=True)


def _fmt(v, spec):
    return format(v, spec) if isinstance(v, (int, float)) else "-"


def print_row(row: dict) -> None:
    """One line per tftrt configuration (the sweep's console output)."""
    if "error" in row:
        print(f"ROW {row['model']:<18} {row['precision']}  ERROR {row['error'][:300]}",
              flush=True)
        return
    lat = "  ".join(f"b{b}: {_fmt(st['median_ms'], '.3f')} ms {_fmt(st['throughput'], '.0f')}/s"
                    + (f" (tf.function {_fmt(st['graph_fn_median_ms'], '.3f')} ms)"
                       if "graph_fn_median_ms" in st else "")
                    for b, st in row["batches"].items())
    print(f"ROW {row['model']:<18} {row['precision']}  converted {row['converted']:.1%}  "
          f"engine ops {row['engine_ops']} ({row['engines']} engines)  host layers "
          f"{row['host_layers']}  fallback layers {row['fallback_layers']}  convert "
          f"{row.get('convert_s', float('nan')):.1f} s  build "
          f"{row['build_s']:.1f} s ({row.get('profile', 'static')})  rel err "
          f"{row['rel_err']:.1e}  native calls {row['native_calls']}  {lat}", flush=True)
    if "layer_precisions" in row:
        print(f"    {quantized_note(row)}", flush=True)
    for f in row["fallbacks"][:10]:
        print(f"    fallback: {f}")
    for h in row["host_layer_names"][:10]:
        print(f"    host: {h}")
    if row["eager_layers"]:
        print(f"    {len(row['eager_layers'])} layers outside CUDA graphs: "
              f"{', '.join(row['eager_layers'][:10])}")


def quantized_note(row: dict) -> str:
    """An INT8 / FP8 row's precision facts in words: layers per precision, the quantized
    share of their FLOPs, top-1 agreement with native FP32 per batch, what the timing
    against FP16 kept."""
    count = ", ".join(f"{n} {p}" for p, n in sorted(row["layer_precisions"].items()))
    share = ", ".join(f"{100 * s:.1f}%" for s in row.get("quantized_share", []))
    top1 = ", ".join(f"b{b} {100 * st['top1_agreement']:.1f}%"
                     for b, st in row["batches"].items() if "top1_agreement" in st)
    timed = row.get("timed_precision") or {}
    kept = (f"; timed against FP16: kept {timed.get('kept', '?')}, "
            f"{len(timed.get('fp16_faster', []))} layers faster in FP16") if timed else ""
    return (f"conv/GEMM layers {count}; {share} of their FLOPs quantized; top-1 agreement "
            f"with native FP32 {top1}{kept}")


# --- table ---------------------------------------------------------------------------------
COLUMNS = (("tftrt", "FP16"), ("tftrt", "FP32"), ("tftrt", "INT8"), ("tftrt", "FP8"),
           ("tf_xla", "FP16"), ("tf_native", "FP32"), ("torch_compile", "FP16"))


def table(path: str, print_fn=print) -> None:
    """One markdown table per model from the rows of ``path`` (the latest row of each
    runtime / precision wins): latency and throughput per batch, tftrt FP16's speedup over
    XLA and torch.compile, and the tftrt conversion facts."""
    latest: Dict[str, Dict[tuple, dict]] = {}
    if not os.path.exists(path):  # every model skipped (--time-budget): say so, no traceback
        print_fn(f"no rows: {path} was not written")
        return
    for r in read_rows(path):
        latest.setdefault(r["model"], {})[(r["runtime"], r["precision"])] = r
    for model, rows in latest.items():
        any_row = next(iter(rows.values()))
        print_fn(f"### {model} ({any_row.get('family', '?')}, {any_row.get('size', '?')} px, "
                 f"{any_row.get('device', '?')})\n")
        for (runtime, prec), r in rows.items():
            if runtime == "tftrt":
                if "error" in r:
                    print_fn(f"- tftrt {prec}: **error** {r['error'][:300]}")
                    continue
                print_fn(f"- tftrt {prec}: converted {r['converted']:.1%}, "
                         f"{r.get('engine_ops', '?')} engine ops ({r['engines']} engines), "
                         f"{r['host_layers']} host layers, {r['fallback_layers']} fallback "
                         f"layers, "
                         f"{'convert %.1f s, ' % r['convert_s'] if 'convert_s' in r else ''}"
                         f"build {r['build_s']:.1f} s ({r.get('profile', 'static')} "
                         f"engines), rel err {r['rel_err']:.1e}"
                         f"{'' if r['rel_err_ok'] else ' (over the bar)'}"
                         f"{xla_note(rows, prec)}, "
                         f"{r['native_calls']} native calls")
                if "layer_precisions" in r:
                    print_fn(f"  - {quantized_note(r)}")
        cols = [c for c in COLUMNS if c in rows and "batches" in rows[c]]
        if not cols:
            continue
        batches = sorted({int(b) for c in cols for b in rows[c]["batches"]})
        head = ["batch"] + [f"{rt} {p} ms (items/s)" for rt, p in cols]
        peers = [c for c in (("tf_xla", "FP16"), ("torch_compile", "FP16")) if c in cols]
        head += [f"tftrt FP16 x {rt}" for rt, _ in peers]
        quant = [c for c in (("tftrt", "INT8"), ("tftrt", "FP8")) if c in cols]
        head += [f"tftrt {p} x tftrt FP16" for _, p in quant]
        print_fn("\n| " + " | ".join(head) + " |")
        print_fn("|" + "---|" * len(head))
        for b in batches:
            cells = [str(b)]
            for c in cols:
                st = rows[c]["batches"].get(str(b)) or rows[c]["batches"].get(b)
                cells.append(f"{st['median_ms']:.3f} ({st['throughput']:.0f})" if st else "-")
            mine = rows.get(("tftrt", "FP16"), {}).get("batches", {}).get(str(b))
            for c in peers:
                st = rows[c]["batches"].get(str(b))
                cells.append(f"{mine['throughput'] / st['throughput']:.2f}x"
                             if mine and st else "-")
            for c in quant:
                st = rows[c]["batches"].get(str(b))
                # an engine timed_precision left without a quantized layer runs FP16: its
                # ratio is the spread between two FP16 builds, not INT8 / FP8
                fp16 = "layer_precisions" in rows[c] and not any(
                    p in ("INT8", "FP8") for p in rows[c]["layer_precisions"])
                cells.append(f"{st['throughput'] / mine['throughput']:.2f}x"
                             f"{' (FP16 kept)' if fp16 else ''}" if mine and st else "-")
            print_fn("| " + " | ".join(cells) + " |")
        print_fn("")


def latest_rows(paths: List[str]) -> Dict[str, Dict[tuple, dict]]:
    """model -> {(runtime, precision): its latest row} over ``paths`` (in order, later files
    and later lines win); rows of a --dry-run or of another device than a GPU are left out.
    Per batch size the latest measurement: a later row of some batches only (``--batches
    128``) replaces those and keeps the earlier rows' others, while its row-level fields
    (errors, host layers, native calls) replace theirs."""
    latest: Dict[str, Dict[tuple, dict]] = {}
    for path in paths:
        for r in read_rows(path):
            if r.get("dry_run") or r.get("device", "CPU") == "CPU":
                continue
            rows = latest.setdefault(r["model"], {})
            key = (r["runtime"], r["precision"])
            before = rows.get(key, {}).get("batches", {})
            rows[key] = dict(r, batches={**before, **r.get("batches", {})})
    return latest


def _error_standing(row: dict, xla: dict, precision: str):
    """(error over the row's bar or None, error over REL_TOL that TF XLA's own error let pass
    or None) of a merged tftrt row: per batch size where its batches carry errors (a later
    ``--batches 8`` row must not hide an earlier row's worse batch 128), each against the
    latest XLA row's error at that batch; else the row's own ``rel_err`` / ``rel_err_ok``."""
    tf32 = bool(row.get("tf32"))
    errs = {b: st["rel_err"] for b, st in row.get("batches", {}).items()
            if st.get("rel_err") is not None}
    if not errs:
        err = row.get("rel_err")
        if row.get("rel_err_ok") is False:
            return err, None
        if err is not None and err > rel_bar(precision, tf32=tf32):
            return None, err
        return None, None
    over = [e for b, e in errs.items() if e > rel_bar(
        precision, xla.get("batches", {}).get(b, {}).get("rel_err") or 0.0, tf32)]
    if over:
        return max(over), None
    worst = max(errs.values())
    return None, (worst if worst > rel_bar(precision, tf32=tf32) else None)


def geomean(values) -> float:
    return float(np.exp(np.mean(np.log(list(values)))))


def summary(paths: List[str], print_fn=print) -> dict:
    """The zoo's standing over result files: per batch size, tftrt FP16's speed-up over XLA
    for every model with both rows (geometric mean, the models below 1x), and the zoo
    models without such a pair. Returns what it prints, as a dict."""
    from tftrt import zoo
    latest = latest_rows(paths)

    def speedups(peer_key):
        ratios: Dict[int, Dict[str, float]] = {}
        for model, rows in latest.items():
            mine, peer = rows.get(("tftrt", "FP16"), {}), rows.get(peer_key, {})
            for b, st in mine.get("batches", {}).items():
                other = peer.get("batches", {}).get(b)
                if other and st.get("throughput") and other.get("throughput"):
                    ratios.setdefault(int(b), {})[model] = \
                        st["throughput"] / other["throughput"]
        return ratios

    order = list(zoo.ZOO).index
    ratios = speedups(("tf_xla", "FP16"))
    measured = sorted(set().union(*ratios.values()) if ratios else set(), key=order)
    out = {"measured": measured, "missing": [m for m in zoo.ZOO if m not in measured],
           "batches": {}}
    print_fn(f"{len(measured)} of {len(zoo.ZOO)} zoo models measured (tftrt FP16 and TF XLA "
             f"FP16 rows, GPU)")
    for b in sorted(ratios):
        r = ratios[b]
        gm = geomean(r.values())
        below = sorted((m for m in r if r[m] < 1.0), key=r.get)
        out["batches"][b] = {"models": len(r), "geomean": gm,
                             "below_1x": {m: r[m] for m in below}}
        print_fn(f"- batch {b}: geometric mean {gm:.2f}x XLA over {len(r)} models; below 1x: "
                 + (", ".join(f"{m} {r[m]:.2f}x" for m in below) or "none"))
    print_fn("- not measured: " + (", ".join(out["missing"]) or "none"))
    # issue 13's other bars, per latest tftrt row (any precision): 0 host layers, 0 native
    # segment calls, the error within the row's bar (rel_err_ok, computed when it ran)
    out["host_layers"], out["native_calls"], out["over_error_bar"] = {}, {}, {}
    out["within_xla_error_only"] = {}  # over REL_TOL, passed by XLA's own larger error
    for model in sorted(latest, key=lambda m: order(m) if m in zoo.ZOO else len(zoo.ZOO)):
        for (runtime, precision), r in sorted(latest[model].items()):
            if runtime != "tftrt":
                continue
            name = f"{model} {precision}"
            if r.get("host_layers"):
                out["host_layers"][name] = r["host_layers"]
            if r.get("native_calls"):
                out["native_calls"][name] = r["native_calls"]
            over, within = _error_standing(r, latest[model].get(("tf_xla", precision), {}),
                                           precision)
            if over is not None:
                out["over_error_bar"][name] = over
            elif within is not None:
                out["within_xla_error_only"][name] = within
    for key, what in (("host_layers", "host layers"), ("native_calls", "native segment calls"),
                      ("over_error_bar", "over the error bar"),
                      ("within_xla_error_only", "over REL_TOL but within TF XLA's own error")):
        print_fn(f"- {what}: " + (", ".join(f"{m} ({v:.2g})" if isinstance(v, float) else
                                            f"{m} ({v})" for m, v in out[key].items())
                                  or "none"))
    torch = speedups(("torch_compile", "FP16"))
    twins = [m for m in zoo.ZOO if zoo.ZOO[m].torch_twin]
    with_torch = set().union(*torch.values()) if torch else set()
    out["torch"] = {b: geomean(r.values()) for b, r in torch.items()}
    out["torch_missing"] = [m for m in twins if m not in with_torch]
    out["torch_below_1x"] = {}
    for b in sorted(torch):
        r = torch[b]
        below = sorted((m for m in r if r[m] < 1.0), key=r.get)
        out["torch_below_1x"][b] = {m: r[m] for m in below}
        print_fn(f"- batch {b}: geometric mean {out['torch'][b]:.2f}x torch.compile over "
                 f"{len(r)} models; below 1x: "
                 + (", ".join(f"{m} {r[m]:.2f}x" for m in below) or "none"))
    print_fn("- torchvision twins without a torch.compile row: "
             + (", ".join(out["torch_missing"]) or "none"))
    return out


def main(argv: Optional[List[str]] = None) -> None:
    from tftrt import zoo
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="zoo.jsonl", help="JSON rows, appended")
    ap.add_argument("--models", nargs="+", default=list(zoo.ZOO), choices=list(zoo.ZOO),
                    metavar="MODEL")
    ap.add_argument("--batches", nargs="+", type=int, default=list(BATCHES))
    ap.add_argument("--fp32", nargs="*", default=None,
                    help="models also converted in FP32 (default: the first of each family)")
    ap.add_argument("--precisions", nargs="+", default=None,
                    choices=("FP16", "FP32") + QUANTIZED,
                    help="tftrt precisions for every model (default: FP16, and FP32 for "
                         "--fp32's models); INT8 / FP8 calibrate on --calib-batches batches")
    ap.add_argument("--calib-batches", type=int, default=4,
                    help="INT8 / FP8: seeded batches of the largest --batches to calibrate on")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--size", type=int, default=None, help="input size (default: the model's)")
    ap.add_argument("--backend", default="cupy", help="engine backend (numpy for a CPU check)")
    ap.add_argument("--skip-xla", action="store_true",
                    help="no TF XLA row; the FP16 bar takes XLA's error from an earlier XLA "
                         "row of --out for the same model, size and GPU")
    ap.add_argument("--peers-only", action="store_true",
                    help="native and XLA rows only, no tftrt: the first of two calls for a "
                         "model too large for one (the second: --skip-xla "
                         "--skip-native-timing)")
    ap.add_argument("--skip-native-timing", action="store_true",
                    help="no native TF row (native TF still computes the reference outputs)")
    ap.add_argument("--whole-batch-reference", action="store_true",
                    help="also record each tftrt error against one native call on the whole "
                         "batch (the reference is otherwise run REF_ROWS rows at a time)")
    ap.add_argument("--graph-fn", action="store_true",
                    help="also time the loaded signature called inside a tf.function (its "
                         "engines as EagerPyFunc nodes), row key graph_fn_median_ms")
    ap.add_argument("--profile", default="", metavar="STRATEGY",
                    help="use_dynamic_shape=True with this profile strategy (e.g. Range: one "
                         "profile for every batch size, tuned once at the largest); default: "
                         "one static engine per batch size")
    ap.add_argument("--layer-profile", nargs="*", default=(), metavar="MODEL",
                    help="these models' tftrt FP16 engines: a per-layer profile at the largest "
                         "batch (each layer replayed alone, bench_engine.print_profile), after "
                         "the timings (cupy backend)")
    ap.add_argument("--layer-profile-batches", nargs="+", type=int, default=(),
                    metavar="N", help="the batch sizes of --layer-profile (default: the "
                                      "largest of --batches)")
    ap.add_argument("--build-profile", nargs="*", default=(), metavar="MODEL",
                    help="these models' tftrt FP16 build under cProfile: the top functions "
                         "and the seconds per stage (cuDNN plans, NVRTC, GPU timing), row "
                         "key build_profile")
    ap.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                    help="start a model only while its --model-seconds still fit in this "
                         "many seconds from the start (a model cut off by the caller's "
                         "timeout leaves no row and costs its time for nothing)")
    ap.add_argument("--model-seconds", type=float, default=180.0,
                    help="what one model is expected to take, for --time-budget")
    ap.add_argument("--dry-run", action="store_true",
                    help="CPU check: numpy backend, smallest sizes and widths, 2 timed calls")
    ap.add_argument("--table", action="store_true", help="print the markdown tables of --out")
    ap.add_argument("--summary", nargs="+", metavar="JSONL",
                    help="print the zoo's standing over these result files (latest row per "
                         "model wins): geometric mean against XLA per batch, the models below "
                         "1x, the models not measured")
    args = ap.parse_args(argv)
    if args.summary:
        summary(args.summary)
        return
    if args.table:
        table(args.out)
        return
    if args.dry_run:
        args.backend, args.warmup, args.iters = "numpy", 1, 2
    args.fp32 = fp32_models(args.models) if args.fp32 is None else set(args.fp32)
    os.environ["TFTRT_BACKEND"] = args.backend
    os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")
    import tensorflow as tf
    gpus = tf.config.list_physical_devices("GPU")
    device = (tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU")
              if gpus else "CPU")
    dev = "/GPU:0" if gpus else "/CPU:0"
    work = tempfile.mkdtemp(prefix="bench-zoo-")
    t0 = time.perf_counter()
    for k, name in enumerate(args.models):
        left = None if args.time_budget is None else \
            args.time_budget - (time.perf_counter() - t0)
        if left is not None and left < args.model_seconds:
            print(f"SKIP {' '.join(args.models[k:])}: {left:.0f} s left of --time-budget, "
                  f"a model takes about {args.model_seconds:.0f} s (--model-seconds)",
                  flush=True)
            break
        try:
            run_model(name, args, work, dev, device)
        except Exception as e:  # a model that breaks before tftrt (export, XLA) is a row too
            append_row(args.out, {"model": name, "runtime": "tftrt", "precision": "FP16",
                                  "device": device, "error": f"{type(e).__name__}: {e}"[:2000]})
            print(f"ROW {name:<18} ERROR {type(e).__name__}: {str(e)[:300]}", flush=True)
        for sub in [name] + [f"{name}_{p}" for p in ("FP16", "FP32") + QUANTIZED]:
            # exports: ~1 GB for a VGG
            shutil.rmtree(os.path.join(work, sub), ignore_errors=True)


if __name__ == "__main__":
    main()
