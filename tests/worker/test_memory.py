"""KV-cache sizing: the GPU arithmetic with numbers, the CPU budget from the environment, and the
profiling forward pass (runnable on CPU; the measured GPU path runs only with CUDA)."""

from __future__ import annotations

import contextlib
import gc

import pytest
import torch

from vllm_mini import LLM, SamplingParams
from vllm_mini.core.kv_cache_utils import get_num_blocks
from vllm_mini.platforms.cpu import CPU_KVCACHE_SPACE_ENV, cpu_kv_cache_space_bytes
from vllm_mini.worker import model_runner as model_runner_module
from vllm_mini.worker.worker import kv_cache_budget

GiB = 1 << 30


def test_gpu_budget_is_utilization_of_total_minus_weights_activations_and_non_torch():
    budget = kv_cache_budget(
        total=80 * GiB,
        free_at_start=79 * GiB,
        gpu_memory_utilization=0.9,
        weights=16 * GiB,
        peak_activations=4 * GiB,
        non_torch=GiB,
    )
    assert budget == int(80 * GiB * 0.9) - 21 * GiB
    # A share of the whole device, not of what is free after loading: halving it costs 40 GiB.
    half = kv_cache_budget(80 * GiB, 79 * GiB, 0.4, 16 * GiB, 4 * GiB, GiB)
    assert budget - half == pytest.approx(40 * GiB, abs=1)


def test_gpu_budget_errors_say_what_to_change():
    with pytest.raises(ValueError, match="only 10.00 GiB of 80.00 GiB were free.*lower gpu_memory"):
        kv_cache_budget(80 * GiB, 10 * GiB, 0.9, GiB, GiB, 0)
    with pytest.raises(ValueError, match="no memory left for the KV cache.*max_num_batched_tokens"):
        kv_cache_budget(80 * GiB, 79 * GiB, 0.2, 14 * GiB, 2 * GiB, 0)


def test_cpu_budget_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv(CPU_KVCACHE_SPACE_ENV, raising=False)
    assert cpu_kv_cache_space_bytes() == GiB
    monkeypatch.setenv(CPU_KVCACHE_SPACE_ENV, "4")
    assert cpu_kv_cache_space_bytes() == 4 * GiB
    monkeypatch.setenv(CPU_KVCACHE_SPACE_ENV, "0.5")
    assert cpu_kv_cache_space_bytes() == GiB // 2
    for bad in ("abc", "0", "-1", "inf", "nan", "1GiB"):
        monkeypatch.setenv(CPU_KVCACHE_SPACE_ENV, bad)
        with pytest.raises(ValueError, match=f"{CPU_KVCACHE_SPACE_ENV} must be a positive number"):
            cpu_kv_cache_space_bytes()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU budget; GPUs profile instead")
def test_engine_sizes_the_cpu_kv_cache_from_the_variable(tiny_llama_dir, monkeypatch):
    monkeypatch.setenv(CPU_KVCACHE_SPACE_ENV, "0.001")
    llm = LLM(str(tiny_llama_dir), block_size=16)
    cfg = llm.llm_engine.vllm_config.model_config
    expected = get_num_blocks(
        int(0.001 * GiB), cfg.num_layers, 16, cfg.num_kv_heads, cfg.head_size, cfg.dtype
    )
    assert llm.llm_engine.engine_core.num_blocks == expected
    # An explicit kv_cache_memory_bytes wins over the variable; a bad value names the variable.
    explicit = LLM(str(tiny_llama_dir), block_size=16, kv_cache_memory_bytes=1 << 20)
    assert explicit.llm_engine.engine_core.num_blocks != expected
    monkeypatch.setenv(CPU_KVCACHE_SPACE_ENV, "lots")
    with pytest.raises(ValueError, match=CPU_KVCACHE_SPACE_ENV):
        LLM(str(tiny_llama_dir))


@contextlib.contextmanager
def _captured_metadata():
    seen, original = [], model_runner_module.set_forward_context

    @contextlib.contextmanager
    def spy(meta):
        seen.append(meta)
        with original(meta):
            yield

    model_runner_module.set_forward_context = spy
    try:
        yield seen
    finally:
        model_runner_module.set_forward_context = original


@pytest.mark.parametrize("backend", ["torch", "naive"])
def test_profile_run_is_the_largest_step_and_leaves_no_trace(tiny_llama_dir, backend):
    kwargs = dict(
        attention_backend=backend,
        kv_cache_memory_bytes=1 << 22,
        max_num_batched_tokens=100,
        max_num_seqs=8,
        block_size=16,
    )
    llm = LLM(str(tiny_llama_dir), **kwargs)
    runner = llm.llm_engine.engine_core.worker.model_runner
    caches = [layer.kv_cache for layer in runner.attn_layers]
    rng = torch.get_rng_state()
    with _captured_metadata() as seen:
        dummy_kv_bytes = runner.profile_run()
    # The global RNG is untouched, so unseeded sampling does not depend on profiling.
    assert torch.equal(torch.get_rng_state(), rng)
    (meta,) = seen
    assert meta.num_actual_tokens == 100 and meta.num_seqs == 8
    assert meta.query_start_loc_cpu[1:3] == [
        13,
        26,
    ]  # 100 tokens over 8 requests: 13,13,13,13,12...
    cfg = runner.model_config
    blocks = 8  # each request's 12 or 13 tokens fit one 16-token block
    per_layer = 2 * blocks * 16 * cfg.num_kv_heads * cfg.head_size * 4  # K and V, float32
    assert dummy_kv_bytes == (cfg.num_layers * per_layer if backend == "torch" else 0)
    assert not runner.requests and runner.input_batch.num_reqs == 0
    assert all(a is b for a, b in zip(caches, [layer.kv_cache for layer in runner.attn_layers]))
    if backend == "naive":
        assert all(not layer.impl.caches for layer in runner.attn_layers)
    # And the engine still serves, from its real KV cache.
    prompts = [{"prompt_token_ids": [5, 6, 7, 8]}, {"prompt_token_ids": [9, 10, 11]}]
    params = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
    fresh = LLM(str(tiny_llama_dir), **kwargs)
    got, want = (
        [o.outputs[0].token_ids for o in x.generate(prompts, params, use_tqdm=False)]
        for x in (llm, fresh)
    )
    assert got == want


@pytest.mark.skipif(not torch.cuda.is_available(), reason="measures GPU memory")
def test_gpu_budget_follows_gpu_memory_utilization(tiny_llama_dir):
    budgets = {}
    for util in (0.3, 0.6):
        llm = LLM(str(tiny_llama_dir), device="cuda", gpu_memory_utilization=util)
        budgets[util] = llm.llm_engine.engine_core.worker.determine_available_memory()
        del llm
        gc.collect()  # the next engine's "free at start-up" must not count this one
        torch.cuda.empty_cache()
    total = torch.cuda.mem_get_info()[1]
    assert 0 < budgets[0.3] < 0.3 * total
    assert budgets[0.6] - budgets[0.3] == pytest.approx(0.3 * total, rel=0.05)
