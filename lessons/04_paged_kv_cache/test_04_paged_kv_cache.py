"""Lesson 04: your queue, sizing, slots, metadata, paged attention, partition merge and kernel fix,
each against the engine's own code or the naive attention reference, on random data.

Runs `solutions.py` by default; `LESSON_IMPL=exercises` checks your `exercises.py`.
"""

from __future__ import annotations

import random

import pytest
import torch

from lessons._impl import load_impl
from tests.kernels.test_paged_attention import _case
from vllm_mini import LLM, SamplingParams
from vllm_mini.attention.backends.naive import naive_attention
from vllm_mini.attention.ops import is_paged_attention_available
from vllm_mini.core.kv_cache_utils import FreeKVCacheBlockQueue, KVCacheBlock, get_num_blocks
from vllm_mini.worker.model_runner import compute_slot_mapping

impl = load_impl(__file__)
bug = load_impl(__file__, "buggy_kernel")


def test_free_queue_behaves_like_the_engines():
    rng = random.Random(0)
    mine_nodes = [impl.Node(i) for i in range(10)]
    eng_blocks = [KVCacheBlock(i) for i in range(10)]
    mine, eng = impl.FreeBlockQueue(mine_nodes), FreeKVCacheBlockQueue(eng_blocks)
    out_mine, out_eng = [], []
    for _ in range(300):
        op = rng.choice(["pop", "append", "remove"])
        if op == "pop" and eng.num_free_blocks:
            out_mine.append(mine.popleft().block_id)
            out_eng.append(eng.popleft().block_id)
        elif op == "append" and out_eng:
            bid = out_eng.pop(rng.randrange(len(out_eng)))
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
    with pytest.raises(ValueError):
        impl.FreeBlockQueue([]).popleft()


def test_num_kv_blocks_matches_get_num_blocks():
    rng = random.Random(1)
    for _ in range(200):
        shape = dict(
            num_layers=rng.randint(1, 40),
            block_size=rng.choice([1, 4, 16, 32]),
            num_kv_heads=rng.randint(1, 8),
            head_size=rng.choice([32, 64, 128]),
            dtype=rng.choice([torch.float32, torch.bfloat16, torch.float16]),
        )
        budget = rng.randint(1, 1 << 31)
        try:
            expected = get_num_blocks(budget, **shape)
        except ValueError:
            with pytest.raises(ValueError):
                impl.num_kv_blocks(budget, **shape)
            continue
        assert impl.num_kv_blocks(budget, **shape) == expected


def test_slot_mapping_matches_the_model_runner():
    rng = random.Random(2)
    for _ in range(200):
        bs = rng.choice([1, 2, 4, 16])
        table = rng.sample(range(100), rng.randint(1, 6))
        end = rng.randint(1, len(table) * bs)
        start = rng.randint(0, end - 1)
        assert impl.slot_mapping(table, start, end, bs) == compute_slot_mapping(
            table, start, end, bs
        )


def test_metadata_matches_the_model_runner_on_a_live_run(tiny_llama_dir, monkeypatch):
    """Spy on the runner's _prepare_inputs during a real run with prefix hits, chunked prefills
    and decodes; rebuild every step's metadata from the same inputs with your function."""
    llm = LLM(
        str(tiny_llama_dir), block_size=4, max_num_batched_tokens=16, kv_cache_memory_bytes=1 << 22
    )
    runner = llm.llm_engine.engine_core.worker.model_runner
    original, captured = runner._prepare_inputs, []

    def spy(so, req_ids):
        states = [runner.requests[r] for r in req_ids]
        inputs = (
            [s.num_computed_tokens for s in states],
            [so.num_scheduled_tokens[r] for r in req_ids],
            [list(s.block_ids) for s in states],
        )
        result = original(so, req_ids)
        captured.append((inputs, result[2]))
        return result

    monkeypatch.setattr(runner, "_prepare_inputs", spy)
    shared = [11 + i for i in range(12)]
    prompts = [{"prompt_token_ids": shared + [50 + i] * (3 + 5 * i)} for i in range(4)]
    llm.generate(prompts, SamplingParams(max_tokens=5, ignore_eos=True), use_tqdm=False)

    saw_context = False  # a step running several new tokens on top of cached ones
    for (computed, scheduled, block_ids), meta in captured:
        got = impl.build_attention_metadata(computed, scheduled, block_ids, 4)
        torch.testing.assert_close(got.query_start_loc, meta.query_start_loc, rtol=0, atol=0)
        torch.testing.assert_close(got.seq_lens, meta.seq_lens, rtol=0, atol=0)
        torch.testing.assert_close(got.block_table, meta.block_table, rtol=0, atol=0)
        torch.testing.assert_close(got.slot_mapping, meta.slot_mapping, rtol=0, atol=0)
        saw_context |= any(c > 0 and n > 1 for c, n in zip(computed, scheduled))
    assert len(captured) > 5 and saw_context


