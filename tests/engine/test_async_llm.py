"""AsyncLLM: concurrent streams, one cancelled midway; the rest finish and no block leaks."""

from __future__ import annotations

import asyncio
import threading
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


def test_engine_is_built_and_stepped_on_one_thread(tiny_llama_dir, monkeypatch):
    """Every torch kernel of a served engine runs on one thread, the one that loaded the model:
    a second thread starting OpenMP work would give libgomp a second worker pool and make its
    idle workers sleep instead of spin (async_llm.py's docstring has the measurement)."""
    from vllm_mini.engine.core import EngineCore
    from vllm_mini.engine.llm_engine import LLMEngine

    threads: dict[str, set[int]] = {"build": set(), "step": set()}
    build, step = LLMEngine.from_engine_args.__func__, EngineCore.step

    def recording_build(cls, *args, **kwargs):
        threads["build"].add(threading.get_ident())
        return build(cls, *args, **kwargs)

    def recording_step(self):
        threads["step"].add(threading.get_ident())
        return step(self)

    monkeypatch.setattr(LLMEngine, "from_engine_args", classmethod(recording_build))
    monkeypatch.setattr(EngineCore, "step", recording_step)
    engine = AsyncLLM.from_engine_args(
        EngineArgs(model=str(tiny_llama_dir), kv_cache_memory_bytes=1 << 22, disable_log_stats=True)
    )
    params = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)

    async def one(i: int) -> int:
        prompt = {"prompt_token_ids": [5 + i, 6, 7]}
        async for out in engine.generate(prompt, params, request_id=f"t-{i}"):
            last = out
        return len(last.outputs[0].token_ids)

    async def main():
        first = await asyncio.gather(*(one(i) for i in range(3)))
        await asyncio.sleep(0.05)  # idle in between: the next burst must find the same thread
        return first + await asyncio.gather(*(one(i) for i in range(3, 6)))

    assert asyncio.run(main()) == [4] * 6
    engine.shutdown()
    assert len(threads["build"]) == 1 and threads["step"] == threads["build"]
    assert threading.get_ident() not in threads["step"]
