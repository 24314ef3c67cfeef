#!/usr/bin/env bash
# One command on the GPU host, engine alone (no TensorFlow), for the checks that the CPU cannot
# make; run in two calls of the device tool back to back (each fits its 600 s):
#   bash benchmarks/run_gpu_checks.sh build [seconds]   cold static builds with the cuDNN
#        candidate trace (ResNet50, DenseNet121, MobileNetV3Large: does a losing candidate
#        ever win by enough to pay for its build?), then the squeeze-and-excitation GPU tests
#        and engine timings with and without TFTRT_FUSE_SE (EfficientNetB0, MobileNetV3Large)
#   bash benchmarks/run_gpu_checks.sh quant [seconds]   the build-cache GPU tests, the INT8 /
#        FP8 kernel probe and the INT8 GPU tests (build-time validation of each quantized layer)
#   bash benchmarks/run_gpu_checks.sh shapes [seconds]  first calls at new batch sizes of a
#        ResNet50 profile 1..128, cold and warm build cache, the first three profiled by library
#   bash benchmarks/run_gpu_checks.sh kernels [seconds] the tiled depthwise kernel and the se
#        split path: their GPU tests, then ConvNeXtTiny / EfficientNetB0 / MobileNetV3Large
#        with both off and both on (TFTRT_DW_TILED, TFTRT_FUSE_SE), fresh build caches;
#        KERNEL_TESTS=0 skips the tests, BATCHES (default 1,8,128) picks the batch sizes
#   bash benchmarks/run_gpu_checks.sh final [seconds]   the GPU tests of the depthwise / se
#        defaults (the dw_tiled margin), graph capture with the GC paused, quick engines,
#        split batches; first calls at new batch sizes of a ResNet50 profile (cold, split
#        batches); MODELS (MobileNetV2,EfficientNetV2B0)
#        with the tiled depthwise kernel and se fusion on (the defaults) and off
#   bash benchmarks/run_gpu_checks.sh verify [seconds]  the se / INT8 tests again and a cold
#        ResNet50 build with the candidate trace (runtime-compiled plans capped)
# Needs the cuDNN-frontend / nvmath wheels and the networks in .whl (carry them); logs, rows
# and traces in $OUT.
# shellcheck source=benchmarks/gpu_engine_env.sh
source "$(dirname "$0")/gpu_engine_env.sh" "${2:-580}"
unset CUPY_CACHE_DIR
export TFTRT_BACKEND=cupy
stage=${1:-build}
if [ "$stage" = build ]; then
  echo "== cold static builds with the candidate trace at $(( $(date +%s) - start )) s"
  rm -rf /tmp/tftrt-cache-trace
  TFTRT_CUDNN_TRACE="$out/cudnn_trace_static.jsonl" TFTRT_CACHE_DIR=/tmp/tftrt-cache-trace \
    BENCH_ROWS="$out/bench_trace.jsonl" timeout $(( $(left) / 2 )) python3 \
    benchmarks/bench_engine.py --models ResNet50,DenseNet121,MobileNetV3Large \
    --precisions FP16 --batches 128 --peers= 2>&1 | tee "$out/bench_trace.txt" \
    | grep -v "^# {" | grep -v "^ \{3,\}" | tail -12
  echo "== se GPU tests at $(( $(date +%s) - start )) s"
  timeout 120 python3 -m pytest tests/gpu/test_se_gpu.py -q -p no:cacheprovider -rf \
    > "$out/se_tests.log" 2>&1; tail -5 "$out/se_tests.log"
  echo "== se timings at $(( $(date +%s) - start )) s"
  for fuse in 0 1; do
    echo "-- TFTRT_FUSE_SE=$fuse"
    env TFTRT_FUSE_SE=$fuse TFTRT_CACHE_DIR=/tmp/tftrt-cache-trace \
      BENCH_ROWS="$out/bench_se$fuse.jsonl" timeout $(( $(left) - 20 )) python3 \
      benchmarks/bench_engine.py --models EfficientNetB0,MobileNetV3Large --precisions FP16 \
      --batches 1,128 --peers= 2>&1 | tee "$out/bench_se$fuse.txt" \
      | grep -v "^# {" | grep -v "^ \{3,\}" | tail -8
  done
fi
if [ "$stage" = quant ]; then
  echo "== build-cache GPU tests at $(( $(date +%s) - start )) s"
  timeout 200 python3 -m pytest tests/gpu/test_build_cache_gpu.py -q -p no:cacheprovider -rf \
    > "$out/build_cache_tests.log" 2>&1; tail -5 "$out/build_cache_tests.log"
  echo "== INT8 / FP8 probe at $(( $(date +%s) - start )) s"
  timeout 150 python3 benchmarks/probe_quant_kernels.py --json "$out/probe.json" \
    > "$out/probe.log" 2>&1; tail -30 "$out/probe.log"
  echo "== INT8 GPU tests at $(( $(date +%s) - start )) s"
  timeout $(( $(left) - 10 )) python3 -m pytest tests/gpu/test_int8_gpu.py -q -rA -s \
    -p no:cacheprovider --log-cli-level=INFO > "$out/int8_tests.log" 2>&1
  grep -E "passed|failed|FAILED|Error|kept|reject" "$out/int8_tests.log" | tail -40
