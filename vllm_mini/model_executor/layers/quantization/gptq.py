"""GPTQ: 4-bit weights in groups, as AutoGPTQ / gptqmodel / optimum write them. Stage 7.

Mirrors vllm/model_executor/layers/quantization/auto_gptq.py (vLLM's `gptq` method; at our pin
it lives under that file name). GPTQ (Frantar et al., 2022) rounds a layer's weights to 4 bits
one input column at a time, pushing each column's rounding error onto the columns not yet
rounded (weighted by the inverse Hessian of the layer's inputs). The result is stored like any
grouped int4 weight: per layer `qweight` int32 [in/8, out] (eight input rows per word),
`qzeros` int32 [groups, out/8], `scales` [groups, out], `g_idx` int32 [in].

config.json's `quantization_config`: `bits` (4 only here), `group_size` (-1 or a multiple of
32), `desc_act` (act-order: columns quantized in order of decreasing activation size, so
g_idx is a permutation of groups), `sym`, and `checkpoint_format`: "gptq" (v1, zeros stored
minus one; what AutoGPTQ, optimum and gptqmodel's default export write) or "gptq_v2".
w4a16_formats.py shows the unpacking; the loaders place q/k/v by output columns (qweight packs
the INPUT dimension, so an output shard is a plain column slice). Next: awq.py.
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
from vllm_mini.model_executor.layers.quantization.utils.w4a16_formats import gptq_to_int4
from vllm_mini.model_executor.layers.quantization.w4a16_linear import (
    add_param,
    finish_loading,
    same_for_every_shard_loader,
    w4a16_linear,
)

CHECKPOINT_FORMATS = {"gptq": 1, "gptq_v2": 0}  # name -> what was subtracted from stored zeros


class GPTQConfig(QuantizationConfig):
    def __init__(
        self,
        weight_bits: int = 4,
        group_size: int = 128,
        desc_act: bool = False,
        sym: bool = True,
        checkpoint_format: str = "gptq",
        lm_head_quantized: bool = False,
    ) -> None:
        if weight_bits != 4:
            raise ValueError(f"gptq: only bits=4 is supported (W4A16); got bits={weight_bits}")
        if group_size != -1 and (group_size <= 0 or group_size % 32 != 0):
            raise ValueError(
                f"gptq: group_size must be -1 or a positive multiple of 32; got {group_size}"
            )
        if checkpoint_format not in CHECKPOINT_FORMATS:
            raise ValueError(
                f"gptq: checkpoint_format must be one of {list(CHECKPOINT_FORMATS)}; "
                f"got {checkpoint_format!r}"
            )
        if lm_head_quantized:
            raise ValueError("gptq: a quantized lm_head (lm_head=true) is not supported")
        self.weight_bits = weight_bits
        self.group_size = group_size
        self.desc_act = desc_act
        self.sym = sym
        self.checkpoint_format = checkpoint_format

    def __repr__(self) -> str:
        return (
            f"GPTQConfig(bits={self.weight_bits}, group_size={self.group_size}, "
            f"desc_act={self.desc_act}, sym={self.sym}, format={self.checkpoint_format!r})"
        )

    @classmethod
    def get_name(cls) -> str:
        return "gptq"

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> GPTQConfig:
        return cls(
            weight_bits=cls.get_from_keys(config, ["bits", "w_bit"]),
            group_size=cls.get_from_keys(config, ["group_size"]),
            desc_act=bool(cls.get_from_keys(config, ["desc_act"], False)),
            sym=bool(cls.get_from_keys(config, ["sym"], True)),
            checkpoint_format=cls.get_from_keys(config, ["checkpoint_format"], "gptq"),
            lm_head_quantized=bool(cls.get_from_keys(config, ["lm_head"], False)),
        )

    def get_quant_method(self, layer: nn.Module, prefix: str) -> QuantizeMethodBase | None:
        # Linear layers only: GPTQ tools leave embeddings and (by default) the LM head float.
        return GPTQLinearMethod(self) if isinstance(layer, LinearBase) else None


class GPTQLinearMethod(QuantizeMethodBase):
    NAMES = ["qweight", "qzeros", "scales", "g_idx"]

    def __init__(self, config: GPTQConfig) -> None:
        self.config = config

    def create_weights(
        self,
        layer: nn.Module,
        input_size_per_partition: int,
        output_partition_sizes: list[int],
        params_dtype: torch.dtype,
    ) -> None:
        k, n = input_size_per_partition, sum(output_partition_sizes)
        group_size = check_group_size("gptq", self.config.group_size, k)
        if any(size % PACK_FACTOR for size in output_partition_sizes):
            raise ValueError(
                f"gptq: {layer.prefix}: output sizes {output_partition_sizes} must be multiples "
                f"of {PACK_FACTOR} (qzeros packs eight columns per int32)"
            )
        row_parallel = k != layer.input_size
        if row_parallel and self.config.desc_act:
            raise ValueError(
                f"gptq: {layer.prefix}: act-order (desc_act) checkpoints cannot split a "
                "row-parallel layer across tensor-parallel ranks here"
            )
        # Per-group tensors follow the input split of a row-parallel layer, except one group
        # per channel (group_size -1), which every rank needs whole.
        group_dim = 0 if self.config.group_size != -1 else None
        groups = k // group_size
        i32 = torch.int32
        add_param(
            layer,
            "gptq",
            "qweight",
            (k // PACK_FACTOR, n),
            i32,
            input_dim=0,
            output_dim=1,
            packed_dim=0,
            pack_factor=PACK_FACTOR,
        )
        add_param(
            layer,
            "gptq",
            "qzeros",
            (groups, n // PACK_FACTOR),
            i32,
            input_dim=group_dim,
            output_dim=1,
            packed_dim=1,
            pack_factor=PACK_FACTOR,
        )
        add_param(
            layer, "gptq", "scales", (groups, n), params_dtype, input_dim=group_dim, output_dim=1
        )
        g_idx = add_param(layer, "gptq", "g_idx", (k,), i32, input_dim=0, output_dim=None)
        g_idx.weight_loader = same_for_every_shard_loader("gptq", layer)

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        weight = gptq_to_int4(
            layer.qweight.data,
            layer.qzeros.data,
            layer.scales.data,
            layer.g_idx.data if self.config.desc_act else None,
            zero_offset=CHECKPOINT_FORMATS[self.config.checkpoint_format],
        )
        finish_loading(layer, weight, "gptq", self.NAMES)

    def apply(
        self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        return w4a16_linear(x, layer.w4a16, bias)
