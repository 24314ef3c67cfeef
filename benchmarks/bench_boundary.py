"""What an engine boundary costs inside a converted graph, on the GPU through TensorFlow.

A model of three engines with a native TF op (Cos, kept native by TF_TRT_OP_DENYLIST) between
each pair, called at batch 1 with a GPU tensor: through the graph function (engine nodes in a TF graph,
what a tf.function calling the model runs), the function convert() returns and tftrt.load's
signature (both the pipeline of tftrt/pipeline.py for eager calls). Per boundary =
    (signature call - each engine's execute alone - the native ops alone) / engines,
the time the engine-op machinery adds around each engine (TF's EagerPyFunc dispatch or the
pipeline's Python, DLPack in and out, stream syncs). Medians of timed calls, each call ended by a
device synchronize; engines alone timed with CUDA events.

    python benchmarks/bench_boundary.py [--calls 300] [--batch 1]
Run it twice for the placement baseline: TFTRT_ENGINE_DEVICE=none lets TF's placer put the
engine nodes (where the CPU got them, and with them host copies of every tensor).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np


def three_engines(batch: int):
    """(converter, convert()'s function, a GPU input of ``batch`` rows, temp dir): the model of
    tests/gpu/test_engine_boundaries.py converted (FP16) and built for ``batch``."""
    import tensorflow as tf
    from tftrt import trt_convert as trt
    from tests.gpu.test_engine_boundaries import ThreeEngines, SEPARATOR
    d = tempfile.mkdtemp()
    m = ThreeEngines()
    tf.saved_model.save(m, d + "/src", signatures=m.__call__)
    os.environ["TF_TRT_OP_DENYLIST"] = SEPARATOR
    try:
        conv = trt.TrtGraphConverterV2(input_saved_model_dir=d + "/src",
                                       minimum_segment_size=2, precision_mode="FP16")
        fn = conv.convert()
    finally:
        del os.environ["TF_TRT_OP_DENYLIST"]
    with tf.device("/GPU:0"):
        x = tf.constant(np.random.RandomState(0).standard_normal((batch, 64))
                        .astype(np.float32))
    conv.build(lambda: iter([(x.numpy(),)]))
    return conv, fn, x, d


def median_ms(call, calls: int, warmup: int = 30) -> float:
    """Median wall milliseconds of ``call()``, each ended by a device synchronize."""
    import cupy as cp
    for _ in range(warmup):
        call()
    cp.cuda.runtime.deviceSynchronize()
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        call()
        cp.cuda.runtime.deviceSynchronize()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1e3


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--batch", type=int, default=1)
    args = ap.parse_args(argv)
    import tensorflow as tf
    import cupy as cp
    conv, fn, x, d = three_engines(args.batch)

    def engine_ms(engine, xs):
        start, end = cp.cuda.Event(), cp.cuda.Event()
        for _ in range(30):
            engine.execute(xs)
        times = []
        for _ in range(args.calls):
            start.record()
            engine.execute(xs)
            end.record()
            end.synchronize()
            times.append(cp.cuda.get_elapsed_time(start, end))
        return float(np.median(times))

    graph_fn = getattr(fn, "native", fn)  # the engine nodes in a TF graph
    graph_ms = median_ms(lambda: graph_fn(x=x), args.calls)
    sig_ms = median_ms(lambda: fn(x=x), args.calls)
    import tftrt
    conv.save(d + "/out")
    loaded = tftrt.load(d + "/out").signatures["serving_default"]
    loaded(x=x)
    load_ms = median_ms(lambda: loaded(x=x), args.calls)
    ops = [conv.engine_ops[k] for k in sorted(conv.engine_ops)]
    engines = []
    for op in ops:
        (key, engine), = op.cache.items()
        xs = [cp.random.standard_normal(s, dtype=cp.float32) for s in key]
        engines.append(engine_ms(engine, xs))
    with tf.device("/GPU:0"):
        h = tf.identity(x)
    cos = tf.function(lambda t: tf.cos(tf.cos(t)))
    native_ms = median_ms(lambda: cos(h), args.calls)
    per_boundary = (sig_ms - sum(engines) - native_ms) / len(ops)
    per_boundary_graph = (graph_ms - sum(engines) - native_ms) / len(ops)
    per_boundary_loaded = (load_ms - sum(engines) - native_ms) / len(ops)
    placed = fn.graph.as_graph_def()
    device = [n.device for n in placed.node if n.name == "TRTEngineOp_000_000"][0] or "(placer)"
    print(f"engine node device: {device}; engines {len(ops)}; batch {args.batch}")
    print(f"{'graph function call':<34}{graph_ms:>9.3f} ms")
    print(f"{'convert() function call':<34}{sig_ms:>9.3f} ms  ({type(fn).__name__})")
    print(f"{'tftrt.load signature call':<34}{load_ms:>9.3f} ms  ({type(loaded).__name__})")
    for op, t in zip(ops, engines):
        print(f"{op.name + ' alone':<34}{t:>9.3f} ms")
    print(f"{'2 native Cos alone':<34}{native_ms:>9.3f} ms")
    print(f"{'per boundary, graph function':<34}{per_boundary_graph:>9.3f} ms")
    print(f"{'per boundary, convert() function':<34}{per_boundary:>9.3f} ms")
    print(f"{'per boundary, tftrt.load':<34}{per_boundary_loaded:>9.3f} ms")


if __name__ == "__main__":
    main()
