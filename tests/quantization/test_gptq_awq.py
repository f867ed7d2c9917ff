"""GPTQ, AWQ and compressed-tensors W4A16 load into vllm_mini's layers and models correctly.

Layer tests: each format's tensors for q/k/v, gate/up and a row-parallel layer, loaded shard by
shard through the linear weight loaders, must give the output of the float layer built from the
dequantized weights. Model tests: a tiny Llama quantized into each format (round-to-nearest
codes in the tools' layouts, tests/quantization/w4a16_checkpoints.py) must produce the logits
that HF transformers produces from the same weights dequantized. Errors name the method.
"""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.conftest import make_tiny_checkpoint
from tests.models.test_hf_parity import _hf_logits, _run
from tests.quantization.w4a16_checkpoints import (
    format_tensors,
    quantization_config,
    write_w4a16_checkpoint,
)
from vllm_mini.engine.arg_utils import EngineArgs
from vllm_mini.model_executor.layers.linear import (
    MergedColumnParallelLinear,
    QKVParallelLinear,
    RowParallelLinear,
)
from vllm_mini.model_executor.layers.quantization import QuantizationConfig, get_quantization_config
from vllm_mini.model_executor.layers.quantization.compressed_tensors.compressed_tensors import (
    CompressedTensorsLinearMethod,
)
from vllm_mini.model_executor.layers.quantization.compressed_tensors.schemes.compressed_tensors_wNa16 import (  # noqa: E501
    CompressedTensorsWNA16,
)
from vllm_mini.model_executor.layers.quantization.utils.quant_utils import (
    dequantize_int4,
    quantize_int4,
)
from vllm_mini.model_executor.model_loader import get_model
from vllm_mini.model_executor.model_loader.loader import process_weights_after_loading

FORMATS = ["gptq", "awq", "compressed-tensors"]
VARIANTS = [  # (group_size, symmetric, act_order)
    (32, True, False),
    (64, False, False),
    (-1, False, False),
    (32, False, True),
]


def _config(fmt: str, group_size: int, symmetric: bool, act_order: bool) -> QuantizationConfig:
    raw = quantization_config(fmt, group_size, symmetric, act_order)
    return get_quantization_config(raw["quant_method"]).from_config(raw)


class _CTActOrderConfig(QuantizationConfig):
    """compressed-tensors W4A16 with actorder 'group' (weight_g_idx), scheme built directly."""

    def __init__(self, group_size: int, symmetric: bool) -> None:
        self.args = dict(strategy="group", num_bits=4, group_size=group_size, symmetric=symmetric)

    @classmethod
    def get_name(cls) -> str:
        return "compressed-tensors"

    def get_quant_method(self, layer, prefix):
        layer.scheme = CompressedTensorsWNA16(**self.args, layer_name=prefix, actorder="group")
        return CompressedTensorsLinearMethod()


def _variant_config(fmt, gs, sym, act):
    if fmt == "awq" and act:
        pytest.skip("AWQ has no act-order")
    if fmt == "compressed-tensors" and act:
        return _CTActOrderConfig(gs, sym)
    return _config(fmt, gs, sym, act)


def _shard_tensors(fmt, w, gs, sym, g_idx):
    weight = quantize_int4(w, gs, sym, g_idx)
    tensors = format_tensors(fmt, weight, sym)
    if fmt == "compressed-tensors" and g_idx is not None:
        tensors["weight_g_idx"] = g_idx
    return tensors, dequantize_int4(weight)


