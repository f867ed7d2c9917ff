"""Lesson 04 exercises: the free-block queue, cache sizing, slots and metadata, paged attention,
merging partial softmax results (PagedAttention v2's reduce), and debugging a kernel.

Fill in the bodies, then run:  LESSON_IMPL=exercises .venv/bin/pytest lessons/04_paged_kv_cache
One exercise at a time:        ... -k free_queue | num_kv_blocks | slot | metadata | shuffled |
                                      merge | shrink | fixed
The tests compare your code with the engine: FreeKVCacheBlockQueue, get_num_blocks,
compute_slot_mapping, the model runner's AttentionMetadata on a live run, and naive_attention.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from lessons._impl import load_impl

buggy_kernel = load_impl(__file__, "buggy_kernel")


class Node:
    def __init__(self, block_id: int) -> None:
        self.block_id = block_id
        self.prev: Node | None = None
        self.next: Node | None = None


class FreeBlockQueue:
    """A doubly linked list of free blocks. Every operation must be O(1).

    Hint: two sentinel nodes (head and tail) remove every special case at the ends.
    """

    def __init__(self, blocks: list[Node]) -> None:
        raise NotImplementedError(
            "FreeBlockQueue.__init__: link the blocks between a head and a tail sentinel, in "
            "order. FreeKVCacheBlockQueue in vllm_mini/core/kv_cache_utils.py is the engine's "
            "queue (vLLM: vllm/v1/core/kv_cache_utils.py)"
        )

    def append(self, block: Node) -> None:
        """Put a freed block at the tail (it will be evicted last: LRU order)."""
        raise NotImplementedError(
            "FreeBlockQueue.append: link a block in just before the tail sentinel. "
            "FreeKVCacheBlockQueue in vllm_mini/core/kv_cache_utils.py is the engine's queue "
            "(vLLM: vllm/v1/core/kv_cache_utils.py)"
        )

    def remove(self, block: Node) -> None:
        """Take a block out of the middle (a prefix-cache hit on a cached free block)."""
        raise NotImplementedError(
            "FreeBlockQueue.remove: unlink a block from its two neighbours in O(1). "
            "FreeKVCacheBlockQueue in vllm_mini/core/kv_cache_utils.py is the engine's queue "
            "(vLLM: vllm/v1/core/kv_cache_utils.py)"
        )

    def popleft(self) -> Node:
        """Take the block at the head (the least recently freed); ValueError if empty."""
        raise NotImplementedError(
            "FreeBlockQueue.popleft: unlink and return the block after the head sentinel. "
            "FreeKVCacheBlockQueue in vllm_mini/core/kv_cache_utils.py is the engine's queue "
            "(vLLM: vllm/v1/core/kv_cache_utils.py)"
        )

    def ids(self) -> list[int]:
        """Block ids from head to tail."""
        raise NotImplementedError(
            "FreeBlockQueue.ids: walk from the head sentinel to the tail one. "
            "FreeKVCacheBlockQueue in vllm_mini/core/kv_cache_utils.py is the engine's queue "
            "(vLLM: vllm/v1/core/kv_cache_utils.py)"
        )


def num_kv_blocks(
    kv_cache_memory_bytes: int,
    num_layers: int,
    block_size: int,
    num_kv_heads: int,
    head_size: int,
    dtype: torch.dtype,
) -> int:
    """How many KV blocks fit in the byte budget? One block holds K and V of block_size tokens
    for every layer. Raise ValueError if not even one block fits."""
    raise NotImplementedError(
        "num_kv_blocks: the budget divided by the bytes of one block (K and V, every layer). "
        "get_num_blocks does it (vllm_mini/core/kv_cache_utils.py; vLLM: "
        "vllm/v1/core/kv_cache_utils.py)"
    )


def slot_mapping(block_ids: list[int], start: int, end: int, block_size: int) -> list[int]:
    """The KV-cache slot of every position in [start, end) of a sequence with this block table."""
    raise NotImplementedError(
        "slot_mapping: each position's physical block (through the block table) and offset in it. "
        "compute_slot_mapping is the engine's (vllm_mini/worker/model_runner.py; vLLM: "
        "vllm/v1/worker/block_table.py, BlockTable.compute_slot_mapping)"
    )


@dataclass
class StepMetadata:
    query_start_loc: torch.Tensor  # int32 [num_seqs + 1]
    seq_lens: torch.Tensor  # int32 [num_seqs]
    block_table: torch.Tensor  # int32 [num_seqs, max_num_blocks], zero padded
    slot_mapping: torch.Tensor  # int64 [num_tokens]


def build_attention_metadata(
    num_computed_tokens: list[int],
    num_scheduled_tokens: list[int],
    block_ids: list[list[int]],
    block_size: int,
) -> StepMetadata:
    """What the model runner builds for one step. Sequence i already has num_computed_tokens[i]
    tokens in the cache and runs num_scheduled_tokens[i] new ones this step, using the physical
    blocks block_ids[i]. All sequences' new tokens are flattened into one batch, in order."""
    raise NotImplementedError(
        "build_attention_metadata: prefix sums of the new tokens, the lengths after the step, a "
        "zero-padded block table, one slot per new token. ModelRunner._prepare_inputs builds the "
        "engine's (vllm_mini/worker/model_runner.py; vLLM: vllm/v1/worker/gpu_model_runner.py, "
        "_prepare_inputs)"
    )


