#!/usr/bin/env bash
# Pack what `tftrt serve` and benchmarks/serve_load.py need on the offline GPU host (Python 3.12,
# x86-64): nvidia-pytriton 0.7.0 (Triton itself inside; its wheel asks glibc 2.35), tritonclient
# and their dependencies, and numpy 1.26 for the environment Triton's Python stub runs in
# (docs/serving.md), as parts that travel one at a time beside the TensorFlow pack's.
#   usage: benchmarks/pack_serving.sh OUTDIR [PART_MiB]   -> OUTDIR/00 ... OUTDIR/NN (~100 MB: 2
#   parts of 58 MiB); the last also holds install.sh.
# On the host, after gpu-host/pack-tensorflow.sh's install.sh: copy every part's file into
# /tmp/srv-parts/, then `bash OUTDIR/NN/install.sh` (NN the last part): the wheels go to
# /tmp/srvsite (numpy and protobuf left out: TensorFlow's pack and the host keep theirs), and
# /tmp/srvsite/env.sh puts it on PYTHONPATH after /tmp/tfsite and points pip at the wheels, so
# that tftrt makes the stub's numpy<2 environment offline (PIP_NO_INDEX, PIP_FIND_LINKS).
set -euo pipefail
out=${1:?usage: pack_serving.sh OUTDIR [PART_MiB]}
part_mib=${2:-58}
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
python3 -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_35_x86_64 --platform manylinux_2_34_x86_64 \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform any -d "$work/pack" "nvidia-pytriton==0.7.0" \
  2>&1 | grep -v '^WARNING' || true
for w in nvidia_pytriton tritonclient numpy-1 grpcio pyzmq; do
  ls "$work/pack/$w"*.whl >/dev/null 2>&1 || { echo "pack_serving: download of $w failed" >&2; exit 1; }
done
cat > "$work/pack/install.sh" <<'INSTALL'
#!/usr/bin/env bash
# Runs on the GPU host after every part is in /tmp/srv-parts/: unpack, install to /tmp/srvsite.
set -euo pipefail
mkdir -p /tmp/srv-wheels && cat /tmp/srv-parts/part.* | tar xf - -C /tmp/srv-wheels && rm -rf /tmp/srv-parts
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/srvsite \
  $(ls /tmp/srv-wheels/*.whl | grep -v '/numpy-\|/protobuf-')
{ echo "export PYTHONPATH=\${PYTHONPATH:+\$PYTHONPATH:}/tmp/srvsite"
  echo "export PATH=/tmp/srvsite/bin:\$PATH PIP_NO_INDEX=1 PIP_FIND_LINKS=/tmp/srv-wheels"
} > /tmp/srvsite/env.sh
cat /tmp/srvsite/env.sh
ldd --version | head -1
INSTALL
tar cf - -C "$work/pack" . | split -b "${part_mib}m" -d -a 2 - "$work/part."
rm -rf "$out"; mkdir -p "$out"
n=0
for p in "$work"/part.*; do
  d="$out/$(printf %02d $n)"; mkdir -p "$d"; mv "$p" "$d/"; n=$((n + 1))
done
last="$out/$(printf %02d $((n - 1)))"
cp "$work/pack/install.sh" "$last/install.sh"
echo "pack_serving: $n parts in $out (install: bash $last/install.sh)"
