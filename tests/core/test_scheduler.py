"""Scheduler on fake token streams: no model runs; the 'runner' answers with made-up tokens."""

from __future__ import annotations

import pytest

from vllm_mini.core.kv_cache_utils import get_request_block_hasher
from vllm_mini.core.sched.output import ModelRunnerOutput, SchedulerOutput
from vllm_mini.core.sched.scheduler import Scheduler
from vllm_mini.engine.arg_utils import EngineArgs
from vllm_mini.request import Request, RequestStatus
from vllm_mini.sampling_params import SamplingParams

EOS = 2


def make_scheduler(model_dir, num_blocks=64, **kwargs) -> Scheduler:
    args = dict(model=str(model_dir), block_size=4, max_num_batched_tokens=32, max_num_seqs=8)
    args.update(kwargs)
    config = EngineArgs(**args).create_engine_config()
    return Scheduler(config, num_blocks)


def make_request(sched: Scheduler, rid: str, n_prompt: int, max_tokens=4, priority=0, t=0.0):
    base = 10 + 50 * len(sched.requests)  # distinct prompts: no accidental prefix sharing
    return Request(
        rid,
        list(range(base, base + n_prompt)),
        SamplingParams(max_tokens=max_tokens, ignore_eos=True),
        EOS,
        arrival_time=t,
        priority=priority,
        block_hasher=get_request_block_hasher(sched.block_size),
    )


def fake_step(sched: Scheduler, token: int = 7) -> SchedulerOutput:
    """Schedule, 'run' (sample `token` for every request that finished its prompt), update."""
    so = sched.schedule()
    ids = [r.req_id for r in so.scheduled_new_reqs] + so.scheduled_cached_reqs.req_ids
    sampled = []
    for rid in ids:
        req = sched.requests[rid]
        sampled.append([token] if req.num_computed_tokens >= req.num_tokens else [])
    sched.update_from_output(so, ModelRunnerOutput(ids, {r: i for i, r in enumerate(ids)}, sampled))
    return so


def check_blocks(sched: Scheduler) -> None:
    kv = sched.kv_cache_manager
    owned = {rid for rid, blocks in kv.req_to_blocks.items() if blocks}
    live = {r.request_id for r in sched.running}
    assert owned <= live, f"blocks held by non-running requests: {owned - live}"


def test_token_budget_is_respected_and_chunked_prefill_resumes(tiny_llama_dir):
    sched = make_scheduler(tiny_llama_dir, max_num_batched_tokens=16)
    sched.add_request(make_request(sched, "long", 40))
    sched.add_request(make_request(sched, "short", 6))
    chunks = []
    while sched.has_requests():
        so = fake_step(sched)
        assert so.total_num_scheduled_tokens <= 16
        chunks.append(dict(so.num_scheduled_tokens))
        check_blocks(sched)
    # The long prompt is split 16 + 16 + 8; "short" is admitted once budget is left over.
    assert [c.get("long") for c in chunks[:3]] == [16, 16, 8]
    assert chunks[2].get("short") == 6 or chunks[3].get("short") == 6
    assert sched.kv_cache_manager.usage == 0.0


def test_running_requests_are_served_before_waiting_ones(tiny_llama_dir):
    sched = make_scheduler(tiny_llama_dir, max_num_batched_tokens=10)
    sched.add_request(make_request(sched, "a", 8, max_tokens=5))
    fake_step(sched)  # a prefilled
    sched.add_request(make_request(sched, "b", 20))
    so = fake_step(sched)
    assert so.num_scheduled_tokens == {"a": 1, "b": 9}


def test_preemption_takes_the_latest_request_and_it_resumes(tiny_llama_dir):
    # 6 blocks of 4 tokens = 24 slots; two requests of 9 prompt tokens growing to 17 each.
    sched = make_scheduler(tiny_llama_dir, num_blocks=6)
    sched.add_request(make_request(sched, "first", 9, max_tokens=8, t=0.0))
    sched.add_request(make_request(sched, "second", 9, max_tokens=8, t=1.0))
    preempted = []
    while sched.has_requests():
        so = fake_step(sched)
        preempted += sorted(so.preempted_req_ids)
        check_blocks(sched)
    assert preempted and set(preempted) == {"second"}
    assert sched.num_preemptions == len(preempted)
    assert sched.kv_cache_manager.usage == 0.0


def test_priority_policy_admits_and_preempts_by_priority(tiny_llama_dir):
    sched = make_scheduler(tiny_llama_dir, max_num_seqs=1, scheduling_policy="priority")
    sched.add_request(make_request(sched, "low", 4, priority=5, t=0.0))
    sched.add_request(make_request(sched, "high", 4, priority=0, t=1.0))
    so = fake_step(sched)
    assert [r.req_id for r in so.scheduled_new_reqs] == ["high"]

    sched = make_scheduler(tiny_llama_dir, num_blocks=6, scheduling_policy="priority")
    sched.add_request(make_request(sched, "urgent", 9, max_tokens=8, priority=0, t=1.0))
    sched.add_request(make_request(sched, "lazy", 9, max_tokens=8, priority=9, t=0.0))
    preempted = set()
    while sched.has_requests():
        preempted |= fake_step(sched).preempted_req_ids
    assert preempted == {"lazy"}


