"""Reference solutions for lesson 04 (the tests run these unless LESSON_IMPL=exercises)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from lessons._impl import load_impl

buggy_kernel = load_impl(__file__, "buggy_kernel")


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


def num_kv_blocks(
    kv_cache_memory_bytes: int,
    num_layers: int,
    block_size: int,
    num_kv_heads: int,
    head_size: int,
    dtype: torch.dtype,
) -> int:
    """Budget // bytes per block, where a block is K and V, for every layer, of block_size tokens."""
    elem = torch.empty((), dtype=dtype).element_size()
    per_block = 2 * num_layers * block_size * num_kv_heads * head_size * elem
    if kv_cache_memory_bytes < per_block:
        raise ValueError(f"{kv_cache_memory_bytes} bytes hold no {per_block}-byte block")
    return kv_cache_memory_bytes // per_block


def slot_mapping(block_ids: list[int], start: int, end: int, block_size: int) -> list[int]:
    """Slot of each position in [start, end): block_ids[pos // block_size] * block_size + offset."""
    return [block_ids[p // block_size] * block_size + p % block_size for p in range(start, end)]


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
    """Sequence i runs positions [computed, computed + scheduled): its rows in the flat batch are
    query_start_loc[i]:query_start_loc[i+1] and its context after this step is seq_lens[i]."""
    starts, lens, slots = [0], [], []
    for computed, scheduled, ids in zip(num_computed_tokens, num_scheduled_tokens, block_ids):
        starts.append(starts[-1] + scheduled)
        lens.append(computed + scheduled)
        slots += slot_mapping(ids, computed, computed + scheduled, block_size)
    table = torch.zeros(len(block_ids), max(map(len, block_ids)), dtype=torch.int32)
    for i, ids in enumerate(block_ids):
        table[i, : len(ids)] = torch.tensor(ids, dtype=torch.int32)
    return StepMetadata(
        torch.tensor(starts, dtype=torch.int32),
        torch.tensor(lens, dtype=torch.int32),
        table,
        torch.tensor(slots, dtype=torch.int64),
    )


def paged_attention_one_seq(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_ids: list[int],
    seq_len: int,
    scale: float,
) -> torch.Tensor:
    """Gather the sequence's K/V slot by slot through its block table, then causal attention."""
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


def partial_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Softmax over one partition, keeping the max and the sum so partitions can be merged."""
    group = q.shape[0] // k.shape[1]
    k = k.float().repeat_interleave(group, 1)  # [n, H, D]
    v = v.float().repeat_interleave(group, 1)
    logits = torch.einsum("hd,nhd->hn", q.float(), k) * scale  # [H, n]
    max_logit = logits.max(dim=1).values  # [H]
    p = torch.exp(logits - max_logit[:, None])
    exp_sum = p.sum(dim=1)
    out = torch.einsum("hn,nhd->hd", p, v) / exp_sum[:, None]
    return out, max_logit, exp_sum


def merge_partitions(
    outs: torch.Tensor, max_logits: torch.Tensor, exp_sums: torch.Tensor
) -> torch.Tensor:
    """Rescale every partition to the global max: w_p = l_p * exp(m_p - M); out = sum w_p o_p / sum w_p.

    o_p is normalised by l_p, so w_p * o_p = exp(m_p - M) * sum_p exp(logit - m_p) v: partition
    p's unnormalised sum expressed under the common max M.
    """
    global_max = max_logits.max(dim=0).values  # [H]
    weights = exp_sums * torch.exp(max_logits - global_max)  # [P, H]
    return (weights[:, :, None] * outs).sum(0) / weights.sum(0)[:, None]


def shrink(
    case: buggy_kernel.DebugCase, fails: Callable[[buggy_kernel.DebugCase], bool]
) -> buggy_kernel.DebugCase:
    """Greedy delta debugging: step to a smaller failing case until none of them fails."""
    while True:
        smaller = next((c for c in buggy_kernel.smaller_cases(case) if fails(c)), None)
        if smaller is None:
            return case
        case = smaller


def fixed_paged_attention_decode(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """buggy_kernel.paged_attention_decode, fixed.

    Bug 1, minimal case group=2, num_kv_heads=2: query head h reads KV head h // group (heads
    0..group-1 share KV head 0), not h % num_kv_heads. With one KV head, or no GQA, both agree.
    Bug 2, minimal case seq_lens=(3,), block_size=2: only the LAST block is partly filled;
    `seq_len % block_size` was applied to every block, dropping tokens of the full ones.
    """
    num_seqs, num_heads, head_size = query.shape
    block_size, num_kv_heads = key_cache.shape[1], key_cache.shape[2]
    group = num_heads // num_kv_heads
    out = torch.empty_like(query)
    for s in range(num_seqs):
        seq_len = int(seq_lens[s])
        num_blocks = (seq_len + block_size - 1) // block_size
        for h in range(num_heads):
            kv_head = h // group
            q = query[s, h].float() * scale
            m = torch.tensor(float("-inf"))
            total = torch.tensor(0.0)
            acc = torch.zeros(head_size)
            for b in range(num_blocks):
                block = int(block_table[s, b])
                n = min(block_size, seq_len - b * block_size)
                k = key_cache[block, :n, kv_head].float()
                v = value_cache[block, :n, kv_head].float()
                logits = k @ q
                m_new = torch.maximum(m, logits.max())
                p = torch.exp(logits - m_new)
                correction = torch.exp(m - m_new)
                total = total * correction + p.sum()
                acc = acc * correction + p @ v
                m = m_new
            out[s, h] = (acc / total).to(query.dtype)
    return out
