"""Lesson 04b: your block hashes, cache lookup and prefix-caching allocator against the engine's
kv_cache_utils, KVCacheManager and BlockPool, on random workloads.

Runs `solutions.py` by default; `LESSON_IMPL=exercises` checks your `exercises.py`.
"""

from __future__ import annotations

import random

import pytest

from lessons._impl import load_impl
from vllm_mini.core.kv_cache_manager import KVCacheManager
from vllm_mini.core.kv_cache_utils import get_request_block_hasher, hash_block_tokens
from vllm_mini.request import Request
from vllm_mini.sampling_params import SamplingParams

impl = load_impl(__file__)


class EngineSide:
    """The engine's KVCacheManager driven the way the scheduler admits a whole prompt."""

    def __init__(self, num_blocks: int, block_size: int) -> None:
        self.kv = KVCacheManager(num_blocks, block_size, max_model_len=4096, enable_caching=True)
        self.hasher = get_request_block_hasher(block_size)
        self.requests: dict[str, Request] = {}

    def request(self, req_id: str, tokens: list[int], lora: int = 0) -> Request:
        params = SamplingParams(max_tokens=1)
        return Request(req_id, tokens, params, None, block_hasher=self.hasher, lora_int_id=lora)

    def allocate(self, req_id: str, tokens: list[int], lora: int) -> tuple[list[int], int] | None:
        req = self.request(req_id, tokens, lora)
        hits, num_hit = self.kv.get_computed_blocks(req)
        if self.kv.allocate_slots(req, len(tokens) - num_hit, num_hit, hits) is None:
            return None
        # The step runs: the prompt's KV is written, as the scheduler records after scheduling.
        # (A request freed before its forward pass would give its fresh hashes back.)
        req.num_computed_tokens = len(tokens)
        self.requests[req_id] = req
        return self.kv.get_block_ids(req_id), num_hit

    def free(self, req_id: str) -> None:
        self.kv.free(self.requests.pop(req_id))

    def free_queue(self) -> list[int]:
        return [b.block_id for b in self.kv.block_pool.free_block_queue.get_all_free_blocks()]

    def cached_blocks(self) -> dict[bytes, int]:
        return {h: b.block_id for h, b in self.kv.block_pool.cached_block_hash_to_block.items()}


def _random_prompts(rng: random.Random, n: int) -> list[list[int]]:
    """Prompts from a few 'system prompt' families, with exact repeats now and then."""
    families = [[rng.randint(3, 99) for _ in range(rng.randint(0, 40))] for _ in range(3)]
    prompts: list[list[int]] = []
    for _ in range(n):
        if prompts and rng.random() < 0.15:
            prompts.append(list(rng.choice(prompts)))
        else:
            tail = [rng.randint(3, 99) for _ in range(rng.randint(1, 30))]
            prompts.append(rng.choice(families) + tail)
    return prompts


