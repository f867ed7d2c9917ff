"""Model loading: checkpoint -> model with weights. Stage 2. Mirrors vllm/model_executor/model_loader/.

Read loader.py first, then weight_utils.py (safetensors) and gguf_loader.py (the default model).
"""

from vllm_mini.model_executor.model_loader.loader import get_model

__all__ = ["get_model"]
