"""CUDA platform: the CUDA/Triton kernels and a KV budget from free GPU memory.

Mirrors vllm/platforms/cuda.py. vLLM profiles a dummy forward pass to learn peak activation memory,
then gives `gpu_memory_utilization` of the rest to the KV cache; the worker does that.
"""

from __future__ import annotations

import torch

from vllm_mini.platforms.interface import Platform


class CudaPlatform(Platform):
    device_type = "cuda"

    def default_kv_cache_bytes(self, device: torch.device) -> int:
        free, _total = torch.cuda.mem_get_info(device)
        return int(free * 0.9)
