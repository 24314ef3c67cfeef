#!/usr/bin/env bash
# Issue 15 on the GPU host, engines alone (no TensorFlow), one call: the INT8 / FP8 GPU tests,
# then ResNet50 (and the encoder, when its network is there) in FP16, INT8 and FP8 at batch 128
# and 1, INT8 with and without int8 residual storage, each row with its per-layer profile
# at every batch size (INT8 / FP8: time per quantized kernel kind, the slowest layers' plans
# and what validation rejected). The networks are calibrated on the CPU side:
#   python benchmarks/make_networks.py --out .whl/networks --models resnet50,encoder --int8 4
#   python benchmarks/make_networks.py --out .whl/networks --models resnet50,encoder
# then, carrying ".whl":
#   [TESTS=0] [MODELS="resnet50_int8 encoder_int8"] [BATCHES=128,1] [STAGE_S=230] \
#     [CONFIGS="fp16 int8res int8timed int8 fp8 fp8timed"] bash benchmarks/run_gpu_int8.sh [seconds]
# (int8 / int8res / fp8: every allowed layer quantized, TFTRT_QUANT_TIMED_PRECISION=0, the
# kernels themselves; int8nopool: int8res with max pools left float, TFTRT_INT8_POOL=0;
# int8stem: int8res with a stem on stem_mma storing its pool's codes, TFTRT_INT8_POOL_PRODUCER=1
# (the default since s41); int8f16x / fp16f16x: int8res / fp16 with the image's float16 cast
# kept as a layer (TFTRT_FLOAT32_X=0; by default since s41 stem_mma reads the float32 image);
# int8noconv: int8res with q_mma's implicit-GEMM convs off, TFTRT_QUANT_MMA_CONV=0;
# int8nodw: int8res with the quantized depthwise kernel off, TFTRT_QUANT_DW=0;
# fp16s2d / int8s2d: fp16 / int8res with stems as space-to-depth + stride-1 convs,
# TFTRT_STEM_S2D=1 (passes/stem_space_to_depth); int8vecs: int8res with q_mma's per-channel
# operands staged in shared memory, TFTRT_QUANT_MMA_STAGE_VECS=1; int8cvt: int8vecs with the
# accumulator through I2F and the residual through $RES_CVT (TFTRT_QUANT_MMA_I2F=1,
# TFTRT_QUANT_MMA_RES_CVT, default half2) -- since s46 all three are the defaults, so
# int8vecs and int8cvt build what int8res builds; int8il0: int8res with q_mma's MMAs n-tile
# first in every kernel (TFTRT_QUANT_MMA_INTERLEAVE=0; since s47 "auto" interleaves them in the
# pipelined kernels of K <= 64); int8pairs / fp8pairs: int8res / fp8 with tactic
# q_cudnn_pairs offered (TFTRT_QUANT_CUDNN_PAIRS=1, the default since s49: stride-1 3x3 convs
# of <= 64 channels on cuDNN over pixel pairs, timed per layer against q_mma and q_cudnn),
# int8nopairs / fp8nopairs without it;
# int8proj: int8res with each bottleneck's projection shortcut run inside its residual conv's
# q_mma kernel where both are on q_mma (TFTRT_QUANT_MMA_PROJECTION=1, the default since s51);
# int8noproj: int8res without it (TFTRT_QUANT_MMA_PROJECTION=0); int8rows / fp16rows and
# int8gather / fp16gather: int8res / fp16 with the stem kernel's row tiles (s52) or its
# gathers (TFTRT_STEM_MMA_ROWS=1 / 0; by default, since s52, row tiles for K >= 128);
# int8stempool / fp16stempool and int8nostempool / fp16nostempool: int8res / fp16 with the
# stem's max pool fused into its row-tile kernel or not (TFTRT_STEM_MMA_POOL=1 / 0, s53);
# int8timed / fp8timed: the defaults, timed precision on, the row says what it kept)
# Each stage gets a share of the budget and writes its log to $OUT as it goes (a call cut
# short still returns what ran): int8_tests.log, then int8_<model>_<config>.log in run order.
# The build cache lives in /tmp/tftrt-int8-cache for the whole call, so the INT8 configs after
# the first reuse its FP16 / INT8 tactic choices.
# shellcheck source=benchmarks/gpu_engine_env.sh
source "$(dirname "$0")/gpu_engine_env.sh" "${1:-580}"
export TFTRT_BACKEND=cupy TFTRT_CUPY_QUANTIZED=1 TFTRT_CACHE_DIR=/tmp/tftrt-int8-cache
export TFTRT_CUDNN_CANDIDATES=${TFTRT_CUDNN_CANDIDATES:-2}
nvidia-smi -L > "$out/int8_gpu.txt" 2>&1
if [ "${TESTS:-1}" = 1 ]; then
  timeout $(( $(left) / 5 )) python3 -m pytest tests/gpu/test_int8_gpu.py -q -s -rf \
    -p no:cacheprovider --tb=short -k "not through_tensorflow" > "$out/int8_tests.log" 2>&1
  grep -E "passed|failed|FAILED" "$out/int8_tests.log" | tail -6
