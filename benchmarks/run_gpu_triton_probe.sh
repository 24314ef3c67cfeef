#!/usr/bin/env bash
# Issue 15, one call on the GPU host (CuPy + PyTorch + Triton there; nothing carried): the Triton
# probe of ResNet50's quantized 1x1 convs (benchmarks/probe_triton_qgemm.py) beside q_mma on the
# same shapes (bench_qmma.py), logs to $OUT as they go.
#   [PROBE_ARGS="--configs few --only s1_conv3,s2_conv3"] bash benchmarks/run_gpu_triton_probe.sh
set -uo pipefail
out=${OUT:-/tmp/tftrt-bench}; mkdir -p "$out"
export PYTHONUNBUFFERED=1 TORCH_SYMM_MEM_DISABLE_MULTICAST=1
cd "$(dirname "$0")/.."
nvidia-smi -L | tee "$out/probe_gpu.txt"
# shellcheck disable=SC2086
timeout "${PROBE_S:-240}" python3 benchmarks/probe_triton_qgemm.py ${PROBE_ARGS:-} 2>&1 \
  | tee "$out/probe_triton.log"
PYTHONPATH=$PWD timeout "${QMMA_S:-150}" python3 benchmarks/bench_qmma.py --configs "1,0,0" \
  --only "${QMMA_ONLY:-s1_conv3_64to256_res,s1_proj_64to256_int8x,s2_conv3,s3_conv3,s3_conv1,s4_conv1}" \
  2>&1 | tee "$out/probe_qmma.log"
