"""The CPU's dense LoRA path equals the BGMV/SGMV reference, token for token."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vllm_mini.lora.layers import LinearWithLoRA
from vllm_mini.lora.lora_model import LoRALayerWeights
from vllm_mini.lora.punica_wrapper import PunicaWrapper


class FakeQKV(torch.nn.Module):
    """A base layer with three output slices, like QKVParallelLinear: y = x @ W^T."""

    def __init__(self, in_size: int, sizes: list[int]) -> None:
        super().__init__()
        self.input_size, self.output_sizes, self.tp_size = in_size, sizes, 1
        self.weight = torch.randn(sum(sizes), in_size)

    def forward(self, x):
        return x @ self.weight.T, None


@pytest.mark.parametrize("decode", [True, False])
def test_dense_path_equals_the_reference(decode):
    torch.manual_seed(0)
    slots, rank, in_size, sizes = 3, 8, 48, [32, 16, 16]
    punica = PunicaWrapper(torch.device("cpu"))
    layer = LinearWithLoRA(FakeQKV(in_size, sizes), slots, rank, punica)
    for slot, r in enumerate([8, 4, 2]):  # different ranks, zero-padded in the slots
        weights = [LoRALayerWeights(torch.randn(r, in_size), torch.randn(n, r)) for n in sizes]
        weights[1] = None if slot == 1 else weights[1]  # an adapter that skips the k slice
        layer.set_lora(slot, weights)
    token_slots = np.array([0, -1, 2, 1, 1, 0, -1, 2])
    qsl = list(range(9)) if decode else [0, 3, 5, 8]
    if not decode:
        token_slots = np.array([0, 0, 0, -1, -1, 2, 2, 2])
    x = torch.randn(8, in_size)
    results = []
    for dense in (True, False):
        punica.dense = dense
        punica.update_metadata(token_slots, qsl, 1 if decode else 3, slots, rank)
        results.append(layer(x)[0])
    torch.testing.assert_close(results[0], results[1], rtol=1e-4, atol=1e-4)
    base = x @ layer.base_layer.weight.T
    assert not torch.allclose(results[0][token_slots >= 0], base[token_slots >= 0])
    torch.testing.assert_close(results[0][token_slots < 0], base[token_slots < 0])
