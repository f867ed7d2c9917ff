"""Reference solutions for lesson 04b (the tests run these unless LESSON_IMPL=exercises)."""

from __future__ import annotations

import hashlib
import pickle
from collections import OrderedDict
from collections.abc import Mapping, Sequence

BlockHash = bytes


def hash_block_tokens(
    parent_block_hash: BlockHash | None,
    curr_block_token_ids: Sequence[int],
    extra_keys: tuple | None = None,
) -> BlockHash:
    """sha256 over (parent, tokens, extra keys): the parent makes the hash name the whole prefix."""
    payload = pickle.dumps((parent_block_hash, tuple(curr_block_token_ids), extra_keys))
    return hashlib.sha256(payload).digest()


def hash_request_blocks(
    token_ids: Sequence[int], block_size: int, extra_keys: tuple | None = None
) -> list[BlockHash]:
    """One hash per full block, each fed the previous one."""
    hashes: list[BlockHash] = []
    parent = None
    for start in range(0, len(token_ids) - block_size + 1, block_size):
        parent = hash_block_tokens(parent, token_ids[start : start + block_size], extra_keys)
        hashes.append(parent)
    return hashes


def longest_cache_hit(
    block_hashes: Sequence[BlockHash],
    cached: Mapping[BlockHash, int],
    num_tokens: int,
    block_size: int,
) -> list[int]:
    """Walk the chain until the first miss: a later block cannot hit if an earlier one missed,
    because its hash includes the missing block's hash."""
    hits = []
    for block_hash in block_hashes[: (num_tokens - 1) // block_size]:
        if block_hash not in cached:
            break
        hits.append(cached[block_hash])
    return hits


class PrefixCachingAllocator:
    """Blocks are ids; an OrderedDict is the free queue (O(1) pop head, append, remove)."""

    def __init__(self, num_blocks: int, block_size: int) -> None:
        self.block_size = block_size
        self.ref_cnt = [0] * num_blocks
        self.block_hash: list[BlockHash | None] = [None] * num_blocks
        self.queue: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self.cached: dict[BlockHash, int] = {}
        self.tables: dict[str, list[int]] = {}
        self.queries = 0
        self.hits = 0

    def allocate(
        self, req_id: str, token_ids: Sequence[int], extra_keys: tuple | None = None
    ) -> tuple[list[int], int] | None:
        hashes = hash_request_blocks(token_ids, self.block_size, extra_keys)
        hit = longest_cache_hit(hashes, self.cached, len(token_ids), self.block_size)
        num_hit_tokens = len(hit) * self.block_size
        self.queries += len(token_ids)
        self.hits += num_hit_tokens

        num_new = -(-len(token_ids) // self.block_size) - len(hit)
        hit_in_queue = sum(1 for b in hit if self.ref_cnt[b] == 0)
        if num_new > len(self.queue) - hit_in_queue:
            return None
        for b in hit:
            if self.ref_cnt[b] == 0:
                del self.queue[b]  # a cached-free block comes back to life
            self.ref_cnt[b] += 1
        new = [self.queue.popitem(last=False)[0] for _ in range(num_new)]
        for b in new:
            old = self.block_hash[b]
            if old is not None:  # evict: this block's old contents are about to be overwritten
                if self.cached.get(old) == b:
                    del self.cached[old]
                self.block_hash[b] = None
            self.ref_cnt[b] = 1
        table = hit + new
        for i, block_hash in enumerate(hashes):  # hashes exist for full blocks only
            b = table[i]
            if self.block_hash[b] is None:
                self.block_hash[b] = block_hash
                self.cached.setdefault(block_hash, b)
        self.tables[req_id] = table
        return list(table), num_hit_tokens

    def free(self, req_id: str) -> None:
        for b in reversed(self.tables.pop(req_id)):
            self.ref_cnt[b] -= 1
            if self.ref_cnt[b] == 0:
                self.queue[b] = None  # tail: the most recently used is evicted last

    def free_queue(self) -> list[int]:
        return list(self.queue)

    def cached_blocks(self) -> dict[BlockHash, int]:
        return dict(self.cached)
