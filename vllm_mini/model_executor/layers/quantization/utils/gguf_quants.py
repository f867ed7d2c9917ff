"""GGUF block formats, and a plain-torch dequantizer for each: the reference the kernel must equal.

Stage 7. The block layouts are ggml's (llama.cpp's ggml/src/ggml-common.h defines the structs);
the `gguf` package's gguf/quants.py decodes them in numpy, and our tests hold every function here
to be bit-exact with it. The fast path is the C++ kernel csrc/cpu/gguf_gemm.cpp, which decodes
the same bytes inside its matmul; this file is what it is checked against. Next:
quantization/gguf.py, which keeps the blocks in memory and calls the kernel.

A GGUF tensor of shape [rows, cols] is stored row by row; each row is `cols / block_size` blocks
of `type_size` bytes. So a weight stays a uint8 tensor [rows, bytes_per_row] and any row (an
embedding lookup, a permuted q row) can be taken without decoding the rest.

The formats (all little-endian; d, m, dmin are float16):
- Q4_0 (32 weights, 18 B): d, 16 B of nibbles.  w = d * (q - 8)
- Q4_1 (32 weights, 20 B): d, m, 16 B of nibbles.  w = d * q + m
- Q5_0 (32 weights, 22 B): d, 4 B of 5th bits, 16 B of nibbles.  w = d * (q - 16)
- Q5_1 (32 weights, 24 B): d, m, 4 B of 5th bits, 16 B of nibbles.  w = d * q + m
- Q8_0 (32 weights, 34 B): d, 32 int8.  w = d * q
  In the 32-weight types byte j holds weight j in its low nibble and weight j + 16 in its high one.
- K-quants pack 256 weights ("super-block") as 8 or 16 sub-blocks, each with its own small
  integer scale, and the sub-block scales are themselves scaled by one float16 `d`:
- Q4_K (256 weights, 144 B): d, dmin, 12 B of eight 6-bit scales and eight 6-bit mins, 128 B of
  nibbles.  w = (d * scale_j) * q - (dmin * min_j) in sub-block j of 32 weights.
- Q5_K (256 weights, 176 B): Q4_K plus 32 B of 5th bits (bit j of byte l is weight l of block j).
- Q6_K (256 weights, 210 B): 128 B of low nibbles, 64 B of 2-bit highs, 16 int8 scales, d.
  w = (d * scale_i) * (q - 32) in sub-block i of 16 weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class GGMLType:
    name: str
    type_id: int  # ggml's enum value, as stored in the GGUF file
    block_size: int  # weights per block
    type_size: int  # bytes per block


# ggml_type numbers (gguf.GGMLQuantizationType) of the formats we decode.
GGML_TYPES: dict[int, GGMLType] = {
    t.type_id: t
    for t in (
        GGMLType("F32", 0, 1, 4),
        GGMLType("F16", 1, 1, 2),
        GGMLType("Q4_0", 2, 32, 18),
        GGMLType("Q4_1", 3, 32, 20),
        GGMLType("Q5_0", 6, 32, 22),
        GGMLType("Q5_1", 7, 32, 24),
        GGMLType("Q8_0", 8, 32, 34),
        GGMLType("Q4_K", 12, 256, 144),
        GGMLType("Q5_K", 13, 256, 176),
        GGMLType("Q6_K", 14, 256, 210),
        GGMLType("BF16", 30, 1, 2),
    )
}
GGML_TYPE_BY_NAME = {t.name: t for t in GGML_TYPES.values()}


def ggml_type(type_id: int) -> GGMLType:
    if type_id not in GGML_TYPES:
        names = ", ".join(t.name for t in GGML_TYPES.values())
        raise ValueError(f"gguf: ggml type {type_id} is not supported; supported: {names}")
    return GGML_TYPES[type_id]


def _f16(two_bytes: torch.Tensor) -> torch.Tensor:
    """[..., 2] uint8 -> [..., 1] float32: a little-endian float16 field of each block."""
    return two_bytes.contiguous().view(torch.float16).to(torch.float32)


def _nibbles(qs: torch.Tensor) -> torch.Tensor:
    """[n, 16] packed bytes -> [n, 32]: the 16 low nibbles, then the 16 high ones."""
    return torch.cat([qs & 0x0F, qs >> 4], dim=-1)


def _fifth_bits(qh: torch.Tensor) -> torch.Tensor:
    """[n, 4] bytes read as one little-endian uint32 -> its 32 bits, bit i for weight i."""
    shifts = torch.arange(8, dtype=torch.uint8)
    return ((qh.unsqueeze(-1) >> shifts) & 1).reshape(qh.shape[0], 32)


def _q4_0(b: torch.Tensor) -> torch.Tensor:
    d, qs = _f16(b[:, 0:2]), b[:, 2:18]
    q = _nibbles(qs).to(torch.int8) - 8
    return d * q.to(torch.float32)


def _q4_1(b: torch.Tensor) -> torch.Tensor:
    d, m, qs = _f16(b[:, 0:2]), _f16(b[:, 2:4]), b[:, 4:20]
    return d * _nibbles(qs).to(torch.float32) + m


def _q5_0(b: torch.Tensor) -> torch.Tensor:
    d, qh, qs = _f16(b[:, 0:2]), b[:, 2:6], b[:, 6:22]
    q = (_nibbles(qs) | (_fifth_bits(qh) << 4)).to(torch.int8) - 16
    return d * q.to(torch.float32)


def _q5_1(b: torch.Tensor) -> torch.Tensor:
    d, m, qh, qs = _f16(b[:, 0:2]), _f16(b[:, 2:4]), b[:, 4:8], b[:, 8:24]
    q = _nibbles(qs) | (_fifth_bits(qh) << 4)
    return d * q.to(torch.float32) + m


def _q8_0(b: torch.Tensor) -> torch.Tensor:
    d, qs = _f16(b[:, 0:2]), b[:, 2:34]
    return qs.contiguous().view(torch.int8).to(torch.float32) * d


def k_scale_min(scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_K/Q5_K's 12 scale bytes -> eight 6-bit scales and eight 6-bit mins, [n, 8] each.

    Bytes 0-3 hold scales 0-3 in their low 6 bits, bytes 4-7 mins 0-3; scales and mins 4-7 keep
    their low 4 bits in bytes 8-11 and their top 2 bits in the spare top bits of bytes 0-7.
    """
    s = scales.reshape(-1, 3, 4)
    lo_sc, lo_min, hi = s[:, 0], s[:, 1], s[:, 2]
    sc = torch.cat([lo_sc & 0x3F, (hi & 0x0F) | ((lo_sc >> 2) & 0x30)], dim=-1)
    mn = torch.cat([lo_min & 0x3F, (hi >> 4) | ((lo_min >> 2) & 0x30)], dim=-1)
    return sc, mn


