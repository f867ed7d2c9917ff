"""Our model implementations produce HF transformers' logits (float32, max abs diff <= 1e-4).

Each architecture is a tiny random checkpoint written by transformers itself and read back by our
safetensors loader. Prefill compares all positions at once; decode feeds tokens one at a time
through the naive KV cache and compares every step with HF's full-sequence logits.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.conftest import make_tiny_checkpoint
from vllm_mini.attention.backends.abstract import AttentionMetadata
from vllm_mini.engine.arg_utils import EngineArgs
from vllm_mini.forward_context import set_forward_context
from vllm_mini.model_executor.model_loader import get_model

ARCHS = ["llama", "llama3_rope", "mistral", "qwen2", "qwen3"]
TOL = 1e-4


def _metadata(req_id: str, start: int, end: int) -> AttentionMetadata:
    """Metadata for one sequence whose tokens [start, end) are scheduled (naive backend)."""
    n = end - start
    return AttentionMetadata(
        num_actual_tokens=n,
        max_query_len=n,
        max_seq_len=end,
        query_start_loc=torch.tensor([0, n], dtype=torch.int32),
        seq_lens=torch.tensor([end], dtype=torch.int32),
        block_table=torch.zeros(1, 1, dtype=torch.int32),
        slot_mapping=torch.zeros(n, dtype=torch.int64),
        query_start_loc_cpu=[0, n],
        seq_lens_cpu=[end],
        req_ids=[req_id],
    )


def _run(model, ids: torch.Tensor, start: int, end: int, req_id: str = "r") -> torch.Tensor:
    with set_forward_context(_metadata(req_id, start, end)), torch.inference_mode():
        hidden = model(ids[start:end], torch.arange(start, end))
        return model.compute_logits(hidden)


@pytest.fixture(scope="module", params=ARCHS)
def models(request, tmp_path_factory):
    path = make_tiny_checkpoint(tmp_path_factory.mktemp(request.param), request.param)
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    config = EngineArgs(
        model=str(path), dtype="float32", attention_backend="naive"
    ).create_engine_config()
    return hf, get_model(config)


def _hf_logits(hf, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return hf(ids.unsqueeze(0)).logits[0]


def test_prefill_logits_match_hf(models):
    hf, ours = models
    ids = torch.randint(3, 384, (23,), generator=torch.Generator().manual_seed(1))
    expected = _hf_logits(hf, ids)
    got = _run(ours, ids, 0, len(ids))
    assert expected.std() > 0.1, "logits too small for the comparison to mean anything"
    assert (got - expected).abs().max().item() <= TOL


def test_decode_logits_match_hf_step_by_step(models):
    hf, ours = models
    ids = torch.randint(3, 384, (20,), generator=torch.Generator().manual_seed(2))
    expected = _hf_logits(hf, ids)
    _run(ours, ids, 0, 12, req_id="d")  # prefill the first 12 tokens
    for pos in range(12, 20):
        got = _run(ours, ids, pos, pos + 1, req_id="d")[0]
        assert (got - expected[pos]).abs().max().item() <= TOL, f"position {pos}"


def test_sharded_checkpoint_with_index_loads_identically(tmp_path):
    """A checkpoint split into several safetensors files + index json loads to the same weights."""
    from transformers import AutoModelForCausalLM

    single = make_tiny_checkpoint(tmp_path / "single", "llama")
    hf = AutoModelForCausalLM.from_pretrained(single, dtype=torch.float32)
    sharded = tmp_path / "sharded"
    hf.save_pretrained(sharded, max_shard_size="100KB")
    for f in single.glob("tokenizer*"):
        (sharded / f.name).write_bytes(f.read_bytes())
    assert (sharded / "model.safetensors.index.json").exists()
    assert len(list(sharded.glob("*.safetensors"))) > 1
    load = lambda p: get_model(  # noqa: E731
        EngineArgs(model=str(p), attention_backend="naive").create_engine_config()
    )
    a, b = load(single), load(sharded)
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(pa, pb), name


def test_loaded_linear_weights_are_column_major_with_hf_values(models):
    """process_weights_after_loading changes the strides for sgemm, never the values."""
    hf, model = models
    from vllm_mini.model_executor.layers.linear import LinearBase

    layers = [m for m in model.modules() if isinstance(m, LinearBase)]
    assert layers
    for layer in layers:
        out_features = layer.weight.shape[0]
        assert layer.weight.stride() == (1, out_features), layer.prefix
    ours = model.model.layers[0].self_attn.o_proj.weight
    torch.testing.assert_close(ours, hf.model.layers[0].self_attn.o_proj.weight, rtol=0, atol=0)
