#!/usr/bin/env bash
# The whole GPU session as one script, for a lent GPU machine (see docs and benchmarks/RESULTS.md):
# build the kernels for that GPU, prove them against the torch reference, run the GPU tests, then
# time the engine. Every step has its own time limit and the script goes on after a failure, so
# one run brings back as much as it can. Logs go to $OUT (the device tool's return folder).
#
#     OUT=/tmp/gpu bash benchmarks/gpu_check.sh [benchmarks/gpu.py arguments, e.g. --part parity]
#
# ATTN_BENCH=0 skips the decode-attention timing table. Carried wheels in .whl/ (packages the
# machine's image lacks) are installed first when present.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
t0=$(date +%s)
stamp() { echo "== [$(($(date +%s) - t0)) s] $*"; }

if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD"  # scripts under benchmarks/kernels/ too
nvidia-smi -L
python3 -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__)"
nvcc --version | tail -2

stamp "build (setup.py build_ext --inplace, sm_90)"
export TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16
timeout 300 python3 setup.py build_ext --inplace >"$OUT/build.log" 2>&1
echo "build rc=$?"
tail -3 "$OUT/build.log"
ls vllm_mini/*.so

stamp "CUDA kernel tests"
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/kernels/test_cuda_kernels.py 2>&1 |
  tee "$OUT/pytest_kernels.log" | tail -15

stamp "benchmarks/gpu.py: kernels vs reference, parity with HF, speed"
timeout 300 python3 benchmarks/gpu.py --json "$OUT/gpu.json" "$@" 2>&1 | grep -v " INFO \|^INFO" |
  tee "$OUT/gpu.log" | tail -60

stamp "CUDA graphs and memory-profiling tests"
timeout 240 python3 -m pytest -q -p no:cacheprovider tests/compilation/test_cuda_graphs_gpu.py \
  tests/worker/test_memory.py 2>&1 | tee "$OUT/pytest_graphs.log" | tail -15

if [ "${ATTN_BENCH:-1}" != 0 ]; then
  stamp "decode attention: torch / triton / cuda vs SDPA"
  timeout 120 python3 benchmarks/kernels/bench_paged_attention.py --backends torch triton cuda \
    --dtype bfloat16 --batch 1 64 256 --ctx 512 2048 8192 --rounds 5 2>&1 | tee "$OUT/attn.log"
fi
stamp "done"
