"""Lesson 07 solutions: the quantization arithmetic every method in vllm_mini is built on.

Each function re-implements one the engine has (named in its docstring); test_07_quantization.py
checks them against the engine, against the `gguf` package and against the C++ kernel.
"""

from __future__ import annotations

import struct

import torch

from vllm_mini.model_executor.layers.quantization.utils.quant_utils import Int4Weight


def quantize_per_channel_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 with one scale per output channel. w: [out, in] -> (int8 [out, in], [out, 1]).

    Engine: quantize_weight_int8 in quantization/utils/w8a8_utils.py. The scale maps the row's
    largest |w| to 127, so no code overflows; zero needs no zero point (it is code 0).
    """
    w = w.float()
    scale = w.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127.0
    q = torch.round(w / scale).clamp(-128, 127).to(torch.int8)
    return q, scale


def quantize_per_group_int4(w: torch.Tensor, group_size: int, symmetric: bool) -> Int4Weight:
    """Round-to-nearest 4-bit codes 0..15, one scale (and zero point) per `group_size` inputs.

    Engine: quantize_int4 in quantization/utils/quant_utils.py. Symmetric: zero point 8 and
    scale max|w| / 7.5. Asymmetric: the group's range [min(w, 0), max(w, 0)] is spread over
    0..15 and the zero point is the code that stands for 0.0.
    """
    w = w.float()
    out_features, in_features = w.shape
    groups = w.reshape(out_features, in_features // group_size, group_size)
    if symmetric:
        scales = groups.abs().amax(dim=2).clamp(min=1e-8) / 7.5
        zeros = torch.full_like(scales, 8, dtype=torch.int32)
    else:
        lo = groups.amin(dim=2).clamp(max=0)
        hi = groups.amax(dim=2).clamp(min=0)
        scales = ((hi - lo) / 15).clamp(min=1e-8)
        zeros = torch.round(-lo / scales).to(torch.int32).clamp(0, 15)
    q = torch.round(groups / scales[..., None]) + zeros[..., None]
    q = q.clamp(0, 15).to(torch.int32).reshape(out_features, in_features)
    return Int4Weight(q, scales, zeros)


def unpack_gptq_qweight(qweight: torch.Tensor) -> torch.Tensor:
    """GPTQ's qweight int32 [in/8, out] -> the 4-bit codes int32 [out, in].

    Engine: gptq_to_int4 / unpack_int4 in quantization/utils/. Word r of column o holds inputs
    8r .. 8r+7 of output o, input 8r+j in bits 4j..4j+3.
    """
    shifts = torch.arange(0, 32, 4, dtype=torch.int32)  # [8]
    codes = (qweight.unsqueeze(1) >> shifts[None, :, None]) & 0xF  # [in/8, 8, out]
    return codes.reshape(-1, qweight.shape[1]).t().contiguous()


def dequantize_q4_1_block(block: bytes) -> list[float]:
    """One Q4_1 block, read byte by byte: 20 bytes -> 32 weights.

    Engine: _q4_1 in quantization/utils/gguf_quants.py (and ggml's dequantize_row_q4_1). Bytes
    0-1: d (float16), bytes 2-3: m (float16), bytes 4-19: 16 bytes of 4-bit codes q. Byte 4+j
    holds weight j in its low nibble and weight j+16 in its high nibble. w = d * q + m.
    """
    d, m = struct.unpack("<ee", block[:4])
    weights = [0.0] * 32
    for j in range(16):
        byte = block[4 + j]
        weights[j] = d * (byte & 0x0F) + m
        weights[j + 16] = d * (byte >> 4) + m
    return weights


def q4_1_dot(row: torch.Tensor, x: torch.Tensor) -> float:
    """One output of a Q4_1 matmul: sum_i w[i] * x[i] for a row of blocks (uint8 [K/32 * 20]).

    Engine: the C++ kernel gguf_gemm (csrc/cpu/gguf_gemm.cpp) computes this for every row. Per
    block, sum(w * x) = d * sum(q * x) + m * sum(x): the kernel never builds w.
    """
    blocks = row.reshape(-1, 20)
    total = 0.0
    for b, block in enumerate(blocks):
        d, m = struct.unpack("<ee", bytes(block[:4].tolist()))
        qs = block[4:].to(torch.int64)
        q = torch.cat([qs & 0x0F, qs >> 4]).to(torch.float64)  # weights 0..15, then 16..31
        xb = x[32 * b : 32 * (b + 1)].to(torch.float64)
        total += d * float((q * xb).sum()) + m * float(xb.sum())
    return total
