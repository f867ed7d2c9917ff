"""PunicaWrapper: this step's token -> adapter-slot mapping, and the LoRA add for one layer.

Stage 9. Mirrors vllm/lora/punica_wrapper/punica_base.py (with punica_cpu.py / punica_gpu.py).
One object per model, shared by every LoRA layer: the runner sets the mapping once per step
(`update_metadata`), then each layer calls `add_lora_linear`, which for a fused layer (qkv, gate_up)
runs one shrink and one expand per slice, into that slice's columns of the base output:
    y[:, off_i : off_i + n_i] += B_i[slot(t)] @ (A_i[slot(t)] @ x[t])
A pure decode step (one token per request) uses BGMV, one matrix-vector product per token; a
step with prefills uses SGMV, one matrix-matrix product per request's run of tokens. A step where
no token has an adapter skips all of it: the base model's requests pay nothing (`has_lora`).

On a CPU a third way wins (`dense=True`, the default there). Gathering every token's A and B (the
BGMV reference) copies matrices per token, and SGMV makes one small product per request. Instead,
every token is multiplied by *all* slots' A at once, one GEMM against A stacked to
[slices * slots * rank, in], and a 0/1 mask keeps each token's own slot's columns. One GEMM per
slice against B laid out [out, slots * rank] then adds exactly that slot's update. It costs
`slots` times the minimal arithmetic, which at rank 8-16 is still small next to the base layer,
and it runs as a few large, well-blocked oneDNN calls instead of hundreds of tiny ones.
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
        self.dense = device.type == "cpu"
        self.has_lora = False
        self.is_decode = True
        self.token_mask: torch.Tensor | None = None  # [T, slots * rank] for the dense path
        self.token_indices: torch.Tensor | None = None  # [T] slot per token, -1: no adapter
        self.segments: tuple[list[int], list[int], list[int]] = ([], [], [])

    def update_metadata(
        self,
        token_slots: np.ndarray,
        query_start_loc: list[int],
        max_query_len: int,
        num_slots: int = 0,
        max_rank: int = 0,
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
        if self.dense:
            # mask[t, s * rank : (s + 1) * rank] = 1 for token t's slot s, 0 elsewhere.
            mask = np.zeros((len(token_slots), num_slots, max_rank), dtype=np.float32)
            rows = np.flatnonzero(token_slots >= 0)
            mask[rows, token_slots[rows]] = 1.0
            self.token_mask = torch.from_numpy(mask.reshape(len(token_slots), -1)).to(self.device)

    def add_lora_linear(
        self,
        y: torch.Tensor,
        x: torch.Tensor,
        lora_a: list[torch.Tensor],
        lora_b: list[torch.Tensor],
        offsets: list[int],
    ) -> None:
        """y [T, out] += the LoRA update of each slice (A [S, R, in], B [S, n_i, R] per slice)."""
        if self.dense:
            raise RuntimeError("the dense path takes the layer's stacked views: add_lora_dense")
        buf = torch.empty(x.shape[0], lora_a[0].shape[1], dtype=torch.float32, device=x.device)
        for a, b, offset in zip(lora_a, lora_b, offsets):
            if self.is_decode:
                self.ops.bgmv_shrink(x, a, buf, self.token_indices)
                self.ops.bgmv_expand_slice(buf, b, y, self.token_indices, offset)
            else:
                self.ops.sgmv_shrink(x, a, buf, *self.segments)
                self.ops.sgmv_expand_slice(buf, b, y, *self.segments, offset)

    def add_lora_dense(
        self,
        y: torch.Tensor,
        x: torch.Tensor,
        a_all: torch.Tensor,
        b_dense: list[torch.Tensor],
        offsets: list[int],
    ) -> None:
        """The dense CPU path: a_all [slices * S * R, in], b_dense[i] [n_i, S * R]."""
        num_slices = len(b_dense)
        full = x.float() @ a_all.T  # [T, slices * S * R]: every token against every slot
        full = full.view(x.shape[0], num_slices, -1) * self.token_mask.unsqueeze(1)
        for i, (b, offset) in enumerate(zip(b_dense, offsets)):
            y[:, offset : offset + b.shape[0]] += (full[:, i] @ b.T).to(y.dtype)
