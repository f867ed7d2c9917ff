"""Lesson 00: stepping LLMEngine by hand gives exactly what LLM.generate gives."""

from __future__ import annotations

import pytest

from lessons._impl import load_impl
from vllm_mini import LLM, SamplingParams

impl = load_impl(__file__)


@pytest.mark.parametrize(
    ("prompts", "params"),
    [
        (
            [{"prompt_token_ids": [5 + i, 17, 23, 40 + i]} for i in range(5)],
            SamplingParams(temperature=0, max_tokens=8, ignore_eos=True),
        ),
        (
            # Text prompts go through the tokenizer; seeded sampling with 60 stop tokens gives
            # outputs of different lengths (12, 7, 2, 2), so requests finish in different steps.
            ["w5 w9 w11", "w300 w7", "w42 w43 w44 w45 w46", "w3"],
            SamplingParams(
                temperature=1.0, seed=3, max_tokens=12, stop_token_ids=list(range(100, 160))
            ),
        ),
    ],
    ids=["greedy-token-ids", "sampled-text"],
)
def test_manual_engine_loop_matches_llm_generate(tiny_llama_dir, prompts, params):
    llm = LLM(str(tiny_llama_dir), kv_cache_memory_bytes=1 << 22)
    expected = [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]
    assert impl.generate_with_engine(llm.llm_engine, prompts, params) == expected
