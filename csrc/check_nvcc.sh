#!/usr/bin/env bash
# Compile-check every CUDA kernel file with nvcc for sm_80 (A100) and sm_90 (H100), no GPU needed.
# The .cu files include no torch headers, so they compile on their own; the torch binding
# (torch_bindings.cpp) is built with them into vllm_mini._C_cuda by setup.py, at install time,
# only where torch has CUDA.
set -euo pipefail
cd "$(dirname "$0")"
NVCC=${NVCC:-nvcc}
if ! command -v "$NVCC" >/dev/null 2>&1; then
  echo "check_nvcc: nvcc not found; set NVCC or install the CUDA toolkit" >&2
  exit 1
fi
files=$(find . -name '*.cu' | sort)
for f in $files; do
  "$NVCC" -std=c++17 -O2 -c "$f" -o /dev/null -I . \
    -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90
  echo "check_nvcc: ok  $f (sm_80, sm_90)"
done
