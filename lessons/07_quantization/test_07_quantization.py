"""Lesson 07: your quantization arithmetic must match the engine's, the gguf package's and the kernel's.

Runs `solutions.py` by default; `LESSON_IMPL=exercises` checks your `exercises.py`:
per_channel against quantize_weight_int8, per_group against quantize_int4, gptq against the
engine's unpacking of a qweight packed in GPTQ's layout, q4_1_block against the `gguf` package on
real blocks of SmolLM2's file, q4_1_dot against the C++ kernel on a real row.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lessons._impl import load_impl
from vllm_mini.model_executor.layers.quantization.utils import gguf_ops, gguf_quants
from vllm_mini.model_executor.layers.quantization.utils.quant_utils import quantize_int4
from vllm_mini.model_executor.layers.quantization.utils.w4a16_formats import gptq_from_int4
from vllm_mini.model_executor.layers.quantization.utils.w8a8_utils import quantize_weight_int8

impl = load_impl(__file__)
Q4_1 = gguf_quants.GGML_TYPE_BY_NAME["Q4_1"].type_id


@pytest.fixture(scope="module")
def ffn_up_rows(smollm2_gguf) -> torch.Tensor:
    """The first 8 rows of layer 0's up projection, as the file stores them: uint8 [8, 1536/32*20]."""
    from gguf import GGUFReader

    tensor = next(t for t in GGUFReader(smollm2_gguf).tensors if t.name == "blk.0.ffn_up.weight")
    assert tensor.tensor_type.name == "Q4_1"
    rows = np.asarray(tensor.data).reshape(int(tensor.shape[1]), -1)
    return torch.from_numpy(rows[:8].copy())


def test_per_channel_int8():
    w = torch.randn(48, 96) * torch.logspace(-2, 1, 48)[:, None]  # rows of very different sizes
    q, scale = impl.quantize_per_channel_int8(w)
    q_ref, scale_ref = quantize_weight_int8(w)
    assert q.dtype == torch.int8 and scale.shape == (48, 1)
    torch.testing.assert_close(scale, scale_ref, rtol=1e-6, atol=0)
    assert (q.int() - q_ref.int()).abs().max() <= 1  # a tie may round either way
    assert (q == q_ref).float().mean() > 0.999


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("group_size", [32, 64])
def test_per_group_int4(group_size, symmetric):
    w = torch.randn(16, 128) + (0.0 if symmetric else 0.3)
    mine = impl.quantize_per_group_int4(w, group_size, symmetric)
    ref = quantize_int4(w, group_size, symmetric)
    torch.testing.assert_close(mine.scales.float(), ref.scales, rtol=1e-6, atol=0)
    assert torch.equal(mine.zeros.int(), ref.zeros)
    assert (mine.q.int() - ref.q).abs().max() <= 1 and (
        mine.q.int() == ref.q
    ).float().mean() > 0.999


def test_gptq_unpack():
    weight = quantize_int4(torch.randn(24, 64), group_size=32, symmetric=False)
    qweight = gptq_from_int4(weight)["qweight"]  # int32 [64/8, 24]
    assert qweight.shape == (8, 24) and qweight.dtype == torch.int32
    assert torch.equal(impl.unpack_gptq_qweight(qweight), weight.q)


def test_q4_1_block_matches_the_gguf_package(ffn_up_rows):
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    blocks = ffn_up_rows[0].reshape(-1, 20)[:4]  # four real 20-byte blocks
    for block in blocks:
        mine = impl.dequantize_q4_1_block(bytes(block.tolist()))
        ref = dequantize(block.numpy(), GGMLQuantizationType.Q4_1).ravel()
        engine = gguf_quants.dequantize(block[None], Q4_1).ravel()
        assert len(mine) == 32
        np.testing.assert_allclose(np.array(mine, dtype=np.float32), ref, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(engine.numpy(), ref, rtol=0, atol=0)


def test_q4_1_dot_matches_the_kernel(ffn_up_rows):
    x = torch.randn(576)
    # [8]: the C++ float kernel's outputs (the default int8-activation path rounds x first).
    kernel = gguf_ops.gguf_matmul_float(x[None], ffn_up_rows, Q4_1)[0]
    for r in range(ffn_up_rows.shape[0]):
        assert impl.q4_1_dot(ffn_up_rows[r], x) == pytest.approx(
            float(kernel[r]), rel=1e-4, abs=1e-4
        )


@pytest.mark.demo
@pytest.mark.slow
def test_demo_prints_the_quality_and_speed_table(smollm2_gguf, capsys, monkeypatch):
    # The float-activation kernels: the comparison below is about the weights' decoding (the
    # default int8 path also rounds x, ~1% of perplexity over 96 tokens either way).
    monkeypatch.setattr(gguf_ops, "INT8_ACTIVATIONS", False)
    demo = load_impl(__file__, "demo")
    rows = demo.main(("float32", "gguf"), ppl_tokens=96, decode_tokens=8, num_prompts=2)
    out = capsys.readouterr().out
    assert "perplexity" in out and "gguf" in out
    fp32, gguf = rows
    assert fp32["agreement"] == 1.0  # the yardstick agrees with itself
    # Q4_1 linears + a Q8_0 embedding: about 97 MB against 538 MB of float32.
    assert gguf["weights_mb"] < fp32["weights_mb"] / 4
    # The blocks decode to exactly the float32 weights, so the two models are the same function
    # up to summation order: same perplexity to a few digits.
    assert gguf["perplexity"] == pytest.approx(fp32["perplexity"], rel=1e-3)
