#!/usr/bin/env bash
# One command on the GPU host for the engine alone (no TensorFlow): installs the carried
# cuDNN-frontend / nvmath wheels, runs GPU tests, then bench_engine.py.
#   [TESTS="attention or sdpa" (a pytest -k expression; "all" for every test)] [STEMS=1 (stem tests, bench_stems.py)] [BENCH="--models encoder --precisions FP16 --batches 1,8,128"] \
#     [TEST_BUDGET=seconds (default a third of the budget)] bash benchmarks/run_gpu_engine.sh [seconds]
# Needs .whl/*.whl and .whl/networks (carry ".whl"); rows land in $OUT (or /tmp/tftrt-bench).
# shellcheck source=benchmarks/gpu_engine_env.sh
source "$(dirname "$0")/gpu_engine_env.sh" "${1:-580}"
if [ -n "${TESTS:-}" ]; then
  sel=(); [ "$TESTS" != all ] && sel=(-k "$TESTS")
  TFTRT_CUDNN_CANDIDATES=2 timeout ${TEST_BUDGET:-$(( $(left) / 3 ))} python3 -m pytest \
    tests/gpu/test_cupy_backend.py -q -p no:cacheprovider -rf "${sel[@]}" > "$out/gpu_tests.log" 2>&1
  grep -E "passed|failed|Error|FAILED" "$out/gpu_tests.log" | tail -15
fi
if [ -n "${STEMS:-}" ]; then  # the zoo's image stems: cuDNN against im2col and stem_direct
  timeout 300 python3 -m pytest tests/gpu/test_im2col_gpu.py tests/gpu/test_stem_gpu.py -q -s \
    -p no:cacheprovider -rf 2>&1 | grep -v "^W0000\|^I0000" > "$out/stems_tests.txt"
  grep -E "passed|failed|FAILED|Error|\[im2col\]|\[stem\]" "$out/stems_tests.txt" | cut -c1-400 | tail -24
  timeout $(( $(left) / 2 )) python3 benchmarks/bench_stems.py 2>&1 | tee "$out/stems.txt" \
    | grep -v "^W0000\|^I0000" | cut -c1-300 | tail -40
fi
if [ -n "${BENCH:-}" ]; then
  # shellcheck disable=SC2086
  BENCH_ROWS="$out/bench_engine.jsonl" timeout $(( $(left) - 10 )) python3 \
    benchmarks/bench_engine.py $BENCH 2>&1 | tee "$out/bench_engine.txt" \
    | grep -v "^# {" | tail -80
fi
