"""The GGUF matmul and row decoder: the C++ kernels when they are built, the torch reference otherwise.

Stage 7. The kernels are csrc/cpu/gguf_gemm.cpp (float activations) and csrc/cpu/gguf_gemm_q8.cpp
(int8 activations, AVX-512 VNNI), compiled into vllm_mini._C at install time and registered as
torch.ops.vllm_mini_C.gguf_gemm / gguf_gemm_q8 / gguf_dequantize. Their references:
- gguf_matmul_reference: gguf_quants.dequantize, then F.linear; the float kernel differs from it
  only in the order the sums are added up;
- gguf_matmul_q8_reference: x quantized per 32-block to int8 codes and a float scale (exactly as
  the int8 kernel does, llama.cpp's Q8_0/Q8_1 activations), then the same product in float64.

Which path a call takes (gguf_matmul): for Q4_0/Q4_1/Q8_0 weights, float32 x and
INT8_MIN_TOKENS <= tokens <= INT8_MAX_TOKENS the int8 kernel, where the float kernel is
compute-bound (several rows of x per weight row); below that the float kernel (one row of x is
memory-bound: both read the same bytes, and the float kernel's block decode is cheaper); from
GEMM_MIN_TOKENS on a decode of the whole matrix and the float GEMM. The environment variable
VLLM_MINI_GGUF_INT8_ACT=1 turns the int8 path on (off by default, see INT8_ACTIVATIONS; read at
import; tests set INT8_ACTIVATIONS).
Next: quantization/gguf.py, the method that calls these for every linear layer and the embedding.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from vllm_mini.model_executor.layers.quantization.utils.gguf_quants import dequantize

# From this many tokens on (a prefill) we decode the whole matrix once and run the float GEMM,
# which blocks for cache and registers far better than a row-at-a-time kernel. Measured with
# SmolLM2's shapes on the 2-core AVX-512 box, one thread (benchmarks/quantization.py --sweep-m):
# gate_up 3072x576 kernel 0.56 ms vs 1.10 ms at 16 tokens; down 576x1536 0.98 vs 0.74 at 32.
GEMM_MIN_TOKENS = 32

# The int8-activation kernel's token range, measured with the shapes above on one thread (see
# docs/stages/07_quantization.md): vs the float kernel 0.8-1.0x at 1-2 tokens (quantizing x
# and expanding the scales cost more than they save), 1.15-1.26x at 5, 1.6-2.0x at 8 and 16.
# Being ~2x cheaper per multiply-add it also beats the decode-then-GEMM path up to 64 tokens.
INT8_MIN_TOKENS = 3
INT8_MAX_TOKENS = 64
INT8_TYPE_IDS = (2, 3, 8)  # Q4_0, Q4_1, Q8_0
# Off by default: which kernel a row takes depends on how many rows share the step (3-64 go
# int8), so a request's greedy output would change with its batch neighbours, with preemption and
# with speculative verification (tests/structured_output and tests/spec_decode check that it does
# not). The int8 path is per-row exact only against itself; turn it on for throughput.
INT8_ACTIVATIONS = os.environ.get("VLLM_MINI_GGUF_INT8_ACT", "0") == "1"


def _load_kernel() -> bool:
    try:
        from vllm_mini import _C  # noqa: F401 - loading the library registers its torch ops
    except ImportError:
        return False
    return hasattr(torch.ops.vllm_mini_C, "gguf_gemm")


KERNEL_AVAILABLE = _load_kernel()
# The int8 kernel is only worth calling where it was built with VNNI (else its loop is scalar).
INT8_KERNEL_AVAILABLE = (
    KERNEL_AVAILABLE
    and hasattr(torch.ops.vllm_mini_C, "gguf_gemm_q8")
    and bool(torch.ops.vllm_mini_C.gguf_q8_has_vnni())
)

if KERNEL_AVAILABLE:
    # Output shapes without running the kernel, so torch.compile (stage 6) can trace through it.
    @torch.library.register_fake("vllm_mini_C::gguf_gemm")
    def _gguf_gemm_fake(x, qweight, type, use_portable=False):
        return x.new_empty(x.shape[0], qweight.shape[0])

    if hasattr(torch.ops.vllm_mini_C, "gguf_gemm_q8"):

        @torch.library.register_fake("vllm_mini_C::gguf_gemm_q8")
        def _gguf_gemm_q8_fake(x, qweight, type, use_portable=False):
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


def quantize_q8_reference(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] float32 -> int8-valued codes [M, K/32, 32] and scales dx [M, K/32, 1], float32.

    The kernel's steps, each one float32 rounding: dx = max|x| * float32(1/127), inv = 1 / dx
    (0 for an all-zero block), code = round(x * inv) with ties to even.
    """
    m, k = x.shape
    if k % 32:
        raise ValueError(f"gguf: int8 activations need whole blocks of 32 columns, got {k}")
    xb = x.to(torch.float32).reshape(m, k // 32, 32)
    dx = xb.abs().amax(-1, keepdim=True) * torch.tensor(1.0 / 127.0, dtype=torch.float32)
    inv = torch.where(dx > 0, 1.0 / dx, torch.zeros_like(dx))
    return torch.round(xb * inv), dx


def gguf_matmul_q8_reference(x: torch.Tensor, qweight: torch.Tensor, type_id: int) -> torch.Tensor:
    """The int8 kernel's oracle: x quantized per block as it does, then the product in float64."""
    codes, dx = quantize_q8_reference(x)
    xq = (codes.double() * dx.double()).reshape(x.shape)
    return (xq @ dequantize(qweight, type_id).double().T).to(torch.float32)


def gguf_matmul(x: torch.Tensor, qweight: torch.Tensor, type_id: int) -> torch.Tensor:
    """x [..., K] (float32 or bfloat16) @ dequant(qweight [N, bytes])^T -> [..., N], x's dtype."""
    if not KERNEL_AVAILABLE or x.device.type != "cpu":
        return gguf_matmul_reference(x, qweight, type_id)
    x2 = x.reshape(-1, x.shape[-1])  # [M, K]
    if (
        INT8_ACTIVATIONS
        and INT8_KERNEL_AVAILABLE
        and type_id in INT8_TYPE_IDS
        and x.dtype == torch.float32
        and INT8_MIN_TOKENS <= x2.shape[0] <= INT8_MAX_TOKENS
    ):
        y = torch.ops.vllm_mini_C.gguf_gemm_q8(x2, qweight, type_id)
    elif x2.shape[0] >= GEMM_MIN_TOKENS:
        w = gguf_dequantize(qweight, type_id, x2.shape[1]).to(x.dtype)
        y = F.linear(x2, w)
    else:
        # The kernel takes float32: a bfloat16 x is widened (cheap next to reading the weight).
        y = torch.ops.vllm_mini_C.gguf_gemm(x2.to(torch.float32), qweight, type_id).to(x.dtype)
    return y.reshape(*x.shape[:-1], y.shape[-1])
