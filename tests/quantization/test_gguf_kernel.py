"""The C++ GGUF kernel (csrc/cpu/gguf_gemm.cpp) equals the torch reference for every block type.

The reference decodes with gguf_quants.dequantize (bit-exact with the `gguf` package, see
test_gguf_quants.py) and multiplies with F.linear. The kernel decodes inside its own dot products,
so only the order of the float32 sums differs: tolerance 1e-5 relative to the output's scale.
Token counts 1, 3, 17, 64 cover the kernel's tiles of 4 rows of x and their remainders; 64 also
runs gguf_matmul's decode-then-GEMM path for prefills.
"""

from __future__ import annotations

import pytest
import torch

from tests.quantization.gguf_blocks import FLOAT_TYPES, QUANTIZED_TYPES, make_blocks
from vllm_mini.model_executor.layers.quantization.utils import gguf_ops
from vllm_mini.model_executor.layers.quantization.utils.gguf_quants import (
    GGML_TYPE_BY_NAME,
    dequantize,
)

pytestmark = pytest.mark.skipif(
    not gguf_ops.KERNEL_AVAILABLE, reason="vllm_mini._C has no gguf_gemm (rebuild: make kernels)"
)


def _cols(type_name: str) -> list[int]:
    # K-quants need whole 256-weight super-blocks; the 32-weight formats take any multiple of 32.
    if GGML_TYPE_BY_NAME[type_name].block_size == 256:
        return [256, 512]
    return [96, 576]


def _close(actual: torch.Tensor, expected: torch.Tensor, rtol: float) -> None:
    scale = expected.abs().max().clamp_min(1e-6)
    assert (actual - expected).abs().max() <= rtol * scale


@pytest.mark.parametrize("type_name", QUANTIZED_TYPES + FLOAT_TYPES)
def test_kernel_dequantize_equals_reference(type_name):
    type_id = GGML_TYPE_BY_NAME[type_name].type_id
    for cols in _cols(type_name):
        blocks = make_blocks(type_name, rows=37, cols=cols, seed=cols)
        ours = torch.ops.vllm_mini_C.gguf_dequantize(blocks, type_id, cols)
        # The kernel may fuse d * q + m into one FMA (one rounding instead of two).
        _close(ours, dequantize(blocks, type_id), rtol=1e-6)


@pytest.mark.parametrize("type_name", QUANTIZED_TYPES + FLOAT_TYPES)
@pytest.mark.parametrize("num_tokens", [1, 3, 5, 8, 17, 64])
def test_gguf_matmul_equals_reference(type_name, num_tokens, monkeypatch):
    # The float kernel's contract; the int8-activation path has its own (test_gguf_q8_kernel.py).
    monkeypatch.setattr(gguf_ops, "INT8_ACTIVATIONS", False)
    type_id = GGML_TYPE_BY_NAME[type_name].type_id
    for cols in _cols(type_name):
        blocks = make_blocks(type_name, rows=45, cols=cols, seed=num_tokens)
        x = torch.randn(num_tokens, cols, generator=torch.Generator().manual_seed(cols))
        expected = gguf_ops.gguf_matmul_reference(x, blocks, type_id)
        _close(gguf_ops.gguf_matmul(x, blocks, type_id), expected, rtol=1e-5)
        # The kernel itself (gguf_matmul hands big M to the float GEMM), in both of its paths:
        # fused AVX-512 (Q4_0/Q4_1/Q8_0 where built with it) and decode-a-row-then-dot.
        for portable in (False, True):
            got = torch.ops.vllm_mini_C.gguf_gemm(x, blocks, type_id, portable)
            _close(got, expected, rtol=1e-5)


def test_kernel_bfloat16_activations_return_bfloat16():
    blocks = make_blocks("Q4_1", rows=16, cols=64)
    x = torch.randn(2, 64).to(torch.bfloat16)
    type_id = GGML_TYPE_BY_NAME["Q4_1"].type_id
    y = gguf_ops.gguf_matmul(x, blocks, type_id)
    expected = gguf_ops.gguf_matmul_reference(x.float(), blocks, type_id)
    assert y.dtype == torch.bfloat16
    _close(y.float(), expected, rtol=1e-2)


def test_kernel_rejects_wrong_row_bytes():
    blocks = make_blocks("Q8_0", rows=4, cols=64)
    with pytest.raises(RuntimeError, match="gguf: qweight has 68 bytes per row, expected 102"):
        torch.ops.vllm_mini_C.gguf_gemm(torch.randn(1, 96), blocks, 8)
