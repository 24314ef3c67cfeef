#!/usr/bin/env bash
# The tensor-core quantized GEMM kernel (tactic q_mma, issue 15) on the GPU host, engines alone
# (CuPy-only: carry ".whl" with the networks of make_networks.py), one call: its GPU tests
# and the INT8 GPU tests beside them, the kernel alone on ResNet50's 1x1 convs
# (bench_qmma.py), then ResNet50 FP16 and INT8 (int8 residuals) with their profiles through
# run_gpu_int8.sh, where the builder times q_mma against cuDNN / cuBLASLt per layer.
#   [QMMA_CONFIGS="1,0,0 1,0,0,1,1,0,0"] bash benchmarks/run_gpu_qmma.sh [seconds]
# Logs in $OUT: qmma_tests.log, qmma_bench.log, then run_gpu_int8.sh's.
# shellcheck source=benchmarks/gpu_engine_env.sh
source "$(dirname "$0")/gpu_engine_env.sh" "${1:-580}"
export TFTRT_BACKEND=cupy TFTRT_CUPY_QUANTIZED=1 TFTRT_QUANT_MMA=${TFTRT_QUANT_MMA:-1}
nvidia-smi -L > "$out/qmma_gpu.txt" 2>&1
timeout 150 python3 -m pytest tests/gpu/test_int8_gpu.py -q -s -rf -p no:cacheprovider \
  --tb=short -k "${TESTK:-tensor_core or residual or chain}" > "$out/qmma_tests.log" 2>&1
grep -E "passed|failed|FAILED|Error" "$out/qmma_tests.log" | tail -8
timeout 120 python3 benchmarks/bench_qmma.py --configs "${QMMA_CONFIGS:-1,0,0 1,0,0,1,1,0,0}" \
  > "$out/qmma_bench.log" 2>&1
cat "$out/qmma_bench.log" | tail -24
TESTS=0 MODELS=resnet50_int8 CONFIGS="${CONFIGS:-fp16 int8res}" STAGE_S=${STAGE_S:-200} \
  bash "$repo/benchmarks/run_gpu_int8.sh" "$(( $(left) - 5 ))"
