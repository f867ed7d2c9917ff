"""W4A16: the packing of each checkpoint format, and every kernel against the torch reference.

The reference (quant_utils.w4a16_linear_reference) dequantizes to float and calls F.linear; the
C++ kernel (AVX-512 and portable paths), the Triton kernel (interpreted on CPU) and the
dispatcher in w4a16_linear.py must all agree with it for decode-sized and prefill-sized M,
several group sizes, symmetric and asymmetric zeros, and act-order column permutations.
"""

from __future__ import annotations

import pytest
import torch

from vllm_mini.model_executor.layers.quantization import cpu_w4a16, w4a16_linear
from vllm_mini.model_executor.layers.quantization.utils.quant_utils import (
    Int4Weight,
    check_group_size,
    dequantize_int4,
    pack_int4,
    quantize_int4,
    unpack_int4,
    w4a16_linear_reference,
)
from vllm_mini.model_executor.layers.quantization.utils.w4a16_formats import (
    awq_from_int4,
    awq_to_int4,
    compressed_tensors_from_int4,
    compressed_tensors_to_int4,
    gptq_from_int4,
    gptq_to_int4,
)
from vllm_mini.model_executor.layers.quantization.utils.w4a16_layout import (
    dequantize_kernel_weights,
    pack_for_kernel,
)

CASES = [  # (out, in, group_size, symmetric, act_order)
    (48, 128, 32, True, False),
    (80, 256, 64, False, True),
    (40, 256, 128, False, False),  # 40 columns: the kernel layout pads to 48
    (64, 192, -1, True, True),
]


