"""The interface every compressed-tensors scheme implements. Stage 7.

Mirrors vllm/model_executor/layers/quantization/compressed_tensors/schemes/compressed_tensors_scheme.py.
A compressed-tensors checkpoint can quantize different layers differently (its `config_groups`),
so the config (compressed_tensors.py) picks one scheme object per linear layer and keeps it on
the layer as `layer.scheme`; `CompressedTensorsLinearMethod` forwards the three hooks of a
quantize method to it. A scheme is one storage format plus the kernel that multiplies by it:
W8A8 int8 (compressed_tensors_w8a8_int8.py), W8A8 FP8 (compressed_tensors_w8a8_fp8.py), 4-bit
weight-only (compressed_tensors_wNa16.py). Next: compressed_tensors_w8a8_int8.py.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn


class CompressedTensorsScheme(ABC):
    """Create a layer's quantized parameters, convert them after loading, multiply by them."""

    @abstractmethod
    def create_weights(
        self,
        layer: nn.Module,
        input_size_per_partition: int,
        output_partition_sizes: list[int],
        params_dtype: torch.dtype,
    ) -> None:
        """Register the checkpoint's tensors on `layer` with their loader attributes.

        Names are the checkpoint's (`weight`, `weight_scale`, `weight_packed`, ...), so the
        model's `load_weights` finds them by name; `set_weight_attrs` tells the linear weight
        loaders how to slice and place each one (base_config.py lists the attributes).
        `output_partition_sizes` has one entry per fused shard (q, k, v / gate, up).
        """

    @abstractmethod
    def apply_weights(
        self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        """y = x @ W^T (+ bias) in x's dtype. x: [num_tokens, in] -> y: [num_tokens, out]."""

    @abstractmethod
    def process_weights_after_loading(self, layer: nn.Module) -> None:
        """Turn the checkpoint's layout into the kernel's (one call per layer, after loading)."""
