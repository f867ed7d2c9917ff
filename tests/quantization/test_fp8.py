"""FP8 (float8_e4m3fn weights): the quantizer, both kernels, online `quantization="fp8"`, and
llm-compressor's FP8_DYNAMIC checkpoints against HF transformers + compressed-tensors.

This CPU has no fp8 matmul, so the engine runs fp8 layers weight-only (the codes kept in memory
and widened in the C++ kernel of csrc/cpu/fp8_gemm.cpp, tested on its own in
test_fp8_cpu_kernel.py; or, with VLLM_MINI_CPU_FP8_KERNEL=0, dequantized once after loading). The W8A8 path (`torch._scaled_mm` with per-token fp8 activations, what an
sm89+ GPU runs) is exercised here too by pretending the device has one: torch runs _scaled_mm
on a CPU, slowly but exactly.
"""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM

import vllm_mini.model_executor.layers.quantization.utils.w8a8_utils as w8a8
from tests.models.test_hf_parity import _run
from tests.quantization.llmcompressor_checkpoints import llmcompressor_checkpoint
from tests.quantization.test_compressed_tensors_config import W8A8, _args
from vllm_mini.engine.arg_utils import EngineArgs
from vllm_mini.model_executor.layers.linear import QKVParallelLinear
from vllm_mini.model_executor.layers.quantization import get_quantization_config
from vllm_mini.model_executor.layers.quantization.compressed_tensors.compressed_tensors import (
    CompressedTensorsConfig,
)
from vllm_mini.model_executor.layers.quantization.fp8 import Fp8Config
from vllm_mini.model_executor.layers.quantization.utils import fp8_ops
from vllm_mini.model_executor.model_loader import get_model

FP8_CT = copy.deepcopy(W8A8)
FP8_CT["format"] = "float-quantized"
FP8_CT["config_groups"]["group_0"].update(
    format="float-quantized",
    weights=_args(type="float"),
    input_activations=_args(type="float", strategy="token", dynamic=True),
)


def test_fp8_codes_are_within_e4m3_rounding_of_the_weight():
    w = torch.randn(32, 64, generator=torch.Generator().manual_seed(0))
    for per_channel in (True, False):
        codes, scale = w8a8.quantize_weight_fp8(w, per_channel)
        assert codes.dtype == torch.float8_e4m3fn
        assert scale.shape == ((32, 1) if per_channel else ())
        back = w8a8.dequantize_fp8(codes, scale, torch.float32)
        # e4m3 keeps 3 mantissa bits: relative rounding error <= 2^-4 (subnormals aside).
        big = w.abs() > 2**-6 * w.abs().max()
        assert ((back - w).abs() / w.abs())[big].max() <= 2**-4 + 1e-6


def test_fp8_scaled_mm_equals_the_float_reference():
    gen = torch.Generator().manual_seed(1)
    x, w, bias = torch.randn(6, 64, generator=gen), torch.randn(24, 64, generator=gen), None
    codes, scale = w8a8.quantize_weight_fp8(w)
    got = w8a8.fp8_scaled_mm(x, codes.t(), scale.reshape(1, -1), torch.float32, bias)
    torch.testing.assert_close(
        got, w8a8.fp8_linear_reference(x, codes, scale), rtol=1e-5, atol=1e-4
    )


def _fp8_qkv(per_tensor: bool, fp8_matmul: bool, monkeypatch):
    monkeypatch.setattr(w8a8, "fp8_matmul_supported", lambda device: fp8_matmul)
    config = copy.deepcopy(FP8_CT)
    if per_tensor:
        config["config_groups"]["group_0"]["weights"] = _args(type="float", strategy="tensor")
    layer = QKVParallelLinear(
        64,
        16,
        4,
        2,
        bias=False,
        quant_config=CompressedTensorsConfig.from_config(config),
        prefix="model.layers.0.self_attn.qkv_proj",
    )
    gen = torch.Generator().manual_seed(2)
    shards = {}
    for i, (shard_id, rows) in enumerate([("q", 64), ("k", 32), ("v", 32)]):
        w = torch.randn(rows, 64, generator=gen) * (1 + i)
        codes, scale = w8a8.quantize_weight_fp8(w, per_channel=not per_tensor)
        scale = scale.reshape(1) if per_tensor else scale
        layer.weight.weight_loader(layer.weight, codes, shard_id)
        layer.weight_scale.weight_loader(layer.weight_scale, scale, shard_id)
        shards[shard_id] = w8a8.dequantize_fp8(codes, scale.reshape(-1, 1), torch.float32)
    layer.quant_method.process_weights_after_loading(layer)
    return layer, torch.cat(list(shards.values()))


