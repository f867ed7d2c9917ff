"""Lesson 01: your validators and block count agree with the engine's configs and worker."""

from __future__ import annotations

from dataclasses import fields

import pytest
import torch

from lessons._impl import load_impl
from vllm_mini.config import CacheConfig, SchedulerConfig
from vllm_mini.core.kv_cache_utils import get_num_blocks
from vllm_mini.engine.arg_utils import EngineArgs
from vllm_mini.platforms import current_platform

impl = load_impl(__file__)


def _field_in_error(fn, *args, **kwargs) -> str | None:
    """The field a ValueError blames (its message's first word), or None if nothing was raised."""
    try:
        fn(*args, **kwargs)
    except ValueError as e:
        return str(e).split()[0]
    return None


@pytest.mark.parametrize(
    ("block_size", "budget"),
    [(16, None), (12, None), (0, 10), (256, None), (32, 0), (8, -5), (128, 1 << 20), (1, 1)],
)
def test_cache_validation_agrees_with_cache_config(block_size, budget):
    expected = _field_in_error(CacheConfig, block_size=block_size, kv_cache_memory_bytes=budget)
    assert _field_in_error(impl.validate_cache_args, block_size, budget) == expected


def _scheduler_config(tokens: int, seqs: int, model_len: int, chunked: bool) -> None:
    config = SchedulerConfig(
        max_num_batched_tokens=tokens,
        max_num_seqs=seqs,
        max_model_len=model_len,
        enable_chunked_prefill=chunked,
    )
    config.verify_with_model_len()  # what VllmConfig.__post_init__ calls


@pytest.mark.parametrize(
    ("tokens", "seqs", "model_len", "chunked"),
    [
        (2048, 128, 8192, True),  # chunked prefill: the budget may be below max_model_len
        (2048, 128, 8192, False),  # ... but not without it
        (8192, 128, 8192, False),
        (0, 4, 100, True),
        (64, 0, 100, True),
        (-1, 0, 100, False),
    ],
)
def test_scheduler_validation_agrees_with_scheduler_config(tokens, seqs, model_len, chunked):
    expected = _field_in_error(_scheduler_config, tokens, seqs, model_len, chunked)
    got = _field_in_error(impl.validate_scheduler_args, tokens, seqs, model_len, chunked)
    assert got == expected


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_block_count_matches_the_worker(dtype):
    # SmolLM2's shapes: 30 layers, 3 KV heads of 64.
    for budget in (1 << 20, 1 << 30, 123_456_789):
        expected = get_num_blocks(budget, 30, 16, 3, 64, dtype)
        assert impl.num_kv_blocks(budget, 30, 16, 3, 64, dtype) == expected


def test_too_small_a_budget_is_refused_like_the_worker():
    with pytest.raises(ValueError):
        get_num_blocks(1000, 30, 16, 3, 64, torch.float32)
    with pytest.raises(ValueError):
        impl.num_kv_blocks(1000, 30, 16, 3, 64, torch.float32)


# ----------------------------------------------------------------------------- the demo

demo = load_impl(__file__, "demo")


@pytest.mark.demo
def test_demo_flags_config_sizing_and_refusals(capsys):
    found = demo.main()
    printed = capsys.readouterr().out
    # One flag per EngineArgs field, and the parsed command line reached the nested configs.
    assert len(found["flags"]) == len(fields(EngineArgs)) and "--max-num-seqs" in found["flags"]
    config = found["config"]
    assert config.scheduler_config.max_num_seqs == 8 and config.cache_config.block_size == 32
    assert config.cache_config.enable_prefix_caching is False
    # SmolLM2 in float32: 1 GiB / (2 * 30 layers * 32 tokens * 3 heads * 64 * 4 bytes) = 728.
    assert found["blocks"] == get_num_blocks(1 << 30, 30, 32, 3, 64, torch.float32) == 728
    assert "728 blocks of 32 tokens = 23296 tokens" in printed
    # Every bad configuration is refused, and the message quotes the bad value.
    assert None not in found["refused"] and "ACCEPTED" not in printed
    for bad, message in zip(demo.BAD_CONFIGS, found["refused"]):
        assert str(list(bad.values())[-1]) in message, (bad, message)
    # "auto" resolved by the platform: the device torch sees, and a backend that exists there.
    name, device, backend, budget = found["platform"]
    assert device == ("cuda" if torch.cuda.is_available() else "cpu")
    assert name == {"cpu": "CpuPlatform", "cuda": "CudaPlatform"}[device]
    assert backend == current_platform.default_attention_backend(device)
    assert f"attention backend 'auto' -> {backend}" in printed
