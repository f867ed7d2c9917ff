"""Rank layout, layer split and config checks: the arithmetic of stage 8, without processes."""

from __future__ import annotations

import pytest
import torch

from vllm_mini.config import ParallelConfig
from vllm_mini.distributed import get_pp_indices, get_tp_group, simulate_tensor_parallel
from vllm_mini.distributed.parallel_state import (
    get_tensor_model_parallel_world_size,
    model_parallel_group_ranks,
)


def test_group_layout_is_vllms():
    # rank = pp_rank * tp + tp_rank: TP groups are consecutive ranks, PP groups are strided.
    assert model_parallel_group_ranks(2, 2) == ([[0, 1], [2, 3]], [[0, 2], [1, 3]])
    assert model_parallel_group_ranks(3, 1) == ([[0, 1, 2]], [[0], [1], [2]])
    assert model_parallel_group_ranks(1, 3) == ([[0], [1], [2]], [[0, 1, 2]])


@pytest.mark.parametrize(
    ("layers", "stages", "expected"),
    [
        (30, 1, [(0, 30)]),
        (30, 4, [(0, 7), (7, 15), (15, 23), (23, 30)]),  # leftovers before the last stage
        (5, 2, [(0, 3), (3, 5)]),
        (7, 3, [(0, 2), (2, 5), (5, 7)]),
        (2, 2, [(0, 1), (1, 2)]),
    ],
)
def test_pp_indices_cover_every_layer_once(layers, stages, expected):
    assert [get_pp_indices(layers, r, stages) for r in range(stages)] == expected


def test_pp_indices_refuse_more_stages_than_layers():
    with pytest.raises(ValueError, match=r"pipeline_parallel_size must be in \[1, num_hidden"):
        get_pp_indices(2, 0, 3)


def test_a_lone_process_is_rank_0_of_1_and_collectives_are_identities():
    x = torch.randn(3, 4)
    group = get_tp_group()
    assert (group.rank_in_group, group.world_size) == (0, 1)
    assert group.all_reduce(x) is x and group.all_gather(x) is x
    with simulate_tensor_parallel(1, 4):  # building layers as rank 1 of 4 communicates nothing
        assert get_tensor_model_parallel_world_size() == 4
        assert group.all_reduce(x) is x
    assert get_tensor_model_parallel_world_size() == 1


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        (dict(tensor_parallel_size=0), "tensor_parallel_size must be an integer >= 1"),
        (dict(data_parallel_size=1.5), "data_parallel_size must be an integer >= 1"),
        (dict(distributed_executor_backend="slurm"), "must be one of"),
    ],
)
def test_parallel_config_names_the_bad_field(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        ParallelConfig(**kwargs)


def test_backend_defaults_to_uni_for_one_rank_and_mp_for_more():
    assert ParallelConfig().distributed_executor_backend == "uni"
    assert ParallelConfig(tensor_parallel_size=2).distributed_executor_backend == "mp"
    assert ParallelConfig(data_parallel_size=2).distributed_executor_backend == "uni"
