"""Multimodal inputs: images in, placeholder token spans and pixel tensors out.

Stage 10. Mirrors vllm/multimodal/. Read in this order: inputs.py (the dataclasses a request
carries), image.py (loading and checking an image), hasher.py (an image's content hash),
processing.py (prompt placeholders -> image token spans, pixels -> tensors), registry.py (which
model gets which processor). The encoder cache is core/encoder_cache_manager.py; the model is
model_executor/models/llava.py.
"""

from vllm_mini.multimodal.inputs import MultiModalFeatureSpec, PlaceholderRange
from vllm_mini.multimodal.registry import MULTIMODAL_REGISTRY, MultiModalRegistry

__all__ = [
    "MULTIMODAL_REGISTRY",
    "MultiModalFeatureSpec",
    "MultiModalRegistry",
    "PlaceholderRange",
]