@pytest.mark.parametrize(
    ("num_kv_heads", "group", "dtype"),
    [(2, 3, torch.float32), (1, 4, torch.bfloat16), (4, 1, torch.float32)],
)
def test_attention_through_shuffled_blocks_matches_naive(num_kv_heads, group, dtype):
    q_lens, ctx = [1, 6, 13], [40, 10, 0]
    query, kc, vc, bt, sl, qsl, k_all, v_all = _case(8, 64, num_kv_heads, group, dtype, q_lens, ctx)
    for i in range(len(q_lens)):
        lo, hi = int(qsl[i]), int(qsl[i + 1])
        got = impl.paged_attention_one_seq(query[lo:hi], kc, vc, bt[i].tolist(), int(sl[i]), 0.125)
        assert got.dtype == dtype
        ref = naive_attention(query[lo:hi], k_all[i], v_all[i], 0.125)
        tol = 1e-5 if dtype == torch.float32 else 2e-2
        torch.testing.assert_close(got.float(), ref.float(), atol=tol, rtol=tol)


def _random_split(n: int, rng: random.Random) -> list[int]:
    cuts = sorted(rng.sample(range(1, n), rng.randint(0, min(5, n - 1))))
    return [b - a for a, b in zip([0, *cuts], [*cuts, n])]


def test_merge_of_partitions_equals_attention_over_the_whole_context():
    rng, g = random.Random(3), torch.Generator().manual_seed(3)
    for _ in range(40):
        n, kv_heads, group = rng.randint(1, 120), rng.choice([1, 2]), rng.choice([1, 3])
        q = torch.randn(kv_heads * group, 16, generator=g)
        k, v = (torch.randn(n, kv_heads, 16, generator=g) * 3 for _ in range(2))
        parts, start = [], 0
        for size in _random_split(n, rng):
            parts.append(
                impl.partial_attention(q, k[start : start + size], v[start : start + size], 0.3)
            )
            start += size
        merged = impl.merge_partitions(*(torch.stack(t) for t in zip(*parts)))
        torch.testing.assert_close(
            merged, naive_attention(q[None], k, v, 0.3)[0], atol=1e-5, rtol=1e-5
        )


def test_merge_alone_on_partials_computed_by_torch():
    """Your merge against partials from torch's softmax, so it is checked independently."""
    g = torch.Generator().manual_seed(4)
    q, k, v = (
        torch.randn(2, 8, generator=g),
        torch.randn(50, 2, 8, generator=g),
        torch.randn(50, 2, 8, generator=g),
    )
    logits = torch.einsum("hd,nhd->hn", q, k) * 0.5
    outs, maxes, sums = [], [], []
    for lo, hi in [(0, 7), (7, 8), (8, 50)]:
        part = logits[:, lo:hi]
        outs.append(torch.einsum("hn,nhd->hd", part.softmax(-1), v[lo:hi]))
        maxes.append(part.max(-1).values)
        sums.append(torch.exp(part - maxes[-1][:, None]).sum(-1))
    merged = impl.merge_partitions(torch.stack(outs), torch.stack(maxes), torch.stack(sums))
    torch.testing.assert_close(merged, naive_attention(q[None], k, v, 0.5)[0], atol=1e-5, rtol=1e-5)


def _is_one_minimal(case, fails) -> bool:
    return fails(case) and not any(fails(c) for c in bug.smaller_cases(case))


@pytest.mark.parametrize(
    "fails",
    [
        lambda c: len(c.seq_lens) >= 2 and sum(c.seq_lens) > 9,
        lambda c: (
            c.group > 1 and c.head_size >= 8 and any(n % c.block_size == 5 for n in c.seq_lens)
        ),
        lambda c: c.num_kv_heads * c.block_size >= 12,
    ],
    ids=["two-seqs", "gqa-and-tail", "product"],
)
def test_shrink_returns_a_one_minimal_case(fails):
    start = bug.DebugCase((37, 5, 64, 20), block_size=16, num_kv_heads=3, group=3, head_size=32)
    assert fails(start)
    assert _is_one_minimal(impl.shrink(start, fails), fails)


