"""The CPU FP8 weight-only kernel (csrc/cpu/fp8_gemm.cpp) against its torch reference.

Both compute x @ (codes * scale)^T in float32 (a bfloat16 x is widened first), so they differ
only in summation order. Shapes are SmolLM2's (K = 576 hidden, 1536 intermediate) and the token
counts a decode step (1), a speculative step (4), a tile and a remainder (17), and a prefill
chunk (130) produce; the AVX-512 path and the portable one are both checked.
"""

from __future__ import annotations

import pytest
import torch

from vllm_mini.model_executor.layers.quantization.utils import fp8_ops
from vllm_mini.model_executor.layers.quantization.utils.w8a8_utils import quantize_weight_fp8

pytestmark = pytest.mark.skipif(
    not fp8_ops.KERNEL_AVAILABLE, reason="vllm_mini._C has no fp8_gemm: run `make kernels`"
)


def _weight(n: int, k: int, per_channel: bool, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    # Rows of very different sizes, so one scale per tensor leaves small rows in subnormal codes.
    w = torch.randn(n, k, generator=gen) * torch.logspace(-3, 0, n).reshape(-1, 1)
    codes, scale = quantize_weight_fp8(w, per_channel)
    return codes, scale.reshape(-1).contiguous()


@pytest.mark.parametrize("use_portable", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("per_channel", [True, False])
@pytest.mark.parametrize("k", [576, 1536])
@pytest.mark.parametrize("m", [1, 4, 17, 130])
def test_kernel_equals_the_dequantized_weight_matmul(m, k, per_channel, dtype, use_portable):
    codes, scale = _weight(96, k, per_channel, seed=m + k)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(1)).to(dtype)
    got = torch.ops.vllm_mini_C.fp8_gemm(x, codes.view(torch.uint8), scale, use_portable)
    expected = fp8_ops.fp8_matmul_reference(x.float(), codes, scale)
    assert got.dtype == dtype
    # float32 out: only the summation order differs; bfloat16 out: one rounding of the result.
    rtol = 1e-5 if dtype == torch.float32 else 2**-8
    torch.testing.assert_close(got.float(), expected, rtol=rtol, atol=rtol * expected.abs().max())


def test_every_code_decodes_exactly_subnormals_included():
    codes = torch.arange(256, dtype=torch.uint8)
    codes = codes[(codes & 0x7F) != 0x7F]  # the two NaN codes: never produced (see the kernel)
    codes = codes.repeat(8)[: 32 * 60].reshape(60, 32)  # whole 32-code chunks for the AVX path
    fp8 = codes.view(torch.float8_e4m3fn)
    assert (fp8.float().abs() < 2**-6).sum() > 0  # e4m3's subnormals are among them
    scale = torch.tensor([3.0])
    torch.testing.assert_close(
        fp8_ops.fp8_dequantize(fp8, scale), fp8.float() * 3.0, rtol=0, atol=0
    )
    # One-hot rows of x pick single codes: the matmul decodes each exactly too.
    eye = torch.eye(32)
    for use_portable in (False, True):
        got = torch.ops.vllm_mini_C.fp8_gemm(eye, codes, scale, use_portable)
        torch.testing.assert_close(got, (fp8.float() * 3.0).t(), rtol=0, atol=0)


def test_a_width_that_is_not_whole_chunks_takes_the_tail_loop():
    codes, scale = _weight(24, 40, True, seed=5)
    x = torch.randn(3, 40, generator=torch.Generator().manual_seed(6))
    got = torch.ops.vllm_mini_C.fp8_gemm(x, codes.view(torch.uint8), scale)
    torch.testing.assert_close(got, fp8_ops.fp8_matmul_reference(x, codes, scale))


@pytest.mark.parametrize("m", [1, 8, 40])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fp8_matmul_dispatch_adds_the_bias_on_both_sides_of_the_crossover(m, dtype):
    codes, scale = _weight(64, 576, True, seed=7)
    gen = torch.Generator().manual_seed(8)
    x, bias = torch.randn(2, m, 576, generator=gen).to(dtype), torch.randn(64, generator=gen)
    got = fp8_ops.fp8_matmul(x, codes, scale, bias.to(dtype))
    expected = fp8_ops.fp8_matmul_reference(x.float(), codes, scale, bias)
    assert got.shape == (2, m, 64) and got.dtype == dtype
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(got.float(), expected, rtol=tol, atol=tol * expected.abs().max())


def test_a_scale_of_the_wrong_length_is_refused():
    codes, scale = _weight(8, 64, True, seed=9)
    with pytest.raises(RuntimeError, match="fp8: scale has 3 elements"):
        torch.ops.vllm_mini_C.fp8_gemm(torch.randn(1, 64), codes.view(torch.uint8), scale[:3])
