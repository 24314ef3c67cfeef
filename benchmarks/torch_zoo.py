"""torch.compile peers of the zoo: torchvision twins of tftrt.zoo models, FP16, channels_last.

Runs in its own process (no TensorFlow) on the same machine right after benchmarks/zoo.py and
appends rows in its format to the same results file:

    python benchmarks/torch_zoo.py --models ResNet50 DenseNet121 --out zoo.jsonl
    python benchmarks/torch_zoo.py --table --out zoo.jsonl   # = benchmarks/zoo.py --table

Each zoo model with a torchvision twin (``ZooModel.torch_twin``; None: skipped) is built with
random weights at the zoo's default input size, ``torch.compile(mode="reduce-overhead")``
(CUDA graphs: the strongest PyTorch peer at small batch), FP16, channels_last. Latency = wall
time of one call with the GPU synchronized after it (as benchmarks/zoo.py times TensorFlow);
median and p99 over --iters calls after --warmup calls.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_e2e import _stats, _wall_times  # noqa: E402
import zoo as bench_zoo  # noqa: E402  (benchmarks/zoo.py: rows and the table)

BATCHES = (1, 8, 128)


def run_model(name: str, args) -> None:
    import torch
    import torchvision
    from tftrt import zoo
    entry = zoo.ZOO[name]
    size = args.size or entry.size
    torch.manual_seed(0)
    dev = torch.device("cuda")
    model = getattr(torchvision.models, entry.torch_twin)(weights=None)
    model = model.eval().to(dev).half().to(memory_format=torch.channels_last)
    fn = torch.compile(model, mode=args.mode)
    row = {"model": name, "family": entry.family, "size": size, "runtime": "torch_compile",
           "precision": "FP16", "twin": entry.torch_twin, "mode": args.mode,
           "device": torch.cuda.get_device_name(), "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
           "batches": {}}
    t0 = time.perf_counter()
    for b in args.batches:
        x = torch.randn(b, 3, size, size, device=dev, dtype=torch.half).to(
            memory_format=torch.channels_last)

        def once():
            fn(x)
            torch.cuda.synchronize()

        with torch.inference_mode():
            row["batches"][b] = _stats(_wall_times(once, args.warmup, args.iters), b)
    bench_zoo.append_row(args.out, row)
    lat = "  ".join(f"b{b}: {st['median_ms']:.3f} ms {st['throughput']:.0f}/s"
                    for b, st in row["batches"].items())
    print(f"ROW {name:<18} torch.compile FP16 ({entry.torch_twin})  {lat}  "
          f"({time.perf_counter() - t0:.0f} s)", flush=True)


def main(argv=None) -> None:
    from tftrt import zoo
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="zoo.jsonl")
    ap.add_argument("--models", nargs="+", default=list(zoo.ZOO), choices=list(zoo.ZOO),
                    metavar="MODEL")
    ap.add_argument("--batches", nargs="+", type=int, default=list(BATCHES))
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--size", type=int, default=None)
    ap.add_argument("--mode", default="reduce-overhead", help="torch.compile mode")
    ap.add_argument("--table", action="store_true", help="print the markdown tables of --out")
    args = ap.parse_args(argv)
    if args.table:
        bench_zoo.table(args.out)
        return
    for name in args.models:
        if zoo.ZOO[name].torch_twin is None:
            print(f"{name}: no torchvision twin, skipped", flush=True)
            continue
        try:
            run_model(name, args)
        except Exception as e:  # a model that fails is a row, the sweep goes on
            bench_zoo.append_row(args.out, {"model": name, "runtime": "torch_compile",
                                            "precision": "FP16",
                                            "error": f"{type(e).__name__}: {e}"[:2000]})
            print(f"ROW {name:<18} torch.compile ERROR {type(e).__name__}: {str(e)[:300]}",
                  flush=True)


if __name__ == "__main__":
    main()
