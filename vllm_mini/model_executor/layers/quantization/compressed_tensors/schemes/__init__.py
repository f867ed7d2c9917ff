"""compressed-tensors schemes: one class per storage format and kernel. Stage 7.

Mirrors vllm/model_executor/layers/quantization/compressed_tensors/schemes/__init__.py. Read
compressed_tensors_scheme.py first (the interface), then one scheme. The 4-bit weight-only
scheme (compressed_tensors_wNa16.py) is imported lazily by compressed_tensors.py.
"""

from vllm_mini.model_executor.layers.quantization.compressed_tensors.schemes.compressed_tensors_scheme import (  # noqa: E501
    CompressedTensorsScheme,
)

__all__ = ["CompressedTensorsScheme"]
