"""Config validation: every bad value is refused with an error naming the field and the range."""

from __future__ import annotations

import argparse

import pytest

from vllm_mini.config import CacheConfig, LoadConfig, ParallelConfig, SchedulerConfig
from vllm_mini.config.attention import AttentionConfig
from vllm_mini.config.device import DeviceConfig
from vllm_mini.engine.arg_utils import EngineArgs


@pytest.mark.parametrize(
    ("factory", "pattern"),
    [
        (lambda: CacheConfig(block_size=12), "block_size must be one of"),
        (lambda: CacheConfig(kv_cache_memory_bytes=0), "kv_cache_memory_bytes must be > 0"),
        (
            lambda: CacheConfig(gpu_memory_utilization=1.5),
            r"gpu_memory_utilization must be in \(0, 1\]",
        ),
        (lambda: CacheConfig(num_gpu_blocks_override=0), "num_gpu_blocks_override must be >= 1"),
        (lambda: SchedulerConfig(max_num_seqs=0), "max_num_seqs must be >= 1"),
        (lambda: SchedulerConfig(max_num_batched_tokens=0), "max_num_batched_tokens must be >= 1"),
        (lambda: SchedulerConfig(policy="lifo"), "scheduling_policy must be one of"),
        (
            lambda: ParallelConfig(tensor_parallel_size=0),
            "tensor_parallel_size must be an integer >= 1",
        ),
        (lambda: LoadConfig(load_format="pickle"), "load_format must be one of"),
        (lambda: DeviceConfig(device="tpu"), "device must be one of"),
        (lambda: AttentionConfig(backend="flash"), "attention_backend must be one of"),
    ],
)
def test_bad_config_values_are_refused(factory, pattern):
    with pytest.raises(ValueError, match=pattern):
        factory()


def test_model_level_validation(tiny_llama_dir):
    with pytest.raises(ValueError, match=r"max_model_len must be in \[1, 256\]"):
        EngineArgs(model=str(tiny_llama_dir), max_model_len=1000).create_engine_config()
    with pytest.raises(ValueError, match="dtype must be one of"):
        EngineArgs(model=str(tiny_llama_dir), dtype="float8").create_engine_config()
    with pytest.raises(ValueError, match="max_num_batched_tokens"):
        EngineArgs(
            model=str(tiny_llama_dir), enable_chunked_prefill=False, max_num_batched_tokens=16
        ).create_engine_config()
    with pytest.raises(ValueError, match="model"):
        EngineArgs(model="/no/such/model").create_engine_config()


def test_engine_config_composes_and_naive_disables_prefix_caching(tiny_llama_dir):
    cfg = EngineArgs(
        model=str(tiny_llama_dir), max_model_len=128, attention_backend="naive", block_size=8
    ).create_engine_config()
    assert cfg.model_config.max_model_len == cfg.scheduler_config.max_model_len == 128
    assert cfg.cache_config.block_size == 8
    assert cfg.cache_config.enable_prefix_caching is False
    assert cfg.model_config.num_kv_heads == 2 and cfg.model_config.head_size == 16


def test_cli_args_are_generated_from_fields():
    parser = EngineArgs.add_cli_args(argparse.ArgumentParser())
    args = parser.parse_args(
        ["--max-num-seqs", "7", "--no-enable-prefix-caching", "--kv-cache-memory-bytes", "1024"]
    )
    engine_args = EngineArgs.from_cli_args(args)
    assert engine_args.max_num_seqs == 7
    assert engine_args.enable_prefix_caching is False
    assert engine_args.kv_cache_memory_bytes == 1024


def test_unknown_llm_kwargs_are_refused():
    with pytest.raises(ValueError, match="unknown engine arguments"):
        EngineArgs.from_kwargs(max_num_sequences=3)
