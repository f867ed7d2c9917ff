"""Reference solution for lesson 03."""

from __future__ import annotations

import torch


def gqa_causal_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float
) -> torch.Tensor:
    """q [q_len, H, D] are the last q_len of kv_len positions; k, v [kv_len, H_kv, D]."""
    group = q.shape[1] // k.shape[1]
    k = k.float().repeat_interleave(group, dim=1)
    v = v.float().repeat_interleave(group, dim=1)
    scores = torch.einsum("qhd,khd->hqk", q.float(), k) * scale
    q_len, kv_len = q.shape[0], k.shape[0]
    q_pos = torch.arange(kv_len - q_len, kv_len).unsqueeze(1)
    scores = scores.masked_fill(torch.arange(kv_len).unsqueeze(0) > q_pos, float("-inf"))
    return torch.einsum("hqk,khd->qhd", scores.softmax(dim=-1), v).to(q.dtype)
