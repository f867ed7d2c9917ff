"""LoRA-aware linear layers: the base layer, plus adapter slots it adds from.

Stage 9. Mirrors vllm/lora/layers/ (base_linear.py, column_parallel_linear.py,
row_parallel_linear.py). A wrapper replaces each target layer of the model (qkv_proj, o_proj,
gate_up_proj, down_proj) after the base weights are loaded. It holds, per slice of its output
(q, k, v for qkv_proj; gate, up for gate_up_proj; one for the others), the stacked adapters:
    lora_a [max_loras, max_lora_rank, in]        lora_b [max_loras, out_slice, max_lora_rank]
allocated once, zero where no adapter sits, and smaller ranks zero-padded (zeros add nothing).
Loading an adapter into slot s copies its matrices into row s of every layer's stacks; the
forward runs the base layer unchanged and lets the PunicaWrapper add each token's update. The
base weights are never modified ("unmerged" LoRA): that is what lets one batch mix adapters.
Next: punica_wrapper.py.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vllm_mini.lora.lora_model import LoRALayerWeights
from vllm_mini.lora.punica_wrapper import PunicaWrapper

# Our fused layers and their slices, by the name the model gives the attribute.
LORA_TARGETS = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")


def slice_sizes(layer: nn.Module) -> list[int]:
    """Output columns of each slice: [q, k, v], [gate, up], or [out] (tensor parallel size 1)."""
    sizes = getattr(layer, "output_sizes", None)
    return list(sizes) if sizes else [layer.output_size]


class LinearWithLoRA(nn.Module):
    def __init__(
        self, base_layer: nn.Module, max_loras: int, max_rank: int, punica: PunicaWrapper
    ) -> None:
        super().__init__()
        if getattr(base_layer, "tp_size", 1) != 1:
            raise ValueError(
                "LoRA with tensor parallelism is not supported yet (tp size must be 1)"
            )
        self.base_layer = base_layer
        self.punica = punica
        self.slices = slice_sizes(base_layer)
        self.offsets = [sum(self.slices[:i]) for i in range(len(self.slices))]
        in_size = base_layer.input_size
        device = punica.device
        # Plain tensors, not parameters: no optimizer, no state_dict entry, no weight loader.
        self.lora_a = [
            torch.zeros(max_loras, max_rank, in_size, device=device) for _ in self.slices
        ]
        self.lora_b = [torch.zeros(max_loras, n, max_rank, device=device) for n in self.slices]
        self._refresh_dense()

    def _refresh_dense(self) -> None:
        """The dense CPU path's layouts (punica_wrapper.py), rebuilt when an adapter moves in:
        all slices' A stacked to [slices * S * R, in], each B as [out_i, S * R]."""
        if not self.punica.dense:
            return
        self.a_all = torch.cat([a.reshape(-1, a.shape[-1]) for a in self.lora_a])
        self.b_dense = [
            b.permute(1, 0, 2).reshape(b.shape[1], -1).contiguous() for b in self.lora_b
        ]

    def set_lora(self, slot: int, weights: list[LoRALayerWeights | None]) -> None:
        """Put one adapter's matrices (None: slices it does not patch) into `slot`."""
        for i, w in enumerate(weights):
            self.lora_a[i][slot].zero_()
            self.lora_b[i][slot].zero_()
            if w is not None:
                r = w.lora_a.shape[0]
                self.lora_a[i][slot, :r].copy_(w.lora_a)
                self.lora_b[i][slot, :, :r].copy_(w.lora_b)
        self._refresh_dense()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        out, bias = self.base_layer(x)
        if self.punica.has_lora and self.punica.dense:
            self.punica.add_lora_dense(out, x, self.a_all, self.b_dense, self.offsets)
        elif self.punica.has_lora:
            self.punica.add_lora_linear(out, x, self.lora_a, self.lora_b, self.offsets)
        return out, bias

    def __getattr__(self, name: str) -> Any:
        # Attributes of the wrapped layer (output_sizes, num_heads, ...) stay reachable.
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("base_layer"), name)


def wrap_lora_layers(
    model: nn.Module, max_loras: int, max_rank: int, punica: PunicaWrapper
) -> dict[str, LinearWithLoRA]:
    """Replace every target layer of `model` by its LoRA wrapper; name -> wrapper."""
    targets = [
        (name, module)
        for name, module in model.named_modules()
        if name.rsplit(".", 1)[-1] in LORA_TARGETS
    ]
    wrapped = {}
    for name, module in targets:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        wrapper = LinearWithLoRA(module, max_loras, max_rank, punica)
        setattr(parent, attr, wrapper)
        wrapped[name] = wrapper
    return wrapped