fi
if [ "$stage" = shapes ]; then  # first calls at new batch sizes, cold then warm, profiled
  for mode in cold warm; do
    [ $mode = cold ] && rm -rf /tmp/tftrt-cache-shapes
    echo "== first calls at new batch sizes, $mode build cache at $(( $(date +%s) - start )) s"
    TFTRT_CACHE_DIR=/tmp/tftrt-cache-shapes timeout $(( $(left) - 10 )) python3 \
      benchmarks/bench_profile_shapes.py --backend cupy --precision FP16 \
      --network .whl/networks/resnet50.onnx.xz --max-batch 128 \
      --batches 1,2,3,5,8,13,21,34,55,89,127 --profile-calls 3 \
      --json "$out/profile_shapes_$mode.json" 2>&1 | tee "$out/shapes_$mode.log" | tail -22
  done
fi
if [ "$stage" = kernels ]; then  # the kernels written without a GPU: tiled depthwise, se split
  [ "${KERNEL_TESTS:-1}" = 1 ] && echo "== dw_tiled and se GPU tests at $(( $(date +%s) - start )) s" \
  && TFTRT_FUSE_SE=1 timeout 240 python3 -m pytest tests/gpu/test_dw_gpu.py tests/gpu/test_se_gpu.py \
    -q -s -p no:cacheprovider -rf > "$out/kernel_tests.log" 2>&1
  grep -E "passed|failed|FAILED|DIVERGES" "$out/kernel_tests.log" 2>/dev/null | tail -12
  for dw in 0 1; do  # a fresh build cache each: a cached dw_direct choice is never re-timed
    echo "-- TFTRT_DW_TILED=$dw TFTRT_FUSE_SE=$dw at $(( $(date +%s) - start )) s"
    rm -rf /tmp/tftrt-cache-k$dw
    TFTRT_DW_TILED=$dw TFTRT_FUSE_SE=$dw TFTRT_CACHE_DIR=/tmp/tftrt-cache-k$dw \
      BENCH_ROWS="$out/bench_kernels$dw.jsonl" timeout $(( $(left) / (2 - dw) - 10 )) python3 \
      benchmarks/bench_engine.py --models ConvNeXtTiny,EfficientNetB0,MobileNetV3Large \
      --precisions FP16 --batches ${BATCHES:-1,8,128} --peers= --profile ConvNeXtTiny:FP16:128 2>&1 \
      | tee "$out/bench_kernels$dw.txt" | grep -v "^# {" | grep -v "^ \{3,\}" | tail -12
  done
fi
if [ "$stage" = verify ]; then  # the fixes of the two stages above, in one short call
  timeout 90 python3 -m pytest tests/gpu/test_se_gpu.py tests/gpu/test_int8_gpu.py -q \
    -p no:cacheprovider --tb=short -rf -k "se_ or unaligned or writes_nothing" \
    > "$out/verify_tests.log" 2>&1; tail -4 "$out/verify_tests.log"
  rm -rf /tmp/tftrt-cache-verify
  TFTRT_CUDNN_TRACE="$out/cudnn_trace_verify.jsonl" TFTRT_CACHE_DIR=/tmp/tftrt-cache-verify \
    timeout $(( $(left) - 5 )) python3 benchmarks/bench_engine.py --models ResNet50 \
    --precisions FP16 --batches 128 --peers= 2>&1 | grep -v "^# {" | tail -3
fi
if [ "$stage" = final ]; then  # the defaults turned on, in one call
  echo "== GPU tests at $(( $(date +%s) - start )) s"
  { timeout 100 python3 -m pytest tests/gpu/test_cupy_backend.py -q -p no:cacheprovider \
      --tb=short -rf -k "capture_never or small_resnet or quick_engines or split_batches"
    timeout 120 python3 -m pytest tests/gpu/test_dw_gpu.py tests/gpu/test_se_gpu.py -q -s \
      -p no:cacheprovider --tb=short -rf; } > "$out/final_tests.log" 2>&1
  grep -E "passed|failed|FAILED|did not apply|^\(" "$out/final_tests.log" | tail -14
  echo "== first calls at new batch sizes, cold, split batches at $(( $(date +%s) - start )) s"
  rm -rf /tmp/tftrt-cache-final
  TFTRT_SPLIT_BATCH=1 TFTRT_CACHE_DIR=/tmp/tftrt-cache-final timeout 110 python3 \
    benchmarks/bench_profile_shapes.py --backend cupy --precision FP16 \
    --network .whl/networks/resnet50.onnx.xz --max-batch 128 \
    --batches 1,2,3,5,8,13,21,34,55,89,127 --profile-calls 2 \
    --json "$out/profile_shapes_cold.json" 2>&1 | tee "$out/shapes_cold.log" | tail -16
  for on in 1 0; do  # the new defaults, then both off; a fresh build cache each
    echo "-- TFTRT_DW_TILED=$on TFTRT_FUSE_SE=$on at $(( $(date +%s) - start )) s"
    rm -rf /tmp/tftrt-cache-f$on
    TFTRT_DW_TILED=$on TFTRT_FUSE_SE=$on TFTRT_CACHE_DIR=/tmp/tftrt-cache-f$on \
      BENCH_ROWS="$out/bench_final$on.jsonl" timeout $(( $(left) / (1 + on) - 5 )) python3 \
      benchmarks/bench_engine.py --models ${MODELS:-MobileNetV2,EfficientNetV2B0} \
      --precisions FP16 --batches 1,128 --peers= 2>&1 | tee "$out/bench_final$on.txt" \
      | grep -v "^# {" | grep -v "^ \{3,\}" | tail -8
  done
fi
echo "== done at $(( $(date +%s) - start )) s"
