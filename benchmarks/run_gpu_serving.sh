#!/usr/bin/env bash
# Issue 17 on the GPU host: ResNet50 FP16 served by `tftrt serve` (Triton's dynamic batching),
# measured through the server by benchmarks/serve_load.py (many concurrent batch-1 gRPC
# clients), on one GPU and then on every GPU of the host; and the loaded engine's own batch-128
# throughput in-process, the one-GPU bar's reference (>= 70% of it through the server).
# Needs gpu-host/pack-tensorflow.sh's install (/tmp/tfsite/env.sh) and benchmarks/pack_serving.sh's
# (/tmp/srvsite/env.sh) in this machine session.
#   [MODEL=ResNet50] [MAX_BATCH=128] [CONCURRENCY=256] [PROCESSES=8] [REQUESTS=40000] [GPU_SETS="0 0,1"] \
#     [CONFIGS="1:system 4:system 4:none"] [SERVER=tftrt|direct] bash benchmarks/run_gpu_serving.sh [seconds]
# Each server set is loaded once per CONFIGS item INSTANCES:SHM: Triton model instances per GPU
# (--instances-per-gpu; the servers restart when it changes), and the inputs in the gRPC
# requests (none) or in system shared memory registered with the servers (system;
# perf_analyzer's --shared-memory=system).
# Output: $OUT/serving.log, $OUT/load_<server>_<gpus>_i<instances>_<shm>.json,
# $OUT/engine_b128.json.
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
# SERVER=direct serves with benchmarks/triton_direct.py (engines inside Triton's Python-backend
# stubs, no PyTriton proxy; one process per GPU) in place of tftrt serve
if [ "${SERVER:-tftrt}" = direct ]; then serve_cmd=benchmarks/triton_direct.py; else
  serve_cmd="-m tftrt.cli serve"; fi
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
start_servers() {  # $1 GPU set, $2 instances per GPU: fills servers, ports
  local gpus=$1 inst=$2 tag=${1//,/_}_i$2
  servers=(); ports=()
  if [ "${IN_PROCESS:-0}" = 1 ] || [ "$gpus" = none ]; then
    say "serve --gpus $gpus --instances-per-gpu $inst (one process)"
    python3 -m tftrt.cli serve "$work/${model,,}_trt" --gpus "$gpus" \
      --max-batch "${MAX_BATCH:-128}" --model-name served --shared-memory \
      --address 127.0.0.1 --instances-per-gpu "$inst" >>"$out/serve_$tag.log" 2>&1 &
    servers+=($!); ports+=(8000)
  else
    local k=0 g one
    for g in ${gpus//,/ }; do
      say "serve GPU $g --instances-per-gpu $inst (process $k, ports $((8000 + 10 * k))..)"
      one=0; [ "$g" = none ] && one=none
      CUDA_VISIBLE_DEVICES=$g python3 $serve_cmd "$work/${model,,}_trt" --gpus $one \
        --max-batch "${MAX_BATCH:-128}" --model-name served --shared-memory \
        --address 127.0.0.1 --instances-per-gpu "$inst" --http-port $((8000 + 10 * k)) \
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
}
stop_servers() {  # $1 GPU set
  for pid in "${servers[@]}"; do kill -INT "$pid" 2>/dev/null; done
  for pid in "${servers[@]}"; do wait "$pid"; say "server $pid (--gpus $1) exited $?"; done
  servers=()
}
for gpus in ${GPU_SETS:-0 0,1}; do
  n=$(echo "$gpus" | tr ',' '\n' | grep -c '^[0-9]')  # ("none,none": two CPU servers, a smoke test)
  if [ "$n" -gt "$gpus_all" ]; then say "skip --gpus $gpus: $gpus_all GPU(s) here"; continue; fi
  running=""
  servers=()
  for cfg in ${CONFIGS:-1:system 4:system 4:none}; do
    inst=${cfg%%:*}; shm=${cfg##*:}
    if [ "$(left)" -lt 60 ]; then say "skip --gpus $gpus $cfg: $(left) s left"; continue; fi
    if [ "$running" != "$inst" ]; then
      [ -n "$running" ] && stop_servers "$gpus"
      start_servers "$gpus" "$inst"; running=$inst
    fi
    say "load, --gpus $gpus, --instances-per-gpu $inst, --shared-memory $shm"
    timeout $(( $(left) - 20 )) python3 benchmarks/serve_load.py --model served \
      --servers "${#servers[@]}" --concurrency "${CONCURRENCY:-256}" \
      --processes "${PROCESSES:-8}" --requests "${REQUESTS:-40000}" --protocol grpc \
      --shared-memory "$shm" --json "$out/load_${SERVER:-tftrt}_${gpus//,/_}_i${inst}_$shm.json" 2>&1 \
      | tail -25 | tee -a "$log"
  done
  [ -n "$running" ] && stop_servers "$gpus"
  tail -n 3 "$out"/serve_"${gpus//,/_}"*.log >>"$log"
done
say "done"
