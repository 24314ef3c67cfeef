#!/usr/bin/env bash
# Issue 14's serving trace on the GPU host, in a TensorFlow session (gpu-host/pack-tensorflow.sh's
# install.sh ran: /tmp/tfsite/env.sh): 2,000 requests of batch sizes drawn from 1..64 through
# TensorFlow, tftrt (one dynamic-shape profile, FP16) vs TF XLA (compiling each new batch size as
# it arrives) vs native TF, in one process (benchmarks/serving_trace.py).
#   [RUNNERS=tftrt,xla,native] [TFTRT_SPLIT_BATCH=0] [REQUESTS=2000] [MODEL=ResNet50] \
#     [TRACE_ARGS="--runner-deadline 400"] bash benchmarks/run_gpu_serving_trace.sh [seconds]
# XLA compiles up to 64 shapes (minutes for ResNet50): give it a call of its own (RUNNERS=xla),
# with --runner-deadline when even that is short (bounds for the whole trace are reported). Output: $OUT/serving_trace.log and $OUT/serving_trace_<runners>.json.
set -uo pipefail
budget=${1:-580}
repo=$(cd "$(dirname "$0")/.." && pwd)
out=${OUT:-/tmp/tftrt-bench}; mkdir -p "$out"
runners=${RUNNERS:-tftrt,xla,native}
# shellcheck disable=SC1091
source /tmp/tfsite/env.sh >/dev/null
export PYTHONPATH="$repo:${PYTHONPATH:-}" PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
cd "$repo" && timeout "$budget" python3 benchmarks/serving_trace.py --model "${MODEL:-ResNet50}" \
  --requests "${REQUESTS:-2000}" --max-batch 64 --backend cupy --precision FP16 \
  --runners "$runners" ${TRACE_ARGS:-} --json "$out/serving_trace_${runners//,/_}.json" 2>&1 \
  | grep -v "^W0000\|^I0000" | tee -a "$out/serving_trace.log" | tail -30
