"""KV cache manager: per-request block tables on top of the block pool, plus prefix caching.

Stage 4. Mirrors vllm/v1/core/kv_cache_manager.py (and single_type_kv_cache_manager.py). The
scheduler asks two questions: "how much of this prompt is already cached?" (get_computed_blocks)
and "can this request grow by N tokens?" (allocate_slots, None = no). The answer to the second is
all or nothing: a failed allocation changes no state, so the scheduler can preempt and retry.
Next: sched/scheduler.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vllm_mini.core.block_pool import BlockPool
from vllm_mini.core.kv_cache_utils import KVCacheBlock
from vllm_mini.request import Request


@dataclass
class KVCacheBlocks:
    blocks: list[KVCacheBlock] = field(default_factory=list)

    def get_block_ids(self) -> list[int]:
        return [b.block_id for b in self.blocks]


@dataclass
class PrefixCacheStats:
    requests: int = 0
    queries: int = 0  # prompt tokens looked up
    hits: int = 0  # of those, tokens found in the cache

    @property
    def hit_rate(self) -> float:
        return self.hits / self.queries if self.queries else 0.0


class KVCacheManager:
    def __init__(
        self, num_blocks: int, block_size: int, max_model_len: int, enable_caching: bool = True
    ) -> None:
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.max_model_len = max_model_len
        self.enable_caching = enable_caching
        self.block_pool = BlockPool(num_blocks, enable_caching)
        # The block table of every request: logical block i -> req_to_blocks[req][i].
        self.req_to_blocks: dict[str, list[KVCacheBlock]] = {}
        # How many of a request's blocks already carry a hash.
        self.num_cached_block: dict[str, int] = {}
        self.prefix_cache_stats = PrefixCacheStats()

    @property
    def usage(self) -> float:
        return self.block_pool.get_usage()

    @property
    def num_free_blocks(self) -> int:
        return self.block_pool.get_num_free_blocks()

    def get_computed_blocks(self, request: Request) -> tuple[KVCacheBlocks, int]:
        if not self.enable_caching:
            return KVCacheBlocks(), 0
        # At least one token must run through the model to produce logits, so never report the
        # whole prompt as computed: look up at most num_tokens - 1 tokens' worth of full blocks.
        max_blocks = (request.num_tokens - 1) // self.block_size
        hits: list[KVCacheBlock] = []
        for block_hash in request.block_hashes[:max_blocks]:
            block = self.block_pool.get_cached_block(block_hash)
            if block is None:
                break  # hashes are chained: after the first miss nothing later can match
            hits.append(block)
        num_computed = len(hits) * self.block_size
        stats = self.prefix_cache_stats
        stats.requests += 1
        stats.queries += request.num_tokens
        stats.hits += num_computed
        return KVCacheBlocks(hits), num_computed

    def allocate_slots(
        self,
        request: Request,
        num_new_tokens: int,
        num_new_computed_tokens: int = 0,
        new_computed_blocks: KVCacheBlocks | None = None,
        num_lookahead_tokens: int = 0,
    ) -> KVCacheBlocks | None:
        if num_new_tokens <= 0:
            raise ValueError(f"num_new_tokens must be > 0, got {num_new_tokens}")
        computed = new_computed_blocks.blocks if new_computed_blocks else []
        req_blocks = self.req_to_blocks.setdefault(request.request_id, [])
        num_tokens = (
            request.num_computed_tokens
            + num_new_computed_tokens
            + num_new_tokens
            + num_lookahead_tokens
        )
        num_required = -(-num_tokens // self.block_size)
        num_new = num_required - len(req_blocks) - len(computed)
        # Cached blocks we are about to touch sit in the free queue; they are not available to
        # allocate, so count them out first.
        num_evictable_touched = sum(1 for b in computed if b.ref_cnt == 0)
        if num_new > self.block_pool.get_num_free_blocks() - num_evictable_touched:
            if not req_blocks:
                del self.req_to_blocks[request.request_id]
            return None
        if computed:
            self.block_pool.touch(computed)
            req_blocks.extend(computed)
        new_blocks = self.block_pool.get_new_blocks(num_new) if num_new > 0 else []
        req_blocks.extend(new_blocks)
        if self.enable_caching:
            # Blocks that will be full after this step get their hashes now: the forward pass
            # fills them before anyone else can read them (a request admitted later in the same
            # step reads them in the same forward pass, after every layer has written its K/V).
            # If the request is preempted before that pass, `free` takes the hashes back.
            num_full = min(
                (request.num_computed_tokens + num_new_computed_tokens + num_new_tokens)
                // self.block_size,
                len(request.block_hashes),
            )
            num_cached = self.num_cached_block.get(request.request_id, 0)
            if num_full > num_cached:
                self.block_pool.cache_full_blocks(
                    request, req_blocks, num_cached, num_full, self.block_size
                )
                self.num_cached_block[request.request_id] = num_full
        return KVCacheBlocks(new_blocks)

    def free(self, request: Request) -> None:
        """Give the request's blocks back; blocks whose KV was never written lose their hash.

        `request.num_computed_tokens` counts the tokens whose KV is in the cache (the scheduler
        advances it only after a step is scheduled in full). A request preempted in the same
        step that allocated its blocks leaves hashed blocks that no forward pass ever filled;
        were they kept findable, the next request with that prefix would read garbage KV.
        """
        blocks = self.req_to_blocks.pop(request.request_id, [])
        num_hashed = self.num_cached_block.pop(request.request_id, 0)
        num_written = request.num_computed_tokens // self.block_size
        self.block_pool.uncache_blocks(blocks[num_written:num_hashed])
        self.block_pool.free_blocks(list(reversed(blocks)))

    def get_block_ids(self, request_id: str) -> list[int]:
        return [b.block_id for b in self.req_to_blocks.get(request_id, [])]

    def reset_prefix_cache(self) -> bool:
        return self.block_pool.reset_prefix_cache()
