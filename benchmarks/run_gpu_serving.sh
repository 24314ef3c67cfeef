#!/usr/bin/env bash
# Issue 17 on the GPU host: ResNet50 FP16 served by `tftrt serve` (Triton's dynamic batching),
# measured through the server by benchmarks/serve_load.py (many concurrent batch-1 gRPC
# clients), on one GPU and then on every GPU of the host; and the loaded engine's own batch-128
# throughput in-process, the one-GPU bar's reference (>= 70% of it through the server).
# Needs gpu-host/pack-tensorflow.sh's install (/tmp/tfsite/env.sh) and benchmarks/pack_serving.sh's
# (/tmp/srvsite/env.sh) in this machine session.
#   [MODEL=ResNet50] [MAX_BATCH=128] [CONCURRENCY=256] [PROCESSES=8] [REQUESTS=40000] [GPU_SETS="0 0,1"] \
#     [SHM="none system"] bash benchmarks/run_gpu_serving.sh [seconds]
# Each server set is loaded once per SHM mode: inputs in the gRPC requests (none), and in system
# shared memory registered with the servers (system; perf_analyzer's --shared-memory=system).
# Output: $OUT/serving.log, $OUT/load_<gpus>_<shm>.json, $OUT/engine_b128.json.
set -uo pipefail
budget=${1:-580}
start=$(date +%s); left() { echo $(( budget - ($(date +%s) - start) )); }
repo=$(cd "$(dirname "$0")/.." && pwd)
out=${OUT:-/tmp/tftrt-bench}; mkdir -p "$out"
log="$out/serving.log"
model=${MODEL:-ResNet50}
work=/tmp/tftrt-serving; rm -rf "$work"; mkdir -p "$work"
# shellcheck disable=SC1091
source /tmp/tfsite/env.sh >/dev/null; source /tmp/srvsite/env.sh >/dev/null
# (a CPU smoke test of this script: empty env.sh files, TFTRT_BACKEND=numpy, a small MODEL,
# GPU_SETS=none, ENGINE_ITERS=3, REQUESTS=200, CONCURRENCY=8, PROCESSES=2)
export PYTHONPATH="$repo:${PYTHONPATH:-}" PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
cd "$repo"
say() { echo "[$(( $(date +%s) - start )) s] $*" | tee -a "$log"; }
gpus_all=$(nvidia-smi -L 2>/dev/null | wc -l)
say "$gpus_all GPU(s); $(ldd --version | head -1)"
python3 -c "import pytriton, tritonclient.grpc; print('pytriton', pytriton.__version__)" 2>&1 \
  | tail -1 | tee -a "$log"
# the model (seeded, weights=None: the zoo's), converted with one profile 1..128
python3 - "$model" "$work/src" >>"$log" 2>&1 <<'PY'
import sys
from tftrt import zoo
zoo.build(sys.argv[1]).export(sys.argv[2], verbose=False)
PY
timeout "$(left)" python3 -m tftrt.cli convert "$work/src" "$work/${model,,}_trt" --precision FP16 \
  --dynamic-shape --batch-sizes 1,${MAX_BATCH:-128} --no-summary 2>&1 | grep -v "^W0000\|^I0000" | tail -5 \
  | tee -a "$log"
say "converted"
# the engine alone at batch 128, in-process (CUDA-event medians, bench_e2e's timing)
timeout "$(left)" python3 - "$work/${model,,}_trt" "$out/engine_b128.json" "$model" >>"$log" 2>&1 <<'PY'
import json, os, sys
import tensorflow as tf
import tftrt
from tftrt import zoo
sys.path.insert(0, "benchmarks")
from bench_e2e import _stats, _time_tf
sig = tftrt.load(sys.argv[1]).signatures["serving_default"]
name = next(iter(sig.structured_input_signature[1]))
res = {}
for b in (1, int(os.environ.get("MAX_BATCH", "128"))):
    with tf.device("/GPU:0"):
        x = {name: tf.constant(zoo.sample_input(sys.argv[3], b))}
    res[b] = _stats(_time_tf(sig, x, 3, int(os.environ.get("ENGINE_ITERS", "50"))), b)
