"""CUDA platform: the CUDA/Triton kernels and the memory readings the KV-cache sizing needs.

Mirrors vllm/platforms/cuda.py (and the MemorySnapshot of vllm/utils/mem_utils.py). The worker
takes a snapshot before loading the weights, after loading them and after a profiling forward
pass, and gives the KV cache what `gpu_memory_utilization` of the device leaves (worker.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vllm_mini.platforms.interface import Platform


@dataclass(frozen=True)
class MemorySnapshot:
    """One reading of a device's memory, in bytes."""

    free: int  # cudaMemGetInfo: free on the device (all processes)
    total: int
    torch_allocated: int  # live tensors of this process
    torch_peak: int  # the most torch_allocated reached since the last reset_peak_memory_stats
    torch_reserved: int  # held by torch's caching allocator (live + cached)

    @property
    def non_torch(self) -> int:
        """Used but not by torch's allocator: CUDA context, cuBLAS workspaces, other processes."""
        return self.total - self.free - self.torch_reserved


def memory_snapshot(device: torch.device) -> MemorySnapshot:
    torch.cuda.synchronize(device)
    free, total = torch.cuda.mem_get_info(device)
    return MemorySnapshot(
        free=free,
        total=total,
        torch_allocated=torch.cuda.memory_allocated(device),
        torch_peak=torch.cuda.max_memory_allocated(device),
        torch_reserved=torch.cuda.memory_reserved(device),
    )


class CudaPlatform(Platform):
    device_type = "cuda"
