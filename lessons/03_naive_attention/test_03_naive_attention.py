"""Lesson 03: your GQA attention against the engine's naive reference, torch's SDPA, and inside
the engine itself (plugged into the naive backend, it must give the paged backend's tokens)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lessons._impl import load_impl
from vllm_mini import LLM, SamplingParams
from vllm_mini.attention.backends import naive
from vllm_mini.attention.backends.naive import naive_attention

impl = load_impl(__file__)


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    q_len, kv_len = q.shape[0], k.shape[0]
    mask = torch.arange(kv_len).unsqueeze(0) <= torch.arange(kv_len - q_len, kv_len).unsqueeze(1)
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1),
        k.transpose(0, 1),
        v.transpose(0, 1),
        attn_mask=mask,
        scale=scale,
        enable_gqa=True,
    )
    return out.transpose(0, 1)


@pytest.mark.parametrize(
    ("q_len", "kv_len", "heads", "kv_heads"),
    [(1, 9, 4, 4), (5, 5, 6, 2), (3, 12, 8, 1), (4, 20, 9, 3)],
    ids=["decode-MHA", "prefill-GQA", "chunk-MQA", "chunk-smollm2-heads"],
)
def test_matches_naive_and_sdpa(q_len, kv_len, heads, kv_heads):
    g = torch.Generator().manual_seed(q_len + kv_len)
    q = torch.randn(q_len, heads, 32, generator=g)
    k = torch.randn(kv_len, kv_heads, 32, generator=g)
    v = torch.randn(kv_len, kv_heads, 32, generator=g)
    got = impl.gqa_causal_attention(q, k, v, 0.2)
    assert got.shape == q.shape
    torch.testing.assert_close(got, naive_attention(q, k, v, 0.2))
    torch.testing.assert_close(got, _sdpa(q, k, v, 0.2), atol=1e-5, rtol=1e-5)


def test_keeps_the_query_dtype():
    q, k, v = (torch.randn(3, 4, 16, dtype=torch.bfloat16) for _ in range(3))
    got = impl.gqa_causal_attention(q, k[:, :2], v[:, :2], 0.25)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got, naive_attention(q, k[:, :2], v[:, :2], 0.25))


def test_drives_the_engine_like_the_paged_backend(tiny_llama_dir, monkeypatch):
    prompts = [{"prompt_token_ids": [7 + i, 30, 31, 90 + i, 5]} for i in range(3)]
    params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    paged = LLM(str(tiny_llama_dir), kv_cache_memory_bytes=1 << 22)
    expected = [o.outputs[0].token_ids for o in paged.generate(prompts, params, use_tqdm=False)]
    monkeypatch.setattr(naive, "naive_attention", impl.gqa_causal_attention)
    mine = LLM(str(tiny_llama_dir), attention_backend="naive")
    got = [o.outputs[0].token_ids for o in mine.generate(prompts, params, use_tqdm=False)]
    assert got == expected


# ----------------------------------------------------------------------------- the demo

demo = load_impl(__file__, "demo")


@pytest.mark.demo
def test_demo_same_tokens_per_request_caches_and_the_waste(tiny_llama_dir, capsys):
    found = demo.main(tiny_llama_dir)
    printed = capsys.readouterr().out
    assert found["same_tokens"] and "naive and the paged backend: True" in printed
    # Each finished request's cache holds prompt + output - 1 tokens (the last sample never ran).
    assert found["used"] == [n + found["max_tokens"] - 1 for n in found["prompt_lengths"]]
    assert len(found["held_after"]) == 1  # the four were dropped one step after they finished
    bs = demo.BLOCK_SIZE
    assert found["paged"] == sum(-(-n // bs) * bs for n in found["used"])
    assert sum(found["used"]) <= found["paged"] < sum(found["used"]) + len(found["used"]) * bs
    assert found["contiguous"] == 256 * len(found["used"])  # the tiny model's max_model_len
