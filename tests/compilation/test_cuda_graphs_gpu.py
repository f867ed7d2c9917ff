"""CUDA-graph capture and replay (GPU only; skipped without CUDA).

Every capture size must replay to the same greedy tokens as eager, with prefix caching and
chunked prefill on (prefill steps run eagerly between replays, and shared prefix blocks are read
by the replayed decode kernels). Decode batches of 1..max size are produced by requests of
different lengths finishing one after another.
"""

from __future__ import annotations

import pytest
import torch

from vllm_mini import LLM, SamplingParams

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU"),
]

SIZES = [1, 2, 4, 8]


def _run(model_dir, **kwargs):
    llm = LLM(
        str(model_dir),
        device="cuda",
        attention_backend="cuda",
        max_model_len=128,
        max_num_seqs=8,
        max_num_batched_tokens=32,  # long prompts are chunked
        enable_prefix_caching=True,
        **kwargs,
    )
    shared = list(range(3, 35))  # a 2-block shared prefix
    prompts = [{"prompt_token_ids": shared + [40 + i] * (i + 1)} for i in range(8)]
    params = [SamplingParams(temperature=0.0, max_tokens=3 + 3 * i) for i in range(8)]
    outs = llm.generate(prompts, params, use_tqdm=False)
    return [o.outputs[0].token_ids for o in outs], llm.llm_engine.engine_core.worker.model_runner


@pytest.mark.parametrize("mode", [0, 3])
def test_replay_equals_eager_for_every_capture_size(tiny_llama_dir, mode):
    ref, _ = _run(tiny_llama_dir, enforce_eager=True)
    config = {"mode": mode, "cudagraph_mode": "FULL_DECODE_ONLY", "cudagraph_capture_sizes": SIZES}
    outs, runner = _run(tiny_llama_dir, compilation_config=config)
    graphs = runner.cudagraph_runner
    assert sorted(graphs.graphs) == SIZES  # one captured graph per size
    assert graphs.num_padded_steps > 0
    assert outs == ref
