"""Lesson 02 demo: load SmolLM2 from its GGUF, inspect the packed layers, compare logits with HF.

.venv/bin/python lessons/02_model_loading/demo.py
"""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM

from vllm_mini.attention.backends.abstract import AttentionMetadata
from vllm_mini.engine.arg_utils import EngineArgs
from vllm_mini.forward_context import set_forward_context
from vllm_mini.model_executor.model_loader import get_model
from vllm_mini.model_executor.models import ModelRegistry

config = EngineArgs(attention_backend="naive").create_engine_config()
mc = config.model_config
print("architecture:", mc.architecture, "->", ModelRegistry.resolve_model_cls([mc.architecture]))
print("supported:", ModelRegistry.get_supported_archs())
model = get_model(config)
layer = model.model.layers[0]
print("qkv_proj:", tuple(layer.self_attn.qkv_proj.weight.shape), "= q 576 + k 192 + v 192 rows")
print("gate_up_proj:", tuple(layer.mlp.gate_up_proj.weight.shape), "= gate 1536 + up 1536 rows")
print("lm_head tied to embed_tokens:", model.lm_head.weight is model.model.embed_tokens.weight)

ids = torch.tensor([1, 504, 3575, 282, 4649, 314])
n = len(ids)
meta = AttentionMetadata(
    n,
    n,
    n,
    torch.tensor([0, n], dtype=torch.int32),
    torch.tensor([n], dtype=torch.int32),
    torch.zeros(1, 1, dtype=torch.int32),
    torch.zeros(n, dtype=torch.int64),
    [0, n],
    [n],
    ["demo"],
)
with set_forward_context(meta), torch.inference_mode():
    ours = model.compute_logits(model(ids, torch.arange(n)))
src = mc.source.gguf_file
hf = AutoModelForCausalLM.from_pretrained(
    src.parent, gguf_file=src.name, dtype=torch.float32
).eval()
with torch.no_grad():
    theirs = hf(ids.unsqueeze(0)).logits[0]
print(f"max |logits - HF logits| over {n} positions: {(ours - theirs).abs().max().item():.2e}")