@pytest.mark.parametrize("kernel", [True, False])
@pytest.mark.parametrize("per_tensor", [False, True])
def test_fp8_scheme_weight_only_on_cpu_equals_the_dequantized_weights(
    per_tensor, kernel, monkeypatch
):
    if kernel and not fp8_ops.KERNEL_AVAILABLE:
        pytest.skip("vllm_mini._C has no fp8_gemm: run `make kernels`")
    monkeypatch.setenv(fp8_ops.KERNEL_ENV, "1" if kernel else "0")
    layer, w_deq = _fp8_qkv(per_tensor, fp8_matmul=False, monkeypatch=monkeypatch)
    assert layer.fp8_weight_only and layer.fp8_cpu_kernel == kernel
    # The kernel keeps 1-byte codes; the switch-off path the dequantized float32 weight.
    assert layer.weight.dtype == (torch.float8_e4m3fn if kernel else torch.float32)
    x = torch.randn(5, 64, generator=torch.Generator().manual_seed(3))
    expected = x @ w_deq.t()
    if per_tensor:  # q and k were requantized to v's (largest) scale: one more rounding
        assert (layer(x)[0] - expected).abs().max() < 0.05 * expected.abs().max()
    else:
        torch.testing.assert_close(layer(x)[0], expected, rtol=1e-5, atol=1e-4)


def test_fp8_scheme_with_an_fp8_matmul_quantizes_tokens(monkeypatch):
    layer, w_deq = _fp8_qkv(per_tensor=False, fp8_matmul=True, monkeypatch=monkeypatch)
    assert not layer.fp8_weight_only and layer.weight.dtype == torch.float8_e4m3fn
    x = torch.randn(5, 64, generator=torch.Generator().manual_seed(3))
    xq, x_scale = w8a8.scaled_fp8_quant(x)
    expected = (xq.float() * x_scale) @ w_deq.t()
    torch.testing.assert_close(layer(x)[0], expected, rtol=1e-5, atol=1e-4)


