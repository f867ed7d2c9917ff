"""Lesson 01 demo: command line -> EngineArgs -> VllmConfig, the errors that guard it, and what
the platform layer made of "auto".

.venv/bin/python lessons/01_config/demo.py   (a few seconds: reads the default model's config only)
"""

from __future__ import annotations

import argparse
from dataclasses import fields
from typing import Any

from vllm_mini.core.kv_cache_utils import get_num_blocks
from vllm_mini.engine.arg_utils import EngineArgs
from vllm_mini.platforms import current_platform
from vllm_mini.platforms.cpu import CPU_KVCACHE_SPACE_ENV, cpu_kv_cache_space_bytes

# Section 4's bad configurations: each must be refused before any weight is loaded.
BAD_CONFIGS = (
    {"block_size": 12},
    {"max_model_len": 10**6},
    {"scheduling_policy": "lifo"},
    {"dtype": "int4"},
    {"enable_chunked_prefill": False, "max_num_batched_tokens": 512},
)


def main() -> dict[str, Any]:
    """Run the four sections; return what they found (lessons/01's test checks it)."""
    # 1. The parser is generated from EngineArgs' fields: one flag per field, no extra code.
    parser = EngineArgs.add_cli_args(argparse.ArgumentParser(prog="demo"))
    flags = [a.option_strings[0] for a in parser._actions if a.option_strings[0] != "-h"]
    print(f"{len(fields(EngineArgs))} EngineArgs fields -> {len(flags)} flags:", " ".join(flags))

    # 2. A command line becomes flat EngineArgs, then one nested, validated VllmConfig.
    argv = ["--max-num-seqs", "8", "--block-size", "32", "--no-enable-prefix-caching"]
    args = EngineArgs.from_cli_args(parser.parse_args(argv))
    config = args.create_engine_config()
    print(f"\n{' '.join(argv)}\n  ->", repr(args)[:160], "...")
    for part in ("model_config", "cache_config", "scheduler_config", "attention_config"):
        print(f"  -> {part}: {getattr(config, part)!r}"[:170])

    # 3. The worker later turns the cache budget into a number of blocks.
    hf = config.model_config.hf_config
    layers, kv_heads = hf.num_hidden_layers, hf.num_key_value_heads
    head = hf.hidden_size // hf.num_attention_heads
    blocks = get_num_blocks(1 << 30, layers, 32, kv_heads, head, config.model_config.dtype)
    print(f"\n1 GiB of {config.model_config.dtype} KV cache for {layers} layers x {kv_heads} KV")
    print(f"heads x {head}: {blocks} blocks of 32 tokens = {blocks * 32} tokens")

    # 4. Bad values are refused up front, with the field and the allowed range.
    print("\nrefused:")
    refused: list[str | None] = []
    for bad in BAD_CONFIGS:
        try:
            EngineArgs(**bad).create_engine_config()
        except ValueError as e:
            print(f"  {bad}\n    -> {e}")
            refused.append(str(e))
        else:
            print(f"  {bad}\n    -> ACCEPTED (it should not be)")
            refused.append(None)

    # 5. What "auto" became: the platform layer (vllm_mini/platforms/, like vllm/platforms/).
    platform = current_platform
    device = config.device_config.device_type
    if device == "cpu":  # stated, not measured: the cache shares RAM with everything else
        budget = f"{cpu_kv_cache_space_bytes() / 2**30:.2f} GiB ({CPU_KVCACHE_SPACE_ENV})"
    else:  # measured at start-up by the worker's profiling run
        budget = "gpu_memory_utilization x total - weights - peak activations (profiled)"
    print(f"\nplatform: {type(platform).__name__} (device_type {platform.device_type!r})")
    print(f"  device 'auto'            -> {device}")
    print(f"  attention backend 'auto' -> {platform.default_attention_backend(device)}")
    print(f"  KV-cache budget 'auto'   -> {budget}")
    return {
        "flags": flags,
        "config": config,
        "blocks": blocks,
        "refused": refused,
        "platform": (type(platform).__name__, device, config.attention_config.backend, budget),
    }


if __name__ == "__main__":
    main()
