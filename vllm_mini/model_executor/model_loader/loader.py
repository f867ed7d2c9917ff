"""Model loaders: build the model on the right device and dtype, then fill its weights.

Stage 2. Mirrors vllm/model_executor/model_loader/{base_loader,default_loader,dummy_loader}.py
(GGUF loading lives in the separate vllm-gguf-plugin at the pin). Every loader does the same two steps: construct the model class the registry
names (inside `set_current_vllm_config`, so layers can read it), then feed `load_weights` an
iterator of (HF name, tensor). Only the iterator differs. Next: models/llama.py's load_weights.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import nn

from vllm_mini.config import VllmConfig, set_current_vllm_config
from vllm_mini.logger import init_logger
from vllm_mini.model_executor.layers.quantization import QuantizeMethodBase
from vllm_mini.model_executor.model_loader.weight_utils import (
    get_quant_config,
    get_safetensors_files,
    safetensors_weights_iterator,
)
from vllm_mini.model_executor.models import ModelRegistry

logger = init_logger(__name__)


def _weights_iterator(vllm_config: VllmConfig) -> Iterator[tuple[str, torch.Tensor]] | None:
    """(name, tensor) pairs from the checkpoint, or None for dummy weights."""
    model_config = vllm_config.model_config
    fmt = vllm_config.load_config.load_format
    source = model_config.source
    if fmt == "dummy":
        if model_config.quantization == "gguf":
            raise ValueError(
                "quantization='gguf' runs the GGUF file's blocks; load_format='dummy' has none: "
                "pass dtype='float32' (or bfloat16) for dummy float weights"
            )
        return None
    if source.gguf_file is not None:
        if fmt not in ("auto", "gguf"):
            raise ValueError(f"load_format must be auto or gguf for a .gguf model, got {fmt!r}")
        from vllm_mini.model_executor.model_loader.gguf_loader import gguf_weights_iterator

        return gguf_weights_iterator(
            source.gguf_file,
            dtype=model_config.dtype,
            hf_config=model_config.hf_config,
            keep_blocks=model_config.quantization == "gguf",
        )
    if fmt == "gguf":
        raise ValueError("load_format='gguf' needs a .gguf model file")
    files = get_safetensors_files(source.hf_config_dir)
    return safetensors_weights_iterator(files, model_config.dtype)


def _init_dummy_weights(model: nn.Module, seed: int) -> None:
    """Small random weights (vLLM's dummy loader): right shapes, meaningless values."""
    gen = torch.Generator().manual_seed(seed)
    for name, param in model.named_parameters():
        if "norm" in name:
            param.data.fill_(1.0)
        else:
            param.data.copy_(torch.empty(param.shape).uniform_(-0.05, 0.05, generator=gen))


def process_weights_after_loading(model: nn.Module) -> None:
    """Let every layer's quant method turn checkpoint weights into its kernel's layout."""
    for module in model.modules():
        quant_method = getattr(module, "quant_method", None)
        if isinstance(quant_method, QuantizeMethodBase):
            quant_method.process_weights_after_loading(module)


def _set_quant_config(vllm_config: VllmConfig) -> None:
    """Build the quantization method's config and check it can run this dtype.

    vLLM builds it in VllmConfig (vllm/config/vllm.py, _get_quantization_config); ours sits here
    because the method classes live in model_executor/, above config/ in the import layers.
    """
    model_config = vllm_config.model_config
    if model_config.quantization is None:
        vllm_config.quant_config = None
        return
    quant_config = get_quant_config(model_config)
    supported = quant_config.get_supported_act_dtypes()
    if model_config.dtype not in supported:
        raise ValueError(
            f"dtype {model_config.dtype} is not supported by quantization="
            f"{quant_config.get_name()!r}; supported: {supported}"
        )
    vllm_config.quant_config = quant_config


def get_model(
    vllm_config: VllmConfig, keep_weight: Callable[[str], bool] | None = None
) -> nn.Module:
    """Build the model and load its weights; `keep_weight(name)` False skips a checkpoint tensor
    (a draft model made of the target's first layers skips the rest, stage 11)."""
    model_config = vllm_config.model_config
    _set_quant_config(vllm_config)
    model_cls = ModelRegistry.resolve_model_cls(
        getattr(model_config.hf_config, "architectures", None) or ["LlamaForCausalLM"]
    )
    device = vllm_config.device_config.torch_device
    old_dtype = torch.get_default_dtype()
    torch.set_default_dtype(model_config.dtype)
    try:
        with set_current_vllm_config(vllm_config), torch.device(device):
            model = model_cls(vllm_config=vllm_config)
    finally:
        torch.set_default_dtype(old_dtype)
    weights = _weights_iterator(vllm_config)
    if weights is None:
        _init_dummy_weights(model, model_config.seed)
    else:
        with torch.no_grad():
            model.load_weights(
                (name, t.to(device))
                for name, t in weights
                if keep_weight is None or keep_weight(name)
            )
    process_weights_after_loading(model)
    logger.info(
        "loaded %s (%s, %.1fM params, %s) on %s",
        model_config.model,
        model_cls.__name__,
        sum(p.numel() for p in model.parameters()) / 1e6,
        model_config.dtype,
        device,
    )
    return model.eval()
