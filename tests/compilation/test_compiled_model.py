"""torch.compile (inductor, CPU) gives the eager model's outputs, and compiles exactly once.

The compiled model runs the same math with fused kernels, so greedy tokens must be identical and
logprobs equal within float32 rounding. The number of tokens is the graph's one dynamic
dimension: prefills of several lengths and decode batches that shrink from 5 to 1 must all reuse
the first graph (CompiledModel.num_compiles counts dynamo's compiled graphs).
Cold compiles of these 2-layer models take 10-40 s on a 2-core CPU; the on-disk inductor cache
(CompilationConfig.cache_dir) makes reruns a few seconds. The graph is compiled in pieces cut at
attention, and twin pieces share one compile (compilation/backends.py).
"""

from __future__ import annotations

import pytest

from tests.conftest import make_tiny_checkpoint
from tests.kv_checker import KVReadChecker
from vllm_mini import LLM, SamplingParams
from vllm_mini.compilation.wrapper import CompiledModel

# Token ids, so every tiny tokenizer gives the same prompts: lengths 2, 10, 1, 5, 3.
PROMPTS = [
    {"prompt_token_ids": ids}
    for ids in ([1, 2], list(range(5, 15)), [7], [3, 4, 5, 6, 7], [9, 10, 11])
]
PARAMS = [SamplingParams(temperature=0.0, max_tokens=2 + 2 * i, logprobs=3) for i in range(5)]


def _generate(model_dir, **kwargs):
    llm = LLM(str(model_dir), kv_cache_memory_bytes=1 << 22, max_model_len=64, **kwargs)
    with KVReadChecker(llm.llm_engine):
        outs = llm.generate(PROMPTS, PARAMS, use_tqdm=False)
    return outs, llm.llm_engine.engine_core.worker.model_runner


def _assert_same(ref, outs):
    for a, b in zip(ref, outs):
        assert a.outputs[0].token_ids == b.outputs[0].token_ids
        for la, lb in zip(a.outputs[0].logprobs, b.outputs[0].logprobs):
            for tok in la:
                assert la[tok].logprob == pytest.approx(lb[tok].logprob, abs=1e-4)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_compiled_model_matches_eager_and_never_recompiles(tmp_path, arch):
    model_dir = make_tiny_checkpoint(tmp_path / arch, arch)
    ref, _ = _generate(model_dir, enforce_eager=True)
    outs, runner = _generate(model_dir, compilation_config={"mode": 3})
    assert isinstance(runner.model, CompiledModel)
    _assert_same(ref, outs)
    # Prefills of 2..10 tokens and decode batches of 5..1 tokens: one graph for all of them.
    assert runner.model.num_compiles == 1


def test_compiled_model_with_padded_decode_buffers_matches_eager(tiny_llama_dir):
    """Mode 3 plus the static-buffer path: what a GPU would capture, run eagerly on CPU."""
    ref, _ = _generate(tiny_llama_dir, enforce_eager=True)
    config = {"mode": 3, "cudagraph_mode": "FULL_DECODE_ONLY", "cudagraph_capture_sizes": [1, 2, 4]}
    outs, runner = _generate(tiny_llama_dir, compilation_config=config)
    _assert_same(ref, outs)
    assert runner.cudagraph_runner.num_padded_steps > 0
    assert runner.model.num_compiles == 1


@pytest.mark.slow
def test_compiled_smollm2_matches_eager_and_compiles_three_pieces(smollm2_gguf, tmp_path):
    """SmolLM2's 30 layers: 31 compute pieces between the attentions, 3 distinct ones compiled.

    A cold cache (tmp_path) on purpose: compiling the whole graph in one piece took longer than
    14 minutes here; the piecewise backend compiles the three distinct pieces in about a minute.
    """
    prompts = [{"prompt_token_ids": ids} for ids in ([1, 2, 3, 4], [5, 6], [7, 8, 9])]
    params = SamplingParams(temperature=0.0, max_tokens=8, logprobs=3)

    def run(**kwargs):
        llm = LLM(dtype="float32", max_model_len=256, **kwargs)
        return llm.generate(prompts, params, use_tqdm=False), llm

    ref, _ = run(enforce_eager=True)
    outs, llm = run(compilation_config={"mode": 3, "cache_dir": str(tmp_path)})
    _assert_same(ref, outs)
    model = llm.llm_engine.engine_core.worker.model_runner.model
    assert model.num_compiles == 1
    assert model.backend.num_pieces == 31
    assert model.backend.num_inductor_compiles == 3
