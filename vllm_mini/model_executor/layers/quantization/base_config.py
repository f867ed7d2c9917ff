"""The quantization hook every linear layer calls through.

Stage 7 (used from stage 2). Mirrors vllm/model_executor/layers/quantization/base_config.py. A
linear layer never multiplies by its weight directly: it asks its `quant_method` to create the
weights and to apply them. Unquantized layers use `UnquantizedLinearMethod` (in linear.py); a
quantization scheme plugs in by returning another method from `get_quant_method`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn


class QuantizeMethodBase(ABC):
    @abstractmethod
    def create_weights(
        self,
        layer: nn.Module,
        input_size_per_partition: int,
        output_partition_sizes: list[int],
        params_dtype: torch.dtype,
    ) -> None:
        """Register the layer's parameters (weight, scales, ...) on `layer`."""

    @abstractmethod
    def apply(
        self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Compute x @ W^T (+ bias) with whatever representation create_weights chose."""

    def process_weights_after_loading(self, layer: nn.Module) -> None:  # noqa: B027 (optional)
        """Convert the loaded checkpoint weights into the form `apply` runs fastest on.

        Called once per layer by the model loader after `load_weights` (vLLM:
        vllm/model_executor/model_loader/utils.py, process_weights_after_loading): the weight
        loaders see the checkpoint's layout, the forward pass sees the kernel's.
        """


class QuantizationConfig(ABC):
    @abstractmethod
    def get_name(self) -> str:
        """Short name, e.g. 'int8'."""

    @abstractmethod
    def get_quant_method(self, layer: nn.Module, prefix: str) -> QuantizeMethodBase | None:
        """The method for this layer, or None to leave it unquantized."""
