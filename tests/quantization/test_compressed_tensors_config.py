"""compressed-tensors config parsing: each layer gets the scheme its config group says.

The config dicts are the ones llm-compressor 0.14 writes (`W8A8`, `FP8_DYNAMIC`, `W4A16`
presets), abridged to the fields the engine reads. A bad config is refused with an error that
starts "compressed-tensors:" and names the field.
"""

from __future__ import annotations

import copy

import pytest
import torch

from vllm_mini.model_executor.layers.linear import (
    MergedColumnParallelLinear,
    QKVParallelLinear,
    RowParallelLinear,
    UnquantizedLinearMethod,
)
from vllm_mini.model_executor.layers.quantization import get_quantization_config
from vllm_mini.model_executor.layers.quantization.compressed_tensors.compressed_tensors import (
    CompressedTensorsConfig,
    CompressedTensorsLinearMethod,
)
from vllm_mini.model_executor.layers.quantization.compressed_tensors.schemes.compressed_tensors_w8a8_fp8 import (  # noqa: E501
    CompressedTensorsW8A8Fp8,
)
from vllm_mini.model_executor.layers.quantization.compressed_tensors.schemes.compressed_tensors_w8a8_int8 import (  # noqa: E501
    CompressedTensorsW8A8Int8,
)
from vllm_mini.model_executor.layers.vocab_parallel_embedding import ParallelLMHead


def _args(num_bits=8, type="int", strategy="channel", dynamic=False, group_size=None):
    return {
        "num_bits": num_bits,
        "type": type,
        "strategy": strategy,
        "symmetric": True,
        "dynamic": dynamic,
        "group_size": group_size,
        "actorder": None,
        "observer": "minmax",
    }


W8A8 = {
    "quant_method": "compressed-tensors",
    "format": "int-quantized",
    "quantization_status": "compressed",
    "ignore": ["lm_head"],
    "kv_cache_scheme": None,
    "sparsity_config": {},
    "config_groups": {
        "group_0": {
            "targets": ["Linear"],
            "weights": _args(),
            "input_activations": _args(strategy="token", dynamic=True),
            "output_activations": None,
            "format": "int-quantized",
        }
    },
}


def _with(group_changes: dict | None = None, **top) -> dict:
    config = copy.deepcopy(W8A8)
    config.update(top)
    if group_changes:
        config["config_groups"]["group_0"].update(group_changes)
    return config


def _qkv(config: CompressedTensorsConfig, prefix="model.layers.0.self_attn.qkv_proj"):
    return QKVParallelLinear(64, 16, 4, 2, bias=False, quant_config=config, prefix=prefix)


def test_registry_name_resolves_to_the_config_class():
    assert get_quantization_config("compressed-tensors") is CompressedTensorsConfig
    assert CompressedTensorsConfig.get_name() == "compressed-tensors"


def test_w8a8_config_gives_every_linear_the_int8_scheme_and_leaves_lm_head_float():
    config = CompressedTensorsConfig.from_config(W8A8)
    qkv = _qkv(config)
    gate_up = MergedColumnParallelLinear(
        64, [128, 128], bias=False, quant_config=config, prefix="model.layers.0.mlp.gate_up_proj"
    )
    down = RowParallelLinear(
        128, 64, bias=False, quant_config=config, prefix="model.layers.0.mlp.down_proj"
    )
    for layer in (qkv, gate_up, down):
        assert isinstance(layer.quant_method, CompressedTensorsLinearMethod)
        assert isinstance(layer.scheme, CompressedTensorsW8A8Int8)
        assert layer.weight.dtype == torch.int8
    assert qkv.weight_scale.shape == (16 * 4 + 2 * 16 * 2, 1)  # per channel: one per output row
    head = ParallelLMHead(384, 64, quant_config=config, prefix="lm_head")
    assert head.weight.dtype == torch.float32


def test_fp8_dynamic_config_gives_the_fp8_scheme():
    fp8 = _with(
        {
            "format": "float-quantized",
            "weights": _args(type="float"),
            "input_activations": _args(type="float", strategy="token", dynamic=True),
        },
        format="float-quantized",
    )
    qkv = _qkv(CompressedTensorsConfig.from_config(fp8))
    assert isinstance(qkv.scheme, CompressedTensorsW8A8Fp8)
    assert qkv.weight.dtype == torch.float8_e4m3fn


