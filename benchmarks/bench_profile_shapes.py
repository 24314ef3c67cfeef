"""First call at each new batch size inside an optimization profile (issue 14).

One profile (batch 1..--max-batch, opt = max, TF-TRT's Range strategy) of a ResNet50-structured
network: the profile is built (tuned at the opt shape, then checked for re-derivation at the
probe shapes), then each batch size of --batches is called once. Per batch: the engine for it
("make": from the opt engine's optimized network, or a full build when the profile needs one),
its first execution (context, backend preparation, first run), and a later execution.
"first call" = make + first execution: what a request with a new batch size waits beyond a
steady call. With split batches (TFTRT_SPLIT_BATCH=1, profiles.py) a first call runs as
slices through engines built for smaller batches ("how" = split 8+2+1) and with quick engines
(TFTRT_QUICK_SHAPES=1) on a quick engine ("how" = quick), while the real one builds in the
background; after the first calls the script waits for those and prints each batch's run
time on the stand-in and on the real engine. With --compare-full, the same shapes are also
built the old way (passes, precision and memory plan per shape, with the opt shape's
tactics): "full make ms", to compare with "make ms".

    python benchmarks/bench_profile_shapes.py                       # numpy, 64x64, small
    python benchmarks/bench_profile_shapes.py --backend cupy --precision FP16 --size 224 \\
        --max-batch 128 --batches 1,2,3,5,8,13,21,34,55,89,127       # the GPU host
    python benchmarks/bench_profile_shapes.py --network .whl/networks/resnet50.onnx.xz ...

A warm build cache (tactic timings, on disk: TFTRT_CACHE_DIR) makes the profile build fast;
the per-shape numbers do not time tactics either way. --json FILE writes the rows.
--profile-calls N: the first N first calls under cProfile, printed as time per library (CuPy's
NVRTC compiles, cuDNN plan and graph builds, CUDA-graph capture) and the functions with the
most own time: where a first call's time goes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)


def _network(args):
    """(ONNX model, input name, input shape without batch)."""
    if args.network:
        from make_networks import load_networks
        model = max(load_networks(args.network), key=lambda m: len(m.graph.node))
        inp = model.graph.input[0]
        dims = [d.dim_value for d in inp.type.tensor_type.shape.dim][1:]
        if not all(dims):
            raise SystemExit(f"{args.network}: input {inp.name} has unknown non-batch dims "
                             f"{dims}")
        return model, inp.name, tuple(dims)
    from tests.engine.models import resnet50
    model, feeds = resnet50(batch=2, size=args.size, width=args.width)
    (name, x), = feeds.items()
    return model, name, tuple(x.shape[1:])


def _sync(backend):
    if backend == "cupy":
        import cupy as cp
        cp.cuda.get_current_stream().synchronize()


def _input(backend, shape, seed):
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    if backend == "cupy":
        import cupy as cp
        return cp.asarray(x)
    return x


# Where a first call waits, by library: (label, module hint, function names). cProfile names a
# Python function by its own name and file, and a C / Cython / pybind method by its repr
# ("<method 'build_plan_at_index' of 'cudnn._compiled_module.pygraph' objects>"): a frame
# counts when the hint is in its file or repr (so our own ``plan`` functions are not taken for
# cuBLASLt's) and the name is its name or the quoted / dotted name in the repr.
_BUCKETS = (
    ("cupy NVRTC compile", "cupy", ("compile_with_cache", "_compile_with_cache",
                                    "compile_using_nvrtc", "_compile_module_with_cache",
                                    "compileProgram")),
    ("cuDNN plan build", "cudnn", ("build_plan_at_index",)),
    ("cuDNN graph build", "cudnn", ("build_operation_graph", "create_execution_plan",
                                    "create_execution_plans", "validate", "check_support")),
    ("cuDNN execute", "cudnn", ("execute_plan_at_index",)),
    ("CUDA graph capture", "cupy", ("begin_capture", "end_capture", "upload")),
    ("cuBLASLt heuristics", "nvmath", ("matmul_algo_get_heuristic",)),
)


def _matches(frame, hint: str, names) -> bool:
    path, _line, label = frame
    if hint not in path and hint not in label:
        return False
    return label in names or any(f"'{n}'" in label or f".{n}>" in label or f" {n}>" in label
                                 for n in names)


def where_time_went(prof, total_s: float) -> str:
    """Seconds per bucket of :data:`_BUCKETS` (cumulative time of the outermost matching
    frames, so nested matches are not counted twice), the rest, and the functions with the
    most own time."""
    import pstats
    st = pstats.Stats(prof)
    got = {}
    for label, hint, names in _BUCKETS:
        frames = {f: v for f, v in st.stats.items() if _matches(f, hint, names)}
        # drop frames called by another matching frame (their time is in the caller's)
        outer = [v for f, v in frames.items()
                 if not any(c in frames for c in v[4])]
        got[label] = sum(v[3] for v in outer)
    rest = total_s - sum(got.values())
    parts = [f"{k} {v * 1e3:.0f} ms" for k, v in got.items() if v > 0.0005]
    top = sorted(st.stats.items(), key=lambda kv: -kv[1][2])[:6]
    own = "; ".join(f"{f[2]} ({f[0].rsplit('/', 1)[-1]}:{f[1]}) {v[2] * 1e3:.0f} ms x{v[1]}"
                    for f, v in top)
    return ", ".join(parts + [f"other {rest * 1e3:.0f} ms (of {total_s * 1e3:.0f})"]) + \
        f"\n#   most own time: {own}"


def how(row) -> str:
    """How a first call was served: split batches (their sizes), a quick engine, an engine
    from the profile's template, or a full build."""
    if row["split"]:
        return "split " + "+".join(map(str, row["split"]))
    return "quick" if row["quick"] else "template" if row["from_template"] else "full"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="numpy", choices=("numpy", "cupy"))
    ap.add_argument("--precision", default="FP32")
    ap.add_argument("--size", type=int, default=64, help="image size (built-in network)")
    ap.add_argument("--width", type=int, default=64, help="first stage's channels (built-in)")
    ap.add_argument("--network", help="a .onnx.xz from make_networks.py instead")
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--batches", default="1,2,3,5,7,9,12,15",
                    help="batch sizes called in this order (new ones inside the profile)")
    ap.add_argument("--compare-full", action="store_true",
                    help="also time a full per-shape build of each batch size (the old path)")
    ap.add_argument("--json", help="write the rows here")
    ap.add_argument("--profile-calls", type=int, default=0, metavar="N",
                    help="cProfile the first call (make + first run) of the first N new batch "
                         "sizes and print where the time went, by library")
    args = ap.parse_args(argv)

    from tftrt.engine import BuilderConfig, build_engine
    from tftrt.engine.backends import get_backend
    from tftrt.engine.onnx_import import network_from_onnx
    from tftrt.engine.shape_template import specializer
    from tftrt.engine.tactics import persistent_timing_cache
    from tftrt.profiles import Profile, ProfileEngine, tactic_choices

    model, name, rest = _network(args)
    net = network_from_onnx(model)
    cache = persistent_timing_cache(get_backend(args.backend))

    def config(choices=None, weights=None):
        return BuilderConfig(precision=args.precision, backend=args.backend,
                             timing_cache=cache, tactic_choices=choices, weight_cache=weights)

    def build(key, choices, weights):
        return build_engine(net, {name: key[0]}, config(choices, weights))

    top = args.max_batch
    profile = Profile([(1, *rest)], [(top, *rest)], [(top, *rest)])
    t0 = time.perf_counter()
    pe = ProfileEngine([profile], build, args.backend, specializer(net, config()))
    pe.build_profiles()
    build_s = time.perf_counter() - t0
    opt = pe.engine_for([(top, *rest)])
    opt.execute([_input(args.backend, (top, *rest), 0)])
    _sync(args.backend)
    print(f"# {net.name} {args.precision} on {args.backend}: profile batch 1..{top} at "
          f"{rest}, built in {build_s:.2f} s (opt engine {opt.build_info['seconds']:.2f} s, "
          f"{opt.build_info['timed_layers']} layers timed); other shapes from the template: "
          f"{'no: ' + pe.template_errors[0] if pe.template_errors else 'yes'}", flush=True)
    workers = {}
    if args.backend == "cupy":
        from tftrt.engine.backends import cupy_dnn, cupy_prefetch
        from tftrt.engine.workers import worker_count
        workers = dict(cupy_prefetch.stats(), processes=worker_count(),
                       plans=cupy_dnn.plan_cache_stats())
        print(f"# build workers: {workers}", flush=True)
    rows = []
    print(f"{'batch':>5} {'make ms':>9} {'1st run ms':>10} {'first call ms':>13} "
          f"{'later run ms':>12} {'how':>9}" + (f" {'full make ms':>13}"
                                                 if args.compare_full else ""), flush=True)
    for b in [int(v) for v in args.batches.split(",") if v.strip()]:
        if not 1 <= b <= top or b == top:
            print(f"# batch {b} skipped: not a new shape inside 1..{top}")
            continue
        x = _input(args.backend, (b, *rest), b)
        prof = None
        if len(rows) < args.profile_calls:
            import cProfile
            prof = cProfile.Profile()
            prof.enable()
        t0 = time.perf_counter()
        engine = pe.engine_for([(b, *rest)])
        t1 = time.perf_counter()
        engine.execute([x])
        _sync(args.backend)
        t2 = time.perf_counter()
        if prof is not None:
            prof.disable()
            print(f"# batch {b}: first call by where the time went: "
                  f"{where_time_went(prof, t2 - t0)}", flush=True)
        engine.execute([x])
        _sync(args.backend)
        t3 = time.perf_counter()
        engine.execute([x])
        _sync(args.backend)
        t4 = time.perf_counter()
        row = {"batch": b, "make_ms": (t1 - t0) * 1e3, "first_run_ms": (t2 - t1) * 1e3,
               "first_call_ms": (t2 - t0) * 1e3, "later_run_ms": (t4 - t3) * 1e3,
               "from_template": bool(engine.build_info.get("from_template")),
               "quick": bool(engine.build_info.get("quick")),
               "split": list(engine.build_info.get("split") or [])}
        extra = ""
        if args.compare_full:
            t5 = time.perf_counter()
            build(((b, *rest),), tactic_choices(opt), None)
            row["full_make_ms"] = (time.perf_counter() - t5) * 1e3
            extra = f" {row['full_make_ms']:13.1f}"
        rows.append(row)
        print(f"{b:5d} {row['make_ms']:9.1f} {row['first_run_ms']:10.1f} "
              f"{row['first_call_ms']:13.1f} {row['later_run_ms']:12.1f} "
              f"{how(row):>9}{extra}", flush=True)
    if rows:
        fc = [r["first_call_ms"] for r in rows]
        print(f"# first call: median {np.median(fc):.1f} ms, max {max(fc):.1f} ms over "
              f"{len(rows)} new batch sizes; arena pool {pe.arena_pool.stats}")
    if any(r["quick"] or r["split"] for r in rows):  # real engines built in the background
        t0 = time.perf_counter()
        done = pe.wait_pending(timeout=600)
        print(f"# real engines: {'all' if done else 'not all'} built {time.perf_counter() - t0:.1f}"
              f" s after the last first call; {pe.stats}", flush=True)
        print(f"{'batch':>5} {'stand-in run ms':>15} {'real run ms':>11}", flush=True)
        for r in rows:
            shape = (r["batch"], *rest)
            engine = pe.engine_for([shape])
            x = _input(args.backend, shape, r["batch"])
            for _ in range(3):  # the first captures its CUDA graph
                t0 = time.perf_counter()
                engine.execute([x])
                _sync(args.backend)
            r["real_run_ms"] = (time.perf_counter() - t0) * 1e3
            r["real_is_quick"] = bool(engine.build_info.get("quick"))
            r["real_is_split"] = bool(engine.build_info.get("split"))
            print(f"{r['batch']:5d} {r['later_run_ms']:15.1f} {r['real_run_ms']:11.1f}"
                  + (" (still quick)" if r["real_is_quick"] else "")
                  + (" (still split)" if r["real_is_split"] else ""), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"network": net.name, "stats": dict(pe.stats), "backend": args.backend,
                       "precision": args.precision, "profile_build_s": build_s,
                       "opt_build_s": opt.build_info["seconds"], "build_workers": workers,
                       "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
