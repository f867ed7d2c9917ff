"""Lesson 09 solutions. Try exercises.py first; the tests check this file by default."""

from __future__ import annotations

import math
import re

import torch

# -------------------------------------------------------------- 1. one LoRA linear layer


def lora_scaling(lora_alpha: float, r: int, use_rslora: bool = False) -> float:
    # Plain LoRA divides by r; rank-stabilized LoRA by sqrt(r), so that raising r does not
    # shrink the update towards nothing (Kalajdzievski 2023).
    return lora_alpha / (math.sqrt(r) if use_rslora else r)


def lora_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    lora_alpha: float,
    use_rslora: bool = False,
) -> torch.Tensor:
    scaling = lora_scaling(lora_alpha, lora_a.shape[0], use_rslora)
    # Shrink to r numbers per token, expand back to out: never form the [out, in] product B @ A.
    return x @ weight.T + scaling * ((x @ lora_a.T) @ lora_b.T)


# ------------------------------------------------------ 2. BGMV: a slot per token, by hand


def bgmv_shrink(x: torch.Tensor, lora_a: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    out = torch.zeros(x.shape[0], lora_a.shape[1], dtype=torch.float32)
    for t, slot in enumerate(indices.tolist()):
        if slot >= 0:  # -1: the base model, its row stays 0
            out[t] = lora_a[slot].float() @ x[t].float()
    return out


def bgmv_expand(
    y: torch.Tensor,
    buf: torch.Tensor,
    lora_b: torch.Tensor,
    indices: torch.Tensor,
    slice_offset: int,
) -> torch.Tensor:
    n = lora_b.shape[1]
    for t, slot in enumerate(indices.tolist()):
        if slot >= 0:
            y[t, slice_offset : slice_offset + n] += (lora_b[slot].float() @ buf[t]).to(y.dtype)
    return y


# ------------------------------------------------- 3. PEFT names onto the fused layers

FUSED = {
    "q_proj": ("qkv_proj", 0),
    "k_proj": ("qkv_proj", 1),
    "v_proj": ("qkv_proj", 2),
    "o_proj": ("o_proj", 0),
    "gate_proj": ("gate_up_proj", 0),
    "up_proj": ("gate_up_proj", 1),
    "down_proj": ("down_proj", 0),
}
_PEFT_KEY = re.compile(r"^(?:base_model\.model\.)?(.*)\.(\w+)\.lora_(A|B)(?:\.default)?\.weight$")


def map_peft_key(key: str) -> tuple[str, int, str]:
    m = _PEFT_KEY.match(key)
    if m is None or m.group(2) not in FUSED:
        raise ValueError(f"not a LoRA tensor of a supported module: {key!r}")
    parent, module, which = m.groups()
    fused, index = FUSED[module]
    return f"{parent}.{fused}", index, which
