"""What a multimodal request carries through the engine: where each image sits, and its data.

Stage 10. Mirrors vllm/multimodal/inputs.py. After processing, an image is three things:
- a PlaceholderRange: the span of prompt positions its embeddings will fill (`offset`, `length`);
- an identifier: the hash of its content (hasher.py), which names its encoder output in the
  encoder cache and joins the prefix-cache keys of the KV blocks the span touches;
- its processed data: `pixel_values` [3, H, W], what the vision tower reads.
vLLM bundles these as a MultiModalFeatureSpec per item; the scheduler reads positions and
identifiers, only the model runner touches the tensors. Next: image.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

# What a prompt dict's "multi_modal_data" holds: {"image": PIL.Image or a list of them}.
MultiModalDataDict = dict[str, Any]


@dataclass(frozen=True)
class PlaceholderRange:
    """Prompt positions [offset, offset + length) that an item's embeddings replace."""

    offset: int
    length: int

    @property
    def end(self) -> int:
        return self.offset + self.length

    def overlap(self, start: int, end: int) -> tuple[int, int] | None:
        """The part of [start, end) inside this span, or None when they do not meet."""
        lo, hi = max(start, self.offset), min(end, self.end)
        return (lo, hi) if lo < hi else None


@dataclass
class MultiModalFeatureSpec:
    """One multimodal item of one request (an image)."""

    modality: str  # "image"
    identifier: str  # content hash: the encoder cache's key and the prefix-cache extra key
    mm_position: PlaceholderRange
    # The processed inputs of the encoder, e.g. {"pixel_values": [3, H, W]}.
    data: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    @property
    def num_embeds(self) -> int:
        """Encoder output rows = placeholder tokens (every LLaVA placeholder is an embedding)."""
        return self.mm_position.length
