"""Lesson 01 exercises: validate like CacheConfig, size the KV cache like the worker.

LESSON_IMPL=exercises .venv/bin/pytest lessons/01_config
"""

from __future__ import annotations


def validate_cache_args(block_size: int, kv_cache_memory_bytes: int | None) -> None:
    """Raise ValueError for a block_size not in (1, 2, 4, ..., 128) or a budget <= 0.

    The message must name the field ("block_size must be ...", "kv_cache_memory_bytes must be ...").
    """
    raise NotImplementedError


def num_kv_blocks(memory_bytes, num_layers, block_size, num_kv_heads, head_size, dtype) -> int:
    """How many KV blocks fit in memory_bytes? (K and V, every layer, block_size tokens each.)"""
    raise NotImplementedError
