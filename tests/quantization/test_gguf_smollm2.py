"""The default SmolLM2 GGUF under the `gguf` method gives HF transformers' logits.

HF dequantizes the same file to float32 (with the `gguf` package, which our decoders equal bit for
bit), so both sides multiply by identical weights; only the order of the float32 sums differs
(our kernel adds each block's products in 16 SIMD lanes and scales them per block, MKL blocks its
own way). Measured on prompts of 23, 40 and 200 tokens: max |logit gap| 6.1e-5..6.5e-5 with
logits in [-20, 34], the same as the dequantized float32 path's gap to HF (4.8e-5..6.5e-5). A
wrong block, shard or row permutation moves logits by whole units, so TOL = 5e-4 (8x the noise)
catches it. Prefill runs the kernel (23 tokens) and the decode-then-GEMM path (40 tokens);
decode is batch 1, step by step. These tests pin the float kernel (VLLM_MINI_GGUF_INT8_ACT off):
they check the weight decoding, which both kernels share; the int8-activation kernel rounds x to
8 bits (logit gaps of ~1e-2) and is held to its own reference in test_gguf_q8_kernel.py.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.models.test_hf_parity import _run
from vllm_mini.engine.arg_utils import EngineArgs
from vllm_mini.model_executor.layers.quantization.utils import gguf_ops
from vllm_mini.model_executor.model_loader import get_model

TOL = 5e-4


@pytest.fixture(scope="module", autouse=True)
def float_kernel():
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(gguf_ops, "INT8_ACTIVATIONS", False)
        yield


@pytest.fixture(scope="module")
def models(smollm2_gguf):
    hf = AutoModelForCausalLM.from_pretrained(
        smollm2_gguf.parent, gguf_file=smollm2_gguf.name, dtype=torch.float32
    ).eval()
    config = EngineArgs(attention_backend="naive").create_engine_config()
    assert config.model_config.quantization == "gguf"
    return hf, get_model(config)


def _hf_logits(hf, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return hf(ids.unsqueeze(0)).logits[0]


def test_model_keeps_blocks_not_floats(models):
    _, ours = models
    params = dict(ours.named_parameters())
    assert params["model.layers.0.self_attn.qkv_proj.qweight_0"].dtype == torch.uint8
    assert params["model.embed_tokens.qweight_0"].dtype == torch.uint8
    weight_bytes = sum(p.numel() * p.element_size() for p in ours.parameters())
    assert weight_bytes < 100e6  # vs 538 MB dequantized to float32


@pytest.mark.parametrize("num_tokens", [23, 40])
def test_prefill_logits_match_hf(models, num_tokens):
    hf, ours = models
    ids = torch.randint(100, 40000, (num_tokens,), generator=torch.Generator().manual_seed(1))
    expected = _hf_logits(hf, ids)
    got = _run(ours, ids, 0, num_tokens, req_id=f"p{num_tokens}")
    assert (got - expected).abs().max().item() <= TOL
    assert torch.equal(got.argmax(-1), expected.argmax(-1))


def test_decode_logits_match_hf_step_by_step(models):
    hf, ours = models
    ids = torch.randint(100, 40000, (16,), generator=torch.Generator().manual_seed(2))
    expected = _hf_logits(hf, ids)
    _run(ours, ids, 0, 10, req_id="d")
    for pos in range(10, 16):
        got = _run(ours, ids, pos, pos + 1, req_id="d")[0]
        assert (got - expected[pos]).abs().max().item() <= TOL, f"position {pos}"
