"""Lesson 01 demo: EngineArgs -> VllmConfig, the generated CLI, and validation errors.

.venv/bin/python lessons/01_config/demo.py
"""

from __future__ import annotations

import argparse

from vllm_mini.engine.arg_utils import EngineArgs

args = EngineArgs(max_num_seqs=8, block_size=32, kv_cache_memory_bytes=64 << 20)
config = args.create_engine_config()
for part in ("model_config", "cache_config", "scheduler_config", "attention_config"):
    print(f"{part}: {getattr(config, part)!r}"[:300])

parser = EngineArgs.add_cli_args(argparse.ArgumentParser(prog="demo"))
print("\nflags generated from EngineArgs' fields:")
print(" ", " ".join(a.option_strings[0] for a in parser._actions if a.option_strings)[:400], "...")

print("\nbad values are refused with the field and the range:")
for bad in (
    dict(block_size=12),
    dict(max_model_len=10**6),
    dict(scheduling_policy="lifo"),
    dict(dtype="int4"),
):
    try:
        EngineArgs(**bad).create_engine_config()
    except ValueError as e:
        print(f"  {bad} -> {e}")
