"""Attention layer: what a model calls; the backend behind it does the work.

Stage 3. Mirrors vllm/model_executor/layers/attention/attention.py. A model builds
`Attention(num_heads, head_size, scale, num_kv_heads, prefix=...)` and calls it with q, k, v for
all tokens of the step, flattened across requests. The layer fetches this step's metadata from the
forward context and the KV cache the model runner bound to it (`self.kv_cache`), so the model
itself never sees either.
Next: backends/naive.py.
"""

from __future__ import annotations

import torch
from torch import nn

from vllm_mini.attention.selector import get_attn_impl
from vllm_mini.config import get_current_vllm_config
from vllm_mini.forward_context import get_forward_context


class Attention(nn.Module):
    def __init__(
        self,
        num_heads: int,
        head_size: int,
        scale: float,
        num_kv_heads: int | None = None,
        prefix: str = "",
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_size = head_size
        self.num_kv_heads = num_kv_heads or num_heads
        self.layer_name = prefix
        backend = get_current_vllm_config().attention_config.backend or "naive"
        self.impl = get_attn_impl(backend, num_heads, head_size, scale, self.num_kv_heads)
        # Bound by the model runner once the KV cache is allocated (paged backends only).
        self.kv_cache: torch.Tensor | None = None

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        # q: [num_tokens, num_heads * head_size]; k, v: [num_tokens, num_kv_heads * head_size]
        attn_metadata = get_forward_context().attn_metadata
        q = q.view(-1, self.num_heads, self.head_size)
        k = k.view(-1, self.num_kv_heads, self.head_size)
        v = v.view(-1, self.num_kv_heads, self.head_size)
        out = self.impl.forward(q, k, v, self.kv_cache, attn_metadata)
        return out.reshape(-1, self.num_heads * self.head_size)
