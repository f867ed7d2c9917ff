"""LoRAModel: one adapter's A and B matrices, keyed by the fused layer and slice they modify.

Stage 9. Mirrors vllm/lora/lora_model.py and lora_weights.py. PEFT names a tensor after the HF
module it patches, e.g. base_model.model.model.layers.3.self_attn.k_proj.lora_A.weight. Our
models fuse q/k/v into qkv_proj and gate/up into gate_up_proj, so k_proj's matrices become
slice 1 of model.layers.3.self_attn.qkv_proj. B is multiplied by the adapter's scaling here,
once, so the per-step ops never scale. Shapes are checked against the base model's layers: an
adapter trained for another model is an error naming the module and both shapes.
Next: layers.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from vllm_mini.lora.peft_helper import TARGET_MODULES, PEFTHelper

_KEY = re.compile(r"^(?:base_model\.model\.)?(.*)\.(\w+_proj)\.lora_(A|B)(?:\.default)?\.weight$")


def expected_lora_shapes(model_config) -> dict[tuple[str, int], tuple[int, int]]:
    """(layer, slice) -> (in, out_slice) of every LoRA target of a Llama-style model, from its
    config alone: the front end checks an adapter with it before any request runs."""
    hf = model_config.hf_config
    hidden, heads = hf.hidden_size, model_config.num_heads
    q, kv = heads * model_config.head_size, model_config.num_kv_heads * model_config.head_size
    inter = hf.intermediate_size
    per_layer = {
        "self_attn.qkv_proj": [(hidden, q), (hidden, kv), (hidden, kv)],
        "self_attn.o_proj": [(q, hidden)],
        "mlp.gate_up_proj": [(hidden, inter), (hidden, inter)],
        "mlp.down_proj": [(inter, hidden)],
    }
    return {
        (f"model.layers.{i}.{name}", s): shape
        for i in range(model_config.num_layers)
        for name, shapes in per_layer.items()
        for s, shape in enumerate(shapes)
    }


@dataclass
class LoRALayerWeights:
    """The matrices for one slice of one layer: A [r, in], B [out_slice, r] (scaled)."""

    lora_a: torch.Tensor
    lora_b: torch.Tensor


@dataclass
class LoRAModel:
    lora_int_id: int
    rank: int
    # (fused layer name, slice index) -> weights, e.g. ("model.layers.0.self_attn.qkv_proj", 1)
    layers: dict[tuple[str, int], LoRALayerWeights]

    @classmethod
    def from_local_checkpoint(
        cls,
        path: str | Path,
        lora_int_id: int,
        max_lora_rank: int,
        expected_shapes: dict[tuple[str, int], tuple[int, int]],
    ) -> LoRAModel:
        """Load and check an adapter; expected_shapes[(layer, slice)] = (in, out_slice)."""
        from safetensors.torch import load_file

        path = Path(path)
        helper = PEFTHelper.from_local_dir(path, max_lora_rank)
        weights_file = path / "adapter_model.safetensors"
        if not weights_file.is_file():
            raise ValueError(f"LoRA adapter {str(path)!r} has no adapter_model.safetensors")
        pairs: dict[tuple[str, int], dict[str, torch.Tensor]] = {}
        for key, tensor in load_file(str(weights_file)).items():
            m = _KEY.match(key)
            if m is None or m.group(2) not in TARGET_MODULES:
                raise ValueError(f"adapter {str(path)!r}: unexpected tensor {key!r}")
            parent, module, which = m.groups()
            fused, index = TARGET_MODULES[module]
            pairs.setdefault((f"{parent}.{fused}", index), {})[which] = tensor
        layers = {}
        for target, ab in sorted(pairs.items()):
            name = f"{target[0]} slice {target[1]}"
            if target not in expected_shapes:
                raise ValueError(f"adapter {str(path)!r} patches {name}, which the model lacks")
            if set(ab) != {"A", "B"}:
                raise ValueError(f"adapter {str(path)!r}: {name} needs both lora_A and lora_B")
            a, b = ab["A"], ab["B"]
            in_size, out_size = expected_shapes[target]
            if a.shape != (helper.r, in_size) or b.shape != (out_size, helper.r):
                raise ValueError(
                    f"adapter {str(path)!r}: {name} has A {tuple(a.shape)} and B "
                    f"{tuple(b.shape)}, expected A ({helper.r}, {in_size}) and B "
                    f"({out_size}, {helper.r}): was it trained for another model?"
                )
            layers[target] = LoRALayerWeights(a.float(), b.float() * helper.scaling)
        return cls(lora_int_id, helper.r, layers)
