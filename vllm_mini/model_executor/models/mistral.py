"""Mistral: Llama's architecture under another name.

Stage 2. Mirrors vllm/model_executor/models/ (vLLM maps MistralForCausalLM onto its Llama code too).
Mistral 7B v0.1 used sliding-window attention (4096); we do not implement sliding windows, so a
config that would need one (max_model_len > sliding_window) is refused at load time.
"""

from __future__ import annotations

from vllm_mini.config import VllmConfig
from vllm_mini.model_executor.models.llama import LlamaForCausalLM


class MistralForCausalLM(LlamaForCausalLM):
    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        window = getattr(vllm_config.model_config.hf_config, "sliding_window", None)
        if window is not None and vllm_config.model_config.max_model_len > window:
            raise ValueError(
                f"max_model_len must be <= the model's sliding_window ({window}) because "
                f"sliding-window attention is not implemented; got {vllm_config.model_config.max_model_len}"
            )
        super().__init__(vllm_config=vllm_config, prefix=prefix)