def _k_nibbles(qs: torch.Tensor) -> torch.Tensor:
    """[n, 128] -> [n, 8, 32]: each 32 bytes hold sub-block 2j (low nibbles) and 2j+1 (high)."""
    qs = qs.reshape(-1, 4, 1, 32) >> torch.tensor([0, 4], dtype=torch.uint8).reshape(1, 1, 2, 1)
    return (qs & 0x0F).reshape(-1, 8, 32)


def _q4_k(b: torch.Tensor) -> torch.Tensor:
    d, dmin, scales, qs = _f16(b[:, 0:2]), _f16(b[:, 2:4]), b[:, 4:16], b[:, 16:144]
    sc, mn = k_scale_min(scales)
    scale = (d * sc.to(torch.float32)).unsqueeze(-1)  # [n, 8, 1]
    offset = (dmin * mn.to(torch.float32)).unsqueeze(-1)
    return (scale * _k_nibbles(qs).to(torch.float32) - offset).reshape(-1, 256)


def _q5_k(b: torch.Tensor) -> torch.Tensor:
    d, dmin, scales = _f16(b[:, 0:2]), _f16(b[:, 2:4]), b[:, 4:16]
    qh, qs = b[:, 16:48], b[:, 48:176]
    sc, mn = k_scale_min(scales)
    scale = (d * sc.to(torch.float32)).unsqueeze(-1)
    offset = (dmin * mn.to(torch.float32)).unsqueeze(-1)
    high = (qh.unsqueeze(1) >> torch.arange(8, dtype=torch.uint8).reshape(1, 8, 1)) & 1
    q = _k_nibbles(qs) | (high << 4)  # [n, 8, 32]
    return (scale * q.to(torch.float32) - offset).reshape(-1, 256)


