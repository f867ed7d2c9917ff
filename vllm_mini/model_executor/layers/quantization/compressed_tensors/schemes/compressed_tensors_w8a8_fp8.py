"""W8A8 FP8: float8_e4m3fn weights, fp8 activations quantized per token at run time. Stage 7.

Mirrors vllm/model_executor/layers/quantization/compressed_tensors/schemes/compressed_tensors_w8a8_fp8.py.
What llm-compressor's `FP8_DYNAMIC` preset writes (format `float-quantized`): a float8_e4m3fn
`weight` [out, in] and a float `weight_scale` [out, 1] per channel; with strategy "tensor" the
scale is [1] per layer, and a fused q/k/v layer receives one per shard (`shard_indexed`) that
process_weights_after_loading requantizes to the largest, as vLLM does.

The kernel depends on the hardware (utils/w8a8_utils.py, finalize_fp8_linear): with an fp8
matmul (NVIDIA sm89+) each token is quantized to fp8 and `torch._scaled_mm` multiplies codes;
elsewhere, our CPU included, the layer runs weight-only: activations stay float and the C++
kernel of utils/fp8_ops.py reads the fp8 codes (vLLM falls back to its W8A16 scheme the same way). The fp8 rounding of
the weights, the part that changes the model's numbers, is kept either way. Next:
compressed_tensors.py, which picks a scheme for each layer.
"""

from __future__ import annotations

import torch
from torch import nn

from vllm_mini.model_executor.layers.quantization.compressed_tensors.schemes.compressed_tensors_scheme import (  # noqa: E501
    CompressedTensorsScheme,
)
from vllm_mini.model_executor.layers.quantization.compressed_tensors.schemes.compressed_tensors_w8a8_int8 import (  # noqa: E501
    STRATEGIES,
    create_scale_parameter,
    single_scale,
)
from vllm_mini.model_executor.layers.quantization.utils.w8a8_utils import (
    FP8_DTYPE,
    apply_fp8_linear,
    finalize_fp8_linear,
)


class CompressedTensorsW8A8Fp8(CompressedTensorsScheme):
    """fp8 weights (per channel or per tensor) x dynamic per-token fp8 activations.

    quantize_activations=False is the W8A16 variant (a config group without
    input_activations): float activations even where an fp8 matmul exists.
    """

    def __init__(self, strategy: str, quantize_activations: bool = True) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(
                f"compressed-tensors: W8A8 fp8 weights strategy must be one of {STRATEGIES}; "
                f"got {strategy!r}"
            )
        self.strategy = strategy
        self.quantize_activations = quantize_activations

    def create_weights(
        self,
        layer: nn.Module,
        input_size_per_partition: int,
        output_partition_sizes: list[int],
        params_dtype: torch.dtype,
    ) -> None:
        layer.logical_widths = output_partition_sizes
        layer.orig_dtype = params_dtype  # VLLM_MINI_CPU_FP8_KERNEL=0 dequantizes to it
        weight = nn.Parameter(
            torch.empty(sum(output_partition_sizes), input_size_per_partition, dtype=FP8_DTYPE),
            requires_grad=False,
        )
        layer.register_parameter("weight", weight)
        layer.register_parameter(
            "weight_scale", create_scale_parameter(self.strategy, output_partition_sizes)
        )

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        codes, scale = single_scale(layer, self.strategy)
        finalize_fp8_linear(
            layer, codes, scale, layer.orig_dtype, weight_only=not self.quantize_activations
        )

    def apply_weights(
        self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        return apply_fp8_linear(layer, x, bias)
