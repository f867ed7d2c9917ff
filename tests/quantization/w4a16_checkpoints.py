"""Synthetic W4A16 checkpoints: a float HF checkpoint quantized (round-to-nearest) and written in
GPTQ, AWQ or compressed-tensors layout, plus the float checkpoint it stands for exactly.

Used until (and beside) checkpoints from the real tools: the layouts are the tools' (see
vllm_mini/model_executor/layers/quantization/utils/w4a16_formats.py), the rounding is plain RTN.
`dequantized/` holds the same model with every linear weight replaced by dequant(codes), so HF
transformers loading it is a peer for the quantized model's logits.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from vllm_mini.model_executor.layers.quantization.utils.quant_utils import (
    dequantize_int4,
    quantize_int4,
)
from vllm_mini.model_executor.layers.quantization.utils.w4a16_formats import (
    awq_from_int4,
    compressed_tensors_from_int4,
    gptq_from_int4,
)

LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Layers that read the same input share one act-order permutation (real GPTQ: one Hessian).
SAME_INPUT = {"k_proj": "q_proj", "v_proj": "q_proj", "up_proj": "gate_proj"}


def quantization_config(fmt: str, group_size: int, symmetric: bool, act_order: bool) -> dict:
    if fmt == "gptq":
        return {"quant_method": "gptq", "bits": 4, "group_size": group_size,
                "desc_act": act_order, "sym": symmetric, "checkpoint_format": "gptq"}  # fmt: skip
    if fmt == "awq":
        return {"quant_method": "awq", "bits": 4, "group_size": group_size,
                "zero_point": not symmetric, "version": "gemm"}  # fmt: skip
    weights = {"num_bits": 4, "type": "int", "symmetric": symmetric,
               "strategy": "channel" if group_size == -1 else "group",
               "group_size": None if group_size == -1 else group_size}  # fmt: skip
    return {"quant_method": "compressed-tensors", "format": "pack-quantized",
            "ignore": ["lm_head"], "quantization_status": "compressed",
            "config_groups": {"group_0": {"targets": ["Linear"], "weights": weights}}}  # fmt: skip


def format_tensors(fmt: str, weight, symmetric: bool) -> dict[str, torch.Tensor]:
    """One layer's checkpoint tensors, named by suffix ('qweight', 'weight_packed', ...)."""
    if fmt == "gptq":
        return gptq_from_int4(weight)
    if fmt == "awq":
        return awq_from_int4(weight)
    return compressed_tensors_from_int4(weight, symmetric)


def write_w4a16_checkpoint(
    src: Path,
    dst: Path,
    fmt: str,
    group_size: int = 32,
    symmetric: bool = False,
    act_order: bool = False,
    seed: int = 0,
) -> Path:
    """Quantize every decoder linear of `src` into `dst` (format gptq/awq/compressed-tensors);
    `dst / "dequantized"` gets the float checkpoint with exactly the dequantized weights."""
    state = load_file(str(src / "model.safetensors"))
    quantized: dict[str, torch.Tensor] = {}
    floats = dict(state)
    gen = torch.Generator().manual_seed(seed)
    perms: dict[str, torch.Tensor] = {}
    for name, w in state.items():
        module = name.rsplit(".", 2)[-2] if name.endswith(".weight") else ""
        if module not in LINEARS:
            quantized[name] = w
            continue
        g_idx = None
        if act_order:
            key = name.replace(module, SAME_INPUT.get(module, module))
            if key not in perms:
                perms[key] = torch.randperm(w.shape[1], generator=gen)
            gs = w.shape[1] if group_size == -1 else group_size
            g_idx = (perms[key] // gs).to(torch.int32)
        weight = quantize_int4(w.float(), group_size, symmetric, g_idx)
        prefix = name[: -len("weight")]
        for suffix, tensor in format_tensors(fmt, weight, symmetric).items():
            quantized[prefix + suffix] = tensor
        floats[name] = dequantize_int4(weight)
    for out, tensors in ((dst, quantized), (dst / "dequantized", floats)):
        out.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / "model.safetensors"))
        for f in src.iterdir():
            if f.is_file() and f.suffix != ".safetensors":
                shutil.copy(f, out / f.name)
    config = json.loads((src / "config.json").read_text())
    config["quantization_config"] = quantization_config(fmt, group_size, symmetric, act_order)
    (dst / "config.json").write_text(json.dumps(config, indent=2))
    return dst