fi
batches=${BATCHES:-128,1}  # issue 15: batch 1 no slower than FP16
stage=${STAGE_S:-230}  # one config's limit: a cold INT8 ResNet50 build took 94-131 s on an H100 (s34)
for model in ${MODELS:-resnet50_int8 encoder_int8}; do
  [ -f ".whl/networks/$model.onnx.xz" ] || { echo "no .whl/networks/$model.onnx.xz"; continue; }
  for name in ${CONFIGS:-fp16 int8res int8timed int8 fp8}; do
    case $name in
      fp16) prec=FP16 envs="" ;;
      int8) prec=INT8 envs="TFTRT_INT8_RESIDUAL=0 TFTRT_QUANT_TIMED_PRECISION=0" ;;
      int8res) prec=INT8 envs="TFTRT_INT8_RESIDUAL=1 TFTRT_QUANT_TIMED_PRECISION=0" ;;
      int8nopool) prec=INT8
        envs="TFTRT_INT8_RESIDUAL=1 TFTRT_QUANT_TIMED_PRECISION=0 TFTRT_INT8_POOL=0" ;;
      int8stem) prec=INT8
        envs="TFTRT_INT8_RESIDUAL=1 TFTRT_QUANT_TIMED_PRECISION=0 TFTRT_INT8_POOL_PRODUCER=1" ;;
      int8f16x) prec=INT8
        envs="TFTRT_INT8_RESIDUAL=1 TFTRT_QUANT_TIMED_PRECISION=0 TFTRT_FLOAT32_X=0" ;;
      fp16f16x) prec=FP16 envs="TFTRT_FLOAT32_X=0" ;;
      fp16s2d) prec=FP16 envs="TFTRT_STEM_S2D=1" ;;  # the stem as space-to-depth + 4x4 conv
      int8vecs) prec=INT8  # int8res with q_mma's scale / bias staged in shared memory
        envs="TFTRT_INT8_RESIDUAL=1 TFTRT_QUANT_TIMED_PRECISION=0 TFTRT_QUANT_MMA_STAGE_VECS=1" ;;
      int8cvt) prec=INT8  # int8vecs with s46's epilogue conversions ($RES_CVT: half2 or i2f)
        envs="TFTRT_INT8_RESIDUAL=1 TFTRT_QUANT_TIMED_PRECISION=0 TFTRT_QUANT_MMA_STAGE_VECS=1"
        envs="$envs TFTRT_QUANT_MMA_I2F=1 TFTRT_QUANT_MMA_RES_CVT=${RES_CVT:-half2}" ;;
      int8il0) prec=INT8  # int8res with q_mma's MMAs n-tile first everywhere (s46's order)
        envs="TFTRT_INT8_RESIDUAL=1 TFTRT_QUANT_TIMED_PRECISION=0 TFTRT_QUANT_MMA_INTERLEAVE=0" ;;
      int8pairs) prec=INT8  # int8res with the narrow 3x3 convs also timed over pixel pairs
        envs="TFTRT_INT8_RESIDUAL=1 TFTRT_QUANT_TIMED_PRECISION=0 TFTRT_QUANT_CUDNN_PAIRS=1" ;;
      fp8pairs) prec=FP8 envs="TFTRT_QUANT_TIMED_PRECISION=0 TFTRT_QUANT_CUDNN_PAIRS=1" ;;
      int8nopairs) prec=INT8
        envs="TFTRT_INT8_RESIDUAL=1 TFTRT_QUANT_TIMED_PRECISION=0 TFTRT_QUANT_CUDNN_PAIRS=0" ;;
      fp8nopairs) prec=FP8 envs="TFTRT_QUANT_TIMED_PRECISION=0 TFTRT_QUANT_CUDNN_PAIRS=0" ;;
      int8s2d) prec=INT8
        envs="TFTRT_INT8_RESIDUAL=1 TFTRT_QUANT_TIMED_PRECISION=0 TFTRT_STEM_S2D=1" ;;
      int8noconv) prec=INT8  # int8res without q_mma's implicit-GEMM convs
        envs="TFTRT_INT8_RESIDUAL=1 TFTRT_QUANT_TIMED_PRECISION=0 TFTRT_QUANT_MMA_CONV=0" ;;
      int8nodw) prec=INT8  # int8res with depthwise convs emulated (no q_dw)
        envs="TFTRT_INT8_RESIDUAL=1 TFTRT_QUANT_TIMED_PRECISION=0 TFTRT_QUANT_DW=0" ;;
      int8proj) prec=INT8  # int8res with projection shortcuts fused into q_mma residual convs
        envs="TFTRT_INT8_RESIDUAL=1 TFTRT_QUANT_TIMED_PRECISION=0 TFTRT_QUANT_MMA_PROJECTION=1" ;;
      int8noproj) prec=INT8  # int8res with no projection shortcut fused (s51's default: on)
        envs="TFTRT_INT8_RESIDUAL=1 TFTRT_QUANT_TIMED_PRECISION=0 TFTRT_QUANT_MMA_PROJECTION=0" ;;
      int8gather) prec=INT8  # int8res with the stem kernel's gathers everywhere
        envs="TFTRT_INT8_RESIDUAL=1 TFTRT_QUANT_TIMED_PRECISION=0 TFTRT_STEM_MMA_ROWS=0" ;;
      int8rows) prec=INT8  # int8res with the stem kernel's row tiles wherever they apply
        envs="TFTRT_INT8_RESIDUAL=1 TFTRT_QUANT_TIMED_PRECISION=0 TFTRT_STEM_MMA_ROWS=1" ;;
      fp16gather) prec=FP16 envs="TFTRT_STEM_MMA_ROWS=0" ;;
      fp16rows) prec=FP16 envs="TFTRT_STEM_MMA_ROWS=1" ;;
      int8stempool) prec=INT8  # int8res with the stem's max pool fused (s53)
        envs="TFTRT_INT8_RESIDUAL=1 TFTRT_QUANT_TIMED_PRECISION=0 TFTRT_STEM_MMA_POOL=1" ;;
      int8nostempool) prec=INT8
        envs="TFTRT_INT8_RESIDUAL=1 TFTRT_QUANT_TIMED_PRECISION=0 TFTRT_STEM_MMA_POOL=0" ;;
      fp16stempool) prec=FP16 envs="TFTRT_STEM_MMA_POOL=1" ;;
      fp16nostempool) prec=FP16 envs="TFTRT_STEM_MMA_POOL=0" ;;
      int8timed) prec=INT8 envs="TFTRT_INT8_RESIDUAL=1 TFTRT_QUANT_TIMED_PRECISION=1" ;;
      fp8) prec=FP8 envs="TFTRT_QUANT_TIMED_PRECISION=0" ;;
      fp8timed) prec=FP8 envs="TFTRT_QUANT_TIMED_PRECISION=1" ;;
      *) echo "unknown config $name"; continue ;;
    esac
    [ "$(left)" -lt 60 ] && { echo "budget spent before $model $name"; break 2; }
    # every batch size profiled, FP16's too: the per-layer comparison (batch 1: issue 15's bar)
    prof="--profile $(for b in ${batches//,/ }; do printf '%s,' "$model:$prec:$b"; done)"
    prof=${prof%,}
    log="$out/int8_${model}_${name}.log"
    lim=$(( $(left) - 20 )); [ "$lim" -gt "$stage" ] && lim=$stage
    # shellcheck disable=SC2086
    env $envs BENCH_ROWS="$out/int8_rows.jsonl" timeout "$lim" python3 \
      benchmarks/bench_engine.py --models "$model" --precisions "$prec" --batches "$batches" \
      --peers "" $prof > "$log" 2>&1
    echo "== $model $name ($envs): rc $?"
    grep -E "tftrt  |quantized x" "$log" | head -12
    grep -oE '"timed_precision": \{[^}]*\}' "$log" | cut -c1-400
    grep -oE '"tactic_failures": \{.{0,300}' "$log" | head -2  # candidates skipped when timed
  done
done
