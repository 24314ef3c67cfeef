#!/usr/bin/env bash
# Issue 15, the fused projection shortcut (s51), on the GPU host in one call (engines alone, no
# TensorFlow), carrying ".whl/<the two wheels>" and ".whl/networks/resnet50*":
#   bash benchmarks/run_gpu_projection.sh [seconds]
# 1. bench_qmma: the fused kernel (FUSED rows) checked against the two layers' arithmetic and
#    timed beside the residual conv and the projection alone, stages 1-3 (CuPy only);
# 2. the INT8 GPU tests of q_mma and the fused projection (validation, bit-exact vs unfused);
# 3. ResNet50 INT8 at batch 128: int8res, then int8proj (TFTRT_QUANT_MMA_PROJECTION=1) with the
#    same build cache (run_gpu_int8.sh's configs), each row with its per-layer profile.
# Logs go to $OUT as they are written (a call cut short still returns them).
# shellcheck source=benchmarks/gpu_engine_env.sh
source "$(dirname "$0")/gpu_engine_env.sh" "${1:-580}"
nvidia-smi -L | tee "$out/gpu.txt"
timeout $(( $(left) / 4 )) python3 benchmarks/bench_qmma.py \
  --only s1_conv3,s1_proj_64to256_int8x,s2_conv3,s3_conv3,_s2 --configs "1,0,0 1,8,0 1,4,64" \
  2>&1 | tee "$out/qmma.log" | tail -40
TFTRT_BACKEND=cupy timeout $(( $(left) / 4 )) python3 -m pytest tests/gpu/test_int8_gpu.py -q -s \
  -rf -p no:cacheprovider --tb=short -k "projection or tensor_core_gemm" \
  > "$out/proj_tests.log" 2>&1
grep -E "passed|failed|FAILED|Error" "$out/proj_tests.log" | tail -8
TESTS=0 MODELS=resnet50_int8 BATCHES=${BATCHES:-128} CONFIGS=${CONFIGS:-"int8res int8proj"} \
  STAGE_S=${STAGE_S:-200} bash benchmarks/run_gpu_int8.sh "$(( $(left) - 10 ))"
