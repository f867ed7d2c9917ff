"""CPU platform: float32 and the C++ paged-attention kernel.

Mirrors vllm/platforms/cpu.py. vLLM's CPU backend reserves VLLM_CPU_KVCACHE_SPACE (GiB) for the
KV cache instead of profiling free memory; we keep the interface's fixed 1 GiB default.
"""

from __future__ import annotations

from vllm_mini.platforms.interface import Platform


class CpuPlatform(Platform):
    device_type = "cpu"
