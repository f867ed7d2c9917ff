"""The static-buffer path of decode steps (compilation/cuda_graph.py), run eagerly on CPU.

On a GPU these buffers are what a CUDA graph replays on; here the same padding, buffer filling and
dispatch run without capture, so they are checked against the plain eager runner: a decode batch
padded up to a capture size must give the same tokens as the unpadded one, padded rows must
write no KV, and a batch above the largest size must fall back to eager.
"""

from __future__ import annotations

import pytest
import torch

from tests.kv_checker import KVReadChecker
from vllm_mini import LLM, SamplingParams
from vllm_mini.attention.backends.abstract import AttentionMetadata
from vllm_mini.compilation.cuda_graph import PAD_SLOT_ID, StaticInputBuffers, padded_batch_size

PROMPTS = ["hello world", "a b c d e f g", "x", "the quick brown fox jumps", "one two three"]
# Different lengths, so the decode batch shrinks 5 -> 1 and crosses every capture size.
GREEDY = [SamplingParams(temperature=0.0, max_tokens=3 + 2 * i, logprobs=2) for i in range(5)]


def _run(model_dir, backend: str, **kwargs):
    llm = LLM(
        str(model_dir),
        kv_cache_memory_bytes=1 << 22,
        max_model_len=64,
        attention_backend=backend,
        enforce_eager=kwargs.pop("enforce_eager", False),
        **kwargs,
    )
    with KVReadChecker(llm.llm_engine) as checker:
        outs = llm.generate(PROMPTS, GREEDY, use_tqdm=False)
    assert checker.steps > 0
    runner = llm.llm_engine.engine_core.worker.model_runner
    return outs, runner


def test_a_batch_is_padded_to_the_smallest_capture_size_that_holds_it():
    assert [padded_batch_size(n, [1, 2, 4, 8]) for n in (1, 2, 3, 5, 8, 9)] == [1, 2, 4, 8, 8, None]


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_padded_decode_batches_give_the_same_tokens_and_logprobs_as_eager(tiny_llama_dir, backend):
    ref, _ = _run(tiny_llama_dir, backend, enforce_eager=True)
    # 5 requests -> padded to 8; as requests finish, 4 -> 4, 3 -> 4, ...
    config = {"mode": 0, "cudagraph_mode": "FULL_DECODE_ONLY", "cudagraph_capture_sizes": [1, 2, 8]}
    outs, runner = _run(tiny_llama_dir, backend, compilation_config=config)
    assert runner.cudagraph_runner.num_padded_steps > 0
    for a, b in zip(ref, outs):
        assert a.outputs[0].token_ids == b.outputs[0].token_ids
        for la, lb in zip(a.outputs[0].logprobs, b.outputs[0].logprobs):
            for tok in la:
                assert la[tok].logprob == pytest.approx(lb[tok].logprob, abs=1e-5)


def test_a_batch_above_the_largest_capture_size_falls_back_to_eager(tiny_llama_dir):
    ref, _ = _run(tiny_llama_dir, "torch", enforce_eager=True)
    config = {"mode": 0, "cudagraph_mode": "FULL_DECODE_ONLY", "cudagraph_capture_sizes": [1, 2]}
    outs, runner = _run(tiny_llama_dir, "torch", compilation_config=config)
    graphs = runner.cudagraph_runner
    # 5 decodes > 2: eager; prefill steps: eager; the last 1-2 requests: padded path.
    assert graphs.num_fallback_steps > 0 and graphs.num_padded_steps > 0
    assert [o.outputs[0].token_ids for o in ref] == [o.outputs[0].token_ids for o in outs]


def test_padded_rows_write_no_kv_and_attend_one_harmless_key():
    buffers = StaticInputBuffers(max_size=4, max_blocks_per_req=3, device=torch.device("cpu"))
    ids = torch.tensor([5, 6])
    meta = AttentionMetadata(
        num_actual_tokens=2,
        max_query_len=1,
        max_seq_len=9,
        query_start_loc=torch.tensor([0, 1, 2], dtype=torch.int32),
        seq_lens=torch.tensor([9, 3], dtype=torch.int32),
        block_table=torch.tensor([[7, 8], [2, 0]], dtype=torch.int32),
        slot_mapping=torch.tensor([8 * 4, 2 * 4 + 2]),
        query_start_loc_cpu=[0, 1, 2],
        seq_lens_cpu=[9, 3],
        req_ids=["a", "b"],
    )
    buffers.fill(ids, torch.tensor([8, 2]), meta, size=4)
    padded = buffers.metadata(meta, size=4, max_seq_len=64)
    assert padded.slot_mapping.tolist() == [32, 10, PAD_SLOT_ID, PAD_SLOT_ID]
    assert padded.seq_lens.tolist() == [9, 3, 1, 1]
    assert padded.query_start_loc.tolist() == [0, 1, 2, 3, 4]
    assert padded.block_table.tolist() == [[7, 8, 0], [2, 0, 0], [0, 0, 0], [0, 0, 0]]
    assert (padded.max_query_len, padded.max_seq_len, padded.req_ids) == (1, 64, ["a", "b"])
    assert buffers.input_ids[:4].tolist() == [5, 6, 0, 0]
