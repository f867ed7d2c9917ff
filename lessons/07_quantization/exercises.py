"""Lesson 07 exercises: the quantization arithmetic every method in vllm_mini is built on.

Fill in each function, then run:  LESSON_IMPL=exercises .venv/bin/pytest lessons/07_quantization
One at a time with -k: per_channel | per_group | gptq | q4_1_block | q4_1_dot. The tests compare
your answers with the engine's functions, the `gguf` package and the C++ GGUF kernel.
"""

from __future__ import annotations

import struct  # noqa: F401 - for dequantize_q4_1_block and q4_1_dot

import torch

from vllm_mini.model_executor.layers.quantization.utils.quant_utils import Int4Weight


def quantize_per_channel_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 with one scale per output channel. w: [out, in] -> (int8 [out, in], [out, 1]).

    Engine: quantize_weight_int8 in quantization/utils/w8a8_utils.py. The scale maps the row's
    largest |w| to 127, so no code overflows; zero needs no zero point (it is code 0).
    """
    raise NotImplementedError(
        "quantize_per_channel_int8: scale = max|row| / 127, q = round(w / scale). Engine: quantize_weight_int8 in w8a8_utils.py"
    )


def quantize_per_group_int4(w: torch.Tensor, group_size: int, symmetric: bool) -> Int4Weight:
    """Round-to-nearest 4-bit codes 0..15, one scale (and zero point) per `group_size` inputs.

    Engine: quantize_int4 in quantization/utils/quant_utils.py. Symmetric: zero point 8 and
    scale max|w| / 7.5. Asymmetric: the group's range [min(w, 0), max(w, 0)] is spread over
    0..15 and the zero point is the code that stands for 0.0.
    """
    raise NotImplementedError(
        "quantize_per_group_int4: reshape to [out, groups, group_size], one scale/zero per group. Engine: quantize_int4 in quant_utils.py"
    )


def unpack_gptq_qweight(qweight: torch.Tensor) -> torch.Tensor:
    """GPTQ's qweight int32 [in/8, out] -> the 4-bit codes int32 [out, in].

    Engine: gptq_to_int4 / unpack_int4 in quantization/utils/. Word r of column o holds inputs
    8r .. 8r+7 of output o, input 8r+j in bits 4j..4j+3.
    """
    raise NotImplementedError(
        "unpack_gptq_qweight: shift each int32 word right by 0, 4, ..., 28 and mask with 0xF. Engine: unpack_int4 in quant_utils.py"
    )


def dequantize_q4_1_block(block: bytes) -> list[float]:
    """One Q4_1 block, read byte by byte: 20 bytes -> 32 weights.

    Engine: _q4_1 in quantization/utils/gguf_quants.py (and ggml's dequantize_row_q4_1). Bytes
    0-1: d (float16), bytes 2-3: m (float16), bytes 4-19: 16 bytes of 4-bit codes q. Byte 4+j
    holds weight j in its low nibble and weight j+16 in its high nibble. w = d * q + m.
    """
    raise NotImplementedError(
        "dequantize_q4_1_block: struct.unpack('<ee', block[:4]) gives d and m; then the 16 code bytes. Engine: _q4_1 in gguf_quants.py"
    )


def q4_1_dot(row: torch.Tensor, x: torch.Tensor) -> float:
    """One output of a Q4_1 matmul: sum_i w[i] * x[i] for a row of blocks (uint8 [K/32 * 20]).

    Engine: the C++ kernel gguf_gemm (csrc/cpu/gguf_gemm.cpp) computes this for every row. Per
    block, sum(w * x) = d * sum(q * x) + m * sum(x): the kernel never builds w.
    """
    raise NotImplementedError(
        "q4_1_dot: per block, d * sum(q * x) + m * sum(x). Engine: csrc/cpu/gguf_gemm.cpp"
    )
