"""Block pool: owns every physical KV block, the free queue and the prefix-cache map.

Stage 4. Mirrors vllm/v1/core/block_pool.py. A block is in exactly one of three states:
  owned  — ref_cnt > 0: one or more running requests use it (shared prefix blocks have ref_cnt > 1);
  cached — ref_cnt == 0 but it still has a hash: its KV is valid, it sits in the free queue and a
           later request with the same prefix can take it back (a prefix-cache hit);
  free   — ref_cnt == 0, no hash.
Allocation pops from the head of the free queue; if the popped block was cached, it is evicted
(its hash forgotten). Next: kv_cache_manager.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vllm_mini.core.kv_cache_utils import BlockHash, FreeKVCacheBlockQueue, KVCacheBlock

if TYPE_CHECKING:
    from vllm_mini.request import Request


class BlockPool:
    def __init__(self, num_gpu_blocks: int, enable_caching: bool) -> None:
        self.num_gpu_blocks = num_gpu_blocks
        self.enable_caching = enable_caching
        self.blocks = [KVCacheBlock(i) for i in range(num_gpu_blocks)]
        self.free_block_queue = FreeKVCacheBlockQueue(self.blocks)
        self.cached_block_hash_to_block: dict[BlockHash, KVCacheBlock] = {}

    def get_cached_block(self, block_hash: BlockHash) -> KVCacheBlock | None:
        return self.cached_block_hash_to_block.get(block_hash)

    def cache_full_blocks(
        self,
        request: Request,
        blocks: list[KVCacheBlock],
        num_cached_blocks: int,
        num_full_blocks: int,
        block_size: int,
    ) -> None:
        """Give blocks [num_cached_blocks, num_full_blocks) their hashes so others can reuse them."""
        for i in range(num_cached_blocks, num_full_blocks):
            block = blocks[i]
            if block.block_hash is not None:
                continue
            block_hash = request.block_hashes[i]
            block.block_hash = block_hash
            # If another block already holds this prefix, keep the first one as the cached copy.
            self.cached_block_hash_to_block.setdefault(block_hash, block)

    def uncache_blocks(self, blocks: list[KVCacheBlock]) -> None:
        """Make blocks unfindable by hash (their KV was never written); they stay allocated."""
        for block in blocks:
            self._maybe_evict_cached_block(block)

    def get_new_blocks(self, num_blocks: int) -> list[KVCacheBlock]:
        if num_blocks > self.get_num_free_blocks():
            raise ValueError(
                f"cannot allocate {num_blocks} blocks, {self.get_num_free_blocks()} free"
            )
        blocks = self.free_block_queue.popleft_n(num_blocks)
        for block in blocks:
            self._maybe_evict_cached_block(block)
            block.ref_cnt = 1
        return blocks

    def _maybe_evict_cached_block(self, block: KVCacheBlock) -> None:
        if block.block_hash is None:
            return
        if self.cached_block_hash_to_block.get(block.block_hash) is block:
            del self.cached_block_hash_to_block[block.block_hash]
        block.block_hash = None

    def touch(self, blocks: list[KVCacheBlock]) -> None:
        """A request starts using these (cached) blocks: pull free ones out of the queue."""
        for block in blocks:
            if block.ref_cnt == 0:
                self.free_block_queue.remove(block)
            block.ref_cnt += 1

    def free_blocks(self, ordered_blocks: list[KVCacheBlock]) -> None:
        """Drop one reference from each; blocks reaching 0 join the queue's tail in this order.

        Callers pass a sequence's blocks tail-first, so its last blocks (least likely to be shared)
        are evicted before its first ones.
        """
        for block in ordered_blocks:
            block.ref_cnt -= 1
            if block.ref_cnt < 0:
                raise RuntimeError(f"{block} freed more times than allocated")
            if block.ref_cnt == 0:
                if not self.enable_caching:
                    block.block_hash = None
                self.free_block_queue.append(block)

    def get_num_free_blocks(self) -> int:
        return self.free_block_queue.num_free_blocks

    def get_usage(self) -> float:
        return 1.0 - self.get_num_free_blocks() / self.num_gpu_blocks

    def reset_prefix_cache(self) -> bool:
        """Forget every cached prefix; only allowed when no request holds a block."""
        if self.get_num_free_blocks() != self.num_gpu_blocks:
            return False
        self.cached_block_hash_to_block.clear()
        for block in self.blocks:
            block.block_hash = None
        return True
