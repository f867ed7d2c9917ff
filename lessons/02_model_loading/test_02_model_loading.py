"""Lesson 02: your RMSNorm, RoPE and name mapping against the engine's layers and loader."""

from __future__ import annotations

import torch

from lessons._impl import load_impl
from vllm_mini.engine.arg_utils import EngineArgs
from vllm_mini.model_executor.layers.layernorm import RMSNorm
from vllm_mini.model_executor.layers.rotary_embedding import RotaryEmbedding
from vllm_mini.model_executor.model_loader import get_model
from vllm_mini.model_executor.model_loader.weight_utils import (
    get_safetensors_files,
    safetensors_weights_iterator,
)

impl = load_impl(__file__)


def test_rms_norm_matches_engine_layer():
    norm = RMSNorm(64, eps=1e-5)
    norm.weight.data = torch.randn(64)
    x = torch.randn(7, 64)
    torch.testing.assert_close(impl.rms_norm(x, norm.weight, 1e-5), norm(x))


def test_rope_matches_engine_layer():
    rope = RotaryEmbedding(32, 32, 512, 10000.0)
    positions = torch.tensor([0, 1, 5, 300, 511])
    q, k = torch.randn(5, 4 * 32), torch.randn(5, 2 * 32)
    exp_q, exp_k = rope(positions, q, k)
    got_q, got_k = impl.apply_rope(positions, q, k, 32, 10000.0)
    torch.testing.assert_close(got_q, exp_q, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_k, exp_k, atol=1e-5, rtol=1e-5)


def test_name_mapping_loads_a_real_checkpoint(tiny_llama_dir):
    """Load the tiny checkpoint through YOUR mapping; the result must equal the engine's load."""
    config = EngineArgs(model=str(tiny_llama_dir), attention_backend="naive").create_engine_config()
    reference = get_model(config)
    mine = get_model(config)
    for p in mine.parameters():
        p.data.zero_()
    params = dict(mine.named_parameters())
    files = get_safetensors_files(tiny_llama_dir)
    for name, tensor in safetensors_weights_iterator(files, torch.float32):
        target, shard = impl.map_weight_name(name)
        param = params[target]
        if shard is None:
            param.weight_loader(param, tensor) if hasattr(
                param, "weight_loader"
            ) else param.data.copy_(tensor)
        else:
            param.weight_loader(param, tensor, shard)
    for name, p in reference.named_parameters():
        torch.testing.assert_close(params[name], p, msg=name)
