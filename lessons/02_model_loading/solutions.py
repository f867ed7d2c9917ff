"""Reference solutions for lesson 02."""

from __future__ import annotations

import torch


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x / sqrt(mean(x^2) + eps) * weight, statistics in float32."""
    xf = x.float()
    return weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def apply_rope(
    positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, head_size: int, base: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """NeoX/HF-style RoPE: dimension i rotates with i + head_size/2 by angle pos * base^(-2i/d)."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_size, 2, dtype=torch.float32) / head_size))
    angles = positions.float().unsqueeze(1) * inv_freq  # [T, d/2]
    cos, sin = angles.cos().unsqueeze(1), angles.sin().unsqueeze(1)  # [T, 1, d/2]

    def rotate(x: torch.Tensor) -> torch.Tensor:
        x = x.view(x.shape[0], -1, head_size)
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).flatten(1)

    return rotate(q), rotate(k)


def map_weight_name(hf_name: str) -> tuple[str, str | int | None]:
    """HF checkpoint name -> (our parameter name, shard id) for Llama's packed layers."""
    for packed, ckpt, shard in [
        (".qkv_proj", ".q_proj", "q"),
        (".qkv_proj", ".k_proj", "k"),
        (".qkv_proj", ".v_proj", "v"),
        (".gate_up_proj", ".gate_proj", 0),
        (".gate_up_proj", ".up_proj", 1),
    ]:
        if ckpt in hf_name:
            return hf_name.replace(ckpt, packed), shard
    return hf_name, None
