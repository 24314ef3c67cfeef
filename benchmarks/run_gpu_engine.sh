#!/usr/bin/env bash
# One command on the GPU host for the engine alone (no TensorFlow): installs the carried
# cuDNN-frontend / nvmath wheels, runs GPU tests, then bench_engine.py.
#   [TESTS="attention or sdpa" (a pytest -k expression; "all" for every test)] [BENCH="--models encoder --precisions FP16 --batches 1,8,128"] \
#     [TEST_BUDGET=seconds (default a third of the budget)] bash benchmarks/run_gpu_engine.sh [seconds]
# Needs .whl/*.whl and .whl/networks (carry ".whl"); rows land in $OUT (or /tmp/tftrt-bench).
set -uo pipefail
budget=${1:-580}
start=$(date +%s); left() { echo $(( budget - ($(date +%s) - start) )); }
repo=$(cd "$(dirname "$0")/.." && pwd)
out=${OUT:-/tmp/tftrt-bench}; mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site "$repo"/.whl/*.whl 2>&1 | tail -2
export PYTHONPATH="$repo:/tmp/site" CUDA_VISIBLE_DEVICES=0 PYTHONUNBUFFERED=1
cd "$repo"
if [ -n "${TESTS:-}" ]; then
  sel=(); [ "$TESTS" != all ] && sel=(-k "$TESTS")
  TFTRT_CUDNN_CANDIDATES=2 timeout ${TEST_BUDGET:-$(( $(left) / 3 ))} python3 -m pytest \
    tests/gpu/test_cupy_backend.py -q -p no:cacheprovider -rf "${sel[@]}" > "$out/gpu_tests.log" 2>&1
  grep -E "passed|failed|Error|FAILED" "$out/gpu_tests.log" | tail -15
fi
if [ -n "${BENCH:-}" ]; then
  # shellcheck disable=SC2086
  BENCH_ROWS="$out/bench_engine.jsonl" timeout $(( $(left) - 10 )) python3 \
    benchmarks/bench_engine.py $BENCH 2>&1 | tee "$out/bench_engine.txt" \
    | grep -v "^# {" | tail -80
fi
