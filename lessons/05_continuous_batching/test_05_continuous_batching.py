"""Lesson 05: your scheduler pieces must make the same decisions as the engine.

Runs `solutions.py` by default; `LESSON_IMPL=exercises` checks your `exercises.py`: ToyRequest's
num_new_tokens against the real Scheduler's budget, will_sample against the model runner's
samples, schedule_step against the Scheduler step by step, padding_rows against rows the engine
computed. The tests marked `demo` check the demo, the profiler and v0_vs_v1.py themselves on the
tiny random model (seconds, no SmolLM2); they are skipped under LESSON_IMPL=exercises.
"""

from __future__ import annotations

import pytest

from lessons._impl import load_impl
from tests.conftest import make_tiny_checkpoint
from tests.core.test_scheduler import fake_step, make_request, make_scheduler
from vllm_mini import LLM, SamplingParams

impl = load_impl(__file__)
demo = load_impl(__file__, "demo")
profile_step = load_impl(__file__, "profile_step")
v0_vs_v1 = load_impl(__file__, "v0_vs_v1")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("lesson05"), "llama")


def _engine_steps(model_dir, workload, num_blocks, budget, max_num_seqs=3):
    """Run the engine's Scheduler (fake forward passes) on `workload` [(prompt, max_tokens)].

    Yields, per step, a ToyRequest (your class) snapshot of every request before the step, the
    running and waiting ids in queue order, the free blocks, and the engine's SchedulerOutput.
    """
    sched = make_scheduler(
        model_dir,
        num_blocks=num_blocks,
        max_num_batched_tokens=budget,
        max_num_seqs=max_num_seqs,
        enable_prefix_caching=False,
    )
    for i, (n, max_tokens) in enumerate(workload):
        sched.add_request(make_request(sched, f"r{i}", n, max_tokens=max_tokens, t=float(i)))
    kv = sched.kv_cache_manager
    while sched.has_requests():
        toys = {
            r.request_id: impl.ToyRequest(
                r.request_id,
                r.num_tokens,
                r.num_computed_tokens,
                len(kv.get_block_ids(r.request_id)),
            )
            for r in [*sched.running, *sched.waiting]
        }
        running = [r.request_id for r in sched.running]
        waiting = [r.request_id for r in sched.waiting]
        free = kv.num_free_blocks
        yield toys, running, waiting, free, fake_step(sched)


WORKLOADS = {
    # (num_blocks, token budget, [(prompt tokens, max_tokens)])
    "roomy": (64, 16, [(13, 6), (5, 6), (22, 6), (9, 6)]),
    "tight": (10, 32, [(13, 6), (5, 6), (22, 6), (9, 6)]),
    "demo-section-1": (10, 16, [(n, m) for _, n, m in demo.WORKLOAD]),
}


@pytest.mark.parametrize("workload", WORKLOADS)
def test_num_new_tokens_spends_the_engines_budget(model_dir, workload):
    """Replay each step in the engine's order (running, then admitted): every request took
    exactly your num_new_tokens of what was left of the budget."""
    num_blocks, budget, requests = WORKLOADS[workload]
    chunked = False
    for toys, *_, so in _engine_steps(model_dir, requests, num_blocks, budget):
        left = budget
        order = [*so.scheduled_cached_reqs.req_ids, *(r.req_id for r in so.scheduled_new_reqs)]
        for rid in order:
            n = so.num_scheduled_tokens[rid]
            assert toys[rid].num_new_tokens(left) == n, (rid, left)
            chunked |= n < toys[rid].num_tokens - toys[rid].num_computed_tokens
            left -= n
    assert chunked  # some prompt was cut by the budget


def test_will_sample_agrees_with_the_model_runner(schedule):
    """Section 1's engine run: a request got a sampled token exactly when you say it should."""
    checked = {True: 0, False: 0}
    for s in schedule:
        sampled = dict(zip(s["out"].req_ids, s["out"].sampled_token_ids))
        for rid, n in s["so"].num_scheduled_tokens.items():
            _, computed, total = s["before"][rid]
            if rid in s["so"].preempted_req_ids:
                continue
            mine = impl.ToyRequest(rid, total, computed, 0).will_sample(n)
            assert mine == bool(sampled[rid]), (rid, computed, n, total)
            checked[mine] += 1
    assert checked[True] and checked[False]  # both a chunk and a sampling step were seen


