"""Reference solutions for lesson 05 (the tests run these unless LESSON_IMPL=exercises)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ToyRequest:
    """Just what the scheduler needs to know about a request (a snapshot of the engine's)."""

    request_id: str
    num_tokens: int  # prompt + generated so far
    num_computed_tokens: int  # already in the KV cache
    num_blocks: int  # KV blocks it holds
    priority: int = 0
    arrival_time: float = 0.0

    def num_new_tokens(self, token_budget: int) -> int:
        """What the request still owes, as much as the budget allows: prompt, chunk or decode."""
        return min(self.num_tokens - self.num_computed_tokens, token_budget)

    def will_sample(self, num_new_tokens: int) -> bool:
        """A step samples only if it reaches the last known token (a partial chunk does not)."""
        return self.num_computed_tokens + num_new_tokens >= self.num_tokens


def blocks_needed(request: ToyRequest, num_new_tokens: int, block_size: int) -> int:
    """How many MORE blocks the request needs to hold its computed + new tokens."""
    total = request.num_computed_tokens + num_new_tokens
    return max(0, -(-total // block_size) - request.num_blocks)


def pick_victim(running: list[ToyRequest], policy: str) -> ToyRequest:
    """The request to preempt: the last one (fcfs) or the worst (priority, arrival) (priority)."""
    if policy == "priority":
        return max(running, key=lambda r: (r.priority, r.arrival_time))
    return running[-1]


def schedule_step(
    running: list[ToyRequest],
    waiting: list[ToyRequest],
    token_budget: int,
    max_num_seqs: int,
    num_free_blocks: int,
    block_size: int,
) -> tuple[dict[str, int], list[str]]:
    """One FCFS scheduling step without prefix caching: returns (tokens per request, preempted).

    Mutates the lists like the engine does: preempted requests move to the front of `waiting`
    (with their blocks released), admitted requests move to `running`.
    """
    scheduled: dict[str, int] = {}
    preempted: list[str] = []
    i = 0
    while i < len(running) and token_budget > 0:
        req = running[i]
        n = req.num_new_tokens(token_budget)
        need = blocks_needed(req, n, block_size)
        while need > num_free_blocks:
            victim = pick_victim(running, "fcfs")
            running.remove(victim)
            num_free_blocks += victim.num_blocks
            victim.num_blocks, victim.num_computed_tokens = 0, 0
            waiting.insert(0, victim)
            preempted.append(victim.request_id)
            if victim is req:
                break
        if req.request_id in preempted:
            continue
        num_free_blocks -= need
        req.num_blocks += need
        scheduled[req.request_id] = n
        token_budget -= n
        i += 1
    while not preempted and waiting and token_budget > 0 and len(running) < max_num_seqs:
        req = waiting[0]
        n = req.num_new_tokens(token_budget)
        need = blocks_needed(req, n, block_size)
        if need > num_free_blocks:
            break
        waiting.pop(0)
        running.append(req)
        num_free_blocks -= need
        req.num_blocks += need
        scheduled[req.request_id] = n
        token_budget -= n
    return scheduled, preempted


def padding_rows(out_lens: list[int], seats: int) -> int:
    """(request, step) rows a static batch computes for requests that are already done."""
    padding = 0
    for start in range(0, len(out_lens), seats):
        batch = out_lens[start : start + seats]
        # Everyone in the batch steps until the longest is done; only their own lengths count.
        padding += len(batch) * max(batch) - sum(batch)
    return padding
