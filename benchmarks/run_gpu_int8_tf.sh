#!/usr/bin/env bash
# ResNet50 INT8 through TensorFlow (issue 15) on the GPU host, after the TensorFlow pack's
# install.sh (/tmp/tfsite/env.sh), in two calls on one warm machine:
#   bash benchmarks/run_gpu_int8_tf.sh check [seconds]   # the INT8 TF-level and GPU-calibration
#       GPU tests, then how long calibration takes on the GPU (TFTRT_CALIBRATE_ON_GPU=1)
#   [CAL=1] [CALIB=4] [PRECISIONS="INT8 FP16"] bash benchmarks/run_gpu_int8_tf.sh e2e [seconds]
#       bench_e2e.py: TF native FP32, TF XLA FP16, then tftrt in each precision at batch 1 and
#       128, calibrated on CALIB batches of 128 (on the GPU unless CAL=0); the table
# The e2e rows accumulate in /tmp/int8-e2e.json (copied to $OUT), so a second e2e call on the
# same machine adds to the table. Logs in $OUT as they go.
set -uo pipefail
stage=${1:-check}; budget=${2:-580}
start=$(date +%s); left() { echo $(( budget - ($(date +%s) - start) )); }
repo=$(cd "$(dirname "$0")/.." && pwd); out=${OUT:-/tmp/tftrt-bench}; mkdir -p "$out"
# shellcheck disable=SC1091
source /tmp/tfsite/env.sh >/dev/null
export PYTHONPATH="$repo:${PYTHONPATH:-}" TFTRT_BACKEND=cupy PYTHONUNBUFFERED=1 \
  TF_CPP_MIN_LOG_LEVEL=2 TFTRT_CUDNN_CANDIDATES=${TFTRT_CUDNN_CANDIDATES:-2}
cd "$repo"
nvidia-smi -L | tee -a "$out/int8tf_gpu.txt"
if [ "$stage" = check ]; then
  timeout $(( $(left) / 2 )) python3 -m pytest tests/gpu/test_int8_gpu.py -q -rfE \
    -p no:cacheprovider --tb=short \
    -k "${TESTK:-calibration_on_the_gpu or calibrated_keras_cnn_through_tensorflow}" \
    2>&1 | grep -v "^W0000\|^I0000" | tee "$out/int8tf_tests.log" | tail -15
  TFTRT_CALIBRATE_ON_GPU=1 timeout $(( $(left) - 10 )) python3 benchmarks/bench_calibration.py \
    --batch 128 --batches "${CALIB:-4}" 2>&1 | grep -v "^W0000\|^I0000" \
    | tee "$out/calib_gpu.log" | tail -14
else
  TFTRT_CALIBRATE_ON_GPU=${CAL:-1} timeout $(( $(left) - 25 )) python3 benchmarks/bench_e2e.py \
    --part tf --out /tmp/int8-e2e.json --iters 30 --models resnet50 \
    --precisions ${PRECISIONS:-INT8 FP16} --batches 1 128 --calib-batches "${CALIB:-4}" 2>&1 \
    | grep -v "^W0000\|^I0000\|^WARNING: All" | tee "$out/int8tf_e2e.log" | tail -12
  python3 benchmarks/bench_e2e.py --part table --out /tmp/int8-e2e.json 2>&1 \
    | tee "$out/int8tf_table.txt"
  cp /tmp/int8-e2e.json "$out/" 2>/dev/null
fi
