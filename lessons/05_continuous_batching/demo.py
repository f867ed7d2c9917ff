"""Lesson 05 demo: watch the real scheduler batch requests step by step.

Runs a tiny random Llama (so it is fast) through LLMEngine with a small token budget and a small
KV cache, and prints one line per step: who ran, how many tokens (prefill chunk or decode), who was
preempted. Then compares continuous batching's throughput with static batching on the same engine.

    .venv/bin/python lessons/05_continuous_batching/demo.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.conftest import make_tiny_checkpoint  # noqa: E402
from vllm_mini import LLM, SamplingParams  # noqa: E402


def trace_schedule(model_dir: Path) -> None:
    llm = LLM(
        str(model_dir),
        block_size=4,
        num_gpu_blocks_override=14,
        max_num_batched_tokens=16,
        max_num_seqs=3,
        enable_prefix_caching=False,
    )
    engine = llm.llm_engine
    for i, n in enumerate([40, 6, 12]):
        prompt = {"prompt_token_ids": list(range(10 + 50 * i, 10 + 50 * i + n))}
        engine.add_request(f"{'ABC'[i]}", prompt, SamplingParams(max_tokens=5, ignore_eos=True))
    step = 0
    print("step | scheduled (tokens)                 | preempted | KV blocks used")
    while engine.has_unfinished_requests():
        engine.step()
        so = engine.engine_core.last_scheduler_output
        kv = engine.engine_core.scheduler.kv_cache_manager
        used = kv.num_blocks - kv.num_free_blocks
        sched = ", ".join(f"{r}:{n}" for r, n in so.num_scheduled_tokens.items())
        print(
            f"{step:4d} | {sched:34s} | {','.join(sorted(so.preempted_req_ids)) or '-':9s} | {used}/{kv.num_blocks}"
        )
        step += 1


def static_vs_continuous(model_dir: Path) -> None:
    prompts = [{"prompt_token_ids": list(range(10, 10 + 8 * (i % 4 + 1)))} for i in range(16)]
    params = [SamplingParams(max_tokens=4 + 28 * (i % 2), ignore_eos=True) for i in range(16)]
    llm = LLM(str(model_dir), kv_cache_memory_bytes=1 << 22)
    t = time.perf_counter()
    llm.generate(prompts, params, use_tqdm=False)
    continuous = time.perf_counter() - t
    # Static batching: batches of 4 that start and end together (pad everyone to the longest).
    t = time.perf_counter()
    for b in range(0, 16, 4):
        longest = max(p.max_tokens for p in params[b : b + 4])
        same = SamplingParams(max_tokens=longest, ignore_eos=True)
        llm.generate(prompts[b : b + 4], same, use_tqdm=False)
    static = time.perf_counter() - t
    print(f"\ncontinuous batching {continuous:.2f} s vs static batches of 4: {static:.2f} s")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as d:
        path = make_tiny_checkpoint(Path(d), "llama")
        trace_schedule(path)
        static_vs_continuous(path)
