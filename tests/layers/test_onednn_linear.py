"""Prepacked oneDNN linear layers compute what F.linear computes (layers/utils.py).

The reference is `torch.nn.functional.linear` on the plain [out, in] weight: the packed path must
match it for decode (1 row), small and large batches, with and without bias, in fp32 and bf16;
layers pack at load time only where they should (CPU, fp32/bf16, one rank, switch on), the LM
head packs while the embedding table keeps serving lookups, and torch.compile (inductor) runs the
packed op.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vllm_mini.distributed import simulate_tensor_parallel
from vllm_mini.model_executor.layers.linear import MergedColumnParallelLinear, RowParallelLinear
from vllm_mini.model_executor.layers.utils import (
    ONEDNN_ENV,
    can_prepack,
    onednn_linear,
    prepack_weight,
)
from vllm_mini.model_executor.layers.vocab_parallel_embedding import (
    ParallelLMHead,
    VocabParallelEmbedding,
)

# (out, in): SmolLM2's o_proj and down_proj shapes, and an odd one no block size divides.
SHAPES = [(576, 576), (576, 1536), (100, 37)]
# bf16: both paths round their inputs to bf16 and accumulate in fp32, in different orders.
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-4), torch.bfloat16: dict(rtol=2e-2, atol=2e-2)}


@pytest.fixture(autouse=True)
def _onednn_on(monkeypatch):
    monkeypatch.setenv(ONEDNN_ENV, "1")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("rows", [1, 5, 64])
@pytest.mark.parametrize("shape", SHAPES)
def test_packed_matmul_matches_f_linear(shape, rows, bias, dtype):
    if dtype == torch.bfloat16 and not can_prepack(torch.empty(1, 1, dtype=dtype)):
        pytest.skip("this CPU has no fast oneDNN bf16")
    gen = torch.Generator().manual_seed(rows)
    out_f, in_f = shape
    w = (torch.randn(out_f, in_f, generator=gen) / in_f**0.5).to(dtype)
    b = torch.randn(out_f, generator=gen).to(dtype) if bias else None
    x = torch.randn(rows, in_f, generator=gen).to(dtype)
    got = onednn_linear(x, prepack_weight(w), b)
    assert got.shape == (rows, out_f) and got.dtype == dtype
    torch.testing.assert_close(got, F.linear(x, w, b), **TOL[dtype])


def test_packed_matmul_keeps_leading_dims_and_reads_strided_inputs():
    w, x = torch.randn(48, 32), torch.randn(32, 6).t()  # x: a transposed (non-contiguous) view
    packed = prepack_weight(w.t().contiguous().t())  # the fp32 layer's column-major weight
    torch.testing.assert_close(onednn_linear(x, packed), F.linear(x, w))
    x3 = torch.randn(2, 3, 32)
    torch.testing.assert_close(onednn_linear(x3, packed), F.linear(x3, w))


def test_only_cpu_fp32_bf16_single_rank_weights_are_packed(monkeypatch):
    assert can_prepack(torch.empty(8, 4))
    assert not can_prepack(torch.empty(8, 4, dtype=torch.float16))
    assert not can_prepack(torch.empty(8, 4, device="meta"))  # any non-CPU device
    assert not can_prepack(torch.empty(8))
    assert not can_prepack(torch.empty(8, 4), tp_size=2)
    monkeypatch.setenv(ONEDNN_ENV, "0")
    assert not can_prepack(torch.empty(8, 4))


def _loaded_mlp_pair(monkeypatch, env: str, w, b):
    monkeypatch.setenv(ONEDNN_ENV, env)
    layer = RowParallelLinear(w.shape[1], w.shape[0], bias=True)
    layer.weight.weight_loader(layer.weight, w)
    layer.bias.weight_loader(layer.bias, b)
    layer.quant_method.process_weights_after_loading(layer)
    return layer


def test_layer_packs_at_load_and_matches_the_switched_off_layer(monkeypatch):
    w, b, x = torch.randn(64, 96), torch.randn(64), torch.randn(7, 96)
    packed = _loaded_mlp_pair(monkeypatch, "1", w, b)
    plain = _loaded_mlp_pair(monkeypatch, "0", w, b)
    assert packed.weight_packed is not None and plain.weight_packed is None
    torch.testing.assert_close(packed.weight, w, rtol=0, atol=0)  # the plain copy is kept
    torch.testing.assert_close(packed(x)[0], plain(x)[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(plain(x)[0], x @ w.T + b)


def test_tensor_parallel_shards_stay_on_f_linear():
    with simulate_tensor_parallel(0, 2):
        layer = MergedColumnParallelLinear(16, [8, 8], bias=False)
    layer.quant_method.process_weights_after_loading(layer)
    assert layer.weight_packed is None


def test_lm_head_packs_but_the_embedding_table_does_not():
    vocab, dim = 192, 32
    table = torch.randn(vocab, dim)
    embed = VocabParallelEmbedding(vocab, dim)
    embed.weight.weight_loader(embed.weight, table)
    head = ParallelLMHead(vocab, dim).tie_weights(embed)
    for module in (embed, head):
        module.quant_method.process_weights_after_loading(module)
    assert getattr(embed, "weight_packed", None) is None
    assert head.weight_packed is not None and head.weight is embed.weight
    ids = torch.tensor([0, 7, 191])
    torch.testing.assert_close(embed(ids), table[ids], rtol=0, atol=0)
    h = torch.randn(3, dim)
    logits = head.quant_method.apply(head, h)
    torch.testing.assert_close(logits, h @ table.T, rtol=1e-5, atol=1e-4)


def test_inductor_compiles_the_packed_op_for_any_number_of_rows():
    w, b = torch.randn(48, 32), torch.randn(48)
    packed = prepack_weight(w)

    def mlp(x: torch.Tensor) -> torch.Tensor:
        return F.silu(onednn_linear(x, packed, b)) * 2

    compiled = torch.compile(mlp, backend="inductor", fullgraph=True, dynamic=False)
    for rows in (5, 1, 9):
        x = torch.randn(rows, 32)
        torch._dynamo.mark_dynamic(x, 0)
        torch.testing.assert_close(compiled(x), F.silu(F.linear(x, w, b)) * 2)
