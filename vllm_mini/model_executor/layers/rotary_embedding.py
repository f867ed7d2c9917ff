"""Rotary position embedding (RoPE), including Llama 3's frequency scaling.

Stage 2. Mirrors vllm/model_executor/layers/rotary_embedding/ (a package in vLLM). RoPE rotates
each pair of dimensions of q and k by an angle proportional to the token's position (RoFormer,
Su et al. 2021), so q.k depends only on the distance between tokens. We precompute cos/sin for every position once
(`cos_sin_cache`) and index it by each token's position: with continuous batching, tokens of one
batch sit at unrelated positions, so the positions tensor is an explicit input.

Pairing follows the GPT-NeoX / HF Llama layout (`rotate_half`): dimension i pairs with i + d/2.

`forward_native` is the torch reference; on CPU `forward_cpu` rotates q and k in place with one
C++ kernel (csrc/cpu/layer_kernels.cpp, the role of vLLM's csrc/cpu/pos_encoding.cpp) that reads
each token's row of the cos/sin table itself, so that path needs no lookup memo. The in-place
write lands in the qkv projection's output, whose q and k columns nothing reads unrotated.
fused_cpu_ops.py says when the kernel applies. Next: vocab_parallel_embedding.py.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from vllm_mini.model_executor.layers import fused_cpu_ops


def _default_inv_freq(rotary_dim: int, base: float) -> torch.Tensor:
    return 1.0 / (base ** (torch.arange(0, rotary_dim, 2, dtype=torch.float32) / rotary_dim))


def _llama3_inv_freq(inv_freq: torch.Tensor, scaling: dict[str, Any]) -> torch.Tensor:
    """Llama 3.1's scaling: keep high frequencies, divide low ones by `factor`, blend in between."""
    factor = scaling["factor"]
    low_freq_factor = scaling.get("low_freq_factor", 1.0)
    high_freq_factor = scaling.get("high_freq_factor", 4.0)
    old_context_len = scaling.get("original_max_position_embeddings", 8192)
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    smooth = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    blended = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    return torch.where(
        wavelen < high_freq_wavelen,
        inv_freq,
        torch.where(wavelen > low_freq_wavelen, inv_freq / factor, blended),
    )


