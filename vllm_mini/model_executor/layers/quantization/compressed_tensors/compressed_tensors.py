"""compressed-tensors: which scheme each linear layer of an llm-compressor checkpoint runs. Stage 7.

Mirrors vllm/model_executor/layers/quantization/compressed_tensors/compressed_tensors.py. The
checkpoint's config.json carries a `quantization_config` like (W8A8 int8, abridged):

    {"quant_method": "compressed-tensors", "format": "int-quantized", "ignore": ["lm_head"],
     "config_groups": {"group_0": {"targets": ["Linear"],
        "weights": {"num_bits": 8, "type": "int", "strategy": "channel", "symmetric": true},
        "input_activations": {"num_bits": 8, "type": "int", "strategy": "token",
                              "dynamic": true, "symmetric": true}}}}

Each group says how the layers its `targets` name store weights and treat activations;
`ignore` keeps layers float; `format` says how the tensors are laid out on disk (int8 / fp8 as
is for int-, float- and naive-quantized; 4-bit codes packed eight to an int32 for
pack-quantized). For every linear layer `get_quant_method` finds its group (utils.py) and turns
(weights, input_activations, format) into a scheme object (schemes/), kept on the layer as
`layer.scheme`. Errors say "compressed-tensors: <reason>" and name the field. Next: schemes/.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from vllm_mini.model_executor.layers.linear import LinearBase
from vllm_mini.model_executor.layers.quantization.base_config import (
    QuantizationConfig,
    QuantizeMethodBase,
)
from vllm_mini.model_executor.layers.quantization.compressed_tensors.schemes import (
    CompressedTensorsScheme,
)
from vllm_mini.model_executor.layers.quantization.compressed_tensors.utils import (
    PACKED_MODULES_MAPPING,
    QuantArgs,
    config_error,
    find_matched_target,
    should_ignore_layer,
)
from vllm_mini.model_executor.layers.vocab_parallel_embedding import VocabParallelEmbedding

# On-disk layouts: the first three store 8-bit codes as int8 / float8 tensors, pack-quantized
# packs sub-byte codes into int32 words (read by the W4A16 scheme).
FORMATS = ("int-quantized", "float-quantized", "naive-quantized", "pack-quantized")


@dataclass(frozen=True)
class SchemeArgs:
    """One config group, parsed: what its targets' weights and inputs look like."""

    weights: QuantArgs
    input_activations: QuantArgs | None
    format: str


def _parse_format(value: Any, where: str) -> str:
    if value not in FORMATS:
        raise config_error(f"{where} must be one of {FORMATS}; got {value!r}")
    return value


def _parse_group(name: str, group: Any, default_format: str | None) -> tuple[list, SchemeArgs]:
    where = f"config_groups.{name}"
    if not isinstance(group, dict):
        raise config_error(f"{where} must be a dict; got {group!r}")
    targets = group.get("targets")
    if not isinstance(targets, list) or not targets or not all(isinstance(t, str) for t in targets):
        raise config_error(f"{where}.targets must be a non-empty list of names; got {targets!r}")
    if group.get("weights") is None:
        raise config_error(f"{where}.weights is missing (activation-only groups are not supported)")
    if group.get("output_activations") is not None:
        raise config_error(f"{where}.output_activations is not supported; it must be null")
    fmt = group.get("format") or default_format
    if fmt is None:
        raise config_error(f"'format' is missing (neither {where}.format nor the top level has it)")
    fmt = _parse_format(fmt, f"{where}.format" if group.get("format") else "format")
    weights = QuantArgs.parse(group["weights"], f"{where}.weights")
    raw_input = group.get("input_activations")
    inputs = None if raw_input is None else QuantArgs.parse(raw_input, f"{where}.input_activations")
    _check_consistent(weights, inputs, fmt, where)
    return targets, SchemeArgs(weights, inputs, fmt)


def _check_consistent(weights: QuantArgs, inputs: QuantArgs | None, fmt: str, where: str) -> None:
    """Combinations of fields that no checkpoint can mean."""
    stored = {"int-quantized": "int", "float-quantized": "float", "pack-quantized": "int"}
    if fmt in stored and weights.type != stored[fmt]:
        raise config_error(
            f"format {fmt!r} stores {stored[fmt]} weights, but {where}.weights.type is "
            f"{weights.type!r}"
        )
    if weights.dynamic:
        raise config_error(f"{where}.weights.dynamic must be false: weights are quantized once")
    if weights.strategy == "token":
        raise config_error(f"{where}.weights.strategy 'token' is for activations")
    if inputs is not None and inputs.strategy in ("channel", "group"):
        raise config_error(
            f"{where}.input_activations.strategy must be 'token' or 'tensor'; got "
            f"{inputs.strategy!r}"
        )


