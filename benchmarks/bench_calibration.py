"""How long INT8 calibration takes, and where: ResNet50 (random weights) converted with
``convert(calibration_input_fn=...)`` on ``--batches`` batches of ``--batch`` images, under
cProfile; prints the total and the calibrator's parts (forward passes with histograms, the
entropy ranges, the per-layer error check, the plan).

    TFTRT_BACKEND=numpy python benchmarks/bench_calibration.py --batch 64 --batches 2
"""

import argparse
import cProfile
import os
import pstats
import tempfile
import time

import numpy as np

PARTS = (("calibrate_v2", "calibration in all"), ("observe", "forward passes + histograms"),
         ("ranges", "ranges (entropy)"), ("layer_errors", "per-layer error check"),
         ("plan", "precision plan"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--batches", type=int, default=2)
    args = ap.parse_args()
    import tensorflow as tf
    from tftrt import trt_convert as trt
    model = tf.keras.applications.ResNet50(weights=None)
    path = os.path.join(tempfile.mkdtemp(), "resnet50")
    model.export(path, verbose=False)
    rng = np.random.RandomState(0)
    data = [rng.rand(args.batch, 224, 224, 3).astype(np.float32) for _ in range(args.batches)]
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=path, precision_mode="INT8")
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    conv.convert(calibration_input_fn=lambda: iter([(tf.constant(d),) for d in data]))
    prof.disable()
    total = time.perf_counter() - t0
    stats = pstats.Stats(prof).stats
    cum = {}
    for (path_, _, fn), (_, _, _, ct, _) in stats.items():
        if "tftrt" in path_ and fn in dict(PARTS):
            cum[fn] = cum.get(fn, 0.0) + ct
    print(f"ResNet50, {args.batches} batches of {args.batch}, backend "
          f"{os.environ.get('TFTRT_BACKEND', 'default')}: convert() {total:.1f} s")
    for fn, what in PARTS:
        print(f"  {what:<30} {cum.get(fn, 0.0):7.1f} s")


if __name__ == "__main__":
    main()
