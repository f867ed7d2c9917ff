"""The fused CPU kernels (csrc/cpu/layer_kernels.cpp) against the layers' torch references.

Each kernel, AVX-512 path and portable path, is compared with the layer's `forward_native`:
float32 within float rounding, bfloat16 bit for bit (the kernels round where the reference
rounds), except silu, whose vector exp may differ from torch's in the last float bit and so
flip its bf16 rounding now and then (then the product is off by up to two bf16 units). Sizes include SmolLM2's (hidden 576, 9 + 3 heads of 64) and odd ones no vector width
divides; inputs include column slices of a wider buffer (q and k of a qkv output) and rotary_dim <
head_size. Then the layers with the switch on and off, and the ops under torch.compile (fake
implementations and in-place alias annotations).
"""

from __future__ import annotations

import pytest
import torch

from vllm_mini.model_executor.layers import fused_cpu_ops
from vllm_mini.model_executor.layers.activation import SiluAndMul
from vllm_mini.model_executor.layers.layernorm import RMSNorm
from vllm_mini.model_executor.layers.rotary_embedding import RotaryEmbedding

pytestmark = pytest.mark.skipif(
    not fused_cpu_ops.KERNELS_AVAILABLE, reason="vllm_mini._C was built without the fused ops"
)

DTYPES = [torch.float32, torch.bfloat16]
PORTABLE = [False, True]
ROWS = [1, 5, 64]
WIDTHS = [576, 100, 33]


def assert_matches(out: torch.Tensor, ref: torch.Tensor, bf16_ulps: int = 0) -> None:
    """bf16: equal, or within `bf16_ulps` units in the last place (8 significant bits)."""
    assert out.dtype == ref.dtype and out.shape == ref.shape
    if out.dtype == torch.bfloat16:
        tol = bf16_ulps * 2.0**-7
        torch.testing.assert_close(out, ref, atol=tol * 1e-30, rtol=tol)
    else:
        torch.testing.assert_close(out, ref, atol=2e-6, rtol=2e-6)


def make_norm(d: int, dtype: torch.dtype) -> RMSNorm:
    norm = RMSNorm(d, eps=1e-5)
    norm.weight.data = (1 + 0.5 * torch.randn(d)).to(dtype)
    return norm


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("portable", PORTABLE)
@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("d", WIDTHS)
def test_rms_norm(dtype, portable, rows, d):
    torch.manual_seed(rows * 1000 + d)
    norm = make_norm(d, dtype)
    x = (3 * torch.randn(rows, d)).to(dtype)
    out = fused_cpu_ops.rms_norm(x, norm.weight, norm.variance_epsilon, portable)
    assert_matches(out, norm.forward_native(x))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("portable", PORTABLE)
@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("d", WIDTHS)
def test_fused_add_rms_norm(dtype, portable, rows, d):
    torch.manual_seed(rows * 1000 + d)
    norm = make_norm(d, dtype)
    x, residual = torch.randn(rows, d).to(dtype), (5 * torch.randn(rows, d)).to(dtype)
    ref_out, ref_residual = norm.forward_native(x, residual)
    x_in, residual_in = x.clone(), residual.clone()
    out, new_residual = fused_cpu_ops.fused_add_rms_norm(
        x_in, residual_in, norm.weight, norm.variance_epsilon, portable
    )
    assert out is x_in and new_residual is residual_in  # in place
    assert_matches(new_residual, ref_residual)
    assert_matches(out, ref_out)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("portable", PORTABLE)
def test_rms_norm_on_heads_of_a_column_slice(dtype, portable):
    # Qwen3's q_norm: [tokens, heads, head_dim] views of q, a column slice of the qkv output.
    torch.manual_seed(0)
    tokens, heads, head_dim, kv = 7, 9, 64, 3 * 64
    qkv = torch.randn(tokens, heads * head_dim + 2 * kv).to(dtype)
    q = qkv[:, : heads * head_dim].reshape(-1, heads, head_dim)
    assert not q.is_contiguous()
    norm = make_norm(head_dim, dtype)
    out = fused_cpu_ops.rms_norm(q, norm.weight, norm.variance_epsilon, portable)
    assert_matches(out, norm.forward_native(q))


