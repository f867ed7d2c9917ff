"""KV integrity: every request reads only KV slots that hold its own prefix.

The scenario tests replay schedules that once handed a request someone else's (or no one's) KV;
the stress tests run mixed workloads — shared prefixes, preemption, chunked prefill, n > 1, both
scheduling policies — under tests/kv_checker.py, which checks every read of every step.
"""

from __future__ import annotations

import random

import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.kv_checker import KVReadChecker
from vllm_mini import LLM, SamplingParams
from vllm_mini.engine.llm_engine import LLMEngine


def _greedy(max_tokens: int) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)


def _hf_greedy(model_dir, prompt: list[int], max_tokens: int) -> list[int]:
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = hf.generate(
            ids, max_new_tokens=max_tokens, do_sample=False, eos_token_id=None, pad_token_id=0
        )
    return out[0, len(prompt) :].tolist()


def _run_until_done(engine: LLMEngine, arrivals: dict[int, list[tuple]]) -> dict[str, list[int]]:
    """Step the engine; at step s add the requests arrivals[s] = [(id, prompt, params, prio)]."""
    outputs: dict[str, list[int]] = {}
    step = 0
    while arrivals or engine.has_unfinished_requests():
        for rid, prompt, params, priority in arrivals.pop(step, []):
            engine.add_request(rid, {"prompt_token_ids": prompt}, params, priority=priority)
        for out in engine.step():
            if out.finished:
                outputs[out.request_id] = out.outputs[0].token_ids
        step += 1
    return outputs


def test_request_preempted_in_its_own_step_leaves_no_stale_prefix_hit(tiny_llama_dir):
    """Priority policy, block_size 4, 10 blocks, token budget 20 (the audit's setting).

    Step 6: A (lowest priority) is scheduled to decode position 7, which completes its block 1,
    so block 1 gets its hash; then R1 cannot grow, A is preempted and then R1 itself. Block 1's
    KV was never written. In step 7 a higher-priority request C whose prompt starts with A's
    first 8 tokens arrives: were block 1 still findable, C would take it as a prefix-cache hit and
    attend to an empty slot.
    """
    a_prompt = [11, 12, 13, 14]
    a_first_outputs = _hf_greedy(tiny_llama_dir, a_prompt, 4)
    c_prompt = a_prompt + a_first_outputs + [300, 301, 302]
    llm = LLM(
        str(tiny_llama_dir),
        block_size=4,
        num_gpu_blocks_override=10,
        max_num_batched_tokens=20,
        scheduling_policy="priority",
    )
    engine = llm.llm_engine
    arrivals = {
        2: [("A", a_prompt, _greedy(33), 2)],
        5: [
            ("R1", list(range(100, 123)), _greedy(8), 1),
            ("R2", list(range(200, 216)), _greedy(16), 0),
        ],
        7: [("C", c_prompt, _greedy(6), 0)],
    }
    with KVReadChecker(engine) as checker:
        outputs = _run_until_done(engine, arrivals)
    assert engine.get_stats()["num_preemptions"] >= 2, "the scenario needs both preemptions"
    assert checker.steps > 10
    assert outputs["C"] == _hf_greedy(tiny_llama_dir, c_prompt, 6)
    assert outputs["A"] == _hf_greedy(tiny_llama_dir, a_prompt, 33)


def _random_workload(seed: int, n: int, vocab: int = 384) -> list[tuple]:
    """Requests that share prefixes (system-prompt style) and arrive over several steps."""
    rng = random.Random(seed)
    stems = [[rng.randrange(3, vocab) for _ in range(rng.randint(4, 12))] for _ in range(3)]
    workload = []
    for i in range(n):
        prompt = rng.choice(stems) + [rng.randrange(3, vocab) for _ in range(rng.randint(1, 14))]
        params = SamplingParams(
            temperature=0.0 if i % 3 else 0.8,
            seed=i,
            n=2 if i % 5 == 0 else 1,
            max_tokens=rng.randint(2, 14),
            ignore_eos=True,
        )
        workload.append((rng.randint(0, 12), f"r{i}", prompt, params, rng.randint(0, 2)))
    return workload


@pytest.mark.parametrize("policy", ["fcfs", "priority"])
@pytest.mark.parametrize("seed", [0, 1])
def test_stress_every_read_is_the_requests_own_prefix(tiny_llama_dir, policy, seed):
    # 12 blocks of 4 tokens for up to 24 requests: preemption, chunking and prefix hits all happen.
    llm = LLM(
        str(tiny_llama_dir),
        block_size=4,
        num_gpu_blocks_override=12,
        max_num_batched_tokens=16,
        scheduling_policy=policy,
    )
    engine = llm.llm_engine
    arrivals: dict[int, list[tuple]] = {}
    for step, rid, prompt, params, priority in _random_workload(seed, 24):
        arrivals.setdefault(step, []).append((rid, prompt, params, priority))
    with KVReadChecker(engine) as checker:
        _run_until_done(engine, arrivals)
    stats = engine.get_stats()
    assert stats["num_preemptions"] > 0 and stats["prefix_cache_hits"] > 0
    assert checker.steps > 20
    assert stats["kv_cache_usage"] == 0.0 and not engine.has_unfinished_requests()
