"""AsyncLLM: concurrent streams, one cancelled midway; the rest finish and no block leaks."""

from __future__ import annotations

import asyncio
from contextlib import aclosing

from vllm_mini import SamplingParams
from vllm_mini.engine.arg_utils import EngineArgs
from vllm_mini.engine.async_llm import AsyncLLM


def test_concurrent_streams_with_cancellation(tiny_llama_dir):
    engine = AsyncLLM.from_engine_args(
        EngineArgs(model=str(tiny_llama_dir), kv_cache_memory_bytes=1 << 22, disable_log_stats=True)
    )
    params = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)

    async def consume(i: int, cancel_after: int | None) -> list[int] | None:
        prompt = {"prompt_token_ids": [3 + i, 10, 20, 30 + i]}
        n = 0
        # aclosing: leaving the loop early closes the stream, which aborts the request.
        async with aclosing(engine.generate(prompt, params, request_id=f"req-{i}")) as stream:
            async for out in stream:
                n += 1
                if cancel_after is not None and n >= cancel_after:
                    return None
                if out.finished:
                    return out.outputs[0].token_ids
        return None

    async def main():
        results = await asyncio.gather(*(consume(i, 3 if i == 5 else None) for i in range(16)))
        await asyncio.sleep(0)
        # The aborted request's blocks are released when the core drains the abort; wait for it.
        for _ in range(200):
            stats = engine.get_stats()
            if stats["num_running_reqs"] == 0 and stats["kv_cache_usage"] == 0.0:
                break
            await asyncio.sleep(0.01)
        return results

    results = asyncio.run(main())
    assert results[5] is None
    assert all(r is not None and len(r) == 16 for i, r in enumerate(results) if i != 5)
    stats = engine.get_stats()
    assert stats["kv_cache_usage"] == 0.0 and stats["num_running_reqs"] == 0
