"""Quantization methods. Stage 7 (the hook exists from stage 2). Mirrors vllm/model_executor/layers/quantization/."""

from vllm_mini.model_executor.layers.quantization.base_config import (
    QuantizationConfig,
    QuantizeMethodBase,
)

__all__ = ["QuantizationConfig", "QuantizeMethodBase"]