def _weight(n: int, k: int, group_size: int, symmetric: bool, act_order: bool, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=gen)
    g_idx = None
    if act_order:
        gs = k if group_size == -1 else group_size
        g_idx = (torch.randperm(k, generator=gen) // gs).to(torch.int32)
    return quantize_int4(w, group_size, symmetric, g_idx)


def _assert_close(got: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> None:
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    scale = ref.float().abs().max().item()
    assert scale > 1.0, "outputs too small for the comparison to mean anything"
    torch.testing.assert_close(got.float(), ref.float(), atol=tol * scale, rtol=0)


def test_pack_int4_puts_value_j_in_bits_4j():
    values = torch.arange(8, dtype=torch.int32).view(1, 8)
    assert pack_int4(values, dim=1).item() == 0x76543210
    assert torch.equal(unpack_int4(torch.tensor([[0x76543210]]), dim=1), values)
    all_ones = torch.full((8, 3), 15, dtype=torch.int32)  # the top nibble sets the sign bit
    assert torch.equal(unpack_int4(pack_int4(all_ones, dim=0), dim=0), all_ones)


def test_awq_packs_output_columns_in_its_interleaved_order():
    q = torch.arange(8, dtype=torch.int32).view(8, 1).repeat(1, 32)  # output c: code c
    weight = Int4Weight(q, torch.ones(8, 1), torch.zeros(8, 1, dtype=torch.int32))
    qweight = awq_from_int4(weight)["qweight"]  # [in, out/8]
    # nibble j holds column (0, 2, 4, 6, 1, 3, 5, 7)[j]
    assert qweight[0, 0].item() == 0x75316420


def test_gptq_v1_stores_zero_minus_one():
    weight = _weight(16, 64, 32, True, False)
    tensors = gptq_from_int4(weight)  # v1 (what AutoGPTQ and gptqmodel export)
    assert (tensors["qzeros"] == 0x77777777).all(), "symmetric zero 8 is stored as 7"
    assert (gptq_from_int4(weight, zero_offset=0)["qzeros"] == -0x77777778).all()  # 0x88888888


@pytest.mark.parametrize(("n", "k", "gs", "sym", "act"), CASES)
def test_every_format_round_trips_to_the_same_weight(n, k, gs, sym, act):
    weight = _weight(n, k, gs, sym, act)
    expected = dequantize_int4(weight)
    t = gptq_from_int4(weight)
    got = gptq_to_int4(t["qweight"], t["qzeros"], t["scales"], t["g_idx"])
    assert torch.equal(dequantize_int4(got), expected)
    t = compressed_tensors_from_int4(weight, symmetric=sym)
    got = compressed_tensors_to_int4(
        t["weight_packed"], t["weight_scale"], t.get("weight_zero_point"), t.get("weight_g_idx")
    )
    assert torch.equal(dequantize_int4(got), expected)
    if not act:
        t = awq_from_int4(weight)
        got = awq_to_int4(t["qweight"], t["qzeros"], t["scales"])
        assert torch.equal(dequantize_int4(got), expected)


def test_rounding_error_is_within_half_a_step():
    w = torch.randn(32, 128, generator=torch.Generator().manual_seed(3))
    for sym in (True, False):
        weight = quantize_int4(w, 32, sym)
        step = weight.scales.repeat_interleave(32, dim=1)
        assert ((dequantize_int4(weight) - w).abs() <= step / 2 + 1e-6).all()


@pytest.mark.parametrize(("n", "k", "gs", "sym", "act"), CASES)
def test_kernel_layout_holds_the_same_weight(n, k, gs, sym, act):
    weight = _weight(n, k, gs, sym, act)
    kw = pack_for_kernel(weight)
    assert kw.out_features == n and kw.qweight.shape[0] * 16 >= n
    torch.testing.assert_close(dequantize_kernel_weights(kw), dequantize_int4(weight))


def test_act_order_with_unequal_groups_is_refused():
    weight = _weight(16, 64, 32, True, False)
    weight.g_idx = torch.tensor([0] * 40 + [1] * 24, dtype=torch.int32)
    with pytest.raises(ValueError, match="gptq: g_idx must put exactly 32"):
        pack_for_kernel(weight, "gptq")


@pytest.mark.parametrize(
    ("gs", "k", "message"),
    [(48, 192, "multiple of 32"), (0, 64, "multiple of 32"), (128, 192, "input size 192")],
)
def test_bad_group_sizes_name_the_method(gs, k, message):
    with pytest.raises(ValueError, match=f"awq: .*{message}"):
        check_group_size("awq", gs, k)


def _x(m: int, k: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.randn(m, k, generator=torch.Generator().manual_seed(m)).to(dtype)


needs_cpu_kernel = pytest.mark.skipif(
    not cpu_w4a16.CPU_KERNEL_AVAILABLE, reason="vllm_mini._C was built without w4a16_gemm"
)


@needs_cpu_kernel
@pytest.mark.parametrize("portable", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("n", "k", "gs", "sym", "act"), CASES)
def test_cpu_kernel_matches_reference(n, k, gs, sym, act, dtype, portable):
    weight = _weight(n, k, gs, sym, act)
    kw = pack_for_kernel(weight)
    for m in (1, 5, 33):
        x = _x(m, k, dtype)
        xs = x if kw.perm is None else x[:, kw.perm]
        got = cpu_w4a16.w4a16_gemm_cpu(xs, kw, portable=portable)[:, :n]
        assert got.dtype == dtype
        _assert_close(got, w4a16_linear_reference(x.float(), weight), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("n", "k", "gs", "sym", "act"), CASES[:3])
def test_triton_kernel_matches_reference_and_cpu_kernel(n, k, gs, sym, act, dtype):
    from vllm_mini.model_executor.layers.quantization.triton_w4a16 import w4a16_gemm_triton

    weight = _weight(n, k, gs, sym, act)
    kw = pack_for_kernel(weight)
    for m in (1, 5, 33):
        x = _x(m, k, dtype)
        xs = x if kw.perm is None else x[:, kw.perm]
        got = w4a16_gemm_triton(xs, kw)[:, :n]
        _assert_close(got, w4a16_linear_reference(x.float(), weight), dtype)
        if cpu_w4a16.CPU_KERNEL_AVAILABLE:
            _assert_close(got, cpu_w4a16.w4a16_gemm_cpu(xs, kw)[:, :n], dtype)


@pytest.mark.parametrize("m", [1, 5, 33, 130])
def test_dispatcher_matches_reference_with_bias_and_leading_dims(m):
    weight = _weight(40, 256, 64, False, True)
    kw = pack_for_kernel(weight)
    bias = torch.randn(40)
    x = _x(m, 256, torch.float32).view(1, m, 256)
    got = w4a16_linear.w4a16_linear(x, kw, bias)
    assert got.shape == (1, m, 40)
    _assert_close(got[0], w4a16_linear_reference(x[0], weight, bias), torch.float32)


def test_dispatcher_without_the_cpu_kernel_uses_the_torch_path(monkeypatch):
    monkeypatch.setattr(w4a16_linear, "CPU_KERNEL_AVAILABLE", False)
    weight = _weight(48, 128, 32, True, False)
    x = _x(3, 128, torch.float32)
    got = w4a16_linear.w4a16_linear(x, pack_for_kernel(weight))
    _assert_close(got, w4a16_linear_reference(x, weight), torch.float32)
