"""Host cost of a call through a loaded tftrt signature, on any machine (numpy backend).

A tiny single-engine model, so the engine's own work is small: the difference between the
rows is what each layer of the call path costs on the host (DirectSignature's input checks
and output packing, TRTEngineOp's cache lookup and conversions). The GPU path adds the DLPack
hand-offs and the stream syncs (see bench_e2e.py's boundary column).

    python benchmarks/bench_call_overhead.py [--calls 5000]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=5000)
    args = ap.parse_args(argv)
    os.environ["TFTRT_BACKEND"] = "numpy"
    import tensorflow as tf
    import tftrt
    from tftrt import trt_convert as trt

    class Tiny(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 16], tf.float32, name="x")])
        def __call__(self, x):
            return {"y": tf.nn.relu(tf.matmul(x, tf.ones([16, 16])) + 1.0) * 2.0}

    d = tempfile.mkdtemp()
    tf.saved_model.save(Tiny(), d + "/src", signatures=Tiny().__call__)
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=d + "/src")
    conv.convert()
    conv.build(lambda: iter([(np.ones((1, 16), np.float32),)]))
    conv.save(d + "/dst")
    loaded = tftrt.load(d + "/dst")
    sig = loaded.signatures["serving_default"]
    op = next(iter(loaded.engine_ops.values()))
    engine = op.cache.get(((1, 16),))
    x = tf.constant(np.ones((1, 16), np.float32))
    xn = x.numpy()

    def per_call_us(fn):
        for _ in range(100):
            fn()
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(args.calls // 5):
                fn()
            times.append((time.perf_counter() - t0) / (args.calls // 5) * 1e6)
        return float(np.median(times))

    rows = [("engine.execute (numpy array)", per_call_us(lambda: engine.execute([xn]))),
            ("TRTEngineOp (TF tensor in and out)", per_call_us(lambda: op(x))),
            (f"signature ({type(sig).__name__}) + .numpy()",
             per_call_us(lambda: sig(x=x)["y"].numpy()))]
    print(f"{'call':<44}{'us / call':>10}")
    for name, us in rows:
        print(f"{name:<44}{us:>10.1f}")


if __name__ == "__main__":
    main()
