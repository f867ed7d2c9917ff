"""Reference solutions for lesson 02 (look after trying)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vllm_mini.config import VllmConfig
from vllm_mini.model_executor.layers.layernorm import RMSNorm
from vllm_mini.model_executor.models.llama import LlamaForCausalLM


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """x / sqrt(mean(x^2) + eps) * weight, statistics in float32; optionally add residual first."""
    if residual is not None:
        x = x + residual
        return rms_norm(x, weight, eps), x
    xf = x.float()
    return weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def _llama3_scale(inv_freq: torch.Tensor, scaling: dict[str, Any]) -> torch.Tensor:
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    old_len = scaling["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    s = (old_len / wavelen - low) / (high - low)
    blended = (1 - s) * inv_freq / factor + s * inv_freq
    scaled = torch.where(wavelen > old_len / low, inv_freq / factor, blended)
    return torch.where(wavelen < old_len / high, inv_freq, scaled)


def apply_rope(
    positions: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    head_size: int,
    base: float,
    rope_scaling: dict[str, Any] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """NeoX/HF-style RoPE: dimension i rotates with i + head_size/2 by angle pos * inv_freq[i]."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_size, 2, dtype=torch.float32) / head_size))
    if rope_scaling is not None and rope_scaling.get("rope_type") == "llama3":
        inv_freq = _llama3_scale(inv_freq, rope_scaling)
    angles = positions.float().unsqueeze(1) * inv_freq  # [T, D/2]
    cos, sin = angles.cos().unsqueeze(1), angles.sin().unsqueeze(1)  # [T, 1, D/2]

    def rotate(x: torch.Tensor) -> torch.Tensor:
        x = x.view(x.shape[0], -1, head_size)  # [T, heads, D]
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).flatten(1)

    return rotate(q), rotate(k)


_PACKED = [
    (".qkv_proj", ".q_proj", "q"),
    (".qkv_proj", ".k_proj", "k"),
    (".qkv_proj", ".v_proj", "v"),
    (".gate_up_proj", ".gate_proj", 0),
    (".gate_up_proj", ".up_proj", 1),
]


def map_weight_name(hf_name: str) -> tuple[str, str | int | None]:
    """HF checkpoint name -> (our parameter name, shard id) for Llama's packed layers."""
    for packed, ckpt, shard in _PACKED:
        if ckpt in hf_name:
            return hf_name.replace(ckpt, packed), shard
    return hf_name, None


def dequantize_q4_1(blocks: np.ndarray) -> torch.Tensor:
    """uint8 [n, 20] Q4_1 blocks -> float32 [n * 32]: weight = d * q + m per block."""
    d = blocks[:, 0:2].copy().view(np.float16).astype(np.float32)  # [n, 1]
    m = blocks[:, 2:4].copy().view(np.float16).astype(np.float32)  # [n, 1]
    qs = blocks[:, 4:20]  # [n, 16]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.float32)  # [n, 32]
    return torch.from_numpy(d * q + m).flatten()


# ---- FAQ "how to add a model": Gemma ----------------------------------------------------------


class GemmaRMSNorm(RMSNorm):
    """Gemma's RMSNorm: scale by (1 + weight), in float32, then cast (Llama casts first)."""

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if residual is not None:
            x = x + residual
            return self.forward(x), x
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return (xf * (1.0 + self.weight.float())).to(x.dtype)


class GeluTanhAndMul(nn.Module):
    """[.., 2 * d] packed gate_up -> gelu_tanh(gate) * up [.., d]: Gemma's GeGLU MLP."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = x.shape[-1] // 2
        return F.gelu(x[..., :d], approximate="tanh") * x[..., d:]


class GemmaForCausalLM(LlamaForCausalLM):
    """Gemma as Llama with its three differences swapped in. The parameter names stay Llama's,
    which are also Gemma's checkpoint names, so LlamaForCausalLM.load_weights (packed q/k/v and
    gate/up, tied lm_head) loads it unchanged."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        config = self.config
        gelu = GeluTanhAndMul()
        for layer in self.model.layers:
            layer.mlp.act_fn = gelu
            layer.input_layernorm = GemmaRMSNorm(config.hidden_size, config.rms_norm_eps)
            layer.post_attention_layernorm = GemmaRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.model.norm = GemmaRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.embed_scale = config.hidden_size**0.5

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        # LlamaModel.forward, with the embeddings scaled first (by a factor rounded to the
        # activations' dtype, as HF does: in bf16 the rounding is part of the model).
        hidden_states = self.model.embed_tokens(input_ids)
        hidden_states = hidden_states * torch.tensor(self.embed_scale, dtype=hidden_states.dtype)
        residual = None
        for layer in self.model.layers:
            hidden_states, residual = layer(positions, hidden_states, residual)
        hidden_states, _ = self.model.norm(hidden_states, residual)
        return hidden_states
