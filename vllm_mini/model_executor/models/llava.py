"""LLaVA: a CLIP vision tower, a 2-layer MLP projector and a Llama language model.

Stage 10. Mirrors vllm/model_executor/models/llava.py. LLaVA (Liu et al., "Visual Instruction
Tuning", 2023) turns an image into tokens the language model can read:
  pixels [3, 336, 336] -> CLIP patches -> vision hidden states [577, 1024] (one per patch + CLS)
  -> select an inner layer's output, drop CLS -> [576, 1024]
  -> projector (linear, GELU, linear) -> [576, text_hidden]: 576 "soft tokens".
The engine puts those rows where the prompt's 576 image placeholder tokens are
(`embed_input_ids`), and the language model runs as usual. The model offers the two halves
separately, as vLLM's SupportsMultiModal interface does: `get_multimodal_embeddings` (the
encoder, run once per image and cached by the runner) and `forward(..., inputs_embeds)`.
Next: worker/multimodal_runner.py.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from vllm_mini.config import VllmConfig
from vllm_mini.model_executor.layers.linear import ColumnParallelLinear, RowParallelLinear
from vllm_mini.model_executor.models.clip import CLIPVisionModel
from vllm_mini.model_executor.models.registry import ModelRegistry
from vllm_mini.model_executor.models.utils import merge_multimodal_embeddings

# The language model's class, by its config's model_type (LLaVA-1.5: llama; 1.6: also mistral).
_TEXT_ARCHS = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
}


class LlavaMultiModalProjector(nn.Module):
    def __init__(self, vision_hidden: int, text_hidden: int, bias: bool, act: str, prefix: str):
        super().__init__()
        self.linear_1 = ColumnParallelLinear(
            vision_hidden, text_hidden, bias=bias, prefix=f"{prefix}.linear_1"
        )
        self.linear_2 = RowParallelLinear(
            text_hidden, text_hidden, bias=bias, prefix=f"{prefix}.linear_2"
        )
        if act != "gelu":
            raise ValueError(f"projector_hidden_act must be 'gelu', got {act!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, _ = self.linear_1(x)
        x, _ = self.linear_2(F.gelu(x))
        return x


def _num_vision_layers(config) -> int:
    """Encoder layers to build: up to the one LLaVA reads (hidden_states[-2] = all but one)."""
    layers = config.vision_feature_layer
    layers = [layers] if isinstance(layers, int) else list(layers)
    total = config.vision_config.num_hidden_layers
    # hidden_states[k] is the output of k layers (k = 0: the embeddings), k < 0 counts back.
    return max(k if k >= 0 else total + 1 + k for k in layers)


def _text_vllm_config(vllm_config: VllmConfig) -> VllmConfig:
    """The same config, with the text model's HF config, for building the language model."""
    model_config = copy.copy(vllm_config.model_config)
    model_config.hf_config = vllm_config.model_config.hf_config.text_config
    text_config = copy.copy(vllm_config)
    text_config.model_config = model_config
    return text_config


class LlavaForConditionalGeneration(nn.Module):
    supports_multimodal = True  # vLLM's SupportsMultiModal marker: the runner feeds embeddings

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        config = vllm_config.model_config.hf_config
        self.config = config
        if not isinstance(config.vision_feature_layer, int):
            raise ValueError("vision_feature_layer must be one int (a list is not implemented)")
        if config.vision_config.model_type != "clip_vision_model":
            raise ValueError(
                f"the vision tower must be CLIP, got {config.vision_config.model_type!r}"
            )
        self.select_strategy = config.vision_feature_select_strategy
        self.vision_tower = CLIPVisionModel(
            config.vision_config,
            num_hidden_layers_override=_num_vision_layers(config),
            prefix=_join(prefix, "vision_tower"),
        )
        self.multi_modal_projector = LlavaMultiModalProjector(
            config.vision_config.hidden_size,
            config.text_config.hidden_size,
            getattr(config, "multimodal_projector_bias", True),
            config.projector_hidden_act,
            prefix=_join(prefix, "multi_modal_projector"),
        )
        text_arch = _TEXT_ARCHS.get(config.text_config.model_type)
        if text_arch is None:
            raise ValueError(
                f"LLaVA's language model must be one of {sorted(_TEXT_ARCHS)}, got "
                f"{config.text_config.model_type!r}"
            )
        self.language_model = ModelRegistry.resolve_model_cls([text_arch])(
            vllm_config=_text_vllm_config(vllm_config), prefix=_join(prefix, "language_model")
        )

    # ----------------------------------------------------------------- the encoder half
    def get_multimodal_embeddings(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values [num_images, 3, H, W] -> image embeddings [num_images, tokens, hidden]."""
        features = self.vision_tower(pixel_values)  # [n, 1 + patches, vision_hidden]
        if self.select_strategy == "default":
            features = features[:, 1:]  # drop CLS: one embedding per patch
        return self.multi_modal_projector(features)

    def embed_input_ids(
        self,
        input_ids: torch.Tensor,
        mm_embeds: torch.Tensor | None = None,
        is_multimodal: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Token embeddings [T, hidden], with the `is_multimodal` rows taken from mm_embeds."""
        inputs_embeds = self.language_model.model.embed_tokens(input_ids)
        if mm_embeds is None or is_multimodal is None:
            return inputs_embeds
        return merge_multimodal_embeddings(inputs_embeds, is_multimodal, mm_embeds)

    # ----------------------------------------------------------------- the decoder half
    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.language_model(input_ids, positions, inputs_embeds=inputs_embeds)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.language_model.compute_logits(hidden_states)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Route each tensor to its part. Checkpoints spell the parts two ways: older ones
        `language_model.model.*`, `vision_tower.*`; transformers >= 4.52 `model.language_model.*`,
        `model.vision_tower.*`, `lm_head.*` (vLLM's hf_to_vllm_mapper does the same renaming)."""
        parts: dict[str, list[tuple[str, torch.Tensor]]] = {"lm": [], "vision": []}
        loaded: set[str] = set()
        projector = dict(self.multi_modal_projector.named_parameters())
        for name, tensor in weights:
            if name.startswith("model.language_model."):
                name = "language_model.model." + name.removeprefix("model.language_model.")
            elif name.startswith("lm_head."):
                name = "language_model." + name
            name = name.removeprefix("model.")
            if name.startswith("language_model."):
                parts["lm"].append((name.removeprefix("language_model."), tensor))
            elif name.startswith("vision_tower."):
                parts["vision"].append((name.removeprefix("vision_tower."), tensor))
            elif name.startswith("multi_modal_projector."):
                key = name.removeprefix("multi_modal_projector.")
                if key not in projector:
                    raise ValueError(f"checkpoint tensor {name!r} has no parameter in LLaVA")
                projector[key].weight_loader(projector[key], tensor)
                loaded.add(name)
            else:
                raise ValueError(f"checkpoint tensor {name!r} has no parameter in LLaVA")
        for sub, prefix in ((self.language_model, "language_model."), (self.vision_tower, "")):
            names = sub.load_weights(parts["lm" if prefix else "vision"])
            loaded |= {prefix + n if prefix else "vision_tower." + n for n in names}
        missing = {n for n, _ in self.named_parameters()} - loaded
        if missing:
            raise ValueError(f"weights missing from the checkpoint: {sorted(missing)[:8]}")
        return loaded


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name
