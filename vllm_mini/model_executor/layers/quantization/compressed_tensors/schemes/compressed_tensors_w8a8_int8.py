"""W8A8 int8: int8 weights, int8 activations quantized per token at run time. Stage 7.

Mirrors vllm/model_executor/layers/quantization/compressed_tensors/schemes/compressed_tensors_w8a8_int8.py.
What llm-compressor's `W8A8` preset writes (format `int-quantized`): for every linear layer an
int8 `weight` [out, in] and a float `weight_scale`, [out, 1] for strategy "channel" or [1] for
"tensor"; symmetric, so no zero point. The activations' config says strategy "token", dynamic:
nothing is stored for them, each token's scale is computed in the forward pass.

After loading, the weight is kept transposed ([in, out], a view: no copy) because that is the
operand `torch._int_mm` takes, and the scale as a [1, out] row. A fused q/k/v layer with
per-tensor scales gets one scale per shard from the checkpoint (`shard_indexed`) and is
requantized to the largest (utils/w8a8_utils.py explains why). Next: compressed_tensors_w8a8_fp8.py.
"""

from __future__ import annotations

import torch
from torch import nn

from vllm_mini.model_executor.layers.quantization.base_config import set_weight_attrs
from vllm_mini.model_executor.layers.quantization.compressed_tensors.schemes.compressed_tensors_scheme import (  # noqa: E501
    CompressedTensorsScheme,
)
from vllm_mini.model_executor.layers.quantization.utils.w8a8_utils import (
    int8_linear,
    requantize_with_max_scale,
)

STRATEGIES = ("channel", "tensor")


def create_scale_parameter(strategy: str, output_partition_sizes: list[int]) -> nn.Parameter:
    """The weight_scale parameter for a per-channel or per-tensor 8-bit weight.

    Per channel: [out, 1], sliced and placed like the weight's rows (output_dim=0). Per
    tensor: one value per fused shard (q, k, v each come with their own), written by index.
    """
    if strategy == "channel":
        scale = nn.Parameter(
            torch.empty(sum(output_partition_sizes), 1, dtype=torch.float32), requires_grad=False
        )
        set_weight_attrs(scale, {"output_dim": 0})
        return scale
    scale = nn.Parameter(
        torch.empty(len(output_partition_sizes), dtype=torch.float32), requires_grad=False
    )
    set_weight_attrs(scale, {"output_dim": None, "shard_indexed": True})
    return scale


def single_scale(layer: nn.Module, strategy: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes [out, in], scale [out, 1] or []) with one scale per channel or per whole layer."""
    weight, scale = layer.weight.data, layer.weight_scale.data
    if strategy == "channel":
        return weight, scale
    if len(layer.logical_widths) == 1:
        return weight, scale[0]
    max_scale, weight = requantize_with_max_scale(weight, scale, layer.logical_widths)
    return weight, max_scale


class CompressedTensorsW8A8Int8(CompressedTensorsScheme):
    """Symmetric int8 weights (per channel or per tensor) x dynamic per-token int8 activations."""

    def __init__(self, strategy: str) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(
                f"compressed-tensors: W8A8 int8 weights strategy must be one of {STRATEGIES}; "
                f"got {strategy!r}"
            )
        self.strategy = strategy

    def create_weights(
        self,
        layer: nn.Module,
        input_size_per_partition: int,
        output_partition_sizes: list[int],
        params_dtype: torch.dtype,
    ) -> None:
        layer.logical_widths = output_partition_sizes
        weight = nn.Parameter(
            torch.empty(sum(output_partition_sizes), input_size_per_partition, dtype=torch.int8),
            requires_grad=False,
        )
        layer.register_parameter("weight", weight)
        layer.register_parameter(
            "weight_scale", create_scale_parameter(self.strategy, output_partition_sizes)
        )

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        weight, scale = single_scale(layer, self.strategy)
        # _int_mm multiplies [T, K] @ [K, N]: a transposed view of the [N, K] codes (column-major)
        # is that operand without a copy; oneDNN reads either layout at the same speed here.
        layer.weight = nn.Parameter(weight.t(), requires_grad=False)
        layer.weight_scale = nn.Parameter(scale.reshape(1, -1), requires_grad=False)

    def apply_weights(
        self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        # x: [T, in] float -> int8 codes and one scale per token; y: [T, out] in x's dtype.
        # (one C++ call on a CPU: quantize, torch._int_mm, scale back; utils/w8a8_utils.py)
        shape = x.shape
        y = int8_linear(x.reshape(-1, shape[-1]), layer.weight, layer.weight_scale, bias)
        return y.reshape(*shape[:-1], y.shape[-1])
