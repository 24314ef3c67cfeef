#!/usr/bin/env bash
# Cold and warm engine builds with the persistent build caches (issue 14, items 3 and 4), on the
# GPU host, engine alone (no TensorFlow). One fresh process per mode and model set:
#   static       static-shape cuDNN graphs, no plan cache (TFTRT_CUDNN_PLAN_CACHE=0), an
#                empty build cache
#   static-again the same in a new process, the build cache emptied again: what the machine
#                kept between processes (the CUDA driver's JIT cache, the page cache) alone
#   static-nojit the same with CUDA_CACHE_DISABLE=1 (no driver JIT cache): with static-again,
#                says which of the two made a second cold build faster
#   static-warm  the build cache "static" left behind (a rebuild in a new process)
#   kc           TFTRT_CUDNN_KERNEL_CACHE=1 (dynamic-shape graphs, cuDNN's kernel cache),
#                an empty build cache
#   kc-warm      the same, the build cache "kc" left behind
#   plans        the plan cache on (the default: chosen plans serialized into the build
#                cache), an empty build cache: tuned graphs are not stored
#   plans-warm   the build cache "plans" left behind: built from the recorded choices, whose
#                plans are stored
#   plans-load   the same again: the stored plans deserialized, no runtime compile
# then the GPU tests of the caches. Build seconds, engine speed and golden errors per row.
#   [MODELS=ResNet50,DenseNet121] [BATCHES=128] [MODES="static static-warm"] \
#     bash benchmarks/run_gpu_build_cache.sh [seconds]
# Needs the cuDNN-frontend / nvmath wheels and the networks in .whl (carry them). Rows, logs
# and traces go to /tmp/tftrt-build-cache-files, packed after every mode into
# $OUT/build_cache_files.tgz: a call brings back only a few files from $OUT (three a mode
# were too many), and a timeout still leaves the modes done.
# shellcheck source=benchmarks/gpu_engine_env.sh
source "$(dirname "$0")/gpu_engine_env.sh" "${1:-580}"
unset CUPY_CACHE_DIR
bc=/tmp/tftrt-build-cache-files; rm -rf "$bc"; mkdir -p "$bc"  # outside $OUT: packed
models=${MODELS:-resnet50,DenseNet121,MobileNetV3Large}
batches=${BATCHES:-128}
modes=${MODES:-static static-warm kc kc-warm}
for mode in $modes; do
  kc=0; plans=0; dir=/tmp/tftrt-cache-static
  case $mode in kc*) kc=1; dir=/tmp/tftrt-cache-kc;; esac
  case $mode in plans*) plans=1; dir=/tmp/tftrt-cache-plans;; esac
  case $mode in *-warm|*-load) ;; *) rm -rf "$dir";; esac
  nojit=0; [ "$mode" = static-nojit ] && nojit=1
  echo "== $mode (TFTRT_CUDNN_KERNEL_CACHE=$kc TFTRT_CUDNN_PLAN_CACHE=$plans, CUDA_CACHE_DISABLE=$nojit, TFTRT_CACHE_DIR=$dir) at $(( $(date +%s) - start )) s"
  CUDA_CACHE_DISABLE=$nojit \
  TFTRT_CUDNN_TRACE="$bc/cudnn_trace_$mode.jsonl" TFTRT_CUDNN_PLAN_CACHE=$plans \
  TFTRT_CUDNN_KERNEL_CACHE=$kc TFTRT_CACHE_DIR=$dir BENCH_ROWS="$bc/build_$mode.jsonl" \
    timeout $(( $(left) - 60 )) python3 benchmarks/bench_engine.py --models "$models" \
    --precisions FP16 --batches "$batches" --peers= 2>&1 | tee "$bc/build_$mode.txt" \
    | grep -v "^# {" | grep -v "^ \{3,\}" | tail -12
  du -sh "$dir"/v1/*/* "$dir"/cupy 2>/dev/null
  tar czf "$out/build_cache_files.tgz" -C "$bc" .
done
timeout $(( $(left) - 5 )) python3 -m pytest tests/gpu/test_build_cache_gpu.py -q \
  -p no:cacheprovider -rf 2>&1 | tee "$bc/gpu_tests.log" | tail -8
tar czf "$out/build_cache_files.tgz" -C "$bc" .
# Where cold cuDNN build time went: the kept plan vs the losing candidates (TFTRT_CUDNN_TRACE).
python3 - "$bc" <<'PY'
import glob, json, sys
for path in sorted(glob.glob(sys.argv[1] + "/cudnn_trace_*.jsonl")):
    graphs = [json.loads(l) for l in open(path)]
    if not graphs:
        continue
    kept_s = lost_s = 0.0
    first_won = 0
    slow_lost = []
    for g in graphs:
        for c in g["candidates"]:
            if c["index"] == g["kept"]:
                kept_s += c["build_s"]
            else:
                lost_s += c["build_s"]
        first_won += g["kept"] == min(c["index"] for c in g["candidates"])
        kept = next((c for c in g["candidates"] if c["index"] == g["kept"]), None)
        for c in g["candidates"]:
            if c is not kept and c["us"] and kept and kept["us"] and c["build_s"] > 0.2:
                slow_lost.append(c["us"] / kept["us"])
    print(f"{path.rsplit('/', 1)[-1]}: {len(graphs)} tuned graphs; build s of kept plans "
          f"{kept_s:.1f}, of losing candidates {lost_s:.1f}; heuristic #1 kept in "
          f"{first_won}; losing candidates that took > 0.2 s to build ran "
          f"{(sum(slow_lost) / len(slow_lost)) if slow_lost else float('nan'):.2f}x the kept "
          f"plan's time on average ({len(slow_lost)})")
PY
MODES="$modes" python3 - "$bc" <<'PY'
import json, sys, os
rows = {}
modes = os.environ.get("MODES", "static static-warm kc kc-warm").split()
for mode in modes:
    p = os.path.join(sys.argv[1], f"build_{mode}.jsonl")
    if os.path.exists(p):
        for line in open(p):
            r = json.loads(line)
            if r.get("impl") == "tftrt":
                rows.setdefault((r["model"], r["batch"]), {})[mode] = r
print(f"{'model':18s} {'batch':>5s} | build s, ms per mode: {' / '.join(modes)} | relerr")
for (m, b), d in rows.items():
    cell = lambda mode: (f"{d[mode]['build_s']:.1f} s {d[mode]['median_ms']:.3f} ms"
                         if mode in d else "-")
    print(f"{m:18s} {b:5d} | {' / '.join(cell(x) for x in modes)} | "
          f"{max((d[x].get('golden_relerr') or 0) for x in d):.1e}")
PY
