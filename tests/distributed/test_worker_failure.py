"""A worker process that dies fails the engine loudly and leaves no process behind.

Three ways to lose a worker: it is killed between steps (the engine notices at its next step, by
the worker's process sentinel), the engine process itself is killed (the workers see their pipe
close and exit), and a worker fails to start (the error names the rank and the cause).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from vllm_mini import LLM, SamplingParams
from vllm_mini.executor import WorkerDiedError

PROMPT = {"prompt_token_ids": [1, 5, 9, 33]}


def wait_gone(pids: list[int], timeout: float = 10.0) -> list[int]:
    """The pids still running after `timeout` seconds (zombies count as gone)."""
    deadline = time.time() + timeout
    alive = list(pids)
    while alive and time.time() < deadline:
        alive = [p for p in alive if _running(p)]
        time.sleep(0.1)
    return alive


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_killed_worker_fails_requests_and_stops_the_others(tiny_llama_dir):
    llm = LLM(
        str(tiny_llama_dir),
        tensor_parallel_size=2,
        enforce_eager=True,
        kv_cache_memory_bytes=1 << 20,
    )
    # Each rank caches 1 of the 2 KV heads: a block costs 2 (K, V) x 2 layers x 16 tokens x 1 head
    # x 16 dims x 4 bytes = 4 KiB, so 1 MiB holds 256 blocks per rank (128 with one rank).
    assert llm.llm_engine.engine_core.num_blocks == 256
    executor = llm.llm_engine.engine_core.model_executor
    pids = [h.process.pid for h in executor.workers]
    params = SamplingParams(max_tokens=4, temperature=0.0)
    assert llm.generate([PROMPT], params, use_tqdm=False)[0].outputs[0].token_ids
    os.kill(pids[1], signal.SIGKILL)
    with pytest.raises(WorkerDiedError, match=r"worker rank 1 \(pid \d+\) died"):
        llm.generate([PROMPT], params, use_tqdm=False)
    assert wait_gone(pids) == []
    # The engine stays dead: a new request fails at once instead of hanging.
    with pytest.raises(WorkerDiedError):
        llm.generate([PROMPT], params, use_tqdm=False)
    llm.shutdown()


def test_workers_exit_when_the_engine_process_is_killed(tiny_llama_dir):
    script = (
        "from vllm_mini import LLM\n"
        f"llm = LLM({str(tiny_llama_dir)!r}, tensor_parallel_size=2, enforce_eager=True)\n"
        "ex = llm.llm_engine.engine_core.model_executor\n"
        "print(*[h.process.pid for h in ex.workers], flush=True)\n"
        "import time; time.sleep(120)\n"
    )
    engine = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=os.getcwd()
    )
    try:
        pids = [int(p) for p in engine.stdout.readline().split()]
        assert len(pids) == 2
        engine.kill()
        engine.wait(10)
        assert wait_gone(pids) == []
    finally:
        engine.kill()


def test_start_up_errors_name_the_sizes(tiny_llama_dir):
    # The tiny model has 4 heads, 2 KV heads and 2 layers; nothing is spawned for these.
    with pytest.raises(ValueError, match=r"4 attention heads are not divisible by tensor_parallel_size=3"):  # fmt: skip
        LLM(str(tiny_llama_dir), tensor_parallel_size=3)
    with pytest.raises(ValueError, match="pipeline_parallel_size=3 is more stages than the model's 2 layers"):  # fmt: skip
        LLM(str(tiny_llama_dir), pipeline_parallel_size=3)
    with pytest.raises(ValueError, match="distributed_executor_backend='uni' runs one rank"):
        LLM(str(tiny_llama_dir), tensor_parallel_size=2, distributed_executor_backend="uni")
