"""Host-side cost of the converter workflow: convert(), build(), save(), tftrt.load() and plain
tf.saved_model.load() of a zoo model, wall seconds (any machine; the engine backend only
matters for build()).

    python benchmarks/bench_convert.py --model encoder --layers 12 [--backend numpy]
    python benchmarks/bench_convert.py --model VGG16 --convert-only   # any tftrt.zoo name

The BERT-base-sized encoder's frozen segment holds every weight (340 MB): what the converter
does with that graph dominates these times.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    from tftrt import zoo
    ap.add_argument("--model", default="encoder",
                    choices=("encoder", "resnet50", "mobilenet_v2") + tuple(zoo.ZOO))
    ap.add_argument("--layers", type=int, default=12, help="encoder blocks")
    ap.add_argument("--precision", default="FP16")
    ap.add_argument("--backend", default="numpy")
    ap.add_argument("--convert-only", action="store_true", help="time convert() alone")
    args = ap.parse_args(argv)
    os.environ["TFTRT_BACKEND"] = args.backend
    import tensorflow as tf
    import tftrt
    from tftrt import trt_convert as trt, zoo
    if args.model in zoo.MODELS:
        make, _ = zoo.MODELS[args.model]
        model = make(layers=args.layers) if args.model == "encoder" else make()
        shape = zoo.input_shape(args.model, 1)
    else:  # a zoo sweep model at its own input size
        model = zoo.build(args.model)
        shape = (1, *model.inputs[0].shape[1:])
    work = tempfile.mkdtemp(prefix="bench-convert-")
    src, dst = os.path.join(work, "src"), os.path.join(work, "trt")
    model.export(src, verbose=False)
    x = np.random.RandomState(0).rand(*shape).astype(np.float32)
    times = {}
    t = time.perf_counter()
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=src, precision_mode=args.precision,
                                   maximum_cached_engines=1)
    conv.convert()
    times["convert"] = time.perf_counter() - t
    if args.convert_only:
        print(f"{args.model} {args.precision}: convert() {times['convert']:.1f} s")
        shutil.rmtree(work, ignore_errors=True)
        return
    t = time.perf_counter()
    conv.build(lambda: iter([(x,)]))
    times["build (batch 1)"] = time.perf_counter() - t
    t = time.perf_counter()
    conv.save(dst)
    times["save"] = time.perf_counter() - t
    t = time.perf_counter()
    loaded = tftrt.load(dst)
    times["tftrt.load"] = time.perf_counter() - t
    t = time.perf_counter()
    tf.saved_model.load(dst)
    times["tf.saved_model.load"] = time.perf_counter() - t
    sig = loaded.signatures["serving_default"]
    name = next(iter(sig.structured_input_signature[1]))
    sig(**{name: tf.constant(x)})
    builds = sum(op.stats["builds"] for op in loaded.engine_ops.values())
    print(f"{args.model} ({args.layers} layers) {args.precision} on {args.backend}; "
          f"{len(loaded.engine_ops)} engine(s), {builds} rebuilt on load")
    for k, v in times.items():
        print(f"  {k:22s} {v:7.1f} s")


if __name__ == "__main__":
    main()
