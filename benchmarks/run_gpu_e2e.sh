#!/usr/bin/env bash
# One command on the GPU host: end-to-end GPU tests, then the end-to-end benchmark table.
#   [MODELS="resnet50 mobilenet_v2 encoder"] [PRECISIONS="FP16 FP32"] [E2E_ARGS=...] \
#     bash benchmarks/run_gpu_e2e.sh [tests|tf|torch|table|all] [seconds]
# One call per group keeps each under 10 minutes (2026-11-25, H100): ResNet50 + MobileNetV2
# through TF ~290 s, the encoder ~140 s (two conversions of a 340 MB frozen graph, XLA
# compiles), the torch peers ~70 s.
# Needs TensorFlow's GPU build unpacked by gpu-host/pack-tensorflow.sh's install.sh
# (/tmp/tfsite/env.sh). PyTorch peers run in a separate process without that environment.
set -uo pipefail
stage=${1:-all}; budget=${2:-580}
start=$(date +%s); left() { echo $(( budget - ($(date +%s) - start) )); }
out=${OUT:-/tmp/tftrt-bench}; mkdir -p "$out"
json="$out/bench_e2e.json"
models=${MODELS:-resnet50 mobilenet_v2 encoder}
precisions=${PRECISIONS:-FP16 FP32}
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
repo=$(cd "$(dirname "$0")/.." && pwd)
if [ "$stage" = torch ] || [ "$stage" = all ]; then
  ( cd "$repo" && timeout $(( $(left) / 3 )) python3 benchmarks/bench_e2e.py --part torch \
      --out "$json" --iters 30 --models $models ) 2>&1 | tail -5
fi
if [ "$stage" != torch ] && [ "$stage" != table ]; then
  # shellcheck disable=SC1091
  source /tmp/tfsite/env.sh >/dev/null
  export PYTHONPATH="$repo:${PYTHONPATH:-}"
fi
if [ "$stage" = tests ] || [ "$stage" = all ]; then
  # Engine-level GPU tests, then end to end through TensorFlow (one cuDNN plan per conv keeps
  # the builds short), then the stream-order test without tftrt's synchronisation (reported,
  # not required: it shows whether the synchronisation is needed on this host).
  # ENGINE_TESTS / E2E_TESTS: pytest -k expressions selecting a part of each file.
  ( cd "$repo" && TFTRT_CUDNN_CANDIDATES=1 timeout 200 python3 -m pytest \
      tests/gpu/test_cupy_backend.py -q -x -p no:cacheprovider ${ENGINE_TESTS:+-k "$ENGINE_TESTS"} ) \
      > "$out/gpu_engine_tests.log" 2>&1
  tail -3 "$out/gpu_engine_tests.log"
  # A test past TEST_TIMEOUT seconds fails with every thread's stack (pytest-timeout) instead
  # of the whole run being killed silently by the outer timeout.
  per_test=(); python3 -c "import pytest_timeout" 2>/dev/null && \
    per_test=(--timeout="${TEST_TIMEOUT:-240}" --timeout-method=thread)
  ( cd "$repo" && TFTRT_CUDNN_CANDIDATES=1 timeout $(( $(left) - 70 )) python3 -m pytest \
      tests/gpu/test_tf_e2e.py -v -rfEs -p no:cacheprovider --durations=8 "${per_test[@]}" \
      ${E2E_TESTS:+-k "$E2E_TESTS"} ) > "$out/gpu_e2e_tests.log" 2>&1
  grep -v "^\s*$" "$out/gpu_e2e_tests.log" | grep -v "^W0000\|^I0000" | tail -25
  [ -n "${SKIP_NOSYNC:-}" ] || ( cd "$repo" && TFTRT_STREAM_SYNC=0 timeout 60 python3 -m pytest \
      tests/gpu/test_tf_e2e.py -q -p no:cacheprovider -k stream_order ) 2>&1 | tail -1 \
      | sed 's/^/without stream sync: /'
fi
if [ "$stage" = tf ] || [ "$stage" = all ]; then
  ( cd "$repo" && timeout $(( $(left) - 15 )) python3 benchmarks/bench_e2e.py --part tf \
      --out "$json" --iters 30 --models $models --precisions $precisions ${E2E_ARGS:-} ) 2>&1 \
      | grep -v "^W0000\|^I0000\|^WARNING: All" | tail -15
fi
( cd "$repo" && python3 benchmarks/bench_e2e.py --part table --out "$json" ) 2>&1 | tee "$out/table.txt"
