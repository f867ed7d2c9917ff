"""Shrink and expand for a batch whose tokens use different adapters: the torch reference.

Stage 9. Mirrors vllm/lora/ops/torch_ops/lora_ops.py (Punica's BGMV and SGMV, Chen et al. 2023,
"Punica: Multi-Tenant LoRA Serving"). A LoRA layer adds x @ A^T @ B^T to the base layer's output,
with A [rank, in] and B [out, rank] different per adapter. In a batch of many adapters, every
token t carries the *slot* of its adapter, `indices[t]` (-1: no adapter), and each layer keeps
all active adapters stacked: A_stacked [num_slots, max_rank, in], B_stacked [num_slots, out,
max_rank] (ranks below max_rank are zero-padded, which adds nothing). Then
    shrink:  buf[t] = A_stacked[indices[t]] @ x[t]            [T, max_rank]
    expand:  y[t, off:off+n] += B_stacked[indices[t]] @ buf[t]  a slice of the fused output
Batched Gather Matrix-Vector (BGMV) is exactly this, one small matrix-vector product per token;
SGMV (Segmented Gather) does the same for runs of tokens that share an adapter (a prefill), so
one matrix-matrix product serves the whole segment. The result is the same; the kernels differ
in how they read A and B. Here: gather each token's matrices and use one batched matmul.
The alpha / rank scaling is folded into B when an adapter is loaded, so no op takes a scale.
Next: triton_ops.py, then lora/punica_wrapper.py.
"""

from __future__ import annotations

import torch


def _gather(stacked: torch.Tensor, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each token's matrix (slot 0 stands in for -1, and its rows are masked afterwards)."""
    valid = indices >= 0
    return stacked[indices.clamp(min=0)], valid


def bgmv_shrink(
    x: torch.Tensor, lora_a: torch.Tensor, output: torch.Tensor, indices: torch.Tensor
) -> None:
    """output[t] = lora_a[indices[t]] @ x[t]; 0 for tokens without an adapter.

    x [T, in], lora_a [S, R, in], output [T, R] float32 (written, not added), indices [T] int64.
    """
    a, valid = _gather(lora_a, indices)  # [T, R, in]
    out = torch.bmm(a.float(), x.float().unsqueeze(-1)).squeeze(-1)  # [T, R]
    output.copy_(out * valid.unsqueeze(-1))


def bgmv_expand_slice(
    buf: torch.Tensor,
    lora_b: torch.Tensor,
    output: torch.Tensor,
    indices: torch.Tensor,
    slice_offset: int,
) -> None:
    """output[t, off:off + n] += lora_b[indices[t]] @ buf[t]; nothing for tokens without one.

    buf [T, R] float32, lora_b [S, n, R], output [T, total] (n columns from slice_offset).
    """
    b, valid = _gather(lora_b, indices)  # [T, n, R]
    delta = torch.bmm(b.float(), buf.float().unsqueeze(-1)).squeeze(-1)  # [T, n]
    n = lora_b.shape[1]
    view = output[:, slice_offset : slice_offset + n]
    view += (delta * valid.unsqueeze(-1)).to(output.dtype)


def sgmv_shrink(
    x: torch.Tensor,
    lora_a: torch.Tensor,
    output: torch.Tensor,
    seg_starts: list[int],
    seg_lens: list[int],
    seg_slots: list[int],
) -> None:
    """bgmv_shrink for segments of consecutive tokens that share one adapter slot (-1: none)."""
    for start, n, slot in zip(seg_starts, seg_lens, seg_slots):
        rows = output[start : start + n]
        if slot < 0:
            rows.zero_()
        else:
            rows.copy_(x[start : start + n].float() @ lora_a[slot].float().T)


def sgmv_expand_slice(
    buf: torch.Tensor,
    lora_b: torch.Tensor,
    output: torch.Tensor,
    seg_starts: list[int],
    seg_lens: list[int],
    seg_slots: list[int],
    slice_offset: int,
) -> None:
    """bgmv_expand_slice for segments: one [n, R] @ [R, out] product per segment."""
    width = lora_b.shape[1]
    for start, n, slot in zip(seg_starts, seg_lens, seg_slots):
        if slot >= 0:
            delta = buf[start : start + n].float() @ lora_b[slot].float().T
            output[start : start + n, slice_offset : slice_offset + width] += delta.to(output.dtype)
