"""Build + first execute of the ResNet50-structured test network (32x32, batch 2), per precision.

Moved from tests/engine/test_models.py, which asserted it under 10 s: a wall-clock limit depends
on the machine and its load, so it is a benchmark, not a test.

    python -m benchmarks.bench_build_time [--budget 10]
"""

import argparse
import sys
import time

from tests.engine.models import resnet50
from tftrt.engine import BuilderConfig, build_engine


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=float, default=10.0, help="seconds (reported, not fatal)")
    args = ap.parse_args(argv)
    m, feeds = resnet50(batch=2, size=32)
    for precision in ("FP32", "FP16"):
        t0 = time.perf_counter()
        engine = build_engine(m, {k: v.shape for k, v in feeds.items()},
                              BuilderConfig(precision=precision))
        engine.execute(list(feeds.values()))
        dt = time.perf_counter() - t0
        verdict = "within" if dt < args.budget else "OVER"
        print(f"resnet50 32x32 b2 {precision}: build + first run {dt:.2f} s "
              f"({verdict} the {args.budget:.0f} s budget)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
