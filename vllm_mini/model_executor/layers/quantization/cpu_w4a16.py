"""The C++ W4A16 kernel (csrc/cpu/w4a16_gemm.cpp), as a torch operator. Stage 7.

Mirrors vllm/model_executor/kernels/linear/mixed_precision/cpu.py (vLLM's CPU path for int4
weights, which calls its `cpu_gemm_wna16` op). The kernel is compiled at install time into
`vllm_mini._C` and registers `torch.ops.vllm_mini_C.w4a16_gemm` when that module is imported
(an operator, not a Python function, so other C++ files can add their own ops to the same
module). `register_fake` tells torch.compile the output's shape without running it. Next:
triton_w4a16.py, the same product for GPUs.
"""

from __future__ import annotations

import torch

from vllm_mini.model_executor.layers.quantization.utils.w4a16_layout import (
    BLOCK_N,
    W4A16KernelWeights,
)

try:
    from vllm_mini import _C  # noqa: F401 (importing it registers the operator)

    CPU_KERNEL_AVAILABLE = hasattr(torch.ops.vllm_mini_C, "w4a16_gemm")
except ImportError:  # not built (no g++ at install): w4a16_linear.py falls back to torch
    CPU_KERNEL_AVAILABLE = False

if CPU_KERNEL_AVAILABLE:

    @torch.library.register_fake("vllm_mini_C::w4a16_gemm")
    def _w4a16_gemm_fake(x, qweight, scales, zero_scales, group_size, portable=False):
        return x.new_empty(x.shape[0], qweight.shape[0] * BLOCK_N)


def w4a16_gemm_cpu(x: torch.Tensor, kw: W4A16KernelWeights, portable: bool = False) -> torch.Tensor:
    """x [M, K] (columns already in kw.perm order) -> [M, N_pad] in x's dtype.

    `portable=True` runs the plain-loop version even where AVX-512 is compiled in (tests).
    """
    if not CPU_KERNEL_AVAILABLE:
        raise RuntimeError(
            "vllm_mini._C has no w4a16_gemm: rebuild the kernels with `make kernels` "
            "(`pip install --no-build-isolation --no-deps -e .`)"
        )
    return torch.ops.vllm_mini_C.w4a16_gemm(
        x, kw.qweight, kw.scales, kw.zero_scales, kw.group_size, portable
    )
