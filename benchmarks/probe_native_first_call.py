"""Where native TensorFlow's first call of a SavedModel signature goes (build()'s check makes
that call: 1.3-1.7 s of a ResNet50 build on the H200, 2026-12-02).

Each variant runs in a fresh process: load the SavedModel, then time the signature's first
call at --batch, its second call, and a third at another batch size (a new shape: TF's
per-shape autotuning without its one-time setup). Variants: as users run it; with cuDNN
autotuning off (TF_CUDNN_USE_AUTOTUNE=0: how much of the first call is autotuning); after a
small unrelated GPU convolution (how much is TF's one-time GPU setup: handles, allocator).

    python benchmarks/probe_native_first_call.py --model-dir /tmp/dw/model --batch 1
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

VARIANTS = {"default": {}, "no autotune": {"TF_CUDNN_USE_AUTOTUNE": "0"},
            "gpu set up first": {"PROBE_WARM_GPU": "1"}}


def _child(args) -> dict:
    import numpy as np
    import tensorflow as tf
    t0 = time.perf_counter()
    if os.environ.get("PROBE_WARM_GPU"):
        x = tf.random.normal((1, 8, 8, 4))
        tf.nn.conv2d(x, tf.random.normal((3, 3, 4, 4)), 1, "SAME").numpy()
    setup = time.perf_counter() - t0
    t0 = time.perf_counter()
    fn = tf.saved_model.load(args.model_dir).signatures["serving_default"]
    load = time.perf_counter() - t0
    name = next(iter(fn.structured_input_signature[1]))
    spec = fn.structured_input_signature[1][name]
    times = {}
    for label, b in (("first", args.batch), ("second", args.batch), ("new batch", args.batch + 1)):
        shape = [b] + [int(d) for d in spec.shape[1:]]
        x = tf.constant(np.random.default_rng(0).standard_normal(shape).astype(np.float32))
        t0 = time.perf_counter()
        out = fn(**{name: x})
        for v in out.values():
            v.numpy()
        times[label] = (time.perf_counter() - t0) * 1e3
    return {"setup_ms": setup * 1e3, "load_ms": load * 1e3, **{f"{k}_ms": v
                                                                for k, v in times.items()}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    if args.child:
        print("PROBE " + json.dumps(_child(args)), flush=True)
        return 0
    rows = {}
    for label, env in VARIANTS.items():
        done = subprocess.run([sys.executable, os.path.abspath(__file__), "--child",
                               "--model-dir", args.model_dir, "--batch", str(args.batch)],
                              env=dict(os.environ, **env), capture_output=True, text=True,
                              timeout=300)
        got = [l for l in done.stdout.splitlines() if l.startswith("PROBE ")]
        rows[label] = json.loads(got[-1][6:]) if got else {"error": done.stderr[-500:]}
    cols = ["setup_ms", "load_ms", "first_ms", "second_ms", "new batch_ms"]
    print(f"{'variant':18s} " + " ".join(f"{c:>12s}" for c in cols))
    for label, r in rows.items():
        if "error" in r:
            print(f"{label:18s} error: {r['error']}")
            continue
        print(f"{label:18s} " + " ".join(f"{r[c]:12.1f}" for c in cols))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
