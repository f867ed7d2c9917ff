"""Lesson 04b exercises: chained block hashes, the longest cached prefix, and a prefix-caching
block allocator with LRU eviction.

Fill in the bodies, then run:  LESSON_IMPL=exercises .venv/bin/pytest lessons/04b_prefix_caching
One exercise at a time:        ... -k hash | longest | allocator
The tests compare your code with vllm_mini.core.kv_cache_utils (hash_block_tokens,
get_request_block_hasher) and with KVCacheManager + BlockPool on random workloads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

BlockHash = bytes


def hash_block_tokens(
    parent_block_hash: BlockHash | None,
    curr_block_token_ids: Sequence[int],
    extra_keys: tuple | None = None,
) -> BlockHash:
    """The engine's recipe, exactly: the sha256 digest (hashlib) of
    pickle.dumps((parent_block_hash, tuple(curr_block_token_ids), extra_keys))."""
    raise NotImplementedError(
        "hash_block_tokens: sha256 of the pickled (parent hash, token tuple, extra keys). The "
        "engine's is hash_block_tokens (vllm_mini/core/kv_cache_utils.py; vLLM: "
        "vllm/v1/core/kv_cache_utils.py)"
    )


def hash_request_blocks(
    token_ids: Sequence[int], block_size: int, extra_keys: tuple | None = None
) -> list[BlockHash]:
    """Hashes of every FULL block of this token sequence, each chained with its parent's hash
    (the first block's parent is None). A trailing partial block gets no hash."""
    raise NotImplementedError(
        "hash_request_blocks: hash every full block, each chained to the one before. "
        "get_request_block_hasher does it (vllm_mini/core/kv_cache_utils.py; vLLM: "
        "vllm/v1/core/kv_cache_utils.py)"
    )


def longest_cache_hit(
    block_hashes: Sequence[BlockHash],
    cached: Mapping[BlockHash, int],
    num_tokens: int,
    block_size: int,
) -> list[int]:
    """Block ids of the longest prefix of block_hashes found in `cached` (hash -> block id).

    The request has num_tokens tokens and at least its last one must still run through the
    model, so never return more than (num_tokens - 1) // block_size blocks.
    """
    raise NotImplementedError(
        "longest_cache_hit: walk the hashes until the first one missing from the cache, reusing at"
        " most (num_tokens - 1) // block_size blocks. KVCacheManager.get_computed_blocks does it "
        "(vllm_mini/core/kv_cache_manager.py; vLLM: vllm/v1/core/single_type_kv_cache_manager.py, "
        "find_longest_cache_hit)"
    )


class PrefixCachingAllocator:
    """KVCacheManager + BlockPool in miniature, for requests that allocate a whole prompt at once.

    State: per block a ref count and maybe a hash; a free queue (LRU order: allocation takes the
    head, freed blocks join the tail); a map hash -> block id of cached blocks; the block table of
    every live request; and counters `queries` (prompt tokens looked up) and `hits` (of those,
    tokens found in the cache). Initially every block is free, in id order.
    """

    def __init__(self, num_blocks: int, block_size: int) -> None:
        raise NotImplementedError(
            "PrefixCachingAllocator.__init__: ref counts, hashes, the free queue in id order, the "
            "hash map, the block tables and the two counters. KVCacheManager and BlockPool do it "
            "(vllm_mini/core/kv_cache_manager.py, block_pool.py; vLLM: "
            "vllm/v1/core/kv_cache_manager.py, block_pool.py)"
        )

    def allocate(
        self, req_id: str, token_ids: Sequence[int], extra_keys: tuple | None = None
    ) -> tuple[list[int], int] | None:
        """Give a new request blocks for all its tokens; return (block table, cached tokens).

        1. Look up the longest cache hit; count queries += len(token_ids), hits += hit tokens
           (even if step 2 fails: the scheduler will ask again later).
        2. If the blocks still needed exceed the free blocks not counting the hit blocks that
           sit in the free queue, return None and change nothing else.
        3. Hit blocks: take them out of the free queue if they are there; ref count + 1.
        4. New blocks: pop from the queue's head. A popped block that is cached is evicted: drop
           its hash, and its map entry if the map points at this block. Ref count 1.
        5. Every FULL block of the table that has no hash yet gets its hash; the map keeps the
           first block registered for a hash (a duplicate keeps its hash but is not mapped).
        """
        raise NotImplementedError(
            "PrefixCachingAllocator.allocate: look up, check room, touch the hits, pop new blocks "
            "(evicting cached ones), hash the full blocks: steps 1-5 above. KVCacheManager and "
            "BlockPool do it (vllm_mini/core/kv_cache_manager.py, block_pool.py; vLLM: "
            "vllm/v1/core/kv_cache_manager.py, block_pool.py)"
        )

    def free(self, req_id: str) -> None:
        """Drop one reference from each of the request's blocks, LAST block first; blocks that
        reach 0 join the queue's tail and keep their hashes (cached-free)."""
        raise NotImplementedError(
            "PrefixCachingAllocator.free: drop a reference per block, last block first; blocks at "
            "0 join the tail still hashed. KVCacheManager.free and BlockPool.free_blocks do it "
            "(vllm_mini/core/; vLLM: vllm/v1/core/block_pool.py)"
        )

    def free_queue(self) -> list[int]:
        """Free block ids, head (evicted first) to tail."""
        raise NotImplementedError(
            "PrefixCachingAllocator.free_queue: the free block ids from head to tail. "
            "BlockPool.free_block_queue is the engine's (vllm_mini/core/block_pool.py; vLLM: "
            "vllm/v1/core/block_pool.py)"
        )

    def cached_blocks(self) -> dict[BlockHash, int]:
        """The map hash -> block id."""
        raise NotImplementedError(
            "PrefixCachingAllocator.cached_blocks: the hash -> block id map. "
            "BlockPool.cached_block_hash_to_block is the engine's (vllm_mini/core/block_pool.py; "
            "vLLM: vllm/v1/core/block_pool.py)"
        )
