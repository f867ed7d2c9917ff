"""The int8-activation GGUF path in torch: the weight repacking, and the references of the kernel.

Stage 7. csrc/cpu/gguf_gemm_q8.cpp multiplies int8-quantized x with Q4_0/Q4_1/Q8_0 weights by
integer dot products (AVX-512 VNNI), llama.cpp's way on a CPU. It reads the weights in groups of
16 rows (its header says why): `pack_q8` reorders the file's blocks into that layout once, at
load (quantization/gguf.py), the same bytes in another order. The references:
- quantize_q8_reference: x per row and per 32-block to int8 codes and a float32 scale, step by
  step as the kernel does (gguf_q8_quantize.hpp), so the codes agree exactly;
- gguf_matmul_q8_reference: those codes times the dequantized weights, in float64 (the kernel's
  integer sums are exact; only its float32 scaling and sum over blocks differ from this).
There is no vLLM file to mirror (vLLM's GGUF method moved to the vllm-gguf-plugin, CUDA only);
the arithmetic is ggml's Q8_0/Q8_1 vec_dot_type. Next: gguf_ops.py, which decides when to use it.
"""

from __future__ import annotations

import torch

from vllm_mini.model_executor.layers.quantization.utils.gguf_quants import dequantize, ggml_type

Q4_0, Q4_1, Q8_0 = 2, 3, 8  # ggml_type enum values
INT8_TYPE_IDS = (Q4_0, Q4_1, Q8_0)
PACK_ROWS = 16  # weight rows per packed group: one output per 32-bit lane of a 512-bit vector


def pack_q8(qweight: torch.Tensor, type_id: int) -> torch.Tensor:
    """[N, K/32 * type_size] file blocks -> [ceil(N/16), K/32 * type_size * 16] packed groups.

    Group g, block b holds block b of rows 16g..16g+15 (missing rows of the last group are zero
    bytes, scale 0): first the quants as 512-bit vectors whose 32-bit lane l is 4 consecutive
    weights of row 16g+l (Q4_x: 4 vectors of the file's qs bytes, which carry weights j and
    j + 16 in their low and high nibble; Q8_0: 8 vectors of q + 128, unsigned), then the 16
    float16 scales d, then (Q4_1) the 16 float16 mins m.
    """
    if type_id not in INT8_TYPE_IDS:
        raise ValueError(
            f"gguf: pack_q8 takes Q4_0, Q4_1 or Q8_0 blocks (type ids {INT8_TYPE_IDS}), "
            f"got type {type_id}"
        )
    t = ggml_type(type_id)
    n, row_bytes = qweight.shape
    nb = row_bytes // t.type_size
    groups = -(-n // PACK_ROWS)
    blocks = qweight.new_zeros(groups * PACK_ROWS, nb, t.type_size)
    blocks[:n] = qweight.reshape(n, nb, t.type_size)
    blocks = blocks.reshape(groups, PACK_ROWS, nb, t.type_size).transpose(1, 2)  # [G, nb, 16, ts]
    header = 4 if type_id == Q4_1 else 2  # d (and m), float16 each
    qs = blocks[..., header:]
    if type_id == Q8_0:
        qs = qs ^ 0x80  # q + 128: unsigned bytes for dpbusd; the kernel subtracts 128 * sum(c)
    quads = qs.shape[-1] // 4  # 4 (Q4_x) or 8 (Q8_0) vectors of 16 lanes x 4 bytes
    quants = qs.reshape(groups, nb, PACK_ROWS, quads, 4).transpose(2, 3)  # [G, nb, quads, 16, 4]
    parts = [quants.reshape(groups, nb, -1), blocks[..., 0:2].reshape(groups, nb, -1)]
    if type_id == Q4_1:
        parts.append(blocks[..., 2:4].reshape(groups, nb, -1))
    return torch.cat(parts, dim=-1).reshape(groups, -1).contiguous()


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
