#!/usr/bin/env bash
# One command on the GPU host: a part of the zoo sweep (tftrt vs TF XLA vs native TF, then
# torch.compile in its own process), rows appended to one results file, then the tables.
#   [MODELS="ResNet50 DenseNet121"] [ZOO_ARGS=...] [TORCH_ARGS=...] [BUILD_CACHE=0] \
#     bash benchmarks/run_gpu_zoo.sh [tf|torch|table|all] [seconds]
# Run the zoo in parts (MODELS) so that each call fits its time: a large model (EfficientNetB7
# at 600 px, ConvNeXtSmall) converts and builds three batch sizes in two precisions.
# A model too large for one call (EfficientNetB6 took ~300 s without XLA, B7 more): two calls
# on the same warm machine, ZOO_JSON on one file under /tmp, ZOO_ARGS="... --peers-only" then
# ZOO_ARGS="... --skip-xla --skip-native-timing" (the FP16 bar keeps XLA's error).
# Results: $OUT/zoo.jsonl (ZOO_JSON to append to another file), tables in $OUT/zoo_table.md.
# Needs TensorFlow's GPU build unpacked by gpu-host/pack-tensorflow.sh's install.sh
# (/tmp/tfsite/env.sh). The torch peers run in a separate process without that environment.
set -uo pipefail
stage=${1:-all}; budget=${2:-580}
start=$(date +%s); left() { echo $(( budget - ($(date +%s) - start) )); }
out=${OUT:-/tmp/tftrt-bench}; mkdir -p "$out"
json=${ZOO_JSON:-$out/zoo.jsonl}
models=${MODELS:-ResNet50 MobileNetV2}
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
repo=$(cd "$(dirname "$0")/.." && pwd)
# A GPU machine starts bare: tftrt's build cache (tactic and cuDNN / cuBLASLt choices) and
# CuPy's kernel cache come from .buildcache/cache.tgz when the call carries it, and go back
# to $OUT/buildcache.tgz for the next session (copy it to .buildcache/ and carry that).
# Rows record build_cache=warm / cold. Both caches always start empty in /tmp/tftrt-carry;
# BUILD_CACHE=0: nothing carried in or written back (a cold build).
carry=/tmp/tftrt-carry
rm -rf "$carry"  # a warm machine keeps /tmp: an earlier call's caches would make "cold" warm
mkdir -p "$carry/tftrt" "$carry/cupy"
export TFTRT_CACHE_DIR="$carry/tftrt" CUPY_CACHE_DIR="$carry/cupy" ZOO_BUILD_CACHE=cold
if [ "${BUILD_CACHE:-1}" != 0 ] && [ -f "$repo/.buildcache/cache.tgz" ] && \
    tar xzf "$repo/.buildcache/cache.tgz" -C "$carry"; then
  export ZOO_BUILD_CACHE=warm
  echo "build cache carried in: $(du -sh "$carry" | cut -f1)"
fi
if [ "$stage" = tf ] || [ "$stage" = all ]; then
  # The torch peers need ~1 minute per model (compile + CUDA graph capture): leave them that.
  reserve=0; [ "$stage" = all ] && reserve=$(( 60 * $(echo $models | wc -w) ))
  tf_budget=$(( $(left) - 20 - reserve ))
  ( # shellcheck disable=SC1091
    source /tmp/tfsite/env.sh >/dev/null
    export PYTHONPATH="$repo:${PYTHONPATH:-}"
    cd "$repo" && timeout "$tf_budget" python3 benchmarks/zoo.py --out "$json" --iters 30 \
      --time-budget $(( tf_budget - 10 )) --models $models ${ZOO_ARGS:-} ) 2>&1 | grep -v "^W0000\|^I0000\|^WARNING: All" \
      | tee -a "$out/zoo_tf.log" | grep "^ROW\|^SKIP\|^    \|Error\|done at\| at [0-9]* s$" | tail -40
fi
if [ "$stage" = torch ] || [ "$stage" = all ]; then
  ( cd "$repo" && PYTHONPATH="$repo:${PYTHONPATH:-}" timeout $(( $(left) - 10 )) \
      python3 benchmarks/torch_zoo.py --out "$json" --iters 30 --models $models \
      ${TORCH_ARGS:-} ) 2>&1 | tee -a "$out/zoo_torch.log" | grep "^ROW\|skipped\|Error" | tail -20
fi
( cd "$repo" && PYTHONPATH="$repo:${PYTHONPATH:-}" python3 benchmarks/zoo.py --table \
    --out "$json" ) 2>&1 | tee "$out/zoo_table.md"
if [ "${BUILD_CACHE:-1}" != 0 ]; then  # for the next session (the carry limit is 64 MiB)
  tar czf "$out/buildcache.tgz" -C "$carry" tftrt cupy
  size=$(stat -c %s "$out/buildcache.tgz")
  if [ "$size" -gt $(( 56 << 20 )) ]; then  # with a ~4 MB checkout it would not travel
    echo "build cache out: $(( size >> 20 )) MB, too large to carry; CuPy's kernels dropped"
    tar czf "$out/buildcache.tgz" -C "$carry" tftrt
  fi
  echo "build cache out: $(du -h "$out/buildcache.tgz" | cut -f1) in \$OUT/buildcache.tgz"
fi
