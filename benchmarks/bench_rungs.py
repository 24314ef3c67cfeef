"""A profile's small batches against engines tuned at those batches, layer by layer (issue 14's
steady-state bar: within 10% of per-shape engines at batch 1, 8 and 128).

One profile (batch 1..--max-batch, opt = max) of a segment network from make_networks.py is
built as converter.build() builds it (opt engine tuned, the split ladder made from its
template); for each of --batches the ladder's engine is timed next to an engine built and
tuned at that batch alone, both replayed (CUDA events, warm-up, median), and their layers are
profiled one by one (each replayed alone from a CUDA graph) and printed side by side where they
differ most, with each side's tactic and tuned choice: which layers a template engine loses on.

    source benchmarks/gpu_engine_env.sh 300
    python benchmarks/bench_rungs.py --network .whl/networks/resnet50.onnx.xz --batches 1,8
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


def _median_ms(fn, backend: str, iters: int = 200, warmup: int = 10) -> float:
    if backend == "cupy":
        from bench_engine import _cupy_timer, time_calls
        return float(np.median(time_calls(fn, _cupy_timer(), iters, warmup)))
    from bench_e2e import _wall_times
    return float(np.median(_wall_times(fn, warmup, iters))) * 1e3


def _host(a) -> np.ndarray:
    return np.asarray(a.get() if hasattr(a, "get") else a)


def _choice(layer) -> str:
    from tftrt.engine.backends.cupy_layers import get_record
    rec = get_record(layer) or {}
    keep = {k: v for k, v in rec.items() if k in ("engine", "knobs", "algo", "plan", "for",
                                                   "fused", "tactic", "index")}
    return f"{layer.tactic}" + (f" {json.dumps(keep, default=str)[:70]}" if keep else "")


def _layers(engine, x) -> dict:
    """layer name -> (seconds, layer), each layer replayed alone (CuPy; numpy: none)."""
    ctx = engine.create_execution_context()
    if not hasattr(ctx._impl, "profile"):
        return {}
    prof = ctx._impl.profile([x], repeats=20)
    by_name = {l.name: l for l in engine.network.layers}
    return {name: (t, by_name[name]) for name, t in prof}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--network", default=".whl/networks/resnet50.onnx.xz",
                    help="a make_networks.py .onnx.xz (its largest network) or an .onnx")
    ap.add_argument("--precision", default="FP16")
    ap.add_argument("--backend", default="cupy", choices=("cupy", "numpy"),
                    help="numpy: a check of this script on the host (no layer profiles)")
    ap.add_argument("--max-batch", type=int, default=128)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--top", type=int, default=25,
                    help="layers printed per batch (0: no layer profiles)")
    ap.add_argument("--alone-json", metavar="FILE",
                    help="the tuned-alone engines' times: read from FILE when it exists (built "
                         "by an earlier run, e.g. with another TFTRT_PROFILE_TUNED_RUNGS and "
                         "cache), else measured here and written there")
    ap.add_argument("--json", help="write the rows here")
    ap.add_argument("--cprofile", metavar="FILE",
                    help="profile the profile's build (cProfile; top functions printed, stats "
                         "written to FILE)")
    args = ap.parse_args(argv)

    if args.backend == "cupy":
        import cupy as xp
    else:
        xp = np
    from make_networks import load_networks
    from tftrt.engine import BuilderConfig, build_engine
    from tftrt.engine.backends import get_backend
    from tftrt.engine.onnx_import import network_from_onnx
    from tftrt.engine.shape_template import specializer
    from tftrt.engine.tactics import persistent_timing_cache
    from tftrt.profiles import Profile, ProfileEngine

    if args.network.endswith(".onnx"):
        import onnx
        model = onnx.load(args.network)
    else:
        model = load_networks(args.network)[0]
    inp = model.graph.input[0]
    name = inp.name
    rest = tuple(d.dim_value for d in inp.type.tensor_type.shape.dim[1:])
    net = network_from_onnx(model)
    cache = persistent_timing_cache(get_backend(args.backend))

    def config(choices=None, weights=None):
        return BuilderConfig(precision=args.precision, backend=args.backend, timing_cache=cache,
                             tactic_choices=choices, weight_cache=weights)

    def build(key, choices, weights):
        return build_engine(net, {name: key[0]}, config(choices, weights))

    top = args.max_batch
    t0 = time.perf_counter()
    pe = ProfileEngine([Profile([(1, *rest)], [(top, *rest)], [(top, *rest)])], build, args.backend,
                       specializer(net, config()))
    if args.cprofile:
        import cProfile
        import pstats
        prof = cProfile.Profile()
        prof.runcall(pe.build_profiles)
        prof.dump_stats(args.cprofile)
        st = pstats.Stats(prof)
        st.sort_stats("cumulative").print_stats(40)
        st.sort_stats("tottime").print_stats(25)
    else:
        pe.build_profiles()
    build_s = time.perf_counter() - t0
    print(f"# {net.name} {args.precision}: profile 1..{top} built in "
          f"{build_s:.1f} s ({pe.build_seconds}); template: "
          f"{pe.template_errors or 'yes'}; {pe.stats}", flush=True)
    here = []
    if args.backend == "cupy":  # convolutions tuned in this process, not on the build workers
        from tftrt.engine.backends import cupy_layers, cupy_prefetch
        here = cupy_layers.tuned_here()
        p = cupy_prefetch.stats()
        print(f"# tuned here: {len(here)} {here[:6]}; prefetch runs {p.get('runs')}, jobs "
              f"{p.get('jobs')}, seconds {p.get('seconds', 0):.1f}", flush=True)
    known = {}
    if args.alone_json and os.path.exists(args.alone_json):
        with open(args.alone_json) as f:
            known = {int(k): v for k, v in json.load(f).items()}
    out = []
    for b in [int(v) for v in args.batches.split(",") if v.strip()]:
        x = xp.asarray(np.random.default_rng(b).standard_normal((b, *rest)).astype(np.float32))
        rung = pe.engine_for([(b, *rest)], quick=False)
        rung_ms = _median_ms(lambda: pe.execute([x]), args.backend)
        if b in known:
            print(f"batch {b}: profile's engine {rung_ms:.3f} ms, tuned alone "
                  f"{known[b]['alone_ms']:.3f} ms (ratio {rung_ms / known[b]['alone_ms']:.3f}; "
                  f"{'tuned' if rung.build_info.get('tuned') else 'not tuned'})", flush=True)
            out.append({"batch": b, "rung_ms": rung_ms, "alone_ms": known[b]["alone_ms"],
                        "rung_tuned": bool(rung.build_info.get("tuned"))})
            continue
        t0 = time.perf_counter()
        alone = build_engine(net, {name: (b, *rest)}, config())
        alone_s = time.perf_counter() - t0
        ctx = alone.create_execution_context()
        alone_ms = _median_ms(lambda: ctx.execute([x]), args.backend)
        y_r = _host(pe.execute([x])[0]).astype(np.float64)
        y_a = _host(ctx.execute([x])[0]).astype(np.float64)
        diff = float(np.linalg.norm(y_r - y_a) / max(np.linalg.norm(y_a), 1e-30))
        lr, la = (_layers(rung, x), _layers(alone, x)) if args.top else ({}, {})
        sr, sa = sum(t for t, _ in lr.values()), sum(t for t, _ in la.values())
        print(f"\n## batch {b}: profile's engine {rung_ms:.3f} ms, tuned alone {alone_ms:.3f} ms "
              f"(ratio {rung_ms / alone_ms:.3f}; built alone in {alone_s:.1f} s; outputs differ "
              f"by {diff:.1e}); layers replayed alone: {sr * 1e3:.3f} ms against "
              f"{sa * 1e3:.3f} ms; {rung.build_info.get('split') or 'not split'}", flush=True)
        names = [n for n in lr if n in la]
        only = sorted(set(lr) ^ set(la))
        if only:
            print(f"#   layers on one side only: {only[:12]}")
        rows = sorted(names, key=lambda n: -(lr[n][0] - la[n][0]))
        print(f"   {'rung us':>8} {'alone us':>8} {'diff':>7}  layer: rung's choice | alone's")
        for n in rows[:args.top]:
            (tr, l_r), (ta, l_a) = lr[n], la[n]
            print(f"   {tr * 1e6:8.1f} {ta * 1e6:8.1f} {(tr - ta) * 1e6:7.1f}  {n[-34:]} "
                  f"({l_r.kind}): {_choice(l_r)} | {_choice(l_a)}")
        by_tactic = {}
        for n in names:
            k = (lr[n][1].kind, lr[n][1].tactic, la[n][1].tactic)
            acc = by_tactic.setdefault(k, [0, 0.0, 0.0])
            acc[0] += 1
            acc[1] += lr[n][0]
            acc[2] += la[n][0]
        print("   by kind and tactic (rung -> alone): count, rung ms, alone ms")
        for (kind, t_r, t_a), (cnt, a, c) in sorted(by_tactic.items(), key=lambda kv: -kv[1][1]):
            print(f"     {kind:10s} {str(t_r):10s} -> {str(t_a):10s} x{cnt:3d} {a * 1e3:7.3f} "
                  f"{c * 1e3:7.3f}")
        out.append({"batch": b, "rung_ms": rung_ms, "alone_ms": alone_ms, "alone_build_s":
                    alone_s, "rung_layers_ms": sr * 1e3, "alone_layers_ms": sa * 1e3,
                    "rel_diff": diff, "rung_tuned": bool(rung.build_info.get("tuned"))})
        ctx = alone = None  # freed before the next batch
    if args.alone_json and not known:
        with open(args.alone_json, "w") as f:
            json.dump({r["batch"]: {"alone_ms": r["alone_ms"]} for r in out}, f)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"tuned_rungs": os.environ.get("TFTRT_PROFILE_TUNED_RUNGS", "2"),
                       "build_s": build_s, "tuned_here": len(here), "build_parts_s": pe.build_seconds, "rows": out},
                      f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
