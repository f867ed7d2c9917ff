"""Regressions for the bugs an adversarial audit found in the engine core (issue 11).

Each test failed before its fix: request-id collisions with n > 1 children, logprobs that depended
on the batch, stop strings inside min_tokens, the finish reason of a stop string on the last
allowed token, prompts near max_model_len, and an event loop frozen by engine steps.
"""

from __future__ import annotations

import asyncio
import time

import pytest
import torch
from transformers import AutoModelForCausalLM

from vllm_mini import LLM, SamplingParams
from vllm_mini.engine.arg_utils import EngineArgs
from vllm_mini.engine.async_llm import AsyncLLM
from vllm_mini.engine.llm_engine import LLMEngine


def _greedy(max_tokens: int, **kw) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True, **kw)


def _run(engine: LLMEngine) -> dict[str, list[list[int]]]:
    done: dict[str, list[list[int]]] = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                done[out.request_id] = [c.token_ids for c in out.outputs]
    return done


@pytest.fixture(scope="module")
def llm(tiny_llama_dir) -> LLM:
    return LLM(str(tiny_llama_dir), kv_cache_memory_bytes=1 << 22, max_model_len=64)


@pytest.mark.parametrize("order", ["user_id_first", "parent_first"])
def test_user_id_never_collides_with_a_child_id(llm, order):
    engine = llm.llm_engine
    p0, p1 = [5, 6, 7, 8], [9, 10, 11]
    solo0 = llm.generate([{"prompt_token_ids": p0}], _greedy(6), use_tqdm=False)[0]
    solo1 = llm.generate([{"prompt_token_ids": p1}], _greedy(6), use_tqdm=False)[0]
    adds = [
        ("0_a", {"prompt_token_ids": p0}, _greedy(6)),
        ("a", {"prompt_token_ids": p1}, _greedy(6, n=2)),
    ]
    for rid, prompt, params in adds if order == "user_id_first" else adds[::-1]:
        engine.add_request(rid, prompt, params)
    with pytest.raises(ValueError, match="already in use"):
        engine.add_request("a", {"prompt_token_ids": p1}, _greedy(2))
    done = _run(engine)
    assert done["0_a"] == [solo0.outputs[0].token_ids]
    assert done["a"] == [solo1.outputs[0].token_ids] * 2
    assert engine.get_stats()["kv_cache_usage"] == 0.0


def test_each_request_gets_its_own_number_of_logprobs(llm):
    prompts = [{"prompt_token_ids": [5, 6, 7]}, {"prompt_token_ids": [8, 9]}]
    one, five = llm.generate(
        prompts, [_greedy(4, logprobs=1), _greedy(4, logprobs=5)], use_tqdm=False
    )
    # Greedy: the sampled token is the top-1, so k=1 gives one entry and k=5 five.
    assert [len(e) for e in one.outputs[0].logprobs] == [1, 1, 1, 1]
    assert [len(e) for e in five.outputs[0].logprobs] == [5, 5, 5, 5]
    zero = llm.generate(prompts[:1], _greedy(3, logprobs=0), use_tqdm=False)[0]
    assert [len(e) for e in zero.outputs[0].logprobs] == [1, 1, 1]


def _words(llm, prompt, n) -> list[str]:
    return llm.generate([prompt], _greedy(n), use_tqdm=False)[0].outputs[0].text.split()


def test_min_tokens_holds_back_stop_strings(llm):
    prompt = {"prompt_token_ids": [20, 21, 22, 23]}
    words = _words(llm, prompt, 12)
    stop = words[1]
    assert stop not in " ".join(words[3:]), "pick a prompt whose 2nd word does not come back"
    plain = llm.generate([prompt], _greedy(12, stop=[stop]), use_tqdm=False)[0].outputs[0]
    assert plain.finish_reason == "stop" and len(plain.token_ids) == 2
    held = llm.generate([prompt], _greedy(12, stop=[stop], min_tokens=3), use_tqdm=False)[0]
    out = held.outputs[0]
    assert out.finish_reason == "length" and len(out.token_ids) == 12
    assert out.text.split() == words


