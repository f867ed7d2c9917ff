"""Shared benchmark helpers: the seeded workload and the HF transformers peer."""

from __future__ import annotations

import random
from pathlib import Path

import torch


def random_workload(
    num_requests: int, min_in: int, max_in: int, min_out: int, max_out: int, seed: int
) -> tuple[list[list[int]], list[int]]:
    """nano-vllm's benchmark recipe: random token ids and random lengths, fixed by a seed."""
    rng = random.Random(seed)
    prompts = [
        [rng.randint(100, 40000) for _ in range(rng.randint(min_in, max_in))]
        for _ in range(num_requests)
    ]
    outputs = [rng.randint(min_out, max_out) for _ in range(num_requests)]
    return prompts, outputs


def load_hf_peer(model: str | None, dtype: torch.dtype = torch.float32):
    """HF transformers' own model for the same checkpoint (GGUF read by transformers itself)."""
    from transformers import AutoModelForCausalLM

    from vllm_mini.transformers_utils.config import resolve_model_source

    source = resolve_model_source(model)
    if source.gguf_file is not None:
        gguf = Path(source.gguf_file)
        return AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=dtype
        ).eval()
    return AutoModelForCausalLM.from_pretrained(source.hf_config_dir, dtype=dtype).eval()
