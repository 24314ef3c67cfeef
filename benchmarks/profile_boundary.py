"""Where an engine boundary's time goes, on the GPU through TensorFlow (issue 13, item 0).

The model of bench_boundary.py (three engines, a native Cos between each pair), batch 1. Prints
medians (each call ended by a device synchronize) of:
  * the engine-form signature call, and the time spent inside the engine callbacks, split into
    DLPack in, the wait for TensorFlow, engine.execute, the wait for the engine, DLPack out;
  * TF's own floor: a tf.function of three identity EagerPyFuncs with Cos between;
  * a Python-level pipeline: engine ops called directly with a Cos between each pair, the Cos
    as an eager op, as a ConcreteFunction call, and with the stream waits off;
  * the pieces alone: eager Cos, a ConcreteFunction Cos, cudaDeviceSynchronize, DLPack.

    python benchmarks/profile_boundary.py [--calls 300]

``--copies DIR``: instead of timing, which variant of an engine boundary in a tf.function copies
device -> host (the graph-function path copies each engine's float input once per call; the
pipeline does not): TF's identity EagerPyFuncs; the same returning a bool status first, as
engine nodes do; an EagerPyFunc that takes its input to CuPy and back through DLPack
(tensor_bridge, no engine); the same plus an engine-sized device-to-device copy; the converted
function. Prints each variant's D2H copies (bytes, the TF op that asked) over five calls.

The H200 run of 2026-11-30 found the copy only where a tensor crossed DLPack (256 B per
EagerPyFunc at batch 1: the whole (1, 64) float32 tensor), not in TF's own EagerPyFunc. The
variants after it split that crossing: DLPack in only (the EagerPyFunc returns its input);
DLPack out only (a fresh CuPy array returned); a DLPack output re-made by TensorFlow
(tf.identity inside the function); the output written into a tensor TensorFlow allocated
(tf.zeros on the GPU, taken to CuPy through DLPack, the TF tensor returned). Each variant also
counts how often TF's script_ops copied an output to the op's device (its
_maybe_copy_to_context_device, when the tensor's backing_device differs from the op's device
name), with both names.

The H200 run of 2026-11-30 (second) answered it: DLPack in copied, DLPack out did not, and
writing into a TF-allocated output did not help. An EagerPyFunc's inputs have GPU memory but
no op device, so ``t.device`` says CPU:0 (``t.backing_device`` says GPU:0), and
tensor_bridge.to_backend took the numpy path. It now reads the backing device; the variant
"deciding by t.device" keeps the old behaviour for comparison, and the variants before it
should now copy nothing.
"""

from __future__ import annotations

import argparse
import collections
import os
import time

