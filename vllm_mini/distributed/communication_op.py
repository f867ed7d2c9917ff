"""Collectives used by the parallel layers. Mirrors vllm/distributed/communication_op.py.

With one rank they are identities; with torch.distributed initialised they call its collectives.
RowParallelLinear needs all-reduce (each rank holds a partial sum); a gathered
ColumnParallelLinear and the LM head need all-gather (each rank holds a slice of the output).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from vllm_mini.distributed.parallel_state import get_tensor_model_parallel_world_size


def _distributed() -> bool:
    return (
        get_tensor_model_parallel_world_size() > 1 and dist.is_available() and dist.is_initialized()
    )


def tensor_model_parallel_all_reduce(x: torch.Tensor) -> torch.Tensor:
    if _distributed():
        dist.all_reduce(x)
    return x


def tensor_model_parallel_all_gather(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    if not _distributed():
        return x
    parts = [torch.empty_like(x) for _ in range(get_tensor_model_parallel_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=dim)
