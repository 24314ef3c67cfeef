"""The TF-TRT user-guide workflow on an embedded default model.

    python -m tftrt.quickstart [--precision FP32|FP16] [--batch 8] [--workdir DIR]

Builds a small Keras CNN (seeded), saves it as a SavedModel, converts it with
TrtGraphConverterV2, builds engines, checks the converted outputs against native TensorFlow,
prints the summary and the latency of both, saves the converted model and loads it back with
tftrt.load. Exits non-zero when the outputs disagree.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time


def default_model(seed: int = 0):
    """A small Keras CNN: conv+BN+ReLU blocks, a residual add, pooling, dense, softmax."""
    import keras
    keras.utils.set_random_seed(seed)
    L = keras.layers
    inp = keras.Input((32, 32, 3), name="image")
    x = L.Conv2D(16, 3, padding="same", use_bias=False)(inp)
    x = L.BatchNormalization()(x)
    x = L.ReLU()(x)
    y = L.Conv2D(16, 3, padding="same", use_bias=False)(x)
    y = L.BatchNormalization()(y)
    x = L.ReLU()(L.Add()([x, y]))
    x = L.MaxPooling2D()(x)
    x = L.DepthwiseConv2D(3, padding="same")(x)
    x = L.Conv2D(32, 1, activation="relu")(x)
    x = L.GlobalAveragePooling2D()(x)
    x = L.Dense(10, activation="softmax", name="probs")(x)
    model = keras.Model(inp, x)
    # Non-trivial batch-norm statistics, so folding them into the convolution is exercised.
    rng = __import__("numpy").random.RandomState(seed)
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            c = layer.moving_mean.shape[0]
            layer.moving_mean.assign(rng.randn(c).astype("float32") * 0.1)
            layer.moving_variance.assign(rng.uniform(0.5, 1.5, c).astype("float32"))
    return model


def _median_ms(fn, arg, runs: int) -> float:
    import numpy as np
    fn(**arg)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        out = fn(**arg)
        for v in out.values():
            v.numpy()
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--precision", default="FP32", help="FP32 or FP16")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--workdir", default=None, help="where the SavedModels go (default: temp)")
    args = ap.parse_args(argv)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from tftrt.engine.backends import available_backends
    if "TFTRT_BACKEND" not in os.environ:
        # Without a GPU, run the engines on the numpy reference backend so the quickstart
        # exercises them (TFTRT_BACKEND=auto would run the native segments instead).
        os.environ["TFTRT_BACKEND"] = "cupy" if "cupy" in available_backends() else "numpy"
    import numpy as np
    import tensorflow as tf
    import tftrt
    from tftrt import trt_convert as trt

    work = args.workdir or tempfile.mkdtemp(prefix="tftrt-quickstart-")
    src, dst = os.path.join(work, "cnn_savedmodel"), os.path.join(work, "cnn_tftrt")
    print(f"tftrt {tftrt.__version__}, TensorFlow {tf.__version__}, "
          f"engine backend: {os.environ['TFTRT_BACKEND']}")
    model = default_model()
    model.export(src, verbose=False)
    print(f"saved the default Keras CNN to {src}")

    converter = trt.TrtGraphConverterV2(input_saved_model_dir=src,
                                        precision_mode=args.precision,
                                        maximum_cached_engines=4)
    t0 = time.perf_counter()
    fn = converter.convert()
    t_convert = time.perf_counter() - t0
    x = np.random.RandomState(1).rand(args.batch, 32, 32, 3).astype(np.float32)
    t0 = time.perf_counter()
    converter.build(input_fn=lambda: iter([(x,)]))
    t_build = time.perf_counter() - t0
    converter.summary()

    native = tf.saved_model.load(src).signatures["serving_default"]
    input_name = next(iter(fn.structured_input_signature[1]))
    arg = {input_name: tf.constant(x)}
    ref = native(**arg)
    got = fn(**arg)
    rtol = 1e-3 if args.precision.upper() == "FP32" else 2e-2
    ok = True
    for k in ref:
        err = float(np.max(np.abs(got[k].numpy() - ref[k].numpy())))
        scale = float(np.max(np.abs(ref[k].numpy()))) or 1.0
        print(f"output {k!r}: max |converted - native| = {err:.3g} (max |native| {scale:.3g})")
        ok &= err <= rtol * scale + 1e-5

    converter.save(dst)
    loaded = tftrt.load(dst)
    again = loaded.signatures["serving_default"](**arg)
    same = all(np.allclose(again[k].numpy(), got[k].numpy(), rtol=1e-5, atol=1e-6) for k in got)
    ok &= same
    builds = sum(op.stats["builds"] for op in loaded.engine_ops.values())
    runs = {k: sum(op.stats[k] for op in loaded.engine_ops.values()) for k in ("engine", "native")}
    print(f"saved to {dst}; tftrt.load gives the same outputs: {same}; "
          f"engines rebuilt on load: {builds}; engine runs: {runs['engine']}, "
          f"native segment runs: {runs['native']}")

    t_native = _median_ms(native, arg, args.runs)
    t_conv = _median_ms(fn, arg, args.runs)
    print(f"\nbatch {args.batch}, {args.precision}: native TF {t_native:.2f} ms, "
          f"tftrt ({os.environ['TFTRT_BACKEND']}) {t_conv:.2f} ms (median of {args.runs}); "
          f"convert {t_convert:.1f} s, build {t_build:.1f} s")
    print("PASS" if ok else "FAIL: converted outputs differ from native TensorFlow")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
