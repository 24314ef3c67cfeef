#!/usr/bin/env bash
# The GPU checks that need TensorFlow's GPU build (gpu-host/pack-tensorflow.sh's install.sh ran:
# /tmp/tfsite/env.sh), in one call before the zoo parts (run_gpu_zoo.sh):
#   1. the engine's GPU tests: every generated kernel against numpy (tests/gpu/test_cupy_backend.py),
#      the tiled depthwise kernel and the squeeze-and-excitation kernels, split path included
#      (tests/gpu/test_dw_gpu.py, tests/gpu/test_se_gpu.py with TFTRT_FUSE_SE=1);
#   2. the engine-boundary tests through TensorFlow (tests/gpu/test_engine_boundaries.py:
#      which op copies device -> host, with the profiler's op names printed) and the arena
#      slots a profile's engines share (tests/gpu/test_dynamic_profiles.py),
#      profile_boundary.py --copies (which variant of a boundary copies: TF's own EagerPyFunc,
#      the status output, DLPack through tensor_bridge, the engine) and bench_boundary.py
#      (what each boundary costs at batch 1);
#   3. the first call at each new batch size inside one profile 1..128 (bench_profile_shapes.py,
#      ResNet50 network from .whl/networks, FP16), with an empty build cache and again in a
#      fresh process with the cache it left (issue 14), split batches on (TFTRT_SPLIT_BATCH=0
#      for the real engine at every first call; TFTRT_QUICK_SHAPES=1 for quick engines).
#   bash benchmarks/run_gpu_tf_checks.sh [seconds]
#   profile_boundary.py (where a graph-function boundary's time goes: TF's floors, the
#   callback's pieces) runs after bench_boundary.py.
# ENGINE_TESTS=0, DW_SE_TESTS=0, COPIES=0, BOUNDARY_BENCH=0, PROFILE_BOUNDARY=0, SHAPES=0 skip those stages.
# Everything goes to $OUT/checks.log (one file: the device tool returns few files) and
# $OUT/profile_shapes_{cold,warm}.json.
set -uo pipefail
budget=${1:-400}
start=$(date +%s); left() { echo $(( budget - ($(date +%s) - start) )); }
repo=$(cd "$(dirname "$0")/.." && pwd)
out=${OUT:-/tmp/tftrt-bench}; mkdir -p "$out"
log="$out/checks.log"
# shellcheck disable=SC1091
source /tmp/tfsite/env.sh >/dev/null
export PYTHONPATH="$repo:${PYTHONPATH:-}" PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
export TFTRT_BACKEND=cupy
cd "$repo"
say() { echo "== $* at $(( $(date +%s) - start )) s" | tee -a "$log"; }
# KERNEL_TESTS=0: only the engine tests of graph capture, a small ResNet, quick engines and
# split batches (the whole file, every generated kernel against numpy, takes ~2 minutes)
if [ "${ENGINE_TESTS:-1}" = 1 ]; then
  say "engine GPU tests (KERNEL_TESTS=${KERNEL_TESTS:-1})"
  sel=(); [ "${KERNEL_TESTS:-1}" = 0 ] && sel=(-k "capture_never or small_resnet or quick_engines or split_batches")
  TFTRT_CUDNN_CANDIDATES=2 timeout 240 python3 -m pytest \
    tests/gpu/test_cupy_backend.py "${sel[@]}" -q -p no:cacheprovider --tb=short -rf >> "$log" 2>&1
  grep -E "passed|failed" "$log" | tail -1
fi
if [ "${DW_SE_TESTS:-1}" = 1 ]; then
  say "depthwise tiled and se GPU tests"
  TFTRT_FUSE_SE=1 timeout 150 python3 -m pytest tests/gpu/test_dw_gpu.py tests/gpu/test_se_gpu.py \
    -q -s -p no:cacheprovider --tb=short -rf >> "$log" 2>&1
  grep -E "passed|failed|DIVERGES" "$log" | tail -4
fi
say "engine-boundary tests"
timeout 200 python3 -m pytest tests/gpu/test_engine_boundaries.py -q -p no:cacheprovider \
  "tests/gpu/test_dynamic_profiles.py::test_engines_of_a_profile_share_one_arena_and_stream_per_concurrent_call" \
  --tb=short -rA -s >> "$log" 2>&1; grep -E "passed|failed" "$log" | tail -1
if [ "${COPIES:-1}" = 1 ]; then
  say "which boundary variant copies device -> host (profile_boundary.py --copies)"
  timeout 120 python3 benchmarks/profile_boundary.py --copies /tmp/tftrt-copies 2>&1 \
    | grep -v "^W0000\|^I0000" | tee -a "$log" | grep -A6 "D2H copies" | tail -60
fi
if [ "${BOUNDARY_BENCH:-1}" = 1 ]; then
  say "what an engine boundary costs at batch 1 (bench_boundary.py)"
  timeout 120 python3 benchmarks/bench_boundary.py --calls 300 2>&1 \
    | grep -v "^W0000\|^I0000" | tee -a "$log" | tail -12
fi
if [ "${PROFILE_BOUNDARY:-1}" = 1 ]; then
  say "where a graph-function boundary's time goes (profile_boundary.py)"
  timeout 150 python3 benchmarks/profile_boundary.py --calls 150 2>&1 \
    | grep -v "^W0000\|^I0000" | tee -a "$log" | tail -30
fi
net=.whl/networks/resnet50.onnx.xz
if [ "${SHAPES:-1}" = 1 ] && [ -f "$net" ]; then
  for mode in cold warm; do
    say "first calls at new batch sizes, $mode build cache"
    [ $mode = cold ] && rm -rf /tmp/tftrt-cache-shapes
    TFTRT_SPLIT_BATCH=${TFTRT_SPLIT_BATCH:-1} TFTRT_QUICK_SHAPES=${TFTRT_QUICK_SHAPES:-0} \
      TFTRT_CACHE_DIR=/tmp/tftrt-cache-shapes timeout $(( $(left) - 10 )) python3 \
      benchmarks/bench_profile_shapes.py --backend cupy --precision FP16 --network "$net" \
      --max-batch 128 --batches 1,2,3,5,8,13,21,34,55,89,127 --profile-calls 3 \
      --json "$out/profile_shapes_$mode.json" 2>&1 | grep -v "^W0000\|^I0000" \
      | tee -a "$log" | tail -16
  done
fi
say "done"
