"""Reading checkpoint tensors: safetensors files, sharded or not.

Stage 2. Mirrors vllm/model_executor/model_loader/weight_utils.py. Weights are streamed one tensor
at a time (safetensors memory-maps the file), so peak memory is the model plus one tensor, never
two copies of the model. Next: default_loader.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import safe_open

if TYPE_CHECKING:
    from vllm_mini.config.model import ModelConfig
    from vllm_mini.model_executor.layers.quantization import QuantizationConfig


def default_weight_loader(param: torch.nn.Parameter, loaded_weight: torch.Tensor) -> None:
    """Copy a whole tensor into a parameter that is not sharded (norms, for example)."""
    if param.shape != loaded_weight.shape:
        raise ValueError(
            f"shape mismatch: param {tuple(param.shape)} vs checkpoint {tuple(loaded_weight.shape)}"
        )
    param.data.copy_(loaded_weight)


def get_safetensors_files(model_dir: Path) -> list[Path]:
    """The checkpoint's .safetensors files: the ones the index names, or all in the directory."""
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        return [model_dir / name for name in sorted(set(weight_map.values()))]
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ValueError(f"no *.safetensors files in {model_dir}")
    return files


def safetensors_weights_iterator(
    files: list[Path], dtype: torch.dtype
) -> Iterator[tuple[str, torch.Tensor]]:
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 - safe_open is not a dict
                tensor = f.get_tensor(name)
                # Cast float weights to the model's dtype; leave quantized payloads (int32 packed
                # 4-bit words, int8 weights, float8 weights) exactly as the checkpoint stores them.
                if tensor.is_floating_point() and tensor.element_size() > 1:
                    tensor = tensor.to(dtype)
                yield name, tensor


def get_quant_config(model_config: ModelConfig) -> QuantizationConfig:
    """The QuantizationConfig for `model_config.quantization`, from the checkpoint if it has one.

    Mirrors get_quant_config in vLLM's weight_utils.py: the checkpoint's `quantization_config`
    (config.json) is the source of truth; methods that quantize online (fp8) or need no config
    (gguf) are built without one.
    """
    from vllm_mini.model_executor.layers.quantization import get_quantization_config

    name = model_config.quantization
    assert name is not None
    config_cls = get_quantization_config(name)
    hf_quant_config = getattr(model_config.hf_config, "quantization_config", None)
    if isinstance(hf_quant_config, dict):
        return config_cls.from_config(hf_quant_config)
    return config_cls()
