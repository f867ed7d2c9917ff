"""Quantization methods, by the name `--quantization` takes. Stage 7.

Mirrors vllm/model_executor/layers/quantization/__init__.py: a name -> QuantizationConfig class
registry. Each method lives in its own module, imported only when chosen (its kernels may need
packages or hardware another method does not). `get_quant_config` in model_loader/weight_utils.py
picks the method: the user's `--quantization`, else the checkpoint's `quantization_config`.
"""

from __future__ import annotations

import importlib

from vllm_mini.config.model import QUANTIZATION_METHODS
from vllm_mini.model_executor.layers.quantization.base_config import (
    QuantizationConfig,
    QuantizeMethodBase,
    set_weight_attrs,
)

# name -> "module:ClassName" inside this package; the names are config.model.QUANTIZATION_METHODS.
_METHODS: dict[str, str] = {
    "gguf": "gguf:GGUFConfig",
    "fp8": "fp8:Fp8Config",
    "compressed-tensors": "compressed_tensors.compressed_tensors:CompressedTensorsConfig",
    "gptq": "gptq:GPTQConfig",
    "awq": "awq:AWQConfig",
}
assert tuple(_METHODS) == QUANTIZATION_METHODS, "the registry and the config disagree"


def get_quantization_config(name: str) -> type[QuantizationConfig]:
    if name not in _METHODS:
        raise ValueError(f"quantization must be one of {list(_METHODS)}; got {name!r}")
    module_name, class_name = _METHODS[name].split(":")
    try:
        module = importlib.import_module(f"{__name__}.{module_name}")
    except ModuleNotFoundError as e:
        if e.name and e.name.startswith(__name__):
            raise ValueError(f"quantization={name!r} is not implemented yet") from e
        raise
    return getattr(module, class_name)


__all__ = [
    "QUANTIZATION_METHODS",
    "QuantizationConfig",
    "QuantizeMethodBase",
    "get_quantization_config",
    "set_weight_attrs",
]
