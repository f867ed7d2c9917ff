"""Lesson 04 exercises: the free-block queue, slot mapping, and a paged-attention reference.

Fill in the bodies, then run:  LESSON_IMPL=exercises .venv/bin/pytest lessons/04_paged_kv_cache
The tests compare your code with the engine's FreeKVCacheBlockQueue, its model runner's
compute_slot_mapping, and the naive attention reference.
"""

from __future__ import annotations

import torch


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
        raise NotImplementedError

    def append(self, block: Node) -> None:
        """Put a freed block at the tail (it will be evicted last: LRU order)."""
        raise NotImplementedError

    def remove(self, block: Node) -> None:
        """Take a block out of the middle (a prefix-cache hit on a cached free block)."""
        raise NotImplementedError

    def popleft(self) -> Node:
        """Take the block at the head (the least recently freed); ValueError if empty."""
        raise NotImplementedError

    def ids(self) -> list[int]:
        """Block ids from head to tail."""
        raise NotImplementedError


def slot_mapping(block_ids: list[int], start: int, end: int, block_size: int) -> list[int]:
    """The KV-cache slot of every position in [start, end) of a sequence with this block table."""
    raise NotImplementedError


def paged_attention_one_seq(
    query, key_cache, value_cache, block_ids, seq_len, scale
) -> torch.Tensor:
    """Causal attention for one sequence's last q_len queries, reading K/V through block_ids.

    query [q_len, H, D]; key_cache/value_cache [num_blocks, block_size, H_kv, D]; GQA allowed.
    """
    raise NotImplementedError
