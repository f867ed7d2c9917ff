"""The GGUF matmul and row decoder: the C++ kernel when it is built, the torch reference otherwise.

Stage 7. The kernel is csrc/cpu/gguf_gemm.cpp, compiled into vllm_mini._C at install time and
registered as torch.ops.vllm_mini_C.gguf_gemm / gguf_dequantize; the reference is
gguf_quants.dequantize followed by F.linear. Both compute x @ dequant(W)^T in float32, so they
differ only in the order the sums are added up. Next: quantization/gguf.py, the method that
calls these for every linear layer and the embedding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vllm_mini.model_executor.layers.quantization.utils.gguf_quants import dequantize

# From this many tokens on (a prefill) we decode the whole matrix once and run the float GEMM,
# which blocks for cache and registers far better than a row-at-a-time kernel. Measured with
# SmolLM2's shapes on the 2-core AVX-512 box, one thread (benchmarks/quantization.py --sweep-m):
# gate_up 3072x576 kernel 0.56 ms vs 1.10 ms at 16 tokens; down 576x1536 0.98 vs 0.74 at 32.
GEMM_MIN_TOKENS = 32


def _load_kernel() -> bool:
    try:
        from vllm_mini import _C  # noqa: F401 - loading the library registers its torch ops
    except ImportError:
        return False
    return hasattr(torch.ops.vllm_mini_C, "gguf_gemm")


KERNEL_AVAILABLE = _load_kernel()

if KERNEL_AVAILABLE:
    # Output shapes without running the kernel, so torch.compile (stage 6) can trace through it.
    @torch.library.register_fake("vllm_mini_C::gguf_gemm")
    def _gguf_gemm_fake(x, qweight, type, use_portable=False):
        return x.new_empty(x.shape[0], qweight.shape[0])

    @torch.library.register_fake("vllm_mini_C::gguf_dequantize")
    def _gguf_dequantize_fake(qweight, type, cols):
        return qweight.new_empty(qweight.shape[0], cols, dtype=torch.float32)


def gguf_dequantize(qweight: torch.Tensor, type_id: int, cols: int) -> torch.Tensor:
    """[rows, bytes] blocks -> [rows, cols] float32."""
    if KERNEL_AVAILABLE and qweight.device.type == "cpu":
        return torch.ops.vllm_mini_C.gguf_dequantize(qweight.contiguous(), type_id, cols)
    return dequantize(qweight, type_id)


def gguf_matmul_reference(x: torch.Tensor, qweight: torch.Tensor, type_id: int) -> torch.Tensor:
    """The oracle: decode every weight with the torch reference, then one float matmul."""
    return F.linear(x, dequantize(qweight, type_id).to(x.dtype))


def gguf_matmul(x: torch.Tensor, qweight: torch.Tensor, type_id: int) -> torch.Tensor:
    """x [..., K] (float32 or bfloat16) @ dequant(qweight [N, bytes])^T -> [..., N], x's dtype."""
    if not KERNEL_AVAILABLE or x.device.type != "cpu":
        return gguf_matmul_reference(x, qweight, type_id)
    x2 = x.reshape(-1, x.shape[-1])  # [M, K]
    if x2.shape[0] >= GEMM_MIN_TOKENS:
        w = gguf_dequantize(qweight, type_id, x2.shape[1]).to(x.dtype)
        y = F.linear(x2, w)
    else:
        # The kernel takes float32: a bfloat16 x is widened (cheap next to reading the weight).
        y = torch.ops.vllm_mini_C.gguf_gemm(x2.to(torch.float32), qweight, type_id).to(x.dtype)
    return y.reshape(*x.shape[:-1], y.shape[-1])
