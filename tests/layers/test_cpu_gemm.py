"""Prepacked CPU linear layers compute what F.linear computes (layers/utils.py).

The reference is `torch.nn.functional.linear` on the plain [out, in] weight. Both packed
backends must match it: our dense kernel (csrc/cpu/dense_gemm.cpp, its AVX-512 and its
plain-loop version) and oneDNN's. Covered: decode (1 row), the 6-row register tile and the rows
left over, 64-column tiles and the 16-column blocks left over, k cut into cache chunks, bias,
fp32 and bf16, strided and 3-D inputs. Layers pack at load time only where they should (CPU,
fp32/bf16, one rank, backend on), fall back to oneDNN for a shape the dense kernel cannot take,
the LM head packs while the embedding table keeps serving lookups, and torch.compile (inductor)
runs both packed ops.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vllm_mini.distributed import simulate_tensor_parallel
from vllm_mini.model_executor.layers.linear import MergedColumnParallelLinear, RowParallelLinear
from vllm_mini.model_executor.layers.utils import (
    GEMM_ENV,
    dense_linear,
    dense_supports,
    onednn_linear,
    pack_dense,
    packed_linear,
    pick_backend,
    prepack_weight,
)
from vllm_mini.model_executor.layers.vocab_parallel_embedding import (
    ParallelLMHead,
    VocabParallelEmbedding,
)

# bf16: both paths round their inputs to bf16 and accumulate in fp32, in different orders.
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-4), torch.bfloat16: dict(rtol=2e-2, atol=2e-2)}


def _case(shape, rows, bias, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed + rows)
    out_f, in_f = shape
    w = (torch.randn(out_f, in_f, generator=gen) / in_f**0.5).to(dtype)
    b = torch.randn(out_f, generator=gen).to(dtype) if bias else None
    x = torch.randn(rows, in_f, generator=gen).to(dtype)
    return w, b, x


def _need_dense(dtype):
    if not dense_supports(torch.empty(16, 2, dtype=dtype)):
        pytest.skip(f"this build of the dense kernel has no vector path for {dtype}")


# (out, in): SmolLM2's qkv and down_proj; 80 = one 64-column tile + one 16-column block;
# in 2100 (fp32) and 4100 (bf16) take three k chunks of the cache blocking.
DENSE_SHAPES = [(960, 576), (576, 1536), (80, 40), (64, 2100), (48, 4100)]


@pytest.mark.parametrize("portable", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("rows", [1, 5, 6, 13, 64])
@pytest.mark.parametrize("shape", DENSE_SHAPES)
def test_dense_kernel_matches_f_linear(shape, rows, bias, dtype, portable):
    _need_dense(dtype)
    if portable and rows == 64 and shape[1] > 2000:
        pytest.skip("the plain loops are slow; the chunked k is covered at fewer rows")
    w, b, x = _case(shape, rows, bias, dtype)
    got = dense_linear(x, pack_dense(w), b, portable=portable)
    assert got.shape == (rows, shape[0]) and got.dtype == dtype
    ref = F.linear(x.float(), w.float(), None if b is None else b.float()).to(dtype)
    torch.testing.assert_close(got, ref, **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dense_kernel_reads_strided_rows_and_keeps_leading_dims(dtype):
    _need_dense(dtype)
    w = torch.randn(96, 64).to(dtype)
    rows = torch.randn(7, 201).to(dtype)[:, 11:75]  # a row-strided view, odd offset and stride
    packed = pack_dense(w)
    torch.testing.assert_close(dense_linear(rows, packed), F.linear(rows, w), **TOL[dtype])
    x3 = torch.randn(2, 3, 64).to(dtype)
    torch.testing.assert_close(dense_linear(x3, packed), F.linear(x3, w), **TOL[dtype])
    xt = torch.randn(64, 5).to(dtype).t()  # columns strided: the kernel copies it first
    torch.testing.assert_close(dense_linear(xt, packed), F.linear(xt, w), **TOL[dtype])


def test_dense_kernel_names_what_is_wrong():
    op = torch.ops.vllm_mini_C.dense_gemm
    w = pack_dense(torch.randn(32, 8))
    with pytest.raises(RuntimeError, match="K=8 but x has K=6"):
        op(torch.randn(2, 6), w, None)
    with pytest.raises(RuntimeError, match="bias must be"):
        op(torch.randn(2, 8), w, torch.randn(5))
    with pytest.raises(RuntimeError, match="float32 or bfloat16"):
        op(torch.randn(2, 8).half(), w, None)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("rows", [1, 5, 64])
def test_onednn_backend_matches_f_linear(monkeypatch, rows, bias, dtype):
    monkeypatch.setenv(GEMM_ENV, "onednn")
    w, b, x = _case((576, 576), rows, bias, dtype)
    if pick_backend(w) != "onednn":
        pytest.skip(f"this CPU has no fast oneDNN {dtype}")
    packed = prepack_weight(w)
    assert packed.is_mkldnn
    got = packed_linear(x, packed, b)
    torch.testing.assert_close(got, F.linear(x, w, b), **TOL[dtype])
    x3 = x.view(1, rows, -1)
    torch.testing.assert_close(onednn_linear(x3, packed, b), F.linear(x3, w, b), **TOL[dtype])


def test_which_weights_are_packed_and_by_which_backend(monkeypatch):
    _need_dense(torch.float32)
    assert pick_backend(torch.empty(64, 4)) == "dense"  # the default
    assert pick_backend(torch.empty(100, 37)) == "onednn"  # 100 is not a multiple of 16
    assert pick_backend(torch.empty(16, 4, dtype=torch.float16)) == "torch"
    assert pick_backend(torch.empty(16, 4, device="meta")) == "torch"  # any non-CPU device
    assert pick_backend(torch.empty(16)) == "torch"
    assert pick_backend(torch.empty(16, 4), tp_size=2) == "torch"
    assert prepack_weight(torch.empty(16, 4), tp_size=2) is None
    monkeypatch.setenv(GEMM_ENV, "onednn")
    assert pick_backend(torch.empty(64, 4)) == "onednn"
    monkeypatch.setenv(GEMM_ENV, "torch")
    assert prepack_weight(torch.empty(64, 4)) is None
    monkeypatch.setenv(GEMM_ENV, "fast")
    with pytest.raises(ValueError, match="VLLM_MINI_CPU_GEMM must be one of dense, onednn, torch"):
        pick_backend(torch.empty(64, 4))


def _loaded_layer(monkeypatch, backend: str, w, b):
    monkeypatch.setenv(GEMM_ENV, backend)
    layer = RowParallelLinear(w.shape[1], w.shape[0], bias=True)
    layer.weight.weight_loader(layer.weight, w)
    layer.bias.weight_loader(layer.bias, b)
    layer.quant_method.process_weights_after_loading(layer)
    return layer


def test_layers_pack_at_load_and_match_the_f_linear_layer(monkeypatch):
    w, b, x = torch.randn(64, 96), torch.randn(64), torch.randn(7, 96)
    plain = _loaded_layer(monkeypatch, "torch", w, b)
    assert plain.weight_packed is None
    torch.testing.assert_close(plain(x)[0], x @ w.T + b)
    for backend in ("dense", "onednn"):
        packed = _loaded_layer(monkeypatch, backend, w, b)
        assert packed.weight_packed is not None
        assert packed.weight_packed.is_mkldnn == (pick_backend(w) == "onednn")
        torch.testing.assert_close(packed.weight, w, rtol=0, atol=0)  # the plain copy is kept
        torch.testing.assert_close(packed(x)[0], plain(x)[0], rtol=1e-5, atol=1e-5)


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


@pytest.mark.parametrize("backend", ["dense", "onednn"])
def test_inductor_compiles_the_packed_op_for_any_number_of_rows(monkeypatch, backend):
    monkeypatch.setenv(GEMM_ENV, backend)
    w, b = torch.randn(48, 32), torch.randn(48)
    packed = prepack_weight(w)

    def mlp(x: torch.Tensor) -> torch.Tensor:
        return F.silu(packed_linear(x, packed, b)) * 2

    compiled = torch.compile(mlp, backend="inductor", fullgraph=True, dynamic=False)
    for rows in (5, 1, 9):
        x = torch.randn(rows, 32)
        torch._dynamo.mark_dynamic(x, 0)
        torch.testing.assert_close(compiled(x), F.silu(F.linear(x, w, b)) * 2)