def test_request_that_preempts_itself_ends_the_running_loop(tiny_llama_dir):
    """Worked example (priority policy, 4 blocks of 4 tokens), as in vLLM's scheduler:

    step | schedule                  | blocks after (free)
    0    | R prefill 7 tokens        | R: 2 (2 free)
    1    | R decode pos 7, B prefill | R: 2, B: 2 (0 free)
    2    | R decode pos 8 needs a 3rd block; none free; the lowest-priority running request is R
         | itself, so R is preempted and the loop STOPS: B is not scheduled in this step either
         | (and no waiting request is admitted after a preemption)
    3    | B decode pos 8 (takes a block R gave back); R waits for room
    """
    sched = make_scheduler(tiny_llama_dir, num_blocks=4, scheduling_policy="priority")
    sched.add_request(make_request(sched, "R", 7, max_tokens=5, priority=2, t=0.0))
    assert fake_step(sched).num_scheduled_tokens == {"R": 7}
    sched.add_request(make_request(sched, "B", 8, max_tokens=5, priority=0, t=1.0))
    assert fake_step(sched).num_scheduled_tokens == {"R": 1, "B": 8}
    step2 = fake_step(sched)
    assert step2.preempted_req_ids == {"R"}
    assert step2.num_scheduled_tokens == {}
    step3 = fake_step(sched)
    assert step3.num_scheduled_tokens == {"B": 1} and not step3.preempted_req_ids
    while sched.has_requests():
        fake_step(sched)
    assert sched.kv_cache_manager.usage == 0.0


def test_blocks_freed_before_their_forward_pass_are_not_findable_by_hash(tiny_llama_dir):
    """allocate_slots hashes the blocks a step will fill; if the request is freed before that
    step runs (preempted in the same step), those hashes must go with it."""
    sched = make_scheduler(tiny_llama_dir)
    kv = sched.kv_cache_manager
    req = make_request(sched, "a", 8)
    assert kv.allocate_slots(req, 8) is not None  # 2 full blocks, hashed now
    kv.free(req)  # num_computed_tokens is still 0: nothing was written
    twin = Request(
        "b",
        req.prompt_token_ids + [99],
        req.sampling_params,
        EOS,
        block_hasher=get_request_block_hasher(4),
    )
    assert kv.get_computed_blocks(twin) == (kv.get_computed_blocks(twin)[0], 0)
    assert not kv.block_pool.cached_block_hash_to_block


@pytest.mark.parametrize("when", ["waiting", "running", "mid_prefill", "preempted"])
def test_abort_in_every_state_frees_all_blocks(tiny_llama_dir, when):
    blocks = 6 if when == "preempted" else 64
    sched = make_scheduler(tiny_llama_dir, num_blocks=blocks, max_num_batched_tokens=8)
    sched.add_request(make_request(sched, "a", 9, max_tokens=8, t=0.0))
    sched.add_request(make_request(sched, "b", 9, max_tokens=8, t=1.0))
    target = {"waiting": "b", "running": "a", "mid_prefill": "a", "preempted": "b"}[when]
    if when == "running":
        for _ in range(3):
            fake_step(sched)
    elif when == "mid_prefill":
        fake_step(sched)
        assert sched.requests["a"].num_computed_tokens < 9
    elif when == "preempted":
        while sched.requests["b"].status != RequestStatus.PREEMPTED:
            fake_step(sched)
    sched.finish_requests([target], RequestStatus.FINISHED_ABORTED)
    assert target not in sched.requests
    assert (
        target not in sched.kv_cache_manager.req_to_blocks
        or not sched.kv_cache_manager.req_to_blocks[target]
    )
    while sched.has_requests():
        fake_step(sched)
    assert sched.kv_cache_manager.usage == 0.0
    assert sched.kv_cache_manager.num_free_blocks == blocks


def test_stop_conditions(tiny_llama_dir):
    sched = make_scheduler(tiny_llama_dir)
    req = Request("e", [10, 11, 12], SamplingParams(max_tokens=10, min_tokens=2), EOS)
    sched.add_request(req)
    fake_step(sched, token=EOS)  # EOS before min_tokens: ignored
    assert not req.is_finished()
    fake_step(sched, token=EOS)
    assert req.status == RequestStatus.FINISHED_STOPPED and req.num_output_tokens == 2
    req = Request("s", [10, 11], SamplingParams(max_tokens=10, stop_token_ids=[9]), EOS)
    sched.add_request(req)
    fake_step(sched, token=9)
    assert req.status == RequestStatus.FINISHED_STOPPED and req.stop_reason == 9
    req = Request("l", [10, 11], SamplingParams(max_tokens=3, ignore_eos=True), EOS)
    sched.add_request(req)
    for _ in range(3):
        fake_step(sched, token=EOS)
    assert req.status == RequestStatus.FINISHED_LENGTH_CAPPED
