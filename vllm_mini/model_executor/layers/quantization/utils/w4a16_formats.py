"""How GPTQ, AWQ and compressed-tensors lay out the same 4-bit weight on disk. Stage 7.

Mirrors the unpacking in vllm/model_executor/layers/quantization/utils/quant_utils.py (and the
AWQ order in vllm/model_executor/layers/quantization/awq_triton.py). All three store the codes
of quant_utils.py as nibbles in int32 words, the scales as floats, and differ in three ways:

| format | codes (int32) | packs along | nibble order | zeros stored as |
|---|---|---|---|---|
| GPTQ `qweight` | [in/8, out] | input | 0..7 | [groups, out/8] packed, zero - 1 (v1) |
| AWQ `qweight` | [in, out/8] | output | 0,2,4,6,1,3,5,7 | [groups, out/8] packed |
| compressed-tensors `weight_packed` | [out, in/8] | input | 0..7 | [out/8, groups] packed |

Scales are [groups, out] in GPTQ and AWQ, [out, groups] in compressed-tensors.

Two quirks worth knowing:
- GPTQ's original ("v1") format stores every zero minus one: AutoGPTQ subtracted 1 when packing
  and every kernel (vLLM's exllama path, transformers, gptqmodel) adds it back. A symmetric
  GPTQ checkpoint therefore stores 7 (0x77777777 per word) for the zero 8. gptqmodel's newer
  `checkpoint_format: gptq_v2` stores the true zero.
- AWQ's kernels unpack eight nibbles with shifts that suit their GPU layout, so the tool packs
  output columns 0..7 of each word in the order 0,2,4,6,1,3,5,7.
- compressed-tensors quantizes to signed -8..7 and adds 8 before packing, so its nibbles are
  the same unsigned codes; a symmetric scheme has no zero-point tensor (the zero is 8).

Each `*_to_int4` turns checkpoint tensors into the canonical `Int4Weight`; each `*_from_int4`
goes back (for tests, and for the checkpoints converted from other formats). Next:
w4a16_layout.py, the one layout the kernels read.
"""

from __future__ import annotations

import torch

from vllm_mini.model_executor.layers.quantization.utils.quant_utils import (
    Int4Weight,
    pack_int4,
    unpack_int4,
)

# AWQ packs output column AWQ_PACK_ORDER[j] into nibble j of each word...
AWQ_PACK_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
# ...so column c of each group of 8 is in nibble AWQ_UNPACK_ORDER[c].
AWQ_UNPACK_ORDER = (0, 4, 1, 5, 2, 6, 3, 7)


