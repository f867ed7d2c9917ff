"""Model loading: checkpoint -> model with weights. Stage 2. Mirrors vllm/model_executor/model_loader/.

Read loader.py first, then weight_utils.py (safetensors) and gguf_loader.py (the default model;
its config is read by transformers_utils/gguf_utils.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

    from vllm_mini.config import VllmConfig


def get_model(
    vllm_config: VllmConfig, keep_weight: Callable[[str], bool] | None = None
) -> nn.Module:
    # Imported here: models/llama.py imports weight_utils from this package, and the loader
    # imports the models, so a module-level import would be circular.
    from vllm_mini.model_executor.model_loader.loader import get_model as _get_model

    return _get_model(vllm_config, keep_weight)


__all__ = ["get_model"]
