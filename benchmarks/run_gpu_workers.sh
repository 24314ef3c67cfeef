#!/usr/bin/env bash
# Cold builds with and without build workers (issue 14, item 4: cuDNN graphs compiled in
# worker processes, tftrt/engine/backends/cupy_prefetch.py), in one call on the GPU host:
# the workers' GPU test and the build-cache tests, then bench_profile_shapes.py (ResNet50
# network from .whl/networks, FP16, profile 1..128, 11 new batch sizes) with an empty build
# cache and an empty driver JIT cache, with workers and without (TFTRT_BUILD_WORKERS=0), then
# warm (the cache the workers' run left).
#   [MODES="workers noworkers warm"] [TESTS="tests/gpu/..."] \
#     bash benchmarks/run_gpu_workers.sh [seconds]   # TensorFlow session or carried wheels
# Logs and JSON in $OUT (or /tmp/tftrt-bench).
# shellcheck disable=SC1091
source "$(dirname "$0")/gpu_engine_env.sh" "${1:-420}"
log=$out/workers.log
say() { echo "== $* ($(( $(date +%s) - start )) s)" | tee -a "$log"; }
say "GPU tests: build workers, build cache"
tests=${TESTS:-tests/gpu/test_build_workers_gpu.py tests/gpu/test_build_cache_gpu.py}
# shellcheck disable=SC2086
timeout 240 python3 -m pytest -q -p no:cacheprovider $tests 2>&1 | tail -15 | tee -a "$log"
net=.whl/networks/resnet50.onnx.xz
for mode in ${MODES:-workers noworkers warm}; do
  [ "$(left)" -lt 40 ] && { say "out of time before $mode"; break; }
  say "profile build, $mode"
  nw=""; [ $mode = noworkers ] && nw=0
  cache=/tmp/tftrt-cache-$mode; [ $mode = warm ] && cache=/tmp/tftrt-cache-workers
  [ $mode != warm ] && rm -rf "$cache" "/tmp/nvcache-$mode"
  jit=/tmp/nvcache-$mode; [ $mode = warm ] && jit=/tmp/nvcache-workers
  TFTRT_BUILD_WORKERS=$nw CUDA_CACHE_PATH=$jit TFTRT_CACHE_DIR=$cache \
    timeout $(( $(left) - 10 )) python3 benchmarks/bench_profile_shapes.py --backend cupy \
    --precision FP16 --network "$net" --max-batch 128 \
    --batches 1,2,3,5,8,13,21,34,55,89,127 --json "$out/profile_shapes_$mode.json" 2>&1 \
    | grep -v "^W0000\|^I0000" | tee -a "$log" | tail -18
done
say "done"