def _q6_k(b: torch.Tensor) -> torch.Tensor:
    ql, qh, scales, d = b[:, 0:128], b[:, 128:192], b[:, 192:208], _f16(b[:, 208:210])
    scale = (d * scales.contiguous().view(torch.int8).to(torch.float32)).unsqueeze(-1)  # [n,16,1]
    # Each half of 128 weights: low nibbles of ql[0:32], ql[32:64], then their high nibbles...
    low = ql.reshape(-1, 2, 1, 64) >> torch.tensor([0, 4], dtype=torch.uint8).reshape(1, 1, 2, 1)
    low = (low & 0x0F).reshape(-1, 8, 32)
    # ...and the two high bits of those four groups from bits 0-1, 2-3, 4-5, 6-7 of qh.
    shifts = torch.tensor([0, 2, 4, 6], dtype=torch.uint8).reshape(1, 1, 4, 1)
    high = ((qh.reshape(-1, 2, 1, 32) >> shifts) & 0x03).reshape(-1, 8, 32)
    q = (low | (high << 4)).to(torch.int8) - 32
    return (scale * q.reshape(-1, 16, 16).to(torch.float32)).reshape(-1, 256)


def _f32(b: torch.Tensor) -> torch.Tensor:
    return b.contiguous().view(torch.float32)


def _f16_plain(b: torch.Tensor) -> torch.Tensor:
    return b.contiguous().view(torch.float16).to(torch.float32)


def _bf16(b: torch.Tensor) -> torch.Tensor:
    return b.contiguous().view(torch.bfloat16).to(torch.float32)


_DEQUANT_BLOCKS = {
    "F32": _f32,
    "F16": _f16_plain,
    "BF16": _bf16,
    "Q4_0": _q4_0,
    "Q4_1": _q4_1,
    "Q5_0": _q5_0,
    "Q5_1": _q5_1,
    "Q8_0": _q8_0,
    "Q4_K": _q4_k,
    "Q5_K": _q5_k,
    "Q6_K": _q6_k,
}


def dequantize(qweight: torch.Tensor, type_id: int) -> torch.Tensor:
    """[rows, bytes_per_row] uint8 blocks -> [rows, cols] float32 weights."""
    t = ggml_type(type_id)
    if qweight.dtype != torch.uint8 or qweight.dim() != 2:
        raise ValueError(f"gguf: qweight must be 2-D uint8, got {qweight.dtype} {qweight.dim()}-D")
    rows, nbytes = qweight.shape
    if nbytes % t.type_size:
        raise ValueError(f"gguf: {nbytes} bytes per row is not whole {t.name} blocks")
    blocks = qweight.reshape(-1, t.type_size)  # [rows * blocks_per_row, type_size]
    cols = nbytes // t.type_size * t.block_size
    return _DEQUANT_BLOCKS[t.name](blocks).reshape(rows, cols)


def bytes_per_row(type_id: int, cols: int) -> int:
    t = ggml_type(type_id)
    if cols % t.block_size:
        raise ValueError(f"gguf: {t.name} needs rows of a multiple of {t.block_size}, got {cols}")
    return cols // t.block_size * t.type_size
