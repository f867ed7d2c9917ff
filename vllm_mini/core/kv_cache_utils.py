"""KV cache building blocks: the block, its hash, the free-block queue, cache sizing.

Stage 4. Mirrors vllm/v1/core/kv_cache_utils.py. PagedAttention (Kwon et al., SOSP '23, section
4.1) stores each sequence's keys and values in fixed-size blocks, like an OS pages memory: a
sequence's blocks need not be contiguous, so memory is allocated on demand and nearly nothing is
wasted. Next: block_pool.py.

Prefix caching (section 4.4 and vLLM's automatic prefix caching) names each FULL block by a hash of
its tokens chained with its parent block's hash, so the hash identifies the whole prefix up to and
including that block; two requests with the same prefix produce the same hashes.
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from vllm_mini.request import Request

BlockHash = bytes  # sha256 digest: collisions are negligible, unlike Python's hash()


def hash_block_tokens(
    parent_block_hash: BlockHash | None,
    curr_block_token_ids: Sequence[int],
    extra_keys: tuple | None = None,
) -> BlockHash:
    """Hash of (parent hash, this block's tokens, extra keys such as the LoRA id)."""
    payload = pickle.dumps((parent_block_hash, tuple(curr_block_token_ids), extra_keys))
    return hashlib.sha256(payload).digest()


def get_request_block_hasher(block_size: int) -> Callable[[Request], list[BlockHash]]:
    """Return a function computing the hashes of a request's newly FULL blocks.

    Extra keys make otherwise equal tokens distinct: a LoRA adapter changes every layer's KV, so its
    id is part of the key, and so are the content hashes of the images a block holds (stage 10).
    """

    def hasher(request: Request) -> list[BlockHash]:
        start = len(request.block_hashes)
        num_full = request.num_tokens // block_size
        parent = request.block_hashes[-1] if request.block_hashes else None
        new_hashes = []
        tokens = request.all_token_ids
        for i in range(start, num_full):
            keys = generate_block_hash_extra_keys(request, i * block_size, (i + 1) * block_size)
            parent = hash_block_tokens(parent, tokens[i * block_size : (i + 1) * block_size], keys)
            new_hashes.append(parent)
        return new_hashes

    return hasher


def generate_block_hash_extra_keys(request: Request, start: int, end: int) -> tuple | None:
    """What besides its tokens decides the KV of positions [start, end): the LoRA id, the
    identifiers of the images whose placeholder spans overlap the block, and (first block only)
    the cache salt. An image's placeholder tokens are all the same id, so without its hash two
    different pictures would produce equal block hashes and share KV (vLLM: same function)."""
    keys: list = [request.lora_int_id] if request.lora_int_id else []
    for feature in request.mm_features:
        if feature.mm_position.overlap(start, end) is not None:
            keys.append(feature.identifier)
    if start == 0 and request.cache_salt is not None:
        # Salting the first block is enough: every later hash chains from it.
        keys.append(request.cache_salt)
    return tuple(keys) or None


@dataclass(eq=False)
class KVCacheBlock:
    """Metadata of one physical block (the KV data lives in the per-layer cache tensors)."""

    block_id: int
    ref_cnt: int = 0
    block_hash: BlockHash | None = None  # set once the block is full and cached
    prev_free_block: KVCacheBlock | None = None
    next_free_block: KVCacheBlock | None = None

    def __repr__(self) -> str:
        return f"KVCacheBlock(id={self.block_id}, ref={self.ref_cnt}, cached={self.block_hash is not None})"


class FreeKVCacheBlockQueue:
    """Doubly linked list of free blocks with O(1) popleft, append and remove-from-middle.

    Order is eviction order (LRU): new free blocks go to the tail; allocation pops the head. A free
    block that still has a hash is a *cached* block; if a later request hits it, `remove` takes it
    out of the middle of the queue in O(1) — that is why this is not a deque.
    """

    def __init__(self, blocks: list[KVCacheBlock]) -> None:
        self.num_free_blocks = len(blocks)
        # Sentinels: the list is never empty, so no special cases at the ends.
        self.head = KVCacheBlock(-1)
        self.tail = KVCacheBlock(-1)
        prev = self.head
        for block in blocks:
            prev.next_free_block, block.prev_free_block = block, prev
            prev = block
        prev.next_free_block, self.tail.prev_free_block = self.tail, prev

    def popleft(self) -> KVCacheBlock:
        block = self.head.next_free_block
        if block is self.tail:
            raise ValueError("no free blocks left")
        self.remove(block)
        return block

    def popleft_n(self, n: int) -> list[KVCacheBlock]:
        if n > self.num_free_blocks:
            raise ValueError(f"asked for {n} free blocks, only {self.num_free_blocks} left")
        return [self.popleft() for _ in range(n)]

    def remove(self, block: KVCacheBlock) -> None:
        if block.prev_free_block is None or block.next_free_block is None:
            raise RuntimeError(f"{block} is not in the free queue")
        block.prev_free_block.next_free_block = block.next_free_block
        block.next_free_block.prev_free_block = block.prev_free_block
        block.prev_free_block = block.next_free_block = None
        self.num_free_blocks -= 1

    def append(self, block: KVCacheBlock) -> None:
        last = self.tail.prev_free_block
        last.next_free_block, block.prev_free_block = block, last
        block.next_free_block, self.tail.prev_free_block = self.tail, block
        self.num_free_blocks += 1

    def get_all_free_blocks(self) -> list[KVCacheBlock]:
        out, block = [], self.head.next_free_block
        while block is not self.tail:
            out.append(block)
            block = block.next_free_block
        return out


def get_kv_cache_shape(
    num_blocks: int, block_size: int, num_kv_heads: int, head_size: int
) -> tuple[int, ...]:
    """Layout shared by every backend: [K or V, block, slot in block, kv head, head dim]."""
    return (2, num_blocks, block_size, num_kv_heads, head_size)


def kv_bytes_per_block(
    num_layers: int, block_size: int, num_kv_heads: int, head_size: int, dtype: torch.dtype
) -> int:
    """One block stores, for every layer, K and V for block_size tokens:
    bytes = 2 * num_layers * block_size * num_kv_heads * head_size * element_size."""
    elem = torch.tensor([], dtype=dtype).element_size()
    return 2 * num_layers * block_size * num_kv_heads * head_size * elem


def get_num_blocks(
    kv_cache_memory_bytes: int,
    num_layers: int,
    block_size: int,
    num_kv_heads: int,
    head_size: int,
    dtype: torch.dtype,
    extra_bytes_per_block: int = 0,
) -> int:
    """How many blocks fit in the budget (kv_bytes_per_block each, plus `extra_bytes_per_block`:
    a draft model's own K/V in the same blocks, stage 11)."""
    per_block = kv_bytes_per_block(num_layers, block_size, num_kv_heads, head_size, dtype)
    per_block += extra_bytes_per_block
    num_blocks = kv_cache_memory_bytes // per_block
    if num_blocks < 1:
        raise ValueError(
            f"kv_cache_memory_bytes={kv_cache_memory_bytes} is smaller than one KV block "
            f"({per_block} bytes); raise it"
        )
    return int(num_blocks)
