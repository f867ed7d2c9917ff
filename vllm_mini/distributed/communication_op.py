"""Collectives used by the parallel layers. Mirrors vllm/distributed/communication_op.py.

Each is one call on the tensor-parallel group (parallel_state.py): with one rank it is the
identity, with several it is torch.distributed's collective over that group.
RowParallelLinear needs all-reduce (each rank holds a partial sum); a gathered
ColumnParallelLinear and the LM head need all-gather (each rank holds a slice of the output).
Next: the layers that call them, model_executor/layers/linear.py.
"""

from __future__ import annotations

import torch

from vllm_mini.distributed.parallel_state import get_tp_group


def tensor_model_parallel_all_reduce(x: torch.Tensor) -> torch.Tensor:
    return get_tp_group().all_reduce(x)


def tensor_model_parallel_all_gather(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    return get_tp_group().all_gather(x, dim)
