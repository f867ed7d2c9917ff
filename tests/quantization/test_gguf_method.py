"""The `gguf` quantization method: layers run the file's blocks and equal the dequantized weights.

Layer tests load synthetic blocks through the method's own weight loaders, as the model's
load_weights does, and compare the layer's output with x @ W^T for W decoded by the torch
reference. Packed layers get one tensor per shard; in real Q4_K_M files q, k and v may have
different block types, which the method keeps as separate matrices. The loader tests check
that raw rows (with llama.cpp's q/k permutation undone on whole rows of blocks) decode to exactly
the float loader's weights, and that an unsupported type is reported by name.
"""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType

from tests.quantization.gguf_blocks import make_blocks
from vllm_mini.config.model import ModelConfig
from vllm_mini.model_executor.layers.linear import (
    MergedColumnParallelLinear,
    QKVParallelLinear,
    RowParallelLinear,
)
from vllm_mini.model_executor.layers.quantization import get_quantization_config
from vllm_mini.model_executor.layers.quantization.gguf import GGUFConfig
from vllm_mini.model_executor.layers.quantization.utils import gguf_ops
from vllm_mini.model_executor.layers.quantization.utils.gguf_quants import (
    GGML_TYPE_BY_NAME,
    dequantize,
)
from vllm_mini.model_executor.layers.vocab_parallel_embedding import VocabParallelEmbedding
from vllm_mini.model_executor.model_loader import gguf_loader


def _load(layer, shard_id, type_name: str, rows: int, seed: int) -> torch.Tensor:
    """Feed one shard's blocks and type to the layer's loaders; return its float weight."""
    type_id = GGML_TYPE_BY_NAME[type_name].type_id
    blocks = make_blocks(type_name, rows, layer.gguf_cols, seed=seed)
    args = () if shard_id is None else (shard_id,)
    layer.qweight.weight_loader(layer.qweight, blocks, *args)
    layer.qweight_type.weight_loader(layer.qweight_type, torch.tensor(type_id), *args)
    return dequantize(blocks, type_id)


@pytest.fixture(autouse=True)
def float_kernel(monkeypatch):
    # These tests check how the method lays out and decodes shards, to float precision: they pin
    # the float kernel (the int8-activation path rounds x, test_gguf_q8_kernel.py covers it).
    monkeypatch.setattr(gguf_ops, "INT8_ACTIVATIONS", False)


def _check(layer, weight: torch.Tensor, num_tokens: int = 3) -> None:
    x = torch.randn(num_tokens, weight.shape[1], generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(layer(x)[0], x @ weight.t(), rtol=1e-4, atol=1e-4)


def test_registry_resolves_gguf():
    assert get_quantization_config("gguf") is GGUFConfig


@pytest.mark.parametrize("types", [("Q4_K", "Q6_K", "Q8_0"), ("Q4_1", "Q4_1", "Q4_1")])
def test_qkv_shards_with_their_own_block_types(types):
    layer = QKVParallelLinear(256, 16, 4, 2, bias=False, quant_config=GGUFConfig(), prefix="qkv")
    # Loaded out of order (v first), as a checkpoint may list them.
    parts = {
        sid: _load(layer, sid, t, rows, i)
        for i, (sid, t, rows) in reversed(list(enumerate(zip("qkv", types, (64, 32, 32)))))
    }
    layer.quant_method.process_weights_after_loading(layer)
    # One matrix (one kernel call) when the types agree, else one per shard.
    assert len(layer.gguf_parts) == len(set(types))
    for num_tokens in (1, 40):
        _check(layer, torch.cat([parts["q"], parts["k"], parts["v"]]), num_tokens)


def test_gate_up_and_down_projections():
    merged = MergedColumnParallelLinear(96, [64, 64], bias=False, quant_config=GGUFConfig())
    gate_up = torch.cat([_load(merged, i, t, 64, i) for i, t in enumerate(("Q4_0", "Q5_1"))])
    merged.quant_method.process_weights_after_loading(merged)
    _check(merged, gate_up)
    row = RowParallelLinear(64, 32, bias=False, quant_config=GGUFConfig())
    down = _load(row, None, "Q8_0", 32, 5)
    row.quant_method.process_weights_after_loading(row)
    _check(row, down)


def test_missing_shard_is_reported_with_the_layer_name():
    layer = QKVParallelLinear(64, 16, 2, 1, bias=False, quant_config=GGUFConfig(), prefix="l0.qkv")
    _load(layer, "q", "Q8_0", 32, 0)
    _load(layer, "k", "Q8_0", 16, 1)
    with pytest.raises(ValueError, match="gguf: l0.qkv: expected 3 shard"):
        layer.quant_method.process_weights_after_loading(layer)


def test_embedding_decodes_looked_up_rows_and_serves_as_lm_head():
    emb = VocabParallelEmbedding(100, 64, quant_config=GGUFConfig(), prefix="embed")
    table = _load(emb, None, "Q8_0", 100, 3)  # 100 real rows; the layer pads to 128
    emb.quant_method.process_weights_after_loading(emb)
    ids = torch.tensor([0, 99, 5, 5])
    assert torch.equal(emb(ids), table[ids])
    hidden = torch.randn(2, 64)
    logits = emb.quant_method.apply(emb, hidden)
    assert logits.shape == (2, 128) and torch.all(logits[:, 100:] == 0)
    torch.testing.assert_close(logits[:, :100], hidden @ table.t(), rtol=1e-4, atol=1e-4)


def test_dtype_auto_on_a_gguf_model_runs_the_gguf_method():
    assert ModelConfig().quantization == "gguf"
    assert ModelConfig(dtype="float32").quantization is None  # dequantized, as before stage 7
    assert ModelConfig(dtype="bfloat16", quantization="gguf").quantization == "gguf"


def test_raw_rows_decode_to_the_float_loaders_weights(smollm2_gguf):
    config = ModelConfig().hf_config
    first = 10  # token_embd and the first layer's tensors
    floats = dict(itertools.islice(gguf_loader.gguf_weights_iterator(smollm2_gguf), first))
    raw_iter = gguf_loader.gguf_weights_iterator(smollm2_gguf, hf_config=config, keep_blocks=True)
    raw = dict(itertools.islice(raw_iter, 2 * first))  # 2-D tensors come as blocks and type
    checked = 0
    for name, weight in floats.items():
        if weight.dim() != 2:
            assert torch.equal(raw[name], weight)  # norms stay float
            continue
        base = name.removesuffix(".weight")
        decoded = dequantize(raw[f"{base}.qweight"], int(raw[f"{base}.qweight_type"]))
        assert torch.equal(decoded, weight), name  # includes the un-permuted q_proj and k_proj
        checked += 1
    assert checked >= 7


def test_unsupported_block_type_is_named():
    tensor = SimpleNamespace(
        name="blk.0.ffn_down.weight",
        tensor_type=GGMLQuantizationType.IQ2_XS,
        data=np.zeros((4, 66), dtype=np.uint8),
    )
    blocks = gguf_loader._raw_blocks(tensor, "model.layers.0.mlp.down_proj.weight", [4, 256], 1, 1)
    with pytest.raises(
        ValueError,
        match="gguf: tensor blk.0.ffn_down.weight has type IQ2_XS, supported: F32, F16, Q4_0",
    ):
        next(blocks)