def test_blocks_needed():
    r = impl.ToyRequest("a", num_tokens=9, num_computed_tokens=7, num_blocks=2)
    assert impl.blocks_needed(r, 2, 4) == 1
    assert impl.blocks_needed(r, 1, 4) == 0
    assert impl.blocks_needed(impl.ToyRequest("b", 5, 0, 0), 5, 4) == 2
    assert impl.blocks_needed(impl.ToyRequest("c", 3, 0, 4), 3, 4) == 0  # never negative


def test_pick_victim():
    rs = [
        impl.ToyRequest(str(i), 1, 0, 0, priority=p, arrival_time=i)
        for i, p in enumerate([3, 9, 1])
    ]
    assert impl.pick_victim(rs, "fcfs").request_id == "2"
    assert impl.pick_victim(rs, "priority").request_id == "1"


@pytest.mark.parametrize("workload", WORKLOADS)
def test_schedule_step_matches_engine_scheduler(model_dir, workload):
    """At every step, your schedule_step on a snapshot of the engine's queues makes the engine's
    decisions ("demo-section-1" is the worked schedule of the README)."""
    num_blocks, budget, requests = WORKLOADS[workload]
    steps = 0
    for toys, running, waiting, free, so in _engine_steps(model_dir, requests, num_blocks, budget):
        mine, preempted = impl.schedule_step(
            [toys[r] for r in running], [toys[r] for r in waiting], budget, 3, free, 4
        )
        assert mine == so.num_scheduled_tokens, f"step {steps}"
        assert set(preempted) == so.preempted_req_ids, f"step {steps}"
        steps += 1
    assert steps > 5


def test_padding_rows():
    assert impl.padding_rows([2, 7, 3, 5], 2) == 7
    assert impl.padding_rows([2, 7, 3, 5], 4) == 4 * 7 - 17
    assert impl.padding_rows([4, 4, 4], 1) == 0


# ----------------------------------------------------------------- the demo and the profiler


@pytest.fixture(scope="module")
def schedule(model_dir):
    return demo.worked_schedule(model_dir)


@pytest.mark.demo
def test_worked_schedule_chunks_preempts_resumes_and_finishes(schedule):
    budget = demo.SETTINGS["max_num_batched_tokens"]
    prompt_len = {rid: n for rid, n, _ in demo.WORKLOAD}
    first = schedule[0]["so"].num_scheduled_tokens
    assert first == {"A": budget} and prompt_len["A"] > budget  # A's prompt is cut: chunked prefill
    assert all(s["so"].total_num_scheduled_tokens <= budget for s in schedule)
    preempted = [rid for s in schedule for rid in s["so"].preempted_req_ids]
    assert preempted, "the cache is meant to be too small for everyone"
    victim = preempted[0]
    assert any(s["cells"][victim].startswith("recompute") for s in schedule)
    # Every request got exactly max_tokens samples, preemption or not, and gave its blocks back.
    sampled = {rid: 0 for rid in prompt_len}
    for s in schedule:
        for rid, tokens in zip(s["out"].req_ids, s["out"].sampled_token_ids):
            sampled[rid] += len(tokens)
    assert sampled == {rid: max_tokens for rid, _, max_tokens in demo.WORKLOAD}
    assert schedule[-1]["used_blocks"] == 0


