"""Lesson 04: your free queue, slot mapping and paged attention against the engine's.

Runs `solutions.py` by default; `LESSON_IMPL=exercises` checks your `exercises.py`.
"""

from __future__ import annotations

import random

import torch

from lessons._impl import load_impl
from tests.kernels.test_paged_attention import _case
from vllm_mini.attention.backends.naive import naive_attention
from vllm_mini.core.kv_cache_utils import FreeKVCacheBlockQueue, KVCacheBlock
from vllm_mini.worker.model_runner import compute_slot_mapping

impl = load_impl(__file__)


def test_free_queue_behaves_like_the_engines():
    rng = random.Random(0)
    mine_nodes = [impl.Node(i) for i in range(10)]
    eng_blocks = [KVCacheBlock(i) for i in range(10)]
    mine, eng = impl.FreeBlockQueue(mine_nodes), FreeKVCacheBlockQueue(eng_blocks)
    out_mine, out_eng = [], []
    for _ in range(200):
        op = rng.choice(["pop", "append", "remove"])
        if op == "pop" and eng.num_free_blocks:
            out_mine.append(mine.popleft().block_id)
            out_eng.append(eng.popleft().block_id)
        elif op == "append" and out_eng:
            i = rng.randrange(len(out_eng))
            bid = out_eng.pop(i)
            out_mine.remove(bid)
            mine.append(mine_nodes[bid])
            eng.append(eng_blocks[bid])
        elif op == "remove" and eng.num_free_blocks:
            bid = rng.choice([b.block_id for b in eng.get_all_free_blocks()])
            mine.remove(mine_nodes[bid])
            eng.remove(eng_blocks[bid])
            out_mine.append(bid)
            out_eng.append(bid)
        assert mine.ids() == [b.block_id for b in eng.get_all_free_blocks()]


def test_slot_mapping_matches_the_model_runner():
    table = [7, 2, 9, 4]
    for bs in (1, 4, 16):
        for start, end in [(0, 1), (0, 4), (3, 4), (5, 13), (0, 4 * bs)]:
            if end <= len(table) * bs:
                assert impl.slot_mapping(table, start, end, bs) == compute_slot_mapping(
                    table, start, end, bs
                )


def test_paged_attention_matches_naive_reference():
    q_lens, ctx = [1, 6], [40, 10]
    query, kc, vc, bt, sl, qsl, k_all, v_all = _case(8, 64, 2, 3, torch.float32, q_lens, ctx)
    for i in range(2):
        lo, hi = int(qsl[i]), int(qsl[i + 1])
        got = impl.paged_attention_one_seq(query[lo:hi], kc, vc, bt[i].tolist(), int(sl[i]), 0.125)
        torch.testing.assert_close(got, naive_attention(query[lo:hi], k_all[i], v_all[i], 0.125))
