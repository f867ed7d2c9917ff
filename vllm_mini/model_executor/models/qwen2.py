"""Qwen2: Llama plus a bias on the q/k/v projections.

Stage 2. Mirrors vllm/model_executor/models/qwen2.py. Sliding-window layers (use_sliding_window)
are not implemented and are refused.
"""

from __future__ import annotations

from vllm_mini.config import VllmConfig
from vllm_mini.model_executor.models.llama import LlamaForCausalLM


class Qwen2ForCausalLM(LlamaForCausalLM):
    attention_kwargs = {"qkv_bias": True}

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        if getattr(vllm_config.model_config.hf_config, "use_sliding_window", False):
            raise ValueError(
                "use_sliding_window=True is not supported (no sliding-window attention)"
            )
        super().__init__(vllm_config=vllm_config, prefix=prefix)