def test_online_fp8_quantizes_every_linear_layer_of_a_float_checkpoint(tiny_llama_dir):
    assert get_quantization_config("fp8") is Fp8Config
    hf = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    config = EngineArgs(
        model=str(tiny_llama_dir), quantization="fp8", attention_backend="naive"
    ).create_engine_config()
    ours = get_model(config)
    attn = ours.model.layers[0].self_attn
    q_rows = attn.qkv_proj.num_heads * attn.qkv_proj.head_size
    codes, scale = w8a8.quantize_weight_fp8(hf.model.layers[0].self_attn.q_proj.weight)
    qkv = attn.qkv_proj
    weight = (
        qkv.weight.float() * qkv.weight_scale.reshape(-1, 1) if qkv.fp8_cpu_kernel else qkv.weight
    )
    torch.testing.assert_close(weight[:q_rows], w8a8.dequantize_fp8(codes, scale, torch.float32))
    ids = torch.randint(3, 384, (20,), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        float_logits = hf(ids[None]).logits[0]
        # The peer: HF's float model with every linear weight rounded through fp8 the same way.
        for module in hf.model.modules():
            if isinstance(module, torch.nn.Linear):
                codes, scale = w8a8.quantize_weight_fp8(module.weight)
                module.weight.copy_(w8a8.dequantize_fp8(codes, scale, torch.float32))
        expected = hf(ids[None]).logits[0]
    got = _run(ours, ids, 0, len(ids))
    assert (got - expected).abs().max() < 1e-4
    assert (got - float_logits).abs().max() > 1e-3  # fp8 rounding did change the model


def test_fp8_checkpoint_config_is_read_and_bad_fields_are_named():
    config = Fp8Config.from_config({"quant_method": "fp8", "activation_scheme": "dynamic"})
    assert config.is_checkpoint_fp8_serialized
    with pytest.raises(ValueError, match="fp8: activation_scheme must be one of"):
        Fp8Config.from_config({"quant_method": "fp8", "activation_scheme": "static"})
    with pytest.raises(ValueError, match="fp8: block-wise scales"):
        Fp8Config.from_config({"quant_method": "fp8", "weight_block_size": [128, 128]})


@pytest.mark.slow
@pytest.mark.parametrize("fp8_matmul", [False, True])
def test_llmcompressor_fp8_dynamic_tiny_model_matches_hf(fp8_matmul, monkeypatch):
    path = llmcompressor_checkpoint("fp8-dynamic", "tiny")
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    if not fp8_matmul:  # our CPU path keeps activations float: so must HF's fake quantization
        for module in hf.modules():
            if hasattr(module, "quantization_scheme"):
                module.quantization_enabled = False
    ids = torch.randint(3, 500, (23,), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = hf(ids[None]).logits[0]
    monkeypatch.setattr(w8a8, "fp8_matmul_supported", lambda device: fp8_matmul)
    config = EngineArgs(model=str(path), dtype="float32", attention_backend="naive")
    got = _run(get_model(config.create_engine_config()), ids, 0, len(ids))
    assert expected.std() > 0.1
    assert (got - expected).abs().max() < 1e-4


@pytest.mark.slow
def test_online_fp8_smollm2_predicts_like_float32(smollm2_gguf):
    from transformers import AutoTokenizer

    from vllm_mini.transformers_utils.default_model import prepare_default_model

    text = (
        "The quick brown fox jumps over the lazy dog. Python is a programming language that "
        "lets you work quickly and integrate systems more effectively. The capital of France "
        "is Paris, and the capital of Germany is Berlin."
    )
    ids = torch.tensor(AutoTokenizer.from_pretrained(prepare_default_model())(text)["input_ids"])
    logits = {}
    for quantization in (None, "fp8"):
        config = EngineArgs(
            model=str(smollm2_gguf),
            dtype="float32",
            quantization=quantization,
            attention_backend="naive",
        ).create_engine_config()
        logits[quantization] = _run(get_model(config), ids, 0, len(ids), req_id=str(quantization))
    # Teacher-forced next-token predictions at every position (measured: 37 of 41 agree; the
    # largest logit moves by 13% of the largest logit: a 135M model feels fp8 rounding).
    agree = (logits[None].argmax(-1) == logits["fp8"].argmax(-1)).float().mean()
    assert agree >= 0.85, f"fp8 agrees with float32 on {agree:.2f} of next tokens"
    error = (logits["fp8"] - logits[None]).abs().max() / logits[None].abs().max()
    assert 0 < error < 0.25, f"fp8 logits relative error {error:.3f}"


@pytest.mark.slow
def test_llmcompressor_fp8_tensor_scales_are_requantized_like_vllm(monkeypatch):
    """Per-tensor fp8: q, k, v (and gate, up) arrive with a scale each; the fused layer
    requantizes them to the largest. The peer: HF's decompressed weights, requantized the same
    way, shard by shard (activations float, as on our CPU)."""
    path = llmcompressor_checkpoint("fp8-tensor", "tiny")
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    for module in hf.modules():
        if hasattr(module, "quantization_scheme"):
            module.quantization_enabled = False
    ids = torch.randint(3, 500, (23,), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        hf(ids[None])  # compressed-tensors decompresses the weights on the first forward
        for layer in hf.model.layers:
            for fused in (
                [layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj],
                [layer.mlp.gate_proj, layer.mlp.up_proj],
            ):
                max_scale = max(m.weight_scale.max() for m in fused)
                for m in fused:  # HF holds codes * own scale; requantize with the largest
                    codes = w8a8.quantize_with_scale(m.weight, max_scale, torch.float8_e4m3fn)
                    m.weight.copy_(codes.float() * max_scale)
    with torch.no_grad():
        expected = hf(ids[None]).logits[0]
    monkeypatch.setattr(w8a8, "fp8_matmul_supported", lambda device: False)
    config = EngineArgs(model=str(path), dtype="float32", attention_backend="naive")
    got = _run(get_model(config.create_engine_config()), ids, 0, len(ids))
    assert (got - expected).abs().max() < 1e-4
