"""Lesson 08: your shards, your heads split and your pipeline layout must be the engine's.

Runs `solutions.py` by default; `LESSON_IMPL=exercises` checks your `exercises.py`: shard_mlp
against MergedColumnParallelLinear / RowParallelLinear built as rank r of n (their own weight
loaders), mlp_partial summed over ranks against the unsharded MLP, tp_mlp in two real processes
joined by gloo (every rank must end with the unsharded output), heads_per_rank against
QKVParallelLinear, pp_indices against get_pp_indices, and bubble_fraction against a schedule
counted slot by slot.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lessons._impl import impl_name, load_impl
from lessons._spawn import run_on_ranks
from vllm_mini.distributed import get_pp_indices, simulate_tensor_parallel
from vllm_mini.model_executor.layers.linear import (
    MergedColumnParallelLinear,
    QKVParallelLinear,
    RowParallelLinear,
)

impl = load_impl(__file__)
H, INTER = 16, 24


def weights(seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    w_gate, w_up = torch.randn(INTER, H, generator=g), torch.randn(INTER, H, generator=g)
    return torch.randn(5, H, generator=g), w_gate, w_up, torch.randn(H, INTER, generator=g)


def full_mlp(x, w_gate, w_up, w_down) -> torch.Tensor:
    return F.linear(F.silu(F.linear(x, w_gate)) * F.linear(x, w_up), w_down)


@pytest.mark.parametrize("tp", [2, 3])
def test_shard_matches_the_engine_layers(tp):
    _, w_gate, w_up, w_down = weights()
    for rank in range(tp):
        with simulate_tensor_parallel(rank, tp):
            gate_up = MergedColumnParallelLinear(H, [INTER, INTER], bias=False)
            down = RowParallelLinear(INTER, H, bias=False)
        gate_up.weight_loader(gate_up.weight, w_gate, 0)
        gate_up.weight_loader(gate_up.weight, w_up, 1)
        down.weight_loader(down.weight, w_down)
        gate, up, down_shard = impl.shard_mlp(w_gate, w_up, w_down, rank, tp)
        torch.testing.assert_close(torch.cat([gate, up]), gate_up.weight.data)
        torch.testing.assert_close(down_shard, down.weight.data)
    with pytest.raises(ValueError):
        impl.shard_mlp(w_gate, w_up, w_down, 0, 5)


@pytest.mark.parametrize("tp", [1, 2, 4])
def test_partial_outputs_sum_to_the_full_mlp(tp):
    x, w_gate, w_up, w_down = weights(1)
    parts = [impl.mlp_partial(x, *impl.shard_mlp(w_gate, w_up, w_down, r, tp)) for r in range(tp)]
    torch.testing.assert_close(sum(parts), full_mlp(x, w_gate, w_up, w_down))
    if tp > 1:  # one partial alone is not the answer: the all-reduce is needed
        assert not torch.allclose(parts[0], full_mlp(x, w_gate, w_up, w_down))


def test_tp_mlp_in_two_processes_equals_the_unsharded_mlp():
    x, w_gate, w_up, w_down = weights(2)
    file = str(Path(__file__).with_name(f"{impl_name()}.py"))
    outs = run_on_ranks(file, "tp_mlp", 2, x, w_gate, w_up, w_down)
    for out in outs:  # all-reduce leaves the same full result on every rank
        torch.testing.assert_close(out, full_mlp(x, w_gate, w_up, w_down))


@pytest.mark.parametrize(
    ("heads", "kv_heads", "tp"),
    [(9, 3, 3), (9, 3, 1), (32, 8, 4), (32, 8, 16), (4, 2, 2), (12, 3, 6)],
)
def test_heads_per_rank_match_qkv_parallel_linear(heads, kv_heads, tp):
    with simulate_tensor_parallel(0, tp):
        qkv = QKVParallelLinear(64, 8, heads, kv_heads, bias=False)
    assert impl.heads_per_rank(heads, kv_heads, tp) == (
        qkv.num_heads,
        qkv.num_kv_heads,
        qkv.num_kv_head_replicas,
    )


def test_heads_per_rank_refuses_uneven_splits():
    with pytest.raises(ValueError):
        impl.heads_per_rank(9, 3, 2)  # SmolLM2 on 2 ranks: 9 heads do not split
    with pytest.raises(ValueError):
        impl.heads_per_rank(8, 3, 2)  # 3 KV heads do not split over 2 ranks
    with pytest.raises(ValueError):
        impl.heads_per_rank(8, 3, 4)  # nor can 4 ranks share 3 KV heads evenly


@pytest.mark.parametrize(
    ("layers", "stages"),
    [
        (layers, stages)
        for layers in (2, 5, 7, 30, 31)
        for stages in (1, 2, 3, 4)
        if stages <= layers
    ],
)
def test_pp_indices_match_the_engine(layers, stages):
    mine = [impl.pp_indices(layers, r, stages) for r in range(stages)]
    assert mine == [get_pp_indices(layers, r, stages) for r in range(stages)]


@pytest.mark.parametrize(("stages", "micro"), [(1, 1), (2, 1), (2, 2), (4, 1), (4, 8), (3, 5)])
def test_bubble_fraction_counts_idle_slots(stages, micro):
    # Stage s runs micro-batch j in time slot s + j: count the idle (stage, slot) pairs.
    slots = micro + stages - 1
    busy = {(s, s + j) for s in range(stages) for j in range(micro)}
    idle = stages * slots - len(busy)
    assert impl.bubble_fraction(stages, micro) == pytest.approx(idle / (stages * slots))


@pytest.mark.demo
def test_demo_shards_by_hand_and_runs_a_model_on_two_ranks(tiny_llama_dir, capsys):
    demo = load_impl(__file__, "demo")
    result = demo.main(str(tiny_llama_dir), tp=2, max_tokens=6)
    out = capsys.readouterr().out
    assert result["mlp_error"] < 1e-4 and "on both ranks" in out
    assert result["identical"] and "identical to tensor_parallel_size=1: True" in out
    # The tiny model (4 heads, 2 KV heads, 2 layers) on 2 ranks: 2 heads and 1 KV head each;
    # 2 all-reduces per layer (attention output, MLP output) + 1 for the embedding, per step.
    for info in result["ranks"]:
        assert (info.num_heads, info.num_kv_heads) == (2, 1)
        assert info.tp.all_reduce_calls == 5 * result["steps"]
