"""Property test: the block pool and KV cache manager under long random operation sequences.

Hypothesis drives several requests through random allocate / grow / free / prefix-hit / evict
operations on a small pool. After every operation: no block is both free and owned, every block's
ref count equals the number of block tables holding it, free + owned blocks == total, the prefix
cache map only points at blocks carrying that hash; after all requests end, every block is free.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from vllm_mini.core.kv_cache_manager import KVCacheManager
from vllm_mini.core.kv_cache_utils import get_request_block_hasher
from vllm_mini.request import Request
from vllm_mini.sampling_params import SamplingParams

BLOCK = 4
NUM_BLOCKS = 24


def check_invariants(kv: KVCacheManager) -> None:
    pool = kv.block_pool
    free_ids = {b.block_id for b in pool.free_block_queue.get_all_free_blocks()}
    assert len(free_ids) == pool.free_block_queue.num_free_blocks
    owners: dict[int, int] = {}
    for blocks in kv.req_to_blocks.values():
        for b in blocks:
            owners[b.block_id] = owners.get(b.block_id, 0) + 1
    for b in pool.blocks:
        assert b.ref_cnt == owners.get(b.block_id, 0), f"block {b.block_id}"
        assert (b.block_id in free_ids) == (b.ref_cnt == 0), f"block {b.block_id} free/owned"
    assert len(free_ids) + len(owners) == NUM_BLOCKS
    for h, b in pool.cached_block_hash_to_block.items():
        assert b.block_hash == h


# A shared "system prompt" makes prefix hits frequent.
PREFIX = list(range(100, 100 + 3 * BLOCK))

ops = st.lists(
    st.tuples(
        st.sampled_from(["new", "grow", "free"]),
        st.integers(0, 5),  # request slot
        st.integers(1, 12),  # tokens
        st.booleans(),  # share the prefix?
    ),
    min_size=5,
    max_size=60,
)


@settings(max_examples=120, deadline=None)
@given(ops)
def test_random_operations_keep_the_pool_consistent(operations):
    kv = KVCacheManager(NUM_BLOCKS, BLOCK, max_model_len=4096, enable_caching=True)
    hasher = get_request_block_hasher(BLOCK)
    live: dict[int, Request] = {}
    counter = 0
    for op, slot, n, shared in operations:
        if op == "new" and slot not in live:
            counter += 1
            prompt = (PREFIX if shared else []) + [1000 + counter * 50 + i for i in range(n)]
            req = Request(f"r{counter}", prompt, SamplingParams(), None, block_hasher=hasher)
            computed, num_computed = kv.get_computed_blocks(req)
            assert num_computed % BLOCK == 0 and num_computed < req.num_tokens
            new = kv.allocate_slots(req, req.num_tokens - num_computed, num_computed, computed)
            if new is not None:
                req.num_computed_tokens = req.num_tokens
                live[slot] = req
        elif op == "grow" and slot in live:
            req = live[slot]
            before = [b.block_id for b in kv.req_to_blocks[req.request_id]]
            req.append_output_token_ids([7] * n)
            new = kv.allocate_slots(req, req.num_tokens - req.num_computed_tokens)
            if new is None:  # out of blocks: nothing may have changed
                assert [b.block_id for b in kv.req_to_blocks[req.request_id]] == before
                kv.free(live.pop(slot))
            else:
                req.num_computed_tokens = req.num_tokens
        elif op == "free" and slot in live:
            kv.free(live.pop(slot))
        check_invariants(kv)
    for req in live.values():
        kv.free(req)
    check_invariants(kv)
    assert kv.num_free_blocks == NUM_BLOCKS and kv.usage == 0.0


def test_shared_prefix_reuses_blocks_and_eviction_is_lru():
    kv = KVCacheManager(8, BLOCK, max_model_len=4096)
    hasher = get_request_block_hasher(BLOCK)
    a = Request("a", PREFIX + [1, 2], SamplingParams(), None, block_hasher=hasher)
    kv.allocate_slots(a, a.num_tokens)
    a.num_computed_tokens = a.num_tokens
    b = Request("b", PREFIX + [3], SamplingParams(), None, block_hasher=hasher)
    computed, n = kv.get_computed_blocks(b)
    assert n == 12 and computed.get_block_ids() == kv.get_block_ids("a")[:3]
    kv.allocate_slots(b, b.num_tokens - n, n, computed)
    assert all(blk.ref_cnt == 2 for blk in computed.blocks)
    assert kv.prefix_cache_stats.hits == 12
    kv.free(b)
    kv.free(a)
    # LRU: a's tail block was freed first (tail-first), so it is evicted before its prefix.
    order = [blk.block_id for blk in kv.block_pool.free_block_queue.get_all_free_blocks()]
    a_blocks = [0, 1, 2, 3]
    assert order.index(a_blocks[3]) < order.index(a_blocks[0])


def test_lora_id_changes_block_hashes():
    hasher = get_request_block_hasher(BLOCK)
    plain = Request("p", PREFIX, SamplingParams(), None, block_hasher=hasher)
    lora = Request("l", PREFIX, SamplingParams(), None, block_hasher=hasher, lora_int_id=3)
    assert plain.block_hashes and not set(plain.block_hashes) & set(lora.block_hashes)


def test_whole_prompt_cached_still_computes_last_token():
    kv = KVCacheManager(8, BLOCK, max_model_len=4096)
    hasher = get_request_block_hasher(BLOCK)
    a = Request("a", PREFIX, SamplingParams(), None, block_hasher=hasher)
    kv.allocate_slots(a, a.num_tokens)
    b = Request("b", PREFIX, SamplingParams(), None, block_hasher=hasher)
    _, n = kv.get_computed_blocks(b)
    assert n == len(PREFIX) - BLOCK  # the last block is recomputed so logits exist
