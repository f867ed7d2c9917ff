"""Process groups: which ranks compute one layer together (TP) and which pass activations (PP).

Stage 8 (read by the layers from stage 2). Mirrors vllm/distributed/parallel_state.py. Every
worker process calls `init_distributed_environment` (torch.distributed: gloo on CPU, NCCL on
CUDA) and then `initialize_model_parallel(tp, pp)`, which cuts the world into groups the way
vLLM does: global rank = pp_rank * tp_size + tp_rank, so

    tp=2, pp=2:   TP groups [0, 1] and [2, 3]     PP groups [0, 2] and [1, 3]

A `GroupCoordinator` wraps one group with the collectives the layers need, and counts the time
spent in them (benchmarks/distributed.py reads it). In a single process (no groups) every getter
answers rank 0 of 1 and every collective is the identity. `simulate_tensor_parallel` lets a test
build a layer as rank r of n without any communication, to check that weight shards reassemble.
Next: communication_op.py.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class CommStats:
    """How many collectives this process ran, and the seconds they took (wall clock)."""

    all_reduce_calls: int = 0
    all_reduce_seconds: float = 0.0
    p2p_calls: int = 0
    p2p_seconds: float = 0.0


class GroupCoordinator:
    """One process group: its global ranks, this process's place in it, and its collectives."""

    def __init__(self, ranks: list[int], group: dist.ProcessGroup | None) -> None:
        self.ranks = ranks
        self.world_size = len(ranks)
        global_rank = dist.get_rank() if dist.is_initialized() else 0
        self.rank_in_group = ranks.index(global_rank) if global_rank in ranks else 0
        self.device_group = group
        self.stats = CommStats()

    @property
    def is_first_rank(self) -> bool:
        return self.rank_in_group == 0

    @property
    def is_last_rank(self) -> bool:
        return self.rank_in_group == self.world_size - 1

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """Sum x over the group, in place: every rank ends with the same, full result."""
        if self.world_size == 1:
            return x
        start = time.perf_counter()
        dist.all_reduce(x, group=self.device_group)
        self.stats.all_reduce_calls += 1
        self.stats.all_reduce_seconds += time.perf_counter() - start
        return x

    def all_gather(self, x: torch.Tensor, dim: int = -1) -> torch.Tensor:
        """Concatenate every rank's x along dim (the LM head's vocab slices)."""
        if self.world_size == 1:
            return x
        parts = [torch.empty_like(x) for _ in range(self.world_size)]
        dist.all_gather(parts, x.contiguous(), group=self.device_group)
        return torch.cat(parts, dim=dim)

    def send(self, tensors: list[torch.Tensor]) -> None:
        """Point to point, to the next rank of the group (the next pipeline stage)."""
        dst = self.ranks[(self.rank_in_group + 1) % self.world_size]
        start = time.perf_counter()
        for t in tensors:
            dist.send(t.contiguous(), dst=dst, group=self.device_group)
        self.stats.p2p_calls += 1
        self.stats.p2p_seconds += time.perf_counter() - start

    def recv(
        self, shapes: list[tuple[int, ...]], dtype: torch.dtype, device: torch.device
    ) -> list[torch.Tensor]:
        """From the previous rank; the receiver must know the shapes (both sides know the step)."""
        src = self.ranks[(self.rank_in_group - 1) % self.world_size]
        start = time.perf_counter()
        out = []
        for shape in shapes:
            t = torch.empty(shape, dtype=dtype, device=device)
            dist.recv(t, src=src, group=self.device_group)
            out.append(t)
        self.stats.p2p_calls += 1
        self.stats.p2p_seconds += time.perf_counter() - start
        return out

    def broadcast_object(self, obj: object, src_in_group: int) -> object:
        """Send a picklable object from one rank of the group to all (the sampled token ids)."""
        if self.world_size == 1:
            return obj
        holder = [obj if self.rank_in_group == src_in_group else None]
        dist.broadcast_object_list(holder, src=self.ranks[src_in_group], group=self.device_group)
        return holder[0]


_WORLD: GroupCoordinator | None = None
_TP: GroupCoordinator | None = None
_PP: GroupCoordinator | None = None
# Set only inside simulate_tensor_parallel: (rank, world size) to build layers as.
_SIMULATED_TP: tuple[int, int] | None = None


def init_distributed_environment(
    world_size: int, rank: int, distributed_init_method: str, backend: str = "gloo"
) -> None:
    """Join the world: every rank calls this with the same init method (a tcp:// address)."""
    global _WORLD
    if not dist.is_initialized():
        dist.init_process_group(
            backend=backend, init_method=distributed_init_method, world_size=world_size, rank=rank
        )
    _WORLD = GroupCoordinator(list(range(world_size)), dist.group.WORLD)


def model_parallel_group_ranks(tp_size: int, pp_size: int) -> tuple[list[list[int]], ...]:
    """(TP groups, PP groups) as lists of global ranks; rank = pp_rank * tp_size + tp_rank."""
    tp_groups = [[pp * tp_size + t for t in range(tp_size)] for pp in range(pp_size)]
    pp_groups = [[pp * tp_size + t for pp in range(pp_size)] for t in range(tp_size)]
    return tp_groups, pp_groups


def initialize_model_parallel(tp_size: int, pp_size: int) -> None:
    """Create the TP and PP groups. Every rank must create every group (torch's rule), then
    keeps the coordinator of the one it belongs to."""
    global _TP, _PP
    world = dist.get_world_size()
    if tp_size * pp_size != world:
        raise ValueError(
            f"tensor_parallel_size ({tp_size}) x pipeline_parallel_size ({pp_size}) must equal "
            f"the world size ({world})"
        )
    rank = dist.get_rank()
    tp_groups, pp_groups = model_parallel_group_ranks(tp_size, pp_size)
    for ranks in tp_groups:
        group = dist.new_group(ranks)
        if rank in ranks:
            _TP = GroupCoordinator(ranks, group)
    for ranks in pp_groups:
        group = dist.new_group(ranks)
        if rank in ranks:
            _PP = GroupCoordinator(ranks, group)


def destroy_model_parallel() -> None:
    global _WORLD, _TP, _PP
    _WORLD = _TP = _PP = None
    if dist.is_initialized():
        dist.destroy_process_group()


_SINGLE = GroupCoordinator([0], None)  # what a lone process sees: rank 0 of 1, no communication


def get_world_group() -> GroupCoordinator:
    return _WORLD or _SINGLE


def get_tp_group() -> GroupCoordinator:
    return _TP or _SINGLE


def get_pp_group() -> GroupCoordinator:
    return _PP or _SINGLE


def get_tensor_model_parallel_rank() -> int:
    if _SIMULATED_TP is not None:
        return _SIMULATED_TP[0]
    return get_tp_group().rank_in_group


def get_tensor_model_parallel_world_size() -> int:
    if _SIMULATED_TP is not None:
        return _SIMULATED_TP[1]
    return get_tp_group().world_size


def get_pipeline_model_parallel_rank() -> int:
    return get_pp_group().rank_in_group


def get_pipeline_model_parallel_world_size() -> int:
    return get_pp_group().world_size


@contextlib.contextmanager
def simulate_tensor_parallel(rank: int, world_size: int) -> Iterator[None]:
    """Build layers as if this process were `rank` of `world_size` (no communication happens)."""
    global _SIMULATED_TP
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    old = _SIMULATED_TP
    _SIMULATED_TP = (rank, world_size)
    try:
        yield
    finally:
        _SIMULATED_TP = old
