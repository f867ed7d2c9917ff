"""Data parallelism: two engine-core replicas behind one front end answer like one engine.

Each replica is a whole engine core in its own process, with its own KV cache. Greedy outputs must
equal the single-engine run request by request, and the least-loaded routing must give both
replicas work; the OpenAI server runs on the same front end (`vllm-mini serve
--data-parallel-size 2`).
"""

from __future__ import annotations

import gc
from concurrent.futures import ThreadPoolExecutor

from tests.entrypoints.server_utils import MAX_MODEL_LEN, serve, wait_idle
from vllm_mini import LLM, SamplingParams
from vllm_mini.engine.arg_utils import EngineArgs
from vllm_mini.engine.async_llm import AsyncLLM

PROMPTS = [list(range(3, 40)), [1, 5, 9, 33, 100], list(range(100, 130)), [7, 8, 9] * 6, [42]]


def test_dp2_equals_dp1_request_by_request(tiny_llama_dir):
    params = SamplingParams(max_tokens=12, temperature=0.0, logprobs=1)
    prompts = [{"prompt_token_ids": p} for p in PROMPTS]
    single = LLM(str(tiny_llama_dir), enforce_eager=True)
    ref = single.generate(prompts, params, use_tqdm=False)
    llm = LLM(str(tiny_llama_dir), data_parallel_size=2, enforce_eager=True)
    outs = llm.generate(prompts, params, use_tqdm=False)
    client = llm.llm_engine.engine_core
    added = [core.num_added for core in client.cores]
    stats = client.make_stats()
    processes = [core.process for core in client.cores]
    del llm, client  # deleting the LLM stops its replica processes
    gc.collect()
    for r, o in zip(ref, outs):
        assert o.prompt_token_ids == r.prompt_token_ids
        assert o.outputs[0].token_ids == r.outputs[0].token_ids
    assert added == [3, 2]  # least loaded first: the adds alternate between the replicas
    assert stats.num_running_reqs == 0 and stats.kv_cache_usage == 0.0
    for process in processes:
        process.join(10)
        assert not process.is_alive()


def test_server_with_dp2_answers_like_one_engine(tiny_llama_dir):
    prompts = ["w5 w6 w7", "w9", "w10 w11", "w3 w3 w3 w3"]
    params = SamplingParams(max_tokens=6, temperature=0.0)
    single = LLM(str(tiny_llama_dir), max_model_len=MAX_MODEL_LEN, enforce_eager=True)
    expected = [o.outputs[0].text for o in single.generate(prompts, params, use_tqdm=False)]
    args = EngineArgs(
        model=str(tiny_llama_dir),
        max_model_len=MAX_MODEL_LEN,
        data_parallel_size=2,
        enforce_eager=True,
        disable_log_stats=True,
    )
    engine = AsyncLLM.from_engine_args(args)
    try:
        with serve(engine) as server:
            client = server.client()

            def complete(prompt: str) -> str:
                resp = client.completions.create(
                    model=server.engine.model_config.served_model_name,
                    prompt=prompt,
                    max_tokens=6,
                    temperature=0.0,
                )
                return resp.choices[0].text

            with ThreadPoolExecutor(4) as pool:
                texts = list(pool.map(complete, prompts))
            wait_idle(engine)
        assert texts == expected
        assert all(core.num_added > 0 for core in engine.engine.engine_core.cores)
    finally:
        engine.shutdown()
