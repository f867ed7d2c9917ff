"""The CPU FP8 weight-only matmul: the C++ kernel when it is built, the torch reference otherwise.

Stage 7. The kernel is csrc/cpu/fp8_gemm.cpp, compiled into vllm_mini._C and registered as
torch.ops.vllm_mini_C.fp8_gemm / fp8_dequantize. It computes y = x @ (codes * scale)^T with the
float8_e4m3fn codes kept in memory (1 byte a weight) and widened to float32 in registers, while
x stays float (W8A16 in vLLM's words: compressed_tensors_w8a16_fp8.py runs the Marlin kernel this
way on GPUs without an fp8 matmul). The reference, fp8_matmul_reference, dequantizes the whole
weight and runs one float matmul; both sum in float32, so they differ only in summation order.
Next: w8a8_utils.py (finalize_fp8_linear / apply_fp8_linear), which chooses this per layer.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

# VLLM_MINI_CPU_FP8_KERNEL=0 (read when the model loads) keeps the path before the kernel: the
# weight dequantized once to the model's float dtype and run by F.linear.
KERNEL_ENV = "VLLM_MINI_CPU_FP8_KERNEL"

# From this many tokens on (a prefill chunk) we dequantize the whole matrix to x's dtype and run
# the float GEMM, which blocks for cache and registers far better than a row-at-a-time kernel
# (past 8 rows of x, a second tile decodes every weight again, and the rows of x no longer fit
# in L1). Measured with SmolLM2's shapes on the 2-core AVX-512 box, one thread, best of 15
# (benchmarks/quantization.py --sweep-m): float32 3072x576 kernel 0.41 vs 0.69 ms at 16 tokens,
# 1.82 vs 1.18 at 32; bfloat16 576x1536 0.09 vs 0.19 at 8, 0.34 vs 0.21 at 16 (oneDNN's
# bfloat16 GEMM is about twice as fast as its float32 one, so the crossover comes earlier).
GEMM_MIN_TOKENS = {torch.float32: 32, torch.bfloat16: 16}


def _load_kernel() -> bool:
    try:
        from vllm_mini import _C  # noqa: F401 - loading the library registers its torch ops
    except ImportError:
        return False
    return hasattr(torch.ops.vllm_mini_C, "fp8_gemm")


KERNEL_AVAILABLE = _load_kernel()

if KERNEL_AVAILABLE:
    # Output shapes without running the kernel, so torch.compile (stage 6) can trace through it.
    @torch.library.register_fake("vllm_mini_C::fp8_gemm")
    def _fp8_gemm_fake(x, codes, scale, use_portable=False):
        return x.new_empty(x.shape[0], codes.shape[0])

    @torch.library.register_fake("vllm_mini_C::fp8_dequantize")
    def _fp8_dequantize_fake(codes, scale):
        return codes.new_empty(codes.shape, dtype=torch.float32)


def use_cpu_kernel(device: torch.device) -> bool:
    """Whether an fp8 layer on `device` keeps its codes and runs the kernel."""
    return KERNEL_AVAILABLE and device.type == "cpu" and os.environ.get(KERNEL_ENV, "1") != "0"


def fp8_matmul_reference(
    x: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """The oracle: codes [N, K] float8 times scale ([N] or [1]) in float32, then one matmul."""
    w = codes.to(torch.float32) * scale.float().reshape(-1, 1)
    y = F.linear(x.float(), w, None if bias is None else bias.float())
    return y.to(x.dtype)


def fp8_dequantize(codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """codes [N, K] float8_e4m3fn, scale float32 [N] or [1] -> float32 [N, K]."""
    return torch.ops.vllm_mini_C.fp8_dequantize(codes.view(torch.uint8), scale)


def fp8_matmul(
    x: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """x [..., K] (float32 or bfloat16) @ (codes [N, K] * scale)^T (+ bias) -> [..., N], x's dtype.

    scale: contiguous float32, [N] per output channel or [1] per tensor.
    """
    x2 = x.reshape(-1, x.shape[-1])  # [M, K]
    if x2.shape[0] >= GEMM_MIN_TOKENS.get(x.dtype, 1):
        y = F.linear(x2, fp8_dequantize(codes, scale).to(x.dtype), bias)
    else:
        y = torch.ops.vllm_mini_C.fp8_gemm(x2, codes.view(torch.uint8), scale)
        if bias is not None:
            y = y + bias.to(y.dtype)
    return y.reshape(*x.shape[:-1], y.shape[-1])
