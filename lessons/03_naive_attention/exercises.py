"""Lesson 03 exercise: grouped-query causal attention for the last q_len of kv_len positions.

LESSON_IMPL=exercises .venv/bin/pytest lessons/03_naive_attention
"""

from __future__ import annotations

import torch


def gqa_causal_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float
) -> torch.Tensor:
    """q: [q_len, H, D]; k, v: [kv_len, H_kv, D] with H a multiple of H_kv. Query i sits at
    position kv_len - q_len + i and may attend to keys 0..that position. Return [q_len, H, D]."""
    raise NotImplementedError(
        "gqa_causal_attention: softmax(q k^T * scale) v with a causal mask that sees the query's "
        "position, each KV head shared by H / H_kv query heads. naive_attention is the engine's "
        "version (vllm_mini/attention/backends/naive.py); in vLLM every backend of "
        "vllm/v1/attention/backends/ computes it (flash_attn.py, cpu_attn.py)"
    )
