"""Attention backend selector: backend name -> implementation class.

Stage 4. Mirrors vllm/attention/selector.py, where the platform and the model decide which backend
every layer uses. Here the name comes from AttentionConfig (the platform fills it when unset).
"""

from __future__ import annotations

from vllm_mini.attention.backends.abstract import AttentionImpl


def get_attn_impl(
    backend: str, num_heads: int, head_size: int, scale: float, num_kv_heads: int
) -> AttentionImpl:
    if backend == "naive":
        from vllm_mini.attention.backends.naive import NaiveAttentionImpl

        return NaiveAttentionImpl(num_heads, head_size, scale, num_kv_heads)
    from vllm_mini.attention.backends.paged import PagedAttentionImpl

    return PagedAttentionImpl(num_heads, head_size, scale, num_kv_heads, ops_name=backend)
