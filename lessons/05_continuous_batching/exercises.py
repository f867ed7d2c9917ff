"""Lesson 05 exercises: write the heart of a continuous-batching scheduler.

Fill in each function, then run:  LESSON_IMPL=exercises pytest lessons/05_continuous_batching
The tests drive the REAL engine scheduler (vllm_mini/core/sched/scheduler.py) on the same workload
and compare its decisions with yours, step by step.
"""

from __future__ import annotations

# The tests pass ToyRequest objects (see solutions.py) with fields request_id, num_tokens,
# num_computed_tokens, num_blocks, priority, arrival_time.


def blocks_needed(request, num_new_tokens: int, block_size: int) -> int:
    """How many MORE blocks `request` needs so its computed + new tokens fit.

    A request holding 2 blocks of 4 with 7 computed tokens needs 1 more block for 2 new tokens.
    """
    raise NotImplementedError


def pick_victim(running: list, policy: str):
    """Which running request to preempt when memory runs out: 'fcfs' -> the last one;
    'priority' -> the largest (priority, arrival_time)."""
    raise NotImplementedError


def schedule_step(running, waiting, token_budget, max_num_seqs, num_free_blocks, block_size):
    """One FCFS step without prefix caching. Return ({request_id: tokens}, [preempted ids]).

    1. Running requests in order take min(tokens they still need, budget). If their new blocks do
       not fit, preempt victims (pick_victim) until they do: a victim releases its blocks, its
       num_computed_tokens drops to 0, and it goes to the FRONT of `waiting`. If the victim is the
       request itself, move on.
    2. Only if nobody was preempted: admit waiting requests from the front while budget, seats
       (max_num_seqs) and free blocks last; admitted requests are appended to `running`.
    """
    raise NotImplementedError


def padding_rows(out_lens: list[int], seats: int) -> int:
    """Rows static batching wastes: requests run in batches of `seats`, in order, and a batch
    keeps every member stepping until its longest output is done.

    A row is one (request, step) pair. Request i needs out_lens[i] rows (its prefill samples the
    first token, each decode one more); the rest of its batch's steps are padding. Outputs
    [2, 7, 3, 5] in batches of 2 waste (7 - 2) + (5 - 3) = 7 rows. Section 3 of demo.py prints
    the same count measured on the engine.
    """
    raise NotImplementedError
