"""FP8: float8_e4m3fn weights, quantized while loading a float checkpoint or read from one. Stage 7.

Mirrors vllm/model_executor/layers/quantization/fp8.py. Two ways in:

- online (`LLM(model, quantization="fp8")` on an ordinary float checkpoint): every linear
  layer is created with a float weight, loaded as usual, and `process_weights_after_loading`
  rounds it to fp8 with one scale per output channel (vLLM uses one per tensor; the channel
  scale costs nothing more here and loses less; `Fp8Config(weight_per_channel=False)` gives
  vLLM's choice). No calibration: the scales come from the weights themselves.
- serialized (config.json says `quant_method: fp8`, `activation_scheme: dynamic`): the fp8
  `weight` and a per-tensor `weight_scale` come from the checkpoint; a fused q/k/v layer gets
  one scale per shard and is requantized to the largest, as in compressed-tensors.

Activations are quantized per token at run time where the hardware multiplies fp8; elsewhere
(our CPU) the layer runs weight-only (utils/w8a8_utils.py, finalize_fp8_linear): the codes stay
in memory, 1 byte a weight, and the C++ kernel of utils/fp8_ops.py widens them next to float
activations. Next:
compressed_tensors/compressed_tensors.py, the same kernels reached from llm-compressor's format.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vllm_mini.model_executor.layers.linear import LinearBase
from vllm_mini.model_executor.layers.quantization.base_config import (
    QuantizationConfig,
    QuantizeMethodBase,
    set_weight_attrs,
)
from vllm_mini.model_executor.layers.quantization.utils.w8a8_utils import (
    FP8_DTYPE,
    apply_fp8_linear,
    finalize_fp8_linear,
    quantize_weight_fp8,
    requantize_with_max_scale,
)

ACTIVATION_SCHEMES = ("dynamic",)  # "static" (a calibrated input_scale) is not implemented
_PACKED = {"qkv_proj": ["q_proj", "k_proj", "v_proj"], "gate_up_proj": ["gate_proj", "up_proj"]}


class Fp8Config(QuantizationConfig):
    def __init__(
        self,
        is_checkpoint_fp8_serialized: bool = False,
        activation_scheme: str = "dynamic",
        ignored_layers: list[str] | None = None,
        weight_per_channel: bool = True,
    ) -> None:
        if activation_scheme not in ACTIVATION_SCHEMES:
            raise ValueError(
                f"fp8: activation_scheme must be one of {ACTIVATION_SCHEMES}; "
                f"got {activation_scheme!r}"
            )
        self.is_checkpoint_fp8_serialized = is_checkpoint_fp8_serialized
        self.activation_scheme = activation_scheme
        self.ignored_layers = ignored_layers or []
        self.weight_per_channel = weight_per_channel

    @classmethod
    def get_name(cls) -> str:
        return "fp8"

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Fp8Config:
        """A checkpoint already in fp8 (its config.json's quantization_config)."""
        method = config.get("quant_method", "")
        if "fp8" not in method:
            raise ValueError(f"fp8: quant_method must name fp8; got {method!r}")
        if config.get("weight_block_size") is not None:
            raise ValueError(
                "fp8: block-wise scales (weight_block_size="
                f"{config['weight_block_size']}) are not supported; per-tensor scales only"
            )
        activation_scheme = cls.get_from_keys(config, ["activation_scheme"], "dynamic")
        ignored = cls.get_from_keys(config, ["ignored_layers", "modules_to_not_convert"], None)
        return cls(True, activation_scheme, ignored, weight_per_channel=False)

    def get_quant_method(self, layer: nn.Module, prefix: str) -> QuantizeMethodBase | None:
        if isinstance(layer, LinearBase) and not self._is_ignored(prefix):
            return Fp8LinearMethod(self)
        return None  # embeddings, the LM head and ignored layers stay float

    def _is_ignored(self, prefix: str) -> bool:
        head, _, last = prefix.rpartition(".")
        names = [f"{head}.{part}" for part in _PACKED.get(last, [])] or [prefix]
        ignored = [name in self.ignored_layers for name in names]
        if any(ignored) and not all(ignored):
            raise ValueError(f"fp8: ignored_layers names only some parts of the fused {prefix}")
        return all(ignored)


class Fp8LinearMethod(QuantizeMethodBase):
    def __init__(self, quant_config: Fp8Config) -> None:
        self.quant_config = quant_config

    def create_weights(
        self,
        layer: nn.Module,
        input_size_per_partition: int,
        output_partition_sizes: list[int],
        params_dtype: torch.dtype,
    ) -> None:
        layer.logical_widths = output_partition_sizes
        layer.orig_dtype = params_dtype
        serialized = self.quant_config.is_checkpoint_fp8_serialized
        # Online: a float weight, exactly as an unquantized layer has it (quantized after load).
        weight = nn.Parameter(
            torch.empty(
                sum(output_partition_sizes),
                input_size_per_partition,
                dtype=FP8_DTYPE if serialized else params_dtype,
            ),
            requires_grad=False,
        )
        layer.register_parameter("weight", weight)
        if serialized:
            scale = nn.Parameter(
                torch.empty(len(output_partition_sizes), dtype=torch.float32), requires_grad=False
            )
            set_weight_attrs(scale, {"output_dim": None, "shard_indexed": True})
            layer.register_parameter("weight_scale", scale)

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        if self.quant_config.is_checkpoint_fp8_serialized:
            codes, scale = layer.weight.data, layer.weight_scale.data
            if len(layer.logical_widths) > 1:
                scale, codes = requantize_with_max_scale(codes, scale, layer.logical_widths)
            else:
                scale = scale[0]
        else:
            codes, scale = quantize_weight_fp8(
                layer.weight.data, self.quant_config.weight_per_channel
            )
        finalize_fp8_linear(layer, codes, scale, layer.orig_dtype)

    def apply(
        self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        return apply_fp8_linear(layer, x, bias)
