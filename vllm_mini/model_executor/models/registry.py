"""Model registry: HF `architectures` name -> our model class.

Stage 2. Mirrors vllm/model_executor/models/registry.py. Adding a model = write a module with a
class built as `Cls(vllm_config=..., prefix=...)` that has forward, compute_logits and
load_weights, then add one line here (lessons/02_model_loading walks through it).
"""

from __future__ import annotations

import importlib

from torch import nn

# architecture -> (module under vllm_mini.model_executor.models, class name)
_MODELS: dict[str, tuple[str, str]] = {
    "LlamaForCausalLM": ("llama", "LlamaForCausalLM"),
    "LlavaForConditionalGeneration": ("llava", "LlavaForConditionalGeneration"),
    "MistralForCausalLM": ("mistral", "MistralForCausalLM"),
    "Qwen2ForCausalLM": ("qwen2", "Qwen2ForCausalLM"),
    "Qwen3ForCausalLM": ("qwen3", "Qwen3ForCausalLM"),
}


class ModelRegistry:
    @staticmethod
    def get_supported_archs() -> list[str]:
        return sorted(_MODELS)

    @staticmethod
    def register_model(architecture: str, module: str, class_name: str) -> None:
        _MODELS[architecture] = (module, class_name)

    @staticmethod
    def resolve_model_cls(architectures: list[str]) -> type[nn.Module]:
        for arch in architectures:
            if arch in _MODELS:
                module_name, class_name = _MODELS[arch]
                if "." not in module_name:
                    module_name = f"vllm_mini.model_executor.models.{module_name}"
                return getattr(importlib.import_module(module_name), class_name)
        raise ValueError(
            f"model architectures {architectures} are not supported; "
            f"supported architectures: {ModelRegistry.get_supported_archs()}"
        )