def _load(layer, fmt, shards, gs, sym, act, in_features, seed=0):
    """Quantize one random float weight per shard, load each; return the dequantized [out, in]."""
    gen = torch.Generator().manual_seed(seed)
    params = dict(layer.named_parameters())
    g_idx = None
    if act:
        g_idx = (torch.randperm(in_features, generator=gen) // gs).to(torch.int32)
    parts = []
    for shard_id, rows in shards:
        w = torch.randn(rows, in_features, generator=gen)
        tensors, dequant = _shard_tensors(fmt, w, gs, sym, g_idx)
        for name, tensor in tensors.items():
            args = () if shard_id is None else (shard_id,)
            params[name].weight_loader(params[name], tensor, *args)
        parts.append(dequant)
    process_weights_after_loading(layer)
    return torch.cat(parts)


@pytest.mark.parametrize(("gs", "sym", "act"), VARIANTS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_fused_and_row_parallel_layers_match_the_dequantized_float_layer(fmt, gs, sym, act):
    config = _variant_config(fmt, gs, sym, act)
    x = torch.randn(5, 64, generator=torch.Generator().manual_seed(9))
    qkv = QKVParallelLinear(64, 16, 4, 2, bias=True, quant_config=config, prefix="qkv_proj")
    w = _load(qkv, fmt, [("q", 64), ("k", 32), ("v", 32)], gs, sym, act, 64)
    qkv.bias.data.normal_()
    torch.testing.assert_close(qkv(x)[0], x @ w.t() + qkv.bias, atol=1e-4, rtol=1e-4)
    assert not hasattr(qkv, "qweight") and not hasattr(qkv, "weight_packed")

    gate_up = MergedColumnParallelLinear(64, [128, 128], bias=False, quant_config=config)
    w = _load(gate_up, fmt, [(0, 128), (1, 128)], gs, sym, act, 64, seed=1)
    torch.testing.assert_close(gate_up(x)[0], x @ w.t(), atol=1e-4, rtol=1e-4)

    down = RowParallelLinear(128, 64, bias=False, quant_config=config)
    w = _load(down, fmt, [(None, 64)], gs, sym, act, 128, seed=2)
    h = torch.randn(1, 128)  # one token: the decode path of the kernel
    torch.testing.assert_close(down(h)[0], h @ w.t(), atol=1e-4, rtol=1e-4)


def test_shards_with_different_g_idx_are_refused():
    config = _config("gptq", 32, True, True)
    qkv = QKVParallelLinear(64, 16, 4, 2, bias=False, quant_config=config, prefix="qkv_proj")
    gen = torch.Generator().manual_seed(0)
    g_q, g_k = ((torch.randperm(64, generator=gen) // 32).to(torch.int32) for _ in range(2))
    qkv.g_idx.weight_loader(qkv.g_idx, g_q, "q")
    qkv.g_idx.weight_loader(qkv.g_idx, g_q, "v")  # the same order again is fine
    with pytest.raises(ValueError, match="gptq: qkv_proj: shard 'k' has a different g_idx"):
        qkv.g_idx.weight_loader(qkv.g_idx, g_k, "k")


def test_checkpoint_of_the_wrong_shape_names_method_and_tensor():
    layer = RowParallelLinear(128, 64, bias=False, quant_config=_config("awq", 32, False, False))
    with pytest.raises(ValueError, match=r"awq: qweight: .*checkpoint shape \(128, 4\)"):
        layer.qweight.weight_loader(layer.qweight, torch.zeros(128, 4, dtype=torch.int32))
    with pytest.raises(ValueError, match="awq: scales: .*exceeds"):  # too few rows to slice
        layer.scales.weight_loader(layer.scales, torch.zeros(2, 64))


@pytest.mark.parametrize(
    ("method", "config", "message"),
    [
        ("gptq", {"bits": 8, "group_size": 128, "desc_act": False}, "gptq: only bits=4"),
        ("gptq", {"bits": 4, "group_size": 48, "desc_act": False}, "gptq: group_size must be"),
        ("gptq", {"bits": 4, "group_size": 32, "checkpoint_format": "marlin"}, "gptq: checkpoint"),
        ("awq", {"bits": 3, "group_size": 128, "zero_point": True}, "awq: only bits=4"),
        ("awq", {"bits": 4, "group_size": 128, "version": "gemv"}, "awq: only version 'gemm'"),
    ],
)
def test_unsupported_configs_name_the_method_and_the_reason(method, config, message):
    with pytest.raises(ValueError, match=message):
        get_quantization_config(method).from_config(config)


def test_group_size_that_does_not_divide_the_layer_is_refused():
    config = _config("gptq", 128, True, False)
    with pytest.raises(ValueError, match="gptq: the layer's input size 64"):
        QKVParallelLinear(64, 16, 4, 2, bias=False, quant_config=config)


def test_compressed_tensors_8_bit_weight_only_is_refused():
    with pytest.raises(ValueError, match="weights.num_bits must be 4"):
        CompressedTensorsWNA16(strategy="group", num_bits=8, group_size=32, layer_name="x")


# ---- whole model ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_float(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("w4a16_src"), "llama")


MODEL_CASES = [
    ("gptq", 32, True, True),  # act-order, symmetric (what AutoGPTQ writes by default)
    ("gptq", 64, False, False),
    ("awq", 32, False, False),
    ("compressed-tensors", 32, True, False),
    ("compressed-tensors", -1, False, False),
]


@pytest.mark.parametrize(("fmt", "gs", "sym", "act"), MODEL_CASES)
def test_model_logits_match_hf_on_the_dequantized_weights(tiny_float, tmp_path, fmt, gs, sym, act):
    path = write_w4a16_checkpoint(tiny_float, tmp_path / fmt, fmt, gs, sym, act)
    assert json.loads((path / "config.json").read_text())["quantization_config"]
    hf = AutoModelForCausalLM.from_pretrained(path / "dequantized", dtype=torch.float32).eval()
    engine_config = EngineArgs(
        model=str(path), dtype="float32", attention_backend="naive"
    ).create_engine_config()
    assert engine_config.model_config.quantization == fmt  # detected from config.json
    ours = get_model(engine_config)
    ids = torch.randint(3, 384, (20,), generator=torch.Generator().manual_seed(1))
    expected = _hf_logits(hf, ids)
    assert expected.std() > 0.1
    torch.testing.assert_close(_run(ours, ids, 0, 20), expected, atol=1e-3, rtol=0)
    _run(ours, ids, 0, 12, req_id="d")  # then decode one token at a time (M = 1)
    for pos in range(12, 16):
        got = _run(ours, ids, pos, pos + 1, req_id="d")[0]
        torch.testing.assert_close(got, expected[pos], atol=1e-3, rtol=0)
