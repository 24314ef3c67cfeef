#!/usr/bin/env bash
# The stem with its max pool fused (s53) on the GPU host in one call (CuPy only, no
# TensorFlow), carrying ".whl/<the two wheels>" and ".whl/networks/resnet50_int8*":
#   bash benchmarks/run_gpu_stem_pool.sh [seconds]
# 1. bench_stem_pool: ResNet's stem + pool as two kernels against the fused one (checked equal),
#    float16 and int8, $REPS times;
# 2. the pooled GPU tests;
# 3. ResNet50 INT8 and FP16 engines at batch 128 with and without the fusion (run_gpu_int8.sh's
#    configs, $CONFIGS).
# Logs go to $OUT as they are written (a call cut short still returns them).
# shellcheck source=benchmarks/gpu_engine_env.sh
source "$(dirname "$0")/gpu_engine_env.sh" "${1:-580}"
nvidia-smi -L | tee "$out/gpu.txt"
for i in $(seq "${REPS:-2}"); do
  timeout $(( $(left) / 4 )) python3 benchmarks/bench_stem_pool.py 2>&1 \
    | tee -a "$out/stem_pool.log"
done
TFTRT_BACKEND=cupy timeout $(( $(left) / 4 )) python3 -m pytest tests/gpu/test_stem_pool_gpu.py \
  -q -rf -p no:cacheprovider --tb=short > "$out/stem_pool_tests.log" 2>&1
grep -E "passed|failed|FAILED|Error" "$out/stem_pool_tests.log" | tail -8
[ "${ENGINES:-1}" = 1 ] && TESTS=0 MODELS=resnet50_int8 BATCHES=${BATCHES:-128} \
  CONFIGS=${CONFIGS:-"int8stempool int8nostempool fp16stempool fp16nostempool"} \
  STAGE_S=${STAGE_S:-150} \
  bash benchmarks/run_gpu_int8.sh "$(( $(left) - 10 ))"
