#!/bin/bash
# On the CPU machine, from the repository root, before the device call of run.sh: packs .device/
# (Node, Dawn, the Vulkan loader: ../shared/scripts/device-webgpu-prep.sh, or $SHARED/scripts/...)
# and bundles gpu.ts with the workspace packages' sources into .device/h200.mjs.
set -euo pipefail
shared=${SHARED:-../shared}
bash "$shared/scripts/device-webgpu-prep.sh"
npx esbuild packages/train/bench/h200/gpu.ts --bundle --platform=node --format=esm --external:webgpu \
  --conditions=@dsv3/source --outfile=.device/h200.mjs --log-level=warning
du -sh .device
