"""4-bit weights in plain torch: pack, unpack, quantize, dequantize. Stage 7.

Mirrors vllm/model_executor/layers/quantization/utils/quant_utils.py. This is the readable
reference every W4A16 ("4-bit weights, 16-bit activations") kernel is tested against. One
canonical form, used by all three checkpoint formats (GPTQ, AWQ, compressed-tensors), holds:

- `q`: int32 [out, in], each weight's 4-bit code, 0..15;
- `scales`: float [out, groups]; `zeros`: int32 [out, groups], the code that means 0.0;
- `g_idx`: int32 [in] or None: the group of each input column (None: column i is in group
  i // group_size). GPTQ's act-order ("desc_act") quantizes columns in a shuffled order, so its
  groups are not contiguous runs of columns.

The real weight is `W[o, i] = (q[o, i] - zeros[o, g]) * scales[o, g]` with `g = g_idx[i]`. A
symmetric scheme has every zero at 8, the middle of 0..15. Checkpoints store q as nibbles, eight
in an int32 (`pack_int4`); how each tool orders those nibbles is in w4a16_formats.py. Next:
w4a16_formats.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

PACK_FACTOR = 8  # 4-bit values per int32
SUPPORTED_GROUP_SIZES_TEXT = "-1 (one group per output channel) or a positive multiple of 32"


@dataclass
class Int4Weight:
    """A 4-bit weight in the canonical form (see the module docstring)."""

    q: torch.Tensor  # int32 [out, in], 0..15
    scales: torch.Tensor  # float [out, groups]
    zeros: torch.Tensor  # int32 [out, groups], 0..15 (8 when symmetric)
    g_idx: torch.Tensor | None = None  # int32 [in]: group of each input column

    @property
    def group_size(self) -> int:
        return self.q.shape[1] // self.scales.shape[1]

    def group_index(self) -> torch.Tensor:
        """int64 [in]: the group of every input column."""
        if self.g_idx is not None:
            return self.g_idx.long()
        return torch.arange(self.q.shape[1]) // self.group_size


def check_group_size(method: str, group_size: int, input_size: int) -> int:
    """The group size in columns (-1 means the whole input), or an error naming the method."""
    if group_size == -1:
        group_size = input_size
    elif group_size <= 0 or group_size % 32 != 0:
        raise ValueError(
            f"{method}: group_size must be {SUPPORTED_GROUP_SIZES_TEXT}; got {group_size}"
        )
    if input_size % group_size != 0 or input_size % 32 != 0:
        raise ValueError(
            f"{method}: the layer's input size {input_size} must be a multiple of 32 and of "
            f"group_size {group_size}"
        )
    return group_size


def pack_int4(values: torch.Tensor, dim: int) -> torch.Tensor:
    """Pack 4-bit codes (0..15) eight to an int32 along `dim`; value j of 8 sits in bits 4j."""
    values = values.to(torch.int32).movedim(dim, -1)
    if values.shape[-1] % PACK_FACTOR != 0:
        raise ValueError(f"pack_int4: size {values.shape[-1]} is not a multiple of 8")
    values = values.reshape(*values.shape[:-1], -1, PACK_FACTOR)
    shifts = torch.arange(0, 32, 4, dtype=torch.int32)
    # Shifting 15 into bits 28..31 overflows into the sign bit: fine, int32 just wraps.
    packed = (values << shifts).sum(-1, dtype=torch.int32)
    return packed.movedim(-1, dim).contiguous()


def unpack_int4(packed: torch.Tensor, dim: int) -> torch.Tensor:
    """Inverse of pack_int4: int32 codes 0..15, eight times longer along `dim`."""
    packed = packed.to(torch.int32).movedim(dim, -1)
    shifts = torch.arange(0, 32, 4, dtype=torch.int32)
    # `>>` on a negative int32 drags the sign bit in; the mask keeps only the 4 bits we want.
    values = (packed.unsqueeze(-1) >> shifts) & 0xF
    return values.reshape(*packed.shape[:-1], -1).movedim(-1, dim).contiguous()


def quantize_int4(
    w: torch.Tensor, group_size: int, symmetric: bool, g_idx: torch.Tensor | None = None
) -> Int4Weight:
    """Round-to-nearest 4-bit quantization of a float [out, in] weight, group by group.

    Real tools (GPTQ, AWQ) choose the codes more cleverly, but store them the same way; tests
    and synthetic checkpoints use this. Symmetric: scale = max|w| / 7.5 around zero code 8 (the
    bias-8 "uint4b8" type). Asymmetric: the group's [min, max] mapped onto 0..15.
    """
    out_features, in_features = w.shape
    group_size = in_features if group_size == -1 else group_size
    groups = in_features // group_size
    group_of = torch.arange(in_features) // group_size if g_idx is None else g_idx.long()
    scales = torch.empty(out_features, groups)
    zeros = torch.empty(out_features, groups, dtype=torch.int32)
    q = torch.empty(out_features, in_features, dtype=torch.int32)
    w = w.float()
    for g in range(groups):
        cols = (group_of == g).nonzero().squeeze(1)
        wg = w[:, cols]
        if symmetric:
            scale = wg.abs().amax(1).clamp(min=1e-8) / 7.5
            zero = torch.full((out_features,), 8, dtype=torch.int32)
        else:
            lo, hi = wg.amin(1).clamp(max=0), wg.amax(1).clamp(min=0)
            scale = ((hi - lo) / 15).clamp(min=1e-8)
            zero = torch.round(-lo / scale).to(torch.int32).clamp(0, 15)
        q[:, cols] = (torch.round(wg / scale[:, None]) + zero[:, None]).clamp(0, 15).to(torch.int32)
        scales[:, g], zeros[:, g] = scale, zero
    return Int4Weight(q, scales, zeros, None if g_idx is None else g_idx.to(torch.int32))


def dequantize_int4(weight: Int4Weight, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The float [out, in] weight the codes stand for: (q - zero) * scale, column by column."""
    group = weight.group_index()  # [in]
    zeros = weight.zeros[:, group].float()  # [out, in]: each column's group's zero and scale
    scales = weight.scales[:, group].float()
    return ((weight.q.float() - zeros) * scales).to(dtype)


def w4a16_linear_reference(
    x: torch.Tensor, weight: Int4Weight, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """y = x @ dequant(W)^T (+ bias), in float32, returned in x's dtype: the kernels' oracle."""
    y = torch.nn.functional.linear(x.float(), dequantize_int4(weight))
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)
