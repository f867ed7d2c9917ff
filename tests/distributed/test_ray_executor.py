"""The Ray executor: workers as Ray actors in a placement group, same outputs as one process.

vLLM's multi-node path, run on a one-node Ray cluster that the executor starts itself (no
RAY_ADDRESS). The same parity check as the `mp` executor (greedy tokens identical, logprobs within
1e-4, with chunked prefill and preemption in play), then an actor killed between steps: the next
step fails with WorkerDiedError naming the rank, and the engine stays dead instead of hanging.
"""

from __future__ import annotations

import pytest

from tests.conftest import make_tiny_checkpoint
from tests.distributed.test_parallel_parity import PROMPTS, assert_same, run
from vllm_mini import LLM, SamplingParams
from vllm_mini.executor import WorkerDiedError

ray = pytest.importorskip("ray")


def test_ray_tp2_equals_single_process_and_a_dead_actor_stops_the_engine(tmp_path):
    path = str(make_tiny_checkpoint(tmp_path, "llama"))
    ref, _ = run(path)
    outs, stats = run(path, tensor_parallel_size=2, distributed_executor_backend="ray")
    assert_same(ref, outs)
    assert stats.num_preemptions > 0 and stats.kv_cache_usage == 0.0
    assert not ray.is_initialized()  # the executor stopped the Ray instance it started

    llm = LLM(path, tensor_parallel_size=2, distributed_executor_backend="ray", enforce_eager=True)
    params = SamplingParams(max_tokens=4, temperature=0.0)
    prompt = {"prompt_token_ids": PROMPTS[1]}
    assert llm.generate([prompt], params, use_tqdm=False)[0].outputs[0].token_ids
    ray.kill(llm.llm_engine.engine_core.model_executor.actors[1])
    with pytest.raises(WorkerDiedError, match=r"worker rank 1 \(a Ray actor\) died"):
        llm.generate([prompt], params, use_tqdm=False)
    with pytest.raises(WorkerDiedError):
        llm.generate([prompt], params, use_tqdm=False)
    llm.shutdown()
    assert not ray.is_initialized()
