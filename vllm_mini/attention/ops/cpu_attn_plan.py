"""The CPU backend's split of one step's sequences: made once per step, used by every layer.

Stage 4. Mirrors the metadata builder of vLLM's CPU attention backend
(vllm/v1/attention/backends/cpu_attn.py), which sorts a step's requests into decodes and prefills
once, before the forward, instead of in each of the model's layers. Here the plan says which query
rows the C++ kernel attends (csrc/cpu/paged_attention.cpp: decodes, draft verification, and
prompts up to KERNEL_MAX_QUERY new tokens) and, for each longer sequence, what SDPA needs: its row
range as Python ints, the ids of the blocks holding its context, and the mask of a chunk that
follows a cached prefix. All of it depends only on the step's metadata, so the model's 30 layers
share one plan (cached on AttentionMetadata.backend_cache by attention/backends/paged.py).
Next: cpu_paged_attn.py, which runs a plan.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Sequences with at most this many new tokens go to the C++ kernel, longer ones to SDPA. The
# kernel does one query token at a time (vector products), SDPA's flash kernel tiles queries into
# matrix products, which pays only once there are many queries. Measured on a 2-core AVX-512 CPU
# (9 query / 3 KV heads, head size 64, fp32 and bf16), the kernel is faster up to ~1024 new
# tokens, SDPA beyond: docs/stages/04_paged_kv_cache.md has the figures.
KERNEL_MAX_QUERY = 1024


@dataclass(frozen=True)
class PrefillSeq:
    """One sequence for SDPA: query rows lo:hi, the last hi - lo of its seq_len positions."""

    lo: int
    hi: int
    seq_len: int
    block_ids: torch.Tensor  # int64, the blocks that hold its seq_len positions, in order
    # bool [q_len, seq_len] for a chunk after a cached prefix; None for a fresh prompt (q_len ==
    # seq_len), which is plain causal attention over exactly the step's new K/V.
    mask: torch.Tensor | None

    @property
    def fresh(self) -> bool:
        return self.mask is None


@dataclass(frozen=True)
class CpuAttentionPlan:
    """The kernel's share of the step (rows and per-sequence tensors) and the SDPA sequences.

    `kernel_rows` is None when no sequence goes to the kernel, a slice when its rows are one
    contiguous range (always so when every sequence does: then the step's own tensors are used
    as they are), else an int64 index tensor.
    """

    kernel_rows: slice | torch.Tensor | None
    kernel_block_table: torch.Tensor | None
    kernel_seq_lens: torch.Tensor | None
    kernel_query_start_loc: torch.Tensor | None
    prefills: tuple[PrefillSeq, ...]


def build_plan(
    query_start_loc_cpu: list[int],
    seq_lens_cpu: list[int],
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    block_table: torch.Tensor,
    block_size: int,
    kernel_max_query: int = KERNEL_MAX_QUERY,
) -> CpuAttentionPlan:
    """Split the step's sequences; the Python lists are the host copies of the tensors."""
    starts = query_start_loc_cpu
    q_lens = [starts[i + 1] - starts[i] for i in range(len(seq_lens_cpu))]
    short = [i for i, n in enumerate(q_lens) if n <= kernel_max_query]
    if len(short) == len(q_lens):  # the usual case: the step's tensors go to the kernel as is
        return CpuAttentionPlan(slice(0, None), block_table, seq_lens, query_start_loc, prefills=())
    prefills = tuple(
        _prefill_seq(starts[i], starts[i + 1], seq_lens_cpu[i], block_table[i], block_size)
        for i, n in enumerate(q_lens)
        if n > kernel_max_query
    )
    if not short:
        return CpuAttentionPlan(None, None, None, None, prefills)
    sub_starts = [0]
    for i in short:
        sub_starts.append(sub_starts[-1] + q_lens[i])
    device = query_start_loc.device
    first, last = short[0], short[-1]
    if last - first + 1 == len(short):  # consecutive sequences: their rows are one range
        rows: slice | torch.Tensor = slice(starts[first], starts[last + 1])
        return CpuAttentionPlan(
            rows,
            block_table[first : last + 1],
            seq_lens[first : last + 1],
            torch.tensor(sub_starts, dtype=torch.int32, device=device),
            prefills,
        )
    idx = torch.tensor(short, device=device)
    rows = torch.tensor([t for i in short for t in range(starts[i], starts[i + 1])], device=device)
    return CpuAttentionPlan(
        rows,
        block_table[idx],
        seq_lens[idx],
        torch.tensor(sub_starts, dtype=torch.int32, device=device),
        prefills,
    )


def _prefill_seq(
    lo: int, hi: int, seq_len: int, block_row: torch.Tensor, block_size: int
) -> PrefillSeq:
    q_len = hi - lo
    block_ids = block_row[: -(-seq_len // block_size)].long()
    mask = None
    if q_len != seq_len:
        # Query j sits at position seq_len - q_len + j and sees keys up to that position.
        device = block_row.device
        q_pos = torch.arange(seq_len - q_len, seq_len, device=device).unsqueeze(1)
        mask = torch.arange(seq_len, device=device).unsqueeze(0) <= q_pos
    return PrefillSeq(lo, hi, seq_len, block_ids, mask)
