"""The W4A16 product y = x @ W^T in Triton, reading the same 4-bit layout as the C++ kernel.

Stage 7. Mirrors vllm/model_executor/kernels/linear/mixed_precision/triton_w4a16.py (vLLM's
Triton kernel for int4 weights), reduced to one readable kernel over our layout
(utils/w4a16_layout.py: 16-column blocks, a byte holds rows 2p and 2p + 1 of one column).
One program computes a [BLOCK_M, BLOCK_N] tile of y. It walks K in steps of 32 rows (16 bytes
per column): loads the bytes, splits them into even-row and odd-row codes, turns codes into
weights with the step's group scale (q * scale - zero * scale: a step never straddles two
groups, since group sizes are multiples of 32), and adds two small matrix products, one for the
even rows of x and one for the odd. The weight never exists in float outside that tile.

On a GPU Triton compiles this; on CPU set TRITON_INTERPRET=1 before importing this module, and
Triton runs it in numpy (slow, exact), which is how the tests compare it with the torch
reference and the C++ kernel. Next: w4a16_linear.py, which picks a kernel.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from vllm_mini.model_executor.layers.quantization.utils.w4a16_layout import (
    BLOCK_N,
    W4A16KernelWeights,
)

BLOCK_K_HALF = 16  # bytes (row pairs) per step: 32 rows of K
# Triton 3.9's interpreter computes 16-bit tl.dot wrongly (off by ~1e10 on random bf16 inputs,
# measured), so interpreted runs multiply 16-bit activations in float32 instead.
_INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


@triton.jit
def _w4a16_kernel(
    x_ptr, qweight_ptr, scales_ptr, zero_scales_ptr, out_ptr,
    M, N, K, num_groups, group_size, stride_xm, stride_om,
    BLOCK_M: tl.constexpr, TILE_N: tl.constexpr, BLOCK_KH: tl.constexpr, COL_BLOCK: tl.constexpr,
    IEEE: tl.constexpr,
):  # fmt: skip
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * TILE_N + tl.arange(0, TILE_N)
    m_mask = offs_m[:, None] < M
    n_mask = offs_n < N
    block = offs_n // COL_BLOCK  # which 16-column block, and the column inside it
    col = offs_n % COL_BLOCK
    half_k = K // 2
    offs_p = tl.arange(0, BLOCK_KH)
    acc = tl.zeros([BLOCK_M, TILE_N], dtype=tl.float32)
    for p0 in range(0, half_k, BLOCK_KH):
        pairs = p0 + offs_p
        # bytes [BLOCK_KH, TILE_N]: qweight[block, pair, col]
        byte_off = block[None, :].to(tl.int64) * half_k * COL_BLOCK + pairs[:, None] * COL_BLOCK
        b = tl.load(qweight_ptr + byte_off + col[None, :], mask=n_mask[None, :], other=0)
        b = b.to(tl.int32)
        g = (2 * p0) // group_size
        sz_off = block.to(tl.int64) * num_groups * COL_BLOCK + g * COL_BLOCK + col
        s = tl.load(scales_ptr + sz_off, mask=n_mask, other=0.0)
        zs = tl.load(zero_scales_ptr + sz_off, mask=n_mask, other=0.0)
        # rows 2p (low nibbles) and 2p + 1 (high nibbles), dequantized: q * scale - zero * scale
        w_even = (b & 0xF).to(tl.float32) * s[None, :] - zs[None, :]
        w_odd = (b >> 4).to(tl.float32) * s[None, :] - zs[None, :]
        x_off = offs_m[:, None].to(tl.int64) * stride_xm + 2 * pairs[None, :]
        x_even = tl.load(x_ptr + x_off, mask=m_mask, other=0.0)
        x_odd = tl.load(x_ptr + x_off + 1, mask=m_mask, other=0.0)
        if IEEE:  # float32 products (no TF32 rounding on a GPU)
            acc += tl.dot(x_even.to(tl.float32), w_even, input_precision="ieee")
            acc += tl.dot(x_odd.to(tl.float32), w_odd, input_precision="ieee")
        else:  # 16-bit activations: the weight tile in the same 16-bit type, fp32 accumulation
            acc += tl.dot(x_even, w_even.to(x_even.dtype))
            acc += tl.dot(x_odd, w_odd.to(x_odd.dtype))
    out_off = offs_m[:, None].to(tl.int64) * stride_om + offs_n[None, :]
    tl.store(out_ptr + out_off, acc.to(out_ptr.dtype.element_ty), mask=m_mask & n_mask[None, :])


def w4a16_gemm_triton(x: torch.Tensor, kw: W4A16KernelWeights) -> torch.Tensor:
    """x [M, K] (columns already in kw.perm order) -> [M, N_pad] in x's dtype."""
    m, k = x.shape
    if k != kw.in_features or kw.group_size % (2 * BLOCK_K_HALF) != 0:
        raise ValueError(
            f"triton_w4a16: x has K={k}, the weight {kw.in_features}; group_size "
            f"{kw.group_size} must be a multiple of {2 * BLOCK_K_HALF}"
        )
    x = x.contiguous()
    n_pad = kw.qweight.shape[0] * BLOCK_N
    out = torch.empty(m, n_pad, dtype=x.dtype, device=x.device)
    block_m, tile_n = 16, 32  # tl.dot needs at least 16 along each dimension
    grid = (triton.cdiv(m, block_m), triton.cdiv(n_pad, tile_n))
    _w4a16_kernel[grid](
        x, kw.qweight, kw.scales, kw.zero_scales, out,
        m, n_pad, k, kw.scales.shape[1], kw.group_size, x.stride(0), out.stride(0),
        BLOCK_M=block_m, TILE_N=tile_n, BLOCK_KH=BLOCK_K_HALF, COL_BLOCK=BLOCK_N,
        IEEE=x.dtype == torch.float32 or _INTERPRETED,
    )  # fmt: skip
    return out
