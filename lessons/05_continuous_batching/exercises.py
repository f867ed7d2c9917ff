"""Lesson 05 exercises: write the heart of a continuous-batching scheduler.

Fill in each function, then run:  LESSON_IMPL=exercises .venv/bin/pytest lessons/05_continuous_batching
One at a time with -k: new_tokens | will_sample | blocks_needed | pick_victim | schedule_step |
padding. The tests drive the REAL engine (vllm_mini/core/sched/scheduler.py, and the model runner
for sampling) and compare its decisions with yours, step by step.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ToyRequest:
    """Just what the scheduler needs to know about a request: a snapshot of the engine's Request
    (vllm_mini/request.py), taken at the start of a step."""

    request_id: str
    num_tokens: int  # prompt + generated so far
    num_computed_tokens: int  # already in the KV cache
    num_blocks: int  # KV blocks it holds
    priority: int = 0
    arrival_time: float = 0.0

    def num_new_tokens(self, token_budget: int) -> int:
        """The tokens this request runs in a step that has `token_budget` tokens left.

        vLLM V1's whole rule: a request owes the tokens whose KV is not in the cache yet (a
        prompt, the rest of a chunked prompt, or the one token it just sampled), and takes as
        many of them as the budget allows.
        """
        raise NotImplementedError(
            "ToyRequest.num_new_tokens: how many of the tokens this request still owes fit in "
            "the budget. See how Scheduler.schedule sizes `num_new` for a running request "
            "(vllm_mini/core/sched/scheduler.py; vLLM: vllm/v1/core/sched/scheduler.py)"
        )

    def will_sample(self, num_new_tokens: int) -> bool:
        """Does a step that runs `num_new_tokens` of this request's tokens sample a new token?

        Only a step whose tokens reach the request's last known token produces logits worth
        sampling; a prefill chunk that stops short of it only fills KV slots.
        """
        raise NotImplementedError(
            "ToyRequest.will_sample: whether this step's tokens reach the request's last known "
            "token. ModelRunner.execute_model applies the rule (vllm_mini/worker/"
            "model_runner.py; vLLM: vllm/v1/worker/gpu_model_runner.py, which discards the "
            "samples of requests still inside their prompt)"
        )


def blocks_needed(request: ToyRequest, num_new_tokens: int, block_size: int) -> int:
    """How many MORE blocks `request` needs so its computed + new tokens fit.

    A request holding 2 blocks of 4 with 7 computed tokens needs 1 more block for 2 new tokens.
    """
    raise NotImplementedError(
        "blocks_needed: the blocks to add so that computed + new tokens fit. "
        "KVCacheManager.allocate_slots counts them (vllm_mini/core/kv_cache_manager.py; vLLM: "
        "vllm/v1/core/kv_cache_manager.py)"
    )


def pick_victim(running: list[ToyRequest], policy: str) -> ToyRequest:
    """Which running request to preempt when memory runs out: 'fcfs' -> the last one;
    'priority' -> the largest (priority, arrival_time)."""
    raise NotImplementedError(
        "pick_victim: the request that loses its KV blocks when memory runs out. See "
        "Scheduler._pick_victim in vllm_mini/core/sched/scheduler.py (vLLM: the preemption "
        "branch of Scheduler.schedule in vllm/v1/core/sched/scheduler.py)"
    )


def schedule_step(
    running: list[ToyRequest],
    waiting: list[ToyRequest],
    token_budget: int,
    max_num_seqs: int,
    num_free_blocks: int,
    block_size: int,
) -> tuple[dict[str, int], list[str]]:
    """One FCFS step without prefix caching. Return ({request_id: tokens}, [preempted ids]).

    1. Running requests in order take num_new_tokens(budget left). If their new blocks do not
       fit, preempt victims (pick_victim) until they do: a victim releases its blocks, its
       num_computed_tokens drops to 0, and it goes to the FRONT of `waiting`. If the victim is
       the request itself, stop scheduling running requests.
    2. Only if nobody was preempted: admit waiting requests from the front while budget, seats
       (max_num_seqs) and free blocks last; admitted requests are appended to `running`.
    """
    raise NotImplementedError(
        "schedule_step: the running loop, then the waiting loop, of Scheduler.schedule "
        "(vllm_mini/core/sched/scheduler.py; vLLM: vllm/v1/core/sched/scheduler.py), using your "
        "ToyRequest.num_new_tokens, blocks_needed and pick_victim"
    )


def padding_rows(out_lens: list[int], seats: int) -> int:
    """Rows static batching wastes: requests run in batches of `seats`, in order, and a batch
    keeps every member stepping until its longest output is done.

    A row is one (request, step) pair. Request i needs out_lens[i] rows (its prefill samples the
    first token, each decode one more); the rest of its batch's steps are padding. Outputs
    [2, 7, 3, 5] in batches of 2 waste (7 - 2) + (5 - 3) = 7 rows. Section 3 of demo.py prints
    the same count measured on the engine.
    """
    raise NotImplementedError(
        "padding_rows: the rows static batches compute for members that are already done. "
        "demo.py's _run counts the same rows on the real engine (section 3)"
    )
