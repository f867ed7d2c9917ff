"""Lesson 02: your RMSNorm, RoPE, name mapping and Q4_1 decoder against the engine's own code."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from gguf import GGMLQuantizationType, GGUFReader
from gguf.quants import dequantize, quantize

from lessons._impl import impl_name, load_impl
from tests.conftest import _save_tiny_tokenizer
from tests.models.test_hf_parity import _run as hf_parity_run
from vllm_mini import LLM, SamplingParams
from vllm_mini.engine.arg_utils import EngineArgs
from vllm_mini.model_executor.layers.layernorm import RMSNorm
from vllm_mini.model_executor.layers.rotary_embedding import RotaryEmbedding
from vllm_mini.model_executor.model_loader import get_model
from vllm_mini.model_executor.model_loader.loader import process_weights_after_loading
from vllm_mini.model_executor.model_loader.weight_utils import (
    default_weight_loader,
    get_safetensors_files,
    safetensors_weights_iterator,
)
from vllm_mini.model_executor.models import ModelRegistry, registry
from vllm_mini.model_executor.models.llama import LlamaMLP

impl = load_impl(__file__)

LLAMA3_SCALING = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    # Small, so that head_size 32 has frequencies in all three bands (kept, blended, divided).
    "original_max_position_embeddings": 64,
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_matches_engine_layer(dtype):
    norm = RMSNorm(64, eps=1e-5).to(dtype)
    norm.weight.data = torch.randn(64, dtype=dtype)
    x = torch.randn(7, 64, dtype=dtype)
    torch.testing.assert_close(impl.rms_norm(x, norm.weight, 1e-5), norm(x))


def test_fused_residual_add_matches_engine_layer():
    norm = RMSNorm(64, eps=1e-6)
    norm.weight.data = torch.randn(64)
    x, residual = torch.randn(5, 64), torch.randn(5, 64)
    got_out, got_residual = impl.rms_norm(x, norm.weight, 1e-6, residual)
    exp_out, exp_residual = norm(x, residual)
    torch.testing.assert_close(got_out, exp_out)
    torch.testing.assert_close(got_residual, exp_residual)


@pytest.mark.parametrize("rope_scaling", [None, LLAMA3_SCALING], ids=["default", "llama3"])
def test_rope_matches_engine_layer(rope_scaling):
    rope = RotaryEmbedding(32, 32, 512, 10000.0, rope_scaling=rope_scaling)
    positions = torch.tensor([0, 1, 5, 63, 300, 511])
    q, k = torch.randn(6, 4 * 32), torch.randn(6, 2 * 32)
    exp_q, exp_k = rope(positions, q, k)
    got_q, got_k = impl.apply_rope(positions, q, k, 32, 10000.0, rope_scaling)
    torch.testing.assert_close(got_q, exp_q, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got_k, exp_k, atol=1e-4, rtol=1e-4)


def test_name_mapping_loads_a_real_checkpoint(tiny_llama_dir):
    """Load the tiny checkpoint through YOUR mapping; the result must equal the engine's load."""
    config = EngineArgs(model=str(tiny_llama_dir), attention_backend="naive").create_engine_config()
    reference = get_model(config)
    mine = get_model(config)
    for p in mine.parameters():
        p.data.zero_()
    params = dict(mine.named_parameters())
    files = get_safetensors_files(tiny_llama_dir)
    for name, tensor in safetensors_weights_iterator(files, torch.float32):
        target, shard = impl.map_weight_name(name)
        param = params[target]
        if shard is None:
            getattr(param, "weight_loader", default_weight_loader)(param, tensor)
        else:
            param.weight_loader(param, tensor, shard)
    for name, p in reference.named_parameters():
        torch.testing.assert_close(params[name], p, msg=name)


def test_q4_1_dequantization_matches_the_gguf_loader():
    """The GGUF loader expands blocks with gguf.quants.dequantize; yours must agree exactly."""
    weights = np.random.default_rng(0).normal(size=(8, 64)).astype(np.float32)
    blocks = quantize(weights, GGMLQuantizationType.Q4_1)  # [8, 2 blocks * 20 bytes]
    expected = dequantize(blocks, GGMLQuantizationType.Q4_1).reshape(-1)
    got = impl.dequantize_q4_1(blocks.reshape(-1, 20))
    torch.testing.assert_close(got, torch.from_numpy(expected.astype(np.float32)))


# ----------------------------------------------------------------------------- the demo

demo = load_impl(__file__, "demo")