def test_stop_string_on_the_last_allowed_token_finishes_with_stop(llm):
    prompt = {"prompt_token_ids": [30, 31, 32]}
    words = _words(llm, prompt, 6)
    stop = words[2]
    assert stop not in " ".join(words[:2])
    out = llm.generate([prompt], _greedy(3, stop=[stop]), use_tqdm=False)[0].outputs[0]
    assert (out.finish_reason, out.stop_reason) == ("stop", stop)
    assert out.text.split() == words[:2]


def _hf_greedy(model_dir, prompt: list[int], n: int) -> list[int]:
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        out = hf.generate(
            torch.tensor([prompt]),
            max_new_tokens=n,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )
    return out[0, len(prompt) :].tolist()


def test_generation_is_capped_at_max_model_len_like_vllm(llm, tiny_llama_dir):
    near = list(range(40, 40 + 56))  # 56 of 64: fewer than the default max_tokens=16 remain
    out = llm.generate([{"prompt_token_ids": near}], SamplingParams(temperature=0.0, ignore_eos=True), use_tqdm=False)[0].outputs[0]  # fmt: skip
    assert out.finish_reason == "length" and len(out.token_ids) == 8
    assert out.token_ids == _hf_greedy(tiny_llama_dir, near, 8)
    big = llm.generate([{"prompt_token_ids": near}], _greedy(1000), use_tqdm=False)[0].outputs[0]
    assert big.token_ids == out.token_ids and big.finish_reason == "length"
    # A prompt of exactly max_model_len is accepted and gets one token (vLLM's behaviour).
    full = list(range(100, 164))
    one = llm.generate([{"prompt_token_ids": full}], _greedy(5), use_tqdm=False)[0].outputs[0]
    assert one.finish_reason == "length" and one.token_ids == _hf_greedy(tiny_llama_dir, full, 1)
    assert llm.llm_engine.get_stats()["kv_cache_usage"] == 0.0


def test_event_loop_never_waits_for_an_engine_step(tiny_llama_dir):
    """A 500 ms step (slowed on purpose) runs in the worker thread; meanwhile the loop adds
    requests and reads stats. Before the fix both took the engine lock and froze the loop."""
    engine = AsyncLLM.from_engine_args(
        EngineArgs(model=str(tiny_llama_dir), kv_cache_memory_bytes=1 << 22)
    )
    core = engine.engine.engine_core
    real_step = core.step

    def slow_step():
        outputs = real_step()
        time.sleep(0.5)  # releases the GIL, like a long forward pass in C++
        return outputs

    core.step = slow_step

    async def main() -> tuple[float, float, list[int]]:
        gaps: list[float] = []
        stop = asyncio.Event()

        async def ticker():
            last = time.monotonic()
            while not stop.is_set():
                await asyncio.sleep(0.005)
                now = time.monotonic()
                gaps.append(now - last)
                last = now

        tick = asyncio.create_task(ticker())
        first = asyncio.create_task(_collect(engine, "first", 3))
        await asyncio.sleep(0.2)  # the first step is running now
        t0 = time.monotonic()
        queue = await engine.add_request("second", {"prompt_token_ids": [5, 6]}, _greedy(2))
        engine.get_stats()
        call_time = time.monotonic() - t0
        tokens = await _drain(queue)
        await first
        stop.set()
        await tick
        return call_time, max(gaps), tokens

    call_time, max_gap, tokens = asyncio.run(main())
    assert len(tokens) == 2
    assert call_time < 0.1, f"add_request + get_stats took {call_time * 1000:.0f} ms"
    assert max_gap < 0.2, f"the event loop froze for {max_gap * 1000:.0f} ms"


async def _collect(engine: AsyncLLM, rid: str, n: int) -> list[int]:
    final = None
    async for out in engine.generate({"prompt_token_ids": [7, 8, 9]}, _greedy(n), rid):
        final = out
    return final.outputs[0].token_ids


async def _drain(queue: asyncio.Queue) -> list[int]:
    while True:
        out = await queue.get()
        if out.finished:
            return out.outputs[0].token_ids
