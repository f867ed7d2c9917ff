"""Lesson 06 solutions: the reference answers to exercises.py (the tests run these by default)."""

from __future__ import annotations

import bisect

import torch

from vllm_mini.attention.backends.abstract import AttentionMetadata
from vllm_mini.compilation.cuda_graph import PAD_SLOT_ID, StaticInputBuffers


def pick_capture_size(num_reqs: int, capture_sizes: list[int]) -> int | None:
    """The smallest capture size that holds num_reqs requests; None above the largest."""
    i = bisect.bisect_left(capture_sizes, num_reqs)
    return capture_sizes[i] if i < len(capture_sizes) else None


def fill_buffers(
    buffers: StaticInputBuffers,
    input_ids: torch.Tensor,
    positions: torch.Tensor,
    meta: AttentionMetadata,
    size: int,
) -> None:
    """Write a decode step of n requests into rows [0, n) of the buffers, pad rows [n, size)."""
    n = input_ids.shape[0]
    buffers.input_ids[:n].copy_(input_ids)
    buffers.input_ids[n:size].zero_()
    buffers.positions[:n].copy_(positions)
    buffers.positions[n:size].zero_()
    buffers.slot_mapping[:n].copy_(meta.slot_mapping)
    buffers.slot_mapping[n:size].fill_(PAD_SLOT_ID)
    buffers.seq_lens[:n].copy_(meta.seq_lens)
    buffers.seq_lens[n:size].fill_(1)
    buffers.block_table[:n, : meta.block_table.shape[1]].copy_(meta.block_table)
    buffers.block_table[n:size].zero_()


def graph_safe_metadata(
    buffers: StaticInputBuffers, meta: AttentionMetadata, size: int, max_model_len: int
) -> AttentionMetadata:
    """Metadata a captured graph can replay: buffer views, and numbers fixed at capture time."""
    n = meta.num_actual_tokens
    return AttentionMetadata(
        num_actual_tokens=size,
        max_query_len=1,
        max_seq_len=max_model_len,
        query_start_loc=buffers.query_start_loc[: size + 1],
        seq_lens=buffers.seq_lens[:size],
        block_table=buffers.block_table[:size],
        slot_mapping=buffers.slot_mapping[:size],
        query_start_loc_cpu=list(range(n + 1)),
        seq_lens_cpu=list(meta.seq_lens_cpu),
        req_ids=meta.req_ids,
    )
