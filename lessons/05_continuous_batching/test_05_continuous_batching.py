"""Lesson 05: your scheduler step must make the same decisions as the engine's Scheduler.

Runs `solutions.py` by default; `LESSON_IMPL=exercises` checks your `exercises.py`.
"""

from __future__ import annotations

import pytest

from lessons._impl import load_impl
from tests.conftest import make_tiny_checkpoint
from tests.core.test_scheduler import fake_step, make_request, make_scheduler

impl = load_impl(__file__)
ref = load_impl(__file__, "solutions")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("lesson05"), "llama")


def test_blocks_needed():
    r = ref.ToyRequest("a", num_tokens=9, num_computed_tokens=7, num_blocks=2)
    assert impl.blocks_needed(r, 2, 4) == 1
    assert impl.blocks_needed(r, 1, 4) == 0
    assert impl.blocks_needed(ref.ToyRequest("b", 5, 0, 0), 5, 4) == 2


def test_pick_victim():
    rs = [
        ref.ToyRequest(str(i), 1, 0, 0, priority=p, arrival_time=i) for i, p in enumerate([3, 9, 1])
    ]
    assert impl.pick_victim(rs, "fcfs").request_id == "2"
    assert impl.pick_victim(rs, "priority").request_id == "1"


@pytest.mark.parametrize(("num_blocks", "budget"), [(64, 16), (10, 32)])
def test_schedule_step_matches_engine_scheduler(model_dir, num_blocks, budget):
    sched = make_scheduler(
        model_dir,
        num_blocks=num_blocks,
        max_num_batched_tokens=budget,
        max_num_seqs=3,
        enable_prefix_caching=False,
    )
    for i, n in enumerate([13, 5, 22, 9]):
        sched.add_request(make_request(sched, f"r{i}", n, max_tokens=6, t=float(i)))
    kv = sched.kv_cache_manager
    steps = 0
    while sched.has_requests():

        def toy(r):
            return ref.ToyRequest(
                r.request_id,
                r.num_tokens,
                r.num_computed_tokens,
                len(kv.get_block_ids(r.request_id)),
            )

        running = [toy(r) for r in sched.running]
        waiting = [toy(r) for r in sched.waiting]
        mine, preempted = impl.schedule_step(
            running, waiting, budget, 3, kv.num_free_blocks, sched.block_size
        )
        so = fake_step(sched)
        assert mine == so.num_scheduled_tokens, f"step {steps}"
        assert set(preempted) == so.preempted_req_ids, f"step {steps}"
        steps += 1
    assert steps > 5
