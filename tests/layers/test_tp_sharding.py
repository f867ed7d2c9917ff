"""Tensor-parallel weight sharding: simulated ranks 2 and 4 reassemble to the unsharded layer.

No communication happens; each "rank" is built under simulate_tensor_parallel and loads the FULL
checkpoint tensor through its weight_loader. We check the shards cover the weight exactly and that
combining per-rank outputs (concatenate for column-parallel, sum for row-parallel) gives the
unsharded output.
"""

from __future__ import annotations

import pytest
import torch

from vllm_mini.distributed import simulate_tensor_parallel
from vllm_mini.model_executor.layers.linear import (
    ColumnParallelLinear,
    MergedColumnParallelLinear,
    QKVParallelLinear,
    ReplicatedLinear,
    RowParallelLinear,
)
from vllm_mini.model_executor.layers.vocab_parallel_embedding import VocabParallelEmbedding

TP_SIZES = [2, 4]


def _ranks(tp: int, build):
    layers = []
    for rank in range(tp):
        with simulate_tensor_parallel(rank, tp):
            layers.append(build())
    return layers


@pytest.mark.parametrize("tp", TP_SIZES)
def test_column_parallel_outputs_concatenate(tp):
    w, b, x = torch.randn(32, 16), torch.randn(32), torch.randn(5, 16)
    layers = _ranks(tp, lambda: ColumnParallelLinear(16, 32, bias=True))
    for layer in layers:
        layer.weight.weight_loader(layer.weight, w)
        layer.bias.weight_loader(layer.bias, b)
    out = torch.cat([layer(x)[0] for layer in layers], dim=-1)
    torch.testing.assert_close(out, x @ w.T + b)


@pytest.mark.parametrize("tp", TP_SIZES)
def test_row_parallel_partial_sums_add_up(tp):
    w, b, x = torch.randn(16, 32), torch.randn(16), torch.randn(5, 32)
    layers = _ranks(tp, lambda: RowParallelLinear(32, 16, bias=True))
    for layer in layers:
        layer.weight.weight_loader(layer.weight, w)
        layer.bias.weight_loader(layer.bias, b)
    shard = 32 // tp
    out = sum(layer(x[:, r * shard : (r + 1) * shard])[0] for r, layer in enumerate(layers))
    torch.testing.assert_close(out, x @ w.T + b)


@pytest.mark.parametrize("tp", TP_SIZES)
def test_merged_gate_up_shards_reassemble(tp):
    gate, up = torch.randn(24, 8), torch.randn(24, 8)
    layers = _ranks(tp, lambda: MergedColumnParallelLinear(8, [24, 24], bias=False))
    for layer in layers:
        layer.weight.weight_loader(layer.weight, gate, 0)
        layer.weight.weight_loader(layer.weight, up, 1)
    half = 24 // tp
    torch.testing.assert_close(torch.cat([lay.weight[:half] for lay in layers]), gate)
    torch.testing.assert_close(torch.cat([lay.weight[half:] for lay in layers]), up)


@pytest.mark.parametrize("tp", TP_SIZES)
@pytest.mark.parametrize("num_kv_heads", [4, 2])
def test_qkv_shards_reassemble_with_kv_replication(tp, num_kv_heads):
    head, num_heads, hidden = 4, 8, 16
    q = torch.randn(num_heads * head, hidden)
    k = torch.randn(num_kv_heads * head, hidden)
    v = torch.randn(num_kv_heads * head, hidden)
    layers = _ranks(
        tp, lambda: QKVParallelLinear(hidden, head, num_heads, num_kv_heads, bias=False)
    )
    for layer in layers:
        for shard_id, t in (("q", q), ("k", k), ("v", v)):
            layer.weight.weight_loader(layer.weight, t, shard_id)
    q_rows = num_heads * head // tp
    torch.testing.assert_close(torch.cat([lay.weight[:q_rows] for lay in layers]), q)
    kv_rows = layers[0].num_kv_heads * head
    # Every rank holds the KV head(s) its query heads use: rank r's query heads are
    # [r*H/tp, (r+1)*H/tp), which map to KV head (r*H/tp) // (H/num_kv_heads).
    for rank, layer in enumerate(layers):
        kv_head = (rank * (num_heads // tp)) // (num_heads // num_kv_heads)
        expect_k = k[kv_head * head : kv_head * head + kv_rows]
        torch.testing.assert_close(layer.weight[q_rows : q_rows + kv_rows], expect_k)
        expect_v = v[kv_head * head : kv_head * head + kv_rows]
        torch.testing.assert_close(layer.weight[q_rows + kv_rows :], expect_v)


@pytest.mark.parametrize("tp", TP_SIZES)
def test_vocab_parallel_embedding_shards_sum_to_lookup(tp):
    vocab, dim = 200, 8
    table = torch.randn(vocab, dim)
    ids = torch.tensor([0, 5, 63, 64, 127, 128, 199])
    layers = _ranks(tp, lambda: VocabParallelEmbedding(vocab, dim))
    for layer in layers:
        layer.weight.weight_loader(layer.weight, table)
    # Each rank returns zeros for ids it does not own (torch.distributed is not initialised, so
    # the all-reduce inside forward is the identity and we do the sum here).
    partial = [layer(ids) for layer in layers]
    torch.testing.assert_close(sum(partial), table[ids])


def test_replicated_linear_and_bad_shapes():
    layer = ReplicatedLinear(4, 3, bias=False)
    with pytest.raises(ValueError, match="shape"):
        layer.weight.weight_loader(layer.weight, torch.randn(3, 5))
    with pytest.raises(ValueError, match="divisible"):
        with simulate_tensor_parallel(0, 3):
            ColumnParallelLinear(4, 8)