def test_shrink_pins_down_a_planted_bug():
    start = bug.DebugCase((37, 5, 64, 20), block_size=16, num_kv_heads=3, group=3, head_size=32)

    def fails(c):
        return bug.case_fails(bug.paged_attention_decode, c)

    minimal = impl.shrink(start, fails)
    assert _is_one_minimal(minimal, fails)
    assert len(minimal.seq_lens) == 1 and minimal.head_size == 1  # the clue is in the rest


def test_fixed_kernel_matches_the_reference_where_the_buggy_one_fails():
    rng = random.Random(5)
    buggy_failed = 0
    for seed in range(12):
        case = bug.DebugCase(
            seq_lens=tuple(rng.randint(1, 70) for _ in range(rng.randint(1, 3))),
            block_size=rng.choice([2, 4, 8, 16]),
            num_kv_heads=rng.choice([1, 2, 3]),
            group=rng.choice([1, 2, 4]),
            head_size=rng.choice([8, 32]),
        )
        assert not bug.case_fails(impl.fixed_paged_attention_decode, case, seed), case
        buggy_failed += bug.case_fails(bug.paged_attention_decode, case, seed)
    for case in [
        bug.DebugCase((3,), block_size=2, num_kv_heads=1, group=1, head_size=4),
        bug.DebugCase((4,), block_size=2, num_kv_heads=2, group=2, head_size=4),
        bug.DebugCase((9, 16), block_size=8, num_kv_heads=2, group=2, head_size=16),
    ]:
        assert bug.case_fails(bug.paged_attention_decode, case)  # each planted bug shows here
        assert not bug.case_fails(impl.fixed_paged_attention_decode, case), case
    assert buggy_failed > 0


# ----------------------------------------------------------------------------- the demo

demo = load_impl(__file__, "demo")


@pytest.fixture(scope="module")
def demo_found():
    return demo.main()


@pytest.mark.demo
def test_demo_sizing_and_the_worked_step(demo_found):
    assert demo_found[1] == {16: 1456, 32: 728}  # the README's figures for SmolLM2 in 1 GiB
    step = demo_found[2]  # the README's worked example, to the last slot
    assert step["block_ids"] == {"A": [0, 1, 2], "B": [3, 4, 5, 6]}
    assert step["positions"] == [10, 6, 7, 8, 9, 10, 11, 12, 13]
    assert step["query_start_loc"] == [0, 1, 9] and step["seq_lens"] == [11, 14]
    assert step["block_table"] == [[0, 1, 2, 0], [3, 4, 5, 6]]
    assert step["slot_mapping"] == [10, 18, 19, 20, 21, 22, 23, 24, 25]
    assert step["written"] == [s for s in range(26) if s != 11]  # slot 11: A's last block's end


@pytest.mark.demo
def test_demo_block_life_caches_shares_refuses_and_evicts(demo_found):
    life = demo_found[3]
    assert life["after_A"] == {"owned": 0, "cached": 2, "free": 4}  # A's 2 full blocks hashed
    assert life["C_refused"]  # 4 blocks asked, 2 free: allocate_slots said None
    assert life["after_B"]["cached"] == 3  # the shared prefix and B's own full block
    assert life["evicted"] and life["after_C"]["owned"] == 4


@pytest.mark.demo
def test_demo_waste_and_kernels(demo_found):
    waste = demo_found[4]
    paged, reserve_output, reserve_max = waste.values()
    assert paged[0] < 5 < reserve_output[0] < 30 and reserve_max[0] > 90  # percent wasted
    assert paged[1] < reserve_output[1] < reserve_max[1]  # peak slots held
    errors = demo_found[5]
    assert "torch" in errors and all(e < 1e-5 for e in errors.values()), errors


kernel_case = load_impl(__file__, "kernel_case")


@pytest.mark.demo
@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_kernel_case_runs_one_shape_against_the_reference(backend, capsys):
    if not is_paged_attention_available(backend):
        pytest.skip(f"{backend} kernels are not built here")
    argv = ["--backend", backend, "--seq-lens", "37", "5", "600", "--block-size", "4"]
    err = kernel_case.main([*argv, "--kv-heads", "2", "--group", "3", "--repeat", "2"])
    assert err < 1e-5 and ": ok" in capsys.readouterr().out
