"""Lesson 08 exercises: split an MLP and attention across ranks, and lay out a pipeline.

Fill in each function, then run:  LESSON_IMPL=exercises .venv/bin/pytest lessons/08_distributed
One at a time with -k: shard | partial | two_processes | heads | pp_indices | bubble. The tests
compare your shards with the engine's own parallel layers built as rank r of n, run your tp_mlp
in two real processes joined by gloo, and check your layer split against get_pp_indices.
"""

from __future__ import annotations

import torch


def shard_mlp(
    w_gate: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor, rank: int, world_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """This rank's (gate, up, down) weights of a Llama MLP: down(silu(gate(x)) * up(x)).

    Weights are stored [out, in], as in the checkpoint: w_gate and w_up are [I, H], w_down is
    [H, I]. gate and up are column parallel (each rank gets I / n of their OUTPUT features, i.e.
    rows), down is row parallel (the same I / n of its INPUT features, i.e. columns). Rank r
    takes block r. Engine: MergedColumnParallelLinear and RowParallelLinear.weight_loader in
    vllm_mini/model_executor/layers/linear.py. Raise ValueError if I is not divisible.
    """
    raise NotImplementedError(
        "shard_mlp: rows [r*I/n, (r+1)*I/n) of w_gate and w_up, the same columns of w_down. Engine: layers/linear.py"
    )


def mlp_partial(
    x: torch.Tensor, gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor
) -> torch.Tensor:
    """What one rank computes from its shards: [T, H], this rank's PARTIAL sum of the output.

    x is the whole [T, H] input (every rank has it). No communication: silu and the product are
    elementwise, so they work on this rank's slice of the intermediate features alone.
    """
    raise NotImplementedError(
        "mlp_partial: F.linear(F.silu(F.linear(x, gate)) * F.linear(x, up), down)"
    )


def tp_mlp(
    rank: int,
    world_size: int,
    x: torch.Tensor,
    w_gate: torch.Tensor,
    w_up: torch.Tensor,
    w_down: torch.Tensor,
) -> torch.Tensor:
    """Runs inside one of `world_size` processes (torch.distributed is initialised, gloo).

    Shard the full weights for this rank, compute the partial output and make it the FULL output
    on every rank with one collective. Engine: RowParallelLinear.forward calls
    tensor_model_parallel_all_reduce (vllm_mini/distributed/communication_op.py).
    """
    raise NotImplementedError(
        "tp_mlp: mlp_partial(x, *shard_mlp(...)), then torch.distributed.all_reduce it in place"
    )


def heads_per_rank(num_heads: int, num_kv_heads: int, tp: int) -> tuple[int, int, int]:
    """(query heads, KV heads, KV-head replicas) on one rank.

    Query heads split evenly. KV heads split evenly when there are at least tp of them; with fewer
    KV heads than ranks each rank holds ONE KV head and tp / num_kv_heads ranks share (replicate)
    it. Raise ValueError when a split is not even. Engine: QKVParallelLinear.__init__ in
    layers/linear.py. The KV cache of a rank holds only its KV heads.
    """
    raise NotImplementedError(
        "heads_per_rank: (num_heads / tp, max(1, num_kv_heads / tp), max(1, tp / num_kv_heads)), with checks"
    )


def pp_indices(num_layers: int, pp_rank: int, pp_size: int) -> tuple[int, int]:
    """[start, end) of the decoder layers pipeline stage `pp_rank` runs.

    Even split; the num_layers % pp_size leftover layers go one each to the stages just before
    the last one, walking backwards (the last stage also runs the norm and the LM head).
    Engine: get_pp_indices in vllm_mini/distributed/utils.py.
    """
    raise NotImplementedError(
        "pp_indices: sizes [L // p] * p, +1 for stages -2, -3, ... (wrapping to 0), then a prefix sum"
    )


def bubble_fraction(num_stages: int, num_microbatches: int) -> float:
    """Share of stage-time slots left idle when m micro-batches flow through p stages.

    Stage s works on micro-batch j in slot s + j; the whole run takes m + p - 1 slots, and each
    stage is busy in m of them. vllm_mini keeps one batch in flight (m = 1); vLLM keeps p.
    """
    raise NotImplementedError("bubble_fraction: (p - 1) / (m + p - 1)")
