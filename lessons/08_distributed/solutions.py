"""Lesson 08 solutions. Try exercises.py first; the tests check either file the same way."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


def shard_mlp(
    w_gate: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor, rank: int, world_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    inter = w_gate.shape[0]
    if inter % world_size:
        raise ValueError(f"intermediate size {inter} is not divisible by {world_size} ranks")
    part = inter // world_size
    rows = slice(rank * part, (rank + 1) * part)
    # Column parallel: this rank's output features are rows of the [out, in] weight.
    # Row parallel: this rank's input features are columns of the [out, in] weight.
    return w_gate[rows], w_up[rows], w_down[:, rows]


def mlp_partial(
    x: torch.Tensor, gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor
) -> torch.Tensor:
    # SiLU and the product are per feature, so they run on this rank's slice with no exchange.
    h = F.silu(F.linear(x, gate)) * F.linear(x, up)  # [T, I / n]
    return F.linear(h, down)  # [T, H], a partial sum over this rank's features


def tp_mlp(
    rank: int,
    world_size: int,
    x: torch.Tensor,
    w_gate: torch.Tensor,
    w_up: torch.Tensor,
    w_down: torch.Tensor,
) -> torch.Tensor:
    out = mlp_partial(x, *shard_mlp(w_gate, w_up, w_down, rank, world_size))
    dist.all_reduce(out)  # the block's one communication: sum the partial outputs
    return out


def heads_per_rank(num_heads: int, num_kv_heads: int, tp: int) -> tuple[int, int, int]:
    if num_heads % tp:
        raise ValueError(f"{num_heads} heads are not divisible by tensor_parallel_size={tp}")
    if tp >= num_kv_heads:
        if tp % num_kv_heads:
            raise ValueError(f"tensor_parallel_size={tp} is not a multiple of {num_kv_heads}")
        return num_heads // tp, 1, tp // num_kv_heads
    if num_kv_heads % tp:
        raise ValueError(f"{num_kv_heads} KV heads are not divisible by {tp}")
    return num_heads // tp, num_kv_heads // tp, 1


def pp_indices(num_layers: int, pp_rank: int, pp_size: int) -> tuple[int, int]:
    sizes = [num_layers // pp_size] * pp_size
    for i in range(2, num_layers % pp_size + 2):
        sizes[-i % pp_size] += 1
    start = sum(sizes[:pp_rank])
    return start, start + sizes[pp_rank]


def bubble_fraction(num_stages: int, num_microbatches: int) -> float:
    # m micro-batches take m + p - 1 time slots on p stages; each stage is busy in m of them.
    return (num_stages - 1) / (num_microbatches + num_stages - 1)
