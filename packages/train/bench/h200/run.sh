#!/bin/bash
# The H200 run in one device call: the WebGPU measurements (gpu.ts), their torch anchors on the same
# GPU (anchors.py), then the ratios; JSON lines in $OUT/{dsv3,anchors,ratios}.jsonl and on stdout.
#   here, first:  bash packages/train/bench/h200/prepare.sh          (packs .device/, bundles gpu.ts)
#   device run:   command "bash packages/train/bench/h200/run.sh", carry [".device"], timeout_s 600
#   here, small:  bash packages/train/bench/h200/run.sh --small      (lavapipe + CPU torch, tiny sizes)
# PYTHON names the interpreter with torch (default python3; transformers too for decode/train anchors).
set -uo pipefail
small=""
[ "${1:-}" = "--small" ] && small=--small
here=$(dirname "$0")
out=${OUT:-$(mktemp -d)}
mkdir -p "$out"
if [ -z "$small" ]; then
  [ -f .device/env.sh ] || { echo "no .device/ here: run prepare.sh on the CPU machine and carry .device" >&2; exit 2; }
  # shellcheck disable=SC1091
  source .device/env.sh
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
  gpu=(node .device/h200.mjs)
else
  gpu=(npx tsx --conditions=@dsv3/source "$here/gpu.ts")
fi
py=${PYTHON:-python3}
echo "output: $out" >&2
# Each half has its own time limit so that one stuck part still leaves the other's figures.
timeout "${DSV3_H200_GPU_S:-330}" "${gpu[@]}" $small --config-out "$out/model-config.json" | tee "$out/dsv3.jsonl"
echo "gpu.ts exit: ${PIPESTATUS[0]}" >&2
timeout "${DSV3_H200_TORCH_S:-200}" "$py" "$here/anchors.py" "$out/model-config.json" $small | tee "$out/anchors.jsonl"
echo "anchors.py exit: ${PIPESTATUS[0]}" >&2
"${gpu[@]}" --ratios "$out/dsv3.jsonl" "$out/anchors.jsonl" | tee "$out/ratios.jsonl"