class CompressedTensorsConfig(QuantizationConfig):
    def __init__(
        self,
        target_scheme_map: dict[str, SchemeArgs],
        ignore: list[str],
        packed_modules_mapping: dict[str, list[str]] | None = None,
    ) -> None:
        self.target_scheme_map = target_scheme_map  # target -> its group's args
        self.ignore = ignore
        self.packed_modules_mapping = packed_modules_mapping or PACKED_MODULES_MAPPING

    @classmethod
    def get_name(cls) -> str:
        return "compressed-tensors"

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> CompressedTensorsConfig:
        groups = config.get("config_groups")
        if not isinstance(groups, dict) or not groups:
            raise config_error(f"config_groups must be a non-empty dict; got {groups!r}")
        for key in ("kv_cache_scheme", "sparsity_config", "transform_config"):
            if config.get(key):
                raise config_error(f"{key} is not supported; it must be null or empty")
        default_format = config.get("format")
        if default_format is not None:
            default_format = _parse_format(default_format, "format")
        ignore = config.get("ignore") or []
        if not isinstance(ignore, list) or not all(isinstance(i, str) for i in ignore):
            raise config_error(
                f"ignore must be a list of layer names or 're:' regexes; got {ignore!r}"
            )
        target_scheme_map: dict[str, SchemeArgs] = {}
        for name, group in groups.items():
            targets, args = _parse_group(name, group, default_format)
            for target in targets:
                if target in target_scheme_map:
                    raise config_error(f"target {target!r} is in more than one config group")
                target_scheme_map[target] = args
        return cls(target_scheme_map, ignore)

    def get_quant_method(self, layer: nn.Module, prefix: str) -> QuantizeMethodBase | None:
        if isinstance(layer, LinearBase):
            scheme = self.get_scheme(layer, prefix)
            if scheme is None:
                return None  # a float layer (ignored or untargeted): UnquantizedLinearMethod
            layer.scheme = scheme
            return CompressedTensorsLinearMethod()
        if isinstance(layer, VocabParallelEmbedding) and self.get_scheme_args(layer, prefix):
            raise config_error(
                f"{prefix} is targeted, but quantized embeddings and LM heads are not supported: "
                f"add {prefix!r} to 'ignore'"
            )
        return None

    def get_scheme_args(self, layer: nn.Module, layer_name: str) -> SchemeArgs | None:
        """The config group that quantizes this layer, or None if it stays float."""
        if should_ignore_layer(layer_name, self.ignore, self.packed_modules_mapping):
            return None
        target = find_matched_target(
            layer_name,
            type(layer).__name__,
            self.target_scheme_map,
            self.packed_modules_mapping,
        )
        return None if target is None else self.target_scheme_map[target]

    def get_scheme(self, layer: nn.Module, layer_name: str) -> CompressedTensorsScheme | None:
        args = self.get_scheme_args(layer, layer_name)
        return None if args is None else scheme_from_args(args, layer_name)


def scheme_from_args(args: SchemeArgs, layer_name: str) -> CompressedTensorsScheme:
    """(weights, input_activations, format) -> the scheme that runs it (vLLM:
    _get_scheme_from_parts); the checks read like the table in the module docstring."""
    from vllm_mini.model_executor.layers.quantization.compressed_tensors.schemes import (
        compressed_tensors_w8a8_fp8 as fp8,
    )
    from vllm_mini.model_executor.layers.quantization.compressed_tensors.schemes import (
        compressed_tensors_w8a8_int8 as int8,
    )

    w, a = args.weights, args.input_activations
    if args.format == "pack-quantized" or (a is None and w.type == "int"):
        return _wna16_scheme(w, layer_name)
    if w.num_bits != 8 or w.strategy not in ("channel", "tensor") or not w.symmetric:
        raise config_error(
            f"{layer_name}: 8-bit weights must be symmetric with strategy 'channel' or "
            f"'tensor'; got num_bits={w.num_bits}, strategy={w.strategy!r}, "
            f"symmetric={w.symmetric}"
        )
    if a is None:  # fp8 weight-only (W8A16 fp8): activations stay float
        return fp8.CompressedTensorsW8A8Fp8(w.strategy, quantize_activations=False)
    if not (a.dynamic and a.symmetric and a.strategy == "token" and a.num_bits == 8):
        raise config_error(
            f"{layer_name}: input_activations must be 8-bit, dynamic, symmetric, per token "
            f"(presets W8A8, FP8_DYNAMIC); got num_bits={a.num_bits}, dynamic={a.dynamic}, "
            f"symmetric={a.symmetric}, strategy={a.strategy!r}"
        )
    if a.type != w.type:
        raise config_error(
            f"{layer_name}: weights.type {w.type!r} and input_activations.type {a.type!r} differ"
        )
    if w.type == "int":
        return int8.CompressedTensorsW8A8Int8(w.strategy)
    return fp8.CompressedTensorsW8A8Fp8(w.strategy)


def _wna16_scheme(w: QuantArgs, layer_name: str) -> CompressedTensorsScheme:
    """Weight-only int (4/8-bit, pack-quantized): the W4A16 scheme, imported only when used."""
    from vllm_mini.model_executor.layers.quantization.compressed_tensors.schemes.compressed_tensors_wNa16 import (  # noqa: E501
        CompressedTensorsWNA16,
    )

    return CompressedTensorsWNA16(
        strategy=w.strategy,
        num_bits=w.num_bits,
        group_size=w.group_size,
        symmetric=w.symmetric,
        layer_name=layer_name,
        actorder=w.actorder,
    )


class CompressedTensorsLinearMethod(QuantizeMethodBase):
    """Forwards a linear layer's quantize-method hooks to its `layer.scheme`."""

    def create_weights(
        self,
        layer: nn.Module,
        input_size_per_partition: int,
        output_partition_sizes: list[int],
        params_dtype: torch.dtype,
    ) -> None:
        layer.scheme.create_weights(
            layer, input_size_per_partition, output_partition_sizes, params_dtype
        )

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        layer.scheme.process_weights_after_loading(layer)

    def apply(
        self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        return layer.scheme.apply_weights(layer, x, bias)
