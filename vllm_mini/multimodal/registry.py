"""Which models take images, and the processor that prepares their inputs.

Stage 10. Mirrors vllm/multimodal/registry.py. vLLM registers a processor on each multimodal
model class with a decorator; ours maps the HF architecture name to its processor class, the way
model_executor/models/registry.py maps it to the model class (this package sits below the
models in the import layers, so the models cannot register themselves here). The front end asks
`supports_multimodal_inputs` before it accepts `multi_modal_data`. Next:
core/encoder_cache_manager.py.
"""

from __future__ import annotations

from typing import Any

from vllm_mini.multimodal.processing import LlavaMultiModalProcessor

_PROCESSORS: dict[str, type] = {
    "LlavaForConditionalGeneration": LlavaMultiModalProcessor,
}


class MultiModalRegistry:
    def supports_multimodal_inputs(self, model_config: Any) -> bool:
        return model_config.architecture in _PROCESSORS

    def get_max_tokens_per_item(self, model_config: Any) -> int:
        """Placeholder tokens (= encoder embeddings) of one image; 0 for a text-only model."""
        if not self.supports_multimodal_inputs(model_config):
            return 0
        processor_cls = _PROCESSORS[model_config.architecture]
        return processor_cls.get_num_image_tokens(model_config.hf_config)

    def create_processor(self, model_config: Any, tokenizer: Any) -> LlavaMultiModalProcessor:
        if not self.supports_multimodal_inputs(model_config):
            raise ValueError(
                f"model {model_config.model} ({model_config.architecture}) is text-only: it "
                "does not accept multi_modal_data; multimodal architectures: "
                f"{sorted(_PROCESSORS)}"
            )
        return _PROCESSORS[model_config.architecture](model_config, tokenizer)


MULTIMODAL_REGISTRY = MultiModalRegistry()