@pytest.mark.demo
def test_demo_gguf_sections_on_the_real_file(smollm2_gguf, capsys):
    """Sections 2 and 3 read the GGUF only (no model is built): fast enough for every run."""
    reader = GGUFReader(str(smollm2_gguf))
    assert demo.show_q4_1_block(reader)
    assert demo.show_qk_permutation(reader, n_kv_heads=3, head=64)
    printed = capsys.readouterr().out
    assert "by hand == gguf.dequantize: True" in printed and "0.625 bytes per weight" in printed


@pytest.mark.demo
def test_demo_tensor_parallel_check_scales_with_the_outputs(monkeypatch, capsys):
    """Outputs in the thousands, like SmolLM2's layer 0: correct shards must pass, wrong fail."""
    torch.manual_seed(0)
    hidden, inter = 96, 192
    mlp = LlamaMLP(hidden, inter, prefix="mlp")
    for p in mlp.parameters():
        p.data.normal_()
    process_weights_after_loading(mlp)  # column-major, as in the loaded model
    assert demo.show_tensor_parallel_mlp(mlp, hidden, inter)
    assert "outputs up to" in capsys.readouterr().out
    # Every "rank" loading rank 0's shard must be caught, not forgiven by the tolerance.
    real = demo.simulate_tensor_parallel
    monkeypatch.setattr(demo, "simulate_tensor_parallel", lambda rank, tp: real(0, tp))
    assert not demo.show_tensor_parallel_mlp(mlp, hidden, inter)


@pytest.mark.demo
@pytest.mark.slow
def test_demo_runs_end_to_end_on_smollm2(capsys):
    found = demo.main()
    printed = capsys.readouterr().out
    assert found["q4_1_by_hand"] and found["rope_permutation"] and found["tied_lm_head"]
    assert found["max_logit_diff"] < 1e-3  # float32 against HF's own GGUF de-quantization
    assert found["tensor_parallel_mlp"]
    assert ": False" not in printed


# ------------------------------------------------- FAQ "how to add a model": Gemma, against HF


def make_tiny_gemma(path):
    """A 2-layer random Gemma saved with transformers' own classes, as tests/conftest.py saves
    its tiny Llama. head_dim 32 differs from hidden_size / heads = 16, and the norm weights are
    random (HF starts them at 0), so each of Gemma's differences from Llama shows in the logits."""
    config = transformers.GemmaConfig(
        vocab_size=384,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=256,
        rms_norm_eps=1e-6,
        initializer_range=0.2,
        hidden_act="gelu_pytorch_tanh",
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    model = transformers.GemmaForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(0.0, 0.5)
    model.save_pretrained(path, safe_serialization=True)
    _save_tiny_tokenizer(path, config.vocab_size)
    return path, model


@pytest.fixture(scope="module")
def gemma(tmp_path_factory):
    """The tiny Gemma and HF's model of it, with YOUR class registered the out-of-tree way."""
    path, hf = make_tiny_gemma(tmp_path_factory.mktemp("tiny_gemma"))
    module = f"lessons.{Path(__file__).parent.name}.{impl_name()}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(registry, "_MODELS", dict(registry._MODELS))  # undone after these tests
        ModelRegistry.register_model("GemmaForCausalLM", module, "GemmaForCausalLM")
        yield path, hf


def test_gemma_prefill_logits_match_hf(gemma):
    path, hf = gemma
    config = EngineArgs(model=str(path), attention_backend="naive").create_engine_config()
    ours = get_model(config)
    assert type(ours).__module__.startswith("lessons.")  # yours, found through the registry
    ids = torch.randint(3, 384, (23,), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf(ids.unsqueeze(0)).logits[0]
    got = hf_parity_run(ours, ids, 0, len(ids))
    assert expected.std() > 0.1, "logits too small for the comparison to mean anything"
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


def test_gemma_greedy_tokens_match_hf_through_the_engine(gemma):
    """The whole engine (paged KV cache, default backend) generates HF's greedy tokens."""
    path, hf = gemma
    prompts = [[5, 17, 23, 40], [300, 7, 7, 81, 9, 120, 64]]
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    llm = LLM(str(path), kv_cache_memory_bytes=1 << 22)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    for prompt, out in zip(prompts, outs):
        ids = list(prompt)
        with torch.no_grad():
            for _ in range(8):  # HF greedy, one full forward pass per token
                ids.append(int(hf(torch.tensor([ids])).logits[0, -1].argmax()))
        assert list(out.outputs[0].token_ids) == ids[len(prompt) :]
