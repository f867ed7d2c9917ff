"""csrc/cpu/int8_quant.cpp: dynamic per-token int8 quantization and the int32 -> float epilogue
of a W8A8 layer, against their torch versions in w8a8_utils.py, bit for bit (same float ops in
the same order), on both the AVX-512 and the portable path."""

from __future__ import annotations

import pytest
import torch

from vllm_mini.model_executor.layers import fused_cpu_ops
from vllm_mini.model_executor.layers.quantization.utils import w8a8_utils as W

pytestmark = pytest.mark.skipif(
    not W.INT8_KERNELS_AVAILABLE, reason="vllm_mini._C built without the int8 kernels"
)
OPS = torch.ops.vllm_mini_C if W.INT8_KERNELS_AVAILABLE else None
SHAPES = [(1, 576), (3, 1536), (17, 576), (64, 960), (5, 37), (2, 16)]


@pytest.mark.parametrize("portable", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
def test_quant_matches_torch_bit_for_bit(shape, dtype, portable):
    torch.manual_seed(shape[0] * 7 + shape[1])
    x = (torch.randn(shape) * torch.rand(shape[0], 1) * 8).to(dtype)
    x[0, : min(3, shape[1])] = torch.tensor([0.5, -0.5, 2.5])[: min(3, shape[1])].to(dtype)
    if shape[0] > 2:
        x[2] = 0  # an all-zero row: scale 1e-12 / 127, codes 0
    q, s = torch.empty(shape, dtype=torch.int8), torch.empty(shape[0], 1)
    OPS.scaled_int8_quant(q, s, x, W.INT8_MAX, portable)
    ref_q, ref_s = W.scaled_int8_quant_reference(x)
    assert torch.equal(s, ref_s)
    assert torch.equal(q, ref_q)


def test_quant_reads_strided_rows_and_ties_round_to_even():
    base = torch.zeros(2, 40)
    x = base[:, 4:36]  # rows 40 apart, 32 wide
    x[0, 0] = 127.0  # scale exactly 1.0: the other values are their own quotient
    x[0, 1:5] = torch.tensor([0.5, 1.5, 2.5, -0.5])
    x[1] = torch.linspace(-3, 3, 32)
    q, s = W.scaled_int8_quant(x)
    assert q[0, :5].tolist() == [127, 0, 2, 2, 0]  # half to even, like torch.round
    ref_q, ref_s = W.scaled_int8_quant_reference(x)
    assert torch.equal(q, ref_q) and torch.equal(s, ref_s)


@pytest.mark.parametrize("portable", [False, True])
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("per_channel", [True, False])
@pytest.mark.parametrize("bias_dtype", [None, torch.float32, torch.bfloat16])
def test_epilogue_matches_torch_bit_for_bit(portable, out_dtype, per_channel, bias_dtype):
    torch.manual_seed(1)
    t, n = 9, 67
    acc = torch.randint(-(2**20), 2**20, (t, n), dtype=torch.int32)
    x_scale = torch.rand(t, 1) / 100
    w_scale = torch.rand(1, n) / 100 if per_channel else torch.tensor(0.0123)
    bias = None if bias_dtype is None else torch.randn(n).to(bias_dtype)
    y = torch.empty(t, n, dtype=out_dtype)
    OPS.int8_scaled_mm_epilogue(y, acc, x_scale, w_scale.contiguous(), bias, portable)
    ref = W.int8_mm_epilogue_reference(acc, x_scale, w_scale, out_dtype, bias)
    assert torch.equal(y, ref)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int8_scaled_mm_same_with_kernels_on_and_off(monkeypatch, dtype):
    """The whole W8A8 product as the scheme runs it: kernels on equals kernels off exactly."""
    torch.manual_seed(2)
    x = torch.randn(24, 576).to(dtype)
    wq, ws = W.quantize_weight_int8(torch.randn(960, 576))
    bias = torch.randn(960).to(dtype)

    def run():
        xq, xs = W.scaled_int8_quant(x)
        return W.int8_scaled_mm(xq, xs, wq.t(), ws.reshape(1, -1), dtype, bias)

    on = run()
    fused = W.int8_linear(x, wq.t(), ws.reshape(1, -1), bias)  # the one-call layer
    monkeypatch.setattr(fused_cpu_ops, "ENABLED", False)
    off = run()
    assert torch.equal(on, off) and torch.equal(fused, off)
    assert torch.equal(W.int8_linear(x, wq.t(), ws.reshape(1, -1), bias), off)
    ref = W.int8_linear_reference(x, wq, ws, bias)
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(on.float(), ref.float(), atol=tol, rtol=tol)


def test_bad_arguments_name_the_field():
    x = torch.randn(4, 32)
    with pytest.raises(RuntimeError, match="scale must be"):
        OPS.scaled_int8_quant(torch.empty(4, 32, dtype=torch.int8), torch.empty(3, 1), x)
    with pytest.raises(RuntimeError, match="w_scale must be"):
        OPS.int8_scaled_mm_epilogue(
            torch.empty(4, 8), torch.zeros(4, 8, dtype=torch.int32), torch.ones(4, 1),
            torch.ones(1, 5), None,
        )  # fmt: skip
    with pytest.raises(RuntimeError, match="input dtype must be"):
        OPS.scaled_int8_quant(
            torch.empty(4, 32, dtype=torch.int8), torch.empty(4, 1), x.to(torch.float16)
        )