def _trivial_g_idx(g_idx: torch.Tensor | None, in_features: int, groups: int) -> bool:
    if g_idx is None:
        return True
    return torch.equal(g_idx.long(), torch.arange(in_features) // (in_features // groups))


# ---- GPTQ -------------------------------------------------------------------------------------


def gptq_to_int4(
    qweight: torch.Tensor,
    qzeros: torch.Tensor | None,
    scales: torch.Tensor,
    g_idx: torch.Tensor | None,
    zero_offset: int = 1,
) -> Int4Weight:
    """GPTQ tensors -> canonical. `zero_offset` is 1 for v1 checkpoints, 0 for gptq_v2.

    qweight [in/8, out], qzeros [groups, out/8] (None: symmetric, zero 8), scales [groups, out],
    g_idx [in] (None or 0,0,..,1,1,..: groups are contiguous runs of columns).
    """
    q = unpack_int4(qweight, dim=0).t()  # [out, in]
    groups = scales.shape[0]
    if qzeros is None:
        zeros = torch.full((q.shape[0], groups), 8, dtype=torch.int32)
    else:
        # (stored + 1) & 15: a v1 zero of 16 would be stored as 15 and wraps the same way in
        # every GPTQ kernel; tools never produce it (zeros are clamped to 0..15 before the -1).
        zeros = ((unpack_int4(qzeros, dim=1) + zero_offset) & 0xF).t()
    keep_g_idx = not _trivial_g_idx(g_idx, q.shape[1], groups)
    return Int4Weight(q, scales.t(), zeros, g_idx.to(torch.int32) if keep_g_idx else None)


def gptq_from_int4(weight: Int4Weight, zero_offset: int = 1) -> dict[str, torch.Tensor]:
    """Canonical -> GPTQ's qweight, qzeros, scales, g_idx (v1 zeros unless zero_offset=0)."""
    in_features = weight.q.shape[1]
    return {
        "qweight": pack_int4(weight.q.t(), dim=0),
        "qzeros": pack_int4(((weight.zeros - zero_offset) & 0xF).t(), dim=1),
        "scales": weight.scales.t().contiguous(),
        "g_idx": weight.group_index().to(torch.int32)
        if weight.g_idx is not None
        else (torch.arange(in_features) // weight.group_size).to(torch.int32),
    }


# ---- AWQ --------------------------------------------------------------------------------------


def _awq_unpack(packed: torch.Tensor) -> torch.Tensor:
    values = unpack_int4(packed, dim=1)  # [rows, out] in nibble order
    rows, cols = values.shape
    order = torch.tensor(AWQ_UNPACK_ORDER)
    return values.view(rows, cols // 8, 8)[:, :, order].reshape(rows, cols)


def _awq_pack(values: torch.Tensor) -> torch.Tensor:
    rows, cols = values.shape
    order = torch.tensor(AWQ_PACK_ORDER)
    return pack_int4(values.view(rows, cols // 8, 8)[:, :, order].reshape(rows, cols), dim=1)


def awq_to_int4(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor) -> Int4Weight:
    """AWQ tensors -> canonical: qweight [in, out/8], qzeros [groups, out/8], scales
    [groups, out]. AWQ has no act-order, and stores true zeros (no v1 offset)."""
    q = _awq_unpack(qweight).t()
    zeros = _awq_unpack(qzeros).t()
    return Int4Weight(q.contiguous(), scales.t(), zeros.contiguous(), None)


def awq_from_int4(weight: Int4Weight) -> dict[str, torch.Tensor]:
    if weight.g_idx is not None:
        raise ValueError("awq: the format has no g_idx (act-order) tensor")
    return {
        "qweight": _awq_pack(weight.q.t()),
        "qzeros": _awq_pack(weight.zeros.t()),
        "scales": weight.scales.t().contiguous(),
    }


# ---- compressed-tensors pack-quantized --------------------------------------------------------


def compressed_tensors_to_int4(
    weight_packed: torch.Tensor,
    weight_scale: torch.Tensor,
    weight_zero_point: torch.Tensor | None = None,
    weight_g_idx: torch.Tensor | None = None,
) -> Int4Weight:
    """pack-quantized tensors -> canonical: weight_packed [out, in/8], weight_scale
    [out, groups], weight_zero_point [out/8, groups] (None: symmetric), weight_g_idx [in]."""
    q = unpack_int4(weight_packed, dim=1)
    groups = weight_scale.shape[1]
    if weight_zero_point is None:
        zeros = torch.full((q.shape[0], groups), 8, dtype=torch.int32)
    else:
        zeros = unpack_int4(weight_zero_point, dim=0)
    keep = not _trivial_g_idx(weight_g_idx, q.shape[1], groups)
    return Int4Weight(q, weight_scale, zeros, weight_g_idx.to(torch.int32) if keep else None)


def compressed_tensors_from_int4(
    weight: Int4Weight, symmetric: bool = True
) -> dict[str, torch.Tensor]:
    tensors = {
        "weight_packed": pack_int4(weight.q, dim=1),
        "weight_scale": weight.scales.contiguous(),
        "weight_shape": torch.tensor(list(weight.q.shape), dtype=torch.int64),
    }
    if not symmetric:
        tensors["weight_zero_point"] = pack_int4(weight.zeros, dim=0)
    if weight.g_idx is not None:
        tensors["weight_g_idx"] = weight.g_idx.to(torch.int32)
    return tensors
