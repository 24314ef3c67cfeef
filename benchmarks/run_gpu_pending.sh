#!/usr/bin/env bash
# What s45 built on the CPU side and could not time (the device budget was spent), as two
# CuPy-only GPU calls of under 10 minutes each (carry ".whl" with the networks of
# make_networks.py --int8 4). Every stage writes its log to $OUT as it goes.
#   bash benchmarks/run_gpu_pending.sh 1   # GPU tests, the stems, q_mma's staged operands
#   bash benchmarks/run_gpu_pending.sh 2   # ResNet50 / MobileNetV2 engines with the knobs
#   bash benchmarks/run_gpu_pending.sh 3   # the most of 1 and 2 in one call: q_mma's knobs,
#                                          # ResNet50 int8res / fp16
#   bash benchmarks/run_gpu_pending.sh 4   # s47: the INT8 GPU suite, q_mma's 3x3 tiles
#   bash benchmarks/run_gpu_pending.sh 6   # s47: where q_mma's time goes (bench_qmma --ablate)
#   bash benchmarks/run_gpu_pending.sh 7   # s47: ResNet50 INT8 with / without the interleave
#   bash benchmarks/run_gpu_pending.sh 8   # s48: the stage-1 3x3 convs over pixel pairs
#   bash benchmarks/run_gpu_pending.sh 9   # s49: the INT8 GPU suite with the pairs on by
#                                          # default; the INT8 zoo with / without them
#   bash benchmarks/run_gpu_pending.sh 10  # s49: the tests s49c found stale; ResNet50 with
#                                          # the defaults: INT8 (timed), FP8, FP16
#   bash benchmarks/run_gpu_pending.sh 11  # s49: s48's FP16 precision fixes on the CuPy
#                                          # backend (segment_check; .whl/segments made first)
# s46 ran part 3 and the rest by hand on an H100 (benchmarks/README.md, s46); the knobs it
# timed are the defaults since, so bench_qmma's "1,0,0" is them all on and
# "1,0,0,1,1,0,1,1,0,0,0" all off (config fields: bench_qmma.py's docstring).
# Part 1: bench_qmma.py with and without TFTRT_QUANT_MMA_STAGE_VECS's staging (config field
# vecs) and s46's epilogue conversions (TFTRT_QUANT_MMA_I2F, TFTRT_QUANT_MMA_RES_CVT: fields
# i2f, res), and the no-residual convs' tiles; the q_mma GPU tests with both conversions on;
# tests/gpu/test_stem_s2d_gpu.py and test_stem_mma_gpu.py (the rearranged stem on stem_mma's
# vector gathers); bench_stems.py on the stems and their space-to-depth forms.
# Part 2: run_gpu_int8.sh on ResNet50 (fp16, fp16s2d, int8res, int8s2d, int8vecs) and
# MobileNetV2 (int8res: q_dw's new stride-2 tiles, per layer against s45a's 223 / 97 us on
# Conv__4 / Conv__10), batch 128, with profiles.
# shellcheck source=benchmarks/gpu_engine_env.sh
source "$(dirname "$0")/gpu_engine_env.sh" "${2:-570}"
export TFTRT_BACKEND=cupy TFTRT_CUPY_QUANTIZED=1
nvidia-smi -L | tee "$out/pending_gpu.txt"
case "${1:-1}" in
  1)
    # s46: the epilogue conversions (fields i2f, res: 1 half2, 2 i2f) on top of s45's staged
    # vectors, on the convs q_mma runs in ResNet50 INT8; then the no-residual convs' tiles
    # (the projection compiles to 176 registers at nc 128: 2 blocks of 4 warps an SM)
    timeout 300 python3 benchmarks/bench_qmma.py \
      --only s1_conv3,s2_conv3,s3_conv3,s1_proj_64to256_int8x,s1_conv1_64to64_int8x \
      --configs "1,0,0,1,1,0,1,1,0,0,0 1,0,0,1,1,0,1,1,1,0,0 1,0,0,1,1,0,1,1,1,1,0
                 1,0,0,1,1,0,1,1,1,0,1 1,0,0" 2>&1 \
      | tee "$out/pending_1_qmma.log" | grep -v "^ *$" | tail -40
    timeout 150 python3 benchmarks/bench_qmma.py \
      --only s1_proj_64to256_int8x,s1_conv1_256to64,s2_conv1_256to128 \
      --configs "1,0,0 1,8,64 1,8,64,1,1,768 1,4,64,1,1,512 1,8,64,1,1,768,1,1,1,1" 2>&1 \
      | tee "$out/pending_1_qmma_tiles.log" | grep -v "^ *$" | tail -20
    TFTRT_QUANT_MMA_I2F=1 TFTRT_QUANT_MMA_RES_CVT=half2 timeout 100 python3 -m pytest \
      tests/gpu/test_int8_gpu.py -k "tensor_core or thin_k or saturates" -q -rf \
      -p no:cacheprovider --tb=short 2>&1 | tee "$out/pending_1_cvt_tests.log" | tail -3
    timeout 100 python3 -m pytest tests/gpu/test_stem_s2d_gpu.py tests/gpu/test_stem_mma_gpu.py \
      -q -rf -p no:cacheprovider --tb=short 2>&1 | tee "$out/pending_1_tests.log" | tail -4
    timeout $(( $(left) - 5 )) python3 benchmarks/bench_stems.py --stems "resnet 7x7 s2" \
      "resnet s2d 4x4 c16" "mobilenet 3x3 s2" "mobilenet s2d 2x2 c16" --ways cudnn stem_mma \
      2>&1 | tee "$out/pending_1_stems.log" | grep -v registers | tail -14
    ;;
  2)
    OUT=$out/r50 TESTS=0 MODELS=resnet50_int8 BATCHES=128 STAGE_S=90 \
      CONFIGS="${R50_CONFIGS:-fp16 fp16s2d int8res int8s2d int8vecs int8cvt}" \
      bash "$repo/benchmarks/run_gpu_int8.sh" $(( $(left) - 140 ))
    OUT=$out/mb TESTS=0 MODELS=mobilenet_v2_int8 BATCHES=128 STAGE_S=130 \
      CONFIGS="int8res" bash "$repo/benchmarks/run_gpu_int8.sh" $(( $(left) - 5 ))
    grep -h "q_dw" "$out"/mb/*int8res.log | head -8
    ;;
  3)  # one call where the device gives one: q_mma's knobs alone, then ResNet50 with them
    timeout 170 python3 benchmarks/bench_qmma.py \
      --only s1_conv3,s2_conv3,s3_conv3,s1_proj_64to256_int8x,s1_conv1_64to64_int8x \
      --configs "1,0,0,1,1,0,1,1,0,0,0 1,0,0,1,1,0,1,1,1,0,0 1,0,0 1,8,64,1,1,768" 2>&1 \
      | tee "$out/pending_3_qmma.log" | grep -v "^ *$" | tail -30
    OUT=$out/r50 TESTS=0 MODELS=resnet50_int8 BATCHES=128 STAGE_S=110 \
      CONFIGS="${R50_CONFIGS:-int8res fp16}" \
      bash "$repo/benchmarks/run_gpu_int8.sh" $(( $(left) - 5 ))
    ;;
  4)  # s47: the INT8 GPU suite under s46's defaults; q_mma's 3x3 implicit GEMMs (ResNet50's
      # stage-1 3x3 convs: 83.7 us, 354 TOPS, s46) with other tiles (Nsight Compute on them:
      # NCU_QMMA=s1_3x3_64to64 bash benchmarks/run_gpu_ncu.sh, on an H100)
    timeout 290 python3 -m pytest tests/gpu/test_int8_gpu.py tests/gpu/test_stem_mma_gpu.py \
      -k "not through_tensorflow" -q -rf -p no:cacheprovider --tb=short 2>&1 \
      | tee "$out/pending_4_tests.log" | tail -8
    timeout $(( $(left) - 5 )) python3 benchmarks/bench_qmma.py \
      --only s1_3x3_64to64,s2_3x3,s3_conv3,s2_conv3,s1_conv3 \
      --configs "${QMMA_CONFIGS:-1,0,0 1,8,0 2,0,0 1,4,32}" 2>&1 \
      | tee "$out/pending_4_qmma3x3.log" | grep -v "^ *$" | tail -30
    ;;
  6)  # s47: where q_mma's time goes -- each conv with one part left out (bench_qmma --ablate:
      # x's loads, the MMAs, the epilogue), its MMAs n-tile first and k first (interleaved)
    e=1,1,0,1,1,1,1,1 f='\1 \2 \3 \4'
    for ab in none loads mma epi loads,mma; do
      echo "== ablate $ab" | tee -a "$out/pending_6_ablate.log"
      timeout 100 python3 benchmarks/bench_qmma.py \
        --only s1_3x3_64to64,s1_conv3,s1_proj_64to256_int8x,s3_conv3 \
        --configs "1,0,0,$e,0 1,0,0,$e,1" \
        $([ "$ab" = none ] || echo "--ablate $ab") 2>&1 | grep -v "^ *$" \
        | tee -a "$out/pending_6_ablate.log" | grep -v f16x \
        | sed -E "s/^(\S+).*(k-first|n-first).*regs +([0-9]+).*: +([0-9.]+ us).*/$f/"
    done
    ;;
  7)  # s47: ResNet50 INT8 with q_mma's MMAs interleaved where "auto" puts them (the default)
      # against n-tile first everywhere, FP16 beside them; then the q_mma GPU tests
    OUT=$out/r50 TESTS=0 MODELS=resnet50_int8 BATCHES=128 STAGE_S=160 \
      CONFIGS="${R50_CONFIGS:-int8res int8il0 fp16}" \
      bash "$repo/benchmarks/run_gpu_int8.sh" $(( $(left) - 60 ))
    grep -h "Conv__3 \|Conv__7 \|Conv__10 " "$out"/r50/*int8*.log | head -12
    timeout $(( $(left) - 5 )) python3 -m pytest tests/gpu/test_int8_gpu.py \
      -k "tensor_core or thin_k or saturates" -q -rf -p no:cacheprovider --tb=short 2>&1 \
      | tee "$out/pending_7_tests.log" | tail -4
    ;;
  8)  # s48: ResNet50's stage-1 3x3 convs (64 channels) on cuDNN over pixel pairs (a 3x3
      # conv of 128 channels over 56 x 28, twice the multiply-adds): the pair conv's plans
      # against the plain conv's and the stage-2 conv's; the pairs' GPU test; then ResNet50
      # INT8 with the tactic offered (int8pairs) against without (int8res), FP16 beside them
    timeout 150 python3 benchmarks/bench_int8_conv.py --only s1_3x3_64 --plans 24 2>&1 \
      | tee "$out/pending_8_conv.log" | grep -v "^ *$" | tail -24
    timeout 120 python3 -m pytest tests/gpu/test_int8_gpu.py -k "pixel_pairs" -q -rf \
      -p no:cacheprovider --tb=short 2>&1 | tee "$out/pending_8_tests.log" | tail -4
    OUT=$out/r50 TESTS=0 MODELS=resnet50_int8 BATCHES=128 STAGE_S=160 \
      CONFIGS="${R50_CONFIGS:-int8pairs int8res fp16}" \
      bash "$repo/benchmarks/run_gpu_int8.sh" $(( $(left) - 5 ))
    grep -h "Conv__2 \|Conv__6 \|Conv__9 " "$out"/r50/*int8*.log | head -12
    ;;
  9)  # s49: q_cudnn_pairs on by default -- the quantized GPU suite under it; then the INT8
      # zoo models with it offered (int8timed, the defaults) against without, FP16 beside them
    timeout 240 python3 -m pytest tests/gpu/test_int8_gpu.py tests/gpu/test_stem_mma_gpu.py \
      tests/gpu/test_stem_s2d_gpu.py -k "not through_tensorflow" -q -rf -p no:cacheprovider \
      --tb=short 2>&1 | tee "$out/pending_9_tests.log" | tail -8
    OUT=$out/zoo TESTS=0 MODELS="${ZOO_MODELS:-mobilenet_v2_int8 EfficientNetB0_int8}" \
      BATCHES=128 STAGE_S=90 CONFIGS="${ZOO_CONFIGS:-int8timed int8nopairs fp16}" \
      bash "$repo/benchmarks/run_gpu_int8.sh" $(( $(left) - 5 ))
    grep -h "pixel pairs" "$out"/zoo/*int8*.log | head -12
    ;;
  10)  # s49: the tests that s49c's run of part 9 found stale, then ResNet50 with today's
       # defaults (int8timed: timed precision, pairs offered; fp8 with pairs offered) and FP16
    timeout 90 python3 -m pytest tests/gpu/test_int8_gpu.py -k "depthwise or pixel_pairs" -q \
      -rf -p no:cacheprovider --tb=short 2>&1 | tee "$out/pending_10_tests.log" | tail -4
    OUT=$out/r50 TESTS=0 MODELS=resnet50_int8 BATCHES=128 STAGE_S=165 \
      CONFIGS="${R50_CONFIGS:-int8timed fp8 fp16}" bash "$repo/benchmarks/run_gpu_int8.sh" \
      $(( $(left) - 5 ))
    grep -h "pixel pairs\|^resnet50" "$out"/r50/*.log | head -12
    ;;
  11)  # s49: s48's FP16 fixes (a reduction's moves and a cumsum's steps in float32, a
       # size-1 weight's rank) and the other converters' segments on the CuPy backend, against
       # TF's outputs stored by `segment_check.py make --out .whl/segments`; then the CuPy
       # backend's own tests (those that need no TensorFlow)
    timeout 150 python3 benchmarks/segment_check.py check .whl/segments 2>&1 \
      | tee "$out/pending_11_segments.log" | tail -12
    timeout $(( $(left) - 5 )) python3 -m pytest tests/gpu/test_cupy_backend.py -q -rf \
      -p no:cacheprovider --tb=short -k "not as_tftrt_lowers and not uint8_image_input" 2>&1 \
      | tee "$out/pending_11_cupy_tests.log" | tail -8
    ;;
  *) echo "part 1, 2, 3, 4, 6, 7, 8, 9, 10 or 11"; exit 2 ;;
esac
