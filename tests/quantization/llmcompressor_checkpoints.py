"""Checkpoints written by llm-compressor itself, for tests that compare against the real format.

benchmarks/quantized_checkpoints.py makes them in its own venv (built on first use: a few
minutes; each tiny checkpoint then takes under a minute) and caches them under
~/.cache/vllm_mini/quantized/, so only the first session pays. Tests that use these are marked
slow.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "quantized_checkpoints.py"


def llmcompressor_checkpoint(recipe: str, model: str = "tiny") -> Path:
    """The directory of `recipe` applied to `model` ("tiny" or "smollm2"), made if missing."""
    cmd = [sys.executable, str(SCRIPT), recipe, "--model", model]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{result.stderr[-4000:]}")
    return Path(result.stdout.strip().splitlines()[-1])


def cached_or_skip(name: str, minutes: str) -> None:
    """Skip a test whose checkpoint needs a calibrated tool run (GPTQ, AWQ: `minutes` on 2
    cores) unless it is cached or VLLM_MINI_TEST_CALIBRATED=1 asks to make it. The data-free
    recipes (FP8_DYNAMIC, per-tensor FP8, round-to-nearest) always run: they cost about a minute
    each after the tool venv, which keeps `make test` on a clean machine inside its budget."""
    root = os.environ.get("VLLM_MINI_CACHE_DIR") or Path.home() / ".cache" / "vllm_mini"
    if (Path(root) / "quantized" / name / ".vllm_mini_recipe.json").exists():
        return
    if not os.environ.get("VLLM_MINI_TEST_CALIBRATED"):
        pytest.skip(
            f"{name} is not cached and takes {minutes} to make on 2 cores: set "
            "VLLM_MINI_TEST_CALIBRATED=1 to make it (then it is cached)"
        )


def smollm2_checkpoint_or_skip(recipe: str) -> Path:
    """SmolLM2 quantized by `recipe`, if already cached (or VLLM_MINI_TEST_LLMCOMPRESSOR_SMOLLM2=1
    asks to make it: calibrated recipes take tens of minutes on 2 cores); else skip."""
    root = os.environ.get("VLLM_MINI_CACHE_DIR") or Path.home() / ".cache" / "vllm_mini"
    cached = Path(root) / "quantized" / recipe / ".vllm_mini_recipe.json"
    if not (cached.exists() or os.environ.get("VLLM_MINI_TEST_LLMCOMPRESSOR_SMOLLM2")):
        pytest.skip(
            f"SmolLM2 {recipe} is not cached: run `.venv/bin/python "
            f"benchmarks/quantized_checkpoints.py {recipe}` or set "
            "VLLM_MINI_TEST_LLMCOMPRESSOR_SMOLLM2=1"
        )
    return llmcompressor_checkpoint(recipe, "smollm2")
