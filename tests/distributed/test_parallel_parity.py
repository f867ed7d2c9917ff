"""Tensor and pipeline parallelism over worker processes give the single-process engine's output.

The peer is the same engine with one rank in-process (the uni executor), itself checked against
HF transformers by tests/models. Each parallel engine spawns its workers (gloo on CPU) and must
produce the same greedy tokens, with logprobs within float32 tolerance: splitting a matmul's sum
across ranks changes only the order of additions. The engine config forces chunked prefill (a
32-token budget) and preemption (a KV cache too small for every request at once), so the
parallel runs also cover requests leaving and re-entering the workers' persistent batches.
"""

from __future__ import annotations

import pytest

from tests.conftest import make_tiny_checkpoint
from vllm_mini import LLM, SamplingParams

PROMPTS = [list(range(3, 70)), [1, 5, 9, 33, 100], list(range(100, 150)), [7, 8, 9] * 9]
PARAMS = SamplingParams(max_tokens=24, temperature=0.0, logprobs=3)
ENGINE = dict(
    max_num_batched_tokens=32,
    enable_chunked_prefill=True,
    num_gpu_blocks_override=10,  # 160 token slots for ~330 tokens of requests: some are preempted
    block_size=16,
    enforce_eager=True,
)


def run(model: str, **parallel) -> tuple[list, LLM]:
    llm = LLM(model, **ENGINE, **parallel)
    try:
        outs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], PARAMS, use_tqdm=False)
        stats = llm.llm_engine.engine_core.make_stats()
    finally:
        llm.shutdown()
    return outs, stats


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, tuple[str, list]]:
    """Each tiny model and its single-process outputs (which must have preempted)."""
    result = {}
    for arch in ("llama", "qwen2"):
        path = str(make_tiny_checkpoint(tmp_path_factory.mktemp(arch), arch))
        outs, stats = run(path)
        assert stats.num_preemptions > 0, "the reference run must exercise preemption"
        result[arch] = (path, outs)
    return result


def assert_same(ref: list, got: list) -> None:
    for r, g in zip(ref, got):
        assert g.outputs[0].token_ids == r.outputs[0].token_ids
        for lr, lg in zip(r.outputs[0].logprobs, g.outputs[0].logprobs):
            assert lr.keys() == lg.keys()
            for token in lr:
                assert lg[token].logprob == pytest.approx(lr[token].logprob, abs=1e-4)


@pytest.mark.parametrize(
    "arch, tp, pp",
    [("llama", 2, 1), ("qwen2", 2, 1), ("llama", 1, 2), ("llama", 2, 2)],
    ids=["llama-tp2", "qwen2-tp2", "llama-pp2", "llama-tp2xpp2"],
)
def test_parallel_engine_equals_single_process(models, arch, tp, pp):
    path, ref = models[arch]
    outs, stats = run(
        path, tensor_parallel_size=tp, pipeline_parallel_size=pp, distributed_executor_backend="mp"
    )
    assert_same(ref, outs)
    assert stats.num_preemptions > 0
    assert stats.kv_cache_usage == 0.0  # every block came back


@pytest.fixture(scope="module")
def smollm2_safetensors(smollm2_gguf, tmp_path_factory) -> str:
    """SmolLM2 dequantized to float32 safetensors once: each rank then maps the file instead of
    parsing and dequantizing the GGUF itself (seconds per process on this CPU)."""
    import shutil

    from safetensors.torch import save_file

    from vllm_mini.model_executor.model_loader.gguf_loader import gguf_weights_iterator
    from vllm_mini.transformers_utils.default_model import prepare_default_model

    out = tmp_path_factory.mktemp("smollm2_f32")
    shutil.copytree(prepare_default_model(), out, dirs_exist_ok=True)
    save_file(dict(gguf_weights_iterator(smollm2_gguf)), str(out / "model.safetensors"))
    return str(out)


@pytest.mark.slow
def test_smollm2_tp3_greedy_equals_tp1(smollm2_safetensors):
    """SmolLM2 (9 heads, 3 KV heads): three ranks hold 3 query heads and 1 KV head each."""
    prompts = ["The capital of France is", "def fibonacci(n):", "Once upon a time"]
    params = SamplingParams(max_tokens=16, temperature=0.0, logprobs=1)
    outs = {}
    for tp in (1, 3):
        llm = LLM(smollm2_safetensors, tensor_parallel_size=tp, enforce_eager=True)
        try:
            outs[tp] = llm.generate(prompts, params, use_tqdm=False)
        finally:
            llm.shutdown()
    assert_same(outs[1], outs[3])
    assert all(len(o.outputs[0].token_ids) == 16 for o in outs[3])
