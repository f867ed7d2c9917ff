"""Lesson 01: your validator and block count agree with CacheConfig and the worker's sizing."""

from __future__ import annotations

import pytest
import torch

from lessons._impl import load_impl
from vllm_mini.config import CacheConfig
from vllm_mini.core.kv_cache_utils import get_num_blocks

impl = load_impl(__file__)


@pytest.mark.parametrize(
    ("block_size", "budget"), [(16, None), (12, None), (0, 10), (32, 0), (8, -5), (128, 1 << 20)]
)
def test_validation_agrees_with_cache_config(block_size, budget):
    try:
        CacheConfig(block_size=block_size, kv_cache_memory_bytes=budget)
        engine_error = None
    except ValueError as e:
        engine_error = str(e).split(" must")[0]
    try:
        impl.validate_cache_args(block_size, budget)
        mine = None
    except ValueError as e:
        mine = str(e).split(" must")[0]
    assert mine == engine_error


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_block_count_matches_the_worker(dtype):
    for budget in (1 << 20, 1 << 30, 123_456_789):
        expected = get_num_blocks(budget, 30, 16, 3, 64, dtype)
        assert impl.num_kv_blocks(budget, 30, 16, 3, 64, dtype) == expected
