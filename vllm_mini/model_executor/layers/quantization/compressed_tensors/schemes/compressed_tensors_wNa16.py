"""W4A16 compressed-tensors: 4-bit weights packed eight to an int32, float activations. Stage 7.

Mirrors vllm/model_executor/layers/quantization/compressed_tensors/schemes/compressed_tensors_wNa16.py.
What llm-compressor writes for its W4A16 presets (GPTQ or AWQ modifiers, format
`pack-quantized`): per linear layer
- `weight_packed` int32 [out, in/8]: eight input columns per word, signed codes -8..7 stored
  plus 8 (so the nibbles are the usual unsigned 0..15);
- `weight_scale` [out, groups] (strategy "group"; one column for strategy "channel");
- `weight_zero_point` int32 [out/8, groups], packed along the OUTPUT dimension (asymmetric
  schemes only; symmetric ones have none: the zero is code 8);
- `weight_shape` int64 [2]: the unpacked [out, in], a check;
- `weight_g_idx` int32 [in] with actorder "group" (groups scattered, like GPTQ's desc_act).
The loaders place q/k/v by rows (output_dim 0); zero points pack the output dimension, so their
shard offsets are divided by 8. After loading, the same repacking and kernels as GPTQ and AWQ
run (w4a16_linear.py). Next: ../../w4a16_linear.py.
"""

from __future__ import annotations

import torch
from torch import nn

from vllm_mini.model_executor.layers.quantization.compressed_tensors.schemes.compressed_tensors_scheme import (  # noqa: E501
    CompressedTensorsScheme,
)
from vllm_mini.model_executor.layers.quantization.utils.quant_utils import (
    PACK_FACTOR,
    check_group_size,
)
from vllm_mini.model_executor.layers.quantization.utils.w4a16_formats import (
    compressed_tensors_to_int4,
)
from vllm_mini.model_executor.layers.quantization.w4a16_linear import (
    add_param,
    finish_loading,
    same_for_every_shard_loader,
    w4a16_linear,
)

METHOD = "compressed-tensors (W4A16)"


class CompressedTensorsWNA16(CompressedTensorsScheme):
    """Weight-only 4-bit integers, per group or per channel, symmetric or with zero points."""

    def __init__(
        self,
        strategy: str,
        num_bits: int,
        group_size: int | None = None,
        symmetric: bool = True,
        layer_name: str = "",
        actorder: str | None = None,
    ) -> None:
        if num_bits != 4:
            raise ValueError(
                f"{METHOD}: {layer_name}: weights.num_bits must be 4 for weight-only int "
                f"schemes; got {num_bits}"
            )
        if strategy not in ("group", "channel"):
            raise ValueError(
                f"{METHOD}: {layer_name}: weights.strategy must be 'group' or 'channel'; "
                f"got {strategy!r}"
            )
        self.group_size = -1 if strategy == "channel" or group_size is None else group_size
        if strategy == "group" and self.group_size == -1:
            raise ValueError(f"{METHOD}: {layer_name}: strategy 'group' needs a group_size")
        self.symmetric = symmetric
        self.layer_name = layer_name
        self.has_g_idx = actorder == "group"

    def create_weights(
        self,
        layer: nn.Module,
        input_size_per_partition: int,
        output_partition_sizes: list[int],
        params_dtype: torch.dtype,
    ) -> None:
        k, n = input_size_per_partition, sum(output_partition_sizes)
        group_size = check_group_size(f"{METHOD}: {self.layer_name}", self.group_size, k)
        if any(size % PACK_FACTOR for size in output_partition_sizes):
            raise ValueError(
                f"{METHOD}: {self.layer_name}: output sizes {output_partition_sizes} must be "
                f"multiples of {PACK_FACTOR}"
            )
        groups = k // group_size
        group_dim = 1 if self.group_size != -1 else None  # channelwise: not split by input
        add_param(
            layer,
            METHOD,
            "weight_packed",
            (n, k // PACK_FACTOR),
            torch.int32,
            output_dim=0,
            input_dim=1,
            packed_dim=1,
            pack_factor=PACK_FACTOR,
        )
        add_param(
            layer,
            METHOD,
            "weight_scale",
            (n, groups),
            params_dtype,
            output_dim=0,
            input_dim=group_dim,
        )
        # One [out, in] pair per checkpoint tensor; fused shards each bring theirs (same in).
        add_param(layer, METHOD, "weight_shape", (2,), torch.int64, output_dim=None, input_dim=None)
        if not self.symmetric:
            add_param(
                layer,
                METHOD,
                "weight_zero_point",
                (n // PACK_FACTOR, groups),
                torch.int32,
                output_dim=0,
                input_dim=group_dim,
                packed_dim=0,
                pack_factor=PACK_FACTOR,
            )
        if self.has_g_idx:
            g_idx = add_param(
                layer, METHOD, "weight_g_idx", (k,), torch.int32, input_dim=0, output_dim=None
            )
            g_idx.weight_loader = same_for_every_shard_loader(METHOD, layer)

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        in_features = int(layer.weight_shape.data[1])
        if layer.input_size != in_features:
            raise ValueError(
                f"{METHOD}: {self.layer_name}: weight_shape says {in_features} input columns, "
                f"the model's layer has {layer.input_size}"
            )
        names = ["weight_packed", "weight_scale", "weight_shape"]
        zero_point = None if self.symmetric else layer.weight_zero_point.data
        g_idx = layer.weight_g_idx.data if self.has_g_idx else None
        names += [n for n in ("weight_zero_point", "weight_g_idx") if hasattr(layer, n)]
        weight = compressed_tensors_to_int4(
            layer.weight_packed.data, layer.weight_scale.data, zero_point, g_idx
        )
        finish_loading(layer, weight, METHOD, names)

    def apply_weights(
        self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        return w4a16_linear(x, layer.w4a16, bias)