print("ENGINE", json.dumps(res))
json.dump(res, open(sys.argv[2], "w"), indent=1)
PY
grep "^ENGINE" "$log" | tail -1
# Each GPU of a set gets its own server process (CUDA_VISIBLE_DEVICES=g, --gpus 0, ports 10
# apart) and the load generator spreads its clients over them, as a load balancer would: the
# CuPy backend places an op's engines on one GPU per process (docs/serving.md, "Several
# GPUs"). IN_PROCESS=1 serves the set from one process instead (--gpus 0,1).
ready_at() {  # readiness of the model on the server whose HTTP port is $1
  python3 -c "import urllib.request as u
try: print(u.urlopen('http://localhost:$1/v2/models/served/ready', timeout=2).status)
except Exception as e: print(getattr(e, 'code', 0))"; }
for gpus in ${GPU_SETS:-0 0,1}; do
  n=$(echo "$gpus" | tr ',' '\n' | grep -c '^[0-9]')  # ("none,none": two CPU servers, a smoke test)
  if [ "$n" -gt "$gpus_all" ]; then say "skip --gpus $gpus: $gpus_all GPU(s) here"; continue; fi
  if [ "$(left)" -lt 90 ]; then say "skip --gpus $gpus: $(left) s left"; continue; fi
  tag=${gpus//,/_}
  servers=(); ports=()
  if [ "${IN_PROCESS:-0}" = 1 ] || [ "$gpus" = none ]; then
    say "serve --gpus $gpus (one process)"
    python3 -m tftrt.cli serve "$work/${model,,}_trt" --gpus "$gpus" \
      --max-batch "${MAX_BATCH:-128}" --model-name served --shared-memory \
      >>"$out/serve_$tag.log" 2>&1 &
    servers+=($!); ports+=(8000)
  else
    k=0
    for g in ${gpus//,/ }; do
      say "serve GPU $g (process $k, ports $((8000 + 10 * k))..)"
      one=0; [ "$g" = none ] && one=none
      CUDA_VISIBLE_DEVICES=$g python3 -m tftrt.cli serve "$work/${model,,}_trt" --gpus $one \
        --max-batch "${MAX_BATCH:-128}" --model-name served --shared-memory \
        --http-port $((8000 + 10 * k)) \
        --grpc-port $((8001 + 10 * k)) --metrics-port $((8002 + 10 * k)) \
        >>"$out/serve_${tag}_gpu$g.log" 2>&1 &
      servers+=($!); ports+=($((8000 + 10 * k))); k=$((k + 1))
    done
  fi
  for _ in $(seq 1 240); do  # ready when every Triton says so (engines load in the instances)
    all=1
    for i in "${!servers[@]}"; do
      [ "$(ready_at "${ports[$i]}")" = 200 ] || all=0
      kill -0 "${servers[$i]}" 2>/dev/null || all=dead
    done
    [ "$all" = 1 ] && break; [ "$all" = dead ] && break; sleep 1
  done
  say "ready: $(for p in "${ports[@]}"; do ready_at "$p"; done | tr '\n' ' ')"
  for shm in ${SHM:-none system}; do
    if [ "$(left)" -lt 40 ]; then say "skip --shared-memory $shm: $(left) s left"; continue; fi
    say "load, --gpus $gpus, --shared-memory $shm"
    timeout $(( $(left) - 20 )) python3 benchmarks/serve_load.py --model served \
      --servers "${#servers[@]}" --concurrency "${CONCURRENCY:-256}" \
      --processes "${PROCESSES:-8}" --requests "${REQUESTS:-40000}" --protocol grpc \
      --shared-memory "$shm" --json "$out/load_${tag}_$shm.json" 2>&1 | tail -25 | tee -a "$log"
  done
  for pid in "${servers[@]}"; do kill -INT "$pid" 2>/dev/null; done
  for pid in "${servers[@]}"; do wait "$pid"; say "server $pid (--gpus $gpus) exited $?"; done
  tail -5 "$out"/serve_"$tag"*.log >>"$log"
done
say "done"