import numpy as np


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--copies", metavar="DIR", help="profile D2H copies per variant into DIR")
    args = ap.parse_args(argv)
    if args.copies:
        return copies(args)
    import tensorflow as tf
    from tftrt import tensor_bridge, engine_op, rewrite
    from benchmarks.bench_boundary import median_ms as _median, three_engines

    conv, fn, x, _ = three_engines(args.batch)
    fn = getattr(fn, "native", fn)  # the engine nodes in a TF graph: the path profiled here
    ops = [conv.engine_ops[k] for k in sorted(conv.engine_ops)]
    rows = []

    def median_ms(call, n=None):
        return _median(call, n or args.calls)

    def row(name, ms):
        rows.append((name, ms))
        print(f"{name:<58}{ms:>9.4f} ms", flush=True)

    # 1. the signature, and the callback's pieces
    row("signature call (engine form, 3 engines)", median_ms(lambda: fn(x=x)))
    spent = collections.defaultdict(list)

    def timed(owner, attr, label):
        orig = getattr(owner, attr)

        def wrapper(*a, **k):
            t0 = time.perf_counter()
            try:
                return orig(*a, **k)
            finally:
                spent[label].append(time.perf_counter() - t0)
        setattr(owner, attr, wrapper)
        return orig

    saved = [(engine_op.TRTEngineOp, "try_engine",
              timed(engine_op.TRTEngineOp, "try_engine", "callback: try_engine total")),
             (tensor_bridge, "to_backend",
              timed(tensor_bridge, "to_backend", "callback: DLPack in (per input)")),
             (tensor_bridge, "wait_for_tensorflow",
              timed(tensor_bridge, "wait_for_tensorflow", "callback: wait for TF")),
             (tensor_bridge, "wait_for_engine",
              timed(tensor_bridge, "wait_for_engine", "callback: wait for engine")),
             (tensor_bridge, "from_backend",
              timed(tensor_bridge, "from_backend", "callback: DLPack out (per output)"))]
    engines = [e for op in ops for _, e in op.cache.items()]
    for e in engines:
        saved.append((e, "execute", timed(e, "execute", "callback: engine.execute (host)")))
    median_ms(lambda: fn(x=x), 200)
    for owner, attr, orig in saved:
        if owner in engines:
            del owner.execute  # back to the class's method
        else:
            setattr(owner, attr, orig)
    for label, ts in spent.items():
        row(label, float(np.median(ts)) * 1e3)

    # 2. TF's floor: EagerPyFunc identities with Cos between, on the GPU
    def ident(t):
        return t

    @tf.function
    def three_pyfuncs(t):
        with tf.device("/GPU:0"):
            for i in range(3):
                t = tf.py_function(ident, [t], tf.float32)
                if i < 2:
                    t = tf.cos(t)
        return t
    row("tf.function: 3 identity EagerPyFuncs + 2 Cos (GPU)", median_ms(lambda: three_pyfuncs(x)))

    def status_chain(body, by_rank=False):
        """What an engine node adds around ``body``: a status output and an If on it. The
        status a bool value (engine nodes until 2026-12-01), or ``by_rank`` an empty float32
        tensor whose rank says it (rewrite.STATUS_DTYPE, engine nodes since)."""
        @tf.function
        def chain(t):
            with tf.device("/GPU:0"):
                for i in range(3):
                    if by_rank:
                        s, u = tf.py_function(body, [t], [tf.float32, tf.float32])
                        ok = tf.equal(tf.rank(s), 1)
                    else:
                        ok, u = tf.py_function(body, [t], [tf.bool, tf.float32])
                    t = tf.cond(ok, lambda: tf.identity(u), lambda: tf.identity(t))
                    if i < 2:
                        t = tf.cos(t)
            return t
        return lambda: chain(x)

    def bridged(t):  # DLPack in, the waits, DLPack out: an engine node without its engine
        a = tensor_bridge.to_backend(t, "cupy")
        tensor_bridge.wait_for_tensorflow([t], [a])
        tensor_bridge.wait_for_engine()
        return [rewrite.STATUS_RAN, tensor_bridge.from_backend(a, "cupy", np.dtype("float32"))]
    row("tf.function: 3 EagerPyFuncs [status, t] + If + 2 Cos (GPU)",
        median_ms(status_chain(lambda t: [np.bool_(True), t])))
    ran = rewrite.STATUS_RAN
    row("tf.function: the same, the status read by its rank",
        median_ms(status_chain(lambda t: [ran, t], by_rank=True)))
    row("tf.function: the same through DLPack and the waits",
        median_ms(status_chain(bridged, by_rank=True)))

    @tf.function
    def two_cos(t):
        return tf.cos(tf.cos(t))
    row("tf.function: 2 Cos", median_ms(lambda: two_cos(x)))

    # 3. a Python-level pipeline
    cos_fn = tf.function(lambda t: tf.cos(t)).get_concrete_function(
        tf.TensorSpec(x.shape, tf.float32))

    def pipeline_eager():
        t = ops[0](x)[0]
        t = ops[1](tf.cos(t))[0]
        return ops[2](tf.cos(t))[0]

    def pipeline_fn():
        t = ops[0](x)[0]
        t = ops[1](cos_fn(t))[0]
        return ops[2](cos_fn(t))[0]
    got = pipeline_eager().numpy()
    want = fn(x=x)
    want = (list(want.values())[0] if isinstance(want, dict) else want).numpy()
    print("pipeline max |diff| vs signature:", float(np.max(np.abs(got - want))))
    row("pipeline: 3 engine calls + 2 eager Cos", median_ms(pipeline_eager))
    row("pipeline: 3 engine calls + 2 ConcreteFunction Cos", median_ms(pipeline_fn))
    os.environ["TFTRT_STREAM_SYNC"] = "0"
    row("pipeline, stream waits off: 3 engines + 2 eager Cos", median_ms(pipeline_eager))
    del os.environ["TFTRT_STREAM_SYNC"]

    # 4. pieces
    row("eager Cos", median_ms(lambda: tf.cos(x)))
    row("ConcreteFunction Cos", median_ms(lambda: cos_fn(x)))
    row("ConcreteFunction Cos via _call_flat",
        median_ms(lambda: cos_fn._call_flat([x], cos_fn.captured_inputs)))  # noqa
    row("cudaDeviceSynchronize (idle GPU)", median_ms(lambda: None))
    arr = tensor_bridge.to_backend(x, "cupy")
    row("DLPack TF -> CuPy", median_ms(lambda: tensor_bridge.to_backend(x, "cupy")))
    row("DLPack CuPy -> TF", median_ms(lambda: tensor_bridge.from_backend(arr, "cupy",
                                                                          np.dtype("float32"))))
    for op, e in zip(ops, engines):
        xs = [tensor_bridge.to_backend(x, "cupy")]
        row(f"{op.name}: engine.execute + stream sync",
            median_ms(lambda: e.execute(xs)))
        row(f"{op.name}: op(x) direct (DLPack, waits, execute)",
            median_ms(lambda: op(x)))
    per = (rows[0][1] - sum(r[1] for r in rows if r[0].endswith("op(x) direct (DLPack, waits, "
                                                                   "execute)"))
           - rows[[r[0] for r in rows].index("tf.function: 2 Cos")][1])
    print(f"signature minus direct engine calls minus 2 Cos: {per:.4f} ms")


