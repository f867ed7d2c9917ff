"""The int8-activation GGUF kernel (csrc/cpu/gguf_gemm_q8.cpp) equals its torch reference.

gguf_ops.gguf_matmul_q8_reference quantizes x per 32-block exactly as the kernel does (same
float32 steps, ties to even) and multiplies in float64; the kernel's integer block sums are exact,
so only its float32 scaling and summation order differ: tolerance 1e-5 relative to the output's
scale. The quantization itself is checked code for code through one-hot Q8_0 weights (y = the
dequantized x). Against the float kernel the int8 path may differ by the rounding of x to 8 bits:
a few 1e-3 of the output's scale on random data.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.quantization.gguf_blocks import make_blocks
from vllm_mini.model_executor.layers.quantization.utils import gguf_ops
from vllm_mini.model_executor.layers.quantization.utils.gguf_quants import GGML_TYPE_BY_NAME

pytestmark = pytest.mark.skipif(
    not gguf_ops.KERNEL_AVAILABLE or not hasattr(torch.ops.vllm_mini_C, "gguf_gemm_q8"),
    reason="vllm_mini._C has no gguf_gemm_q8 (rebuild: make kernels)",
)
TYPES = ["Q4_0", "Q4_1", "Q8_0"]


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


def _paths(x, blocks, type_id):
    yield torch.ops.vllm_mini_C.gguf_gemm_q8(x, blocks, type_id, False)  # VNNI where built
    yield torch.ops.vllm_mini_C.gguf_gemm_q8(x, blocks, type_id, True)  # portable


@pytest.mark.parametrize("type_name", TYPES)
@pytest.mark.parametrize("num_tokens", [1, 3, 8, 17, 64])
@pytest.mark.parametrize("cols", [96, 576, 1536])  # 96: an odd number of blocks
def test_q8_kernel_equals_reference(type_name, num_tokens, cols):
    type_id = GGML_TYPE_BY_NAME[type_name].type_id
    blocks = make_blocks(type_name, rows=45, cols=cols, seed=num_tokens)
    x = _x(num_tokens, cols, seed=cols + num_tokens)
    expected = gguf_ops.gguf_matmul_q8_reference(x, blocks, type_id)
    for got in _paths(x, blocks, type_id):
        _close(got, expected, rtol=1e-5)


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
        codes, dx = gguf_ops.quantize_q8_reference(x)
        expected = (codes * dx).reshape(rows, cols)
        for got in _paths(x, blocks, 8):
            assert torch.equal(got, expected)


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
        expected = gguf_ops.gguf_matmul_q8_reference(x, blocks, type_id)
        for got in _paths(x, blocks, type_id):
            _close(got, expected, rtol=1e-5)
        # Against float activations: the cost of rounding x to 8 bits per block.
        exact = gguf_ops.gguf_matmul_reference(x, blocks, type_id)
        _close(expected, exact, rtol=2e-2)


@pytest.mark.parametrize("type_name", TYPES)
def test_gguf_matmul_takes_int8_path_in_its_token_range(type_name, monkeypatch):
    if not gguf_ops.INT8_KERNEL_AVAILABLE:
        pytest.skip(
            "gguf_gemm_q8 was built without AVX-512 VNNI: gguf_matmul keeps the float kernel"
        )
    type_id = GGML_TYPE_BY_NAME[type_name].type_id
    blocks = make_blocks(type_name, rows=64, cols=576, seed=1)
    x = _x(gguf_ops.INT8_MAX_TOKENS, 576, seed=2)
    q8 = gguf_ops.gguf_matmul_q8_reference(x, blocks, type_id)
    exact = gguf_ops.gguf_matmul_reference(x, blocks, type_id)
    monkeypatch.setattr(gguf_ops, "INT8_ACTIVATIONS", True)
    _close(gguf_ops.gguf_matmul(x, blocks, type_id), q8, rtol=1e-5)
    _close(gguf_ops.gguf_matmul(x[:1], blocks, type_id), exact[:1], rtol=1e-5)  # float kernel
    # The quantization error is visible (so the two paths are told apart) but small.
    assert (q8 - exact).abs().max() > 1e-5 * exact.abs().max()
    _close(q8, exact, rtol=2e-2)
    monkeypatch.setattr(gguf_ops, "INT8_ACTIVATIONS", False)
    _close(gguf_ops.gguf_matmul(x, blocks, type_id), exact, rtol=1e-5)


def test_q8_kernel_rejects_unsupported_type_and_bad_rows():
    blocks = make_blocks("Q6_K", rows=4, cols=256)
    with pytest.raises(RuntimeError, match="gguf_gemm_q8: ggml type 14 is not supported"):
        torch.ops.vllm_mini_C.gguf_gemm_q8(torch.randn(1, 256), blocks, 14)
    blocks = make_blocks("Q8_0", rows=4, cols=64)
    with pytest.raises(RuntimeError, match="qweight has 68 bytes per row, expected 102"):
        torch.ops.vllm_mini_C.gguf_gemm_q8(torch.randn(1, 96), blocks, 8)
