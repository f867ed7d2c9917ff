"""Multimodal processing: a prompt with image placeholders + images -> token ids, spans, pixels.

Stage 10. Mirrors vllm/multimodal/processing/processor.py (vLLM's BaseMultiModalProcessor and
the LLaVA processor of vllm/model_executor/models/llava.py). A user writes ONE placeholder token
per image ("USER: <image>\nWhat is this?"), but the vision tower turns an image into many
embeddings (LLaVA-1.5: 576 = (336 / 14)^2 patches). So each placeholder is expanded into as many
copies of the image token as the image has embeddings: the KV cache, the scheduler's token budget
and the positions then count image tokens like any other token. HF's own LlavaProcessor does the
same expansion (tests/multimodal check ours against it); the pixels come from the checkpoint's
image processor (resize, center crop, normalize). Next: registry.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vllm_mini.multimodal.hasher import hash_image
from vllm_mini.multimodal.image import check_image
from vllm_mini.multimodal.inputs import MultiModalFeatureSpec, PlaceholderRange

# Images per prompt when the user sets no limit (vLLM's default limit_mm_per_prompt).
DEFAULT_IMAGE_LIMIT = 999


def expand_placeholders(
    prompt_token_ids: list[int], image_token_id: int, num_image_tokens: list[int]
) -> tuple[list[int], list[PlaceholderRange]]:
    """Replace the i-th `image_token_id` with num_image_tokens[i] copies of it.

    Returns the new token ids and one PlaceholderRange per image, in prompt order.
    """
    num_placeholders = prompt_token_ids.count(image_token_id)
    if num_placeholders != len(num_image_tokens):
        raise ValueError(
            f"the prompt has {num_placeholders} image placeholder(s) but "
            f"{len(num_image_tokens)} image(s) were given; write one image placeholder token "
            "per image"
        )
    out: list[int] = []
    ranges: list[PlaceholderRange] = []
    for token in prompt_token_ids:
        if token == image_token_id:
            n = num_image_tokens[len(ranges)]
            ranges.append(PlaceholderRange(offset=len(out), length=n))
            out.extend([image_token_id] * n)
        else:
            out.append(token)
    return out, ranges


@dataclass
class ProcessedInputs:
    prompt_token_ids: list[int]
    mm_features: list[MultiModalFeatureSpec]


class LlavaMultiModalProcessor:
    """Placeholder expansion and pixel processing for LLaVA-1.5-style checkpoints."""

    def __init__(self, model_config, tokenizer) -> None:
        from transformers import AutoImageProcessor

        hf_config = model_config.hf_config
        self.image_token_id: int = hf_config.image_token_index
        # What a chat message writes for an image part (vLLM: the model's placeholder string).
        self.image_placeholder: str = tokenizer.convert_ids_to_tokens(self.image_token_id)
        self.num_image_tokens = self.get_num_image_tokens(hf_config)
        self.limit = (model_config.limit_mm_per_prompt or {}).get("image", DEFAULT_IMAGE_LIMIT)
        self.image_processor = AutoImageProcessor.from_pretrained(model_config.source.hf_config_dir)

    @staticmethod
    def get_num_image_tokens(hf_config: Any) -> int:
        """Embeddings per image: one per patch, plus CLS under the "full" select strategy."""
        vision = hf_config.vision_config
        num_patches = (vision.image_size // vision.patch_size) ** 2
        keep_cls = hf_config.vision_feature_select_strategy == "full"
        return num_patches + int(keep_cls)

    def apply(self, prompt_token_ids: list[int], mm_data: Any) -> ProcessedInputs:
        images = self._parse(mm_data)
        if len(images) > self.limit:
            raise ValueError(
                f"at most {self.limit} image(s) per prompt (limit_mm_per_prompt), got {len(images)}"
            )
        ids, ranges = expand_placeholders(
            prompt_token_ids, self.image_token_id, [self.num_image_tokens] * len(images)
        )
        # pixel_values: [num_images, 3, H, W], one row per image.
        pixels = self.image_processor(images=images, return_tensors="pt")["pixel_values"]
        features = [
            MultiModalFeatureSpec(
                modality="image",
                identifier=hash_image(image),
                mm_position=r,
                data={"pixel_values": pixels[i]},
            )
            for i, (image, r) in enumerate(zip(images, ranges))
        ]
        return ProcessedInputs(ids, features)

    @staticmethod
    def _parse(mm_data: Any) -> list:
        if not isinstance(mm_data, dict) or not mm_data:
            raise ValueError(
                'multi_modal_data must be a dict like {"image": PIL.Image or a list of them}, '
                f"got {mm_data!r}"[:200]
            )
        unknown = sorted(set(mm_data) - {"image"})
        if unknown:
            raise ValueError(f"multi_modal_data supports only 'image', got {unknown}")
        images = mm_data["image"]
        images = list(images) if isinstance(images, (list, tuple)) else [images]
        if not images:
            raise ValueError("multi_modal_data['image'] is an empty list")
        return [check_image(image) for image in images]
