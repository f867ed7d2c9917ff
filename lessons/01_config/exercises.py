"""Lesson 01 exercises: validate like CacheConfig and SchedulerConfig, size the KV cache like the
worker.

LESSON_IMPL=exercises .venv/bin/pytest lessons/01_config
"""

from __future__ import annotations

import torch


def validate_cache_args(block_size: int, kv_cache_memory_bytes: int | None) -> None:
    """Raise ValueError for a block_size not in (1, 2, 4, ..., 128) or a budget <= 0 (None means
    "use the default" and is fine).

    The message must start with the field's name: "block_size must be ...",
    "kv_cache_memory_bytes must be ...", and should say the allowed values and the value given.
    """
    raise NotImplementedError(
        "validate_cache_args: refuse a bad block_size or KV budget, naming the field first. "
        "CacheConfig.__post_init__ does it (vllm_mini/config/cache.py; vLLM: vllm/config/cache.py)"
    )


def validate_scheduler_args(
    max_num_batched_tokens: int,
    max_num_seqs: int,
    max_model_len: int,
    enable_chunked_prefill: bool,
) -> None:
    """Raise ValueError, naming the field first ("max_num_seqs must be ..."), when:

    - max_num_batched_tokens < 1 or max_num_seqs < 1;
    - chunked prefill is off and max_num_batched_tokens < max_model_len: a prompt of
      max_model_len tokens must then be processed in one step, so it would never fit.
    """
    raise NotImplementedError(
        "validate_scheduler_args: the single-field checks, then the rule tying the step budget "
        "to max_model_len. SchedulerConfig.__post_init__ and verify_with_model_len do it "
        "(vllm_mini/config/scheduler.py; vLLM: vllm/config/scheduler.py)"
    )


def num_kv_blocks(
    memory_bytes: int,
    num_layers: int,
    block_size: int,
    num_kv_heads: int,
    head_size: int,
    dtype: torch.dtype,
) -> int:
    """How many KV blocks fit in memory_bytes? One block holds K and V of block_size tokens for
    every layer. Raise ValueError if not even one block fits."""
    raise NotImplementedError(
        "num_kv_blocks: the budget divided by the bytes of one block (K and V, every layer). "
        "get_num_blocks does it (vllm_mini/core/kv_cache_utils.py; vLLM: "
        "vllm/v1/core/kv_cache_utils.py, with a block's bytes from vllm/v1/kv_cache_interface.py)"
    )
