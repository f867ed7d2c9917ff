"""Reference solutions for lesson 01."""

from __future__ import annotations

import torch

ALLOWED_BLOCK_SIZES = (1, 2, 4, 8, 16, 32, 64, 128)


def validate_cache_args(block_size: int, kv_cache_memory_bytes: int | None) -> None:
    """Raise ValueError naming the field and the allowed range, like CacheConfig does."""
    if block_size not in ALLOWED_BLOCK_SIZES:
        raise ValueError(f"block_size must be one of {list(ALLOWED_BLOCK_SIZES)}, got {block_size}")
    if kv_cache_memory_bytes is not None and kv_cache_memory_bytes <= 0:
        raise ValueError(f"kv_cache_memory_bytes must be > 0, got {kv_cache_memory_bytes}")


def num_kv_blocks(
    memory_bytes: int, num_layers: int, block_size: int, num_kv_heads: int, head_size: int, dtype
) -> int:
    """Blocks that fit: each holds K and V for block_size tokens in every layer."""
    elem = torch.tensor([], dtype=dtype).element_size()
    return memory_bytes // (2 * num_layers * block_size * num_kv_heads * head_size * elem)
