"""The GGUF matmul and row decoder: the C++ kernels when they are built, the torch reference otherwise.

Stage 7. The kernels are csrc/cpu/gguf_gemm.cpp (float activations) and csrc/cpu/gguf_gemm_q8.cpp
(int8 activations, AVX-512 VNNI), compiled into vllm_mini._C at install time and registered as
torch.ops.vllm_mini_C.gguf_gemm / gguf_gemm_q8 / gguf_dequantize. Their references:
- gguf_matmul_reference: gguf_quants.dequantize, then F.linear; the float kernel differs from it
  only in the order the sums are added up;
- gguf_q8.gguf_matmul_q8_reference: x quantized per 32-block to int8 codes and a float scale
  (exactly as the int8 kernel does, llama.cpp's Q8_0/Q8_1 activations), then the product in
  float64.

Which path a call takes. Q4_0/Q4_1/Q8_0 weights with float32 x take the int8 kernel for EVERY
number of tokens, from a decode step's 1 to a prefill's thousands (INT8_ACTIVATIONS, on by
default; the layers pack their weights for it once at load, gguf_q8.pack_q8). One path and one
fixed float summation order make each row's output independent of how many rows share the call:
a request's greedy text does not change with its batch neighbours, when it is preempted and
recomputed as a prefill, or when speculative decoding verifies several tokens at once (llama.cpp
has the same property on CPU: it quantizes src1 for every batch size). Everything else (other
block types, bfloat16 x, VLLM_MINI_GGUF_INT8_ACT=0): the float kernel below GEMM_MIN_TOKENS, a
decode of the whole matrix and the float GEMM from there on; those do depend on the token count.
Next: quantization/gguf.py, the method that calls these for every linear layer and the embedding.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from vllm_mini.model_executor.layers.quantization.utils.gguf_q8 import INT8_TYPE_IDS, pack_q8
from vllm_mini.model_executor.layers.quantization.utils.gguf_quants import dequantize

# From this many tokens on (a prefill) we decode the whole matrix once and run the float GEMM,
# which blocks for cache and registers far better than a row-at-a-time kernel. Measured with
# SmolLM2's shapes on the 2-core AVX-512 box, one thread (benchmarks/quantization.py --sweep-m):
# gate_up 3072x576 kernel 0.56 ms vs 1.10 ms at 16 tokens; down 576x1536 0.98 vs 0.74 at 32.
GEMM_MIN_TOKENS = 32

# The int8-activation path for float32 x on these block types (gguf_q8.py, gguf_gemm_q8.cpp), at
# every token count. VLLM_MINI_GGUF_INT8_ACT=0 restores the float kernels (read at import; the
# layers decide at load whether to pack their weights for it; tests set INT8_ACTIVATIONS).
INT8_ACTIVATIONS = os.environ.get("VLLM_MINI_GGUF_INT8_ACT", "1") != "0"


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
        def _gguf_gemm_q8_fake(x, packed, type, n, use_portable=False):
            return x.new_empty(x.shape[0], n)

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


def int8_path(type_id: int, dtype: torch.dtype) -> bool:
    """Whether x of this dtype times blocks of this type takes the int8-activation kernel."""
    return (
        INT8_ACTIVATIONS
        and INT8_KERNEL_AVAILABLE
        and type_id in INT8_TYPE_IDS
        and dtype == torch.float32
    )


def gguf_matmul_packed(
    x: torch.Tensor, packed: torch.Tensor, type_id: int, rows: int
) -> torch.Tensor:
    """x [..., K] @ W^T with W packed by gguf_q8.pack_q8 (rows: W's N) -> [..., rows], x's dtype.

    The int8 kernel whatever x's dtype (a bfloat16 x is widened exactly first) and token count.
    """
    if x.dim() == 2 and x.dtype == torch.float32:  # the model's case: no reshapes per call
        return torch.ops.vllm_mini_C.gguf_gemm_q8(x, packed, type_id, rows)
    x2 = x.reshape(-1, x.shape[-1]).to(torch.float32)
    y = torch.ops.vllm_mini_C.gguf_gemm_q8(x2, packed, type_id, rows)
    return y.to(x.dtype).reshape(*x.shape[:-1], rows)


def gguf_matmul(x: torch.Tensor, qweight: torch.Tensor, type_id: int) -> torch.Tensor:
    """x [..., K] (float32 or bfloat16) @ dequant(qweight [N, bytes])^T -> [..., N], x's dtype."""
    if int8_path(type_id, x.dtype) and x.device.type == "cpu":
        # The layers pack once at load and call gguf_matmul_packed; a bare call packs each time.
        return gguf_matmul_packed(x, pack_q8(qweight, type_id), type_id, qweight.shape[0])
    return gguf_matmul_float(x, qweight, type_id)


def gguf_matmul_float(x: torch.Tensor, qweight: torch.Tensor, type_id: int) -> torch.Tensor:
    """gguf_matmul with float activations: the float kernel, or decode + GEMM for many tokens."""
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
