# Sourced by the engine-alone GPU scripts (run_gpu_engine.sh, run_gpu_build_cache.sh) with the
# budget in seconds as $1: defines left() (seconds of the budget left), $repo and $out ($OUT
# or /tmp/tftrt-bench), installs the carried cuDNN-frontend / nvmath wheels into /tmp/site
# (or, with no wheels carried, uses a TensorFlow session's /tmp/tfsite/env.sh, which has them)
# and exports the environment; the caller ends up in the repository root.
set -uo pipefail
budget=${1:-580}
start=$(date +%s); left() { echo $(( budget - ($(date +%s) - start) )); }
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${OUT:-/tmp/tftrt-bench}; mkdir -p "$out"
if compgen -G "$repo/.whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "$repo"/.whl/*.whl 2>&1 | tail -2
  export PYTHONPATH="$repo:/tmp/site"
elif [ -f /tmp/tfsite/env.sh ]; then  # a TensorFlow session: its site has both libraries
  # shellcheck disable=SC1091
  source /tmp/tfsite/env.sh >/dev/null; export PYTHONPATH="$repo:${PYTHONPATH:-}"
fi
export CUDA_VISIBLE_DEVICES=0 PYTHONUNBUFFERED=1
cd "$repo"
