"""Model definitions. Stage 2. Mirrors vllm/model_executor/models/."""

from vllm_mini.model_executor.models.registry import ModelRegistry

__all__ = ["ModelRegistry"]
