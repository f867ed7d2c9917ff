"""Lesson 06: your static-buffer pieces must match the engine's (vllm_mini/compilation/cuda_graph.py).

Runs `solutions.py` by default; `LESSON_IMPL=exercises` checks your `exercises.py`:
pick_capture_size against padded_batch_size, fill_buffers against StaticInputBuffers.fill (and
inside the running engine: the tokens must not change), graph_safe_metadata against
StaticInputBuffers.metadata. The `demo` test runs demo.py on the tiny model, eager only.
"""

from __future__ import annotations

import pytest
import torch

from lessons._impl import load_impl
from vllm_mini import LLM, SamplingParams
from vllm_mini.attention.backends.abstract import AttentionMetadata
from vllm_mini.compilation import cuda_graph
from vllm_mini.compilation.cuda_graph import StaticInputBuffers, padded_batch_size

impl = load_impl(__file__)
demo = load_impl(__file__, "demo")


def _step_meta() -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata]:
    meta = AttentionMetadata(
        num_actual_tokens=3,
        max_query_len=1,
        max_seq_len=20,
        query_start_loc=torch.tensor([0, 1, 2, 3], dtype=torch.int32),
        seq_lens=torch.tensor([20, 5, 9], dtype=torch.int32),
        block_table=torch.tensor([[4, 5], [1, 0], [2, 3]], dtype=torch.int32),
        slot_mapping=torch.tensor([5 * 16 + 3, 16 + 4, 16 * 3 - 8]),
        query_start_loc_cpu=[0, 1, 2, 3],
        seq_lens_cpu=[20, 5, 9],
        req_ids=["a", "b", "c"],
    )
    return torch.tensor([11, 12, 13]), torch.tensor([19, 4, 8]), meta


@pytest.mark.parametrize("sizes", [[1, 2, 4, 8, 16, 24], [1], [4, 8]])
def test_capture_size(sizes):
    for n in range(1, 30):
        assert impl.pick_capture_size(n, sizes) == padded_batch_size(n, sizes), f"batch {n}"


@torch.inference_mode()  # the buffers are inference tensors, as in the engine's steps
def test_fill_buffers_matches_the_engine():
    ids, pos, meta = _step_meta()
    mine = StaticInputBuffers(8, 4, torch.device("cpu"))
    engine = StaticInputBuffers(8, 4, torch.device("cpu"))
    for buffers in (mine, engine):  # stale values from a bigger previous step must be cleared
        buffers.block_table.fill_(7)
        buffers.slot_mapping.fill_(99)
    pointers = {k: v.data_ptr() for k, v in vars(mine).items() if isinstance(v, torch.Tensor)}
    impl.fill_buffers(mine, ids, pos, meta, 4)
    engine.fill(ids, pos, meta, 4)
    for name, ptr in pointers.items():
        assert getattr(mine, name).data_ptr() == ptr, f"buffers.{name} was replaced, not written"
        assert torch.equal(getattr(mine, name)[:4], getattr(engine, name)[:4]), name


def test_fill_buffers_inside_the_engine_keeps_the_tokens(tiny_llama_dir, monkeypatch):
    prompts = [{"prompt_token_ids": list(range(3, 3 + k))} for k in (2, 6, 1, 4, 3)]
    params = [SamplingParams(temperature=0.0, max_tokens=2 + 2 * i) for i in range(5)]

    def run(**kwargs):
        llm = LLM(str(tiny_llama_dir), kv_cache_memory_bytes=1 << 22, max_model_len=64, **kwargs)
        return [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]

    ref = run(enforce_eager=True)
    monkeypatch.setattr(cuda_graph.StaticInputBuffers, "fill", impl.fill_buffers)
    config = {"mode": 0, "cudagraph_mode": "FULL_DECODE_ONLY", "cudagraph_capture_sizes": [2, 8]}
    assert run(compilation_config=config) == ref


def test_graph_safe_metadata_matches_the_engine():
    ids, pos, meta = _step_meta()
    buffers = StaticInputBuffers(8, 4, torch.device("cpu"))
    buffers.fill(ids, pos, meta, 4)
    mine = impl.graph_safe_metadata(buffers, meta, 4, 2048)
    engine = buffers.metadata(meta, 4, 2048)
    assert (mine.num_actual_tokens, mine.max_query_len, mine.max_seq_len) == (4, 1, 2048)
    for name in ("query_start_loc", "seq_lens", "block_table", "slot_mapping"):
        a, b = getattr(mine, name), getattr(engine, name)
        assert a.data_ptr() == b.data_ptr() and a.shape == b.shape, f"{name}: not the buffer"
    assert mine.req_ids == engine.req_ids


@pytest.mark.demo
def test_demo_runs_eagerly_and_counts_aten_calls(tiny_llama_dir, capsys):
    demo.main(str(tiny_llama_dir), compile_too=False)
    out = capsys.readouterr().out
    assert "ATen calls per decode step" in out and "eager" in out
