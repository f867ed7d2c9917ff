"""AWQ: activation-aware 4-bit weights, as AutoAWQ (GEMM version) writes them. Stage 7.

Mirrors vllm/model_executor/layers/quantization/auto_awq.py (vLLM's `awq` method; at our pin it
lives under that file name). AWQ (Lin et al., 2023) keeps plain round-to-nearest 4-bit groups
but first scales up the input channels that see large activations (and scales the previous
layer down to match), so the weights that matter most lose the least precision. Only the
stored layout differs from GPTQ: per layer `qweight` int32 [in, out/8], packing eight OUTPUT
columns per word in the order 0,2,4,6,1,3,5,7; `qzeros` int32 [groups, out/8], same order,
true zeros; `scales` [groups, out]. No act-order.

Because qweight packs the output dimension, q/k/v and gate/up shards are placed at offsets
divided by 8 (the linear loaders do that when `packed_dim == output_dim`).

config.json's `quantization_config`: `bits`/`w_bit` (4), `group_size`/`q_group_size`,
`zero_point` (asymmetric; AutoAWQ's default), `version` ("gemm"; "gemv" packs differently),
`modules_to_not_convert` (layers kept float). Next: compressed_tensors/schemes/
compressed_tensors_wNa16.py.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vllm_mini.model_executor.layers.linear import LinearBase
from vllm_mini.model_executor.layers.quantization.base_config import (
    QuantizationConfig,
    QuantizeMethodBase,
)
from vllm_mini.model_executor.layers.quantization.utils.quant_utils import (
    PACK_FACTOR,
    check_group_size,
)
from vllm_mini.model_executor.layers.quantization.utils.w4a16_formats import awq_to_int4
from vllm_mini.model_executor.layers.quantization.w4a16_linear import (
    add_param,
    finish_loading,
    w4a16_linear,
)


class AWQConfig(QuantizationConfig):
    def __init__(
        self,
        weight_bits: int = 4,
        group_size: int = 128,
        zero_point: bool = True,
        version: str = "gemm",
        modules_to_not_convert: list[str] | None = None,
    ) -> None:
        if weight_bits != 4:
            raise ValueError(f"awq: only bits=4 is supported (W4A16); got bits={weight_bits}")
        if group_size != -1 and (group_size <= 0 or group_size % 32 != 0):
            raise ValueError(
                f"awq: group_size must be -1 or a positive multiple of 32; got {group_size}"
            )
        if str(version).lower() != "gemm":
            raise ValueError(f"awq: only version 'gemm' is supported; got {version!r}")
        self.weight_bits = weight_bits
        self.group_size = group_size
        self.zero_point = zero_point
        self.modules_to_not_convert = modules_to_not_convert or []

    def __repr__(self) -> str:
        return (
            f"AWQConfig(bits={self.weight_bits}, group_size={self.group_size}, "
            f"zero_point={self.zero_point})"
        )

    @classmethod
    def get_name(cls) -> str:
        return "awq"

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> AWQConfig:
        return cls(
            weight_bits=cls.get_from_keys(config, ["w_bit", "bits"]),
            group_size=cls.get_from_keys(config, ["q_group_size", "group_size"]),
            zero_point=bool(cls.get_from_keys(config, ["zero_point"], True)),
            version=cls.get_from_keys(config, ["version"], "gemm"),
            modules_to_not_convert=cls.get_from_keys(config, ["modules_to_not_convert"], None),
        )

    def get_quant_method(self, layer: nn.Module, prefix: str) -> QuantizeMethodBase | None:
        if not isinstance(layer, LinearBase):
            return None
        # Names are the checkpoint's (q_proj); ours may be fused (qkv_proj), so match parts.
        if any(name in prefix for name in self.modules_to_not_convert):
            return None
        return AWQLinearMethod(self)


class AWQLinearMethod(QuantizeMethodBase):
    NAMES = ["qweight", "qzeros", "scales"]

    def __init__(self, config: AWQConfig) -> None:
        self.config = config

    def create_weights(
        self,
        layer: nn.Module,
        input_size_per_partition: int,
        output_partition_sizes: list[int],
        params_dtype: torch.dtype,
    ) -> None:
        k, n = input_size_per_partition, sum(output_partition_sizes)
        group_size = check_group_size("awq", self.config.group_size, k)
        if any(size % PACK_FACTOR for size in output_partition_sizes):
            raise ValueError(
                f"awq: {layer.prefix}: output sizes {output_partition_sizes} must be multiples "
                f"of {PACK_FACTOR} (qweight packs eight output columns per int32)"
            )
        group_dim = 0 if self.config.group_size != -1 else None
        groups = k // group_size
        i32 = torch.int32
        add_param(
            layer,
            "awq",
            "qweight",
            (k, n // PACK_FACTOR),
            i32,
            input_dim=0,
            output_dim=1,
            packed_dim=1,
            pack_factor=PACK_FACTOR,
        )
        add_param(
            layer,
            "awq",
            "qzeros",
            (groups, n // PACK_FACTOR),
            i32,
            input_dim=group_dim,
            output_dim=1,
            packed_dim=1,
            pack_factor=PACK_FACTOR,
        )
        add_param(
            layer, "awq", "scales", (groups, n), params_dtype, input_dim=group_dim, output_dim=1
        )

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        weight = awq_to_int4(layer.qweight.data, layer.qzeros.data, layer.scales.data)
        if not self.config.zero_point:  # symmetric AWQ: every zero is the middle code
            weight.zeros.fill_(8)
        finish_loading(layer, weight, "awq", self.NAMES)

    def apply(
        self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        return w4a16_linear(x, layer.w4a16, bias)