def _pool_size(rng: random.Random, block_size: int) -> int:
    """Room for two to five average prompts: small enough to evict and refuse, big enough to share."""
    return rng.randint(2, 5) * -(-40 // block_size)


def test_hash_block_tokens_is_the_engines():
    rng = random.Random(0)
    parent = None
    for _ in range(100):
        tokens = [rng.randint(0, 50_000) for _ in range(rng.choice([1, 4, 16]))]
        extra = rng.choice([None, (rng.randint(1, 5),)])
        expected = hash_block_tokens(parent, tokens, extra)
        assert impl.hash_block_tokens(parent, tokens, extra) == expected
        parent = rng.choice([None, expected])


def test_request_hashes_match_the_engines_hasher():
    rng = random.Random(1)
    for _ in range(100):
        block_size = rng.choice([1, 2, 4, 16])
        tokens = [rng.randint(3, 999) for _ in range(rng.randint(1, 70))]
        lora = rng.choice([0, 0, 1, 7])
        req = Request("r", tokens, SamplingParams(), None, lora_int_id=lora)
        expected = get_request_block_hasher(block_size)(req)
        extra = (lora,) if lora else None
        assert impl.hash_request_blocks(tokens, block_size, extra) == expected


def test_changing_one_token_changes_that_block_and_every_later_hash():
    rng = random.Random(2)
    for _ in range(50):
        block_size = rng.choice([2, 4, 8])
        tokens = [rng.randint(3, 999) for _ in range(rng.randint(block_size, 60))]
        p = rng.randrange(len(tokens))
        changed = tokens[:p] + [tokens[p] + 1] + tokens[p + 1 :]
        a = impl.hash_request_blocks(tokens, block_size)
        b = impl.hash_request_blocks(changed, block_size)
        assert len(a) == len(b) == len(tokens) // block_size
        first = p // block_size
        assert a[:first] == b[:first]
        assert all(x != y for x, y in zip(a[first:], b[first:]))  # chained: all later differ


def test_a_lora_adapter_gets_its_own_hashes():
    tokens = list(range(3, 35))
    base = impl.hash_request_blocks(tokens, 8)
    assert impl.hash_request_blocks(tokens, 8, (1,)) != base
    assert impl.hash_request_blocks(tokens, 8, (1,)) == impl.hash_request_blocks(tokens, 8, (1,))


@pytest.mark.parametrize("seed", range(4))
def test_longest_cache_hit_matches_get_computed_blocks(seed):
    rng = random.Random(seed)
    block_size = rng.choice([1, 2, 4, 8])
    engine = EngineSide(_pool_size(rng, block_size), block_size)
    prompts = _random_prompts(rng, 60)
    for i, tokens in enumerate(prompts):
        if engine.requests and rng.random() < 0.4:
            engine.free(rng.choice(sorted(engine.requests)))
        probe = engine.request(f"probe{i}", tokens)
        hits, num_hit = engine.kv.get_computed_blocks(probe)
        got = impl.longest_cache_hit(
            probe.block_hashes, engine.cached_blocks(), len(tokens), block_size
        )
        assert got == hits.get_block_ids() and num_hit == len(got) * block_size
        engine.allocate(f"r{i}", tokens, 0)


@pytest.mark.parametrize("seed", range(6))
def test_allocator_matches_kv_cache_manager_on_random_workloads(seed):
    rng = random.Random(100 + seed)
    block_size = rng.choice([1, 2, 4, 8])
    num_blocks = _pool_size(rng, block_size)
    engine, mine = (
        EngineSide(num_blocks, block_size),
        impl.PrefixCachingAllocator(num_blocks, block_size),
    )
    seen = {"none": 0, "hit": 0, "shared": 0, "evicted": 0}
    for i, tokens in enumerate(_random_prompts(rng, 150)):
        if engine.requests and rng.random() < 0.35:
            req_id = rng.choice(sorted(engine.requests))
            engine.free(req_id)
            mine.free(req_id)
        else:
            lora = rng.choice([0, 0, 0, 3])
            before = engine.cached_blocks()
            expected = engine.allocate(f"r{i}", tokens, lora)
            got = mine.allocate(f"r{i}", tokens, (lora,) if lora else None)
            assert got == expected, (i, tokens)
            seen["none"] += expected is None
            seen["hit"] += bool(expected and expected[1])
            seen["evicted"] += any(h not in engine.cached_blocks() for h in before)
        assert mine.free_queue() == engine.free_queue()
        assert mine.cached_blocks() == engine.cached_blocks()
        assert (mine.queries, mine.hits) == (
            engine.kv.prefix_cache_stats.queries,
            engine.kv.prefix_cache_stats.hits,
        )
        seen["shared"] += any(b.ref_cnt > 1 for b in engine.kv.block_pool.blocks)
    assert all(seen.values()), seen  # the workload reached every case it is meant to test


# ----------------------------------------------------------------------------- the demo

demo = load_impl(__file__, "demo")


@pytest.mark.demo
def test_demo_shares_hits_and_keeps_the_output(tiny_llama_dir, capsys):
    """The demo on the tiny model (stand-in token ids for its words), two timed questions."""
    found = demo.main(num_timed=2, model=str(tiny_llama_dir))
    bs = demo.BLOCK_SIZE
    prompts = [demo.stand_in_prompt(q)["prompt_token_ids"] for q in demo.QUESTIONS[:4]]
    shared = next(i for i, column in enumerate(zip(*prompts)) if len(set(column)) > 1)
    sharing = found["sharing"]
    # The shared prefix's full blocks are computed once (by r0) and shared by all four.
    assert sharing["cached_tokens"] == [0] + [shared // bs * bs] * 3
    assert sharing["shared_blocks"] == shared // bs > 10 and sharing["hits"] == 3 * (
        shared // bs * bs
    )
    assert sharing["cached_free"] >= shared // bs  # still cached after everyone finished
    # Seen in full: at most (n - 1) // block_size blocks are reused; the last token always runs.
    for n, cached in found["repeat"]:
        assert cached == (n - 1) // bs * bs
    assert found["repeat"][1][0] % bs == 0  # the second prompt is whole blocks only
    run_cold, run_warm = found["timed"]["run"]
    assert run_warm < run_cold / 5 and found["timed"]["same_first_tokens"]
    assert "same first tokens: True" in capsys.readouterr().out
