"""Lesson 02 exercises: RMSNorm, rotary embedding, and the weight-name mapping of load_weights.

LESSON_IMPL=exercises .venv/bin/pytest lessons/02_model_loading
"""

from __future__ import annotations

import torch


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dimension (compute the statistics in float32)."""
    raise NotImplementedError


def apply_rope(positions, q, k, head_size: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate q [T, H*D] and k [T, H_kv*D] by their positions, HF/NeoX style: split each head in
    halves x1, x2 and return [x1*cos - x2*sin, x2*cos + x1*sin], angle = pos * base^(-2i/D)."""
    raise NotImplementedError


def map_weight_name(hf_name: str) -> tuple[str, str | int | None]:
    """Map an HF name to (our parameter, shard id): q/k/v_proj -> qkv_proj with 'q'/'k'/'v',
    gate/up_proj -> gate_up_proj with 0/1, anything else unchanged with None."""
    raise NotImplementedError
