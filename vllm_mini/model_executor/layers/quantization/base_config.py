"""The quantization hook every linear and embedding layer calls through.

Stage 7 (used from stage 2). Mirrors vllm/model_executor/layers/quantization/base_config.py. A
linear layer never multiplies by its weight directly: it asks its `quant_method` to create the
weights and to apply them. Unquantized layers use `UnquantizedLinearMethod` (in linear.py); a
quantization scheme plugs in by returning another method from `get_quant_method`.

How a method's parameters get loaded: the layer's weight loaders (linear.py) cut each checkpoint
tensor into this rank's piece and place packed shards (q/k/v, gate/up) by reading attributes
that `create_weights` sets on each parameter with `set_weight_attrs`, as vLLM's parameters carry
them:
- `output_dim` / `input_dim`: which tensor dimension runs along the layer's outputs / inputs
  (defaults 0 and 1: the [out, in] layout of a float weight). GPTQ's qweight is [in/8, out], so
  it sets input_dim=0, output_dim=1; `output_dim=None` means "not split by output" (a g_idx).
- `packed_dim` + `pack_factor`: that dimension stores `pack_factor` values per element (eight
  4-bit weights in one int32), so shard sizes and offsets along it are divided by the factor.
- `shard_indexed=True`: one value per packed shard (a per-tensor scale of q, k and v each):
  the loader writes element `shard index` instead of slicing rows.
A parameter that already has a `weight_loader` when `create_weights` returns keeps it (GGUF sets
its own, because q, k and v may use different block types).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import nn


def set_weight_attrs(param: torch.Tensor, attrs: dict[str, Any]) -> None:
    """Attach loader metadata to a parameter (vllm/model_executor/utils.py, set_weight_attrs)."""
    for key, value in attrs.items():
        if hasattr(param, key):
            raise AttributeError(f"parameter already has attribute {key!r}")
        setattr(param, key, value)


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

    def embedding(self, layer: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
        """Rows of W for these token ids (only methods returned for embedding layers need it)."""
        raise TypeError(f"{type(self).__name__} cannot be used for an embedding layer")

    def process_weights_after_loading(self, layer: nn.Module) -> None:  # noqa: B027 (optional)
        """Convert the loaded checkpoint weights into the form `apply` runs fastest on.

        Called once per layer by the model loader after `load_weights` (vLLM:
        vllm/model_executor/model_loader/utils.py, process_weights_after_loading): the weight
        loaders see the checkpoint's layout, the forward pass sees the kernel's.
        """


class QuantizationConfig(ABC):
    """One quantization scheme: which layers it takes and with which method.

    Built from the checkpoint's `quantization_config` (config.json) with `from_config`, or with
    no arguments for methods that quantize online (fp8) or need no config (gguf).
    """

    @classmethod
    @abstractmethod
    def get_name(cls) -> str:
        """The name `--quantization` takes, e.g. 'gptq'."""

    @classmethod
    def get_supported_act_dtypes(cls) -> list[torch.dtype]:
        """Activation dtypes the method's kernels accept (checked against --dtype at start-up)."""
        return [torch.float32, torch.bfloat16, torch.float16]

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> QuantizationConfig:
        """Build from a checkpoint's `quantization_config` dict (default: the method has none)."""
        return cls()

    @abstractmethod
    def get_quant_method(self, layer: nn.Module, prefix: str) -> QuantizeMethodBase | None:
        """The method for this layer, or None to leave it unquantized."""

    @staticmethod
    def get_from_keys(config: dict[str, Any], keys: list[str], default: Any = ...) -> Any:
        """The first of `keys` present in a checkpoint's config (tools name fields differently)."""
        for key in keys:
            if key in config:
                return config[key]
        if default is ...:
            raise ValueError(f"quantization_config has none of the fields {keys}")
        return default
