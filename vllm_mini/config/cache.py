"""CacheConfig: how the KV cache is cut into blocks and how much memory it may take.

Stage 1 (used from stage 4). Mirrors vllm/config/cache.py. The number of blocks is decided later,
by the worker (worker/worker.py): from `kv_cache_memory_bytes` when set; else on CPU from the
VLLM_MINI_CPU_KVCACHE_SPACE variable (GiB, default 1), and on GPU from a memory profile:
`gpu_memory_utilization` of the device minus weights, peak activations and non-torch memory.
Next: scheduler.py.
"""

from __future__ import annotations

from dataclasses import dataclass

_ALLOWED_BLOCK_SIZES = (1, 2, 4, 8, 16, 32, 64, 128)


@dataclass
class CacheConfig:
    block_size: int = 16
    # KV cache budget in bytes. None = VLLM_MINI_CPU_KVCACHE_SPACE GiB (default 1) on CPU, like
    # vLLM's VLLM_CPU_KVCACHE_SPACE, and what the memory profile leaves on GPU.
    kv_cache_memory_bytes: int | None = None
    # The share of the WHOLE GPU this engine may use (weights + activations + KV cache), as in vLLM.
    gpu_memory_utilization: float = 0.9
    enable_prefix_caching: bool = True
    # Force a block count (tests and the visualizer use this to make preemption happen).
    num_gpu_blocks_override: int | None = None

    def __post_init__(self) -> None:
        if self.block_size not in _ALLOWED_BLOCK_SIZES:
            raise ValueError(
                f"block_size must be one of {list(_ALLOWED_BLOCK_SIZES)}, got {self.block_size}"
            )
        if self.kv_cache_memory_bytes is not None and self.kv_cache_memory_bytes <= 0:
            raise ValueError(f"kv_cache_memory_bytes must be > 0, got {self.kv_cache_memory_bytes}")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError(
                f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}"
            )
        if self.num_gpu_blocks_override is not None and self.num_gpu_blocks_override < 1:
            raise ValueError(
                f"num_gpu_blocks_override must be >= 1, got {self.num_gpu_blocks_override}"
            )
