"""Lesson 00: stepping LLMEngine by hand gives exactly what LLM.generate gives."""

from __future__ import annotations

from lessons._impl import load_impl
from vllm_mini import LLM, SamplingParams

impl = load_impl(__file__)


def test_manual_engine_loop_matches_llm_generate(tiny_llama_dir):
    prompts = [{"prompt_token_ids": [5 + i, 17, 23, 40 + i]} for i in range(5)]
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    llm = LLM(str(tiny_llama_dir), kv_cache_memory_bytes=1 << 22)
    expected = [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]
    assert impl.generate_with_engine(llm.llm_engine, prompts, params) == expected
