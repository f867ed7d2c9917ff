"""The quantization hook: a method's parameters are loaded, sharded and packed like vLLM's.

A toy method written here (not an engine method) stores each weight the way real formats do:
- `qweight`: 4-bit values packed eight to an int32 along the INPUT dim, laid out [in/8, out]
  (GPTQ's layout: input_dim=0, output_dim=1, packed_dim=0);
- `scales`: one float per output channel ([out], output_dim=0);
- `tensor_scale`: one float per packed shard (q, k, v), loaded by shard index (`shard_indexed`).
If the linear layers' weight loaders ignored any of these attributes, q/k/v or gate/up would land
in the wrong rows, and the layer's output would differ from the float reference.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vllm_mini.model_executor.layers.linear import (
    MergedColumnParallelLinear,
    QKVParallelLinear,
    RowParallelLinear,
)
from vllm_mini.model_executor.layers.quantization import (
    QuantizationConfig,
    QuantizeMethodBase,
    get_quantization_config,
    set_weight_attrs,
)


def quantize(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[out, in] float -> (qweight [in/8, out] int32, per-channel scales [out], one tensor scale)."""
    tensor_scale = w.abs().max() / 2
    scales = (w / tensor_scale).abs().amax(dim=1).clamp(min=1e-8) / 7
    q = torch.round(w / tensor_scale / scales[:, None]).clamp(-8, 7).to(torch.int32) + 8
    q = q.t().reshape(w.shape[1] // 8, 8, w.shape[0])  # [in/8, 8, out]
    shifts = (torch.arange(8, dtype=torch.int32) * 4)[None, :, None]
    return (q << shifts).sum(dim=1, dtype=torch.int32), scales, tensor_scale


def dequantize(qweight: torch.Tensor, scales: torch.Tensor, tensor_scale: torch.Tensor):
    shifts = (torch.arange(8, dtype=torch.int32) * 4)[None, :, None]
    q = (qweight[:, None, :] >> shifts) & 0xF  # [in/8, 8, out]
    w = (q.reshape(-1, qweight.shape[1]) - 8).float().t()  # [out, in]
    return w * scales[:, None] * tensor_scale


class ToyInt4Method(QuantizeMethodBase):
    def __init__(self, num_shards: int) -> None:
        self.num_shards = num_shards

    def create_weights(self, layer, input_size_per_partition, output_partition_sizes, params_dtype):
        out = sum(output_partition_sizes)
        qweight = nn.Parameter(
            torch.zeros(input_size_per_partition // 8, out, dtype=torch.int32), requires_grad=False
        )
        set_weight_attrs(
            qweight, {"input_dim": 0, "output_dim": 1, "packed_dim": 0, "pack_factor": 8}
        )
        scales = nn.Parameter(torch.zeros(out), requires_grad=False)
        set_weight_attrs(scales, {"output_dim": 0})
        tensor_scale = nn.Parameter(torch.zeros(self.num_shards), requires_grad=False)
        set_weight_attrs(tensor_scale, {"output_dim": None, "shard_indexed": True})
        layer.register_parameter("qweight", qweight)
        layer.register_parameter("scales", scales)
        layer.register_parameter("tensor_scale", tensor_scale)
        layer.register_parameter("weight", None)
        layer.shard_sizes = output_partition_sizes

    def apply(self, layer, x, bias=None):
        # Each shard has its own tensor scale: expand it over that shard's output channels.
        per_channel = torch.repeat_interleave(
            layer.tensor_scale, torch.tensor(layer.shard_sizes[: len(layer.tensor_scale)])
        )
        w = dequantize(layer.qweight, layer.scales * per_channel, torch.tensor(1.0))
        return nn.functional.linear(x, w, bias)


class ToyConfig(QuantizationConfig):
    def __init__(self, num_shards: int) -> None:
        self.num_shards = num_shards

    @classmethod
    def get_name(cls) -> str:
        return "toy-int4"

    def get_quant_method(self, layer, prefix):
        return ToyInt4Method(self.num_shards)


def _load(layer, name, shard_id, w):
    qweight, scales, tensor_scale = quantize(w)
    for pname, value in (("qweight", qweight), ("scales", scales), ("tensor_scale", tensor_scale)):
        param = getattr(layer, pname)
        if shard_id is None:
            param.weight_loader(param, value)
        else:
            param.weight_loader(param, value, shard_id)
    return dequantize(qweight, scales, tensor_scale)


def test_qkv_shards_land_in_their_rows_with_their_own_tensor_scale():
    torch.manual_seed(0)
    layer = QKVParallelLinear(64, 16, 4, 2, bias=False, quant_config=ToyConfig(3), prefix="qkv")
    # Different magnitudes per shard, so a tensor scale in the wrong slot changes the output.
    q, k, v = torch.randn(64, 64), 3 * torch.randn(32, 64), 0.5 * torch.randn(32, 64)
    ref = [_load(layer, "qkv", sid, w) for sid, w in zip("qkv", (q, k, v))]
    x = torch.randn(5, 64)
    torch.testing.assert_close(layer(x)[0], x @ torch.cat(ref).t(), rtol=1e-5, atol=1e-5)


def test_merged_gate_up_shards_and_row_parallel_layer():
    torch.manual_seed(1)
    merged = MergedColumnParallelLinear(32, [48, 48], bias=False, quant_config=ToyConfig(2))
    gate, up = torch.randn(48, 32), 2 * torch.randn(48, 32)
    ref = torch.cat([_load(merged, "gate_up", i, w) for i, w in enumerate((gate, up))])
    x = torch.randn(3, 32)
    torch.testing.assert_close(merged(x)[0], x @ ref.t(), rtol=1e-5, atol=1e-5)

    row = RowParallelLinear(48, 16, bias=False, quant_config=ToyConfig(1))
    down = torch.randn(16, 48)
    ref_down = _load(row, "down", None, down)
    h = torch.randn(3, 48)
    torch.testing.assert_close(row(h)[0], h @ ref_down.t(), rtol=1e-5, atol=1e-5)


def test_registry_names_every_method_and_rejects_unknown_ones():
    with pytest.raises(ValueError, match="quantization must be one of"):
        get_quantization_config("int3")


def test_model_config_rejects_unknown_method_and_mismatch_with_checkpoint(tmp_path):
    from tests.conftest import make_tiny_checkpoint
    from vllm_mini.config import ModelConfig

    model_dir = make_tiny_checkpoint(tmp_path / "m")
    with pytest.raises(ValueError, match="quantization must be one of"):
        ModelConfig(model=str(model_dir), quantization="int3")
    with pytest.raises(ValueError, match="needs a .gguf model file"):
        ModelConfig(model=str(model_dir), quantization="gguf")
    # A checkpoint that says it is GPTQ cannot be run as AWQ.
    import json

    cfg_path = model_dir / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["quantization_config"] = {"quant_method": "gptq", "bits": 4, "group_size": 32}
    cfg_path.write_text(json.dumps(cfg))
    assert ModelConfig(model=str(model_dir)).quantization == "gptq"
    with pytest.raises(ValueError, match="does not match the checkpoint"):
        ModelConfig(model=str(model_dir), quantization="awq")
