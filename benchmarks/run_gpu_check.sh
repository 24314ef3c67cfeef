#!/usr/bin/env bash
# GPU host, one stage per call (each well inside the 10-minute limit); logs land in $OUT.
#   bash benchmarks/run_gpu_check.sh engine   # CuPy engine GPU tests (no TensorFlow needed)
#   bash benchmarks/run_gpu_check.sh tf       # TF end-to-end GPU tests + boundary benchmark
# Needs TensorFlow's GPU pack installed (/tmp/tfsite/env.sh, see gpu-host/pack-tensorflow.sh):
# it also brings cudnn-frontend and nvmath-python.
set -uo pipefail
stage=${1:?stage: engine or tf}
out=${OUT:-/tmp/tftrt-gpu}; mkdir -p "$out"
repo=$(cd "$(dirname "$0")/.." && pwd); cd "$repo"
# shellcheck disable=SC1091
source /tmp/tfsite/env.sh >/dev/null
export PYTHONPATH="$repo:${PYTHONPATH:-}" PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
nvidia-smi --query-gpu=name,driver_version,memory.used,memory.total --format=csv,noheader
case "$stage" in
  engine)
    TFTRT_CUDNN_CANDIDATES=1 timeout "${ENGINE_BUDGET:-420}" python3 -m pytest \
      tests/gpu/test_cupy_backend.py -q -p no:cacheprovider -rf ${TESTS:+-k "$TESTS"} \
      > "$out/engine_tests.log" 2>&1
    grep -E "^(FAILED|ERROR)|passed|failed" "$out/engine_tests.log" | tail -40 ;;
  tf)
    TFTRT_CUDNN_CANDIDATES=1 timeout "${TF_BUDGET:-330}" python3 -m pytest \
      tests/gpu/test_engine_boundaries.py tests/gpu/test_nonfinite_tf_gpu.py \
      tests/gpu/test_tf_e2e.py -q -rfs -p no:cacheprovider ${TESTS:+-k "$TESTS"} > "$out/tf_tests.log" 2>&1
    grep -E "^(FAILED|ERROR|SKIPPED)|passed|failed|D2H copies" "$out/tf_tests.log" | tail -30
    for dev in auto none; do
      TFTRT_ENGINE_DEVICE=$dev timeout 90 python3 benchmarks/bench_boundary.py --calls 300 \
        2>&1 | grep -v "^W0000\|^I0000\|^WARNING: All" | tee -a "$out/boundary.txt" | tail -8
    done ;;
esac
