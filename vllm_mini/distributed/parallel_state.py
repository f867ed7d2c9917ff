"""Which tensor-parallel rank this process is, out of how many.

Stage 8 (read by the layers from stage 2). Mirrors vllm/distributed/parallel_state.py, where
process groups are created with torch.distributed. Today one process runs the whole model
(rank 0 of 1); `simulate_tensor_parallel` lets tests build a layer as rank r of n to check that
its weight shards reassemble into the full weight.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

_TP_RANK = 0
_TP_WORLD_SIZE = 1


def get_tensor_model_parallel_rank() -> int:
    return _TP_RANK


def get_tensor_model_parallel_world_size() -> int:
    return _TP_WORLD_SIZE


@contextlib.contextmanager
def simulate_tensor_parallel(rank: int, world_size: int) -> Iterator[None]:
    """Build layers as if this process were `rank` of `world_size` (no communication happens)."""
    global _TP_RANK, _TP_WORLD_SIZE
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    old = (_TP_RANK, _TP_WORLD_SIZE)
    _TP_RANK, _TP_WORLD_SIZE = rank, world_size
    try:
        yield
    finally:
        _TP_RANK, _TP_WORLD_SIZE = old