class RotaryEmbedding(nn.Module):
    def __init__(
        self,
        head_size: int,
        rotary_dim: int,
        max_position_embeddings: int,
        base: float,
        rope_scaling: dict[str, Any] | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        self.head_size = head_size
        self.rotary_dim = rotary_dim
        inv_freq = _default_inv_freq(rotary_dim, base)
        max_pos = max_position_embeddings
        rope_type = (rope_scaling or {}).get("rope_type", (rope_scaling or {}).get("type"))
        if rope_type == "llama3":
            inv_freq = _llama3_inv_freq(inv_freq, rope_scaling)
        elif rope_type == "linear":
            # Position interpolation: positions are squeezed by `factor`.
            inv_freq = inv_freq / rope_scaling["factor"]
        elif rope_type not in (None, "default"):
            raise ValueError(
                f"rope_scaling type {rope_type!r} is not supported; supported: default, linear, llama3"
            )
        t = torch.arange(max_pos, dtype=torch.float32)
        freqs = torch.outer(t, inv_freq)  # [max_pos, rotary_dim / 2]
        cache = torch.cat([freqs.cos(), freqs.sin()], dim=-1).to(dtype)
        self.register_buffer("cos_sin_cache", cache, persistent=False)  # [max_pos, rotary_dim]
        self._cached_positions: torch.Tensor | None = None
        self._cached_cos_sin: tuple[torch.Tensor, torch.Tensor] | None = None

    def _cos_sin(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Every layer sees the same positions tensor in one forward pass: look it up once. The
        # memo is keyed by that tensor object, so each forward pass must get a new one (the
        # runner's steps and the CUDA-graph runner's views are). Inference tensors carry no
        # version counter to notice an in-place refill; and a CUDA-graph capture that hit a memo
        # from its warm-up would leave the lookup out of the graph and freeze those positions.
        # Under torch.compile the memo would be module state the graph guards on (a recompile per
        # step); the compiler removes the repeated lookups itself (common subexpressions).
        if torch.compiler.is_compiling():
            return self.cos_sin_cache[positions].unsqueeze(1).chunk(2, dim=-1)
        if positions is not self._cached_positions:
            cos, sin = self.cos_sin_cache[positions].unsqueeze(1).chunk(2, dim=-1)
            self._cached_positions, self._cached_cos_sin = positions, (cos, sin)
        return self._cached_cos_sin

    def forward(
        self,
        positions: torch.Tensor,
        query: torch.Tensor,
        key: torch.Tensor,
        inplace: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotated (query, key). `inplace=True` lets the CPU kernel rotate the caller's tensors
        themselves (the model passes views of its fresh qkv output, which nothing else reads);
        by default the inputs are left untouched, as forward_native leaves them."""
        if (
            fused_cpu_ops.fused_ops_apply(query)
            and key.dtype == query.dtype == self.cos_sin_cache.dtype
            and query.dim() == 2
            and key.dim() == 2
            and positions.dim() == 1
            and positions.is_contiguous()
        ):
            return self.forward_cpu(positions, query, key, inplace)
        return self.forward_native(positions, query, key)

    def forward_cpu(
        self,
        positions: torch.Tensor,
        query: torch.Tensor,
        key: torch.Tensor,
        inplace: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The kernel rotates in place (as vLLM's rotary op does), so unless the caller allows
        that, it works on copies: a caller (a lesson comparing its own rope with this layer, say)
        may still read its inputs after. The model allows it and saves two copies per layer."""
        if not inplace:
            query, key = query.clone(), key.clone()
        return fused_cpu_ops.rotary_embedding(
            positions, query, key, self.head_size, self.cos_sin_cache, is_neox=True
        )

    def forward_native(
        self, positions: torch.Tensor, query: torch.Tensor, key: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The torch reference: returns new tensors, leaves query and key untouched."""
        # positions: [num_tokens]; query: [num_tokens, num_heads * head_size]; key likewise.
        # The count is read off `query`, not `positions`: under torch.compile the two inputs have
        # separate symbolic sizes, and mixing them makes every layer's shapes a longer formula
        # (tracing SmolLM2's 30 layers then took minutes of symbolic algebra).
        num_tokens = query.shape[0]
        cos, sin = self._cos_sin(positions)  # each [num_tokens, 1, rotary_dim / 2]
        # Rotate q and k heads together: one set of ops instead of two.
        qk = torch.cat([query, key], dim=-1).view(num_tokens, -1, self.head_size)
        rot, passthrough = qk[..., : self.rotary_dim], qk[..., self.rotary_dim :]
        x1, x2 = rot.chunk(2, dim=-1)
        rotated = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
        if passthrough.numel():
            rotated = torch.cat([rotated, passthrough], dim=-1)
        rotated = rotated.view(num_tokens, -1)
        return rotated[:, : query.shape[-1]], rotated[:, query.shape[-1] :]


_ROPE_CACHE: dict[tuple, RotaryEmbedding] = {}


def get_rope(
    head_size: int,
    rotary_dim: int,
    max_position: int,
    base: float,
    rope_scaling: dict[str, Any] | None = None,
    dtype: torch.dtype | None = None,
) -> RotaryEmbedding:
    """Layers with identical settings share one instance (vLLM caches them the same way), so the
    cos/sin table exists once and each step's lookup is done once for all layers."""
    dtype = dtype or torch.get_default_dtype()
    device = torch.empty(0).device  # the device of the surrounding `with torch.device(...)`
    scaling_key = tuple(sorted((rope_scaling or {}).items()))
    key = (head_size, rotary_dim, max_position, base, scaling_key, dtype, device)
    if key not in _ROPE_CACHE:
        _ROPE_CACHE[key] = RotaryEmbedding(
            head_size, rotary_dim, max_position, base, rope_scaling, dtype
        )
    return _ROPE_CACHE[key]