@pytest.mark.demo
def test_one_step_messages_are_consistent(schedule, capsys):
    demo.one_step_messages(schedule)
    printed = capsys.readouterr().out
    assert "preempted_req_ids" in printed and "slot_mapping" in printed
    bs = demo.SETTINGS["block_size"]
    for s in schedule:
        meta, so = s["meta"], s["so"]
        num = [so.num_scheduled_tokens[r] for r in s["req_ids"]]
        assert meta.query_start_loc.tolist() == [sum(num[:i]) for i in range(len(num) + 1)]
        assert len(meta.slot_mapping) == len(s["input_ids"]) == sum(num)
        # A token's slot lies in the block its position falls in.
        for i in range(len(s["req_ids"])):
            a, b = meta.query_start_loc_cpu[i], meta.query_start_loc_cpu[i + 1]
            assert meta.seq_lens_cpu[i] == s["positions"][b - 1].item() + 1
            for pos, slot in zip(s["positions"][a:b].tolist(), meta.slot_mapping[a:b].tolist()):
                assert slot % bs == pos % bs
                assert slot // bs == meta.block_table[i, pos // bs].item()


@pytest.mark.demo
def test_profile_breakdown_adds_up_to_the_step(model_dir):
    engine = LLM(str(model_dir), disable_log_stats=True).llm_engine
    params = SamplingParams(temperature=0.0, max_tokens=3, ignore_eos=True)
    engine.add_request("p", {"prompt_token_ids": list(range(10, 60))}, params)
    for _ in ("prefill", "decode"):
        ms = profile_step.breakdown(profile_step.profile_one_step(engine))
        rows = [key for _, key in profile_step.ROWS]
        assert all(ms[k] >= 0 for k in rows), ms  # nothing counted twice
        assert sum(ms[k] for k in rows) == pytest.approx(ms["step"])
        forward = ms["linear"] + ms["attention"] + ms["forward_ops"] + ms["forward_python"]
        assert forward == pytest.approx(ms["forward"])
        assert ms["linear"] > 0 and ms["attention"] > 0 and ms["sampler"] > 0
    runner = engine.engine_core.worker.model_runner
    assert "forward" not in vars(runner.model)  # the labels were taken off again


def test_padding_rows_counts_what_static_batching_computed_on_the_engine(model_dir):
    engine = LLM(str(model_dir), disable_log_stats=True).llm_engine
    prompts = [list(range(20 + 30 * i, 32 + 30 * i)) for i in range(4)]
    out_lens = [2, 7, 3, 5]
    static = [0, 0, 0]
    for group in ([0, 1], [2, 3]):
        for k, v in enumerate(demo._run(engine, group, prompts, out_lens, pad=True)):
            static[k] += v
    steps, rows, useful = demo._run(engine, [0, 1, 2, 3], prompts, out_lens, pad=False)
    assert (rows, useful) == (sum(out_lens), sum(out_lens))  # continuous: no padding
    assert static[1] - static[2] == impl.padding_rows(out_lens, 2) > 0
    assert static[0] == 7 + 5 and steps == 7  # one batch after the other vs all at once


# --------------------------------------------------------- the FAQ "V0 vs V1": v0_vs_v1.py


@pytest.mark.demo
def test_v0_vs_v1_script_shows_what_separate_phases_cost(model_dir, capsys):
    llm = LLM(str(model_dir), disable_log_stats=True, **v0_vs_v1.SETTINGS)
    v0, v1, v1_small = v0_vs_v1.compare(llm, num_requests=8, small_budget=64).values()
    printed = capsys.readouterr().out
    assert "same greedy tokens under every policy: True" in printed  # only the schedule differs
    s0, s1, s_small = v0.summary(), v1.summary(), v1_small.summary()
    # V0 never mixes: a step is all prompts or all decodes, and a decode waits out each
    # prefill step. V1 mixes them, so every running request gets a token at every step.
    assert s0["mixed"] == 0 and s0["max_gap_steps"] > 1
    assert s1["mixed"] > 0 and s1["max_gap_steps"] == 1 == s_small["max_gap_steps"]
    assert s1["steps"] < s0["steps"]  # the prefill steps' decodes come for free
    assert s_small["mixed"] > s1["mixed"]  # prompts cut into 64-token chunks ride along
    for s in (s0, s1, s_small):
        assert s["tok_s"] > 0 and 0 < s["ttft_ms"] and s["tpot_ms"] > 0
