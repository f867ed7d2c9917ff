"""PunicaWrapper: this step's token -> adapter-slot mapping, and the LoRA add for one layer.

Stage 9. Mirrors vllm/lora/punica_wrapper/punica_base.py (with punica_cpu.py / punica_gpu.py).
One object per model, shared by every LoRA layer: the runner sets the mapping once per step
(`update_metadata`), then each layer calls `add_lora_linear`, which for a fused layer (qkv, gate_up)
runs one shrink and one expand per slice, into that slice's columns of the base output:
    y[:, off_i : off_i + n_i] += B_i[slot(t)] @ (A_i[slot(t)] @ x[t])
A pure decode step (one token per request) uses BGMV, one matrix-vector product per token; a
step with prefills uses SGMV, one matrix-matrix product per request's run of tokens. A step where
no token has an adapter skips all of it: the base model's requests pay nothing (`has_lora`).
Next: model_manager.py.
"""

from __future__ import annotations

import numpy as np
import torch

from vllm_mini.lora.ops import torch_ops


class PunicaWrapper:
    def __init__(self, device: torch.device) -> None:
        self.device = device
        # CPU: the torch reference (batched matmuls on gathered matrices). CUDA: the Triton ops.
        self.ops = torch_ops
        if device.type == "cuda":
            from vllm_mini.lora.ops import triton_ops

            self.ops = triton_ops
        self.has_lora = False
        self.is_decode = True
        self.token_indices: torch.Tensor | None = None  # [T] slot per token, -1: no adapter
        self.segments: tuple[list[int], list[int], list[int]] = ([], [], [])

    def update_metadata(
        self, token_slots: np.ndarray, query_start_loc: list[int], max_query_len: int
    ) -> None:
        """token_slots [T]: each token's slot (-1: base model); requests own consecutive runs."""
        self.has_lora = bool((token_slots >= 0).any())
        if not self.has_lora:
            return
        self.is_decode = max_query_len == 1
        if self.is_decode:
            self.token_indices = torch.from_numpy(token_slots.astype(np.int64)).to(self.device)
        else:
            starts = query_start_loc[:-1]
            lens = [e - s for s, e in zip(starts, query_start_loc[1:])]
            slots = [int(token_slots[s]) if n else -1 for s, n in zip(starts, lens)]
            self.segments = (starts, lens, slots)

    def add_lora_linear(
        self,
        y: torch.Tensor,
        x: torch.Tensor,
        lora_a: list[torch.Tensor],
        lora_b: list[torch.Tensor],
        offsets: list[int],
    ) -> None:
        """y [T, out] += the LoRA update of each slice (A [S, R, in], B [S, n_i, R] per slice)."""
        buf = torch.empty(x.shape[0], lora_a[0].shape[1], dtype=torch.float32, device=x.device)
        for a, b, offset in zip(lora_a, lora_b, offsets):
            if self.is_decode:
                self.ops.bgmv_shrink(x, a, buf, self.token_indices)
                self.ops.bgmv_expand_slice(buf, b, y, self.token_indices, offset)
            else:
                self.ops.sgmv_shrink(x, a, buf, *self.segments)
                self.ops.sgmv_expand_slice(buf, b, y, *self.segments, offset)
