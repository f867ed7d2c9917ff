"""Qwen3: Llama plus RMSNorm on each head's q and k (q_norm / k_norm) before RoPE, no qkv bias.

Stage 2. Mirrors vllm/model_executor/models/qwen3.py. Next: registry.py.
"""

from __future__ import annotations

from vllm_mini.model_executor.models.qwen2 import Qwen2ForCausalLM


class Qwen3ForCausalLM(Qwen2ForCausalLM):
    attention_kwargs = {"qk_norm": True}