def test_ignored_and_untargeted_layers_stay_float():
    config = CompressedTensorsConfig.from_config(
        _with(ignore=["lm_head", "re:.*layers\\.1\\..*"], config_groups=W8A8["config_groups"])
    )
    assert isinstance(_qkv(config, "model.layers.1.self_attn.qkv_proj").quant_method,
                      UnquantizedLinearMethod)  # fmt: skip
    by_name = CompressedTensorsConfig.from_config(_with({"targets": ["re:.*mlp\\..*"]}))
    assert isinstance(_qkv(by_name).quant_method, UnquantizedLinearMethod)


def test_fused_layer_whose_parts_disagree_is_refused():
    config = CompressedTensorsConfig.from_config(_with(ignore=["model.layers.0.self_attn.q_proj"]))
    with pytest.raises(ValueError, match="compressed-tensors: the parts of .*qkv_proj"):
        _qkv(config)
    only_q = CompressedTensorsConfig.from_config(_with({"targets": ["re:.*q_proj"]}))
    with pytest.raises(ValueError, match="compressed-tensors: only some parts"):
        _qkv(only_q)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (_with(format="marlin-24"), "compressed-tensors: format must be one of"),
        (
            _with({"format": "sparse-bitmask"}),
            "compressed-tensors: config_groups.group_0.format must be one of",
        ),
        (
            _with({"weights": _args(num_bits=4, strategy="group", group_size=0)}),
            "compressed-tensors: config_groups.group_0.weights.group_size must be a positive",
        ),
        (
            _with({"weights": _args(strategy="channel", group_size=128)}),
            "group_size is only meaningful with strategy 'group'",
        ),
        (
            _with({"weights": _args(strategy="block")}),
            "config_groups.group_0.weights.strategy must be one of",
        ),
        (
            _with({"weights": _args(num_bits=2)}),
            "config_groups.group_0.weights.num_bits must be 4 or 8",
        ),
        (
            _with({"weights": _args(type="float")}),
            "format 'int-quantized' stores int weights, but config_groups.group_0.weights.type",
        ),
        (_with({"targets": []}), "config_groups.group_0.targets must be a non-empty list"),
        (_with(kv_cache_scheme={"num_bits": 8}), "kv_cache_scheme is not supported"),
        (_with(config_groups={}), "config_groups must be a non-empty dict"),
        (_with(ignore="lm_head"), "ignore must be a list"),
    ],
)
def test_bad_config_names_the_field(config, message):
    with pytest.raises(ValueError, match=message):
        CompressedTensorsConfig.from_config(config)


def test_unsupported_activation_scheme_names_the_layer_and_the_fields():
    static = CompressedTensorsConfig.from_config(
        _with({"input_activations": _args(strategy="tensor", dynamic=False)})
    )
    with pytest.raises(ValueError, match="qkv_proj: input_activations must be 8-bit, dynamic"):
        _qkv(static)
    grouped = CompressedTensorsConfig.from_config(
        _with({"weights": _args(strategy="group", group_size=32)})
    )
    with pytest.raises(ValueError, match="8-bit weights must be symmetric with strategy"):
        _qkv(grouped)


def test_targeted_lm_head_is_refused_with_advice():
    config = CompressedTensorsConfig.from_config(
        _with({"targets": ["Linear", "lm_head"]}, ignore=[])
    )
    with pytest.raises(ValueError, match="add 'lm_head' to 'ignore'"):
        ParallelLMHead(384, 64, quant_config=config, prefix="lm_head")


def test_pack_quantized_dispatches_to_the_wna16_scheme():
    w4a16 = _with(
        {
            "format": "pack-quantized",
            "weights": _args(num_bits=4, strategy="group", group_size=32),
            "input_activations": None,
        },
        format="pack-quantized",
    )
    config = CompressedTensorsConfig.from_config(w4a16)
    assert type(_qkv(config).scheme).__name__ == "CompressedTensorsWNA16"
