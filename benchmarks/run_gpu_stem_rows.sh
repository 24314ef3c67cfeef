#!/usr/bin/env bash
# The stem kernel's row tiles (s52) on the GPU host in one call (engines alone, no TensorFlow),
# carrying ".whl/<the two wheels>" and ".whl/networks/resnet50_int8*":
#   bash benchmarks/run_gpu_stem_rows.sh [seconds]
# 1. the stem GPU tests (row tiles and gathers, against numpy);
# 2. bench_stems: the zoo stems on $WAYS (cuDNN, stem_mma's gathers, its row tiles), $REPS times,
#    (the conv alone in parentheses, with each kernel's registers);
# 3. ResNet50 INT8 and FP16 at batch 128 (run_gpu_int8.sh's configs), with per-layer profiles,
#    the stem on gathers and with the defaults (row tiles for ResNet's stem; $CONFIGS).
# Logs go to $OUT as they are written (a call cut short still returns them).
# shellcheck source=benchmarks/gpu_engine_env.sh
source "$(dirname "$0")/gpu_engine_env.sh" "${1:-580}"
nvidia-smi -L | tee "$out/gpu.txt"
TFTRT_BACKEND=cupy timeout $(( $(left) / 4 )) python3 -m pytest tests/gpu/test_stem_mma_gpu.py \
  -q -rf -p no:cacheprovider --tb=short -k "not through_tensorflow" > "$out/stem_tests.log" 2>&1
grep -E "passed|failed|FAILED|Error" "$out/stem_tests.log" | tail -8
for i in $(seq "${REPS:-2}"); do
  # shellcheck disable=SC2086
  timeout $(( $(left) / 4 )) python3 benchmarks/bench_stems.py --out float16 \
    --stems "vgg 3x3 s1" "resnet 7x7 s2" "mobilenet 3x3 s2" "inception 3x3 s2" \
    "convnext 4x4 s4" --ways ${WAYS:-cudnn stem_mma-gather stem_mma-rows} 2>&1 \
    | tee -a "$out/stems.log" | grep -v "^# "
done
[ "${ENGINES:-1}" = 1 ] && TESTS=0 MODELS=resnet50_int8 BATCHES=${BATCHES:-128} \
  CONFIGS=${CONFIGS:-"int8gather int8res fp16gather fp16"} STAGE_S=${STAGE_S:-150} \
  bash benchmarks/run_gpu_int8.sh "$(( $(left) - 10 ))"