def copies(args) -> None:
    """The ``--copies`` mode (see the module doc)."""
    import tensorflow as tf
    from tftrt import tensor_bridge
    from benchmarks.bench_boundary import three_engines
    from benchmarks.tf_profile import d2h_copies
    conv, fn, x, _ = three_engines(args.batch)
    fn = getattr(fn, "native", fn)

    def ident(t):
        return t

    def with_status(t):
        return [np.bool_(True), t]

    def dlpack_round_trip(t):
        arr = tensor_bridge.to_backend(t, "cupy")
        return [np.bool_(True), tensor_bridge.from_backend(arr, "cupy", np.dtype("float32"))]

    def dlpack_and_copy(t):
        import cupy as cp
        arr = tensor_bridge.to_backend(t, "cupy")
        tensor_bridge.wait_for_tensorflow([t], [arr])
        out = cp.empty_like(arr)
        out[...] = arr
        tensor_bridge.wait_for_engine()
        return [np.bool_(True), tensor_bridge.from_backend(out, "cupy", np.dtype("float32"))]

    def dlpack_in_only(t):
        arr = tensor_bridge.to_backend(t, "cupy")
        tensor_bridge.wait_for_tensorflow([t], [arr])
        return [np.bool_(True), t]

    def dlpack_out_only(t):
        import cupy as cp
        out = cp.ones(tuple(t.shape), cp.float32)
        tensor_bridge.wait_for_engine()
        return [np.bool_(True), tensor_bridge.from_backend(out, "cupy", np.dtype("float32"))]

    def dlpack_out_identity(t):
        return [np.bool_(True), tf.identity(dlpack_round_trip(t)[1])]

    def into_tf_allocated(t):
        import cupy as cp
        arr = tensor_bridge.to_backend(t, "cupy")
        out_tf = tf.zeros(tuple(t.shape), tf.float32)
        out = tensor_bridge.to_backend(out_tf, "cupy")
        tensor_bridge.wait_for_tensorflow([t, out_tf], [arr, out])
        cp.copyto(out, arr)
        tensor_bridge.wait_for_engine()
        return [np.bool_(True), out_tf]

    def dlpack_in_by_device(t):
        """What to_backend did before: the numpy path when ``t.device`` (the op device,
        CPU:0 for an EagerPyFunc's inputs) names no GPU."""
        import cupy as cp
        if "GPU" in t.device.upper():
            arr = cp.from_dlpack(tf.experimental.dlpack.to_dlpack(t))
        else:
            arr = cp.asarray(np.asarray(t))
        tensor_bridge.wait_for_tensorflow([t], [arr])
        return [np.bool_(True), t]

    from tensorflow.python.ops import script_ops
    real_copy = script_ops._maybe_copy_to_context_device
    copied = collections.Counter()

    def counting_copy(tensor, device_name):
        if tensor.backing_device != device_name:
            copied[(tensor.backing_device, device_name)] += 1
        return real_copy(tensor, device_name)
    script_ops._maybe_copy_to_context_device = counting_copy

    def chain(body, with_flag):
        @tf.function
        def f(t):
            with tf.device("/GPU:0"):
                for i in range(3):
                    if with_flag:
                        ok, t = tf.py_function(body, [t], [tf.bool, tf.float32])
                        t = tf.cond(ok, lambda t=t: t, lambda t=t: -t)
                    else:
                        t = tf.py_function(body, [t], tf.float32)
                    if i < 2:
                        t = tf.cos(t)
            return t
        return lambda: f(x)

    variants = [("identity EagerPyFuncs", chain(ident, False)),
                ("EagerPyFuncs returning [status, t], tf.cond on it", chain(with_status, True)),
                ("EagerPyFuncs: DLPack to CuPy and back", chain(dlpack_round_trip, True)),
                ("EagerPyFuncs: DLPack, a D2D copy, waits", chain(dlpack_and_copy, True)),
                ("EagerPyFuncs: DLPack in only", chain(dlpack_in_only, True)),
                ("EagerPyFuncs: DLPack out only (fresh CuPy array)",
                 chain(dlpack_out_only, True)),
                ("EagerPyFuncs: DLPack out, then tf.identity", chain(dlpack_out_identity, True)),
                ("EagerPyFuncs: written into a TF-allocated output", chain(into_tf_allocated,
                                                                           True)),
                ("EagerPyFuncs: DLPack in, deciding by t.device (before 2026-11-30)",
                 chain(dlpack_in_by_device, True)),
                ("the converted function (3 engines)", lambda: fn(x=x))]
    for k, (name, call) in enumerate(variants):
        for _ in range(3):
            call()
        logdir = os.path.join(args.copies, f"v{k}")
        copied.clear()
        tf.profiler.experimental.start(logdir)
        for _ in range(5):
            call()
        tf.test.experimental.sync_devices()
        tf.profiler.experimental.stop()
        found = collections.Counter((size, op) for plane, _n, size, op in d2h_copies(logdir)
                                    if "GPU" in plane)
        print(f"{name}: {sum(found.values())} D2H copies in 5 calls", flush=True)
        for (backing, device), n in copied.items():
            print(f"    script_ops copied {n} outputs to the op's device: backing_device "
                  f"{backing!r}, op device {device!r}", flush=True)
        for (size, op), n in sorted(found.items(), key=lambda kv: -kv[1]):
            print(f"    {n:3d} x {size} B  {op}", flush=True)


if __name__ == "__main__":
    main()
