"""Lesson 03: your GQA attention against the engine's naive reference and torch's SDPA."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lessons._impl import load_impl
from vllm_mini.attention.backends.naive import naive_attention

impl = load_impl(__file__)


@pytest.mark.parametrize(
    ("q_len", "kv_len", "heads", "kv_heads"), [(1, 9, 4, 4), (5, 5, 6, 2), (3, 12, 8, 1)]
)
def test_matches_naive_and_sdpa(q_len, kv_len, heads, kv_heads):
    g = torch.Generator().manual_seed(q_len + kv_len)
    q = torch.randn(q_len, heads, 32, generator=g)
    k = torch.randn(kv_len, kv_heads, 32, generator=g)
    v = torch.randn(kv_len, kv_heads, 32, generator=g)
    got = impl.gqa_causal_attention(q, k, v, 0.2)
    torch.testing.assert_close(got, naive_attention(q, k, v, 0.2))
    mask = torch.arange(kv_len).unsqueeze(0) <= torch.arange(kv_len - q_len, kv_len).unsqueeze(1)
    sdpa = F.scaled_dot_product_attention(
        q.transpose(0, 1),
        k.transpose(0, 1),
        v.transpose(0, 1),
        attn_mask=mask,
        scale=0.2,
        enable_gqa=True,
    ).transpose(0, 1)
    torch.testing.assert_close(got, sdpa, atol=1e-5, rtol=1e-5)
