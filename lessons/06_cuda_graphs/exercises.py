"""Lesson 06 exercises: the static-buffer side of CUDA graphs, which runs (and is tested) on CPU.

Fill in each function, then run:  LESSON_IMPL=exercises .venv/bin/pytest lessons/06_cuda_graphs
One at a time with -k: capture_size | fill_buffers | graph_safe. The tests compare your answers
with the engine's own functions in vllm_mini/compilation/cuda_graph.py, and run the engine with
your padding to check the tokens do not change.
"""

from __future__ import annotations

import torch

from vllm_mini.attention.backends.abstract import AttentionMetadata
from vllm_mini.compilation.cuda_graph import PAD_SLOT_ID, StaticInputBuffers  # noqa: F401


def pick_capture_size(num_reqs: int, capture_sizes: list[int]) -> int | None:
    """The graph to replay for a decode batch of num_reqs requests (capture_sizes is sorted).

    A graph replays exactly the shapes it was captured with, so the batch is padded UP to the
    smallest captured size that holds it; above the largest there is no graph (run eagerly).
    """
    raise NotImplementedError(
        "pick_capture_size: the smallest size >= num_reqs, or None. "
        "Engine: padded_batch_size in vllm_mini/compilation/cuda_graph.py"
    )


def fill_buffers(
    buffers: StaticInputBuffers,
    input_ids: torch.Tensor,
    positions: torch.Tensor,
    meta: AttentionMetadata,
    size: int,
) -> None:
    """Copy this step's n decode tokens into the persistent buffers, in place, and pad to size.

    Rows [0, n): input ids, positions, slot mapping, seq lens and block-table rows of the step.
    Rows [n, size): padding that must be harmless: its KV goes nowhere (slot PAD_SLOT_ID, which
    every reshape_and_cache kernel skips), it attends over one key (seq len 1, block 0), and its
    outputs are sliced off before sampling. Never rebind a buffer (`buffers.x = ...`): a captured
    graph only sees the memory it was recorded with.
    """
    raise NotImplementedError(
        "fill_buffers: copy_ into buffers.*[:n], then pad [n:size]. "
        "Engine: StaticInputBuffers.fill in vllm_mini/compilation/cuda_graph.py"
    )


def graph_unsafe_metadata(
    buffers: StaticInputBuffers, meta: AttentionMetadata, size: int, max_model_len: int
) -> AttentionMetadata:
    """A metadata builder that works eagerly but breaks a captured graph. Find the three bugs."""
    seq_lens = buffers.seq_lens[:size].clone()  # a fresh tensor each step
    return AttentionMetadata(
        num_actual_tokens=size,
        max_query_len=int((buffers.query_start_loc[1:] - buffers.query_start_loc[:-1]).max()),
        max_seq_len=int(seq_lens.max()),  # read back from the device
        query_start_loc=buffers.query_start_loc[: size + 1],
        seq_lens=seq_lens,
        block_table=buffers.block_table[:size],
        slot_mapping=buffers.slot_mapping[:size],
        query_start_loc_cpu=list(range(meta.num_actual_tokens + 1)),
        seq_lens_cpu=list(meta.seq_lens_cpu),
        req_ids=meta.req_ids,
    )


def graph_safe_metadata(
    buffers: StaticInputBuffers, meta: AttentionMetadata, size: int, max_model_len: int
) -> AttentionMetadata:
    """graph_unsafe_metadata, fixed: every tensor a view of a buffer, every number fixed.

    Why: replay reuses the pointers recorded at capture (a `.clone()` made during capture is not
    the tensor the next step writes), and the Python numbers were baked into the kernels' launch
    shapes (a max_seq_len read back with `.max()` is a host sync, and is stale on replay).
    A decode step always has max_query_len 1; size max_seq_len for the longest context.
    """
    raise NotImplementedError(
        "graph_safe_metadata: fix graph_unsafe_metadata. "
        "Engine: StaticInputBuffers.metadata in vllm_mini/compilation/cuda_graph.py"
    )
