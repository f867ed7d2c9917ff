"""CPU platform: float32, the C++ paged-attention kernel, and an explicit KV-cache budget.

Mirrors vllm/platforms/cpu.py. On CPU nothing is worth profiling: the KV cache shares RAM with
everything else, so (like vLLM's VLLM_CPU_KVCACHE_SPACE) the user states its size, here with
`kv_cache_memory_bytes` or the VLLM_MINI_CPU_KVCACHE_SPACE variable (GiB); 1 GiB by default.
"""

from __future__ import annotations

import math
import os

from vllm_mini.platforms.interface import Platform

CPU_KVCACHE_SPACE_ENV = "VLLM_MINI_CPU_KVCACHE_SPACE"
DEFAULT_CPU_KVCACHE_GIB = 1


def cpu_kv_cache_space_bytes() -> int:
    """The CPU KV-cache budget: VLLM_MINI_CPU_KVCACHE_SPACE GiB when set, else 1 GiB."""
    value = os.environ.get(CPU_KVCACHE_SPACE_ENV, "").strip()
    if not value:
        return DEFAULT_CPU_KVCACHE_GIB << 30
    try:
        gib = float(value)
    except ValueError:
        gib = math.nan
    if not (math.isfinite(gib) and gib > 0):
        raise ValueError(
            f"{CPU_KVCACHE_SPACE_ENV} must be a positive number of GiB (e.g. 4 or 0.5), "
            f"got {value!r}"
        )
    return int(gib * (1 << 30))


class CpuPlatform(Platform):
    device_type = "cpu"
