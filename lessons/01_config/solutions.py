"""Reference solutions for lesson 01 (look after trying)."""

from __future__ import annotations

import torch

ALLOWED_BLOCK_SIZES = (1, 2, 4, 8, 16, 32, 64, 128)


def validate_cache_args(block_size: int, kv_cache_memory_bytes: int | None) -> None:
    """Raise ValueError naming the field and the allowed range, like CacheConfig does."""
    if block_size not in ALLOWED_BLOCK_SIZES:
        raise ValueError(f"block_size must be one of {list(ALLOWED_BLOCK_SIZES)}, got {block_size}")
    if kv_cache_memory_bytes is not None and kv_cache_memory_bytes <= 0:
        raise ValueError(f"kv_cache_memory_bytes must be > 0, got {kv_cache_memory_bytes}")


def validate_scheduler_args(
    max_num_batched_tokens: int,
    max_num_seqs: int,
    max_model_len: int,
    enable_chunked_prefill: bool,
) -> None:
    """Single-field checks first, then the rule that ties the budget to the model length."""
    if max_num_batched_tokens < 1:
        raise ValueError(f"max_num_batched_tokens must be >= 1, got {max_num_batched_tokens}")
    if max_num_seqs < 1:
        raise ValueError(f"max_num_seqs must be >= 1, got {max_num_seqs}")
    if not enable_chunked_prefill and max_num_batched_tokens < max_model_len:
        raise ValueError(
            f"max_num_batched_tokens must be >= max_model_len ({max_model_len}) without chunked "
            f"prefill, got {max_num_batched_tokens}"
        )


def num_kv_blocks(
    memory_bytes: int,
    num_layers: int,
    block_size: int,
    num_kv_heads: int,
    head_size: int,
    dtype: torch.dtype,
) -> int:
    """Blocks that fit: each holds K and V for block_size tokens in every layer."""
    elem = torch.tensor([], dtype=dtype).element_size()
    per_block = 2 * num_layers * block_size * num_kv_heads * head_size * elem
    if memory_bytes < per_block:
        raise ValueError(f"memory_bytes must hold at least one block ({per_block} bytes)")
    return memory_bytes // per_block
