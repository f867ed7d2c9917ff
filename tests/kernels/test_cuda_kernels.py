"""CUDA kernels (v1, v2 and reshape_and_cache) equal the naive reference; GPU only."""

from __future__ import annotations

import pytest
import torch

from tests.kernels.test_paged_attention import _case
from vllm_mini.attention.backends.naive import naive_attention

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("ctx", [[5, 100, 300], [9000, 20]])  # the second case takes the v2 path
def test_cuda_decode_matches_naive(dtype, ctx):
    from vllm_mini.attention.ops import cuda_paged_attn

    q_lens = [1] * len(ctx)
    query, kc, vc, bt, sl, qsl, k_all, v_all = _case(16, 64, 2, 4, dtype, q_lens, ctx)
    out = cuda_paged_attn.paged_attention(
        query.cuda(),
        kc.cuda(),
        vc.cuda(),
        bt.cuda(),
        sl.cuda(),
        qsl.cuda(),
        1,
        int(sl.max()),
        0.125,
    ).cpu()
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    for i in range(len(ctx)):
        ref = naive_attention(query[i : i + 1], k_all[i], v_all[i], 0.125)
        torch.testing.assert_close(out[i : i + 1].float(), ref.float(), atol=tol, rtol=tol)


def test_cuda_reshape_and_cache():
    from vllm_mini.attention.ops import cuda_paged_attn

    kc = torch.zeros(4, 8, 2, 64, device="cuda")
    vc = torch.zeros_like(kc)
    key, value = torch.randn(3, 2, 64, device="cuda"), torch.randn(3, 2, 64, device="cuda")
    slots = torch.tensor([5, -1, 20], device="cuda")
    cuda_paged_attn.reshape_and_cache(key, value, kc, vc, slots)
    assert torch.equal(kc.view(-1, 2, 64)[5], key[0]) and torch.equal(
        vc.view(-1, 2, 64)[20], value[2]
    )
