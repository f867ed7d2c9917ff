"""The int8-activation GGUF kernel (csrc/cpu/gguf_gemm_q8.cpp): right, and batch invariant.

gguf_q8.gguf_matmul_q8_reference quantizes x per 32-block exactly as the kernel does (same
float32 steps, ties to even) and multiplies in float64; the kernel's integer block sums are exact,
so only its float32 scaling and summation order differ: tolerance 1e-5 relative to the output's
scale. The quantization itself is checked code for code through one-hot Q8_0 weights (y = the
dequantized x). The portable loop does the VNNI loop's float steps in the same order: the two
agree bit for bit. Batch invariance, bit for bit: every row's output is the same computed alone
as inside batches of 2 to 513 rows at any position, on one thread or two; that is what keeps a
request's greedy text independent of its neighbours, of preemption and of speculative decoding.
Against float activations the int8 path differs by the rounding of x to 8 bits: a few 1e-3 of
the output's scale on random data.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.quantization.gguf_blocks import make_blocks
from vllm_mini.model_executor.layers.linear import RowParallelLinear
from vllm_mini.model_executor.layers.quantization.gguf import GGUFConfig
from vllm_mini.model_executor.layers.quantization.utils import gguf_ops, gguf_q8
from vllm_mini.model_executor.layers.quantization.utils.gguf_quants import GGML_TYPE_BY_NAME
from vllm_mini.model_executor.layers.vocab_parallel_embedding import VocabParallelEmbedding

pytestmark = pytest.mark.skipif(
    not gguf_ops.KERNEL_AVAILABLE or not hasattr(torch.ops.vllm_mini_C, "gguf_gemm_q8"),
    reason="vllm_mini._C has no gguf_gemm_q8 (rebuild: make kernels)",
)
TYPES = ["Q4_0", "Q4_1", "Q8_0"]
BATCH_SIZES = [1, 2, 3, 7, 16, 33, 64, 65, 200, 513]


def _close(actual: torch.Tensor, expected: torch.Tensor, rtol: float) -> None:
    scale = expected.abs().max().clamp_min(1e-6)
    err = (actual.double() - expected.double()).abs().max()
    assert err <= rtol * scale, f"max error {err.item():.3g}, scale {scale.item():.3g}"


def _x(num_tokens: int, cols: int, seed: int) -> torch.Tensor:
    """Random x with an all-zero block, a block of zeros but one value, and a large outlier."""
    x = torch.randn(num_tokens, cols, generator=torch.Generator().manual_seed(seed))
    x[0, :32] = 0.0
    x[-1, 32:64] = 0.0
    x[-1, 40] = -3.0
    x[num_tokens // 2, 7] = 80.0
    return x


def _q8(x, packed, type_id, rows, portable=False):
    return torch.ops.vllm_mini_C.gguf_gemm_q8(x, packed, type_id, rows, portable)


def _paths(x, blocks, type_id):
    """The VNNI loop (where built) and the portable loop: bit-identical, so one result."""
    packed = gguf_q8.pack_q8(blocks, type_id)
    fast = _q8(x, packed, type_id, blocks.shape[0])
    portable = _q8(x, packed, type_id, blocks.shape[0], portable=True)
    assert torch.equal(fast, portable)
    return fast


@pytest.mark.parametrize("type_name", TYPES)
@pytest.mark.parametrize("num_tokens", [1, 3, 8, 17, 64, 70])
@pytest.mark.parametrize("cols", [96, 576, 1536])  # 96: an odd number of blocks
def test_q8_kernel_equals_reference(type_name, num_tokens, cols):
    type_id = GGML_TYPE_BY_NAME[type_name].type_id
    blocks = make_blocks(type_name, rows=45, cols=cols, seed=num_tokens)  # 45: a partial group
    x = _x(num_tokens, cols, seed=cols + num_tokens)
    expected = gguf_q8.gguf_matmul_q8_reference(x, blocks, type_id)
    _close(_paths(x, blocks, type_id), expected, rtol=1e-5)


def test_q8_quantization_is_code_exact():
    # One-hot Q8_0 rows (d = 1, q = 1 at column k): y[:, k] is x's dequantized value dx * code,
    # so any code the kernel rounds differently from the reference shows as a whole step dx.
    cols, rows = 576, 64
    blocks = np.zeros((cols, cols // 32, 34), np.uint8)
    blocks[:, :, 0:2] = np.array([1.0], np.float16).view(np.uint8)
    for k in range(cols):
        blocks[k, k // 32, 2 + k % 32] = 1
    blocks = torch.from_numpy(blocks.reshape(cols, -1))
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        x = torch.randn(rows, cols, generator=gen) * torch.rand(rows, 1, generator=gen) * 10
        codes, dx = gguf_q8.quantize_q8_reference(x)
        expected = (codes * dx).reshape(rows, cols)
        assert torch.equal(_paths(x, blocks, 8), expected)


@pytest.mark.parametrize("type_name", TYPES)
@pytest.mark.parametrize("shape", [(53, 576), (16, 96), (77, 1536)])  # odd N, odd block count
def test_rows_are_batch_invariant_bit_for_bit(type_name, shape):
    type_id = GGML_TYPE_BY_NAME[type_name].type_id
    rows, cols = shape
    packed = gguf_q8.pack_q8(make_blocks(type_name, rows=rows, cols=cols, seed=2), type_id)
    # Rows of very different magnitudes, so that anything shared between rows would show.
    x = _x(max(BATCH_SIZES), cols, seed=5) * torch.logspace(-3, 3, max(BATCH_SIZES))[:, None]
    alone = torch.stack([_q8(x[i : i + 1], packed, type_id, rows)[0] for i in range(len(x))])
    threads = torch.get_num_threads()
    try:
        for num_threads in sorted({1, 2, threads}):
            torch.set_num_threads(num_threads)
            for m in BATCH_SIZES:
                for start in sorted({0, (len(x) - m) // 2, len(x) - m}):
                    batch = _q8(x[start : start + m], packed, type_id, rows)
                    assert torch.equal(batch, alone[start : start + m]), (m, start, num_threads)
    finally:
        torch.set_num_threads(threads)


def test_q8_kernel_on_real_smollm2_rows(smollm2_gguf):
    from gguf import GGUFReader

    reader = GGUFReader(str(smollm2_gguf))
    tensors = {t.name: t for t in reader.tensors}
    for name in ("blk.0.ffn_down.weight", "blk.3.attn_q.weight", "token_embd.weight"):
        t = tensors[name]
        blocks = torch.from_numpy(np.array(t.data[:200])).reshape(200, -1).contiguous()
        type_id = int(t.tensor_type)
        cols = int(t.shape[0])
        x = _x(5, cols, seed=3)
        expected = gguf_q8.gguf_matmul_q8_reference(x, blocks, type_id)
        _close(_paths(x, blocks, type_id), expected, rtol=1e-5)
        # Against float activations: the cost of rounding x to 8 bits per block.
        exact = gguf_ops.gguf_matmul_reference(x, blocks, type_id)
        _close(expected, exact, rtol=2e-2)


@pytest.mark.parametrize("type_name", TYPES)
def test_gguf_matmul_takes_int8_path_at_every_token_count(type_name, monkeypatch):
    if not gguf_ops.INT8_KERNEL_AVAILABLE:
        pytest.skip(
            "gguf_gemm_q8 was built without AVX-512 VNNI: gguf_matmul keeps the float kernel"
        )
    type_id = GGML_TYPE_BY_NAME[type_name].type_id
    blocks = make_blocks(type_name, rows=64, cols=576, seed=1)
    x = _x(80, 576, seed=2)
    q8 = gguf_q8.gguf_matmul_q8_reference(x, blocks, type_id)
    exact = gguf_ops.gguf_matmul_reference(x, blocks, type_id)
    monkeypatch.setattr(gguf_ops, "INT8_ACTIVATIONS", True)
    for m in (1, 2, 40, 80):  # decode, a small batch, prefills past the float path's GEMM switch
        _close(gguf_ops.gguf_matmul(x[:m], blocks, type_id), q8[:m], rtol=1e-5)
    # bfloat16 x keeps the float path.
    got = gguf_ops.gguf_matmul(x[:2].bfloat16(), blocks, type_id)
    assert got.dtype == torch.bfloat16
    _close(got.float(), exact[:2], rtol=1e-2)
    # The quantization error is visible (so the two paths are told apart) but small.
    assert (q8 - exact).abs().max() > 1e-5 * exact.abs().max()
    _close(q8, exact, rtol=2e-2)
    monkeypatch.setattr(gguf_ops, "INT8_ACTIVATIONS", False)
    for m in (1, 80):
        _close(gguf_ops.gguf_matmul(x[:m], blocks, type_id), exact[:m], rtol=1e-5)


def test_layers_pack_at_load_when_the_int8_path_is_on(monkeypatch):
    if not gguf_ops.INT8_KERNEL_AVAILABLE:
        pytest.skip("gguf_gemm_q8 was built without AVX-512 VNNI: the layers keep the file layout")
    blocks = make_blocks("Q4_1", rows=40, cols=96, seed=4)
    table = make_blocks("Q8_0", rows=100, cols=64, seed=6)
    x = _x(3, 96, seed=1)
    for enabled in (True, False):
        monkeypatch.setattr(gguf_ops, "INT8_ACTIVATIONS", enabled)
        layer = RowParallelLinear(96, 40, bias=False, quant_config=GGUFConfig())
        layer.qweight.weight_loader(layer.qweight, blocks)
        layer.qweight_type.weight_loader(layer.qweight_type, torch.tensor(3))
        layer.quant_method.process_weights_after_loading(layer)
        (part,) = layer.gguf_parts
        assert (part.packed is not None, part.blocks is None) == (enabled, enabled)
        oracle = gguf_q8.gguf_matmul_q8_reference if enabled else gguf_ops.gguf_matmul_reference
        _close(layer(x)[0], oracle(x, blocks, 3), rtol=1e-5)
        # The embedding keeps the file's rows for lookups next to the packed LM head.
        emb = VocabParallelEmbedding(100, 64, quant_config=GGUFConfig())
        emb.qweight.weight_loader(emb.qweight, table)
        emb.qweight_type.weight_loader(emb.qweight_type, torch.tensor(8))
        emb.quant_method.process_weights_after_loading(emb)
        assert emb.gguf_parts[0].blocks is not None
        assert (emb.gguf_parts[0].packed is not None) == enabled


def test_q8_kernel_rejects_unsupported_type_and_bad_shapes():
    with pytest.raises(ValueError, match="pack_q8 takes Q4_0, Q4_1 or Q8_0 blocks"):
        gguf_q8.pack_q8(make_blocks("Q6_K", rows=4, cols=256), 14)
    packed = gguf_q8.pack_q8(make_blocks("Q8_0", rows=4, cols=64), 8)
    with pytest.raises(RuntimeError, match="gguf_gemm_q8: ggml type 14 is not supported"):
        _q8(torch.randn(1, 64), packed, 14, 4)
    with pytest.raises(RuntimeError, match="packed has 1088 bytes per group, expected 1632"):
        _q8(torch.randn(1, 96), packed, 8, 4)
    with pytest.raises(RuntimeError, match="packed has 1 groups of 16 rows, expected 2"):
        _q8(torch.randn(1, 64), packed, 8, 17)