def test_rms_norm_rejects_a_strided_last_dim():
    x = torch.randn(4, 64)[:, ::2]
    with pytest.raises(RuntimeError, match="last dim must be contiguous"):
        fused_cpu_ops.rms_norm(x, torch.ones(32), 1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("portable", PORTABLE)
@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("d", [1536, 100, 33])
def test_silu_and_mul(dtype, portable, rows, d):
    torch.manual_seed(rows + d)
    # Wide range: silu's tails (e^-x overflowing for x < -88) must give 0, not NaN.
    x = (8 * torch.randn(rows, 2 * d)).to(dtype)
    x[0, :4] = torch.tensor([-200.0, -88.5, 90.0, 0.0]).to(dtype)
    out = fused_cpu_ops.silu_and_mul(x, portable)
    assert_matches(out, SiluAndMul().forward_native(x), bf16_ulps=2)


def test_silu_and_mul_on_a_column_slice():
    torch.manual_seed(1)
    x = torch.randn(5, 300)[:, :200]
    assert_matches(fused_cpu_ops.silu_and_mul(x), SiluAndMul().forward_native(x))


def gptj_reference(positions, x, head_size, cache):
    """GPT-J pairing (2i with 2i+1), float32, for the kernel's is_neox=False path."""
    rot = cache.shape[1]
    cos, sin = cache[positions].float().unsqueeze(1).chunk(2, dim=-1)
    heads = x.float().view(x.shape[0], -1, head_size).clone()
    x1, x2 = heads[..., 0:rot:2].clone(), heads[..., 1:rot:2].clone()
    heads[..., 0:rot:2] = x1 * cos - x2 * sin
    heads[..., 1:rot:2] = x2 * cos + x1 * sin
    return heads.view(x.shape[0], -1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("portable", PORTABLE)
@pytest.mark.parametrize("tokens", ROWS)
@pytest.mark.parametrize("head_size,rotary_dim", [(64, 64), (64, 32), (80, 40), (128, 18)])
def test_rotary_embedding(dtype, portable, tokens, head_size, rotary_dim):
    torch.manual_seed(tokens + head_size + rotary_dim)
    rope = RotaryEmbedding(head_size, rotary_dim, 4096, 10000.0, dtype=dtype)
    q_size, kv_size = 9 * head_size, 3 * head_size
    qkv = torch.randn(tokens, q_size + 2 * kv_size).to(dtype)
    q, k, v = qkv.split([q_size, kv_size, kv_size], dim=-1)  # slices: row stride != width
    positions = torch.randint(0, 4096, (tokens,))
    ref_q, ref_k = rope.forward_native(positions, q, k)
    v_before = v.clone()
    out_q, out_k = fused_cpu_ops.rotary_embedding(
        positions, q, k, head_size, rope.cos_sin_cache, True, portable
    )
    assert out_q is q and out_k is k
    assert_matches(q, ref_q)
    assert_matches(k, ref_k)
    assert torch.equal(v, v_before)  # the rest of the qkv buffer is untouched


@pytest.mark.parametrize("dtype", DTYPES)
def test_rotary_embedding_gptj_style(dtype):
    torch.manual_seed(2)
    head_size, rotary_dim, tokens = 64, 32, 5
    rope = RotaryEmbedding(head_size, rotary_dim, 256, 10000.0, dtype=dtype)
    q, k = (
        torch.randn(tokens, 4 * head_size).to(dtype),
        torch.randn(tokens, 2 * head_size).to(dtype),
    )
    positions = torch.tensor([0, 1, 17, 255, 3], dtype=torch.int32)
    ref_q = gptj_reference(positions, q, head_size, rope.cos_sin_cache)
    ref_k = gptj_reference(positions, k, head_size, rope.cos_sin_cache)
    fused_cpu_ops.rotary_embedding(positions, q, k, head_size, rope.cos_sin_cache, False)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(q.float(), ref_q, atol=tol, rtol=tol)
    torch.testing.assert_close(k.float(), ref_k, atol=tol, rtol=tol)


def test_rotary_embedding_rejects_a_position_outside_the_table():
    rope = RotaryEmbedding(64, 64, 16, 10000.0)
    q, k = torch.randn(1, 64), torch.randn(1, 64)
    with pytest.raises(RuntimeError, match="outside"):
        fused_cpu_ops.rotary_embedding(torch.tensor([16]), q, k, 64, rope.cos_sin_cache)


@pytest.mark.parametrize("dtype", DTYPES)
def test_layers_with_the_switch_on_and_off(monkeypatch, dtype):
    """The layers' forward: same results either way; the kernel path is the one taken when on."""
    torch.manual_seed(3)
    d, head_size, tokens = 576, 64, 5
    norm, act = make_norm(d, dtype), SiluAndMul()
    rope = RotaryEmbedding(head_size, head_size, 2048, 10000.0, dtype=dtype)
    x, residual = torch.randn(tokens, d).to(dtype), torch.randn(tokens, d).to(dtype)
    gate_up = torch.randn(tokens, 2 * 1536).to(dtype)
    qkv = torch.randn(tokens, d + 2 * 192).to(dtype)
    positions = torch.arange(40, 40 + tokens)

    def run():
        q, k, _ = qkv.clone().split([d, 192, 192], dim=-1)
        return (
            norm(x.clone()),
            *norm(x.clone(), residual.clone()),
            act(gate_up),
            *rope(positions, q, k),
        )

    calls = []
    monkeypatch.setattr(fused_cpu_ops, "ENABLED", False)
    off = run()
    monkeypatch.setattr(fused_cpu_ops, "ENABLED", True)
    for name in ("rms_norm", "fused_add_rms_norm", "silu_and_mul", "rotary_embedding"):
        op = getattr(fused_cpu_ops, name)
        monkeypatch.setattr(
            fused_cpu_ops, name, lambda *a, _op=op, _n=name, **kw: calls.append(_n) or _op(*a, **kw)
        )
    on = run()
    assert calls == ["rms_norm", "fused_add_rms_norm", "silu_and_mul", "rotary_embedding"]
    for a, b in zip(on, off):
        assert_matches(a, b, bf16_ulps=2)


def test_rotary_layer_inplace_contract():
    """By default the layer leaves its inputs alone (lessons read them after); with
    inplace=True (what the model passes for its qkv views) the kernel rotates the views
    themselves, strided rows of one qkv tensor, and the result is the same."""
    torch.manual_seed(5)
    head_size, tokens, d, kv = 64, 7, 576, 192
    rope = RotaryEmbedding(head_size, head_size, 2048, 10000.0)
    qkv = torch.randn(tokens, d + 2 * kv)
    positions = torch.arange(3, 3 + tokens)
    q, k, v = qkv.split([d, kv, kv], dim=-1)
    ref_q, ref_k = rope.forward_native(positions, q, k)
    before = qkv.clone()
    out_q, out_k = rope(positions, q, k)
    assert torch.equal(qkv, before)
    rot_q, rot_k = rope(positions, q, k, inplace=True)
    if fused_cpu_ops.fused_ops_apply(q):
        assert rot_q.data_ptr() == q.data_ptr() and rot_k.data_ptr() == k.data_ptr()
        assert not torch.equal(qkv[:, : d + kv], before[:, : d + kv])
    assert torch.equal(qkv[:, d + kv :], before[:, d + kv :])  # v untouched
    for got in ((out_q, out_k), (rot_q, rot_k)):
        torch.testing.assert_close(got[0], ref_q, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got[1], ref_k, atol=1e-5, rtol=1e-5)


def test_ops_trace_under_torch_compile():
    """Fake implementations and alias annotations: a compiled graph calling the ops directly
    (AOT autograd functionalizes the in-place ops, then writes the results back to the inputs)."""
    torch.manual_seed(4)
    norm = make_norm(100, torch.float32)
    rope = RotaryEmbedding(64, 32, 128, 10000.0)

    def step(x, residual, gate_up, positions, q, k):
        x, residual = fused_cpu_ops.fused_add_rms_norm(x, residual, norm.weight, 1e-5)
        y = fused_cpu_ops.rms_norm(x, norm.weight, 1e-5)
        q, k = fused_cpu_ops.rotary_embedding(positions, q, k, 64, rope.cos_sin_cache)
        return y, fused_cpu_ops.silu_and_mul(gate_up), q.sum() + k.sum()

    inputs = (
        torch.randn(3, 100),
        torch.randn(3, 100),
        torch.randn(3, 66),
        torch.tensor([1, 5, 9]),
        torch.randn(3, 128),
        torch.randn(3, 64),
    )
    eager_inputs = [t.clone() for t in inputs]
    compiled_inputs = [t.clone() for t in inputs]
    expected = step(*eager_inputs)
    got = torch.compile(step, backend="aot_eager", fullgraph=True)(*compiled_inputs)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b)
    for a, b in zip(compiled_inputs, eager_inputs):  # the in-place writes reached the inputs
        torch.testing.assert_close(a, b)