def paged_attention_one_seq(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_ids: list[int],
    seq_len: int,
    scale: float,
) -> torch.Tensor:
    """Causal attention for one sequence's last q_len queries, reading K/V through block_ids.

    query [q_len, H, D]; key_cache/value_cache [num_blocks, block_size, H_kv, D]; GQA allowed.
    Returns [q_len, H, D] in query's dtype.
    """
    raise NotImplementedError(
        "paged_attention_one_seq: gather this sequence's K/V through its block ids, then causal "
        "attention for the last q_len positions. paged_attn_torch.py is the engine's reference "
        "(vllm_mini/attention/ops/; vLLM: vllm/v1/attention/ops/paged_attn.py and "
        "docs/design/paged_attention.md)"
    )


def partial_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One decode query against ONE partition of its context (what a v2 thread block computes).

    q [H, D]; k, v [n, H_kv, D] (GQA allowed). Returns, in float32:
      out [H, D]       softmax-weighted sum of v, normalised within this partition only
      max_logit [H]    the partition's largest logit q.k * scale
      exp_sum [H]      sum over the partition of exp(logit - max_logit)
    """
    raise NotImplementedError(
        "partial_attention: one partition's normalised output, max logit and sum of exponentials, "
        "what one thread block of PagedAttention v2 leaves behind "
        "(csrc/attention/paged_attention_v2.cu in this repository; README section 4)"
    )


def merge_partitions(
    outs: torch.Tensor, max_logits: torch.Tensor, exp_sums: torch.Tensor
) -> torch.Tensor:
    """PagedAttention v2's reduce: combine P partitions' results into the exact attention output.

    outs [P, H, D], max_logits [P, H], exp_sums [P, H] as returned by partial_attention.
    Returns [H, D]: what softmax attention over the whole context would give.
    """
    raise NotImplementedError(
        "merge_partitions: rescale each partition by exp(its max - the overall max) and its sum, "
        "then normalise (README section 4, online softmax). paged_attention_v2_reduce_kernel in "
        "csrc/attention/paged_attention_v2.cu does it on a GPU"
    )


def shrink(
    case: buggy_kernel.DebugCase, fails: Callable[[buggy_kernel.DebugCase], bool]
) -> buggy_kernel.DebugCase:
    """Given a failing case, return a 1-MINIMAL failing case: fails(result) is True and
    fails(c) is False for every c in buggy_kernel.smaller_cases(result).

    Greedy is enough: keep moving to the first smaller case that still fails.
    """
    raise NotImplementedError(
        "shrink: keep moving to the first smaller case that still fails, until none does. "
        "buggy_kernel.smaller_cases lists the candidates; README section 5, 'Debugging a kernel'"
    )


def fixed_paged_attention_decode(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """buggy_kernel.paged_attention_decode with its two bugs fixed.

    Copy its body here. Then find each bug with case_fails + your shrink (see the README,
    "Debugging a kernel"), fix that line, and shrink again until no case fails.
    """
    raise NotImplementedError(
        "fixed_paged_attention_decode: copy buggy_kernel.paged_attention_decode here, find its two"
        " wrong lines with case_fails and your shrink (README section 5), and fix them"
    )
