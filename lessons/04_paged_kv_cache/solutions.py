"""Reference solutions for lesson 04 (the tests run these unless LESSON_IMPL=exercises)."""

from __future__ import annotations

import torch


class Node:
    """A block in the free list: only the id and the two links matter here."""

    def __init__(self, block_id: int) -> None:
        self.block_id = block_id
        self.prev: Node | None = None
        self.next: Node | None = None


class FreeBlockQueue:
    """Doubly linked list with O(1) popleft, append and remove (vLLM's FreeKVCacheBlockQueue)."""

    def __init__(self, blocks: list[Node]) -> None:
        self.head, self.tail = Node(-1), Node(-1)  # sentinels: no special cases at the ends
        self.head.next, self.tail.prev = self.tail, self.head
        self.num_free_blocks = 0
        for b in blocks:
            self.append(b)

    def append(self, block: Node) -> None:
        last = self.tail.prev
        last.next, block.prev = block, last
        block.next, self.tail.prev = self.tail, block
        self.num_free_blocks += 1

    def remove(self, block: Node) -> None:
        block.prev.next, block.next.prev = block.next, block.prev
        block.prev = block.next = None
        self.num_free_blocks -= 1

    def popleft(self) -> Node:
        block = self.head.next
        if block is self.tail:
            raise ValueError("no free blocks")
        self.remove(block)
        return block

    def ids(self) -> list[int]:
        out, b = [], self.head.next
        while b is not self.tail:
            out.append(b.block_id)
            b = b.next
        return out


def slot_mapping(block_ids: list[int], start: int, end: int, block_size: int) -> list[int]:
    """Slot of each position in [start, end): block_ids[pos // block_size] * block_size + offset."""
    return [block_ids[p // block_size] * block_size + p % block_size for p in range(start, end)]


def paged_attention_one_seq(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_ids: list[int],
    seq_len: int,
    scale: float,
) -> torch.Tensor:
    """Attention for ONE sequence's last q_len queries, reading K/V through its block table.

    query [q_len, H, D]; caches [num_blocks, block_size, H_kv, D]. Returns [q_len, H, D].
    """
    block_size = key_cache.shape[1]
    slots = slot_mapping(block_ids, 0, seq_len, block_size)
    k = key_cache.flatten(0, 1)[slots].float()  # [seq_len, H_kv, D]
    v = value_cache.flatten(0, 1)[slots].float()
    group = query.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    q_len = query.shape[0]
    scores = torch.einsum("qhd,khd->hqk", query.float(), k) * scale
    q_pos = torch.arange(seq_len - q_len, seq_len).unsqueeze(1)
    scores = scores.masked_fill(torch.arange(seq_len).unsqueeze(0) > q_pos, float("-inf"))
    return torch.einsum("hqk,khd->qhd", scores.softmax(-1), v).to(query.dtype)
