"""Triton kernels equal the naive reference.

Without a GPU they run in Triton's interpreter: tests/conftest.py sets TRITON_INTERPRET=1 before
anything imports triton. Shapes are small: the interpreter executes every program in numpy.
"""

from __future__ import annotations

import pytest
import torch

from tests.kernels.test_paged_attention import TOL, _case
from vllm_mini.attention.backends.naive import naive_attention
from vllm_mini.attention.ops import triton_paged_attn


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    ("block_size", "head_size", "kv_heads", "group"),
    [(8, 64, 1, 3), (16, 128, 2, 1), (32, 64, 1, 8)],
)
def test_triton_paged_attention_matches_naive(dtype, block_size, head_size, kv_heads, group):
    q_lens, ctx = [1, 5, 1], [19, 0, 40]
    query, kc, vc, bt, sl, qsl, k_all, v_all = _case(
        block_size, head_size, kv_heads, group, dtype, q_lens, ctx, seed=7
    )
    out = triton_paged_attn.paged_attention(
        query, kc, vc, bt, sl, qsl, max(q_lens), int(sl.max()), 0.1
    )
    for i in range(3):
        lo, hi = int(qsl[i]), int(qsl[i + 1])
        ref = naive_attention(query[lo:hi], k_all[i], v_all[i], 0.1)
        torch.testing.assert_close(
            out[lo:hi].float(), ref.float(), atol=TOL[dtype], rtol=TOL[dtype]
        )


def test_triton_reshape_and_cache():
    kc = torch.zeros(4, 8, 2, 64)
    vc = torch.zeros_like(kc)
    key, value = torch.randn(3, 2, 64), torch.randn(3, 2, 64)
    triton_paged_attn.reshape_and_cache(key, value, kc, vc, torch.tensor([5, -1, 20]))
    assert torch.equal(kc.view(-1, 2, 64)[5], key[0]) and torch.equal(
        vc.view(-1, 2, 64)[20], value[2]
    )
    assert kc.view(-1, 2, 64)[[i for i in range(32) if i not in (5, 20)]].abs().sum() == 0
