"""Lesson 00: stepping LLMEngine by hand gives exactly what LLM.generate gives."""

from __future__ import annotations

import re

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


# ----------------------------------------------------------------------------- the demo

demo = load_impl(__file__, "demo")


def _printed_stats(printed: str) -> dict[str, float]:
    stats = printed.rsplit("engine stats: ", 1)[1]
    return {k: float(v) for k, v in re.findall(r"'(\w+)': ([\d.e+-]+)", stats)}


@pytest.mark.demo
def test_demo_prints_answers_and_stats_that_agree(tiny_llama_dir, capsys):
    outputs = demo.main(str(tiny_llama_dir), max_tokens=6)
    printed = capsys.readouterr().out
    assert "attention backend:" in printed and "block size: 16" in printed
    assert "shared by the engine, the core, the worker, the runner: True" in printed
    assert "vllm_mini.core.block_pool" in printed and "LlamaForCausalLM" in printed
    assert len(outputs) == len(demo.PROMPTS)
    lengths = [len(o.outputs[0].token_ids) for o in outputs]
    assert all(1 <= n <= 6 for n in lengths)
    assert all(o.finished and o.outputs[0].finish_reason in ("stop", "length") for o in outputs)
    assert f"\n{sum(lengths)} tokens in " in printed
    stats = _printed_stats(printed)
    assert stats["num_generation_tokens"] == sum(lengths)
    assert stats["num_finished_requests"] == len(demo.PROMPTS)
    assert stats["num_prompt_tokens"] == sum(len(o.prompt_token_ids) for o in outputs)
    assert stats["num_running_reqs"] == stats["num_waiting_reqs"] == stats["kv_cache_usage"] == 0
    assert 0 < stats["mean_ttft_s"] <= stats["mean_e2e_s"]
